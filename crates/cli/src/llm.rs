//! `synosctl llm …`: chat (streamed to the terminal), providers, usage and HTTP keys.

use std::io::Write as _;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use synos_common::exit;
use synos_proto::llm::v1::router_client::RouterClient;
use synos_proto::llm::v1::{
    self as api, ChatMessage, ChatRequest, CreateKeyRequest, GetUsageRequest, ListKeysRequest,
    ListProvidersRequest, ProviderAction, RevokeKeyRequest, SetProviderStateRequest,
    chat_stream_event,
};

use crate::Cli;
use crate::commands::{CliError, CommandResult, Connected, connect, duration_from};
use crate::output::{emit, emit_json, enum_value, table};

async fn router(
    cli: &Cli,
) -> Result<(Connected, RouterClient<tonic::transport::Channel>), CliError> {
    let connection = connect(cli, "llm-router").await?;
    let client = RouterClient::new(connection.channel.clone());
    Ok((connection, client))
}

/// An enum value's name without its prefix, in lower case: `PROVIDER_STATE_COOLING_DOWN` →
/// "cooling_down".
fn enum_name(name: Option<&str>, prefix: &str) -> String {
    name.map_or_else(
        || "unknown".to_owned(),
        |name| enum_value(name, prefix).to_ascii_lowercase(),
    )
}

fn outcome_name(value: i32) -> String {
    enum_name(
        api::AttemptOutcome::try_from(value)
            .ok()
            .map(|outcome| outcome.as_str_name()),
        "ATTEMPT_OUTCOME_",
    )
}

fn milliseconds(duration: Option<prost_types::Duration>) -> Option<u128> {
    duration_from(duration).map(|duration| duration.as_millis())
}

pub(crate) fn attempts_json(attempts: &[api::Attempt]) -> Value {
    Value::Array(
        attempts
            .iter()
            .map(|attempt| {
                json!({
                    "provider": attempt.provider, "model": attempt.model,
                    "outcome": outcome_name(attempt.outcome), "detail": attempt.detail,
                    "latency_ms": milliseconds(attempt.latency),
                })
            })
            .collect(),
    )
}

pub(crate) fn served_json(served: &api::Served) -> Value {
    json!({
        "route": served.route, "provider": served.provider, "model": served.model,
        "attempts": attempts_json(&served.attempts),
        "usage": served.usage.map(|usage| json!({
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "counted": usage.counted, "cost_usd": usage.cost_usd,
        })),
    })
}

/// "served by groq/llama-3.1 after 1 failed attempt; 18 tokens (counted), $0.000025".
pub(crate) fn served_summary(served: &api::Served) -> String {
    let failed = served.attempts.len().saturating_sub(1);
    let mut line = format!("served by {}/{}", served.provider, served.model);
    if failed > 0 {
        let others: Vec<String> = served.attempts[..failed]
            .iter()
            .map(|attempt| format!("{} {}", attempt.provider, outcome_name(attempt.outcome)))
            .collect();
        line.push_str(&format!(" after {}", others.join(", ")));
    }
    if let Some(usage) = served.usage {
        line.push_str(&format!(
            "; {} tokens in, {} out{}; ${:.6}",
            usage.input_tokens,
            usage.output_tokens,
            if usage.counted { " (counted)" } else { "" },
            usage.cost_usd
        ));
    }
    line
}

/// `synosctl llm chat`.
pub(crate) async fn chat(
    cli: &Cli,
    route: &str,
    prompt: &[String],
    max_tokens: Option<u32>,
    as_json: bool,
) -> CommandResult {
    let prompt = prompt.join(" ");
    if prompt.trim().is_empty() {
        return Err(CliError::usage("the prompt is empty"));
    }
    let request = ChatRequest {
        route: route.to_owned(),
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: prompt,
        }],
        max_tokens,
        ..ChatRequest::default()
    };
    let (connection, mut client) = router(cli).await?;
    if as_json {
        let reply = client
            .chat(request)
            .await
            .map_err(|status| connection.call_failed(&status))?
            .into_inner();
        let served = reply.served.unwrap_or_default();
        let mut value = served_json(&served);
        value["content"] = Value::String(reply.content);
        value["finish_reason"] = Value::String(reply.finish_reason);
        emit_json(&value);
        return Ok(exit::OK);
    }
    let mut stream = client
        .chat_stream(request)
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    let mut ended_with_newline = true;
    loop {
        match stream.next().await {
            None => {
                // The router always ends a complete answer with `finished`.
                if !ended_with_newline {
                    let _ = writeln!(stdout);
                }
                return Err(CliError::failure(
                    "synos-llm-router: the stream ended without finishing; the answer may be incomplete",
                ));
            }
            Some(Err(status)) => {
                if !ended_with_newline {
                    let _ = writeln!(stdout);
                }
                return Err(connection.call_failed(&status));
            }
            Some(Ok(event)) => match event.event {
                Some(chat_stream_event::Event::Delta(text)) => {
                    ended_with_newline = text.ends_with('\n');
                    if write!(stdout, "{text}")
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        return Ok(exit::OK);
                    }
                }
                Some(chat_stream_event::Event::Finished(finished)) => {
                    if !ended_with_newline {
                        let _ = writeln!(stdout);
                    }
                    if let Some(served) = finished.served {
                        eprintln!("[{}]", served_summary(&served));
                    }
                    return Ok(exit::OK);
                }
                Some(chat_stream_event::Event::Started(_)) | None => {}
            },
        }
    }
}

