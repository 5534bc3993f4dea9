//! `synos.llm.v1.Router`: the gRPC front end of the engine.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use serde_json::{Map, Value};
use synos_common::caller::{Caller, canonical_principal};
use synos_common::error::{ErrorKind, ServiceError};
use synos_proto::llm::v1 as api;
use synos_proto::llm::v1::router_server::Router;
use tonic::{Request, Response, Status};

use crate::config::{Tier, Trust};
use crate::engine::{
    AttemptRecord, ChatCall, Condition, DEFAULT_CHAT_ROUTE, DEFAULT_EMBED_ROUTE, Engine, Outcome,
    RouteError, Served, StreamItem,
};
use crate::provider_state::Breaker;
use crate::upstream::Upstream;

/// The router's gRPC service.
#[derive(Debug, Clone)]
pub(crate) struct RouterService {
    engine: Arc<Engine>,
}

impl RouterService {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    fn invalid(&self, message: String) -> Status {
        self.engine.metrics.invalid_requests.inc();
        ServiceError::invalid_argument(message).into()
    }

    /// An administration call (`llm.manage`: provider state, other users' keys) by `caller`:
    /// policy's Cedar decision, which it audits. While policy cannot decide, root (or the
    /// router's own account) may act alone, as with the doctor's queue; nobody else may.
    async fn administer(&self, caller: &Caller, what: &str) -> Result<(), Status> {
        let principal = caller.identified()?;
        match self
            .engine
            .topology()
            .gate
            .authorize(principal, "llm.manage")
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(ServiceError::new(
                ErrorKind::PermissionDenied,
                format!("{principal} may not {what}: policy does not permit llm.manage"),
            )
            .into()),
            Err(problem) if caller.may_act_for_others() => {
                tracing::warn!(%principal, %problem, "{what}: allowed without policy's decision");
                Ok(())
            }
            Err(problem) => Err(ServiceError::new(
                ErrorKind::Unavailable,
                format!(
                    "{what} needs policy's decision (llm.manage), which cannot be had: {problem}"
                ),
            )
            .into()),
        }
    }

    fn chat_call(&self, caller: &Caller, request: api::ChatRequest) -> Result<ChatCall, Status> {
        let principal = caller.acting_as(&request.principal)?;
        if request.messages.is_empty() {
            return Err(self.invalid("messages: at least one message is required".to_owned()));
        }
        let mut messages = Vec::with_capacity(request.messages.len());
        for (index, message) in request.messages.iter().enumerate() {
            if !matches!(
                message.role.as_str(),
                "system" | "user" | "assistant" | "tool" | "developer"
            ) {
                return Err(self.invalid(format!(
                    "messages[{index}].role: must be system, user, assistant, tool or developer"
                )));
            }
            messages.push(serde_json::json!({ "role": message.role, "content": message.content }));
        }
        let mut fields = Map::new();
        fields.insert("messages".to_owned(), Value::Array(messages));
        if let Some(max_tokens) = request.max_tokens {
            if max_tokens == 0 {
                return Err(self.invalid("max_tokens: must be positive".to_owned()));
            }
            fields.insert("max_tokens".to_owned(), Value::from(max_tokens));
        }
        if let Some(temperature) = request.temperature {
            if !(0.0..=2.0).contains(&temperature) {
                return Err(self.invalid("temperature: must be between 0 and 2".to_owned()));
            }
            fields.insert(
                "temperature".to_owned(),
                Value::from(f64::from(temperature)),
            );
        }
        if let Some(top_p) = request.top_p {
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(self.invalid("top_p: must be in (0, 1]".to_owned()));
            }
            fields.insert("top_p".to_owned(), Value::from(f64::from(top_p)));
        }
        if !request.stop.is_empty() {
            if request.stop.len() > 4 || request.stop.iter().any(String::is_empty) {
                return Err(
                    self.invalid("stop: at most 4 sequences, none of them empty".to_owned())
                );
            }
            fields.insert("stop".to_owned(), Value::from(request.stop));
        }
        if let Some(seed) = request.seed {
            fields.insert("seed".to_owned(), Value::from(seed));
        }
        Ok(ChatCall {
            route: non_empty_or(request.route, DEFAULT_CHAT_ROUTE),
            principal,
            fields,
            max_tier: tier_from_api(request.max_tier)
                .map_err(|message| self.invalid(format!("max_tier: {message}")))?,
            min_trust: trust_from_api(request.min_trust)
                .map_err(|message| self.invalid(format!("min_trust: {message}")))?,
        })
    }
}

