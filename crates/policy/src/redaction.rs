//! Output redaction: secrets and personal data replaced by typed placeholders such as
//! `[REDACTED:email]`, in whole texts or in streams cut at arbitrary points.

use std::sync::LazyLock;

use regex::Regex;

/// Every kind the redactor knows, as reported in spans and placeholders.
pub const KINDS: &[&str] = &[
    "private_key",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "anthropic_key",
    "openai_key",
    "stripe_key",
    "google_api_key",
    "jwt",
    "connection_string",
    "generic_secret",
    "email",
    "us_ssn",
    "es_national_id",
    "card_number",
    "iban",
    "phone_number",
];

/// One thing found: what, and where (byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// One of [`KINDS`].
    pub kind: &'static str,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// How a detector's match is turned into a span, or refused.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Every match counts.
    Always,
    /// Only capture group 1, and only when it looks random enough to be a secret.
    EntropicGroup,
    /// Digits that pass the Luhn check, 13 to 19 of them.
    Luhn,
    /// An IBAN whose mod-97 check holds.
    Iban,
    /// A phone number: 9 to 15 digits.
    Phone,
    /// An SSN with a possible area, group and serial.
    Ssn,
    /// A Spanish DNI or NIE whose control letter is right.
    SpanishId,
}

struct Detector {
    kind: &'static str,
    pattern: Regex,
    check: Check,
    /// Set when the pattern starts with no literal the regex engine can skip ahead to: a scan of
    /// the whole text would run its automaton over every byte, so it runs only around anchors.
    anchor: Option<Anchor>,
}

/// A byte every match of a pattern contains near its start, so that a pattern can be run only
/// in [`Windows`] around the places where that byte occurs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// An ASCII digit at most 2 bytes after the match starts (`+44`, `(0`, `ES91`, `X123`);
    /// the whole match is at most 64 bytes long.
    Digit,
    /// A `:` or `=` at most 40 bytes after the match starts (keyword, quote, spaces); the whole
    /// match is at most 320 bytes long.
    Assignment,
}

impl Anchor {
    const ALL: [Self; 2] = [Self::Digit, Self::Assignment];

    fn is_anchor(self, byte: u8) -> bool {
        match self {
            Self::Digit => byte.is_ascii_digit(),
            Self::Assignment => byte == b':' || byte == b'=',
        }
    }

    /// How far before its anchor a match may start.
    fn lead_bytes(self) -> usize {
        match self {
            Self::Digit => 2,
            Self::Assignment => 40,
        }
    }

    /// The longest match; a unit test holds each anchored pattern to it.
    fn longest_match_bytes(self) -> usize {
        match self {
            Self::Digit => 64,
            Self::Assignment => 320,
        }
    }
}

