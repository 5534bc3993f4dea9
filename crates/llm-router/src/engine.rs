//! The routing engine: walks a route's fallback chain for each request, within the route's
//! tier and trust limits and budgets, with retries, cooldowns and circuit breaking, and
//! records what every attempt did. Both front ends (gRPC and HTTP) call it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::{Stream, StreamExt as _};
use rand::Rng as _;
use serde_json::{Map, Value};
use synos_common::error::ErrorKind;

use crate::accounting::{Charge, Ledger, estimate_tokens};
use crate::config::{Config, Price, ProviderConfig, ProviderKind, RouteConfig, Tier, Trust};
use crate::credentials::CredentialSources;
use crate::gate::{Gate, PendingAudit, Redaction, Screening};
use crate::keys::KeyStore;
use crate::local::LocalModel;
use crate::metrics::{AttemptLabels, Metrics, ProviderLabels, RequestLabels, TokenLabels};
use crate::provider_state::{Admission, Breaker, ProviderSnapshot, ProviderState};
use crate::upstream::{
    ChatReply, ChunkReader, Failure, HttpProvider, StreamChunk, Upstream, with_model,
};

/// The route embeddings use when a request names none.
pub(crate) const DEFAULT_EMBED_ROUTE: &str = "embed";
/// The route chat uses when a request names none.
pub(crate) const DEFAULT_CHAT_ROUTE: &str = "default";

/// What happened to one chain entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It answered.
    Ok,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx.
    ServerError,
    /// A timeout.
    Timeout,
    /// Connecting failed or the connection broke.
    ConnectionFailed,
    /// Not a valid reply.
    BadReply,
    /// It refused the request (4xx).
    Rejected,
    /// Skipped without a round trip (cooling, open, drained, saturated, no credential).
    Skipped,
    /// Outside the route's tier or trust limits.
    NotAllowed,
}

impl Outcome {
    /// Metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::ConnectionFailed => "connection_failed",
            Self::BadReply => "bad_reply",
            Self::Rejected => "rejected",
            Self::Skipped => "skipped",
            Self::NotAllowed => "not_allowed",
        }
    }

    fn of(failure: &Failure) -> Self {
        match failure {
            Failure::RateLimited { .. } => Self::RateLimited,
            Failure::ServerError { .. } => Self::ServerError,
            Failure::Timeout(_) => Self::Timeout,
            Failure::Connection(_) => Self::ConnectionFailed,
            Failure::BadReply(_) => Self::BadReply,
            Failure::Rejected { .. } => Self::Rejected,
        }
    }
}

/// One attempt in a reply's attempt chain.
#[derive(Debug, Clone)]
pub(crate) struct AttemptRecord {
    /// The provider.
    pub(crate) provider: String,
    /// The provider's model name.
    pub(crate) model: String,
    /// What happened.
    pub(crate) outcome: Outcome,
    /// Why, in words.
    pub(crate) detail: String,
    /// How long it took (zero when skipped).
    pub(crate) latency: Duration,
}

/// Tokens and cost of a served request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UsageRecord {
    /// Prompt tokens.
    pub(crate) input_tokens: u64,
    /// Generated tokens.
    pub(crate) output_tokens: u64,
    /// The router counted (estimated) them: the provider reported none.
    pub(crate) counted: bool,
    /// US dollars.
    pub(crate) cost_usd: f64,
}

/// Who served a request and how.
#[derive(Debug, Clone, Default)]
pub(crate) struct Served {
    /// The route.
    pub(crate) route: String,
    /// The serving provider ("" while none has).
    pub(crate) provider: String,
    /// Its model name.
    pub(crate) model: String,
    /// Every attempt, the serving one last.
    pub(crate) attempts: Vec<AttemptRecord>,
    /// Set once the request is complete.
    pub(crate) usage: Option<UsageRecord>,
}