fn non_empty_or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value
    }
}

/// The gRPC status for a routing failure.
pub(crate) fn route_status(error: &RouteError) -> Status {
    ServiceError::new(error.kind(), error.to_string()).into()
}

fn tier_from_api(value: i32) -> Result<Option<Tier>, String> {
    match api::Tier::try_from(value) {
        Ok(api::Tier::Unspecified) => Ok(None),
        Ok(api::Tier::Free) => Ok(Some(Tier::Free)),
        Ok(api::Tier::Cheap) => Ok(Some(Tier::Cheap)),
        Ok(api::Tier::Standard) => Ok(Some(Tier::Standard)),
        Ok(api::Tier::Premium) => Ok(Some(Tier::Premium)),
        Err(_) => Err(format!("unknown tier {value}")),
    }
}

fn trust_from_api(value: i32) -> Result<Option<Trust>, String> {
    match api::Trust::try_from(value) {
        Ok(api::Trust::Unspecified) => Ok(None),
        Ok(api::Trust::External) => Ok(Some(Trust::External)),
        Ok(api::Trust::Trusted) => Ok(Some(Trust::Trusted)),
        Ok(api::Trust::Local) => Ok(Some(Trust::Local)),
        Err(_) => Err(format!("unknown trust level {value}")),
    }
}

fn tier_to_api(tier: Tier) -> api::Tier {
    match tier {
        Tier::Free => api::Tier::Free,
        Tier::Cheap => api::Tier::Cheap,
        Tier::Standard => api::Tier::Standard,
        Tier::Premium => api::Tier::Premium,
    }
}

fn trust_to_api(trust: Trust) -> api::Trust {
    match trust {
        Trust::External => api::Trust::External,
        Trust::Trusted => api::Trust::Trusted,
        Trust::Local => api::Trust::Local,
    }
}

fn duration(value: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(value).ok()
}

fn attempt_to_api(attempt: &AttemptRecord) -> api::Attempt {
    let outcome = match attempt.outcome {
        Outcome::Ok => api::AttemptOutcome::Ok,
        Outcome::RateLimited => api::AttemptOutcome::RateLimited,
        Outcome::ServerError => api::AttemptOutcome::ServerError,
        Outcome::Timeout => api::AttemptOutcome::Timeout,
        Outcome::ConnectionFailed => api::AttemptOutcome::ConnectionFailed,
        Outcome::BadReply => api::AttemptOutcome::BadReply,
        Outcome::Rejected => api::AttemptOutcome::Rejected,
        Outcome::Skipped => api::AttemptOutcome::Skipped,
        Outcome::NotAllowed => api::AttemptOutcome::NotAllowed,
    };
    api::Attempt {
        provider: attempt.provider.clone(),
        model: attempt.model.clone(),
        outcome: outcome.into(),
        detail: attempt.detail.clone(),
        latency: duration(attempt.latency),
    }
}

