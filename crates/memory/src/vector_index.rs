//! The in-memory vector index: every embedding of the current model, quantised to 8 bits and
//! partitioned by scope, searched exhaustively.
//!
//! Why exhaustive: at the sizes an agent's memory reaches (10⁵ vectors of 384 dimensions) a
//! scan is a few milliseconds, needs no index maintenance on write and no tuning. Up to
//! `EXACT_SCAN_LIMIT` vectors every one is scored with 8-bit dot products (exact within the
//! quantisation error). Beyond that a first pass compares sign bits (48 bytes a vector, a
//! Hamming distance in a few instructions on any x86-64) and only the closest
//! `PREFILTER_FACTOR × limit` are rescored exactly: the 8-bit pass is what Debian's baseline
//! CPU (SSE2) makes slow. Why partitions: a recall only ever touches the vectors of the scopes
//! it names, so isolation is structural, not a filter.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// Scans of at most this many vectors score every vector exactly.
pub const EXACT_SCAN_LIMIT: usize = 4096;
/// Larger scans rescore this many times `limit` candidates from the sign-bit pass (at least
/// `MIN_PREFILTER_CANDIDATES`).
const PREFILTER_FACTOR: usize = 32;
const MIN_PREFILTER_CANDIDATES: usize = 1024;

/// One scored vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    /// The memory's row number.
    pub sequence: i64,
    /// Cosine similarity to the query (vectors are unit length), within ±0.01.
    pub similarity: f32,
}

/// The vectors of one scope, stored column-wise for a tight scan.
#[derive(Debug, Default)]
struct Partition {
    sequences: Vec<i64>,
    /// Unix ms after which the memory is not recalled; `i64::MAX` for never.
    expires_ms: Vec<i64>,
    scales: Vec<f32>,
    values: Vec<i8>,
    /// Sign bits of each vector, `words` u64 per vector.
    signs: Vec<u64>,
}

/// Every current-model vector, by scope.
#[derive(Debug, Default)]
pub struct VectorIndex {
    /// Set by the first vector inserted; vectors of another length are refused.
    dimensions: usize,
    /// u64 words of sign bits per vector.
    words: usize,
    partitions: Vec<Partition>,
    partition_of_scope: HashMap<String, usize>,
    /// Where each sequence lives: (partition, position).
    location: HashMap<i64, (usize, usize)>,
}

/// A vector quantised to 8 bits with one scale: value ≈ scale × quantised.
fn quantize(vector: &[f32]) -> (f32, Vec<i8>) {
    let largest = vector
        .iter()
        .fold(0.0_f32, |largest, value| largest.max(value.abs()));
    if largest == 0.0 {
        return (0.0, vec![0; vector.len()]);
    }
    let scale = largest / 127.0;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "rounded and within ±127 by construction"
    )]
    let values = vector
        .iter()
        .map(|value| (value / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, values)
}

/// `Vec::swap_remove` for rows of `width` values stored one after another.
fn swap_remove_row<T: Copy>(values: &mut Vec<T>, width: usize, position: usize) {
    let last = values.len() / width - 1;
    if position != last {
        let (head, tail) = values.split_at_mut(last * width);
        head[position * width..(position + 1) * width].copy_from_slice(&tail[..width]);
    }
    values.truncate(last * width);
}

fn sign_bits(vector: &[f32]) -> Vec<u64> {
    vector
        .chunks(64)
        .map(|chunk| {
            chunk.iter().enumerate().fold(0_u64, |word, (bit, value)| {
                word | (u64::from(value.is_sign_negative()) << bit)
            })
        })
        .collect()
}

fn hamming(left: &[u64], right: &[u64]) -> u32 {
    left.iter()
        .zip(right)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum()
}

fn dot(left: &[i8], right: &[i8]) -> i32 {
    // Written so that the compiler vectorises it (widening multiply-add).
    left.iter()
        .zip(right)
        .map(|(a, b)| i32::from(*a) * i32::from(*b))
        .sum()
}

