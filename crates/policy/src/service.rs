//! `synos.policy.v1.Policy`: each call checks its rate limit, decides, appends its audit record
//! and only then answers. A record that cannot be written fails the call (UNAVAILABLE): no
//! decision is ever given without its audit record. The one exception, the router's Gate stream,
//! lets an allowed prompt's answer go ahead of its commit, and its caller holds back what the
//! prompt produces until the commit is confirmed.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use futures_util::{Stream, StreamExt as _};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use synos_common::ServiceError;
use synos_common::caller::Caller;
use synos_common::error::ErrorKind;
use synos_common::systemd::StatusLine;
use synos_proto::policy::v1::policy_server::Policy;
use synos_proto::policy::v1::{
    AuditCommitted, AuditRecord, AuthorizeRequest, AuthorizeResponse, Decision, ExecToolResponse,
    GateProgress, GateRequest, QueryAuditRequest, QueryAuditResponse, RedactOutputChunk,
    RedactOutputRequest, RedactOutputResponse, RedactedSpan, ReloadPoliciesRequest,
    ReloadPoliciesResponse, RuleMatch, ScreenInputRequest, ScreenInputResponse,
    ScreenPromptRequest, ScreenPromptResponse, ToolCallRequest, ToolCallResponse, Verdict,
    VerifyAuditRequest, VerifyAuditResponse,
};
use synos_proto::policy::v1::{gate_progress, gate_request};
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{AuditError, AuditLog, Entry};
use crate::authorizer::{Authorizer, PolicyError, PolicyFiles, ToolAttributes};
use crate::config::{RateLimitsConfig, ToolConfig};
use crate::redaction::{Redactor, Span, StreamRedactor};
use crate::sandbox::Sandbox;
use crate::screening::{self, Screener};

/// Texts up to this size are screened on the request's own task (well under a millisecond);
/// longer ones on a blocking thread, so they never stall other requests.
const INLINE_SCREENING_BYTES: usize = 16 * 1024;

/// Largest text screened or redacted in one call.
const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;

impl From<PolicyError> for ServiceError {
    fn from(error: PolicyError) -> Self {
        match error {
            PolicyError::InvalidRequest { .. } => ServiceError::invalid_argument(error.to_string()),
            PolicyError::InvalidPolicies(_) => {
                ServiceError::new(ErrorKind::FailedPrecondition, error.to_string())
            }
        }
    }
}

impl From<AuditError> for ServiceError {
    fn from(error: AuditError) -> Self {
        ServiceError::new(ErrorKind::Unavailable, error.to_string())
    }
}

/// Rate limiters per (principal, action), one quota per configured action.
#[derive(Debug)]
pub(crate) struct RateLimits {
    default: Option<(u32, DefaultKeyedRateLimiter<(String, String)>)>,
    actions: BTreeMap<String, (u32, DefaultKeyedRateLimiter<(String, String)>)>,
}

impl RateLimits {
    pub(crate) fn new(config: &RateLimitsConfig) -> Self {
        let limiter = |per_minute: u32| {
            let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
            let burst =
                NonZeroU32::new(config.burst.min(per_minute).max(1)).unwrap_or(NonZeroU32::MIN);
            (
                per_minute,
                DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)),
            )
        };
        Self {
            default: (config.per_minute > 0).then(|| limiter(config.per_minute)),
            actions: config
                .actions
                .iter()
                .filter(|_| config.per_minute > 0)
                .map(|(action, per_minute)| (action.clone(), limiter(*per_minute)))
                .collect(),
        }
    }

    /// `Err` when `principal` has used up `action` (named without its resource part).
    fn check(&self, principal: &str, action: &str) -> Result<(), ServiceError> {
        let action = action.split(':').next().unwrap_or(action);
        let Some((per_minute, limiter)) = self.actions.get(action).or(self.default.as_ref()) else {
            return Ok(());
        };
        limiter
            .check_key(&(principal.to_owned(), action.to_owned()))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                ServiceError::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "rate limit: {principal} may {action} {per_minute} times a minute; retry in {:.1} s",
                        wait.as_secs_f64()
                    ),
                )
            })
    }

    /// Forgets idle keys so the maps do not grow without bound.
    pub(crate) fn forget_idle(&self) {
        if let Some((_, limiter)) = &self.default {
            limiter.retain_recent();
        }
        for (_, limiter) in self.actions.values() {
            limiter.retain_recent();
        }
    }
}

