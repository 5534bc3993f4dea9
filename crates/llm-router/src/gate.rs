//! The router's policy gate: every prompt is screened by synos-policy before any provider is
//! called, and every reply redacted before it leaves the router, on both front ends, whole and
//! streamed (policy redacts a stream as it comes, so a secret split across chunks is still
//! found), all on one Gate stream per request. A blocked prompt is refused; when policy cannot
//! be reached the configured stance applies (refuse by default; a request let through unscreened
//! is not redacted either).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _, TryFutureExt as _};
use serde_json::Value;
use synos_proto::policy::v1::gate_progress::Progress;
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{
    AuthorizeRequest, Decision, GateProgress, GateRequest, ScreenInputRequest, ScreenPromptRequest,
    Verdict, gate_request,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::config::{GateMode, PolicyGateConfig, Unreachable};
use crate::engine::{ChatCall, RouteError, StreamItem};
use crate::upstream::StreamChunk;

/// How long the gate waits for policy to accept a connection or answer.
const POLICY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the gate did with one prompt.
#[derive(Debug)]
pub(crate) enum Screening {
    /// Screened and allowed (or only flagged); policy is still committing the audit records,
    /// and the reply waits for [`Gate::confirm`].
    Passed(PendingAudit),
    /// Not screened: the gate is off, or "auto" found no policy socket.
    Off,
    /// Not screened, nor will the reply be redacted: policy was unreachable and the stance is
    /// "allow".
    Unscreened(String),
}

/// A passed prompt's Gate stream, still open: policy's word that the prompt's audit records
/// are on disk is still to come (the provider is called while they are written, which takes
/// the fsync off the gate's latency), and the reply goes through it to be redacted.
#[derive(Debug)]
pub(crate) struct PendingAudit {
    requests: mpsc::Sender<GateRequest>,
    progress: Box<Streaming<GateProgress>>,
}

/// The gate, with its connection to policy (made on first use, remade after a failure).
#[derive(Debug)]
pub(crate) struct Gate {
    config: PolicyGateConfig,
    socket: PathBuf,
    channel: Mutex<Option<Channel>>,
    /// Why the last screening could not reach policy; cleared by the next that does.
    unreachable: Mutex<Option<String>>,
}

impl Gate {
    /// A gate for `config`; `default_socket` is policy's socket in the runtime directory.
    pub(crate) fn new(config: PolicyGateConfig, default_socket: PathBuf) -> Self {
        let socket = config.socket.clone().unwrap_or(default_socket);
        Self {
            config,
            socket,
            channel: Mutex::new(None),
            unreachable: Mutex::new(None),
        }
    }

    /// Whether this gate has the same settings, so it can be kept across a reload.
    pub(crate) fn same_as(&self, config: &PolicyGateConfig) -> bool {
        &self.config == config
    }

    /// "on", "off", "auto (on: …)" for the status line.
    pub(crate) fn describe(&self) -> String {
        let stance = match self.config.when_unreachable {
            Unreachable::Refuse => "fail closed",
            Unreachable::Allow => "fail open",
        };
        if !self.active() {
            return match self.config.gate {
                GateMode::Auto => format!(
                    "policy gate off (no policy socket at {})",
                    self.socket.display()
                ),
                _ => "policy gate off".to_owned(),
            };
        }
        match self
            .unreachable
            .lock()
            .ok()
            .and_then(|problem| problem.clone())
        {
            Some(problem) => format!("policy gate on ({stance}), DEGRADED: {problem}"),
            None => format!("policy gate on ({stance})"),
        }
    }

    fn active(&self) -> bool {
        match self.config.gate {
            GateMode::Off => false,
            GateMode::On => true,
            GateMode::Auto => self.socket.exists(),
        }
    }

    async fn client(&self) -> Result<PolicyClient<Channel>, String> {
        let cached = self
            .channel
            .lock()
            .map_err(|_| "the gate's connection is broken".to_owned())?
            .clone();
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let channel = synos_common::client::connect(&self.socket, POLICY_TIMEOUT)
                    .await
                    .map_err(|error| error.to_string())?;
                if let Ok(mut slot) = self.channel.lock() {
                    *slot = Some(channel.clone());
                }
                channel
            }
        };
        Ok(PolicyClient::new(channel))
    }

    fn forget_connection(&self) {
        if let Ok(mut slot) = self.channel.lock() {
            *slot = None;
        }
    }

    /// Asks policy whether `call`'s principal may use its route (Cedar, `llm.route:<name>`) and
    /// screens its prompt (every message's text, in order), in one round trip whose two audit
    /// records share one commit.
    pub(crate) async fn screen(&self, call: &ChatCall) -> Result<Screening, RouteError> {
        if !self.active() {
            return Ok(Screening::Off);
        }
        let answers = match self.client().await {
            Err(problem) => Err(problem),
            Ok(mut client) => {
                let (requests, receiver) = mpsc::channel(64);
                let prompt = GateRequest {
                    request: Some(gate_request::Request::Prompt(ScreenPromptRequest {
                        authorization: Some(AuthorizeRequest {
                            principal: call.principal.clone(),
                            action: format!("llm.route:{}", call.route),
                            resource: String::new(),
                        }),
                        screening: Some(ScreenInputRequest {
                            text: prompt_text(call),
                            principal: call.principal.clone(),
                            resource: format!("Route::{:?}", call.route),
                        }),
                    })),
                };
                // Queued before the call, so it leaves with the call's first frame.
                let _ = requests.try_send(prompt);
                ask_policy(client.gate(tokio_stream::wrappers::ReceiverStream::new(receiver)))
                    .map_ok(|progress| (requests, progress))
            }
            .and_then(|(requests, mut progress)| async move {
                match next_progress(&mut progress).await? {
                    Progress::Answer(answer) => Ok((answer, requests, progress)),
                    _ => Err("policy's Gate stream did not start with its answer".to_owned()),
                }
            })
            .await
            .and_then(|(answer, requests, progress)| {
                match (answer.authorization, answer.screening) {
                    (Some(authorized), screened)
                        if authorized.decision() != Decision::Allow || screened.is_some() =>
                    {
                        Ok((authorized, screened, requests, progress))
                    }
                    _ => Err("policy's answer lacks its decision or its screening".to_owned()),
                }
            }),
        };
        if answers.is_ok() {
            self.set_unreachable(None);
        }
        match answers {
            Ok((authorized, screened, requests, progress)) => {
                if authorized.decision() != Decision::Allow {
                    tracing::warn!(route = %call.route, principal = %call.principal, "route refused by policy");
                    return Err(RouteError::Forbidden(format!(
                        "policy does not allow {} to use route {:?}{}",
                        call.principal,
                        call.route,
                        if authorized.determining_policies.is_empty() {
                            " (no policy permits it)".to_owned()
                        } else {
                            format!(" ({})", authorized.determining_policies.join(", "))
                        }
                    )));
                }
                if let Some(screened) = screened
                    && screened.verdict() == Verdict::Block
                {
                    let rules: Vec<String> =
                        screened.rules.iter().map(|rule| rule.id.clone()).collect();
                    tracing::warn!(route = %call.route, principal = %call.principal, score = screened.score, rules = %rules.join(","), "prompt blocked by policy");
                    return Err(RouteError::Blocked {
                        message: format!(
                            "the prompt was blocked by policy (score {:.2}; rules {})",
                            screened.score,
                            rules.join(", ")
                        ),
                        rules,
                    });
                }
                Ok(Screening::Passed(PendingAudit {
                    requests,
                    progress: Box::new(progress),
                }))
            }
            Err(problem) => {
                match self.unreachable(&problem, "cannot screen the prompt, so it is refused") {
                    Some(refusal) => Err(refusal),
                    None => Ok(Screening::Unscreened(problem)),
                }
            }
        }
    }
}

