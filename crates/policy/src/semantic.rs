//! The screening stages that read the model's token table: how close any short window of a
//! prompt comes to a bank of known attack sentences, against how close it comes to benign near
//! misses, and the learned classifier ([`crate::classifier`]) over the whole text. They
//! generalise to phrasings the rules have never seen, using the token table distilled from the
//! all-MiniLM model that synos-model-minilm ships, so together they cost well under a
//! millisecond per kilobyte.

use std::path::Path;

use synos_embedding::{EmbeddingError, StaticEmbedder, Tokens, norm};

use crate::classifier::{Classifier, Features};

/// The exemplar bank, written for SynOS (see the file's header).
const EXEMPLARS: &str = include_str!("../screening/exemplars.tsv");

/// Tokens per window: about one clause, so one attacking sentence inside a long, harmless
/// document still stands out.
const WINDOW_TOKENS: usize = 8;
/// Windows overlap by half, so no clause falls between two.
const WINDOW_STRIDE: usize = WINDOW_TOKENS / 2;
/// Texts longer than this are judged by the classifier a piece at a time, the most likely piece
/// deciding: the n-gram counts of a whole 4 MiB text would take ~40 MB, and no prompt it was
/// trained or measured on is longer than 12 KB.
pub const CLASSIFIER_PIECE_BYTES: usize = 16 * 1024;
/// How much being close to a benign sentence takes away from being close to an attack.
const BENIGN_PENALTY: f32 = 0.5;

/// The attack categories of the bank; `screening` reports each as the rule
/// `semantic-<category>`.
pub const CATEGORIES: &[&str] = &[
    "override",
    "leak",
    "persona",
    "safety",
    "authority",
    "markers",
    "indirect",
    "exfiltration",
    "hijack",
];

/// The window of a text closest to an attack.
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    /// Index into [`CATEGORIES`] of the closest attack.
    pub category: usize,
    /// Similarity to that attack minus [`BENIGN_PENALTY`] × similarity to the closest benign
    /// sentence (when positive).
    pub margin: f32,
    /// Byte range of the window in the screened text.
    pub start: usize,
    /// End of that range.
    pub end: usize,
}

/// What the stage makes of one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The window closest to an attack exemplar, if the text has any token.
    pub nearest: Option<Nearest>,
    /// How likely the learned classifier judges the whole text an injection, 0 to 1.
    pub injection_probability: f32,
}

/// The loaded table and every vocabulary token's similarity to each exemplar.
#[derive(Debug)]
pub struct SemanticStage {
    embedder: StaticEmbedder,
    /// `vocabulary × exemplars`: each token row's dot product with each exemplar's vector,
    /// attacks first, then benign sentences. Computed once at load (one matrix product, 0.1 to
    /// 0.2 s here; the whole stage loads in about 0.25 s), it turns scoring a window into adding
    /// eight rows of this matrix.
    token_similarities: Vec<f32>,
    /// Category of each attack exemplar; there are this many attacks.
    attack_categories: Vec<usize>,
    exemplar_count: usize,
    /// The learned stage, which reads the same table's embedding of the whole text.
    classifier: Classifier,
}

/// Sums over one run of [`WINDOW_STRIDE`] tokens; a window is two consecutive runs.
#[derive(Debug, Clone)]
struct Run {
    first_token: usize,
    last_token: usize,
    rows: Vec<f32>,
    similarities: Vec<f32>,
}

impl SemanticStage {
    /// Loads the tokenizer from `model_directory` and the distilled table in it.
    pub fn load(model_directory: &Path) -> Result<Self, EmbeddingError> {
        let embedder = StaticEmbedder::load(
            model_directory,
            &model_directory.join(synos_embedding::STATIC_TABLE_FILE),
        )?;
        let mut attacks = Vec::new();
        let mut attack_categories = Vec::new();
        let mut benign = Vec::new();
        for (kind, category, text) in exemplars() {
            let vector = embedder.embed(text)?;
            if kind == "attack" {
                attacks.extend(vector);
                attack_categories.push(category_index(category).unwrap_or(0));
            } else {
                benign.extend(vector);
            }
        }
        let exemplar_count = (attacks.len() + benign.len()) / embedder.dimensions().max(1);
        attacks.extend(benign);
        let token_similarities = embedder.row_dot_products(&attacks)?;
        let classifier =
            Classifier::built_in(embedder.dimensions()).map_err(|error| EmbeddingError::File {
                path: model_directory.join(synos_embedding::STATIC_TABLE_FILE),
                reason: format!("{error} (built for another table)"),
            })?;
        Ok(Self {
            embedder,
            token_similarities,
            attack_categories,
            exemplar_count,
            classifier,
        })
    }

