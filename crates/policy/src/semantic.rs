//! The second screening stage: how close any short window of a prompt comes to a bank of known
//! attack sentences, against how close it comes to benign near misses. It generalises to
//! phrasings the rules have never seen, using the token table distilled from the all-MiniLM
//! model that synos-model-minilm ships, so it costs well under a millisecond per kilobyte.

use std::path::Path;

use synos_embedding::{EmbeddingError, StaticEmbedder};

/// The exemplar bank, written for SynOS (see the file's header).
const EXEMPLARS: &str = include_str!("../screening/exemplars.tsv");

/// Tokens per window: about one clause, so one attacking sentence inside a long, harmless
/// document still stands out.
const WINDOW_TOKENS: usize = 8;
/// Windows overlap by half, so no clause falls between two.
const WINDOW_STRIDE: usize = WINDOW_TOKENS / 2;
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

/// The loaded table and the bank's vectors.
#[derive(Debug)]
pub struct SemanticStage {
    embedder: StaticEmbedder,
    /// Attack vectors, one after another, and each one's category.
    attacks: Vec<f32>,
    attack_categories: Vec<usize>,
    benign: Vec<f32>,
}

impl SemanticStage {
    /// Loads the tokenizer from `model_directory` and the distilled table in it.
    pub fn load(model_directory: &Path) -> Result<Self, EmbeddingError> {
        let embedder = StaticEmbedder::load(
            model_directory,
            &model_directory.join(synos_embedding::STATIC_TABLE_FILE),
        )?;
        let mut stage = Self {
            embedder,
            attacks: Vec::new(),
            attack_categories: Vec::new(),
            benign: Vec::new(),
        };
        for (kind, category, text) in exemplars() {
            let vector = stage.embedder.embed(text)?;
            if kind == "attack" {
                stage.attacks.extend(vector);
                stage
                    .attack_categories
                    .push(category_index(category).unwrap_or(0));
            } else {
                stage.benign.extend(vector);
            }
        }
        Ok(stage)
    }

    /// The window of `text` that comes closest to an attack, if the text has any token.
    pub fn nearest(&self, text: &str) -> Result<Option<Nearest>, EmbeddingError> {
        let tokens = self.embedder.tokens(text)?;
        let count = tokens.ids.len();
        let dimensions = self.embedder.dimensions();
        let mut best: Option<Nearest> = None;
        let mut start = 0;
        while start < count {
            let end = (start + WINDOW_TOKENS).min(count);
            let vector = self.embedder.embed_ids(&tokens.ids[start..end]);
            let (attack, category) = self
                .attacks
                .chunks_exact(dimensions)
                .zip(&self.attack_categories)
                .map(|(row, category)| (dot(row, &vector), *category))
                .fold(
                    (f32::MIN, 0),
                    |best, next| {
                        if next.0 > best.0 { next } else { best }
                    },
                );
            let benign = self
                .benign
                .chunks_exact(dimensions)
                .map(|row| dot(row, &vector))
                .fold(0.0_f32, f32::max);
            let margin = attack - BENIGN_PENALTY * benign;
            if best.as_ref().is_none_or(|best| margin > best.margin) {
                best = Some(Nearest {
                    category,
                    margin,
                    start: tokens.offsets[start].0,
                    end: tokens.offsets[end - 1].1,
                });
            }
            if end == count {
                break;
            }
            start += WINDOW_STRIDE;
        }
        Ok(best)
    }
}

/// Dot product in eight independent lanes: a single running sum cannot be reordered, so the
/// compiler would not vectorise it (four times slower here).
fn dot(left: &[f32], right: &[f32]) -> f32 {
    let mut lanes = [0.0_f32; 8];
    let (left_chunks, right_chunks) = (left.chunks_exact(8), right.chunks_exact(8));
    let rest: f32 = left_chunks
        .remainder()
        .iter()
        .zip(right_chunks.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in left_chunks.zip(right_chunks) {
        for lane in 0..8 {
            lanes[lane] += a[lane] * b[lane];
        }
    }
    lanes.iter().sum::<f32>() + rest
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

    #[test]
    fn dot_products_agree_with_the_plain_sum_at_any_length() {
        for length in [0, 1, 7, 8, 9, 384, 390] {
            let left: Vec<f32> = (0..length).map(|index| index as f32 * 0.5).collect();
            let right: Vec<f32> = (0..length).map(|index| 1.0 - index as f32).collect();
            let plain: f32 = left.iter().zip(&right).map(|(a, b)| a * b).sum();
            assert!(
                (dot(&left, &right) - plain).abs() <= plain.abs() * 1e-5,
                "{length}"
            );
        }
    }
}
