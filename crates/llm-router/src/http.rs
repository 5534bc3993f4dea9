//! The OpenAI-compatible HTTP endpoint: `/v1/chat/completions` (whole and streamed),
//! `/v1/embeddings`, `/v1/models`. Every request carries a bearer key made with
//! `synosctl llm keys create`; the request's `model` names the route.

// Handlers' helpers return the refusal `Response` as their error: it is built once and returned
// at once, so its size costs nothing worth a box.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::StreamExt as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value, json};
use synos_common::caller::canonical_principal;
use synos_common::error::ErrorKind;

use crate::engine::{ChatCall, Engine, RouteError, Served, StreamItem};
use crate::keys::KeyRecord;

/// Shared by the handlers.
#[derive(Debug)]
pub(crate) struct HttpState {
    engine: Arc<Engine>,
    failed_auth: DefaultDirectRateLimiter,
    /// `[http] max_body_bytes`.
    max_body_bytes: usize,
}

/// How long a request's body may take to arrive once its headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The endpoint's routes.
pub(crate) fn router(
    engine: Arc<Engine>,
    max_body_bytes: usize,
    failed_auth_per_second: u32,
) -> Router {
    let per_second = NonZeroU32::new(failed_auth_per_second).unwrap_or(NonZeroU32::MIN);
    let state = Arc::new(HttpState {
        engine,
        failed_auth: RateLimiter::direct(Quota::per_second(per_second)),
        max_body_bytes,
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .fallback(not_found)
        // The handlers read bodies themselves, after authentication and within their limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// An OpenAI-style error reply.
fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        })),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        "unknown path; this endpoint serves /v1/chat/completions, /v1/embeddings and /v1/models",
    )
}

impl HttpState {
    /// The key's record, or the reply refusing the request.
    fn authenticate(&self, headers: &HeaderMap) -> Result<KeyRecord, Response> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim);
        let (reason, message) = match presented {
            None => (
                "missing_key",
                "no API key: send `Authorization: Bearer <key>`; create one with \
                 `synosctl llm keys create --principal NAME`",
            ),
            // Keys made before principals were canonical name a login; either form acts as
            // `User::"login"`. A stored principal that is neither is refused, never guessed.
            Some(key) => match self.engine.keys.verify(key).and_then(|mut record| {
                record.principal = canonical_principal(&record.principal).ok()?;
                Some(record)
            }) {
                Some(record) => return Ok(record),
                None => ("wrong_key", "invalid or revoked API key"),
            },
        };
        if self.failed_auth.check().is_err() {
            self.engine.metrics.http_rejected("auth_rate_limited");
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too_many_failed_authentications",
                "too many failed authentications; retry later",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(response);
        }
        self.engine.metrics.http_rejected(reason);
        tracing::info!(reason, "HTTP request refused: authentication failed");
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message,
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"synos-llm-router\""),
        );
        Err(response)
    }

    fn malformed(&self, message: &str) -> Response {
        self.engine.metrics.http_rejected("malformed");
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// The request body as a JSON object, or the reply refusing it.
    /// The body, read only now that the request is authenticated: at most `max_body_bytes`
    /// (413 naming the limit, and the connection closed, since the rest of the body is not
    /// read), within [`BODY_TIMEOUT`] (408).
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
        let limit = self.max_body_bytes;
        let too_large = || {
            self.engine.metrics.http_rejected("body_too_large");
            let mut response = error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
                &format!(
                    "cannot read the request body: it is larger than the router's limit of \
                     {limit} bytes ([http] max_body_bytes)"
                ),
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        let read = async {
            let mut bytes = Vec::with_capacity(declared.map_or(0, |length| length as usize));
            let mut stream = body.into_data_stream();
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|problem| problem.to_string())?;
                if bytes.len() + piece.len() > limit {
                    return Ok(None);
                }
                bytes.extend_from_slice(&piece);
            }
            Ok::<_, String>(Some(Bytes::from(bytes)))
        };
        match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(Some(bytes))) => Ok(bytes),
            Ok(Ok(None)) => Err(too_large()),
            Ok(Err(problem)) => {
                self.engine.metrics.http_rejected("unreadable_body");
                Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_body",
                    &format!("cannot read the request body: {problem}"),
                ))
            }
            Err(_) => {
                self.engine.metrics.http_rejected("body_timeout");
                let mut response = error(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    "body_timeout",
                    &format!(
                        "cannot read the request body: it did not arrive within {} s",
                        BODY_TIMEOUT.as_secs()
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Err(response)
            }
        }
    }

    fn body(&self, bytes: &Bytes) -> Result<Map<String, Value>, Response> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(fields)) => Ok(fields),
            Ok(_) => Err(self.malformed("the request body must be a JSON object")),
            Err(parse_error) => Err(self.malformed(&format!(
                "the request body is not valid JSON: {parse_error}"
            ))),
        }
    }

    /// Authenticates a request, then reads its body and route: everything before routing. No
    /// byte of the body is read for a client without a valid key.
    async fn admit(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(KeyRecord, Map<String, Value>, String), Response> {
        let key = self.authenticate(headers)?;
        let bytes = self.read_body(headers, body).await?;
        let fields = self.body(&bytes)?;
        let route = self.route(&fields, &key)?;
        Ok((key, fields, route))
    }

    /// The route the `model` field names, if the key may use it.
    fn route(&self, fields: &Map<String, Value>, key: &KeyRecord) -> Result<String, Response> {
        let Some(Value::String(route)) = fields.get("model") else {
            return Err(self.malformed("`model` is required: it names the route, e.g. \"default\""));
        };
        if !key.allows(route) {
            self.engine.metrics.http_rejected("route_not_allowed");
            return Err(error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "route_not_allowed",
                &format!("this key may not use route {route:?}"),
            ));
        }
        Ok(route.clone())
    }
}