/// Orders neighbours by similarity for the top-k heap (smallest on top).
#[derive(Debug, PartialEq)]
struct ByLowestSimilarity(Neighbour);

impl Eq for ByLowestSimilarity {}

impl PartialOrd for ByLowestSimilarity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByLowestSimilarity {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .similarity
            .total_cmp(&self.0.similarity)
            .then(other.0.sequence.cmp(&self.0.sequence))
    }
}

impl VectorIndex {
    /// An empty index; the first vector inserted fixes the length of all.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many vectors it holds.
    pub fn len(&self) -> usize {
        self.location.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.location.is_empty()
    }

    /// Whether `sequence` has a vector here.
    pub fn contains(&self, sequence: i64) -> bool {
        self.location.contains_key(&sequence)
    }

    /// Adds or replaces the vector of `sequence` in `scope`. A vector of the wrong length is
    /// ignored (it belongs to another model) and reported as `false`.
    pub fn insert(
        &mut self,
        sequence: i64,
        scope: &str,
        expires_ms: Option<i64>,
        vector: &[f32],
    ) -> bool {
        if self.location.is_empty() && !vector.is_empty() {
            self.dimensions = vector.len();
            self.words = vector.len().div_ceil(64);
        }
        if vector.len() != self.dimensions {
            return false;
        }
        self.remove(sequence);
        let next = self.partitions.len();
        let partition_index = *self
            .partition_of_scope
            .entry(scope.to_owned())
            .or_insert(next);
        if partition_index == next {
            self.partitions.push(Partition::default());
        }
        let partition = &mut self.partitions[partition_index];
        let (scale, values) = quantize(vector);
        self.location
            .insert(sequence, (partition_index, partition.sequences.len()));
        partition.sequences.push(sequence);
        partition.expires_ms.push(expires_ms.unwrap_or(i64::MAX));
        partition.scales.push(scale);
        partition.values.extend_from_slice(&values);
        partition.signs.extend_from_slice(&sign_bits(vector));
        true
    }

    /// Removes the vector of `sequence`, if any.
    pub fn remove(&mut self, sequence: i64) {
        let Some((partition_index, position)) = self.location.remove(&sequence) else {
            return;
        };
        let (dimensions, words) = (self.dimensions, self.words);
        let partition = &mut self.partitions[partition_index];
        partition.sequences.swap_remove(position);
        partition.expires_ms.swap_remove(position);
        partition.scales.swap_remove(position);
        swap_remove_row(&mut partition.values, dimensions, position);
        swap_remove_row(&mut partition.signs, words, position);
        if let Some(&moved) = partition.sequences.get(position) {
            self.location.insert(moved, (partition_index, position));
        }
    }

    /// Changes the expiry of `sequence`, if it has a vector.
    pub fn set_expiry(&mut self, sequence: i64, expires_ms: Option<i64>) {
        if let Some(&(partition_index, position)) = self.location.get(&sequence) {
            self.partitions[partition_index].expires_ms[position] = expires_ms.unwrap_or(i64::MAX);
        }
    }

