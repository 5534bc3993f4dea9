//! The memory daemon's Prometheus metrics, served through `Admin.GetMetrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::store::Outcome;

/// An outcome or mode label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// What the daemon counts.
#[derive(Debug)]
pub(crate) struct Metrics {
    remembered: Family<KindLabels, Counter>,
    recalls: Family<KindLabels, Counter>,
    recall_seconds: Histogram,
    embedding_seconds_per_text: Histogram,
}

impl Metrics {
    /// The metrics, registered in a new registry.
    pub(crate) fn new() -> (Arc<Self>, Registry) {
        let metrics = Arc::new(Self {
            remembered: Family::default(),
            recalls: Family::default(),
            recall_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            embedding_seconds_per_text: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        });
        let mut registry = Registry::with_prefix("synos_memory");
        registry.register(
            "remembered",
            "Memories stored, by outcome (created, duplicate, superseded)",
            metrics.remembered.clone(),
        );
        registry.register(
            "recalls",
            "Recalls answered, by the mode used",
            metrics.recalls.clone(),
        );
        registry.register_with_unit(
            "recall_duration",
            "Time to answer a recall, query embedding included",
            Unit::Seconds,
            metrics.recall_seconds.clone(),
        );
        registry.register_with_unit(
            "embedding_duration_per_text",
            "Embedding time per text, averaged over each batch",
            Unit::Seconds,
            metrics.embedding_seconds_per_text.clone(),
        );
        (metrics, registry)
    }

    pub(crate) fn count_remembered(&self, outcome: Outcome) {
        let kind = match outcome {
            Outcome::Created => "created",
            Outcome::Duplicate => "duplicate",
            Outcome::Superseded => "superseded",
        };
        self.remembered.get_or_create(&KindLabels { kind }).inc();
    }

    pub(crate) fn count_recall(&self, mode: &'static str) {
        self.recalls.get_or_create(&KindLabels { kind: mode }).inc();
    }

    pub(crate) fn observe_recall(&self, elapsed: Duration) {
        self.recall_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn observe_embedding(&self, elapsed: Duration, texts: usize) {
        #[allow(clippy::cast_precision_loss, reason = "batch sizes are small")]
        self.embedding_seconds_per_text
            .observe(elapsed.as_secs_f64() / texts.max(1) as f64);
    }
}
