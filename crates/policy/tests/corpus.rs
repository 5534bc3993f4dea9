//! Precision and recall of screening and redaction over the labelled corpus in `corpus/`.

use synos_policy::redaction::{Redactor, StreamRedactor};
use synos_policy::screening::{Screener, Verdict};

fn lines(text: &'static str) -> impl Iterator<Item = &'static str> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
}

const INJECTIONS: &str = include_str!("corpus/injections.txt");
const BENIGN: &str = include_str!("corpus/benign.txt");
const SECRETS: &str = include_str!("corpus/secrets.txt");
const CLEAN: &str = include_str!("corpus/clean.txt");

fn unescape(text: &str) -> String {
    text.replace("\\n", "\n")
}

#[test]
fn screening_blocks_injections_and_lets_benign_prompts_through() {
    let screener = Screener::new(0.4, 0.7);
    let missed: Vec<(&str, f64)> = lines(INJECTIONS)
        .map(|text| (text, screener.screen(text)))
        .filter(|(_, screening)| screening.verdict != Verdict::Block)
        .map(|(text, screening)| (text, screening.score))
        .collect();
    let blocked: Vec<(&str, Vec<&str>)> = lines(BENIGN)
        .map(|text| (text, screener.screen(text)))
        .filter(|(_, screening)| screening.verdict == Verdict::Block)
        .map(|(text, screening)| {
            (
                text,
                screening
                    .matched
                    .iter()
                    .map(|found| found.rule.id)
                    .collect(),
            )
        })
        .collect();
    let injections = lines(INJECTIONS).count();
    let benign = lines(BENIGN).count();
    assert!(
        injections >= 50 && benign >= 50,
        "the corpus shrank: {injections} / {benign}"
    );
    let true_positives = injections - missed.len();
    let recall = true_positives as f64 / injections as f64;
    let precision = true_positives as f64 / (true_positives + blocked.len()) as f64;
    println!(
        "screening: recall {recall:.3}, precision {precision:.3} ({injections} injections, {benign} benign)"
    );
    assert!(recall >= 0.95, "recall {recall:.3}; missed: {missed:#?}");
    assert!(
        precision >= 0.98,
        "precision {precision:.3}; blocked benign: {blocked:#?}"
    );
    // Flags on benign prompts are allowed, but not many.
    let flagged = lines(BENIGN)
        .filter(|text| screener.screen(text).verdict == Verdict::Flag)
        .count();
    assert!(
        flagged * 10 <= benign,
        "{flagged} of {benign} benign prompts flagged"
    );
}

#[test]
fn redaction_finds_every_secret_and_nothing_in_near_misses() {
    let redactor = Redactor::default();
    let mut missed = Vec::new();
    let mut found = 0;
    for line in lines(SECRETS) {
        let (kind, text) = line.split_once('\t').expect("KIND<TAB>TEXT");
        let text = unescape(text);
        let spans = redactor.find(&text);
        if spans.iter().any(|span| span.kind == kind) {
            found += 1;
        } else {
            missed.push((kind, text, spans));
        }
    }
    let false_alarms: Vec<_> = lines(CLEAN)
        .map(|text| (text, redactor.find(text)))
        .filter(|(_, spans)| !spans.is_empty())
        .collect();
    let recall = found as f64 / lines(SECRETS).count() as f64;
    let precision = found as f64 / (found + false_alarms.len()) as f64;
    println!("redaction: recall {recall:.3}, precision {precision:.3}");
    assert!(missed.is_empty(), "missed: {missed:#?}");
    assert!(false_alarms.is_empty(), "false alarms: {false_alarms:#?}");
}

#[test]
fn redacted_text_keeps_no_secret_and_streams_agree_with_whole_texts() {
    let redactor = Redactor::default();
    let whole: String = lines(SECRETS)
        .map(|line| unescape(line.split_once('\t').expect("KIND<TAB>TEXT").1))
        .chain(lines(CLEAN).map(ToOwned::to_owned))
        .collect::<Vec<_>>()
        .join("\n");
    let (redacted, spans) = redactor.redact(&whole);
    for span in &spans {
        let secret = &whole[span.start..span.end];
        assert!(
            !redacted.contains(secret),
            "{} left in: {secret}",
            span.kind
        );
    }
    for piece in [1, 3, 10, 77, 500] {
        let mut stream = StreamRedactor::new(redactor.clone());
        let mut text = String::new();
        let mut stream_spans = Vec::new();
        let mut position = 0;
        while position < whole.len() {
            let end = whole.floor_char_boundary((position + piece).min(whole.len()));
            let end = if end == position {
                whole.ceil_char_boundary(position + 1)
            } else {
                end
            };
            let output = stream.push(&whole[position..end]);
            text.push_str(&output.text);
            stream_spans.extend(output.spans);
            position = end;
        }
        let output = stream.finish();
        text.push_str(&output.text);
        stream_spans.extend(output.spans);
        assert_eq!(text, redacted, "pieces of {piece} bytes");
        assert_eq!(stream_spans, spans, "pieces of {piece} bytes");
    }
}
