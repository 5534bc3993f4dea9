//! Calls to one provider: chat completions (whole or streamed over SSE) and embeddings from an
//! OpenAI-compatible HTTP API, with every way a reply can go wrong turned into a classified
//! [`Failure`]. [`Upstream`] puts the local model (`local.rs`) behind the same face.
//!
//! Timeouts: `connect` is the HTTP client's; `first_token` bounds everything up to the first
//! generated text (or, unstreamed, the response headers); `idle` bounds each silence between
//! chunks; `total` bounds the whole request. A reply is read with a size limit, so a provider
//! cannot exhaust the router's memory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};

use crate::config::{ProviderConfig, Timeouts};
use crate::credentials::Secret;
use crate::local::{LocalChunks, LocalModel};

/// How a provider failed one attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// HTTP 429.
    RateLimited {
        /// From `Retry-After`, if it said.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx.
    ServerError {
        /// The status code.
        status: u16,
        /// From `Retry-After`, if it said.
        retry_after: Option<Duration>,
    },
    /// A timeout; the text names which.
    Timeout(String),
    /// Connecting failed, or the connection broke.
    Connection(String),
    /// The reply is not a valid OpenAI-compatible reply.
    BadReply(String),
    /// HTTP 4xx other than 429: the provider refused this request.
    Rejected {
        /// The status code.
        status: u16,
        /// The provider's message, shortened.
        message: String,
    },
}

impl Failure {
    /// One line for the attempt chain and logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::RateLimited { retry_after } => match retry_after {
                Some(after) => format!(
                    "HTTP 429, Retry-After {}",
                    crate::provider_state::seconds(*after)
                ),
                None => "HTTP 429".to_owned(),
            },
            Self::ServerError {
                status,
                retry_after,
            } => match retry_after {
                Some(after) => format!(
                    "HTTP {status}, Retry-After {}",
                    crate::provider_state::seconds(*after)
                ),
                None => format!("HTTP {status}"),
            },
            Self::Timeout(what) | Self::Connection(what) | Self::BadReply(what) => what.clone(),
            Self::Rejected { status, message } => format!("HTTP {status}: {message}"),
        }
    }

    /// Whether it is the provider's fault, so it counts against its breaker.
    pub(crate) fn counts_against_provider(&self) -> bool {
        match self {
            Self::RateLimited { .. } => false,
            // A wrong credential is a broken provider configuration, not a bad request.
            Self::Rejected { status, .. } => matches!(status, 401 | 403),
            Self::ServerError { .. }
            | Self::Timeout(_)
            | Self::Connection(_)
            | Self::BadReply(_) => true,
        }
    }

    /// How long to cool the provider: 429 and 5xx cool it, for `Retry-After` when given.
    pub(crate) fn cooldown(&self, default: Duration) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::ServerError { retry_after, .. } => {
                Some(retry_after.unwrap_or(default))
            }
            _ => None,
        }
    }

    /// Whether trying the same entry again could help (after a backoff).
    pub(crate) fn worth_retrying(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Connection(_) | Self::BadReply(_)
        )
    }
}

/// A whole chat completion.
#[derive(Debug, Clone)]
pub(crate) struct ChatReply {
    /// The provider's reply as it sent it.
    pub(crate) body: Value,
    /// `choices[0].message.content`.
    pub(crate) content: String,
    /// `choices[0].finish_reason`.
    pub(crate) finish_reason: String,
    /// `usage` (prompt, completion tokens), when reported.
    pub(crate) usage: Option<(u64, u64)>,
}

/// One streamed chunk (`data:` event) of a chat completion.
#[derive(Debug, Clone)]
pub(crate) struct StreamChunk {
    /// The chunk as the provider sent it.
    pub(crate) body: Value,
    /// Text it adds.
    pub(crate) delta: String,
    /// Set on the last chunk of a choice.
    pub(crate) finish_reason: Option<String>,
    /// Set on the usage chunk.
    pub(crate) usage: Option<(u64, u64)>,
}

impl StreamChunk {
    /// Whether it carries anything for the client (text or the end of the answer).
    pub(crate) fn has_output(&self) -> bool {
        !self.delta.is_empty() || self.finish_reason.is_some()
    }
}