/// `Served` as the API shows it.
pub(crate) fn served_to_api(served: &Served) -> api::Served {
    api::Served {
        route: served.route.clone(),
        provider: served.provider.clone(),
        model: served.model.clone(),
        attempts: served.attempts.iter().map(attempt_to_api).collect(),
        usage: served.usage.map(|usage| api::Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            counted: usage.counted,
            cost_usd: usage.cost_usd,
        }),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<api::ChatStreamEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterService {
    async fn chat(
        &self,
        request: Request<api::ChatRequest>,
    ) -> Result<Response<api::ChatResponse>, Status> {
        let caller = Caller::of(&request);
        let call = self.chat_call(&caller, request.into_inner())?;
        let (reply, served) = self
            .engine
            .chat(call)
            .await
            .map_err(|error| route_status(&error))?;
        Ok(Response::new(api::ChatResponse {
            content: reply.content,
            finish_reason: reply.finish_reason,
            served: Some(served_to_api(&served)),
        }))
    }

    type ChatStreamStream = EventStream;

    async fn chat_stream(
        &self,
        request: Request<api::ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let caller = Caller::of(&request);
        let call = self.chat_call(&caller, request.into_inner())?;
        let opened = self
            .engine
            .chat_stream(call)
            .await
            .map_err(|error| route_status(&error))?;
        let started = api::ChatStreamEvent {
            event: Some(api::chat_stream_event::Event::Started(api::Started {
                provider: opened.served.provider.clone(),
                model: opened.served.model.clone(),
                attempts: opened.served.attempts.iter().map(attempt_to_api).collect(),
            })),
        };
        let relayed = self.engine.relay(opened).filter_map(|item| async move {
            match item {
                StreamItem::Chunk(chunk) if chunk.delta.is_empty() => None,
                StreamItem::Chunk(chunk) => Some(Ok(api::ChatStreamEvent {
                    event: Some(api::chat_stream_event::Event::Delta(chunk.delta)),
                })),
                StreamItem::Finished {
                    finish_reason,
                    served,
                } => Some(Ok(api::ChatStreamEvent {
                    event: Some(api::chat_stream_event::Event::Finished(api::Finished {
                        finish_reason,
                        served: Some(served_to_api(&served)),
                    })),
                })),
                // An explicit error, never a silently truncated answer.
                StreamItem::Failed(message) => {
                    Some(Err(
                        ServiceError::new(ErrorKind::Unavailable, message).into()
                    ))
                }
            }
        });
        let stream = futures_util::stream::once(async { Ok(started) }).chain(relayed);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn embed(
        &self,
        request: Request<api::EmbedRequest>,
    ) -> Result<Response<api::EmbedResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let principal = caller.acting_as(&request.principal)?;
        if request.inputs.is_empty() {
            return Err(self.invalid("inputs: at least one text is required".to_owned()));
        }
        let route = non_empty_or(request.route, DEFAULT_EMBED_ROUTE);
        let (vectors, served) = self
            .engine
            .embed(&route, &principal, request.inputs)
            .await
            .map_err(|error| route_status(&error))?;
        Ok(Response::new(api::EmbedResponse {
            embeddings: vectors
                .into_iter()
                .map(|values| api::Embedding { values })
                .collect(),
            served: Some(served_to_api(&served)),
        }))
    }

    async fn list_providers(
        &self,
        _request: Request<api::ListProvidersRequest>,
    ) -> Result<Response<api::ListProvidersResponse>, Status> {
        let topology = self.engine.topology();
        let providers = topology
            .config
            .providers
            .iter()
            .filter_map(|config| topology.providers.get(&config.name))
            .map(|provider| provider_to_api(provider))
            .collect();
        Ok(Response::new(api::ListProvidersResponse {
            providers,
            policy_gate: topology.gate.describe(),
        }))
    }

    async fn set_provider_state(
        &self,
        request: Request<api::SetProviderStateRequest>,
    ) -> Result<Response<api::Provider>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        self.administer(&caller, "set a provider's state").await?;
        let topology = self.engine.topology();
        let provider = topology.providers.get(&request.name).ok_or_else(|| {
            ServiceError::new(
                ErrorKind::NotFound,
                format!("no provider {:?}", request.name),
            )
        })?;
        match api::ProviderAction::try_from(request.action) {
            Ok(api::ProviderAction::Drain) => provider.state.set_drained(true),
            Ok(api::ProviderAction::Cool) => {
                let cool_for = match request.cool_for {
                    None => Duration::from_secs(60),
                    Some(value) => Duration::try_from(value)
                        .map_err(|_| self.invalid("cool_for: must not be negative".to_owned()))?,
                };
                provider
                    .state
                    .cool(cool_for, "cooled by an operator".to_owned());
            }
            Ok(api::ProviderAction::Restore) => provider.state.restore(),
            Ok(api::ProviderAction::Unspecified) | Err(_) => {
                return Err(self.invalid("action: must be DRAIN, COOL or RESTORE".to_owned()));
            }
        }
        tracing::info!(provider = %request.name, action = request.action, by = %caller.principal(), "provider state set");
        self.engine.update_state_metrics();
        Ok(Response::new(provider_to_api(provider)))
    }

    async fn list_routes(
        &self,
        _request: Request<api::ListRoutesRequest>,
    ) -> Result<Response<api::ListRoutesResponse>, Status> {
        let topology = self.engine.topology();
        let routes = topology
            .config
            .routes
            .iter()
            .map(|route| api::Route {
                name: route.name.clone(),
                max_tier: tier_to_api(route.max_tier).into(),
                min_trust: trust_to_api(route.min_trust).into(),
                retries: route.retries,
                chain: route
                    .chain
                    .iter()
                    .map(|entry| api::ChainEntry {
                        provider: entry.provider.clone(),
                        model: entry.model.clone(),
                    })
                    .collect(),
                daily_budget_usd: route.daily_budget_usd,
            })
            .collect();
        Ok(Response::new(api::ListRoutesResponse { routes }))
    }

    async fn get_usage(
        &self,
        _request: Request<api::GetUsageRequest>,
    ) -> Result<Response<api::GetUsageResponse>, Status> {
        let topology = self.engine.topology();
        let day = self.engine.ledger.today();
        let totals = |map: &std::collections::BTreeMap<String, crate::accounting::Totals>,
                      budget: &dyn Fn(&str) -> Option<f64>| {
            map.iter()
                .map(|(name, totals)| api::UsageTotal {
                    name: name.clone(),
                    requests: totals.requests,
                    input_tokens: totals.input_tokens,
                    output_tokens: totals.output_tokens,
                    cost_usd: totals.cost_usd,
                    daily_budget_usd: budget(name),
                })
                .collect()
        };
        let route_budget = |name: &str| {
            topology
                .config
                .routes
                .iter()
                .find(|route| route.name == name)
                .and_then(|route| route.daily_budget_usd)
        };
        let principal_budget = |name: &str| topology.config.budgets.for_principal(name);
        Ok(Response::new(api::GetUsageResponse {
            day: day.day.clone(),
            routes: totals(&day.routes, &route_budget),
            principals: totals(&day.principals, &principal_budget),
            providers: totals(&day.providers, &|_| None),
        }))
    }

    async fn create_key(
        &self,
        request: Request<api::CreateKeyRequest>,
    ) -> Result<Response<api::CreateKeyResponse>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        // A key acts as its principal, so only its principal (or an administrator) makes one.
        let own = caller.identified()?;
        request.principal = if request.principal.trim().is_empty() {
            own.to_owned()
        } else {
            canonical_principal(&request.principal)?
        };
        if request.principal != own {
            self.administer(&caller, &format!("create a key for {}", request.principal))
                .await?;
        }
        let topology = self.engine.topology();
        for route in &request.routes {
            if !topology
                .config
                .routes
                .iter()
                .any(|known| &known.name == route)
            {
                return Err(self.invalid(format!("routes: no route {route:?}")));
            }
        }
        let (key, record) = self
            .engine
            .keys
            .create(&request.principal, request.routes)
            .map_err(|error| {
                ServiceError::new(
                    ErrorKind::FailedPrecondition,
                    format!("cannot store the key: {error}"),
                )
            })?;
        tracing::info!(id = %record.id, principal = %record.principal, "HTTP key created");
        Ok(Response::new(api::CreateKeyResponse {
            key,
            info: Some(key_to_api(&record)),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<api::ListKeysRequest>,
    ) -> Result<Response<api::ListKeysResponse>, Status> {
        // Root and the services see every key; a user sees their own.
        let caller = Caller::of(&request);
        let own = caller.identified()?;
        Ok(Response::new(api::ListKeysResponse {
            keys: self
                .engine
                .keys
                .list()
                .iter()
                .filter(|key| caller.may_act_for_others() || holds(own, key))
                .map(key_to_api)
                .collect(),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<api::RevokeKeyRequest>,
    ) -> Result<Response<api::RevokeKeyResponse>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().id;
        let own = caller.identified()?;
        let found = self.engine.keys.list().into_iter().find(|key| key.id == id);
        if let Some(key) = found
            && !holds(own, &key)
        {
            self.administer(&caller, &format!("revoke {}'s key", key.principal))
                .await?;
        }
        match self.engine.keys.revoke(&id) {
            Ok(true) => {
                tracing::info!(%id, "HTTP key revoked");
                Ok(Response::new(api::RevokeKeyResponse {}))
            }
            Ok(false) => {
                Err(ServiceError::new(ErrorKind::NotFound, format!("no key {id:?}")).into())
            }
            Err(error) => Err(ServiceError::new(
                ErrorKind::FailedPrecondition,
                format!("cannot store the change: {error}"),
            )
            .into()),
        }
    }
}

/// Whether `principal` holds `key` (keys made before principals were canonical name a login).
fn holds(principal: &str, key: &crate::keys::KeyRecord) -> bool {
    canonical_principal(&key.principal).is_ok_and(|holder| holder == principal)
}

fn key_to_api(record: &crate::keys::KeyRecord) -> api::ApiKey {
    api::ApiKey {
        id: record.id.clone(),
        principal: record.principal.clone(),
        routes: record.routes.clone(),
        created: Some(prost_types::Timestamp {
            seconds: i64::try_from(record.created_unix).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
}

fn provider_to_api(provider: &crate::engine::ProviderRuntime) -> api::Provider {
    let snapshot = provider.state.snapshot();
    let (state, reason) = match Condition::of(provider, &snapshot) {
        Condition::Unusable => (
            api::ProviderState::Unusable,
            provider.problem.clone().unwrap_or_default(),
        ),
        Condition::Drained => (api::ProviderState::Drained, "drained".to_owned()),
        Condition::CircuitOpen => (
            api::ProviderState::CircuitOpen,
            "error ratio over the breaker window".to_owned(),
        ),
        Condition::CoolingDown => (
            api::ProviderState::CoolingDown,
            snapshot
                .cooldown
                .as_ref()
                .map(|(_, reason)| reason.clone())
                .unwrap_or_default(),
        ),
        Condition::Available => match &provider.upstream {
            Some(Upstream::Local(model)) => (
                api::ProviderState::Available,
                format!("model {}", model.load_state().describe()),
            ),
            _ => (api::ProviderState::Available, String::new()),
        },
    };
    let location = match &provider.upstream {
        Some(Upstream::Local(model)) => model.file().display().to_string(),
        _ => provider.config.base_url.clone(),
    };
    api::Provider {
        name: provider.config.name.clone(),
        kind: provider.config.kind.as_str().to_owned(),
        base_url: location,
        state: state.into(),
        tier: tier_to_api(provider.config.tier).into(),
        trust: trust_to_api(provider.config.trust).into(),
        cooldown_remaining: snapshot.cooldown.and_then(|(left, _)| duration(left)),
        breaker: match snapshot.breaker {
            Breaker::Closed => api::BreakerState::Closed,
            Breaker::Open => api::BreakerState::Open,
            Breaker::HalfOpen => api::BreakerState::HalfOpen,
        }
        .into(),
        recent_latency: snapshot.recent_latency.and_then(duration),
        in_flight: snapshot.in_flight,
        max_concurrency: provider.config.max_concurrency,
        requests: snapshot.requests,
        failures: snapshot.failures,
        state_reason: reason,
    }
}
