//! A static sentence embedding distilled from the model: each vocabulary token's vector is what
//! the network makes of that token alone, computed once; a text's vector is then a weighted mean
//! of its tokens' rows, thousands of times cheaper than running the network (the Model2Vec
//! approach). It loses word order and context, so it is for screening many windows of a text
//! quickly, not for recall.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt as _;
use tokenizers::Tokenizer;

use crate::embedder::{Embedder, EmbeddingError};
use crate::word_piece::AsciiWordPiece;

/// Tokens run through the network together while distilling.
const DISTIL_BATCH: usize = 512;
/// The tensor's name in the distilled file.
const TABLE_NAME: &str = "token_vectors";
/// Rows multiplied at once by [`StaticEmbedder::row_dot_products`]: 3 MB in single precision.
const ROWS_PER_PRODUCT_BLOCK: usize = 2048;

/// A distilled token table and the tokenizer that indexes it.
pub struct StaticEmbedder {
    tokenizer: Tokenizer,
    /// The same tokenization for ASCII text, ten times faster; `None` for a tokenizer it does
    /// not reproduce.
    fast_path: Option<AsciiWordPiece>,
    /// `vocabulary × dimensions`, row-major, centred and weighted at load; half precision
    /// halves the daemon's memory (23 MB) and changes no similarity in its third decimal.
    rows: Vec<f16>,
    dimensions: usize,
}

impl std::fmt::Debug for StaticEmbedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StaticEmbedder")
            .field("dimensions", &self.dimensions)
            .field("vocabulary", &(self.rows.len() / self.dimensions.max(1)))
            .finish_non_exhaustive()
    }
}

/// Tokens of one text, with byte offsets into it.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Vocabulary ids, special tokens excluded.
    pub ids: Vec<u32>,
    /// Byte range of each token in the text.
    pub offsets: Vec<(usize, usize)>,
}