/// A streamed reply whose first output has arrived.
#[derive(Debug)]
pub(crate) struct OpenStream {
    /// Chunks up to and including the first with output.
    pub(crate) first: Vec<StreamChunk>,
    /// The rest.
    pub(crate) rest: ChunkReader,
    /// When the first output arrived, counted from the request.
    pub(crate) time_to_first_token: Duration,
}

/// How the router reaches one provider: over HTTP, or in its own process.
#[derive(Debug, Clone)]
pub(crate) enum Upstream {
    /// An OpenAI-compatible HTTP API (boxed: a client is far larger than the local handle).
    Http(Box<HttpProvider>),
    /// The in-process local model.
    Local(Arc<LocalModel>),
}

impl Upstream {
    /// A whole chat completion for `body` (which already names the model).
    pub(crate) async fn chat(&self, body: &Value) -> Result<ChatReply, Failure> {
        match self {
            Self::Http(http) => http.chat(body).await,
            Self::Local(local) => local.chat(body).await,
        }
    }

    /// Starts a streamed chat completion and waits for its first output.
    pub(crate) async fn chat_stream(&self, body: &Value) -> Result<OpenStream, Failure> {
        match self {
            Self::Http(http) => http.chat_stream(body).await,
            Self::Local(local) => local.chat_stream(body).await,
        }
    }

    /// Embeddings for `body`; one vector per input.
    pub(crate) async fn embed(
        &self,
        body: &Value,
        inputs: usize,
    ) -> Result<(Vec<Vec<f32>>, Option<u64>), Failure> {
        match self {
            Self::Http(http) => http.embed(body, inputs).await,
            Self::Local(_) => Err(Failure::Rejected {
                status: 400,
                message: "a local provider serves chat completions, not embeddings".to_owned(),
            }),
        }
    }
}

/// One provider's HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct HttpProvider {
    client: reqwest::Client,
    chat_url: Url,
    embeddings_url: Url,
    credential: Option<Secret>,
    timeouts: Timeouts,
    max_reply_bytes: usize,
}

