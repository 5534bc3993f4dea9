//! A stand-in LLM provider: a real OpenAI-compatible HTTP server on 127.0.0.1 whose replies
//! follow a script (429 with `Retry-After`, 5xx bursts, hangs, slow or broken streams,
//! malformed or oversized bodies, trickles), and that can be killed like a crashed process.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the stand-in does with one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers "reply from NAME" (streamed when asked), with usage.
    Ok,
    /// Answers after a delay.
    Delayed(Duration),
    /// Answers without a `usage` member.
    OkWithoutUsage,
    /// This status, with an optional `Retry-After` value.
    Status(u16, Option<String>),
    /// Accepts the connection and never sends headers.
    HangBeforeHeaders,
    /// Streams: headers and a role chunk at once, the first token after this delay.
    SlowFirstToken(Duration),
    /// Streams two tokens, then drops the connection.
    DisconnectMidStream,
    /// Streams two tokens, then sends nothing more, keeping the connection open.
    StallMidStream,
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// 200 with `text/html`.
    WrongContentType,
    /// 200 with a JSON body this large.
    Oversized(usize),
    /// Sends the reply a few bytes at a time with this pause between them.
    Trickle(Duration),
    /// 200 with exactly this body (a whole completion), whatever the request asked.
    Body(Value),
    /// Streams exactly these chunks, then `[DONE]`.
    Chunks(Vec<Value>),
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path, e.g. "/v1/chat/completions".
    pub path: String,
    /// The JSON body.
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Debug)]
struct Script {
    name: String,
    steps: Mutex<VecDeque<Behaviour>>,
    then: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
}

/// A running stand-in; killed when dropped.
#[derive(Debug)]
pub struct StandIn {
    address: SocketAddr,
    script: Arc<Script>,
    kill: CancellationToken,
}

impl StandIn {
    /// Starts a stand-in called `name` that answers `Ok` to everything ("reply from NAME",
    /// streamed a word at a time, and split further wherever NAME has a `|`).
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts it on `address` (to come back on the same port after a kill).
    pub async fn start_on(name: &str, address: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let script = Arc::new(Script {
            name: name.to_owned(),
            steps: Mutex::new(VecDeque::new()),
            then: Mutex::new(Behaviour::Ok),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(Arc::clone(&script));
        let kill = CancellationToken::new();
        let stop = kill.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let stop = stop.clone();
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    // Cancelling drops the connection mid-flight, as a crashed process would.
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = connection => {}
                    }
                });
            }
        });
        Self {
            address,
            script,
            kill,
        }
    }

    /// Its base URL, e.g. "http://127.0.0.1:41234/v1".
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// A router `[[provider]]` block for this stand-in: cheap, external, priced, with short
    /// timeouts; `extra` is added to it.
    pub fn provider_block(&self, name: &str, extra: &str) -> String {
        format!(
            r#"
[[provider]]
name = "{name}"
kind = "openai"
base_url = "{url}"
tier = "cheap"
trust = "external"
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
timeouts = {{ connect_ms = 500, first_token_ms = 2000, idle_ms = 2000, total_ms = 5000 }}
{extra}
"#,
            url = self.base_url()
        )
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The next requests get these behaviours in order, then `then` for the rest.
    pub fn script(&self, steps: impl IntoIterator<Item = Behaviour>, then: Behaviour) {
        *self.script.steps.lock().unwrap() = steps.into_iter().collect();
        *self.script.then.lock().unwrap() = then;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }

    /// How many requests it has received.
    pub fn count(&self) -> usize {
        self.script.received.lock().unwrap().len()
    }

    /// Stops listening and drops every open connection at once.
    pub fn kill(&self) {
        self.kill.cancel();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

impl Script {
    fn next(&self, path: &str, headers: &HeaderMap, body: &Value) -> Behaviour {
        self.received.lock().unwrap().push(Received {
            path: path.to_owned(),
            body: body.clone(),
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        });
        let next = self.steps.lock().unwrap().pop_front();
        next.unwrap_or_else(|| self.then.lock().unwrap().clone())
    }
}

/// "reply from NAME"; a `|` in the name marks where a streamed reply splits a word (and is
/// not part of the text), so tests can split a secret across chunks.
fn reply_text(name: &str) -> String {
    format!("reply from {}", name.replace('|', ""))
}

fn completion(name: &str, model: &str, usage: bool) -> Value {
    let mut body = json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": reply_text(name) },
            "finish_reason": "stop"
        }]
    });
    if usage {
        body["usage"] = json!({ "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18 });
    }
    body
}

fn chunk(model: &str, delta: &Value, finish: Option<&str>) -> String {
    let body = json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
    });
    format!("data: {body}\n\n")
}