/// `synosctl llm providers`.
pub(crate) async fn providers(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut client) = router(cli).await?;
    let reply = client
        .list_providers(ListProvidersRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    if as_json {
        let providers: Vec<Value> = reply.providers.iter().map(provider_json).collect();
        emit_json(&json!({ "providers": providers, "policy_gate": reply.policy_gate }));
        return Ok(exit::OK);
    }
    if reply.providers.is_empty() {
        emit("no providers configured (add [[provider]] and [[route]] to llm-router.toml)");
        emit(&reply.policy_gate);
        return Ok(exit::OK);
    }
    let header = [
        "NAME",
        "TIER",
        "TRUST",
        "STATE",
        "LATENCY",
        "IN FLIGHT",
        "REQUESTS",
        "FAILED",
        "BASE URL",
    ];
    let rows: Vec<Vec<String>> = reply
        .providers
        .iter()
        .map(|provider| {
            vec![
                provider.name.clone(),
                provider_tier(provider),
                provider_trust(provider),
                state_with_time_left(provider),
                milliseconds(provider.recent_latency)
                    .map_or_else(|| "-".to_owned(), |latency| format!("{latency} ms")),
                format!("{}/{}", provider.in_flight, provider.max_concurrency),
                provider.requests.to_string(),
                provider.failures.to_string(),
                provider.base_url.clone(),
            ]
        })
        .collect();
    emit(&table(&header, &rows));
    for provider in &reply.providers {
        if !provider.state_reason.is_empty() && provider.state() != api::ProviderState::Available {
            emit(&format!("{}: {}", provider.name, provider.state_reason));
        }
    }
    emit(&reply.policy_gate);
    Ok(exit::OK)
}

/// A provider's state in lower case, e.g. "cooling_down".
fn provider_state(provider: &api::Provider) -> String {
    enum_name(provider.state().as_str_name().into(), "PROVIDER_STATE_")
}

/// Its tier in lower case, e.g. "local".
fn provider_tier(provider: &api::Provider) -> String {
    enum_name(provider.tier().as_str_name().into(), "TIER_")
}

/// Its trust in lower case, e.g. "private".
fn provider_trust(provider: &api::Provider) -> String {
    enum_name(provider.trust().as_str_name().into(), "TRUST_")
}

/// Its state with the cooldown left, e.g. "cooling_down (42 s)".
fn state_with_time_left(provider: &api::Provider) -> String {
    let mut text = provider_state(provider);
    if let Some(left) = duration_from(provider.cooldown_remaining) {
        text.push_str(&format!(" ({} s)", left.as_secs()));
    }
    text
}

/// One provider as `--json` prints it.
fn provider_json(provider: &api::Provider) -> Value {
    json!({
        "name": provider.name, "kind": provider.kind, "base_url": provider.base_url,
        "state": provider_state(provider), "state_reason": provider.state_reason,
        "tier": provider_tier(provider), "trust": provider_trust(provider),
        "cooldown_remaining_ms": milliseconds(provider.cooldown_remaining),
        "breaker": enum_name(provider.breaker().as_str_name().into(), "BREAKER_STATE_"),
        "recent_latency_ms": milliseconds(provider.recent_latency),
        "in_flight": provider.in_flight, "max_concurrency": provider.max_concurrency,
        "requests": provider.requests, "failures": provider.failures,
    })
}

