//! The router's Prometheus metrics, served through `Admin.GetMetrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a finished request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The route.
    pub(crate) route: String,
    /// The serving provider, or "" when none served it.
    pub(crate) provider: String,
    /// "ok", or the gRPC code name of the failure.
    pub(crate) outcome: String,
}

/// Labels of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct AttemptLabels {
    /// The provider.
    pub(crate) provider: String,
    /// "ok", "rate_limited", "server_error", "timeout", ...
    pub(crate) outcome: String,
}

/// A provider label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ProviderLabels {
    /// The provider.
    pub(crate) provider: String,
}

/// Token counts by direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TokenLabels {
    /// The provider.
    pub(crate) provider: String,
    /// "input" or "output".
    pub(crate) direction: String,
}

/// One-hot provider state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct StateLabels {
    /// The provider.
    pub(crate) provider: String,
    /// "available", "cooling_down", "circuit_open" or "drained".
    pub(crate) state: String,
}

/// Labels of an HTTP rejection or a screening.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    /// Why, e.g. "missing_key", "wrong_key", "rate_limited", "malformed"; "passed", "blocked".
    pub(crate) reason: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 2 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

fn overhead_histogram() -> Histogram {
    // 10 µs to about 160 ms.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 15))
}

/// Every metric the router keeps.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Finished requests.
    pub(crate) requests: Family<RequestLabels, Counter>,
    /// Attempts at providers.
    pub(crate) attempts: Family<AttemptLabels, Counter>,
    /// Request duration by route.
    pub(crate) request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Time to first token of streamed requests.
    pub(crate) time_to_first_token: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    /// Tokens.
    pub(crate) tokens: Family<TokenLabels, Counter>,
    /// Cost in micro-dollars (integers count exactly).
    pub(crate) cost_microdollars: Family<ProviderLabels, Counter>,
    /// Provider state.
    pub(crate) provider_state: Family<StateLabels, Gauge>,
    /// Time the router itself adds to a request.
    pub(crate) overhead: Histogram,
    /// HTTP requests refused before routing.
    pub(crate) http_rejected: Family<ReasonLabels, Counter>,
    /// Malformed gRPC requests.
    pub(crate) invalid_requests: Counter,
    /// Prompts through the policy gate, by outcome: passed, blocked, off, unscreened (policy
    /// unreachable, failing open) or policy_unavailable (failing closed).
    pub(crate) screenings: Family<ReasonLabels, Counter>,
}

impl Metrics {
    /// The metrics, registered in a new registry.
    pub(crate) fn new() -> (Arc<Self>, Registry) {
        let metrics = Self {
            requests: Family::default(),
            attempts: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            time_to_first_token: Family::new_with_constructor(latency_histogram),
            tokens: Family::default(),
            cost_microdollars: Family::default(),
            provider_state: Family::default(),
            overhead: overhead_histogram(),
            http_rejected: Family::default(),
            invalid_requests: Counter::default(),
            screenings: Family::default(),
        };
        let mut registry = Registry::with_prefix("synos_llm_router");
        registry.register(
            "requests",
            "Requests finished, by route, serving provider and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "attempts",
            "Attempts at providers, by outcome",
            metrics.attempts.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Request duration, by route, provider and outcome",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        registry.register_with_unit(
            "time_to_first_token",
            "Time from request to first streamed token, by provider",
            Unit::Seconds,
            metrics.time_to_first_token.clone(),
        );
        registry.register(
            "tokens",
            "Tokens, by provider and direction",
            metrics.tokens.clone(),
        );
        registry.register(
            "cost_microdollars",
            "Cost in millionths of a US dollar, by provider",
            metrics.cost_microdollars.clone(),
        );
        registry.register(
            "provider_state",
            "1 for each provider's current state",
            metrics.provider_state.clone(),
        );
        registry.register_with_unit(
            "overhead",
            "Time the router adds to a request beyond the provider's",
            Unit::Seconds,
            metrics.overhead.clone(),
        );
        registry.register(
            "http_rejected",
            "HTTP requests refused before routing, by reason",
            metrics.http_rejected.clone(),
        );
        registry.register(
            "invalid_requests",
            "Malformed requests refused",
            metrics.invalid_requests.clone(),
        );
        registry.register(
            "screenings",
            "Prompts through the policy gate, by outcome (passed, blocked, off, unscreened, \
             policy_unavailable)",
            metrics.screenings.clone(),
        );
        (Arc::new(metrics), registry)
    }

    /// Counts an HTTP rejection.
    pub(crate) fn http_rejected(&self, reason: &str) {
        self.http_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records the router's own time for one request.
    pub(crate) fn observe_overhead(&self, overhead: Duration) {
        self.overhead.observe(overhead.as_secs_f64());
    }
}
