//! The embedding model as the daemon uses it: loaded in the background at start, shared by
//! every call, one inference at a time (each already uses every core).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

use crate::embedder::{Embedder, EmbeddingError};

/// Texts embedded in one forward pass: bounds the memory a large batch needs.
const CHUNK: usize = 32;

#[derive(Debug, Clone)]
enum State {
    Loading,
    Ready(Arc<Embedder>),
    Failed(String),
}

/// The daemon's embedding model, loading, loaded or failed.
#[derive(Debug)]
pub struct Model {
    id: String,
    state: watch::Receiver<State>,
    /// One inference at a time; the permit travels with the blocking work, so a cancelled
    /// request does not let a second inference start while the first still runs.
    inference: Arc<Semaphore>,
}

impl Model {
    /// Starts loading the model in `directory` on a blocking thread; its name is the id.
    pub fn load_in_background(directory: PathBuf) -> Arc<Self> {
        let (sender, receiver) = watch::channel(State::Loading);
        let id = directory
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        let model = Arc::new(Self {
            id,
            state: receiver,
            inference: Arc::new(Semaphore::new(1)),
        });
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let state = match Embedder::load(&directory) {
                Ok(embedder) => {
                    tracing::info!(model = embedder.model_id(), dimensions = embedder.dimensions(), elapsed = ?started.elapsed(), "embedding model loaded");
                    State::Ready(Arc::new(embedder))
                }
                Err(error) => {
                    tracing::error!(%error, "embedding model unavailable: keyword recall only");
                    State::Failed(format!("embedding model unavailable: {error}"))
                }
            };
            let _ = sender.send(state);
        });
        model
    }

    /// The id stored with every vector: the model directory's name.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    /// Why the model cannot be used, once loading failed.
    pub fn problem(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Failed(problem) => Some(problem.clone()),
            State::Loading | State::Ready(_) => None,
        }
    }

    /// Waits for loading to end: the model, or `None` when it failed.
    pub async fn ready(&self) -> Option<Arc<Embedder>> {
        let mut state = self.state.clone();
        let ended = state
            .wait_for(|state| !matches!(state, State::Loading))
            .await
            .ok()?;
        match &*ended {
            State::Ready(embedder) => Some(embedder.clone()),
            State::Loading | State::Failed(_) => None,
        }
    }

    /// Vectors for `texts`, in order; `None` when no model could be loaded.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Option<Vec<Vec<f32>>>, EmbeddingError> {
        let Some(embedder) = self.ready().await else {
            return Ok(None);
        };
        let turn = self
            .inference
            .clone()
            .acquire_owned()
            .await
            .map_err(|error| EmbeddingError::Inference(error.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut vectors = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(CHUNK) {
                let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
                vectors.extend(embedder.embed(&chunk)?);
            }
            Ok(Some(vectors))
        })
        .await
        .map_err(|error| EmbeddingError::Inference(error.to_string()))?
    }
}
