//! The doctor's own metrics, and the host's one Prometheus scrape target: `GET /metrics` on
//! loopback serves them together with every watched daemon's, fetched over its socket through
//! `Admin.GetMetrics` at scrape time, so a scrape sees what is true now and a daemon that is
//! down costs its own metrics only (`synos_doctor_scrape_up` says which).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use synos_proto::admin::v1::GetMetricsRequest;
use synos_proto::admin::v1::admin_client::AdminClient;
use synos_proto::doctor::v1::CheckStatus;

use crate::incidents::Book;

/// The `FileDescriptorName=` of the socket unit that passes the endpoint's socket.
pub const FD_NAME: &str = "metrics";
/// What the OpenMetrics text ends with, once per exposition.
const END: &str = "# EOF\n";

/// Labels naming a check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    /// e.g. "daemon:synos-memory".
    check: String,
}

/// Labels naming a daemon.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DaemonLabels {
    /// e.g. "synos-memory".
    daemon: String,
}

/// The doctor's gauges, refreshed from the book by the watch loop.
#[derive(Debug, Clone)]
pub struct DoctorMetrics {
    open_incidents: Gauge,
    survival_mode: Gauge,
    pending_actions: Gauge,
    check_failing: Family<CheckLabels, Gauge>,
}

impl DoctorMetrics {
    /// The gauges and the registry that holds them.
    pub fn new() -> (Self, Registry) {
        let metrics = Self {
            open_incidents: Gauge::default(),
            survival_mode: Gauge::default(),
            pending_actions: Gauge::default(),
            check_failing: Family::default(),
        };
        let mut registry = Registry::with_prefix("synos_doctor");
        registry.register(
            "open_incidents",
            "Incidents open now",
            metrics.open_incidents.clone(),
        );
        registry.register(
            "survival_mode",
            "1 while the system is in survival mode",
            metrics.survival_mode.clone(),
        );
        registry.register(
            "pending_actions",
            "Actions waiting for an operator's approval",
            metrics.pending_actions.clone(),
        );
        registry.register(
            "check_failing",
            "1 while a check fails (with or without an open incident)",
            metrics.check_failing.clone(),
        );
        (metrics, registry)
    }

    /// Sets every gauge from `book`.
    pub fn refresh(&self, book: &Book) {
        let count = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
        self.open_incidents
            .set(count(book.incidents(true, usize::MAX).len()));
        self.survival_mode
            .set(i64::from(!book.survival_reasons().is_empty()));
        self.pending_actions.set(count(book.proposals(false).len()));
        for check in book.check_reports() {
            let failing = matches!(check.status(), CheckStatus::Failing | CheckStatus::Critical);
            self.check_failing
                .get_or_create(&CheckLabels {
                    check: check.name.clone(),
                })
                .set(i64::from(failing));
        }
    }
}

/// What the endpoint needs: the doctor's registry and the daemons to fetch.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The doctor's own metrics.
    pub registry: Arc<Registry>,
    /// Each watched daemon's binary name and socket.
    pub daemons: Vec<(&'static str, PathBuf)>,
    /// How long one daemon may take to answer.
    pub timeout: Duration,
}

/// The HTTP app: `GET /metrics`.
pub fn app(scrape: Scrape) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let scrape = scrape.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    )],
                    exposition(&scrape).await,
                )
                    .into_response()
            }
        }),
    )
}

/// The doctor's metrics, every daemon's it could fetch, and which it could, as one OpenMetrics
/// text.
pub async fn exposition(scrape: &Scrape) -> String {
    let fetched = futures_util::future::join_all(
        scrape
            .daemons
            .iter()
            .map(|(_, socket)| fetch(socket, scrape.timeout)),
    )
    .await;
    let scrape_up = Family::<DaemonLabels, Gauge>::default();
    let mut text = encode(&scrape.registry);
    for ((daemon, _), fetched) in scrape.daemons.iter().zip(fetched) {
        let up = match fetched {
            Ok(daemon_text) => {
                text.push_str(daemon_text.strip_suffix(END).unwrap_or(&daemon_text));
                1
            }
            Err(problem) => {
                tracing::debug!(%daemon, %problem, "no metrics from this daemon for this scrape");
                0
            }
        };
        scrape_up
            .get_or_create(&DaemonLabels {
                daemon: (*daemon).to_owned(),
            })
            .set(up);
    }
    let mut scraping = Registry::with_prefix("synos_doctor");
    scraping.register(
        "scrape_up",
        "1 when this scrape got the daemon's metrics over its socket",
        scrape_up,
    );
    text.push_str(&encode(&scraping));
    text.push_str(END);
    text
}

/// `registry` as OpenMetrics text without its end line.
fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text.strip_suffix(END).map(str::to_owned).unwrap_or(text)
}

async fn fetch(socket: &std::path::Path, timeout: Duration) -> Result<String, String> {
    crate::peers::ask(socket, timeout, |channel| async move {
        AdminClient::new(channel)
            .get_metrics(GetMetricsRequest {})
            .await
    })
    .await
    .map(|answer| answer.text)
    .map_err(|error| error.to_string())
}
