//! The sentence-embedding model that memory (recall) and policy (screening) run in-process, in
//! one place so both embed text the same way.
//!
//! [`Embedder`] is the loaded model and its synchronous, CPU-bound `embed`; [`Model`] is how a
//! daemon holds it: loaded on a blocking thread at start, shared, one inference at a time.

mod embedder;
mod model;
mod static_embedder;

pub use embedder::{Embedder, EmbeddingError};
pub use model::Model;
pub use static_embedder::{StaticEmbedder, Tokens};

/// The distilled table's file name inside a model directory.
pub const STATIC_TABLE_FILE: &str = "static-embeddings.safetensors";