/// In priority order: where two detections overlap, the earlier detector wins.
static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    let compile = |pattern: &str| {
        #[expect(
            clippy::expect_used,
            reason = "fixed patterns; unit tests compile every one"
        )]
        Regex::new(&crate::ascii_boundaries_and_digits(pattern))
            .expect("a built-in redaction pattern compiles")
    };
    let detector = |kind: &'static str, pattern: &str, check: Check| Detector {
        kind,
        pattern: compile(pattern),
        check,
        anchor: match kind {
            "es_national_id" | "card_number" | "iban" | "phone_number" => Some(Anchor::Digit),
            "generic_secret" => Some(Anchor::Assignment),
            _ => None,
        },
    };
    vec![
        detector(
            "private_key",
            r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\z)",
            Check::Always,
        ),
        detector(
            "aws_access_key",
            r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
            Check::Always,
        ),
        detector(
            "aws_secret_key",
            r#"(?i:aws)[A-Za-z0-9_ .-]{0,20}(?i:secret|key)[A-Za-z0-9_ .-]{0,20}["']?\s{0,16}[:=]\s{0,16}["']?([A-Za-z0-9/+]{40})\b"#,
            Check::EntropicGroup,
        ),
        detector(
            "github_token",
            r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
            Check::Always,
        ),
        detector(
            "gitlab_token",
            r"\bglpat-[A-Za-z0-9_-]{20,255}",
            Check::Always,
        ),
        detector(
            "slack_token",
            r"\bxox[abposr]-[A-Za-z0-9-]{10,255}",
            Check::Always,
        ),
        detector(
            "anthropic_key",
            r"\bsk-ant-[A-Za-z0-9_-]{20,255}",
            Check::Always,
        ),
        detector(
            "openai_key",
            r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,255}",
            Check::Always,
        ),
        detector(
            "stripe_key",
            r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,255}",
            Check::Always,
        ),
        detector("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}", Check::Always),
        detector(
            "jwt",
            r"\beyJ[A-Za-z0-9_-]{8,2000}\.eyJ[A-Za-z0-9_-]{8,4000}\.[A-Za-z0-9_-]{8,2000}",
            Check::Always,
        ),
        detector(
            "connection_string",
            r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@]{1,100}:[^\s@/]{1,200}@[^\s/?#]{1,200}",
            Check::Always,
        ),
        detector(
            "generic_secret",
            r#"(?i:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret|auth[_-]?token|private[_-]?key|credentials?)["']?\s{0,16}[:=]\s{0,16}["']?([!-~&&[^"',;`]]{8,200})"#,
            Check::EntropicGroup,
        ),
        detector(
            "email",
            r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
            Check::Always,
        ),
        detector("us_ssn", r"\b\d{3}-\d{2}-\d{4}\b", Check::Ssn),
        detector(
            "es_national_id",
            r"\b[XYZxyz]?\d{7,8}-?[A-Za-z]\b",
            Check::SpanishId,
        ),
        detector("card_number", r"\b\d(?:[ -]?\d){12,18}\b", Check::Luhn),
        detector(
            "iban",
            r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
            Check::Iban,
        ),
        detector(
            "phone_number",
            r"(?:\+\d{1,3}[ .-]?)?\b\d{2,4}(?:[ .-]\d{2,4}){2,5}\b|(?:\+\d{1,3}[ .-]?)?\(\d{1,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,4}\b|\+\d{9,15}\b",
            Check::Phone,
        ),
    ]
});

/// The parts of a text where an anchored pattern can match, as disjoint ascending byte ranges.
///
/// Why this finds everything: every match starts at most [`Anchor::lead_bytes`] before an
/// anchor byte and is at most [`Anchor::longest_match_bytes`] long, so it lies within the
/// window around that anchor. A window's end is moved on past ASCII word characters so that a
/// word boundary there means what it means in the whole text; what comes before a window is
/// seen through `find_at`. In prose the windows are a fraction of the text; at worst they are
/// all of it, once.
struct Windows(Vec<(usize, usize)>);

impl Windows {
    fn of(text: &str, anchor: Anchor) -> Self {
        let bytes = text.as_bytes();
        let mut windows: Vec<(usize, usize)> = Vec::new();
        for (position, _) in bytes
            .iter()
            .enumerate()
            .filter(|(_, byte)| anchor.is_anchor(**byte))
        {
            if windows.last().is_some_and(|last| position < last.1) {
                // Inside the current window; only its end can move.
                let last = windows.len() - 1;
                windows[last].1 = window_end(text, position + anchor.longest_match_bytes());
                continue;
            }
            let start = text.floor_char_boundary(position.saturating_sub(anchor.lead_bytes()));
            let end = window_end(text, position + anchor.longest_match_bytes());
            match windows.last_mut() {
                Some(last) if start <= last.1 => last.1 = end,
                _ => windows.push((start, end)),
            }
        }
        Self(windows)
    }

    /// Every match of `pattern` within the windows, in order, as `captures_iter` would give
    /// them over the whole text.
    fn matches<'text>(
        &self,
        pattern: &Regex,
        text: &'text str,
    ) -> impl Iterator<Item = regex::Captures<'text>> {
        self.0.iter().flat_map(move |&(start, end)| {
            let window = &text[..end];
            let mut position = start;
            std::iter::from_fn(move || {
                let captures = pattern.captures_at(window, position)?;
                let whole = captures.get(0)?;
                position = whole.end().max(whole.start() + 1);
                Some(captures)
            })
        })
    }
}

/// `at` (capped to the text), moved on to a character boundary and past ASCII word characters.
fn window_end(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    end + text.as_bytes()[end..]
        .iter()
        .position(|byte| !(byte.is_ascii_alphanumeric() || *byte == b'_'))
        .unwrap_or(text.len() - end)
}