/// The policy daemon's gRPC service.
pub(crate) struct PolicyService {
    pub(crate) authorizer: ArcSwap<Authorizer>,
    pub(crate) policy_directory: PathBuf,
    pub(crate) screener: Screener,
    /// How the screener screens, for the status line.
    pub(crate) screening_summary: String,
    pub(crate) redactor: Redactor,
    pub(crate) audit: Result<AuditLog, String>,
    pub(crate) sandbox: Result<Sandbox, String>,
    pub(crate) tools: BTreeMap<String, ToolConfig>,
    pub(crate) rate_limits: Arc<RateLimits>,
    pub(crate) health: Health,
}

pub(crate) fn tool_attributes(
    tools: &BTreeMap<String, ToolConfig>,
) -> BTreeMap<String, ToolAttributes> {
    tools
        .iter()
        .map(|(name, tool)| {
            (
                name.clone(),
                ToolAttributes {
                    risk: tool.risk.clone(),
                    network: tool.network,
                },
            )
        })
        .collect()
}

fn status_of(error: impl Into<ServiceError>) -> Status {
    Status::from(error.into())
}

fn checked_text(text: &str) -> Result<(), Status> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(status_of(ServiceError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "text is {} bytes; at most {MAX_TEXT_BYTES} are screened at once",
                text.len()
            ),
        )));
    }
    Ok(())
}

fn spans_to_proto(spans: &[Span]) -> Vec<RedactedSpan> {
    spans
        .iter()
        .map(|span| RedactedSpan {
            kind: span.kind.to_owned(),
            start: span.start as u64,
            end: span.end as u64,
        })
        .collect()
}

fn span_counts(spans: &[Span]) -> serde_json::Value {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for span in spans {
        *counts.entry(span.kind).or_default() += 1;
    }
    json!(counts)
}

/// The longest action, resource, tool name or filter a request may name, in bytes: far above
/// any real one (a route, tool or scope name is at most 256), and small enough that no
/// client-chosen string bloats the audit log or a log line.
const MAX_FIELD_BYTES: usize = 1024;

/// `Ok` when every `(name, value)` is within [`MAX_FIELD_BYTES`]; INVALID_ARGUMENT naming the
/// first that is not.
fn bounded(fields: &[(&str, &str)]) -> Result<(), Status> {
    match fields
        .iter()
        .find(|(_, value)| value.len() > MAX_FIELD_BYTES)
    {
        Some((name, value)) => Err(status_of(ServiceError::invalid_argument(format!(
            "{name}: {} bytes, over the limit of {MAX_FIELD_BYTES}",
            value.len()
        )))),
        None => Ok(()),
    }
}

/// The principal a request acts as, from its caller's socket credentials and the principal it
/// names (see [`Caller::acting_as`]).
fn acting(caller: &Caller, claimed: &str) -> Result<String, Status> {
    caller.acting_as(claimed).map_err(status_of)
}

/// ScreenPrompt's two principals, each checked against the caller.
fn prompt_acting(caller: &Caller, request: &mut ScreenPromptRequest) -> Result<(), Status> {
    if let Some(authorization) = &request.authorization {
        bounded(&[
            ("authorization.action", &authorization.action),
            ("authorization.resource", &authorization.resource),
        ])?;
    }
    if let Some(screening) = &request.screening {
        bounded(&[("screening.resource", &screening.resource)])?;
    }
    if let Some(authorization) = request.authorization.as_mut() {
        authorization.principal = acting(caller, &authorization.principal)?;
    }
    if let Some(screening) = request.screening.as_mut() {
        screening.principal = acting(caller, &screening.principal)?;
    }
    Ok(())
}

fn decision(allowed: bool) -> i32 {
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny
    }
    .into()
}

impl PolicyService {
    fn audit(&self) -> Result<&AuditLog, Status> {
        self.audit.as_ref().map_err(|problem| {
            status_of(ServiceError::new(
                ErrorKind::Unavailable,
                format!("audit log unusable, so nothing is decided: {problem}"),
            ))
        })
    }

    async fn record(&self, entry: Entry) -> Result<u64, Status> {
        self.record_together(vec![entry]).await
    }

    /// Records `entries` in one commit; the first one's sequence number.
    async fn record_together(&self, entries: Vec<Entry>) -> Result<u64, Status> {
        commit(self.audit()?, &self.health, entries).await
    }

    /// Cedar's decision on `request`: its audit entry, and the answer to send once that is
    /// recorded.
    fn decide(&self, request: &AuthorizeRequest) -> Result<(Entry, AuthorizeResponse), Status> {
        let decided = self
            .authorizer
            .load()
            .authorize(&request.principal, &request.action, &request.resource)
            .map_err(status_of)?;
        let entry = Entry {
            kind: "authorize",
            principal: request.principal.clone(),
            action: decided.action.clone(),
            resource: decided.resource.clone(),
            outcome: if decided.allowed { "allow" } else { "deny" }.to_owned(),
            detail: json!({ "policies": decided.determining_policies, "errors": decided.errors }),
        };
        let answer = AuthorizeResponse {
            decision: decision(decided.allowed),
            determining_policies: decided.determining_policies,
            errors: decided.errors,
            audit_sequence: 0,
        };
        Ok((entry, answer))
    }