impl HttpProvider {
    /// A client for `provider` (its URL was validated with the configuration).
    pub(crate) fn new(
        provider: &ProviderConfig,
        credential: Option<Secret>,
    ) -> Result<Self, String> {
        let mut base = provider.base_url.clone();
        if !base.ends_with('/') {
            base.push('/');
        }
        let base_url = Url::parse(&base).map_err(|error| format!("base_url: {error}"))?;
        let endpoint = |path: &str| {
            base_url
                .join(path)
                .map_err(|error| format!("base_url: {error}"))
        };
        let (chat_url, embeddings_url) = (endpoint("chat/completions")?, endpoint("embeddings")?);
        let client = reqwest::Client::builder()
            .connect_timeout(provider.timeouts.connect())
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(provider.max_concurrency as usize)
            .user_agent(concat!("synos-llm-router/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
        Ok(Self {
            client,
            chat_url,
            embeddings_url,
            credential,
            timeouts: provider.timeouts,
            max_reply_bytes: provider.max_reply_bytes,
        })
    }

    async fn send(
        &self,
        url: &Url,
        body: &Value,
        deadline: Instant,
    ) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(credential) = &self.credential {
            request = request.bearer_auth(credential.expose());
        }
        let response = match tokio::time::timeout_at(deadline.into(), request.send()).await {
            Err(_) => {
                return Err(Failure::Timeout(format!(
                    "no response within the first-token timeout of {}",
                    crate::provider_state::seconds(self.timeouts.first_token())
                )));
            }
            Ok(Err(error)) => return Err(classify_send_error(&error)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let total_deadline = Instant::now() + self.timeouts.idle();
        let mut reader = BodyReader::new(response, 64 * 1024, self.timeouts.idle());
        // The body is only for the message; a broken one does not change the classification.
        let text = reader.read_all(total_deadline).await.unwrap_or_default();
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => Failure::RateLimited { retry_after },
            status if status.is_server_error() => Failure::ServerError {
                status: status.as_u16(),
                retry_after,
            },
            status if status.is_client_error() => Failure::Rejected {
                status: status.as_u16(),
                message: error_message(&text),
            },
            status => Failure::BadReply(format!("unexpected HTTP status {}", status.as_u16())),
        })
    }

    /// A whole chat completion for `body` (which already names the model).
    pub(crate) async fn chat(&self, body: &Value) -> Result<ChatReply, Failure> {
        let started = Instant::now();
        let total = started + self.timeouts.total();
        let headers_deadline = total.min(started + self.timeouts.first_token());
        let response = self.send(&self.chat_url, body, headers_deadline).await?;
        expect_content_type(response.headers(), "application/json")?;
        let mut reader = BodyReader::new(response, self.max_reply_bytes, self.timeouts.idle());
        let text = reader.read_all(total).await?;
        let body: Value = serde_json::from_slice(&text)
            .map_err(|error| Failure::BadReply(format!("malformed JSON reply: {error}")))?;
        let choice = body
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
            .ok_or_else(|| Failure::BadReply("reply has no choices".to_owned()))?;
        let message = choice
            .get("message")
            .and_then(Value::as_object)
            .ok_or_else(|| Failure::BadReply("reply's first choice has no message".to_owned()))?;
        let content = match message.get("content") {
            Some(Value::String(content)) => content.clone(),
            // Tool calls come with null content.
            None | Some(Value::Null) if message.contains_key("tool_calls") => String::new(),
            _ => {
                return Err(Failure::BadReply(
                    "reply's message has no text content".to_owned(),
                ));
            }
        };
        let finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("stop")
            .to_owned();
        let usage = usage_of(&body);
        Ok(ChatReply {
            body,
            content,
            finish_reason,
            usage,
        })
    }

    /// Starts a streamed chat completion and waits for its first output.
    pub(crate) async fn chat_stream(&self, body: &Value) -> Result<OpenStream, Failure> {
        let started = Instant::now();
        let total = started + self.timeouts.total();
        let first_token_deadline = total.min(started + self.timeouts.first_token());
        let response = self
            .send(&self.chat_url, body, first_token_deadline)
            .await?;
        expect_content_type(response.headers(), "text/event-stream")?;
        let mut rest = EventReader {
            body: BodyReader::new(response, self.max_reply_bytes, self.timeouts.idle()),
            buffer: Vec::new(),
            deadline: total,
            finished: false,
        };
        let mut first = Vec::new();
        loop {
            let next = tokio::time::timeout_at(first_token_deadline.into(), rest.next()).await;
            match next {
                Err(_) => {
                    return Err(Failure::Timeout(format!(
                        "no token within the first-token timeout of {}",
                        crate::provider_state::seconds(self.timeouts.first_token())
                    )));
                }
                Ok(Err(failure)) => return Err(failure),
                Ok(Ok(None)) => {
                    return Err(Failure::BadReply(
                        "stream ended before any output".to_owned(),
                    ));
                }
                Ok(Ok(Some(chunk))) => {
                    let has_output = chunk.has_output();
                    first.push(chunk);
                    if has_output {
                        return Ok(OpenStream {
                            first,
                            rest: ChunkReader::Http(rest),
                            time_to_first_token: started.elapsed(),
                        });
                    }
                }
            }
        }
    }

    /// Embeddings for `body` (which names the model and carries `input`); one vector per input.
    pub(crate) async fn embed(
        &self,
        body: &Value,
        inputs: usize,
    ) -> Result<(Vec<Vec<f32>>, Option<u64>), Failure> {
        let started = Instant::now();
        let total = started + self.timeouts.total();
        let response = self
            .send(
                &self.embeddings_url,
                body,
                total.min(started + self.timeouts.first_token()),
            )
            .await?;
        expect_content_type(response.headers(), "application/json")?;
        let mut reader = BodyReader::new(response, self.max_reply_bytes, self.timeouts.idle());
        let text = reader.read_all(total).await?;
        #[derive(serde::Deserialize)]
        struct Reply {
            data: Vec<Item>,
            #[serde(default)]
            usage: Option<EmbedUsage>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            embedding: Vec<f32>,
            #[serde(default)]
            index: Option<usize>,
        }
        #[derive(serde::Deserialize)]
        struct EmbedUsage {
            prompt_tokens: u64,
        }
        let reply: Reply = serde_json::from_slice(&text)
            .map_err(|error| Failure::BadReply(format!("malformed embeddings reply: {error}")))?;
        if reply.data.len() != inputs {
            return Err(Failure::BadReply(format!(
                "{} embeddings for {inputs} inputs",
                reply.data.len()
            )));
        }
        let mut vectors = vec![Vec::new(); inputs];
        for (position, item) in reply.data.into_iter().enumerate() {
            let index = item.index.unwrap_or(position);
            match vectors.get_mut(index) {
                Some(slot) if slot.is_empty() => *slot = item.embedding,
                _ => {
                    return Err(Failure::BadReply(
                        "embedding indexes are not one per input".to_owned(),
                    ));
                }
            }
        }
        if vectors.iter().any(Vec::is_empty) {
            return Err(Failure::BadReply("an embedding is empty".to_owned()));
        }
        Ok((vectors, reply.usage.map(|usage| usage.prompt_tokens)))
    }
}

fn classify_send_error(error: &reqwest::Error) -> Failure {
    // Without the URL: it is the configured base URL, and stays out of attempt details.
    let text = error_chain(error);
    if error.is_timeout() {
        Failure::Timeout(format!("connect timeout: {text}"))
    } else if error.is_connect() {
        Failure::Connection(format!("cannot connect: {text}"))
    } else {
        Failure::Connection(format!("request failed: {text}"))
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(source) = current {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&source.to_string());
        current = source.source();
    }
    if text.is_empty() {
        "connection error".to_owned()
    } else {
        text
    }
}

fn expect_content_type(headers: &HeaderMap, expected: &str) -> Result<(), Failure> {
    let found = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let essence = found.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Failure::BadReply(format!(
            "content type {:?}, expected {expected}",
            truncate(found, 60)
        )))
    }
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn usage_of(body: &Value) -> Option<(u64, u64)> {
    let usage = body.get("usage")?;
    Some((
        usage.get("prompt_tokens")?.as_u64()?,
        usage.get("completion_tokens")?.as_u64()?,
    ))
}

fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.trim().to_owned());
    truncate(&message, 200)
}

fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Reads a response body in chunks, each within the idle timeout, up to a size limit.
#[derive(Debug)]
struct BodyReader {
    response: reqwest::Response,
    limit: usize,
    idle: Duration,
    read: usize,
}

impl BodyReader {
    fn new(response: reqwest::Response, limit: usize, idle: Duration) -> Self {
        Self {
            response,
            limit,
            idle,
            read: 0,
        }
    }

    /// The next piece of the body; `None` at its end.
    async fn next(&mut self, deadline: Instant) -> Result<Option<bytes::Bytes>, Failure> {
        let now = Instant::now();
        let idle_deadline = now + self.idle;
        let (wait_until, which) = if idle_deadline < deadline {
            (idle_deadline, "idle")
        } else {
            (deadline, "total")
        };
        match tokio::time::timeout_at(wait_until.into(), self.response.chunk()).await {
            Err(_) => Err(Failure::Timeout(match which {
                "idle" => format!(
                    "no data for the idle timeout of {}",
                    crate::provider_state::seconds(self.idle)
                ),
                _ => "total timeout reached while reading the reply".to_owned(),
            })),
            Ok(Err(error)) => Err(Failure::Connection(format!(
                "connection broke while reading the reply: {}",
                error_chain(&error)
            ))),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(bytes))) => {
                self.read += bytes.len();
                if self.read > self.limit {
                    return Err(Failure::BadReply(format!(
                        "reply larger than {} bytes",
                        self.limit
                    )));
                }
                Ok(Some(bytes))
            }
        }
    }

    async fn read_all(&mut self, deadline: Instant) -> Result<Vec<u8>, Failure> {
        let mut text = Vec::new();
        while let Some(bytes) = self.next(deadline).await? {
            text.extend_from_slice(&bytes);
        }
        Ok(text)
    }
}

/// The rest of a streamed chat completion, from either kind of provider.
#[derive(Debug)]
pub(crate) enum ChunkReader {
    /// Server-sent events over HTTP.
    Http(EventReader),
    /// The local model's generation.
    Local(LocalChunks),
}

impl ChunkReader {
    /// The next chunk; `None` when the answer is complete.
    pub(crate) async fn next(&mut self) -> Result<Option<StreamChunk>, Failure> {
        match self {
            Self::Http(events) => events.next().await,
            Self::Local(chunks) => chunks.next().await,
        }
    }
}