/// Finds secrets and personal data, except the kinds turned off.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    disabled: Vec<String>,
}

impl Redactor {
    /// A redactor that leaves `disabled` kinds alone.
    pub fn new(disabled: Vec<String>) -> Self {
        LazyLock::force(&DETECTORS);
        Self { disabled }
    }

    /// Every detection in `text`, sorted and without overlaps.
    pub fn find(&self, text: &str) -> Vec<Span> {
        // Accepted spans by start: an overlap check is one lookup, not a scan of all of them.
        let mut found: std::collections::BTreeMap<usize, Span> = std::collections::BTreeMap::new();
        let mut windows: [Option<Windows>; Anchor::ALL.len()] = [None, None];
        for detector in DETECTORS.iter() {
            if self.disabled.iter().any(|kind| kind == detector.kind) {
                continue;
            }
            let mut add = |start: usize, end: usize| {
                accept_unless_overlapping(
                    &mut found,
                    Span {
                        kind: detector.kind,
                        start,
                        end,
                    },
                );
            };
            let mut consider = |captures: regex::Captures<'_>| match detector.check {
                Check::EntropicGroup => {
                    if let Some(value) = captures.get(1)
                        && looks_random(value.as_str())
                    {
                        add(value.start(), value.end());
                    }
                }
                check => {
                    if let Some(whole) = captures.get(0)
                        && passes(check, whole.as_str())
                    {
                        add(whole.start(), whole.end());
                    }
                }
            };
            if let Some(anchor) = detector.anchor {
                windows[anchor as usize]
                    .get_or_insert_with(|| Windows::of(text, anchor))
                    .matches(&detector.pattern, text)
                    .for_each(&mut consider);
            } else {
                detector.pattern.captures_iter(text).for_each(&mut consider);
            }
        }
        found.into_values().collect()
    }

    /// `text` with every detection replaced, and the spans (offsets in `text`).
    pub fn redact(&self, text: &str) -> (String, Vec<Span>) {
        let spans = self.find(text);
        (replace(text, &spans), spans)
    }
}

/// Adds `span` to the accepted spans (keyed by start) unless it is empty or overlaps one of
/// them: detectors run in priority order, so what was accepted first wins.
fn accept_unless_overlapping(found: &mut std::collections::BTreeMap<usize, Span>, span: Span) {
    let overlaps_before = found
        .range(..span.end)
        .next_back()
        .is_some_and(|(_, accepted)| accepted.end > span.start);
    if !overlaps_before && span.start < span.end {
        found.insert(span.start, span);
    }
}

/// `text` with each span replaced by its placeholder.
fn replace(text: &str, spans: &[Span]) -> String {
    let mut output = String::with_capacity(text.len());
    let mut position = 0;
    for span in spans {
        output.push_str(&text[position..span.start]);
        output.push_str("[REDACTED:");
        output.push_str(span.kind);
        output.push(']');
        position = span.end;
    }
    output.push_str(&text[position..]);
    output
}

