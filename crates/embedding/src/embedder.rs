//! The in-process sentence-embedding model: a BERT encoder (all-MiniLM-L6-v2) run with candle
//! on the CPU, mean-pooled and normalised to unit length.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Tokens beyond this are cut off: the length the model was trained on.
const MAX_TOKENS: usize = 256;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// A model file is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer or the network failed on an input.
    #[error("embedding failed: {0}")]
    Inference(String),
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    model_id: String,
    dimensions: usize,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `directory`; the
    /// model's id is the directory's name (e.g. "all-MiniLM-L6-v2").
    pub fn load(directory: &Path) -> Result<Self, EmbeddingError> {
        let file = |name: &str| directory.join(name);
        let file_error = |path: PathBuf, reason: String| EmbeddingError::File { path, reason };

        let config_path = file("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|error| file_error(config_path.clone(), error.to_string()))?;
        let config: BertConfig = serde_json::from_str(&config_text).map_err(|error| {
            file_error(config_path.clone(), format!("not a BERT config: {error}"))
        })?;

        let tokenizer_path = file("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(file_error(tokenizer_path, "missing".to_owned()));
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|error| file_error(tokenizer_path.clone(), error.to_string()))?;
        // The shipped tokenizer pads every input to 128 tokens; pad a batch to its longest
        // input instead, and allow the model's full length.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|error| file_error(tokenizer_path.clone(), error.to_string()))?;

        let weights_path = file("model.safetensors");
        if !weights_path.is_file() {
            return Err(file_error(weights_path, "missing".to_owned()));
        }
        let device = Device::Cpu;
        // Read rather than mapped: mapping needs `unsafe`, and candle copies the tensors out of
        // the buffer anyway, which is freed once the model is built.
        let weights = std::fs::read(&weights_path)
            .map_err(|error| file_error(weights_path.clone(), error.to_string()))?;
        let variables = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|error| file_error(weights_path.clone(), error.to_string()))?;
        let model = BertModel::load(variables, &config).map_err(|error| {
            file_error(weights_path.clone(), format!("not a BERT model: {error}"))
        })?;

        let model_id = directory.file_name().map_or_else(
            || "unnamed".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        Ok(Self {
            model,
            tokenizer,
            model_id,
            dimensions: config.hidden_size,
            device,
        })
    }

    /// The model's id, stored with every vector it makes.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Length of every vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Unit-length embeddings of `texts`, in order. CPU-bound: call from a blocking thread.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let inference =
            |error: &dyn std::fmt::Display| EmbeddingError::Inference(error.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|error| inference(&error))?;
        let rows = |select: fn(&tokenizers::Encoding) -> &[u32]| {
            let rows: Vec<Tensor> = encodings
                .iter()
                .map(|encoding| Tensor::new(select(encoding), &self.device))
                .collect::<Result<_, _>>()?;
            Tensor::stack(&rows, 0)
        };
        let token_ids = rows(tokenizers::Encoding::get_ids).map_err(|error| inference(&error))?;
        let type_ids =
            rows(tokenizers::Encoding::get_type_ids).map_err(|error| inference(&error))?;
        let mask =
            rows(tokenizers::Encoding::get_attention_mask).map_err(|error| inference(&error))?;

        let pooled = (|| {
            let hidden = self.model.forward(&token_ids, &type_ids, Some(&mask))?;
            // Mean over the real tokens only: padding must not dilute short texts.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        })()
        .map_err(|error: candle_core::Error| inference(&error))?;
        Ok(pooled)
    }
}

impl Embedder {
    /// The tokenizer, for [`crate::StaticEmbedder::distil`].
    pub(crate) fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The network's output at position 1 of `[CLS] token [SEP]` for each vocabulary id in
    /// `tokens`: what the model makes of the token alone. CPU-bound.
    pub(crate) fn token_vectors(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let inference =
            |error: &dyn std::fmt::Display| EmbeddingError::Inference(error.to_string());
        let (classify, separate) = (
            self.tokenizer.token_to_id("[CLS]").unwrap_or(101),
            self.tokenizer.token_to_id("[SEP]").unwrap_or(102),
        );
        let ids: Vec<u32> = tokens
            .iter()
            .flat_map(|&token| [classify, token, separate])
            .collect();
        (|| {
            let token_ids = Tensor::from_vec(ids, (tokens.len(), 3), &self.device)?;
            let type_ids = token_ids.zeros_like()?;
            let mask = token_ids.ones_like()?;
            let hidden = self.model.forward(&token_ids, &type_ids, Some(&mask))?;
            hidden.narrow(1, 1, 1)?.squeeze(1)?.to_vec2::<f32>()
        })()
        .map_err(|error: candle_core::Error| inference(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_is_named_precisely() {
        let directory = std::env::temp_dir().join("synos-no-such-model");
        let error = Embedder::load(&directory).unwrap_err().to_string();
        assert!(error.contains("config.json"), "{error}");
    }
}
