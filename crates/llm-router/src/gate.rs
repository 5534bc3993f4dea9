//! The router's policy gate: every prompt is screened by synos-policy before any provider is
//! called, and every reply redacted before it leaves the router, on both front ends, whole and
//! streamed (policy redacts a stream as it comes, so a secret split across chunks is still
//! found), all on one Gate stream per request. A blocked prompt is refused; when policy cannot
//! be reached (a transport failure: no connection, a broken one, no answer in time) the
//! configured stance applies (refuse by default; a request let through unscreened is not
//! redacted either). An error policy answers with itself (its rate limit, a request it finds
//! malformed, its audit log unwritable) is a refusal whatever the stance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _, TryFutureExt as _};
use serde_json::{Map, Value};
use synos_proto::policy::v1::gate_progress::Progress;
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{
    AuthorizeRequest, Decision, GateProgress, GateRequest, ScreenInputRequest, ScreenPromptRequest,
    Verdict, gate_request,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

use synos_common::error::ErrorKind;

use crate::config::{GateMode, PolicyGateConfig, Unreachable};
use crate::engine::{ChatCall, RouteError, StreamItem};
use crate::released;
use crate::upstream::StreamChunk;

/// How long the gate waits for policy to accept a connection or answer.
const POLICY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why policy gave no usable answer.
#[derive(Debug)]
enum PolicyTrouble {
    /// The transport failed: no connection, a broken one, or no answer in time. Only this is
    /// "unreachable", where the configured stance applies.
    Unreachable(String),
    /// Policy answered, with an error of its own or something the gate cannot use: a refusal,
    /// whatever the stance.
    Refused(tonic::Status),
}

impl PolicyTrouble {
    /// A status from a call to policy: a transport failure carries its cause as the status's
    /// source (tonic sets it for connection, HTTP/2 and I/O errors); a status policy sent has
    /// none.
    fn of(status: tonic::Status) -> Self {
        if std::error::Error::source(&status).is_some() {
            Self::Unreachable(status.message().to_owned())
        } else {
            Self::Refused(status)
        }
    }

    /// Policy answered something the gate cannot use.
    fn malformed(problem: &str) -> Self {
        Self::Refused(tonic::Status::internal(problem.to_owned()))
    }
}

/// A refusal by policy as the caller's error, saying what it stopped (`what`).
fn refused(status: &tonic::Status, what: &str) -> RouteError {
    let kind = match status.code() {
        tonic::Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorKind::InvalidArgument,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unavailable,
    };
    RouteError::PolicyRefused {
        kind,
        message: format!("{what}: synos-policy refused: {}", status.message()),
    }
}

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
    /// screens every text of its request a model will read ([`prompt_text`]), in one round
    /// trip whose two audit records share one commit.
    pub(crate) async fn screen(&self, call: &ChatCall) -> Result<Screening, RouteError> {
        self.screen_text(&call.principal, &call.route, prompt_text(&call.fields))
            .await
    }

    /// [`Gate::screen`] for any `text` bound for `route` on `principal`'s behalf (a chat's
    /// prompt, the inputs of an embedding): the same Cedar check, screening and audit.
    pub(crate) async fn screen_text(
        &self,
        principal: &str,
        route: &str,
        text: String,
    ) -> Result<Screening, RouteError> {
        if !self.active() {
            return Ok(Screening::Off);
        }
        let answers = match self.client().await {
            Err(problem) => Err(PolicyTrouble::Unreachable(problem)),
            Ok(mut client) => {
                let (requests, receiver) = mpsc::channel(64);
                let prompt = GateRequest {
                    request: Some(gate_request::Request::Prompt(ScreenPromptRequest {
                        authorization: Some(AuthorizeRequest {
                            principal: principal.to_owned(),
                            action: format!("llm.route:{route}"),
                            resource: String::new(),
                        }),
                        screening: Some(ScreenInputRequest {
                            text,
                            principal: principal.to_owned(),
                            resource: format!("Route::{route:?}"),
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
                    _ => Err(PolicyTrouble::malformed(
                        "policy's Gate stream did not start with its answer",
                    )),
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
                    _ => Err(PolicyTrouble::malformed(
                        "policy's answer lacks its decision or its screening",
                    )),
                }
            }),
        };
        if !matches!(answers, Err(PolicyTrouble::Unreachable(_))) {
            self.set_unreachable(None);
        }
        match answers {
            Ok((authorized, screened, requests, progress)) => {
                if authorized.decision() != Decision::Allow {
                    tracing::warn!(%route, %principal, "route refused by policy");
                    return Err(RouteError::Forbidden(format!(
                        "policy does not allow {principal} to use route {route:?}{}",
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
                    tracing::warn!(%route, %principal, score = screened.score, rules = %rules.join(","), "prompt blocked by policy");
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
            Err(PolicyTrouble::Refused(status)) => {
                tracing::warn!(%route, %principal, code = ?status.code(), reason = %status.message(), "policy refused to screen the prompt");
                Err(refused(
                    &status,
                    "the prompt was not screened, so it is refused",
                ))
            }
            Err(PolicyTrouble::Unreachable(problem)) => {
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
        match ask_policy(client.authorize(request)).await {
            Ok(answer) => Ok(answer.decision() == Decision::Allow),
            Err(PolicyTrouble::Unreachable(problem)) => {
                self.forget_connection();
                Err(format!("policy is unreachable: {problem}"))
            }
            Err(PolicyTrouble::Refused(status)) => {
                Err(format!("policy did not decide: {}", status.message()))
            }
        }
    }
}

/// The next message of a Gate stream within [`POLICY_TIMEOUT`], `None` at its end, or why
/// there is none.
async fn next_message(
    progress: &mut Streaming<GateProgress>,
) -> Result<Option<Progress>, PolicyTrouble> {
    match tokio::time::timeout(POLICY_TIMEOUT, progress.message()).await {
        Err(_) => Err(PolicyTrouble::Unreachable(format!(
            "no answer within {} s",
            POLICY_TIMEOUT.as_secs()
        ))),
        Ok(Err(status)) => Err(PolicyTrouble::of(status)),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(GateProgress { progress: None }))) => {
            Err(PolicyTrouble::malformed("policy sent an empty message"))
        }
        Ok(Ok(Some(GateProgress {
            progress: Some(progress),
        }))) => Ok(Some(progress)),
    }
}

/// The next message of a Gate stream within [`POLICY_TIMEOUT`], or why there is none.
async fn next_progress(progress: &mut Streaming<GateProgress>) -> Result<Progress, PolicyTrouble> {
    next_message(progress)
        .await?
        .ok_or_else(|| PolicyTrouble::malformed("policy ended its answer early"))
}

/// One call to policy within [`POLICY_TIMEOUT`]; its answer, or why there is none.
async fn ask_policy<Answer>(
    call: impl Future<Output = Result<tonic::Response<Answer>, tonic::Status>>,
) -> Result<Answer, PolicyTrouble> {
    match tokio::time::timeout(POLICY_TIMEOUT, call).await {
        Err(_) => Err(PolicyTrouble::Unreachable(format!(
            "no answer within {} s",
            POLICY_TIMEOUT.as_secs()
        ))),
        Ok(Err(status)) => Err(PolicyTrouble::of(status)),
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
        let trouble = loop {
            match next_message(&mut progress).await {
                Ok(Some(Progress::Committed(_))) => committed = true,
                Ok(Some(Progress::Redacted(piece))) => redacted.push_str(&piece.text),
                Ok(Some(Progress::Answer(_))) => {
                    break PolicyTrouble::malformed("policy answered twice on one gate stream");
                }
                Ok(None) if sent.is_err() => {
                    break PolicyTrouble::malformed(
                        "policy closed the gate stream before the reply",
                    );
                }
                Ok(None) if committed => return Ok(Some(redacted)),
                Ok(None) => {
                    break PolicyTrouble::malformed(
                        "policy ended the gate stream without committing",
                    );
                }
                Err(trouble) => break trouble,
            }
        };
        let refusal = if committed {
            "cannot redact the reply, so it is withheld"
        } else {
            "cannot confirm the prompt's audit records, so the reply is withheld"
        };
        match trouble {
            PolicyTrouble::Refused(status) => Err(refused(&status, refusal)),
            PolicyTrouble::Unreachable(problem) => self
                .unreachable(&format!("the gate stream: {problem}"), refusal)
                .map_or(Ok(None), Err),
        }
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
        let refusal = "cannot confirm the prompt's audit records, so the reply is withheld";
        match next_progress(&mut progress).await {
            Ok(Progress::Committed(_)) => Ok(Some(Redaction {
                input: requests,
                output: *progress,
            })),
            Ok(_) => Err(refused(
                &tonic::Status::internal(
                    "policy sent reply text before confirming the prompt's audit records",
                ),
                refusal,
            )),
            Err(PolicyTrouble::Refused(status)) => Err(refused(&status, refusal)),
            Err(PolicyTrouble::Unreachable(problem)) => self
                .unreachable(&format!("the prompt's audit records: {problem}"), refusal)
                .map_or(Ok(None), Err),
        }
    }
}

/// Every text of a chat request that a model will read, in order, one per paragraph: each
/// message's content (every string of every content part, whatever its type), its name and
/// the arguments of tool calls it carries; each tool's name, description and parameter schema
/// (descriptions hide in it); the schema of `response_format`. Only what says how the request
/// is shaped is left out: roles, `type` tags and ids.
fn prompt_text(fields: &Map<String, Value>) -> String {
    let mut texts = Vec::new();
    for key in ["messages", "tools", "functions", "response_format"] {
        if let Some(value) = fields.get(key) {
            string_leaves(value, &mut texts);
        }
    }
    texts.join("\n\n")
}

/// Keys whose string values shape a request rather than say anything to the model (roles,
/// `type` tags, ids), or carry inline media (`input_audio.data`) that is no text to screen.
const SKIPPED_KEYS: [&str; 6] = ["role", "type", "id", "tool_call_id", "detail", "data"];

/// Appends every string in `value` (depth first, in order) to `texts`, skipping
/// [`SKIPPED_KEYS`] and inline media (`data:` URLs).
fn string_leaves(value: &Value, texts: &mut Vec<String>) {
    match value {
        Value::String(text) if !text.is_empty() && !text.starts_with("data:") => {
            texts.push(text.clone());
        }
        Value::Array(items) => {
            for item in items {
                string_leaves(item, texts);
            }
        }
        Value::Object(object) => {
            for (key, item) in object {
                if !(SKIPPED_KEYS.contains(&key.as_str()) && item.is_string()) {
                    string_leaves(item, texts);
                }
            }
        }
        _ => {}
    }
}

/// `relayed` with every text passed through `redaction`. Choice 0's content streams: it
/// becomes chunks of redacted text in the allow-listed shape of the provider's first chunk.
/// Every other text (other choices' content, reasoning, refusals, tool calls' arguments, which
/// arrive in fragments a secret can be split across) is held back and, once the content is
/// through, goes to policy on the same stream after a [`released::SEPARATOR`]; it comes out as
/// one chunk per choice, whole tool calls included. Chunks that end the answer or carry usage
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
        let mut shell: Option<Value> = None;
        let mut streamed_text = false;
        let mut held_back = HeldBack::default();
        let mut held = Vec::new();
        // After the separator: the held-back texts, redacted.
        let mut extras: Option<String> = None;
        let mut relaying = true;
        let fail =
            |message: &str| StreamItem::Failed(format!("{message}; the answer is incomplete"));
        loop {
            tokio::select! {
                item = relayed.next(), if relaying => match item {
                    Some(StreamItem::Chunk(chunk)) => {
                        shell.get_or_insert_with(|| released::chunk_shell(&chunk.body));
                        let streamed = held_back.take(&chunk.body);
                        if !streamed.is_empty() {
                            streamed_text = true;
                            let piece = GateRequest {
                                request: Some(gate_request::Request::Reply(
                                    streamed.replace(released::SEPARATOR, "\u{fffd}"),
                                )),
                            };
                            let sent = match &input {
                                Some(sender) => sender.send(piece).await.is_ok(),
                                None => false,
                            };
                            if !sent {
                                let _ = output.send(fail("the policy redaction stream closed early")).await;
                                return;
                            }
                        }
                        if chunk.finish_reason.is_some() || chunk.usage.is_some() {
                            held.push(StreamItem::Chunk(stripped(&chunk)));
                        } else if !streamed_text && held_back.is_empty()
                            && output.send(StreamItem::Chunk(stripped(&chunk))).await.is_err()
                        {
                            return;
                        }
                    }
                    end => {
                        if let Some(end) = end {
                            held.push(end);
                        }
                        relaying = false;
                        if let Some(sender) = input.take()
                            && !held_back.is_empty()
                        {
                            let rest = format!(
                                "{}{}",
                                released::SEPARATOR,
                                released::join(&held_back.texts())
                            );
                            let piece = GateRequest {
                                request: Some(gate_request::Request::Reply(rest)),
                            };
                            if sender.send(piece).await.is_err() {
                                let _ = output.send(fail("the policy redaction stream closed early")).await;
                                return;
                            }
                        }
                    }
                },
                piece = redacted.next() => match piece {
                    Some(Ok(GateProgress { progress: Some(Progress::Redacted(piece)) })) => {
                        let mut text = piece.text;
                        if let Some(after) = extras.as_mut() {
                            after.push_str(&text);
                            text = String::new();
                        } else if let Some(at) = text.find(released::SEPARATOR) {
                            extras = Some(text[at + released::SEPARATOR.len_utf8()..].to_owned());
                            text.truncate(at);
                        }
                        if let Some(shell) = &shell
                            && !text.is_empty()
                            && output.send(StreamItem::Chunk(with_text(shell, text))).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Ok(_)) => {
                        let _ = output.send(fail("policy sent something other than redacted text")).await;
                        return;
                    }
                    Some(Err(status)) => {
                        let _ = output.send(fail(&format!("policy failed while redacting ({})", status.message()))).await;
                        return;
                    }
                    None => {
                        if relaying {
                            let _ = output.send(fail("policy ended the redaction before the answer ended")).await;
                            return;
                        }
                        if !held_back.is_empty() {
                            let count = held_back.texts().len();
                            let Some(texts) = extras.as_deref().and_then(|extras| released::split(extras, count)) else {
                                let _ = output.send(fail("redaction changed the shape of the held-back texts, so they are withheld")).await;
                                return;
                            };
                            let shell = shell.clone().unwrap_or_else(|| released::chunk_shell(&Value::Null));
                            held.splice(0..0, held_back.chunks(&shell, texts).into_iter().map(StreamItem::Chunk));
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

/// The texts of a streamed reply that wait for its end (see [`redact_stream`]), per choice.
#[derive(Debug, Default)]
struct HeldBack {
    choices: BTreeMap<u64, HeldChoice>,
}

#[derive(Debug, Default)]
struct HeldChoice {
    content: String,
    reasoning: String,
    refusal: String,
    tools: BTreeMap<u64, HeldTool>,
}

#[derive(Debug, Default)]
struct HeldTool {
    id: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    arguments: String,
}

impl HeldBack {
    /// Takes what the provider's chunk `body` carries besides choice 0's content, and returns
    /// that content, which streams.
    fn take(&mut self, body: &Value) -> String {
        let mut streamed = String::new();
        let Some(choices) = body.get("choices").and_then(Value::as_array) else {
            return streamed;
        };
        for (position, choice) in choices.iter().enumerate() {
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let Some(delta) = choice.get("delta") else {
                continue;
            };
            let text = |key: &str| delta.get(key).and_then(Value::as_str).unwrap_or_default();
            if index == 0 {
                streamed.push_str(text("content"));
            }
            let has = |key: &str| !text(key).is_empty();
            let tool_calls = delta.get("tool_calls").and_then(Value::as_array);
            if !(index != 0 && has("content")
                || has("reasoning_content")
                || has("reasoning")
                || has("refusal")
                || tool_calls.is_some_and(|calls| !calls.is_empty()))
            {
                continue;
            }
            let held = self.choices.entry(index).or_default();
            if index != 0 {
                held.content.push_str(text("content"));
            }
            held.reasoning.push_str(text("reasoning_content"));
            held.reasoning.push_str(text("reasoning"));
            held.refusal.push_str(text("refusal"));
            for (position, call) in tool_calls.into_iter().flatten().enumerate() {
                let tool_index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(position as u64);
                let tool = held.tools.entry(tool_index).or_default();
                let string =
                    |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
                if let Some(id) = string(call.get("id")) {
                    tool.id = Some(id);
                }
                if let Some(kind) = string(call.get("type")) {
                    tool.kind = Some(kind);
                }
                if let Some(function) = call.get("function") {
                    if let Some(name) = string(function.get("name")) {
                        tool.name.get_or_insert_with(String::new).push_str(&name);
                    }
                    if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                        tool.arguments.push_str(arguments);
                    }
                }
            }
        }
        streamed
    }

    fn is_empty(&self) -> bool {
        self.choices.is_empty()
    }

    /// The texts in a fixed order: per choice its content, reasoning and refusal, then each
    /// tool call's arguments.
    fn texts(&self) -> Vec<String> {
        let mut texts = Vec::new();
        for held in self.choices.values() {
            texts.extend([
                held.content.clone(),
                held.reasoning.clone(),
                held.refusal.clone(),
            ]);
            texts.extend(held.tools.values().map(|tool| tool.arguments.clone()));
        }
        texts
    }

    /// One chunk per choice in the shape of `shell`, with `texts` (as [`HeldBack::texts`]
    /// orders them, redacted) in place.
    fn chunks(self, shell: &Value, texts: Vec<String>) -> Vec<StreamChunk> {
        let mut texts = texts.into_iter();
        let mut chunks = Vec::new();
        for (index, held) in self.choices {
            let mut delta = Map::new();
            for key in ["content", "reasoning_content", "refusal"] {
                let text = texts.next().unwrap_or_default();
                if !text.is_empty() {
                    delta.insert(key.to_owned(), Value::String(text));
                }
            }
            let calls: Vec<Value> = held
                .tools
                .into_iter()
                .map(|(tool_index, tool)| {
                    serde_json::json!({
                        "index": tool_index,
                        "id": tool.id,
                        "type": tool.kind.unwrap_or_else(|| "function".to_owned()),
                        "function": { "name": tool.name, "arguments": texts.next().unwrap_or_default() },
                    })
                })
                .collect();
            if !calls.is_empty() {
                delta.insert("tool_calls".to_owned(), Value::Array(calls));
            }
            let mut body = shell.clone();
            if let Some(choice) = body.pointer_mut("/choices/0") {
                choice["index"] = Value::from(index);
                choice["delta"] = Value::Object(delta);
            }
            let content = body
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .filter(|_| index == 0)
                .unwrap_or_default()
                .to_owned();
            chunks.push(StreamChunk {
                body,
                delta: content,
                finish_reason: None,
                usage: None,
            });
        }
        chunks
    }
}

/// A chunk of redacted `text` for choice 0, in the shape of `shell`.
fn with_text(shell: &Value, text: String) -> StreamChunk {
    let mut body = shell.clone();
    if let Some(choice) = body.pointer_mut("/choices/0") {
        choice["delta"] = serde_json::json!({ "content": text });
    }
    StreamChunk {
        body,
        delta: text,
        finish_reason: None,
        usage: None,
    }
}

/// `chunk` with none of its texts (they go through redaction): the allow-listed fields, each
/// choice's index, role and finish reason, and the usage.
fn stripped(chunk: &StreamChunk) -> StreamChunk {
    let mut released = released::chunk(&chunk.body);
    let count = released.texts.len();
    released.texts.clear();
    let mut body = released.fill(vec![String::new(); count]);
    if let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                delta.retain(|key, _| key == "role");
            }
            if let Some(choice) = choice.as_object_mut() {
                choice.remove("logprobs");
            }
        }
    }
    StreamChunk {
        body,
        delta: String::new(),
        finish_reason: chunk.finish_reason.clone(),
        usage: chunk.usage,
    }
}

/// `chunk` as it leaves the router when nothing is redacted (the gate is off): only its
/// allow-listed fields.
pub(crate) fn allow_listed(chunk: StreamChunk) -> StreamChunk {
    let released = released::chunk(&chunk.body);
    let texts = released.texts.clone();
    StreamChunk {
        body: released.fill(texts),
        ..chunk
    }
}