fn passes(check: Check, text: &str) -> bool {
    match check {
        Check::Always | Check::EntropicGroup => true,
        Check::Luhn => luhn(text) && card_grouping(text),
        Check::Iban => iban(text),
        Check::Phone => {
            let digits = text.bytes().filter(u8::is_ascii_digit).count();
            (9..=15).contains(&digits) && !looks_like_ssn(text)
        }
        Check::Ssn => ssn(text),
        Check::SpanishId => spanish_id(text),
    }
}

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn check of payment card numbers; a run of one repeated digit is not a card.
pub fn luhn(text: &str) -> bool {
    let digits = digits(text);
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|digit| *digit == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, digit)| {
            if index % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                *digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Cards are printed as one run of digits or in their scheme's groups (4-4-4-4, 4-6-5, ...);
/// other groupings are account numbers, IBAN tails and the like.
fn card_grouping(text: &str) -> bool {
    let groups: Vec<usize> = text.split([' ', '-']).map(str::len).collect();
    matches!(
        groups.as_slice(),
        [_] | [4, 4, 4, 4] | [4, 4, 4, 4, 3] | [4, 6, 5] | [4, 6, 4] | [4, 4, 5] | [4, 4, 4, 1..=3]
    )
}

fn looks_like_ssn(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 11 && bytes[3] == b'-' && bytes[6] == b'-'
}

/// ISO 13616: move the first four characters to the end, letters to numbers, mod 97 is 1.
pub fn iban(text: &str) -> bool {
    let compact: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut remainder: u32 = 0;
    for c in compact[4..].iter().chain(&compact[..4]) {
        let value = match c.to_digit(36) {
            Some(value) => value,
            None => return false,
        };
        remainder = if value < 10 {
            (remainder * 10 + value) % 97
        } else {
            (remainder * 100 + value) % 97
        };
    }
    remainder == 1
}

/// Area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
fn ssn(text: &str) -> bool {
    let digits = digits(text);
    let area = digits[0] * 100 + digits[1] * 10 + digits[2];
    let group = digits[3] * 10 + digits[4];
    let serial = digits[5..]
        .iter()
        .fold(0, |value, digit| value * 10 + digit);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// DNI: eight digits and the letter for their value mod 23; NIE: X/Y/Z for 0/1/2 first.
fn spanish_id(text: &str) -> bool {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let upper = text.to_ascii_uppercase().replace('-', "");
    let bytes = upper.as_bytes();
    let (number, letter) = bytes.split_at(bytes.len() - 1);
    let prefix = match number.first() {
        Some(b'X') => Some(0),
        Some(b'Y') => Some(1),
        Some(b'Z') => Some(2),
        _ => None,
    };
    let digits = if prefix.is_some() {
        &number[1..]
    } else {
        number
    };
    let expected_length = if prefix.is_some() { 7 } else { 8 };
    if digits.len() != expected_length {
        return false;
    }
    let value = digits.iter().fold(prefix.unwrap_or(0), |value, digit| {
        value * 10 + u32::from(digit - b'0')
    });
    LETTERS[(value % 23) as usize] == letter[0]
}

/// Shannon entropy of at least 3 bits per character and more than one character class: a
/// password like "hunter2hunter2" or a placeholder like "xxxxxxxx" is not taken for a key.
fn looks_random(value: &str) -> bool {
    let mut counts = [0u32; 256];
    for byte in value.bytes() {
        counts[usize::from(byte)] += 1;
    }
    let length = value.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|count| **count > 0)
        .map(|count| {
            let probability = f64::from(*count) / length;
            -probability * probability.log2()
        })
        .sum();
    let classes = [
        value.bytes().any(|b| b.is_ascii_lowercase()),
        value.bytes().any(|b| b.is_ascii_uppercase()),
        value.bytes().any(|b| b.is_ascii_digit()),
        value.bytes().any(|b| !b.is_ascii_alphanumeric()),
    ]
    .into_iter()
    .filter(|present| *present)
    .count();
    entropy >= 3.0 && classes >= 2
}

/// How much text a stream keeps back before it is final: longer than any detection that can
/// contain whitespace (a test holds every such pattern to it), except a private key block,
/// which is held whole. Detections without whitespace (tokens, e-mail addresses, JWTs) can only
/// be growing in the trailing run of non-whitespace, which is held too.
const HOLD_BYTES: usize = 384;
/// The longest trailing run of non-whitespace held back (a JWT is at most about 8 KB).
const MAX_RUN_HOLD_BYTES: usize = 16 * 1024;
/// Text is released in steps of at least this much, so that a stream of small pieces (a model's
/// tokens) is scanned once per step, not once per piece.
const RELEASE_STEP_BYTES: usize = 256;
/// The longest private key block held back; beyond this the rest of the block is redacted as
/// it arrives.
const MAX_KEY_BLOCK_BYTES: usize = 64 * 1024;
/// Text kept from before the final part, so word boundaries at its start are seen as in the
/// whole text.
const CONTEXT_BYTES: usize = 64;

/// Redacts a stream: feed pieces in order, get back what is final; `finish` gives the rest.
/// The output, joined, equals [`Redactor::redact`] of the whole text.
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Redactor,
    /// Already emitted context followed by pending text.
    buffer: String,
    /// Where pending text starts in `buffer`.
    pending_start: usize,
    /// Stream offset of `buffer[0]`.
    buffer_offset: usize,
    /// Inside a private key block too long to hold: everything up to its END line is redacted.
    in_long_key: bool,
}