    /// What the learned classifier reads of the whole of `text` (normalised as screening
    /// normalises it): what it is trained on. [`Self::assess`] reads a text longer than
    /// [`CLASSIFIER_PIECE_BYTES`] a piece at a time.
    pub fn classifier_features(&self, text: &str) -> Result<Features, EmbeddingError> {
        let tokens = self.embedder.tokens(text)?;
        let (_, embedding) = self.nearest_and_embedding(&tokens);
        Ok(Features::new(text, embedding))
    }

    /// Both of the stage's judgements of `text`, from one tokenization.
    pub fn assess(&self, text: &str) -> Result<Assessment, EmbeddingError> {
        let tokens = self.embedder.tokens(text)?;
        let (nearest, embedding) = self.nearest_and_embedding(&tokens);
        let injection_probability = if text.len() <= CLASSIFIER_PIECE_BYTES {
            self.classifier.probability(&Features::new(text, embedding))
        } else {
            let mut most = 0.0_f32;
            let mut start = 0;
            while start < text.len() {
                let end = piece_end(text, start);
                let first = tokens
                    .offsets
                    .partition_point(|(offset, _)| *offset < start);
                let last = tokens.offsets.partition_point(|(offset, _)| *offset < end);
                let features = Features::new(
                    &text[start..end],
                    self.embedder.embed_ids(&tokens.ids[first..last]),
                );
                most = most.max(self.classifier.probability(&features));
                start = end;
            }
            most
        };
        Ok(Assessment {
            nearest,
            injection_probability,
        })
    }

    /// The window closest to an attack and the whole text's unit-length embedding, from one
    /// pass over the tokens: the windows' rows add up to the whole text's.
    fn nearest_and_embedding(&self, tokens: &Tokens) -> (Option<Nearest>, Vec<f32>) {
        let mut embedding = vec![0.0; self.embedder.dimensions()];
        let nearest = self.nearest(tokens, &mut embedding);
        let length = norm(&embedding);
        if length > 0.0 {
            for value in &mut embedding {
                *value /= length;
            }
        }
        (nearest, embedding)
    }

    /// The window of the text of `tokens` that comes closest to an attack, if it has any token;
    /// every token's row is added to `whole`.
    fn nearest(&self, tokens: &Tokens, whole: &mut [f32]) -> Option<Nearest> {
        let run_count = tokens.ids.len().div_ceil(WINDOW_STRIDE);
        let (mut previous, mut current, mut window) =
            (self.empty_run(), self.empty_run(), self.empty_run());
        let mut best: Option<Nearest> = None;
        for (index, ids) in tokens.ids.chunks(WINDOW_STRIDE).enumerate() {
            current.first_token = index * WINDOW_STRIDE;
            current.last_token = current.first_token + ids.len() - 1;
            current.rows.fill(0.0);
            current.similarities.fill(0.0);
            self.embedder.add_rows(ids, &mut current.rows);
            add(whole, &current.rows);
            for &id in ids {
                let start = id as usize * self.exemplar_count;
                if let Some(row) = self
                    .token_similarities
                    .get(start..start + self.exemplar_count)
                {
                    add(&mut current.similarities, row);
                }
            }
            let candidate = if index > 0 {
                window.clone_from(&previous);
                window.last_token = current.last_token;
                add(&mut window.rows, &current.rows);
                add(&mut window.similarities, &current.similarities);
                Some(self.score(&window, &tokens.offsets))
            } else if run_count == 1 {
                Some(self.score(&current, &tokens.offsets))
            } else {
                None
            };
            if let Some(candidate) = candidate
                && best
                    .as_ref()
                    .is_none_or(|best| candidate.margin > best.margin)
            {
                best = Some(candidate);
            }
            std::mem::swap(&mut previous, &mut current);
        }
        best
    }