impl Served {
    /// "groq ok 120 ms; local skipped ..." for headers and messages.
    pub(crate) fn describe_attempts(&self) -> String {
        self.attempts
            .iter()
            .map(|attempt| {
                format!(
                    "{}/{} {} {} ms{}",
                    attempt.provider,
                    attempt.model,
                    attempt.outcome.label(),
                    attempt.latency.as_millis(),
                    if attempt.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", attempt.detail)
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Why a request was not served.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RouteError {
    /// No such route.
    #[error("{0}")]
    UnknownRoute(String),
    /// A budget is spent.
    #[error("{0}")]
    BudgetExhausted(String),
    /// Every entry of the chain is outside the allowed tier or trust.
    #[error("{message}")]
    NotAllowed {
        /// What was refused and why.
        message: String,
        /// The entries considered.
        served: Box<Served>,
    },
    /// Every allowed entry failed or was skipped.
    #[error("{message}")]
    Exhausted {
        /// Summary.
        message: String,
        /// The attempts.
        served: Box<Served>,
        /// Every tried provider refused the request itself (4xx).
        rejected: bool,
    },
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// Policy screened the prompt as an attack.
    #[error("{message}")]
    Blocked {
        /// What was refused and why.
        message: String,
        /// The matched rules.
        rules: Vec<String>,
    },
    /// Policy could not screen the prompt and the stance is to refuse.
    #[error("{0}")]
    PolicyUnavailable(String),
    /// Policy does not allow the principal to use the route.
    #[error("{0}")]
    Forbidden(String),
    /// Policy answered with an error of its own (its rate limit, a request it finds malformed,
    /// its audit log unwritable): refused whatever the stance for an unreachable policy.
    #[error("{message}")]
    PolicyRefused {
        /// The kind of policy's error, as the caller should see it.
        kind: ErrorKind,
        /// What was refused and why.
        message: String,
    },
}

impl RouteError {
    /// The attempts made, if any.
    pub(crate) fn served(&self) -> Option<&Served> {
        match self {
            Self::NotAllowed { served, .. } | Self::Exhausted { served, .. } => Some(served),
            _ => None,
        }
    }

    /// The kind of failure, which the gRPC front end turns into a status code.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownRoute(_) => ErrorKind::NotFound,
            Self::BudgetExhausted(_) => ErrorKind::ResourceExhausted,
            Self::NotAllowed { .. } => ErrorKind::FailedPrecondition,
            Self::Exhausted { rejected: true, .. } | Self::InvalidRequest(_) => {
                ErrorKind::InvalidArgument
            }
            Self::Exhausted { .. } | Self::PolicyUnavailable(_) => ErrorKind::Unavailable,
            Self::Blocked { .. } | Self::Forbidden(_) => ErrorKind::PermissionDenied,
            Self::PolicyRefused { kind, .. } => *kind,
        }
    }

    /// Metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::UnknownRoute(_) => "unknown_route",
            Self::BudgetExhausted(_) => "budget_exhausted",
            Self::NotAllowed { .. } => "not_allowed",
            Self::Exhausted { .. } => "exhausted",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Blocked { .. } => "blocked",
            Self::PolicyUnavailable(_) => "policy_unavailable",
            Self::Forbidden(_) => "forbidden",
            Self::PolicyRefused { .. } => "policy_refused",
        }
    }
}

/// A chat request as the engine sees it.
#[derive(Debug, Clone)]
pub(crate) struct ChatCall {
    /// Route name.
    pub(crate) route: String,
    /// Whom it is for.
    pub(crate) principal: String,
    /// The OpenAI request body without `model` and `stream`: `messages`, `max_tokens`, ...
    pub(crate) fields: Map<String, Value>,
    /// Tightens the route's tier ceiling.
    pub(crate) max_tier: Option<Tier>,
    /// Tightens the route's trust floor.
    pub(crate) min_trust: Option<Trust>,
}

impl ChatCall {
    fn prompt_length(&self) -> usize {
        self.fields
            .get("messages")
            .and_then(Value::as_array)
            .map_or(0, |messages| {
                messages
                    .iter()
                    .map(|message| match message.get("content") {
                        Some(Value::String(text)) => text.len(),
                        Some(other) => other.to_string().len(),
                        None => 0,
                    })
                    .sum()
            })
    }
}

/// One provider in one configuration generation.
#[derive(Debug)]
pub(crate) struct ProviderRuntime {
    /// Its configuration.
    pub(crate) config: ProviderConfig,
    /// Its client; `None` when it cannot be used (the reason is in `problem`).
    pub(crate) upstream: Option<Upstream>,
    /// Why it cannot be used, e.g. a missing credential.
    pub(crate) problem: Option<String>,
    /// Live state, kept across reloads.
    pub(crate) state: Arc<ProviderState>,
}

/// The paths on this machine the router reaches beyond its providers.
#[derive(Debug, Clone)]
pub(crate) struct LocalEnvironment {
    /// `$SYNOS_MODEL_DIR`: relative model files are under it.
    pub(crate) model_directory: std::path::PathBuf,
    /// hwaccel's socket, asked for the physical core count.
    pub(crate) hwaccel_socket: std::path::PathBuf,
    /// policy's socket, which the gate screens prompts through unless configured otherwise.
    pub(crate) policy_socket: std::path::PathBuf,
}

/// One configuration generation: replaced whole on reload, while requests in flight finish
/// on the one they started with.
#[derive(Debug)]
pub(crate) struct Topology {
    /// The configuration.
    pub(crate) config: Config,
    /// Providers by name.
    pub(crate) providers: HashMap<String, Arc<ProviderRuntime>>,
    /// The policy gate (kept across reloads that leave `[policy]` unchanged).
    pub(crate) gate: Arc<Gate>,
}

impl Topology {
    /// Builds the providers of `config` (with its built-ins), keeping the live state of
    /// `previous` providers whose name, kind, address and concurrency are unchanged, and the
    /// loaded model of local providers whose settings are unchanged.
    pub(crate) fn build(
        config: Config,
        previous: Option<&Self>,
        credentials: &CredentialSources,
        local: &LocalEnvironment,
    ) -> Self {
        let config = config.with_built_ins();
        let mut providers = HashMap::new();
        for provider in &config.providers {
            let old = previous.and_then(|previous| previous.providers.get(&provider.name));
            let state = old
                .filter(|old| {
                    old.config.kind == provider.kind
                        && old.config.base_url == provider.base_url
                        && old.config.max_concurrency == provider.max_concurrency
                })
                .map_or_else(
                    || Arc::new(ProviderState::new(provider.max_concurrency)),
                    |old| Arc::clone(&old.state),
                );
            let upstream = match provider.kind {
                ProviderKind::OpenAi => {
                    let credential = match &provider.credential {
                        None => Ok(None),
                        Some(name) => credentials.resolve(name).map(Some),
                    };
                    credential
                        .and_then(|credential| HttpProvider::new(provider, credential))
                        .map(|http| Upstream::Http(Box::new(http)))
                }
                ProviderKind::Local => {
                    let kept = old.and_then(|old| match &old.upstream {
                        Some(Upstream::Local(model))
                            if model.same_as(provider, &local.model_directory) =>
                        {
                            Some(Arc::clone(model))
                        }
                        _ => None,
                    });
                    kept.map_or_else(
                        || {
                            LocalModel::new(
                                provider,
                                &local.model_directory,
                                local.hwaccel_socket.clone(),
                            )
                            .map(Arc::new)
                        },
                        Ok,
                    )
                    .map(Upstream::Local)
                }
            };
            let (upstream, problem) = match upstream {
                Ok(upstream) => (Some(upstream), None),
                Err(problem) => {
                    tracing::warn!(provider = %provider.name, %problem, "provider unusable");
                    (None, Some(problem))
                }
            };
            providers.insert(
                provider.name.clone(),
                Arc::new(ProviderRuntime {
                    config: provider.clone(),
                    upstream,
                    problem,
                    state,
                }),
            );
        }
        let gate = previous
            .map(|previous| &previous.gate)
            .filter(|gate| gate.same_as(&config.policy))
            .map_or_else(
                || {
                    Arc::new(Gate::new(
                        config.policy.clone(),
                        local.policy_socket.clone(),
                    ))
                },
                Arc::clone,
            );
        Self {
            config,
            providers,
            gate,
        }
    }
}

/// A streamed reply whose first output has arrived, ready to be relayed.
#[derive(Debug)]
pub(crate) struct OpenedStream {
    /// Who is serving it so far (usage not yet known).
    pub(crate) served: Served,
    /// Chunks up to the first with output.
    pub(crate) first: Vec<StreamChunk>,
    rest: ChunkReader,
    redaction: Option<Redaction>,
    admission: Admission,
    provider: Arc<ProviderRuntime>,
    topology: Arc<Topology>,
    principal: String,
    prompt_length: usize,
    started: Instant,
    opened_after: Duration,
    upstream_time: Duration,
}

/// What a relayed stream yields.
#[derive(Debug)]
pub(crate) enum StreamItem {
    /// A chunk from the provider.
    Chunk(StreamChunk),
    /// The answer is complete.
    Finished {
        /// Why it stopped.
        finish_reason: String,
        /// With usage.
        served: Box<Served>,
    },
    /// The provider failed after output reached the client: the answer is incomplete.
    Failed(String),
}

/// The engine shared by both front ends.
#[derive(Debug)]
pub(crate) struct Engine {
    topology: ArcSwap<Topology>,
    credentials: CredentialSources,
    local: LocalEnvironment,
    /// Usage and budgets.
    pub(crate) ledger: Ledger,
    /// HTTP bearer keys.
    pub(crate) keys: KeyStore,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
}

struct Success<T> {
    value: T,
    admission: Admission,
    provider: Arc<ProviderRuntime>,
    served: Served,
    upstream_time: Duration,
}

impl Engine {
    /// An engine over `config`.
    pub(crate) fn new(
        config: Config,
        credentials: CredentialSources,
        local: LocalEnvironment,
        ledger: Ledger,
        keys: KeyStore,
        metrics: Arc<Metrics>,
    ) -> Self {
        let topology = Topology::build(config, None, &credentials, &local);
        let engine = Self {
            topology: ArcSwap::from_pointee(topology),
            credentials,
            local,
            ledger,
            keys,
            metrics,
        };
        engine.update_state_metrics();
        engine
    }