fn route_error_response(route_error: &RouteError) -> Response {
    let message = route_error.to_string();
    let mut response = match route_error {
        RouteError::UnknownRoute(_) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            &message,
        ),
        RouteError::BudgetExhausted(_) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget_exhausted",
            &message,
        ),
        RouteError::NotAllowed { .. } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "escalation_refused",
            &message,
        ),
        RouteError::Exhausted { rejected: true, .. } | RouteError::InvalidRequest(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "rejected_by_providers",
            &message,
        ),
        RouteError::Exhausted { .. } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "no_provider_available",
            &message,
        ),
        RouteError::Blocked { .. } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "prompt_blocked",
            &message,
        ),
        RouteError::Forbidden(_) => error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "route_forbidden",
            &message,
        ),
        RouteError::PolicyUnavailable(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "policy_unavailable",
            &message,
        ),
        RouteError::PolicyRefused { kind, .. } => match kind {
            ErrorKind::ResourceExhausted => error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "policy_rate_limited",
                &message,
            ),
            ErrorKind::InvalidArgument => error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "policy_refused",
                &message,
            ),
            ErrorKind::PermissionDenied => error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "policy_refused",
                &message,
            ),
            _ => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "policy_refused",
                &message,
            ),
        },
    };
    if let Some(served) = route_error.served() {
        add_served_headers(response.headers_mut(), served);
    }
    response
}