    /// The screening of `request`'s text: its audit entry, and the answer to send once that is
    /// recorded.
    async fn screened(
        &self,
        request: &ScreenInputRequest,
    ) -> Result<(Entry, ScreenInputResponse), Status> {
        checked_text(&request.text)?;
        let screening = if request.text.len() <= INLINE_SCREENING_BYTES {
            self.screener.screen(&request.text)
        } else {
            let (screener, text) = (self.screener.clone(), request.text.clone());
            tokio::task::spawn_blocking(move || screener.screen(&text))
                .await
                .map_err(|error| {
                    status_of(ServiceError::new(
                        ErrorKind::Internal,
                        format!("screening failed: {error}"),
                    ))
                })?
        };
        let rules: Vec<&str> = screening
            .matched
            .iter()
            .map(|found| found.rule.id)
            .collect();
        let entry = Entry {
            kind: "screen",
            principal: request.principal.clone(),
            action: "screen".to_owned(),
            resource: request.resource.clone(),
            outcome: screening.verdict.as_str().to_owned(),
            // The text itself is never kept: only a fingerprint to match it up later.
            detail: json!({
                "score": screening.score,
                "rules": rules,
                "rule_set": screening::RULE_SET_VERSION,
                "text_sha256": hex::encode(Sha256::digest(request.text.as_bytes())),
                "text_bytes": request.text.len(),
            }),
        };
        let answer = ScreenInputResponse {
            score: screening.score,
            verdict: match screening.verdict {
                screening::Verdict::Allow => Verdict::Allow,
                screening::Verdict::Flag => Verdict::Flag,
                screening::Verdict::Block => Verdict::Block,
            }
            .into(),
            rules: screening
                .matched
                .iter()
                .map(|found| RuleMatch {
                    id: found.rule.id.to_owned(),
                    description: found.rule.description.to_owned(),
                    weight: found.weight,
                    start: found.start as u64,
                    end: found.end as u64,
                })
                .collect(),
            rule_set_version: screening::RULE_SET_VERSION.to_owned(),
            audit_sequence: 0,
        };
        Ok((entry, answer))
    }

    /// ScreenPrompt's authorization and, when that allows, its screening: the audit entries
    /// to commit together, and the answer (its sequences still 0).
    async fn prompt_answer(
        &self,
        request: ScreenPromptRequest,
    ) -> Result<(Vec<Entry>, ScreenPromptResponse), Status> {
        let (Some(authorization), Some(screening)) = (request.authorization, request.screening)
        else {
            return Err(Status::invalid_argument(
                "a ScreenPrompt request needs both its authorization and its screening",
            ));
        };
        self.limit(&authorization.principal, &authorization.action)
            .await?;
        let (decided, authorized) = self.decide(&authorization)?;
        if authorized.decision() != Decision::Allow {
            return Ok((
                vec![decided],
                ScreenPromptResponse {
                    authorization: Some(authorized),
                    screening: None,
                },
            ));
        }
        let (verdict, screened) = self.screened(&screening).await?;
        Ok((
            vec![decided, verdict],
            ScreenPromptResponse {
                authorization: Some(authorized),
                screening: Some(screened),
            },
        ))
    }

    /// An administration call (`policy.reload`, `audit.read`) by `caller`: Cedar decides, and a
    /// refusal is audited and answered PERMISSION_DENIED. An allowed call is not recorded here
    /// (reading the log is no change, and a reload writes its own record). Root is never
    /// refused these two: it owns the policy files and the log's database anyway, and must be
    /// able to repair a policy set that forgot it.
    async fn administer(&self, caller: &Caller, action: &str) -> Result<String, Status> {
        let principal = caller.identified().map_err(status_of)?.to_owned();
        let request = AuthorizeRequest {
            principal: principal.clone(),
            action: action.to_owned(),
            resource: String::new(),
        };
        self.limit(&principal, action).await?;
        let (entry, answer) = self.decide(&request)?;
        if answer.decision() == Decision::Allow {
            return Ok(principal);
        }
        if caller.is_administrator() {
            tracing::warn!(%action, "no policy permits root to {action}; root may all the same");
            return Ok(principal);
        }
        self.record(entry).await?;
        Err(status_of(ServiceError::new(
            ErrorKind::PermissionDenied,
            format!("{principal} may not {action} (no policy permits it; see policy.d)"),
        )))
    }

