//! How recall orders results: reciprocal rank fusion of the full-text and vector rankings,
//! then weighted by importance and recency.
//!
//! Why rank fusion rather than adding scores: BM25 scores are unbounded and depend on the
//! corpus, cosine similarities are not, so any weighted sum needs calibration that drifts as
//! memories accumulate. Ranks need none; `tests/tests/memory.rs` measures the result on a
//! labelled fixture against each ranking alone.

use std::collections::HashMap;

use crate::config::RecallConfig;
use crate::record::{Memory, Scope};
use crate::store::{Filter, Store, StoreError};
use crate::vector_index::Neighbour;

/// A recall result: the memory, its final score and how each ranking saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The memory.
    pub memory: Memory,
    /// The final score, higher is better.
    pub score: f64,
    /// How the rankings saw it.
    pub candidate: Candidate,
}

/// What one recall searches: the query as text (for full text) and as a vector (for vector
/// search), either left out to skip that ranking.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Searched with BM25 unless `None`.
    pub text: Option<&'a str>,
    /// Searched by similarity unless `None`.
    pub vector: Option<&'a [f32]>,
    /// The only scopes read.
    pub scopes: &'a [Scope],
    /// Further restrictions.
    pub filter: &'a Filter,
    /// Results wanted.
    pub limit: u32,
}

/// Runs the rankings the query asks for, fuses them and returns the best `limit`, best first.
pub async fn recall(
    store: &Store,
    query: Query<'_>,
    now_ms: i64,
    config: &RecallConfig,
) -> Result<Vec<Ranked>, StoreError> {
    let candidates = config.candidates.max(query.limit);
    let keyword = async {
        match query.text {
            Some(text) => {
                store
                    .keyword_search(text, query.scopes, query.filter, now_ms, candidates)
                    .await
            }
            None => Ok(Vec::new()),
        }
    };
    // The full-text query runs on SQLite's worker thread and the vector scan on a blocking
    // thread, side by side: a hybrid recall takes the time of the slower ranking.
    let vector = async {
        match query.vector {
            Some(vector) => {
                store
                    .vector_search(
                        vector,
                        query.scopes,
                        query.filter,
                        now_ms,
                        config.min_similarity,
                        candidates as usize,
                    )
                    .await
            }
            None => Ok(Vec::new()),
        }
    };
    let (keyword, vector) = tokio::join!(keyword, vector);
    let (keyword, vector) = (keyword?, vector?);
    let fused = fuse(&keyword, &vector, config.fusion_k);
    let sequences: Vec<i64> = fused.iter().map(|candidate| candidate.sequence).collect();
    let mut memories = store.memories(&sequences).await?;
    let mut ranked: Vec<Ranked> = fused
        .into_iter()
        .filter_map(|candidate| {
            let memory = memories.remove(&candidate.sequence)?;
            // Expired but not yet purged: never a result.
            if memory.expires_ms.is_some_and(|expires| expires <= now_ms) {
                return None;
            }
            let score = score(&candidate, &memory, now_ms, config);
            Some(Ranked {
                memory,
                score,
                candidate,
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.memory.sequence.cmp(&b.memory.sequence))
    });
    ranked.truncate(query.limit as usize);
    Ok(ranked)
}

/// A memory found by at least one ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Its row number.
    pub sequence: i64,
    /// 1-based rank in the full-text ranking, if it was there.
    pub keyword_rank: Option<u32>,
    /// 1-based rank in the vector ranking, if it was there.
    pub vector_rank: Option<u32>,
    /// Cosine similarity to the query, when vector search scored it.
    pub similarity: Option<f32>,
    /// The fused relevance, before importance and recency.
    pub relevance: f64,
}

fn rank(position: usize) -> u32 {
    u32::try_from(position + 1).unwrap_or(u32::MAX)
}

