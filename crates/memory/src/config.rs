//! `/etc/synos/memory.toml`: the store's limits, the embedding model, and how recall ranks.

use std::path::PathBuf;

use serde::Deserialize;
use synos_common::config::{LogConfig, Problem, ServerConfig, Settings};

/// The memory daemon's settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and limits.
    pub server: ServerConfig,
    /// Log filter.
    pub log: LogConfig,
    /// What is stored and how duplicates are told apart.
    pub store: StoreConfig,
    /// The sentence-embedding model.
    pub embedding: EmbeddingConfig,
    /// How recall ranks.
    pub recall: RecallConfig,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Longest memory text accepted, in bytes.
    pub max_text_bytes: usize,
    /// Most memories one `Remember` or import chunk may carry.
    pub max_batch: usize,
    /// Cosine similarity from which a new memory supersedes an older one of its scope.
    pub near_duplicate_similarity: f32,
    /// How often expired memories are deleted, in seconds.
    pub purge_interval_s: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_text_bytes: 16 * 1024,
            max_batch: 1000,
            near_duplicate_similarity: 0.92,
            purge_interval_s: 60,
        }
    }
}

/// `[embedding]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// The model's directory name under `$SYNOS_MODEL_DIR` (`/usr/share/synos/models`); it is
    /// also the model id stored with every vector, so changing it re-embeds every memory.
    pub model: String,
    /// A model directory elsewhere; its name is then the model id.
    pub model_directory: Option<PathBuf>,
    /// Texts embedded together by the background re-embedding.
    pub batch_size: usize,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            model: "all-MiniLM-L6-v2".to_owned(),
            model_directory: None,
            batch_size: 16,
        }
    }
}

/// `[recall]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecallConfig {
    /// How many results each ranking contributes to the fusion.
    pub candidates: u32,
    /// Vector matches below this cosine similarity are not results.
    pub min_similarity: f32,
    /// The constant k of reciprocal rank fusion, 1/(k + rank).
    pub fusion_k: f64,
    /// How much importance moves a score: ×(1 + w × (importance − 0.5)).
    pub importance_weight: f64,
    /// Share of a score that decays with age: ×(1 − w + w × 2^(−age / half-life)).
    pub recency_weight: f64,
    /// Age at which the decaying share has halved, in days.
    pub recency_half_life_days: f64,
}

impl Default for RecallConfig {
    fn default() -> Self {
        Self {
            candidates: 50,
            min_similarity: 0.2,
            fusion_k: 60.0,
            importance_weight: 0.3,
            recency_weight: 0.2,
            recency_half_life_days: 30.0,
        }
    }
}

impl Settings for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, reason: &str| {
            if !ok {
                problems.push(Problem::new(key, reason));
            }
        };
        let store = &self.store;
        check(
            (16..=1024 * 1024).contains(&store.max_text_bytes),
            "store.max_text_bytes",
            "must be between 16 and 1048576",
        );
        check(
            (1..=10_000).contains(&store.max_batch),
            "store.max_batch",
            "must be between 1 and 10000",
        );
        check(
            store.near_duplicate_similarity > 0.5 && store.near_duplicate_similarity <= 1.0,
            "store.near_duplicate_similarity",
            "must be above 0.5 and at most 1 (1 turns near-duplicate merging off)",
        );
        check(
            store.purge_interval_s >= 1,
            "store.purge_interval_s",
            "must be at least 1",
        );
        let embedding = &self.embedding;
        check(
            !embedding.model.is_empty()
                && !embedding.model.contains('/')
                && embedding.model != ".."
                && embedding.model != ".",
            "embedding.model",
            "must be a directory name under $SYNOS_MODEL_DIR, without '/'",
        );
        check(
            (1..=256).contains(&embedding.batch_size),
            "embedding.batch_size",
            "must be between 1 and 256",
        );
        let recall = &self.recall;
        check(
            (1..=1000).contains(&recall.candidates),
            "recall.candidates",
            "must be between 1 and 1000",
        );
        check(
            (-1.0..=1.0).contains(&recall.min_similarity),
            "recall.min_similarity",
            "must be between -1 and 1",
        );
        check(
            recall.fusion_k >= 0.0 && recall.fusion_k.is_finite(),
            "recall.fusion_k",
            "must be a number of at least 0",
        );
        check(
            (0.0..=2.0).contains(&recall.importance_weight),
            "recall.importance_weight",
            "must be between 0 and 2",
        );
        check(
            (0.0..=1.0).contains(&recall.recency_weight),
            "recall.recency_weight",
            "must be between 0 and 1",
        );
        check(
            recall.recency_half_life_days > 0.0 && recall.recency_half_life_days.is_finite(),
            "recall.recency_half_life_days",
            "must be more than 0",
        );
        problems
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format as _, Toml};

    use super::*;

    /// The packaged file shows every key commented out with its built-in default.
    #[test]
    fn the_packaged_file_shows_the_built_in_defaults() {
        let shipped = include_str!("../../../packaging/config/memory.toml");
        let uncommented = synos_common::config::uncommented_settings(
            shipped,
            &["socket", "tcp_listen", "model_directory"],
        );
        let config: Config = Figment::from(Toml::string(&uncommented)).extract().unwrap();
        assert_eq!(config, Config::default());
        assert!(config.problems().is_empty());
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let mut config = Config::default();
        config.store.near_duplicate_similarity = 0.3;
        config.embedding.model = "../etc".to_owned();
        config.recall.recency_half_life_days = 0.0;
        let keys: Vec<String> = config
            .problems()
            .into_iter()
            .map(|problem| problem.key)
            .collect();
        assert_eq!(
            keys,
            [
                "store.near_duplicate_similarity",
                "embedding.model",
                "recall.recency_half_life_days"
            ]
        );
    }
}