    /// A rate-limited call is refused, and the refusal audited too.
    async fn limit(&self, principal: &str, action: &str) -> Result<(), Status> {
        if let Err(error) = self.rate_limits.check(principal, action) {
            self.record(Entry {
                kind: "rate-limit",
                principal: principal.to_owned(),
                action: action.to_owned(),
                outcome: "refused".to_owned(),
                detail: json!({}),
                ..Entry::default()
            })
            .await?;
            return Err(status_of(error));
        }
        Ok(())
    }

    /// Cedar plus the tool's argument constraints; returns the decision, its reason and the
    /// arguments to run with.
    fn check_tool(
        &self,
        request: &ToolCallRequest,
    ) -> Result<(crate::authorizer::Decision, String, Vec<String>), Status> {
        let decision = self
            .authorizer
            .load()
            .authorize(
                &request.principal,
                &format!("tool.exec:{}", request.tool),
                "",
            )
            .map_err(status_of)?;
        let Some(tool) = self.tools.get(&request.tool) else {
            return Ok((
                crate::authorizer::Decision {
                    allowed: false,
                    ..decision
                },
                format!("no tool {:?} is configured", request.tool),
                Vec::new(),
            ));
        };
        if !decision.allowed {
            let reason = if decision.determining_policies.is_empty() {
                "no policy permits this".to_owned()
            } else {
                format!("forbidden by {}", decision.determining_policies.join(", "))
            };
            return Ok((decision, reason, Vec::new()));
        }
        match crate::tools::check_arguments(tool, &request.arguments) {
            Ok(arguments) => {
                let reason = format!("permitted by {}", decision.determining_policies.join(", "));
                Ok((decision, reason, arguments))
            }
            Err(reason) => Ok((
                crate::authorizer::Decision {
                    allowed: false,
                    ..decision
                },
                reason,
                Vec::new(),
            )),
        }
    }
}