/// Fuses the rankings given (either may be empty, as in the single modes): each contributes
/// 1/(k + rank) for every memory it holds.
pub fn fuse(keyword: &[(i64, f64)], vector: &[Neighbour], fusion_k: f64) -> Vec<Candidate> {
    let mut candidates: HashMap<i64, Candidate> = HashMap::new();
    let blank = |sequence| Candidate {
        sequence,
        keyword_rank: None,
        vector_rank: None,
        similarity: None,
        relevance: 0.0,
    };
    for (position, (sequence, _score)) in keyword.iter().enumerate() {
        let candidate = candidates
            .entry(*sequence)
            .or_insert_with(|| blank(*sequence));
        candidate.keyword_rank = Some(rank(position));
        candidate.relevance += 1.0 / (fusion_k + f64::from(rank(position)));
    }
    for (position, neighbour) in vector.iter().enumerate() {
        let candidate = candidates
            .entry(neighbour.sequence)
            .or_insert_with(|| blank(neighbour.sequence));
        candidate.vector_rank = Some(rank(position));
        candidate.similarity = Some(neighbour.similarity);
        candidate.relevance += 1.0 / (fusion_k + f64::from(rank(position)));
    }
    candidates.into_values().collect()
}

/// The final score: relevance × importance factor × recency factor. Recency counts from the
/// last change or recall, whichever is later.
pub fn score(candidate: &Candidate, memory: &Memory, now_ms: i64, config: &RecallConfig) -> f64 {
    let importance = 1.0 + config.importance_weight * (f64::from(memory.importance) - 0.5);
    #[allow(clippy::cast_precision_loss, reason = "ages in ms are far below 2^52")]
    let age_days =
        (now_ms - memory.updated_ms.max(memory.accessed_ms)).max(0) as f64 / 86_400_000.0;
    let decay = (-age_days / config.recency_half_life_days).exp2();
    let recency = 1.0 - config.recency_weight + config.recency_weight * decay;
    candidate.relevance * importance * recency
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kind, Metadata, Scope};

    fn memory(importance: f32, updated_ms: i64) -> Memory {
        Memory {
            sequence: 1,
            id: String::new(),
            scope: Scope::global(),
            kind: Kind::Note,
            text: String::new(),
            importance,
            source: String::new(),
            created_ms: 0,
            updated_ms,
            accessed_ms: 0,
            expires_ms: None,
            metadata: Metadata::new(),
            embedding_model: String::new(),
            version: 0,
        }
    }

    #[test]
    fn found_by_both_beats_found_by_one() {
        let keyword = [(1, 9.0), (2, 5.0)];
        let vector = [
            Neighbour {
                sequence: 3,
                similarity: 0.9,
            },
            Neighbour {
                sequence: 2,
                similarity: 0.8,
            },
        ];
        let mut fused = fuse(&keyword, &vector, 60.0);
        fused.sort_by(|a, b| b.relevance.total_cmp(&a.relevance));
        assert_eq!(fused[0].sequence, 2);
        assert_eq!(
            (fused[0].keyword_rank, fused[0].vector_rank),
            (Some(2), Some(2))
        );
        assert_eq!(fused[0].similarity, Some(0.8));
        assert_eq!(fused.len(), 3);
    }

    #[test]
    fn importance_and_recency_move_scores_within_their_weights() {
        let config = RecallConfig::default();
        let candidate = fuse(&[(1, 1.0)], &[], 60.0)[0];
        let day = 86_400_000;
        let now = 1000 * day;
        let fresh_important = score(&candidate, &memory(1.0, now), now, &config);
        let fresh_plain = score(&candidate, &memory(0.5, now), now, &config);
        let old_plain = score(&candidate, &memory(0.5, now - 30 * day), now, &config);
        assert!(fresh_important > fresh_plain && fresh_plain > old_plain);
        // A half-life later the decaying 20 % has halved: 0.9 of a fresh score.
        assert!((old_plain / fresh_plain - 0.9).abs() < 1e-9);
        assert!((fresh_important / fresh_plain - 1.15).abs() < 1e-9);
    }
}