/// Reads server-sent events from a streamed chat completion, one chunk at a time.
#[derive(Debug)]
pub(crate) struct EventReader {
    body: BodyReader,
    buffer: Vec<u8>,
    deadline: Instant,
    finished: bool,
}

impl EventReader {
    /// The next chunk; `None` after `data: [DONE]`. A stream that ends without `[DONE]` and
    /// without a finish reason is broken, not finished.
    pub(crate) async fn next(&mut self) -> Result<Option<StreamChunk>, Failure> {
        loop {
            if let Some(event) = self.take_event()? {
                let data = event.trim();
                if data == "[DONE]" {
                    return Ok(None);
                }
                let body: Value = serde_json::from_str(data).map_err(|error| {
                    Failure::BadReply(format!("malformed JSON in a stream event: {error}"))
                })?;
                if let Some(message) = body.pointer("/error/message").and_then(Value::as_str) {
                    return Err(Failure::BadReply(format!(
                        "provider reported an error mid-stream: {}",
                        truncate(message, 200)
                    )));
                }
                let chunk = parse_chunk(body)?;
                if chunk.finish_reason.is_some() {
                    self.finished = true;
                }
                return Ok(Some(chunk));
            }
            match self.body.next(self.deadline).await? {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None if self.finished => return Ok(None),
                None => {
                    return Err(Failure::Connection(
                        "stream ended without finishing (no [DONE] and no finish reason)"
                            .to_owned(),
                    ));
                }
            }
        }
    }

    /// Takes one complete event's `data` from the buffer, if there is one.
    fn take_event(&mut self) -> Result<Option<String>, Failure> {
        loop {
            let Some(end) = find_event_end(&self.buffer) else {
                if self.buffer.len() > self.body.limit {
                    return Err(Failure::BadReply("stream event too large".to_owned()));
                }
                return Ok(None);
            };
            let (event_length, separator) = end;
            let event: Vec<u8> = self.buffer.drain(..event_length + separator).collect();
            let text = std::str::from_utf8(&event[..event_length])
                .map_err(|_| Failure::BadReply("stream event is not UTF-8".to_owned()))?;
            let mut data = String::new();
            for line in text.lines() {
                if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
                // Comments (":"), "event:", "id:" and "retry:" carry nothing for chat.
            }
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
    }
}

/// Where the first event in `buffer` ends: (length, separator length). Events end with a blank
/// line: "\n\n" or "\r\n\r\n".
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|window| window == b"\n\n");
    let crlf = buffer.windows(4).position(|window| window == b"\r\n\r\n");
    match (lf, crlf) {
        (Some(lf), Some(crlf)) if crlf < lf => Some((crlf, 4)),
        (Some(lf), _) => Some((lf, 2)),
        (None, Some(crlf)) => Some((crlf, 4)),
        (None, None) => None,
    }
}

fn parse_chunk(body: Value) -> Result<StreamChunk, Failure> {
    let usage = usage_of(&body);
    let choices = match body.get("choices") {
        Some(Value::Array(choices)) => choices.as_slice(),
        None | Some(Value::Null) if usage.is_some() => &[],
        _ => {
            return Err(Failure::BadReply(
                "stream event has no choices array".to_owned(),
            ));
        }
    };
    let (delta, finish_reason) = match choices.first() {
        None => (String::new(), None),
        Some(choice) => (
            choice
                .pointer("/delta/content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
    };
    Ok(StreamChunk {
        body,
        delta,
        finish_reason,
        usage,
    })
}

/// A request body for the provider: the caller's fields, with the provider's model name.
pub(crate) fn with_model(fields: &Map<String, Value>, model: &str) -> Value {
    let mut body = fields.clone();
    body.insert("model".to_owned(), Value::String(model.to_owned()));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(90)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn events_end_at_blank_lines_of_either_kind() {
        assert_eq!(find_event_end(b"data: x\n\ndata: y"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: x\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: x\n"), None);
    }

    #[test]
    fn chunks_without_choices_are_bad_unless_they_carry_usage() {
        assert!(parse_chunk(serde_json::json!({"id": "x"})).is_err());
        let usage = parse_chunk(serde_json::json!({
            "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}
        }))
        .unwrap();
        assert_eq!(usage.usage, Some((3, 5)));
        assert!(!usage.has_output());
    }
}