impl StaticEmbedder {
    /// Runs every vocabulary token through `embedder` and writes the table to `path`
    /// (safetensors). Takes about a minute on two cores; the packaging scripts do it once.
    pub fn distil(embedder: &Embedder, path: &Path) -> Result<(), EmbeddingError> {
        let vocabulary = embedder.tokenizer().get_vocab_size(true);
        let tokens: Vec<u32> = (0..u32::try_from(vocabulary).unwrap_or(u32::MAX)).collect();
        let mut rows = Vec::new();
        let mut dimensions = 0;
        for batch in tokens.chunks(DISTIL_BATCH) {
            for row in embedder.token_vectors(batch)? {
                dimensions = row.len();
                rows.extend(row);
            }
        }
        let file_error = |reason: String| EmbeddingError::File {
            path: path.to_owned(),
            reason,
        };
        let table = Tensor::from_vec(rows, (vocabulary, dimensions), &Device::Cpu)
            .and_then(|table| table.to_dtype(DType::F16))
            .map_err(|error| file_error(error.to_string()))?;
        let temporary = path.with_extension("partial");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(TABLE_NAME, table)]),
            &temporary,
        )
        .map_err(|error| file_error(error.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|error| file_error(error.to_string()))
    }

    /// Loads the tokenizer from `model_directory` and the distilled table from `table_path`.
    pub fn load(model_directory: &Path, table_path: &Path) -> Result<Self, EmbeddingError> {
        let file_error = |path: &Path, reason: String| EmbeddingError::File {
            path: path.to_owned(),
            reason,
        };
        let tokenizer_path = model_directory.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|error| file_error(&tokenizer_path, error.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|error| file_error(&tokenizer_path, error.to_string()))?;
        let tensors = candle_core::safetensors::load(table_path, &Device::Cpu)
            .map_err(|error| file_error(table_path, error.to_string()))?;
        let table = tensors
            .get(TABLE_NAME)
            .ok_or_else(|| file_error(table_path, format!("no tensor named {TABLE_NAME}")))?;
        let (vocabulary, dimensions) = table
            .dims2()
            .map_err(|error| file_error(table_path, error.to_string()))?;
        if vocabulary != tokenizer.get_vocab_size(true) {
            return Err(file_error(
                table_path,
                format!(
                    "{vocabulary} rows, but the tokenizer has {} tokens: distilled from another model",
                    tokenizer.get_vocab_size(true)
                ),
            ));
        }
        let mut rows: Vec<f32> = table
            .to_dtype(DType::F32)
            .and_then(|table| table.flatten_all())
            .and_then(|flat| flat.to_vec1())
            .map_err(|error| file_error(table_path, error.to_string()))?;
        Self::centre_and_weight(&mut rows, dimensions);
        let mut half_rows = vec![f16::ZERO; rows.len()];
        half_rows.convert_from_f32_slice(&rows);
        Ok(Self {
            fast_path: AsciiWordPiece::for_tokenizer(&tokenizer),
            tokenizer,
            rows: half_rows,
            dimensions,
        })
    }

    /// Removes what every token shares (the mean row), which would otherwise make every text
    /// look alike, and weights rows by rarity: WordPiece vocabularies list frequent tokens first,
    /// so a row's index stands in for its rank (Zipf), as in Model2Vec.
    fn centre_and_weight(rows: &mut [f32], dimensions: usize) {
        let vocabulary = rows.len() / dimensions;
        let mut mean = vec![0.0_f64; dimensions];
        for row in rows.chunks(dimensions) {
            for (sum, value) in mean.iter_mut().zip(row) {
                *sum += f64::from(*value);
            }
        }
        for (index, row) in rows.chunks_mut(dimensions).enumerate() {
            #[expect(clippy::cast_precision_loss, reason = "ranks below 2^24")]
            let weight = ((index + 2) as f32).ln();
            for (value, sum) in row.iter_mut().zip(&mean) {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_precision_loss,
                    reason = "f32 table"
                )]
                let centred = *value - (*sum / vocabulary as f64) as f32;
                *value = centred * weight;
            }
        }
    }

    /// Length of every vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The tokens of `text`, without special tokens.
    pub fn tokens(&self, text: &str) -> Result<Tokens, EmbeddingError> {
        if let Some(tokens) = self
            .fast_path
            .as_ref()
            .and_then(|fast_path| fast_path.tokens(text, &self.tokenizer))
        {
            return Ok(tokens);
        }
        self.tokens_by_the_library(text)
    }

    /// [`Self::tokens`] by the `tokenizers` pipeline, whatever the text.
    fn tokens_by_the_library(&self, text: &str) -> Result<Tokens, EmbeddingError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|error| EmbeddingError::Inference(error.to_string()))?;
        Ok(Tokens {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// Number of rows: the tokenizer's vocabulary.
    pub fn vocabulary(&self) -> usize {
        self.rows.len() / self.dimensions.max(1)
    }

    /// Adds the rows of `ids` to `sum`, which is one vector long; an id outside the table adds
    /// nothing.
    pub fn add_rows(&self, ids: &[u32], sum: &mut [f32]) {
        // Converted a stretch at a time into a buffer on the stack: no allocation per call, and
        // the additions vectorise (a window's eight rows are most of what screening costs).
        const STRETCH: usize = 64;
        let mut values = [0.0_f32; STRETCH];
        for &id in ids {
            let start = id as usize * self.dimensions;
            if let Some(row) = self.rows.get(start..start + self.dimensions) {
                for (halves, totals) in row.chunks(STRETCH).zip(sum.chunks_mut(STRETCH)) {
                    let values = &mut values[..halves.len()];
                    halves.convert_to_f32_slice(values);
                    for (total, value) in totals.iter_mut().zip(values.iter()) {
                        *total += value;
                    }
                }
            }
        }
    }

    /// Every row's dot product with each of `directions` (vectors laid end to end): a
    /// `vocabulary × direction count` matrix, row-major. A window's similarity to a direction is
    /// then the sum of its tokens' entries over the length of its summed rows, without touching
    /// the rows again (what makes screening a long text cheap).
    ///
    /// One matrix product (candle's, blocked and on every core) rather than a dot product per
    /// pair: a daemon computing this at start is ready in tens of milliseconds, not a third of a
    /// second (and not a minute on a slow or emulated CPU).
    pub fn row_dot_products(&self, directions: &[f32]) -> Result<Vec<f32>, EmbeddingError> {
        table_dot_products(&self.rows, self.dimensions, directions)
    }

    /// Unit-length mean of the rows of `ids` (all zeros when there are none).
    pub fn embed_ids(&self, ids: &[u32]) -> Vec<f32> {
        let mut sum = vec![0.0_f32; self.dimensions];
        self.add_rows(ids, &mut sum);
        let norm = norm(&sum);
        if norm > 0.0 {
            for value in &mut sum {
                *value /= norm;
            }
        }
        sum
    }

    /// Unit-length vector of `text`.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, EmbeddingError> {
        Ok(self.embed_ids(&self.tokens(text)?.ids))
    }
}