type RedactStream = Pin<Box<dyn Stream<Item = Result<RedactOutputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        bounded(&[("action", &request.action), ("resource", &request.resource)])?;
        request.principal = acting(&caller, &request.principal)?;
        self.limit(&request.principal, &request.action).await?;
        let (entry, mut answer) = self.decide(&request)?;
        answer.audit_sequence = self.record(entry).await?;
        Ok(Response::new(answer))
    }

    async fn screen_input(
        &self,
        request: Request<ScreenInputRequest>,
    ) -> Result<Response<ScreenInputResponse>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        bounded(&[("resource", &request.resource)])?;
        request.principal = acting(&caller, &request.principal)?;
        let (entry, mut answer) = self.screened(&request).await?;
        answer.audit_sequence = self.record(entry).await?;
        Ok(Response::new(answer))
    }

    async fn screen_prompt(
        &self,
        request: Request<ScreenPromptRequest>,
    ) -> Result<Response<ScreenPromptResponse>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        prompt_acting(&caller, &mut request)?;
        let (entries, answer) = self.prompt_answer(request).await?;
        let first = self.record_together(entries).await?;
        Ok(Response::new(numbered(answer, first)))
    }

    type GateStream = Pin<Box<dyn Stream<Item = Result<GateProgress, Status>> + Send>>;

    async fn gate(
        &self,
        request: Request<Streaming<GateRequest>>,
    ) -> Result<Response<Self::GateStream>, Status> {
        let caller = Caller::of(&request);
        let mut incoming = request.into_inner();
        let mut prompt = match incoming.message().await? {
            Some(GateRequest {
                request: Some(gate_request::Request::Prompt(prompt)),
            }) => prompt,
            _ => {
                return Err(Status::invalid_argument(
                    "a Gate stream starts with its prompt",
                ));
            }
        };
        prompt_acting(&caller, &mut prompt)?;
        let principal = prompt
            .screening
            .as_ref()
            .map(|screening| screening.principal.clone())
            .unwrap_or_default();
        let (entries, answer) = self.prompt_answer(prompt).await?;
        let records = entries.len() as u64;
        let committed = move |first_sequence| GateProgress {
            progress: Some(gate_progress::Progress::Committed(AuditCommitted {
                first_sequence,
                records,
            })),
        };
        if !allows(&answer) {
            // A refusal ends the caller's work at once, so there is nothing to overlap with.
            let first = self.record_together(entries).await?;
            let answer = gate_progress::Progress::Answer(numbered(answer, first));
            return Ok(Response::new(Box::pin(futures_util::stream::iter([
                Ok(GateProgress {
                    progress: Some(answer),
                }),
                Ok(committed(first)),
            ]))));
        }
        // Its own task, so the records are written even if the caller goes away.
        let audit = self.audit()?.clone();
        let health = self.health.clone();
        let writing = tokio::spawn({
            let audit = audit.clone();
            async move { commit(&audit, &health, entries).await }
        });
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let answered = sender.try_send(Ok(GateProgress {
            progress: Some(gate_progress::Progress::Answer(answer)),
        }));
        debug_assert!(answered.is_ok(), "the first message always fits");
        let redaction = GateRedaction {
            redactor: StreamRedactor::new(self.redactor.clone()),
            audit,
            principal,
            spans: Vec::new(),
        };
        tokio::spawn(relay_gate(incoming, writing, committed, redaction, sender));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn redact_output(
        &self,
        request: Request<RedactOutputRequest>,
    ) -> Result<Response<RedactOutputResponse>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        request.principal = acting(&caller, &request.principal)?;
        checked_text(&request.text)?;
        let (text, spans) = self.redactor.redact(&request.text);
        if !spans.is_empty() {
            self.record(Entry {
                kind: "redact",
                principal: request.principal.clone(),
                action: "redact".to_owned(),
                outcome: "redacted".to_owned(),
                detail: span_counts(&spans),
                ..Entry::default()
            })
            .await?;
        }
        Ok(Response::new(RedactOutputResponse {
            text,
            spans: spans_to_proto(&spans),
        }))
    }

    type RedactOutputStreamStream = RedactStream;

    async fn redact_output_stream(
        &self,
        request: Request<Streaming<RedactOutputChunk>>,
    ) -> Result<Response<Self::RedactOutputStreamStream>, Status> {
        let caller = Caller::of(&request);
        let mut incoming = request.into_inner();
        let mut stream = StreamRedactor::new(self.redactor.clone());
        let audit = self.audit()?.clone();
        let outgoing = async_stream_chunks(move |sender| async move {
            let mut principal = String::new();
            let mut all_spans = Vec::new();
            while let Some(chunk) = incoming.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                if principal.is_empty() {
                    principal = match acting(&caller, &chunk.principal) {
                        Ok(principal) => principal,
                        Err(status) => {
                            let _ = sender.send(Err(status)).await;
                            return;
                        }
                    };
                }
                let output = stream.push(&chunk.text);
                all_spans.extend(output.spans.iter().copied());
                if !output.text.is_empty() || !output.spans.is_empty() {
                    let reply = RedactOutputChunk {
                        text: output.text,
                        spans: spans_to_proto(&output.spans),
                        principal: String::new(),
                    };
                    if sender.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
            let output = stream.finish();
            all_spans.extend(output.spans.iter().copied());
            if !all_spans.is_empty() {
                let recorded = audit
                    .append(Entry {
                        kind: "redact",
                        principal,
                        action: "redact-stream".to_owned(),
                        outcome: "redacted".to_owned(),
                        detail: span_counts(&all_spans),
                        ..Entry::default()
                    })
                    .await;
                if let Err(error) = recorded {
                    let _ = sender.send(Err(status_of(error))).await;
                    return;
                }
            }
            let _ = sender
                .send(Ok(RedactOutputChunk {
                    text: output.text,
                    spans: spans_to_proto(&output.spans),
                    principal: String::new(),
                }))
                .await;
        });
        Ok(Response::new(outgoing))
    }

    async fn check_tool_call(
        &self,
        request: Request<ToolCallRequest>,
    ) -> Result<Response<ToolCallResponse>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        bounded(&[("tool", &request.tool)])?;
        request.principal = acting(&caller, &request.principal)?;
        self.limit(&request.principal, "tool.exec").await?;
        let (decided, reason, _) = self.check_tool(&request)?;
        let audit_sequence = self
            .record(Entry {
                kind: "tool-check",
                principal: request.principal.clone(),
                action: format!("tool.exec:{}", request.tool),
                resource: decided.resource.clone(),
                outcome: if decided.allowed { "allow" } else { "deny" }.to_owned(),
                detail: json!({ "reason": reason, "arguments": request.arguments.len() }),
            })
            .await?;
        Ok(Response::new(ToolCallResponse {
            decision: decision(decided.allowed),
            reason,
            determining_policies: decided.determining_policies,
            audit_sequence,
        }))
    }

    async fn exec_tool(
        &self,
        request: Request<ToolCallRequest>,
    ) -> Result<Response<ExecToolResponse>, Status> {
        let caller = Caller::of(&request);
        let mut request = request.into_inner();
        bounded(&[("tool", &request.tool)])?;
        request.principal = acting(&caller, &request.principal)?;
        self.limit(&request.principal, "tool.exec").await?;
        let (decided, reason, arguments) = self.check_tool(&request)?;
        let action = format!("tool.exec:{}", request.tool);
        if !decided.allowed {
            self.record(Entry {
                kind: "exec",
                principal: request.principal.clone(),
                action,
                resource: decided.resource.clone(),
                outcome: "deny".to_owned(),
                detail: json!({ "reason": reason }),
            })
            .await?;
            return Err(status_of(ServiceError::new(
                ErrorKind::PermissionDenied,
                format!("tool {:?}: {reason}", request.tool),
            )));
        }
        let sandbox = self.sandbox.as_ref().map_err(|problem| {
            status_of(ServiceError::new(
                ErrorKind::FailedPrecondition,
                format!("tools cannot run: {problem}"),
            ))
        })?;
        let tool = self
            .tools
            .get(&request.tool)
            .ok_or_else(|| Status::not_found("tool"))?;
        let shown_arguments = self.redactor.redact(&arguments.join(" ")).0;
        // The intent is on disk before the tool starts: whatever happens next, the log shows
        // that it was run, by whom, with what.
        let intent = self
            .record(Entry {
                kind: "exec",
                principal: request.principal.clone(),
                action: action.clone(),
                resource: decided.resource.clone(),
                outcome: "started".to_owned(),
                detail: json!({ "sandbox": sandbox.name(), "arguments": shown_arguments }),
            })
            .await?;
        // Dropped with the call (the caller went away): the run is dropped too, which stops the
        // tool, and the outcome "cancelled" is recorded in the background.
        let mut unfinished = Unfinished {
            audit: self.audit()?.clone(),
            entry: Some(Entry {
                kind: "exec",
                principal: request.principal.clone(),
                action: action.clone(),
                resource: decided.resource.clone(),
                outcome: "cancelled".to_owned(),
                detail: json!({ "intent": intent, "sandbox": sandbox.name() }),
            }),
        };
        let run = sandbox.run(&request.tool, tool, &arguments).await;
        unfinished.entry = None;
        let execution = match run {
            Ok(execution) => execution,
            Err(problem) => {
                self.record(Entry {
                    kind: "exec",
                    principal: request.principal.clone(),
                    action,
                    resource: decided.resource.clone(),
                    outcome: "failed".to_owned(),
                    detail: json!({ "intent": intent, "sandbox": sandbox.name(), "error": problem }),
                })
                .await?;
                return Err(status_of(ServiceError::new(
                    ErrorKind::Unavailable,
                    format!("sandbox: {problem}"),
                )));
            }
        };
        let (stdout, stdout_spans) = self
            .redactor
            .redact(&String::from_utf8_lossy(&execution.stdout));
        let (stderr, stderr_spans) = self
            .redactor
            .redact(&String::from_utf8_lossy(&execution.stderr));
        let mut redacted = spans_to_proto(&stdout_spans);
        redacted.extend(spans_to_proto(&stderr_spans));
        let audit_sequence = self
            .record(Entry {
                kind: "exec",
                principal: request.principal.clone(),
                action,
                resource: decided.resource.clone(),
                outcome: execution.outcome.as_str().to_owned(),
                detail: json!({
                    "intent": intent,
                    "exit_code": execution.exit_code,
                    "sandbox": sandbox.name(),
                    "arguments": shown_arguments,
                    "duration_seconds": execution.duration.as_secs_f64(),
                    "stdout_bytes": execution.stdout.len(),
                    "truncated": execution.truncated,
                    "redacted": redacted.len(),
                }),
            })
            .await?;
        Ok(Response::new(ExecToolResponse {
            exit_code: execution.exit_code,
            outcome: execution.outcome.as_str().to_owned(),
            stdout,
            stderr,
            truncated: execution.truncated,
            redacted,
            sandbox: sandbox.name().to_owned(),
            duration_seconds: execution.duration.as_secs_f64(),
            audit_sequence,
        }))
    }

    async fn reload_policies(
        &self,
        request: Request<ReloadPoliciesRequest>,
    ) -> Result<Response<ReloadPoliciesResponse>, Status> {
        let principal = self
            .administer(&Caller::of(&request), "policy.reload")
            .await?;
        let (files, outcome) = match PolicyFiles::load(&self.policy_directory) {
            Ok(files) => (Ok(files), "ok".to_owned()),
            Err(error) => (Err(error.to_string()), "rejected".to_owned()),
        };
        self.record(Entry {
            kind: "reload",
            principal,
            action: "policy.reload".to_owned(),
            outcome,
            detail: json!({ "error": files.as_ref().err() }),
            ..Entry::default()
        })
        .await?;
        let files = files.map_err(|error| {
            status_of(ServiceError::new(
                ErrorKind::FailedPrecondition,
                format!("{error}; the running policies are kept"),
            ))
        })?;
        let response = ReloadPoliciesResponse {
            policy_count: u32::try_from(files.policy_count()).unwrap_or(u32::MAX),
            files: files.files.clone(),
        };
        tracing::info!(policies = response.policy_count, "policies reloaded");
        self.health.serving(crate::status_line(
            &files,
            self.sandbox.as_ref(),
            &self.screening_summary,
        ));
        self.authorizer.store(Arc::new(Authorizer::new(
            files,
            tool_attributes(&self.tools),
        )));
        Ok(Response::new(response))
    }

    async fn verify_audit(
        &self,
        request: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        self.administer(&Caller::of(&request), "audit.read").await?;
        let verification = self.audit()?.verify().await.map_err(status_of)?;
        let (first_bad_sequence, problem) = verification.first_bad.unwrap_or((0, String::new()));
        Ok(Response::new(VerifyAuditResponse {
            intact: first_bad_sequence == 0,
            records: verification.records,
            first_bad_sequence,
            problem,
        }))
    }

    async fn query_audit(
        &self,
        request: Request<QueryAuditRequest>,
    ) -> Result<Response<QueryAuditResponse>, Status> {
        self.administer(&Caller::of(&request), "audit.read").await?;
        let mut request = request.into_inner();
        bounded(&[
            ("kind", &request.kind),
            ("principal", &request.principal),
            ("action", &request.action),
        ])?;
        // Records name principals in one canonical form; a login name finds the user's.
        if !request.principal.trim().is_empty() {
            request.principal =
                synos_common::caller::canonical_principal(&request.principal).map_err(status_of)?;
        }
        let limit = match request.limit {
            0 => 20,
            limit if limit > 1000 => return Err(Status::invalid_argument("limit: at most 1000")),
            limit => limit,
        };
        let records = self
            .audit()?
            .query(
                request.after_sequence,
                limit,
                &request.kind,
                &request.principal,
                &request.action,
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(QueryAuditResponse {
            records: records
                .into_iter()
                .map(|record| AuditRecord {
                    sequence: record.sequence,
                    time: record.time,
                    kind: record.kind,
                    principal: record.principal,
                    action: record.action,
                    resource: record.resource,
                    outcome: record.outcome,
                    detail_json: record.detail,
                    hash: record.hash,
                })
                .collect(),
        }))
    }
}