    fn empty_run(&self) -> Run {
        Run {
            first_token: 0,
            last_token: 0,
            rows: vec![0.0; self.embedder.dimensions()],
            similarities: vec![0.0; self.exemplar_count],
        }
    }

    /// How close the window summed in `window` comes to an attack.
    fn score(&self, window: &Run, offsets: &[(usize, usize)]) -> Nearest {
        let length = norm(&window.rows);
        let scale = if length > 0.0 { length.recip() } else { 0.0 };
        let (attacks, benign) = window.similarities.split_at(self.attack_categories.len());
        let (attack, category) = attacks.iter().zip(&self.attack_categories).fold(
            (f32::MIN, 0),
            |best, (similarity, category)| {
                if *similarity > best.0 {
                    (*similarity, *category)
                } else {
                    best
                }
            },
        );
        let benign = benign.iter().copied().fold(0.0_f32, f32::max);
        Nearest {
            category,
            margin: (attack - BENIGN_PENALTY * benign) * scale,
            start: offsets[window.first_token].0,
            end: offsets[window.last_token].1,
        }
    }
}

/// Where the classifier's piece of `text` that starts at `start` ends: at most
/// [`CLASSIFIER_PIECE_BYTES`] on, after the last whitespace in its second half if there is one,
/// so words stay whole.
fn piece_end(text: &str, start: usize) -> usize {
    let limit = text.floor_char_boundary(start + CLASSIFIER_PIECE_BYTES);
    if limit >= text.len() {
        return text.len();
    }
    let middle = text.ceil_char_boundary(start + CLASSIFIER_PIECE_BYTES / 2);
    text[middle..limit]
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(limit, |(offset, c)| middle + offset + c.len_utf8())
}

/// Adds `values` into `total`, element by element.
fn add(total: &mut [f32], values: &[f32]) {
    for (sum, value) in total.iter_mut().zip(values) {
        *sum += value;
    }
}

fn category_index(name: &str) -> Option<usize> {
    CATEGORIES.iter().position(|category| *category == name)
}

/// The bank's lines: kind ("attack" or "benign"), category, text.
fn exemplars() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    EXEMPLARS
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_fall_into_pieces_of_whole_words() {
        let pieces = |text: &str| {
            let mut ends = Vec::new();
            let mut start = 0;
            while start < text.len() {
                let end = piece_end(text, start);
                assert!(text.is_char_boundary(end) && end > start);
                assert!(end - start <= CLASSIFIER_PIECE_BYTES);
                ends.push(end);
                start = end;
            }
            ends
        };
        assert_eq!(pieces("short text"), [10]);
        // Words of "word " and an ideographic space (three bytes) between them.
        for text in [
            "word ".repeat(10_000),
            "mot\u{3000}".repeat(7_000),
            "é".repeat(20_000),
        ] {
            let ends = pieces(&text);
            assert_eq!(ends.last(), Some(&text.len()));
            for end in &ends[..ends.len() - 1] {
                let before = text[..*end].chars().next_back();
                if text.contains(char::is_whitespace) {
                    assert!(before.is_some_and(char::is_whitespace), "{end}");
                }
            }
        }
    }

    #[test]
    fn every_exemplar_line_is_well_formed() {
        let lines = EXEMPLARS
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .count();
        let parsed: Vec<_> = exemplars().collect();
        assert_eq!(parsed.len(), lines, "a line lacks its tabs");
        for (kind, category, text) in parsed {
            assert!(matches!(kind, "attack" | "benign"), "{kind}: {text}");
            if kind == "attack" {
                assert!(category_index(category).is_some(), "{category}: {text}");
            }
            assert!(text.len() > 10, "{text}");
        }
    }
}