/// What one step of a stream produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamOutput {
    /// Final redacted text.
    pub text: String,
    /// Spans in it, as offsets in the whole original stream.
    pub spans: Vec<Span>,
}

impl StreamRedactor {
    /// A new stream.
    pub fn new(redactor: Redactor) -> Self {
        Self {
            redactor,
            buffer: String::new(),
            pending_start: 0,
            buffer_offset: 0,
            in_long_key: false,
        }
    }

    /// Takes the next piece; returns what is final now.
    pub fn push(&mut self, piece: &str) -> StreamOutput {
        self.buffer.push_str(piece);
        self.emit(false)
    }

    /// Ends the stream: everything still held.
    pub fn finish(&mut self) -> StreamOutput {
        self.emit(true)
    }

    fn emit(&mut self, finished: bool) -> StreamOutput {
        let mut output = StreamOutput::default();
        if self.in_long_key {
            self.swallow_long_key(&mut output, finished);
            if self.in_long_key {
                return output;
            }
        }
        let length = self.buffer.len();
        let mut cut = if finished {
            length
        } else {
            self.release_point()
        };
        // A key block held whole is found by the scan below, which only runs once a step's
        // worth of text could be released; holding it never needs more than that.
        if !finished && cut < self.pending_start + RELEASE_STEP_BYTES {
            return output;
        }
        let spans: Vec<Span> = self
            .redactor
            .find(&self.buffer)
            .into_iter()
            .filter(|span| span.start >= self.pending_start)
            .collect();
        let mut long_key = false;
        for span in &spans {
            if span.start < cut && span.end > cut {
                cut = span.start;
            }
            // A key block still open at the end of what has arrived is held whole, up to a limit.
            if !finished
                && span.kind == "private_key"
                && span.end == length
                && !self.buffer[span.start..].contains("-----END")
            {
                if length - span.start > MAX_KEY_BLOCK_BYTES {
                    cut = length;
                    long_key = true;
                } else {
                    cut = cut.min(span.start);
                }
            }
        }
        if cut <= self.pending_start && !long_key {
            return output;
        }
        let final_spans: Vec<Span> = spans.into_iter().filter(|span| span.end <= cut).collect();
        let mut position = self.pending_start;
        for span in &final_spans {
            output.text.push_str(&self.buffer[position..span.start]);
            output.text.push_str("[REDACTED:");
            output.text.push_str(span.kind);
            output.text.push(']');
            position = span.end;
            output.spans.push(Span {
                kind: span.kind,
                start: span.start + self.buffer_offset,
                end: span.end + self.buffer_offset,
            });
        }
        output.text.push_str(&self.buffer[position..cut]);
        self.consume(cut);
        self.in_long_key = long_key;
        output
    }

    /// Where final text ends unless a detection says otherwise: [`HOLD_BYTES`] before the end,
    /// and not after the start of the trailing run of non-whitespace (held up to
    /// [`MAX_RUN_HOLD_BYTES`]).
    fn release_point(&self) -> usize {
        let bytes = self.buffer.as_bytes();
        let length = bytes.len();
        let run_start = bytes
            .iter()
            .rposition(u8::is_ascii_whitespace)
            .map_or(0, |whitespace| whitespace + 1)
            .max(length.saturating_sub(MAX_RUN_HOLD_BYTES));
        self.buffer
            .floor_char_boundary(length.saturating_sub(HOLD_BYTES).min(run_start))
    }

    /// Inside an over-long key block: drop text up to the END line, extending the last span.
    fn swallow_long_key(&mut self, output: &mut StreamOutput, finished: bool) {
        let pending = &self.buffer[self.pending_start..];
        let end = pending.find("-----END").and_then(|start| {
            pending[start..]
                .find("KEY-----")
                .map(|offset| start + offset + "KEY-----".len())
                .or_else(|| {
                    pending[start..]
                        .find("BLOCK-----")
                        .map(|offset| start + offset + "BLOCK-----".len())
                })
        });
        let swallowed = match end {
            Some(end) => end,
            // Keep a possible partial END marker for the next piece.
            None if !finished => {
                self.buffer
                    .floor_char_boundary(pending.len().saturating_sub(64) + self.pending_start)
                    - self.pending_start
            }
            None => pending.len(),
        };
        let start = self.buffer_offset + self.pending_start;
        output.spans.push(Span {
            kind: "private_key",
            start,
            end: start + swallowed,
        });
        self.consume(self.pending_start + swallowed);
        self.in_long_key = end.is_none() && !finished;
    }