/// Commits `entries` together, their first sequence number; a failure marks the daemon
/// degraded, since every decision is refused until the log is writable again.
async fn commit(audit: &AuditLog, health: &Health, entries: Vec<Entry>) -> Result<u64, Status> {
    match audit.append_together(entries).await {
        Ok(first) => {
            health.audit_written();
            Ok(first)
        }
        Err(error) => {
            health.audit_failed(format!(
                "{error}; every decision is refused until it is writable"
            ));
            Err(status_of(error))
        }
    }
}

/// The status line, made of what is served and what is wrong with the audit log. A failed
/// write marks the daemon degraded until a write succeeds again; a log that could not be
/// opened marks it degraded for good.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    line: StatusLine,
    parts: Arc<Mutex<HealthParts>>,
}

#[derive(Debug)]
struct HealthParts {
    serving: String,
    audit_problem: Option<String>,
}

impl Health {
    /// The health of a daemon serving `serving`, its audit log unusable for `audit_problem`.
    pub(crate) fn new(line: StatusLine, serving: String, audit_problem: Option<String>) -> Self {
        let health = Self {
            line,
            parts: Arc::new(Mutex::new(HealthParts {
                serving,
                audit_problem,
            })),
        };
        health.update(|_| {});
        health
    }

    /// What is served changed (policies reloaded).
    pub(crate) fn serving(&self, serving: String) {
        self.update(|parts| parts.serving = serving);
    }