impl Gate {
    /// Policy's Cedar decision on `principal` doing `action` (an administration action such as
    /// `llm.manage`), which policy audits; `Err` with why policy could not decide (the gate is
    /// off, or policy is unreachable or refused to answer).
    pub(crate) async fn authorize(&self, principal: &str, action: &str) -> Result<bool, String> {
        if !self.active() {
            return Err("the policy gate is off".to_owned());
        }
        let mut client = self.client().await?;
        let request = AuthorizeRequest {
            principal: principal.to_owned(),
            action: action.to_owned(),
            resource: String::new(),
        };
        match tokio::time::timeout(POLICY_TIMEOUT, client.authorize(request)).await {
            Ok(Ok(answer)) => Ok(answer.into_inner().decision() == Decision::Allow),
            Ok(Err(status)) => {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) {
                    self.forget_connection();
                }
                Err(format!("policy did not decide: {}", status.message()))
            }
            Err(_) => Err(format!(
                "policy did not answer within {} s",
                POLICY_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The next message of a Gate stream within [`POLICY_TIMEOUT`], `None` at its end, or why
/// there is none.
async fn next_message(progress: &mut Streaming<GateProgress>) -> Result<Option<Progress>, String> {
    match tokio::time::timeout(POLICY_TIMEOUT, progress.message()).await {
        Err(_) => Err(format!("no answer within {} s", POLICY_TIMEOUT.as_secs())),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(GateProgress { progress: None }))) => {
            Err("policy sent an empty message".to_owned())
        }
        Ok(Ok(Some(GateProgress {
            progress: Some(progress),
        }))) => Ok(Some(progress)),
    }
}

/// The next message of a Gate stream within [`POLICY_TIMEOUT`], or why there is none.
async fn next_progress(progress: &mut Streaming<GateProgress>) -> Result<Progress, String> {
    next_message(progress)
        .await?
        .ok_or_else(|| "policy ended its answer early".to_owned())
}

/// One call to policy within [`POLICY_TIMEOUT`]; its answer, or why there is none.
async fn ask_policy<Answer>(
    call: impl Future<Output = Result<tonic::Response<Answer>, tonic::Status>>,
) -> Result<Answer, String> {
    match tokio::time::timeout(POLICY_TIMEOUT, call).await {
        Err(_) => Err(format!("no answer within {} s", POLICY_TIMEOUT.as_secs())),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Ok(Ok(answer)) => Ok(answer.into_inner()),
    }
}

/// A streamed reply's redaction on its Gate stream: text goes in through `input`, redacted
/// text comes out of `output` (held back while it could still be the start of a secret).
#[derive(Debug)]
pub(crate) struct Redaction {
    /// Text to redact; closing it releases what policy holds back.
    input: mpsc::Sender<GateRequest>,
    /// Redacted text, final.
    output: Streaming<GateProgress>,
}

impl Gate {
    fn set_unreachable(&self, problem: Option<String>) {
        if let Ok(mut unreachable) = self.unreachable.lock() {
            *unreachable = problem;
        }
    }

    /// The one place the stance applies when policy cannot be reached: an error saying
    /// `refusal` (failing closed), or `None` to go on without policy (failing open, logged and
    /// counted by the caller). Either way the next call reconnects, and the status line shows
    /// the problem until a call succeeds.
    fn unreachable(&self, problem: &str, refusal: &str) -> Option<RouteError> {
        self.forget_connection();
        let problem = format!("synos-policy at {}: {problem}", self.socket.display());
        self.set_unreachable(Some(problem.clone()));
        match self.config.when_unreachable {
            Unreachable::Refuse => Some(RouteError::PolicyUnavailable(format!(
                "{refusal}: {problem}"
            ))),
            Unreachable::Allow => {
                tracing::warn!(%problem, "policy unreachable and when_unreachable = \"allow\": going on without it ({refusal} otherwise)");
                None
            }
        }
    }

    /// The reply to a passed prompt, whole, redacted on its Gate stream once policy has
    /// confirmed the prompt's audit records (by the time a provider has answered they almost
    /// always are); `None` when it passes as it is (no screening, so no gate stream). Without
    /// the confirmation or the redaction the reply is withheld (or, failing open, let through
    /// with a warning), as when policy is unreachable.
    pub(crate) async fn redact(
        &self,
        pending: Option<PendingAudit>,
        text: &str,
    ) -> Result<Option<String>, RouteError> {
        let Some(PendingAudit {
            requests,
            mut progress,
        }) = pending
        else {
            return Ok(None);
        };
        // The whole reply as the last piece: policy redacts and releases it at once and ends
        // the stream, without waiting for our side to close.
        let sent = requests
            .send(GateRequest {
                request: Some(gate_request::Request::LastReply(text.to_owned())),
            })
            .await;
        drop(requests);
        let mut committed = false;
        let mut redacted = String::new();
        // A send that fails means policy has already ended the stream, usually with an error
        // (its audit write failed): read on, so the refusal names policy's reason.
        let problem = loop {
            match next_message(&mut progress).await {
                Ok(Some(Progress::Committed(_))) => committed = true,
                Ok(Some(Progress::Redacted(piece))) => redacted.push_str(&piece.text),
                Ok(Some(Progress::Answer(_))) => {
                    break "policy answered twice on one gate stream".to_owned();
                }
                Ok(None) if sent.is_err() => {
                    break "policy closed the gate stream before the reply".to_owned();
                }
                Ok(None) if committed => return Ok(Some(redacted)),
                Ok(None) => break "policy ended the gate stream without committing".to_owned(),
                Err(problem) => break problem,
            }
        };
        let refusal = if committed {
            "cannot redact the reply, so it is withheld"
        } else {
            "cannot confirm the prompt's audit records, so the reply is withheld"
        };
        self.unreachable(&format!("the gate stream: {problem}"), refusal)
            .map_or(Ok(None), Err)
    }

    /// The redaction of a passed prompt's streamed reply, once policy has confirmed the prompt's
    /// audit records; `None` when the reply passes as it is. Without the confirmation the
    /// reply is withheld (or, failing open, let through with a warning).
    pub(crate) async fn confirm(
        &self,
        pending: Option<PendingAudit>,
    ) -> Result<Option<Redaction>, RouteError> {
        let Some(PendingAudit {
            requests,
            mut progress,
        }) = pending
        else {
            return Ok(None);
        };
        let problem = match next_progress(&mut progress).await {
            Ok(Progress::Committed(_)) => {
                return Ok(Some(Redaction {
                    input: requests,
                    output: *progress,
                }));
            }
            Ok(_) => {
                "policy sent reply text before confirming the prompt's audit records".to_owned()
            }
            Err(problem) => format!("the prompt's audit records: {problem}"),
        };
        self.unreachable(
            &problem,
            "cannot confirm the prompt's audit records, so the reply is withheld",
        )
        .map_or(Ok(None), Err)
    }
}

/// The text of every message, in order, one per paragraph.
fn prompt_text(call: &ChatCall) -> String {
    call.fields
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .filter_map(|message| match message.get("content") {
                    Some(Value::String(text)) => Some(text.clone()),
                    Some(Value::Array(parts)) => Some(
                        parts
                            .iter()
                            .filter_map(|part| part.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n\n")
        })
        .unwrap_or_default()
}

/// `relayed` with its text passed through `redaction`. Text becomes chunks of redacted text in
/// the shape of the provider's first text chunk; chunks that end the answer or carry usage
/// wait until policy has released all the text; `Finished` or `Failed` come last. A consumer
/// that goes away stops the relay, which frees the provider's slot.
pub(crate) fn redact_stream(
    relayed: impl Stream<Item = StreamItem> + Send + 'static,
    redaction: Redaction,
) -> impl Stream<Item = StreamItem> + Send {
    let (output, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let Redaction {
            input,
            output: mut redacted,
        } = redaction;
        let mut input = Some(input);
        let mut relayed = std::pin::pin!(relayed);
        let mut template: Option<StreamChunk> = None;
        let mut held = Vec::new();
        let mut relaying = true;
        loop {
            tokio::select! {
                item = relayed.next(), if relaying => match item {
                    Some(StreamItem::Chunk(chunk)) => {
                        if !chunk.delta.is_empty() {
                            template.get_or_insert_with(|| chunk.clone());
                            let piece = GateRequest {
                                request: Some(gate_request::Request::Reply(chunk.delta.clone())),
                            };
                            let sent = match &input {
                                Some(sender) => sender.send(piece).await.is_ok(),
                                None => false,
                            };
                            if !sent {
                                let _ = output.send(StreamItem::Failed("the policy redaction stream closed early; the answer is incomplete".to_owned())).await;
                                return;
                            }
                        }
                        if chunk.finish_reason.is_some() || chunk.usage.is_some() {
                            held.push(StreamItem::Chunk(without_text(chunk)));
                        } else if chunk.delta.is_empty() && template.is_none()
                            && output.send(StreamItem::Chunk(chunk)).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(end) => {
                        held.push(end);
                        input = None;
                        relaying = false;
                    }
                    None => {
                        input = None;
                        relaying = false;
                    }
                },
                piece = redacted.next() => match piece {
                    Some(Ok(GateProgress { progress: Some(Progress::Redacted(piece)) })) => {
                        if let Some(template) = &template
                            && !piece.text.is_empty()
                            && output.send(StreamItem::Chunk(with_text(template, piece.text))).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Ok(_)) => {
                        let _ = output.send(StreamItem::Failed("policy sent something other than redacted text; the answer is incomplete".to_owned())).await;
                        return;
                    }
                    Some(Err(status)) => {
                        let _ = output.send(StreamItem::Failed(format!("policy failed while redacting ({}); the answer is incomplete", status.message()))).await;
                        return;
                    }
                    None => {
                        if relaying {
                            let _ = output.send(StreamItem::Failed("policy ended the redaction before the answer ended; the answer is incomplete".to_owned())).await;
                            return;
                        }
                        for item in held {
                            if output.send(item).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                },
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// A chunk like `template` carrying `text` and nothing else.
fn with_text(template: &StreamChunk, text: String) -> StreamChunk {
    let mut body = template.body.clone();
    if let Some(choice) = body.pointer_mut("/choices/0") {
        choice["delta"] = serde_json::json!({ "content": text });
        choice["finish_reason"] = Value::Null;
    }
    if let Some(object) = body.as_object_mut() {
        object.remove("usage");
    }
    StreamChunk {
        body,
        delta: text,
        finish_reason: None,
        usage: None,
    }
}

/// `chunk` without its text (which went through redaction).
fn without_text(mut chunk: StreamChunk) -> StreamChunk {
    if !chunk.delta.is_empty() {
        if let Some(delta) = chunk.body.pointer_mut("/choices/0/delta") {
            *delta = serde_json::json!({});
        }
        chunk.delta.clear();
    }
    chunk
}