    /// Marks `buffer[..cut]` final and trims what is no longer needed as context.
    fn consume(&mut self, cut: usize) {
        self.pending_start = cut;
        let keep_from = self
            .buffer
            .floor_char_boundary(cut.saturating_sub(CONTEXT_BYTES));
        if keep_from > 0 {
            self.buffer.drain(..keep_from);
            self.buffer_offset += keep_from;
            self.pending_start -= keep_from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        Redactor::default()
            .find(text)
            .iter()
            .map(|span| span.kind)
            .collect()
    }

    #[test]
    fn every_pattern_compiles_and_every_kind_is_listed() {
        for detector in DETECTORS.iter() {
            assert!(KINDS.contains(&detector.kind), "{}", detector.kind);
        }
        assert_eq!(DETECTORS.len(), KINDS.len());
    }

    #[test]
    fn anchored_patterns_are_bounded_and_free_of_edge_assertions() {
        for detector in DETECTORS.iter() {
            let Some(anchor) = detector.anchor else {
                continue;
            };
            let syntax = regex_syntax::parse(detector.pattern.as_str()).unwrap();
            let longest = syntax.properties().maximum_len();
            assert!(
                longest.is_some_and(|longest| longest <= anchor.longest_match_bytes()),
                "{}: longest match {longest:?} bytes",
                detector.kind
            );
            // A window's end is not the text's end; only word boundaries are made to agree.
            assert!(
                !syntax.properties().look_set().contains_anchor(),
                "{}",
                detector.kind
            );
        }
    }

    /// Whether `hir` can match an ASCII whitespace byte, as [`u8::is_ascii_whitespace`] (what
    /// splits the run a stream holds) defines it.
    fn can_match_ascii_whitespace(hir: &regex_syntax::hir::Hir) -> bool {
        use regex_syntax::hir::{Class, HirKind};
        let whitespace = || {
            (0..=0x7f_u8)
                .filter(u8::is_ascii_whitespace)
                .collect::<Vec<_>>()
        };
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => false,
            HirKind::Literal(literal) => literal.0.iter().any(u8::is_ascii_whitespace),
            HirKind::Class(Class::Unicode(class)) => class.ranges().iter().any(|range| {
                whitespace()
                    .into_iter()
                    .any(|byte| (range.start()..=range.end()).contains(&char::from(byte)))
            }),
            HirKind::Class(Class::Bytes(class)) => class.ranges().iter().any(|range| {
                whitespace()
                    .into_iter()
                    .any(|byte| (range.start()..=range.end()).contains(&byte))
            }),
            HirKind::Repetition(repetition) => {
                repetition.max != Some(0) && can_match_ascii_whitespace(&repetition.sub)
            }
            HirKind::Capture(capture) => can_match_ascii_whitespace(&capture.sub),
            HirKind::Concat(parts) | HirKind::Alternation(parts) => {
                parts.iter().any(can_match_ascii_whitespace)
            }
        }
    }

    #[test]
    fn a_stream_holds_enough_for_every_detection_still_growing() {
        let mut held_in_the_run = Vec::new();
        for detector in DETECTORS.iter() {
            let syntax = regex_syntax::parse(detector.pattern.as_str()).unwrap();
            if !can_match_ascii_whitespace(&syntax) {
                held_in_the_run.push(detector.kind);
                continue;
            }
            if detector.kind == "private_key" {
                // Held whole by its own rule once its header is complete; the header fits.
                let header = r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----";
                assert!(detector.pattern.as_str().starts_with(header));
                let header = regex_syntax::parse(header).unwrap();
                assert!(header.properties().maximum_len() < Some(HOLD_BYTES));
                continue;
            }
            let longest = syntax.properties().maximum_len();
            assert!(
                longest.is_some_and(|longest| longest <= HOLD_BYTES),
                "{} can contain whitespace and match {longest:?} bytes, more than the hold",
                detector.kind
            );
        }
        for kind in ["email", "jwt", "github_token", "connection_string"] {
            assert!(
                held_in_the_run.contains(&kind),
                "{kind}: {held_in_the_run:?}"
            );
        }
    }