    /// The `limit` nearest vectors to `query` among the scopes named, not expired at `now_ms`,
    /// with similarity at least `min_similarity`; when `allowed` is given, only among those
    /// sequences (the rows other filters left). Best first.
    pub fn search(
        &self,
        query: &[f32],
        scopes: &[&str],
        allowed: Option<&HashSet<i64>>,
        now_ms: i64,
        min_similarity: f32,
        limit: usize,
    ) -> Vec<Neighbour> {
        if query.len() != self.dimensions || limit == 0 {
            return Vec::new();
        }
        let (query_scale, query_values) = quantize(query);
        let mut best = BinaryHeap::with_capacity(limit + 1);
        let mut consider = |partition: &Partition, position: usize| {
            if partition.expires_ms[position] <= now_ms {
                return;
            }
            let start = position * self.dimensions;
            let row = &partition.values[start..start + self.dimensions];
            #[allow(
                clippy::cast_precision_loss,
                reason = "a dot product of ±127² × 384 fits"
            )]
            let similarity =
                dot(&query_values, row) as f32 * query_scale * partition.scales[position];
            if similarity < min_similarity {
                return;
            }
            best.push(ByLowestSimilarity(Neighbour {
                sequence: partition.sequences[position],
                similarity,
            }));
            if best.len() > limit {
                best.pop();
            }
        };
        let partitions = scopes
            .iter()
            .filter_map(|scope| self.partition_of_scope.get(*scope).copied())
            .collect::<HashSet<_>>();
        let scanned: usize = partitions
            .iter()
            .map(|&index| self.partitions[index].sequences.len())
            .sum();
        match allowed {
            Some(allowed) => {
                for sequence in allowed {
                    if let Some(&(partition_index, position)) = self.location.get(sequence)
                        && partitions.contains(&partition_index)
                    {
                        consider(&self.partitions[partition_index], position);
                    }
                }
            }
            None if scanned <= EXACT_SCAN_LIMIT => {
                for &partition_index in &partitions {
                    let partition = &self.partitions[partition_index];
                    for position in 0..partition.sequences.len() {
                        consider(partition, position);
                    }
                }
            }
            None => {
                let query_signs = sign_bits(query);
                let words = self.words;
                // Distances are small integers: a histogram finds the cut-off for the closest
                // `keep` in one pass, without sorting.
                let mut distances: Vec<(u16, usize, usize)> = Vec::with_capacity(scanned);
                let mut histogram = vec![0_usize; words * 64 + 1];
                for &partition_index in &partitions {
                    let partition = &self.partitions[partition_index];
                    for (position, signs) in partition.signs.chunks_exact(words).enumerate() {
                        if partition.expires_ms[position] > now_ms {
                            let distance = hamming(&query_signs, signs);
                            histogram[distance as usize] += 1;
                            distances.push((
                                u16::try_from(distance).unwrap_or(u16::MAX),
                                partition_index,
                                position,
                            ));
                        }
                    }
                }
                let keep = (limit * PREFILTER_FACTOR).max(MIN_PREFILTER_CANDIDATES);
                let mut cut_off = histogram.len();
                let mut kept = 0;
                for (distance, count) in histogram.iter().enumerate() {
                    kept += count;
                    if kept >= keep {
                        cut_off = distance;
                        break;
                    }
                }
                let close = distances
                    .into_iter()
                    .filter(|(distance, _, _)| usize::from(*distance) <= cut_off);
                for (_, partition_index, position) in close {
                    consider(&self.partitions[partition_index], position);
                }
            }
        }
        let mut neighbours: Vec<_> = best.into_iter().map(|entry| entry.0).collect();
        neighbours.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then(a.sequence.cmp(&b.sequence))
        });
        neighbours
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        values.iter().map(|v| v / norm).collect()
    }

    #[test]
    fn nearest_first_within_the_named_scopes_only() {
        let mut index = VectorIndex::new();
        index.insert(1, "chat:a", None, &unit(&[1.0, 0.0, 0.0]));
        index.insert(2, "chat:a", None, &unit(&[0.7, 0.7, 0.0]));
        index.insert(3, "chat:b", None, &unit(&[1.0, 0.0, 0.0]));
        let found = index.search(&unit(&[1.0, 0.1, 0.0]), &["chat:a"], None, 0, -1.0, 10);
        let sequences: Vec<_> = found.iter().map(|n| n.sequence).collect();
        assert_eq!(sequences, [1, 2]);
        assert!((found[0].similarity - 0.995).abs() < 0.01, "{found:?}");
        assert!(
            index
                .search(&unit(&[1.0, 0.0, 0.0]), &["chat:c"], None, 0, -1.0, 10)
                .is_empty()
        );
    }

    #[test]
    fn removal_keeps_the_other_vectors_findable() {
        let mut index = VectorIndex::new();
        for sequence in 0..5 {
            #[allow(clippy::cast_precision_loss)]
            index.insert(sequence, "global", None, &unit(&[1.0, sequence as f32]));
        }
        index.remove(0);
        index.remove(2);
        assert_eq!(index.len(), 3);
        let found = index.search(&unit(&[1.0, 4.0]), &["global"], None, 0, -1.0, 10);
        let mut sequences: Vec<_> = found.iter().map(|n| n.sequence).collect();
        assert_eq!(sequences[0], 4);
        sequences.sort_unstable();
        assert_eq!(sequences, [1, 3, 4]);
        index.insert(3, "global", None, &unit(&[-1.0, 0.0]));
        let found = index.search(&unit(&[1.0, 4.0]), &["global"], None, 0, 0.0, 10);
        assert_eq!(found.iter().map(|n| n.sequence).collect::<Vec<_>>(), [4, 1]);
    }

    /// Unit vectors in clusters, as sentence embeddings are: a random centre per cluster plus
    /// noise; deterministic.
    fn clustered(count: usize, dimensions: usize) -> Vec<Vec<f32>> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            #[allow(clippy::cast_precision_loss)]
            let value = (state >> 11) as f32 / (1_u64 << 53) as f32;
            value * 2.0 - 1.0
        };
        let centres: Vec<Vec<f32>> = (0..64)
            .map(|_| (0..dimensions).map(|_| next()).collect())
            .collect();
        (0..count)
            .map(|n| {
                unit(
                    &centres[n % 64]
                        .iter()
                        .map(|value| value + 2.0 * next())
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    }

    #[test]
    fn large_scans_find_what_an_exact_scan_finds() {
        let vectors = clustered(EXACT_SCAN_LIMIT * 2, 384);
        let mut index = VectorIndex::new();
        for (sequence, vector) in (0..).zip(&vectors) {
            index.insert(sequence, "global", None, vector);
        }
        // Removing vectors keeps the sign bits in step with the rest.
        for sequence in (0..1000).step_by(3) {
            index.remove(sequence);
        }
        let removed = |sequence: i64| sequence < 1000 && sequence % 3 == 0;
        let mut found = 0;
        let queries = vectors.len() / 400;
        for query in vectors.iter().skip(1).step_by(400).take(queries) {
            let approximate = index.search(query, &["global"], None, 0, -1.0, 10);
            assert!(approximate.iter().all(|n| !removed(n.sequence)));
            let mut exact: Vec<(f32, i64)> = (0..)
                .zip(&vectors)
                .filter(|(sequence, _)| !removed(*sequence))
                .map(|(sequence, vector)| {
                    (vector.iter().zip(query).map(|(a, b)| a * b).sum(), sequence)
                })
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            let approximate: HashSet<i64> = approximate.iter().map(|n| n.sequence).collect();
            found += exact
                .iter()
                .take(10)
                .filter(|(_, sequence)| approximate.contains(sequence))
                .count();
        }
        // Recall@10 against exact f32 search; 8-bit rescoring alone costs a little of it.
        let recall = f64::from(u32::try_from(found).unwrap())
            / f64::from(u32::try_from(queries * 10).unwrap());
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn expired_filtered_and_wrong_length_vectors_are_left_out() {
        let mut index = VectorIndex::new();
        index.insert(1, "global", Some(100), &unit(&[1.0, 0.0]));
        index.insert(2, "global", None, &unit(&[1.0, 0.1]));
        assert!(!index.insert(3, "global", None, &[1.0, 0.0, 0.0]));
        let query = unit(&[1.0, 0.0]);
        let at = |now| index.search(&query, &["global"], None, now, -1.0, 10).len();
        assert_eq!((at(99), at(100)), (2, 1));
        let allowed: HashSet<i64> = [1].into();
        assert_eq!(
            index
                .search(&query, &["global"], Some(&allowed), 0, -1.0, 10)
                .len(),
            1
        );
        index.set_expiry(1, None);
        assert_eq!(
            index
                .search(&query, &["global"], None, 1000, -1.0, 10)
                .len(),
            2
        );
    }
}