    /// The current configuration generation.
    pub(crate) fn topology(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Switches to a new configuration; requests in flight finish on the old one.
    pub(crate) fn apply(&self, config: Config) {
        let previous = self.topology.load_full();
        let next = Topology::build(config, Some(&previous), &self.credentials, &self.local);
        self.topology.store(Arc::new(next));
        self.metrics.provider_state.clear();
        self.update_state_metrics();
    }

    /// "local model SmolLM2-135M-Instruct.Q4_1 loaded (…)" for each local provider, for the
    /// status line.
    pub(crate) fn local_models_summary(&self) -> Vec<String> {
        let topology = self.topology.load();
        let mut lines: Vec<String> = topology
            .providers
            .values()
            .filter_map(|provider| match &provider.upstream {
                Some(Upstream::Local(model)) => Some(format!(
                    "local model {} {}",
                    model.model_name(),
                    model.load_state().describe()
                )),
                None if provider.config.kind == ProviderKind::Local => Some(format!(
                    "local provider {} unusable: {}",
                    provider.config.name,
                    provider.problem.clone().unwrap_or_default()
                )),
                _ => None,
            })
            .collect();
        lines.sort();
        lines
    }

    /// Refreshes the one-hot provider state gauges.
    pub(crate) fn update_state_metrics(&self) {
        let topology = self.topology.load();
        for (name, provider) in &topology.providers {
            let condition = Condition::of(provider, &provider.state.snapshot());
            for candidate in Condition::ALL {
                self.metrics
                    .provider_state
                    .get_or_create(&crate::metrics::StateLabels {
                        provider: name.clone(),
                        state: candidate.label().to_owned(),
                    })
                    .set(i64::from(candidate == condition));
            }
        }
    }

    fn route<'a>(&self, topology: &'a Topology, name: &str) -> Result<&'a RouteConfig, RouteError> {
        topology
            .config
            .routes
            .iter()
            .find(|route| route.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = topology
                    .config
                    .routes
                    .iter()
                    .map(|route| route.name.as_str())
                    .collect();
                RouteError::UnknownRoute(if known.is_empty() {
                    format!("no route {name:?}: no routes are configured")
                } else {
                    format!("no route {name:?}; routes: {}", known.join(", "))
                })
            })
    }

    /// Walks the chain of `route_name`, calling `attempt` on each eligible entry.
    async fn run_chain<T, Attempt, Attempting>(
        &self,
        topology: &Topology,
        route_name: &str,
        principal: &str,
        limits: (Option<Tier>, Option<Trust>),
        mut attempt: Attempt,
    ) -> Result<Success<T>, RouteError>
    where
        Attempt: FnMut(Upstream, String) -> Attempting,
        Attempting: Future<Output = Result<T, Failure>>,
    {
        let route = self.route(topology, route_name)?;
        self.ledger
            .check(
                &route.name,
                route.daily_budget_usd,
                principal,
                topology.config.budgets.for_principal(principal),
            )
            .map_err(RouteError::BudgetExhausted)?;
        let ceiling = limits
            .0
            .map_or(route.max_tier, |tier| tier.min(route.max_tier));
        let floor = limits
            .1
            .map_or(route.min_trust, |trust| trust.max(route.min_trust));
        let breaker = &topology.config.breaker;
        let mut served = Served {
            route: route.name.clone(),
            ..Served::default()
        };
        let mut upstream_time = Duration::ZERO;
        let mut tried_any = false;
        let mut all_rejected = true;
        for entry in &route.chain {
            let Some(provider) = topology.providers.get(&entry.provider) else {
                continue;
            };
            let model = provider.config.upstream_model(&entry.model).into_owned();
            let mut record = |outcome: Outcome, detail: String, latency: Duration| {
                self.metrics
                    .attempts
                    .get_or_create(&AttemptLabels {
                        provider: provider.config.name.clone(),
                        outcome: outcome.label().to_owned(),
                    })
                    .inc();
                served.attempts.push(AttemptRecord {
                    provider: provider.config.name.clone(),
                    model: model.clone(),
                    outcome,
                    detail,
                    latency,
                });
            };
            if provider.config.tier > ceiling {
                record(
                    Outcome::NotAllowed,
                    format!(
                        "tier {} is above this request's ceiling {}",
                        provider.config.tier.as_str(),
                        ceiling.as_str()
                    ),
                    Duration::ZERO,
                );
                continue;
            }
            if provider.config.trust < floor {
                record(
                    Outcome::NotAllowed,
                    format!(
                        "trust {} is below this request's floor {}",
                        provider.config.trust.as_str(),
                        floor.as_str()
                    ),
                    Duration::ZERO,
                );
                continue;
            }
            let Some(upstream) = &provider.upstream else {
                record(
                    Outcome::Skipped,
                    provider.problem.clone().unwrap_or_default(),
                    Duration::ZERO,
                );
                continue;
            };
            for retry in 0..=route.retries {
                let mut admission = match provider.state.admit(Instant::now()) {
                    Ok(admission) => admission,
                    Err(unavailable) => {
                        record(Outcome::Skipped, unavailable.describe(), Duration::ZERO);
                        break;
                    }
                };
                tried_any = true;
                let started = Instant::now();
                let result = attempt(upstream.clone(), model.clone()).await;
                let latency = started.elapsed();
                upstream_time += latency;
                match result {
                    Ok(value) => {
                        admission.succeeded(latency, breaker);
                        record(Outcome::Ok, String::new(), latency);
                        served.provider.clone_from(&provider.config.name);
                        served.model.clone_from(&model);
                        // A success changes no state gauge except a closed probe, which the
                        // periodic refresh picks up; the hot path stays free of it.
                        if admission.probe {
                            self.update_state_metrics();
                        }
                        return Ok(Success {
                            value,
                            admission,
                            provider: Arc::clone(provider),
                            served,
                            upstream_time,
                        });
                    }
                    Err(failure) => {
                        let detail = failure.describe();
                        let cooldown = failure
                            .cooldown(Duration::from_millis(breaker.cooldown_ms))
                            .map(|duration| (duration, detail.clone()));
                        admission.failed(failure.counts_against_provider(), cooldown, breaker);
                        if !matches!(failure, Failure::Rejected { .. }) {
                            all_rejected = false;
                        }
                        tracing::info!(
                            route = %route.name,
                            provider = %provider.config.name,
                            %model,
                            attempt = retry + 1,
                            failure = %detail,
                            "attempt failed"
                        );
                        record(Outcome::of(&failure), detail, latency);
                        self.update_state_metrics();
                        if !failure.worth_retrying() || retry == route.retries {
                            break;
                        }
                        drop(admission);
                        tokio::time::sleep(backoff(route.backoff_ms, retry)).await;
                    }
                }
            }
        }
        let summary = served.describe_attempts();
        if served
            .attempts
            .iter()
            .all(|attempt| attempt.outcome == Outcome::NotAllowed)
        {
            return Err(RouteError::NotAllowed {
                message: format!(
                    "route {:?} has no provider within tier ≤ {} and trust ≥ {}; refusing to \
                     escalate: {summary}",
                    route.name,
                    ceiling.as_str(),
                    floor.as_str()
                ),
                served: Box::new(served),
            });
        }
        Err(RouteError::Exhausted {
            message: format!(
                "route {:?}: no provider could serve the request: {summary}",
                route.name
            ),
            served: Box::new(served),
            rejected: tried_any && all_rejected,
        })
    }

    fn finish(
        &self,
        served: &mut Served,
        principal: &str,
        provider: &ProviderConfig,
        usage: (u64, u64, bool),
    ) {
        let (input_tokens, output_tokens, counted) = usage;
        let price = provider
            .price
            .unwrap_or(Price::Named(crate::config::PriceName::Free));
        let cost_usd = price.cost(input_tokens, output_tokens);
        served.usage = Some(UsageRecord {
            input_tokens,
            output_tokens,
            counted,
            cost_usd,
        });
        self.ledger.charge(&Charge {
            route: &served.route,
            principal,
            provider: &provider.name,
            input_tokens,
            output_tokens,
            cost_usd,
        });
        for (direction, count) in [("input", input_tokens), ("output", output_tokens)] {
            self.metrics
                .tokens
                .get_or_create(&TokenLabels {
                    provider: provider.name.clone(),
                    direction: direction.to_owned(),
                })
                .inc_by(count);
        }
        // Micro-dollars as an integer counter; the conversion rounds to the nearest.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let microdollars = (cost_usd * 1_000_000.0).round() as u64;
        self.metrics
            .cost_microdollars
            .get_or_create(&ProviderLabels {
                provider: provider.name.clone(),
            })
            .inc_by(microdollars);
    }

    /// Counts a finished request.
    pub(crate) fn observe_request(
        &self,
        route: &str,
        provider: &str,
        outcome: &str,
        elapsed: Duration,
        overhead: Option<Duration>,
    ) {
        // A route name comes from the client: only configured ones become label values, so no
        // client can forge exposition lines or grow the label set.
        let topology = self.topology();
        let route = if topology
            .config
            .routes
            .iter()
            .any(|known| known.name == route)
        {
            route
        } else {
            "unknown"
        };
        let labels = RequestLabels {
            route: route.to_owned(),
            provider: provider.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        self.metrics
            .request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(overhead) = overhead {
            self.metrics.observe_overhead(overhead);
        }
    }

    /// Walks `route` for a request answered whole, then charges and counts it.
    async fn complete<T, Attempt, Attempting>(
        &self,
        route: &str,
        principal: &str,
        limits: (Option<Tier>, Option<Trust>),
        attempt: Attempt,
        usage_of: impl FnOnce(&T) -> (u64, u64, bool),
    ) -> Result<(T, Served), RouteError>
    where
        Attempt: FnMut(Upstream, String) -> Attempting,
        Attempting: Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let topology = self.topology();
        match self
            .run_chain(&topology, route, principal, limits, attempt)
            .await
        {
            Ok(Success {
                value,
                provider,
                mut served,
                upstream_time,
                ..
            }) => {
                self.finish(&mut served, principal, &provider.config, usage_of(&value));
                let elapsed = started.elapsed();
                self.observe_request(
                    &served.route,
                    &served.provider,
                    "ok",
                    elapsed,
                    Some(elapsed.saturating_sub(upstream_time)),
                );
                Ok((value, served))
            }
            Err(error) => {
                self.observe_request(route, "", error.label(), started.elapsed(), None);
                Err(error)
            }
        }
    }

    /// Screens `call`'s prompt through the gate of the current configuration; a refusal is
    /// counted as a finished request. A passed prompt's audit commit is still to be confirmed
    /// before anything of its reply is sent.
    async fn screen(&self, call: &ChatCall) -> Result<Option<PendingAudit>, RouteError> {
        let started = Instant::now();
        let gate = Arc::clone(&self.topology().gate);
        let outcome = gate.screen(call).await;
        self.screened(&call.route, &call.principal, started, outcome)
    }

    /// The gate's `outcome` for a request to `route` for `principal`, counted; a refusal is
    /// counted as a finished request.
    fn screened(
        &self,
        route: &str,
        principal: &str,
        started: Instant,
        outcome: Result<Screening, RouteError>,
    ) -> Result<Option<PendingAudit>, RouteError> {
        let label = match &outcome {
            Ok(Screening::Passed(_)) => "passed",
            Ok(Screening::Off) => "off",
            Ok(Screening::Unscreened(problem)) => {
                tracing::warn!(%route, %principal, %problem, "request routed unscreened (when_unreachable = \"allow\")");
                "unscreened"
            }
            Err(error) => error.label(),
        };
        self.metrics
            .screenings
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: label.to_owned(),
            })
            .inc();
        match outcome {
            Err(error) => {
                self.observe_request(route, "", error.label(), started.elapsed(), None);
                Err(error)
            }
            Ok(Screening::Passed(pending)) => Ok(Some(pending)),
            Ok(Screening::Off | Screening::Unscreened(_)) => Ok(None),
        }
    }

    /// A whole chat completion, rebuilt from the allow-listed fields of the provider's body
    /// with every text in it (every choice, tool call, reasoning and logprob token) redacted by
    /// the gate in one piece.
    pub(crate) async fn chat(&self, call: ChatCall) -> Result<(ChatReply, Served), RouteError> {
        let gate = Arc::clone(&self.topology().gate);
        let pending = self.screen(&call).await?;
        let (mut reply, served) = self.complete_chat(&call).await?;
        let mut released = crate::released::completion(&reply.body);
        let texts = std::mem::take(&mut released.texts);
        let count = texts.len();
        let texts = match gate.redact(pending, &crate::released::join(&texts)).await? {
            None => texts,
            Some(redacted) => crate::released::split(&redacted, count).ok_or_else(|| {
                RouteError::PolicyRefused {
                    kind: ErrorKind::Unavailable,
                    message: "redaction changed how many texts the reply holds, so it is \
                              withheld"
                        .to_owned(),
                }
            })?,
        };
        reply.body = released.fill(texts);
        reply.content = reply
            .body
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok((reply, served))
    }

    async fn complete_chat(&self, call: &ChatCall) -> Result<(ChatReply, Served), RouteError> {
        let prompt_length = call.prompt_length();
        self.complete(
            &call.route,
            &call.principal,
            (call.max_tier, call.min_trust),
            |upstream, model| {
                let body = with_model(&call.fields, &model);
                async move { upstream.chat(&body).await }
            },
            |reply: &ChatReply| {
                reply.usage.map_or_else(
                    || {
                        (
                            estimate_tokens_of_length(prompt_length),
                            estimate_tokens(&reply.content),
                            true,
                        )
                    },
                    |(input, output)| (input, output, false),
                )
            },
        )
        .await
    }

    /// Starts a streamed chat completion: fails over until a provider produces its first
    /// output, then hands back the open stream.
    pub(crate) async fn chat_stream(&self, call: ChatCall) -> Result<OpenedStream, RouteError> {
        let pending = self.screen(&call).await?;
        let started = Instant::now();
        let topology = self.topology();
        let mut fields = call.fields.clone();
        fields.insert("stream".to_owned(), Value::Bool(true));
        fields.insert(
            "stream_options".to_owned(),
            serde_json::json!({ "include_usage": true }),
        );
        let result = self
            .run_chain(
                &topology,
                &call.route,
                &call.principal,
                (call.max_tier, call.min_trust),
                |upstream, model| {
                    let body = with_model(&fields, &model);
                    async move { upstream.chat_stream(&body).await }
                },
            )
            .await;
        match result {
            Ok(success) => {
                let Success {
                    value: open,
                    admission,
                    provider,
                    served,
                    upstream_time,
                } = success;
                self.metrics
                    .time_to_first_token
                    .get_or_create(&ProviderLabels {
                        provider: provider.config.name.clone(),
                    })
                    .observe(open.time_to_first_token.as_secs_f64());
                let redaction = match topology.gate.confirm(pending).await {
                    Ok(redaction) => redaction,
                    Err(error) => {
                        self.observe_request(
                            &call.route,
                            "",
                            error.label(),
                            started.elapsed(),
                            None,
                        );
                        return Err(error);
                    }
                };
                Ok(OpenedStream {
                    served,
                    first: open.first,
                    rest: open.rest,
                    redaction,
                    admission,
                    provider,
                    topology: Arc::clone(&topology),
                    principal: call.principal.clone(),
                    prompt_length: call.prompt_length(),
                    started,
                    opened_after: started.elapsed(),
                    upstream_time,
                })
            }
            Err(error) => {
                self.observe_request(&call.route, "", error.label(), started.elapsed(), None);
                Err(error)
            }
        }
    }

    /// Relays an opened stream to its end: chunks (their text redacted when the gate opened a
    /// redaction), then `Finished` (charged) or `Failed`.
    pub(crate) fn relay(
        self: &Arc<Self>,
        mut opened: OpenedStream,
    ) -> std::pin::Pin<Box<dyn Stream<Item = StreamItem> + Send>> {
        let redaction = opened.redaction.take();
        let relayed = self.relay_unredacted(opened);
        match redaction {
            // Unredacted (the gate is off), but still only the allow-listed fields.
            None => Box::pin(relayed.map(|item| match item {
                StreamItem::Chunk(chunk) => StreamItem::Chunk(crate::gate::allow_listed(chunk)),
                other => other,
            })),
            Some(redaction) => Box::pin(crate::gate::redact_stream(relayed, redaction)),
        }
    }

    fn relay_unredacted(
        self: &Arc<Self>,
        mut opened: OpenedStream,
    ) -> impl Stream<Item = StreamItem> + Send + use<> {
        struct Relay {
            engine: Arc<Engine>,
            opened: OpenedStream,
            pending: std::collections::VecDeque<StreamChunk>,
            text_length: usize,
            usage: Option<(u64, u64)>,
            finish_reason: Option<String>,
            done: bool,
        }
        let pending = opened.first.drain(..).collect();
        let state = Relay {
            engine: Arc::clone(self),
            opened,
            pending,
            text_length: 0,
            usage: None,
            finish_reason: None,
            done: false,
        };
        futures_util::stream::unfold(state, |mut relay| async move {
            if relay.done {
                return None;
            }
            let next = match relay.pending.pop_front() {
                Some(chunk) => Ok(Some(chunk)),
                None => relay.opened.rest.next().await,
            };
            match next {
                Ok(Some(chunk)) => {
                    relay.text_length += chunk.delta.len();
                    if let Some(usage) = chunk.usage {
                        relay.usage = Some(usage);
                    }
                    if let Some(reason) = &chunk.finish_reason {
                        relay.finish_reason = Some(reason.clone());
                    }
                    Some((StreamItem::Chunk(chunk), relay))
                }
                Ok(None) => {
                    relay.done = true;
                    let engine = Arc::clone(&relay.engine);
                    let opened = &mut relay.opened;
                    let usage = relay.usage.map_or_else(
                        || {
                            (
                                estimate_tokens_of_length(opened.prompt_length),
                                estimate_tokens_of_length(relay.text_length),
                                true,
                            )
                        },
                        |(input, output)| (input, output, false),
                    );
                    let provider = Arc::clone(&opened.provider);
                    let principal = opened.principal.clone();
                    engine.finish(&mut opened.served, &principal, &provider.config, usage);
                    // A stream's pace is the provider's; its overhead is measured up to the
                    // first token, when the stream opened.
                    let overhead = opened.opened_after.saturating_sub(opened.upstream_time);
                    engine.observe_request(
                        &opened.served.route,
                        &opened.served.provider,
                        "ok",
                        opened.started.elapsed(),
                        Some(overhead),
                    );
                    let finish_reason =
                        relay.finish_reason.clone().unwrap_or_else(|| "stop".into());
                    let served = Box::new(opened.served.clone());
                    Some((
                        StreamItem::Finished {
                            finish_reason,
                            served,
                        },
                        relay,
                    ))
                }
                Err(failure) => {
                    relay.done = true;
                    let opened = &mut relay.opened;
                    let breaker = opened.topology.config.breaker.clone();
                    opened
                        .admission
                        .failed(failure.counts_against_provider(), None, &breaker);
                    let message = format!(
                        "provider {} failed after the answer had started ({}); the answer is \
                         incomplete",
                        opened.served.provider,
                        failure.describe()
                    );
                    tracing::warn!(route = %opened.served.route, provider = %opened.served.provider, failure = %failure.describe(), "stream broke after its first token");
                    relay.engine.observe_request(
                        &opened.served.route,
                        &opened.served.provider,
                        "stream_broken",
                        opened.started.elapsed(),
                        None,
                    );
                    Some((StreamItem::Failed(message), relay))
                }
            }
        })
    }

    /// Embeddings for `inputs` through `route`.
    pub(crate) async fn embed(
        &self,
        route: &str,
        principal: &str,
        inputs: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, Served), RouteError> {
        if inputs.is_empty() {
            return Err(RouteError::InvalidRequest("no inputs to embed".to_owned()));
        }
        // The same Cedar check, screening and audit as a chat's prompt, before any provider.
        let gate = Arc::clone(&self.topology().gate);
        let started = Instant::now();
        let outcome = gate
            .screen_text(principal, route, inputs.join("\n\n"))
            .await;
        let pending = self.screened(route, principal, started, outcome)?;
        let count = inputs.len();
        let estimated: u64 = inputs.iter().map(|input| estimate_tokens(input)).sum();
        let mut fields = Map::new();
        fields.insert(
            "input".to_owned(),
            Value::Array(inputs.into_iter().map(Value::String).collect()),
        );
        let ((vectors, _), served) = self
            .complete(
                route,
                principal,
                (None, None),
                |upstream, model| {
                    let body = with_model(&fields, &model);
                    async move { upstream.embed(&body, count).await }
                },
                |(_, reported): &(Vec<Vec<f32>>, Option<u64>)| {
                    reported.map_or((estimated, 0, true), |input| (input, 0, false))
                },
            )
            .await?;
        // Nothing leaves before policy confirms the request's audit records; vectors carry no
        // text to redact, so the gate stream then just closes.
        drop(gate.confirm(pending).await?);
        Ok((vectors, served))
    }
}