    #[test]
    fn long_tokens_and_addresses_stream_like_whole_texts() {
        let jwt = format!(
            "eyJ{}.eyJ{}.c2lnbmF0dXJlX3NpZ25hdHVyZQ",
            "hbGciOiJIUzI1NiJ9".repeat(100),
            "c3ViIjoiMTIzNDU2Nzg5MCJ9".repeat(120)
        );
        let email = format!("someone@{}example.org", "very-long-label.".repeat(40));
        let text = format!(
            "The token is {jwt} and mail goes to {email}, card 4111-1111-1111-1111. {}",
            "Plain prose after it. ".repeat(50)
        );
        let whole = Redactor::default().redact(&text);
        assert_eq!(
            whole.1.iter().map(|span| span.kind).collect::<Vec<_>>(),
            ["jwt", "email", "card_number"]
        );
        assert!(jwt.len() > 4096);
        for step in [1, 7, 100, 1000, 5000] {
            let cuts: Vec<usize> = (step..text.len()).step_by(step).collect();
            assert_eq!(streamed(&text, &cuts), whole, "pieces of {step} bytes");
        }
    }

    #[test]
    fn a_short_streamed_reply_is_released_as_it_comes() {
        let reply = "Paris is the capital of France, and it has been for a long time. ".repeat(30);
        let mut stream = StreamRedactor::new(Redactor::default());
        let mut released = 0;
        for piece in reply.as_bytes().chunks(8) {
            released += stream.push(std::str::from_utf8(piece).unwrap()).text.len();
        }
        assert!(
            released >= reply.len() - HOLD_BYTES - RELEASE_STEP_BYTES - 16,
            "{released} of {} bytes released before the end",
            reply.len()
        );
        assert_eq!(released + stream.finish().text.len(), reply.len());
    }

    /// What `find` would give if every detector scanned the whole text.
    fn find_by_full_scans(text: &str) -> Vec<Span> {
        let mut found: std::collections::BTreeMap<usize, Span> = std::collections::BTreeMap::new();
        for detector in DETECTORS.iter() {
            for captures in detector.pattern.captures_iter(text) {
                let candidate = match detector.check {
                    Check::EntropicGroup => {
                        captures.get(1).filter(|value| looks_random(value.as_str()))
                    }
                    check => captures
                        .get(0)
                        .filter(|whole| passes(check, whole.as_str())),
                };
                if let Some(candidate) = candidate {
                    accept_unless_overlapping(
                        &mut found,
                        Span {
                            kind: detector.kind,
                            start: candidate.start(),
                            end: candidate.end(),
                        },
                    );
                }
            }
        }
        found.into_values().collect()
    }

    #[test]
    fn scanning_only_the_windows_finds_what_scanning_everything_finds() {
        let pieces = [
            " ",
            " ",
            " ",
            "\n",
            "-",
            "+",
            "(",
            ")",
            ".",
            ":",
            "=",
            "\"",
            "7",
            "42",
            "555",
            "0958",
            "20",
            "7946",
            "+44",
            "the",
            "call",
            "Zürich",
            "—",
            "é",
            "ES91 2100 0418 4502 0005 1332",
            "4111 1111 1111 1111",
            "12345678Z",
            "X1234567L",
            "password",
            "token",
            "API_KEY",
            "aZ9$kLm2Qx81",
            "GB82WEST12345698765432",
            "DE89",
            "3704",
            "0044",
            "x",
            "AB",
            "pässwörd",
            "credentials",
            "secret=",
            "Ab1-",
            "€",
        ];
        // A fixed xorshift sequence: the same texts every run, thousands of shapes.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut with_detections = 0;
        for _ in 0..3000 {
            let length = 1 + next() % 1500;
            let text: String = (0..length)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let expected = find_by_full_scans(&text);
            with_detections += usize::from(!expected.is_empty());
            assert_eq!(Redactor::default().find(&text), expected, "{text:?}");
        }
        assert!(
            with_detections > 1000,
            "only {with_detections} texts had detections"
        );
    }