/// `synosctl llm provider drain|cool|restore`: tells the router, then prints the provider's
/// state as the router now has it.
pub(crate) async fn set_provider_state(
    cli: &Cli,
    name: &str,
    action: ProviderAction,
    cool_for: Option<Duration>,
    as_json: bool,
) -> CommandResult {
    let (connection, mut client) = router(cli).await?;
    let provider = client
        .set_provider_state(SetProviderStateRequest {
            name: name.to_owned(),
            action: action.into(),
            cool_for: cool_for.and_then(|duration| prost_types::Duration::try_from(duration).ok()),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    if as_json {
        emit_json(&provider_json(&provider));
    } else {
        let reason = if provider.state_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", provider.state_reason)
        };
        emit(&format!(
            "{}: {}{reason}",
            provider.name,
            state_with_time_left(&provider)
        ));
    }
    Ok(exit::OK)
}

/// `synosctl llm usage`.
pub(crate) async fn usage(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut client) = router(cli).await?;
    let usage = client
        .get_usage(GetUsageRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let totals_json = |totals: &[api::UsageTotal]| -> Value {
        Value::Array(
            totals
                .iter()
                .map(|total| {
                    json!({
                        "name": total.name, "requests": total.requests,
                        "input_tokens": total.input_tokens, "output_tokens": total.output_tokens,
                        "cost_usd": total.cost_usd, "daily_budget_usd": total.daily_budget_usd,
                    })
                })
                .collect(),
        )
    };
    if as_json {
        emit_json(&json!({
            "day": usage.day,
            "routes": totals_json(&usage.routes),
            "principals": totals_json(&usage.principals),
            "providers": totals_json(&usage.providers),
        }));
        return Ok(exit::OK);
    }
    emit(&format!("usage on {} (UTC)", usage.day));
    for (title, totals) in [
        ("ROUTE", &usage.routes),
        ("PRINCIPAL", &usage.principals),
        ("PROVIDER", &usage.providers),
    ] {
        let rows: Vec<Vec<String>> = totals
            .iter()
            .map(|total| {
                vec![
                    total.name.clone(),
                    total.requests.to_string(),
                    total.input_tokens.to_string(),
                    total.output_tokens.to_string(),
                    format!("${:.6}", total.cost_usd),
                    total
                        .daily_budget_usd
                        .map_or_else(|| "-".to_owned(), |budget| format!("${budget:.6}")),
                ]
            })
            .collect();
        emit("");
        if rows.is_empty() {
            emit(&format!("{title}: no requests yet"));
        } else {
            emit(&table(
                &[
                    title,
                    "REQUESTS",
                    "TOKENS IN",
                    "TOKENS OUT",
                    "COST",
                    "DAILY BUDGET",
                ],
                &rows,
            ));
        }
    }
    Ok(exit::OK)
}

fn created(key: &api::ApiKey) -> String {
    key.created
        .and_then(|created| u64::try_from(created.seconds).ok())
        .map_or_else(String::new, |seconds| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(seconds))
        })
}

/// `synosctl llm keys create`.
pub(crate) async fn keys_create(cli: &Cli, principal: &str, routes: &[String]) -> CommandResult {
    let (connection, mut client) = router(cli).await?;
    let reply = client
        .create_key(CreateKeyRequest {
            principal: principal.to_owned(),
            routes: routes.to_vec(),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let info = reply.info.unwrap_or_default();
    let scope = if info.routes.is_empty() {
        "all routes".to_owned()
    } else {
        format!("routes {}", info.routes.join(", "))
    };
    emit(&format!(
        "key {} for principal {} ({scope}); it is shown only now:",
        info.id, info.principal
    ));
    emit(&reply.key);
    Ok(exit::OK)
}

/// `synosctl llm keys list`.
pub(crate) async fn keys_list(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut client) = router(cli).await?;
    let keys = client
        .list_keys(ListKeysRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner()
        .keys;
    if as_json {
        let keys: Vec<Value> = keys
            .iter()
            .map(|key| {
                json!({
                    "id": key.id, "principal": key.principal, "routes": key.routes,
                    "created_unix": key.created.map(|created| created.seconds),
                })
            })
            .collect();
        emit_json(&json!({ "keys": keys }));
    } else if keys.is_empty() {
        emit("no keys; create one with `synosctl llm keys create`");
    } else {
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|key| {
                vec![
                    key.id.clone(),
                    key.principal.clone(),
                    if key.routes.is_empty() {
                        "all".to_owned()
                    } else {
                        key.routes.join(",")
                    },
                    created(key),
                ]
            })
            .collect();
        emit(&table(&["ID", "PRINCIPAL", "ROUTES", "CREATED"], &rows));
    }
    Ok(exit::OK)
}

/// `synosctl llm keys revoke`.
pub(crate) async fn keys_revoke(cli: &Cli, id: &str) -> CommandResult {
    let (connection, mut client) = router(cli).await?;
    client
        .revoke_key(RevokeKeyRequest { id: id.to_owned() })
        .await
        .map_err(|status| connection.call_failed(&status))?;
    emit(&format!("key {id} revoked"));
    Ok(exit::OK)
}
