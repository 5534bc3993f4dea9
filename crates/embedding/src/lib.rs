//! The sentence-embedding model that memory (recall) and policy (screening) run in-process, in
//! one place so both embed text the same way.
//!
//! [`Embedder`] is the loaded model and its synchronous, CPU-bound `embed`; [`Model`] is how a
//! daemon holds it: loaded on a blocking thread at start, shared, one inference at a time.

mod embedder;
mod model;
mod static_embedder;
mod word_piece;

pub use embedder::{Embedder, EmbeddingError};
pub use model::Model;
pub use static_embedder::{StaticEmbedder, Tokens, dot, norm};

/// The distilled table's file name inside a model directory.
pub const STATIC_TABLE_FILE: &str = "static-embeddings.safetensors";

/// Where `scripts/fetch-models.sh` leaves the models on a development machine:
/// `$SYNOS_MODEL_DIR`, else `synos/models` in the user's cache directory. Tests and benchmarks
/// find them here; the daemons are told by their configuration.
pub fn fetched_model_directory() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(directory) = std::env::var_os("SYNOS_MODEL_DIR").filter(|value| !value.is_empty()) {
        return PathBuf::from(directory);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
            PathBuf::from,
        )
        .join("synos/models")
}