    #[test]
    fn checksums_tell_real_numbers_from_near_misses() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(luhn("5500-0000-0000-0004"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(!luhn("0000 0000 0000 0000"));
        assert!(iban("DE89 3704 0044 0532 0130 00"));
        assert!(iban("GB82WEST12345698765432"));
        assert!(!iban("DE89 3704 0044 0532 0130 01"));
        assert!(spanish_id("12345678Z"));
        assert!(!spanish_id("12345678A"));
        assert!(spanish_id("X1234567L"));
        assert!(ssn("123-45-6789"));
        assert!(!ssn("666-45-6789"));
        assert!(!ssn("123-00-6789"));
    }

    #[test]
    fn placeholders_are_typed_and_spans_point_into_the_original() {
        let text = "mail bob@example.org, card 4111-1111-1111-1111.";
        let (redacted, spans) = Redactor::default().redact(text);
        assert_eq!(
            redacted,
            "mail [REDACTED:email], card [REDACTED:card_number]."
        );
        assert_eq!(&text[spans[0].start..spans[0].end], "bob@example.org");
        assert_eq!(&text[spans[1].start..spans[1].end], "4111-1111-1111-1111");
    }

    #[test]
    fn disabled_kinds_are_left_alone() {
        let redactor = Redactor::new(vec!["email".to_owned()]);
        assert!(redactor.find("bob@example.org").is_empty());
        assert_eq!(kinds("bob@example.org"), vec!["email"]);
    }

    #[test]
    fn an_unterminated_key_block_is_redacted_to_the_end() {
        let text = "here:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n";
        assert_eq!(
            Redactor::default().redact(text).0,
            "here:\n[REDACTED:private_key]"
        );
    }

    fn streamed(text: &str, cuts: &[usize]) -> (String, Vec<Span>) {
        let mut stream = StreamRedactor::new(Redactor::default());
        let mut output = String::new();
        let mut spans = Vec::new();
        let mut position = 0;
        for cut in cuts.iter().copied().chain([text.len()]) {
            let cut = text.floor_char_boundary(cut.clamp(position, text.len()));
            let step = stream.push(&text[position..cut]);
            output.push_str(&step.text);
            spans.extend(step.spans);
            position = cut;
        }
        let last = stream.finish();
        output.push_str(&last.text);
        spans.extend(last.spans);
        (output, spans)
    }

    #[test]
    fn streams_match_whole_texts_wherever_they_are_cut() {
        let key = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpF\n".repeat(30)
        );
        let text = format!(
            "Key AKIAIOSFODNN7EXAMPLE and token ghp_{} for bob@example.org; card 4111 1111 1111 1111, \
             iban DE89 3704 0044 0532 0130 00. {key} then postgres://app:s3cr3tP4ss@db.internal:5432/app \
             and password = \"Zx9#kQ2!vL7pW4\" end.",
            "a".repeat(36)
        );
        let whole = Redactor::default().redact(&text);
        assert_eq!(whole.1.len(), 8, "{:?}", whole.1);
        for step in [1, 2, 3, 5, 7, 13, 64, 100, 1000] {
            let cuts: Vec<usize> = (step..text.len()).step_by(step).collect();
            assert_eq!(streamed(&text, &cuts), whole, "pieces of {step} bytes");
        }
        // A long stream is emitted as it goes, not held to the end.
        let long = "plain words here. ".repeat(1000);
        let mut stream = StreamRedactor::new(Redactor::default());
        let first = stream.push(&long);
        assert!(
            first.text.len() >= long.len() - HOLD_BYTES,
            "{}",
            first.text.len()
        );
    }

    #[test]
    fn an_over_long_key_block_in_a_stream_is_redacted_as_it_arrives() {
        let body =
            "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\n".repeat(2000);
        let text =
            format!("start -----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY----- after");
        let cuts: Vec<usize> = (1000..text.len()).step_by(1000).collect();
        let (output, spans) = streamed(&text, &cuts);
        assert!(!output.contains("QUFB"), "key material leaked");
        assert!(
            output.starts_with("start [REDACTED:private_key]"),
            "{}",
            &output[..60]
        );
        assert!(output.ends_with(" after"));
        assert_eq!(spans.first().map(|span| span.start), Some(6));
        assert_eq!(
            spans.last().map(|span| span.end),
            Some(text.len() - " after".len())
        );
    }
}