    fn audit_failed(&self, problem: String) {
        self.update(|parts| parts.audit_problem = Some(problem));
    }

    fn audit_written(&self) {
        // Every commit passes here, so the healthy case only looks.
        if self.parts().audit_problem.is_some() {
            self.update(|parts| parts.audit_problem = None);
        }
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, HealthParts> {
        self.parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut HealthParts)) {
        let mut parts = self.parts();
        let was_degraded = parts.audit_problem.is_some();
        change(&mut parts);
        match &parts.audit_problem {
            Some(problem) => self.line.set(format!("DEGRADED: {problem}")),
            None => {
                if was_degraded {
                    tracing::info!("audit log writable again");
                }
                self.line.set(parts.serving.clone());
            }
        }
    }
}

/// A tool run whose outcome is not recorded yet; dropped unrecorded (the call was cancelled),
/// it records `entry` in the background.
struct Unfinished {
    audit: AuditLog,
    entry: Option<Entry>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            let audit = self.audit.clone();
            tokio::spawn(async move {
                if let Err(error) = audit.append(entry).await {
                    tracing::error!(%error, "the cancelled tool run's outcome is not audited");
                }
            });
        }
    }
}

/// Whether `answer` lets the prompt through: authorized and not blocked.
fn allows(answer: &ScreenPromptResponse) -> bool {
    answer
        .authorization
        .as_ref()
        .is_some_and(|authorized| authorized.decision() == Decision::Allow)
        && answer
            .screening
            .as_ref()
            .is_some_and(|screened| screened.verdict() != Verdict::Block)
}