fn estimate_tokens_of_length(length: usize) -> u64 {
    (length as u64).div_ceil(4)
}

/// Whether a provider takes traffic now, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    /// Takes requests.
    Available,
    /// Skipped after a 429 or 5xx, or cooled by an operator.
    CoolingDown,
    /// Its breaker is open (or half-open, waiting for its probe).
    CircuitOpen,
    /// Drained by an operator.
    Drained,
    /// Cannot be used as configured, e.g. its credential is missing.
    Unusable,
}

impl Condition {
    /// Every condition, for one-hot gauges.
    pub(crate) const ALL: [Self; 5] = [
        Self::Available,
        Self::CoolingDown,
        Self::CircuitOpen,
        Self::Drained,
        Self::Unusable,
    ];

    /// Metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::CoolingDown => "cooling_down",
            Self::CircuitOpen => "circuit_open",
            Self::Drained => "drained",
            Self::Unusable => "unusable",
        }
    }

    /// The condition of `provider` now, from a snapshot of its state.
    pub(crate) fn of(provider: &ProviderRuntime, snapshot: &ProviderSnapshot) -> Self {
        if provider.upstream.is_none() {
            Self::Unusable
        } else if snapshot.drained {
            Self::Drained
        } else if snapshot.breaker != Breaker::Closed {
            Self::CircuitOpen
        } else if snapshot.cooldown.is_some() {
            Self::CoolingDown
        } else {
            Self::Available
        }
    }
}

/// Exponential backoff with jitter: `base · 2^retry`, scaled by a random factor in [0.5, 1.5).
fn backoff(base_ms: u64, retry: u32) -> Duration {
    let exponential = base_ms.saturating_mul(1_u64 << retry.min(16));
    let factor: f64 = rand::rng().random_range(0.5..1.5);
    Duration::from_secs_f64(exponential as f64 / 1000.0 * factor)
}