/// [`StaticEmbedder::row_dot_products`] of the table `rows` (`dimensions` wide).
fn table_dot_products(
    rows: &[f16],
    dimensions: usize,
    directions: &[f32],
) -> Result<Vec<f32>, EmbeddingError> {
    let dimensions = dimensions.max(1);
    let count = directions.len() / dimensions;
    if count == 0 {
        return Ok(Vec::new());
    }
    let inference = |error: candle_core::Error| EmbeddingError::Inference(error.to_string());
    let device = Device::Cpu;
    let directions = Tensor::from_slice(
        &directions[..count * dimensions],
        (count, dimensions),
        &device,
    )
    .and_then(|directions| directions.t()?.contiguous())
    .map_err(inference)?;
    let mut products = Vec::with_capacity(rows.len() / dimensions * count);
    // A block of rows at a time: the table is never copied whole into single precision.
    for block in rows.chunks(ROWS_PER_PRODUCT_BLOCK * dimensions) {
        let block_products =
            Tensor::from_slice(block, (block.len() / dimensions, dimensions), &device)
                .and_then(|block| {
                    block
                        .to_dtype(DType::F32)?
                        .matmul(&directions)?
                        .flatten_all()?
                        .to_vec1::<f32>()
                })
                .map_err(inference)?;
        products.extend(block_products);
    }
    Ok(products)
}

/// Euclidean length of `vector`.
pub fn norm(vector: &[f32]) -> f32 {
    dot(vector, vector).sqrt()
}

/// Dot product in eight independent lanes: a single running sum cannot be reordered, so the
/// compiler would not vectorise it (four times slower here).
pub fn dot(left: &[f32], right: &[f32]) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_product_is_every_row_dotted_with_every_direction() {
        let dimensions = 384;
        // More rows than one block holds, and a last block that is not full.
        let row_count = ROWS_PER_PRODUCT_BLOCK * 2 + 5;
        let rows: Vec<f16> = (0..row_count * dimensions)
            .map(|index| f16::from_f32(((index * 7919) % 1000) as f32 / 1000.0 - 0.5))
            .collect();
        let directions: Vec<f32> = (0..3 * dimensions)
            .map(|index| ((index * 104_729) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let products = table_dot_products(&rows, dimensions, &directions).unwrap();
        assert_eq!(products.len(), row_count * 3);
        let mut row = vec![0.0_f32; dimensions];
        for (index, chunk) in rows.chunks_exact(dimensions).enumerate() {
            chunk.convert_to_f32_slice(&mut row);
            for (direction_index, direction) in directions.chunks_exact(dimensions).enumerate() {
                let expected = dot(&row, direction);
                let found = products[index * 3 + direction_index];
                assert!(
                    (found - expected).abs() <= 1e-3,
                    "row {index}, direction {direction_index}: {found} against {expected}"
                );
            }
        }
        assert!(
            table_dot_products(&rows, dimensions, &[])
                .unwrap()
                .is_empty()
        );
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