fn stream_events(name: &str, model: &str) -> Vec<String> {
    let mut events = vec![chunk(model, &json!({ "role": "assistant" }), None)];
    for word in format!("reply from {name}").split_inclusive(' ') {
        for piece in word.split('|') {
            events.push(chunk(model, &json!({ "content": piece }), None));
        }
    }
    events.push(chunk(model, &json!({}), Some("stop")));
    let usage = json!({
        "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0,
        "model": model, "choices": [],
        "usage": { "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18 }
    });
    events.push(format!("data: {usage}\n\n"));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn sse(
    events: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap()
}

fn json_response(body: &Value) -> Response {
    (StatusCode::OK, axum::Json(body.clone())).into_response()
}

/// Sends `bytes` a few at a time with `pause` in between.
fn trickle(bytes: &[u8], pause: Duration, content_type: &'static str) -> Response {
    let pieces: Vec<Bytes> = bytes.chunks(8).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::unfold(pieces.into_iter(), move |mut pieces| async move {
        let piece = pieces.next()?;
        tokio::time::sleep(pause).await;
        Some((Ok::<_, Infallible>(piece), pieces))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn chat(State(script): State<Arc<Script>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let behaviour = script.next("/v1/chat/completions", &headers, &body);
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    let streamed = body["stream"].as_bool().unwrap_or(false);
    let name = script.name.clone();
    match behaviour {
        Behaviour::Ok | Behaviour::OkWithoutUsage | Behaviour::Delayed(_) => {
            if let Behaviour::Delayed(delay) = behaviour {
                // On a blocking thread, to the microsecond: tokio's timer ticks in whole
                // milliseconds, which would turn "2 ms" into 2 or 3 depending on when the
                // request came, and the benchmarks compare delays far smaller than that.
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
            }
            if streamed {
                let events = stream_events(&name, &model);
                sse(futures_util::stream::iter(
                    events.into_iter().map(|event| Ok(Bytes::from(event))),
                ))
            } else {
                json_response(&completion(
                    &name,
                    &model,
                    !matches!(behaviour, Behaviour::OkWithoutUsage),
                ))
            }
        }
        Behaviour::Status(code, retry_after) => {
            let mut response = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({ "error": { "message": format!("scripted {code}"), "type": "stand_in" } })),
            )
                .into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, value.parse().unwrap());
            }
            response
        }
        Behaviour::HangBeforeHeaders => std::future::pending().await,
        Behaviour::SlowFirstToken(delay) => {
            let events = stream_events(&name, &model);
            let stream = futures_util::stream::unfold(
                (events.into_iter(), 0_usize),
                move |(mut events, index)| async move {
                    let event = events.next()?;
                    if index == 1 {
                        tokio::time::sleep(delay).await;
                    }
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(event)),
                        (events, index + 1),
                    ))
                },
            );
            sse(stream)
        }
        Behaviour::DisconnectMidStream => {
            let events: Vec<String> = stream_events(&name, &model).into_iter().take(3).collect();
            let sent =
                futures_util::stream::iter(events.into_iter().map(|event| Ok(Bytes::from(event))));
            // The break comes after the first tokens are on the wire, not with the headers.
            let broken = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("stand-in drops the connection"))
            });
            sse(futures_util::StreamExt::chain(sent, broken))
        }
        Behaviour::StallMidStream => {
            let events: Vec<String> = stream_events(&name, &model).into_iter().take(3).collect();
            let sent =
                futures_util::stream::iter(events.into_iter().map(|event| Ok(Bytes::from(event))));
            let silence = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
            sse(futures_util::StreamExt::chain(sent, silence))
        }
        Behaviour::MalformedJson => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"choices\": [ this is not json"))
            .unwrap(),
        Behaviour::WrongContentType => Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .body(Body::from("<html><body>Bad gateway</body></html>"))
            .unwrap(),
        Behaviour::Oversized(size) => {
            let mut reply = completion(&name, &model, true);
            reply["choices"][0]["message"]["content"] = Value::String("x".repeat(size));
            json_response(&reply)
        }
        Behaviour::Body(body) => json_response(&body),
        Behaviour::Chunks(chunks) => {
            let mut events: Vec<String> = chunks
                .iter()
                .map(|chunk| format!("data: {chunk}\n\n"))
                .collect();
            events.push("data: [DONE]\n\n".to_owned());
            sse(futures_util::stream::iter(
                events.into_iter().map(|event| Ok(Bytes::from(event))),
            ))
        }
        Behaviour::Trickle(pause) => {
            if streamed {
                trickle(
                    stream_events(&name, &model).concat().as_bytes(),
                    pause,
                    "text/event-stream",
                )
            } else {
                trickle(
                    completion(&name, &model, true).to_string().as_bytes(),
                    pause,
                    "application/json",
                )
            }
        }
    }
}

async fn embeddings(
    State(script): State<Arc<Script>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let behaviour = script.next("/v1/embeddings", &headers, &body);
    if let Behaviour::Status(code, _) = behaviour {
        return StatusCode::from_u16(code).unwrap().into_response();
    }
    let inputs = body["input"].as_array().cloned().unwrap_or_default();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let length = input.as_str().map_or(0, str::len);
            // A deterministic vector: its length and its index.
            json!({ "object": "embedding", "index": index, "embedding": [length as f32, index as f32, 0.5] })
        })
        .collect();
    json_response(&json!({
        "object": "list", "data": data, "model": body["model"],
        "usage": { "prompt_tokens": 5, "total_tokens": 5 }
    }))
}