/// The reply half of a Gate stream: the redaction and what it found, audited at the end.
struct GateRedaction {
    redactor: StreamRedactor,
    audit: AuditLog,
    principal: String,
    spans: Vec<Span>,
}

impl GateRedaction {
    /// The redacted message for `output`, if it carries anything.
    fn message(&mut self, output: crate::redaction::StreamOutput) -> Option<GateProgress> {
        self.spans.extend(output.spans.iter().copied());
        (!output.text.is_empty() || !output.spans.is_empty()).then(|| GateProgress {
            progress: Some(gate_progress::Progress::Redacted(RedactOutputChunk {
                text: output.text,
                spans: spans_to_proto(&output.spans),
                principal: String::new(),
            })),
        })
    }

    /// Releases what is held back, with `last` (the reply's last piece) when the caller sent
    /// one, in one message, once what was replaced is audited.
    async fn finish(mut self, last: Option<&str>) -> Result<Option<GateProgress>, Status> {
        let mut output = last.map_or_else(Default::default, |text| self.redactor.push(text));
        let rest = self.redactor.finish();
        output.text.push_str(&rest.text);
        output.spans.extend(rest.spans);
        let message = self.message(output);
        if !self.spans.is_empty() {
            self.audit
                .append(Entry {
                    kind: "redact",
                    principal: self.principal.clone(),
                    action: "redact-stream".to_owned(),
                    outcome: "redacted".to_owned(),
                    detail: span_counts(&self.spans),
                    ..Entry::default()
                })
                .await
                .map_err(status_of)?;
        }
        Ok(message)
    }
}

/// The rest of an allowed Gate stream: `committed` as soon as the prompt's records are written,
/// and the reply's pieces redacted as they come; it ends once both are done, or at the first
/// error (the caller then withholds the reply).
async fn relay_gate(
    mut incoming: Streaming<GateRequest>,
    mut writing: tokio::task::JoinHandle<Result<u64, Status>>,
    committed: impl Fn(u64) -> GateProgress + Send,
    redaction: GateRedaction,
    sender: tokio::sync::mpsc::Sender<Result<GateProgress, Status>>,
) {
    let mut written = false;
    let mut redaction = Some(redaction);
    while !written || redaction.is_some() {
        let message = tokio::select! {
            result = &mut writing, if !written => {
                written = true;
                match result {
                    Ok(Ok(first)) => Ok(Some(committed(first))),
                    Ok(Err(status)) => Err(status),
                    Err(error) => Err(Status::internal(format!("the audit commit stopped: {error}"))),
                }
            }
            piece = incoming.message(), if redaction.is_some() => match (piece, redaction.as_mut()) {
                (Ok(Some(GateRequest { request: Some(gate_request::Request::Reply(text)) })), Some(open)) => {
                    checked_text(&text).map(|()| {
                        let output = open.redactor.push(&text);
                        open.message(output)
                    })
                }
                (Ok(Some(GateRequest { request: Some(gate_request::Request::LastReply(text)) })), Some(_)) => {
                    match (checked_text(&text), redaction.take()) {
                        (Ok(()), Some(open)) => open.finish(Some(&text)).await,
                        (Err(status), _) => Err(status),
                        (Ok(()), None) => Ok(None),
                    }
                }
                (Ok(Some(_)), _) => Err(Status::invalid_argument(
                    "after its prompt a Gate stream carries only reply pieces",
                )),
                (Ok(None), _) => match redaction.take() {
                    Some(open) => open.finish(None).await,
                    None => Ok(None),
                },
                // The caller went away: the commit goes on in its own task.
                (Err(_), _) => return,
            },
        };
        match message {
            Ok(None) => {}
            Ok(Some(message)) => {
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            Err(status) => {
                let _ = sender.send(Err(status)).await;
                return;
            }
        }
    }
}

/// `answer` with the sequence numbers of its audit records, committed from `first` on in the
/// order [`PolicyService::prompt_answer`] gave them.
fn numbered(mut answer: ScreenPromptResponse, first: u64) -> ScreenPromptResponse {
    if let Some(authorized) = &mut answer.authorization {
        authorized.audit_sequence = first;
    }
    if let Some(screened) = &mut answer.screening {
        screened.audit_sequence = first + 1;
    }
    answer
}

/// A response stream fed by a task through a channel.
fn async_stream_chunks<Task, Running>(task: Task) -> RedactStream
where
    Task: FnOnce(tokio::sync::mpsc::Sender<Result<RedactOutputChunk, Status>>) -> Running,
    Running: Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(task(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