/// `x-synos-*` headers: route, provider, model, attempts and (when known) cost.
fn add_served_headers(headers: &mut HeaderMap, served: &Served) {
    let mut set = |name: &'static str, value: String| {
        // Header values must be visible ASCII; anything else becomes '?'.
        let clean: String = value
            .chars()
            .map(|character| {
                if character == ' ' || character.is_ascii_graphic() {
                    character
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&clean) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-synos-route", served.route.clone());
    if !served.provider.is_empty() {
        set("x-synos-provider", served.provider.clone());
        set("x-synos-model", served.model.clone());
    }
    set("x-synos-attempts", served.describe_attempts());
    if let Some(usage) = served.usage {
        set("x-synos-cost-usd", format!("{:.8}", usage.cost_usd));
        if usage.counted {
            set("x-synos-usage", "counted".to_owned());
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (key, mut fields, route) = match state.admit(&headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if fields
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return state.malformed("`messages` must be a non-empty array");
    }
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return state.malformed("`stream` must be true or false"),
    };
    let client_wants_usage = fields
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for owned_by_router in ["model", "stream", "stream_options"] {
        fields.remove(owned_by_router);
    }
    let call = ChatCall {
        route,
        principal: key.principal.clone(),
        fields,
        max_tier: None,
        min_trust: None,
    };
    if !stream {
        return match state.engine.chat(call).await {
            Ok((reply, served)) => {
                let mut response = axum::Json(reply.body).into_response();
                add_served_headers(response.headers_mut(), &served);
                response
            }
            Err(route_error) => route_error_response(&route_error),
        };
    }
    let opened = match state.engine.chat_stream(call).await {
        Ok(opened) => opened,
        Err(route_error) => return route_error_response(&route_error),
    };
    let mut served_headers = HeaderMap::new();
    add_served_headers(&mut served_headers, &opened.served);
    let events = state
        .engine
        .relay(opened)
        .filter_map(move |item| async move {
            let data = match item {
                StreamItem::Chunk(chunk) => {
                    let usage_only = chunk
                        .body
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty);
                    if usage_only && !client_wants_usage {
                        return None;
                    }
                    chunk.body.to_string()
                }
                StreamItem::Finished { .. } => "[DONE]".to_owned(),
                // The OpenAI clients raise on an event with an `error` member; no [DONE] follows.
                StreamItem::Failed(message) => json!({
                    "error": { "message": message, "type": "api_error", "param": null,
                               "code": "stream_broken" }
                })
                .to_string(),
            };
            Some(Ok::<_, Infallible>(Bytes::from(format!(
                "data: {data}\n\n"
            ))))
        });
    let mut response = Response::new(Body::from_stream(events));
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.extend(served_headers);
    response
}

async fn embeddings(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (key, fields, route) = match state.admit(&headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let inputs: Vec<String> = match fields.get("input") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        }
        _ => {
            return state.malformed(
                "`input` must be a string or a non-empty array of strings (token arrays are \
                 not supported)",
            );
        }
    };
    let base64 = match fields.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(_) => return state.malformed("`encoding_format` must be \"float\" or \"base64\""),
    };
    match state.engine.embed(&route, &key.principal, inputs).await {
        Ok((vectors, served)) => {
            let data: Vec<Value> = vectors
                .iter()
                .enumerate()
                .map(|(index, vector)| {
                    let embedding = if base64 {
                        let bytes: Vec<u8> = vector
                            .iter()
                            .flat_map(|value| value.to_le_bytes())
                            .collect();
                        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                    } else {
                        json!(vector)
                    };
                    json!({ "object": "embedding", "index": index, "embedding": embedding })
                })
                .collect();
            let tokens = served.usage.map_or(0, |usage| usage.input_tokens);
            let mut response = axum::Json(json!({
                "object": "list",
                "data": data,
                "model": served.model,
                "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
            }))
            .into_response();
            add_served_headers(response.headers_mut(), &served);
            response
        }
        Err(route_error) => route_error_response(&route_error),
    }
}

async fn models(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let key = match state.authenticate(&headers) {
        Ok(key) => key,
        Err(response) => return response,
    };
    let topology = state.engine.topology();
    let data: Vec<Value> = topology
        .config
        .routes
        .iter()
        .filter(|route| key.allows(&route.name))
        .map(|route| json!({ "id": route.name, "object": "model", "created": 0, "owned_by": "synos" }))
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}
