//! The router's providers as checks (`provider:<name>`, every interval from `ListProviders`),
//! and the one repair the doctor makes there: a provider whose incident opens is cooled in the
//! router for `cool_for`, so requests stop waiting on it, and the action is written into the
//! incident.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use synos_proto::doctor::v1::{DaemonHealth, IncidentEventKind};
use synos_proto::llm::v1::router_client::RouterClient;
use synos_proto::llm::v1::{
    ListProvidersRequest, ProviderAction, ProviderState, SetProviderStateRequest,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::incidents::{Observation, SharedBook};

/// The prefix of provider checks.
pub const PREFIX: &str = "provider:";

/// Whether a provider in `state` counts as failing. Drained is an operator's choice, not a
/// failure.
fn failing(state: ProviderState) -> bool {
    matches!(
        state,
        ProviderState::CoolingDown | ProviderState::CircuitOpen | ProviderState::Unusable
    )
}

fn state_name(state: ProviderState) -> String {
    state
        .as_str_name()
        .trim_start_matches("PROVIDER_STATE_")
        .to_ascii_lowercase()
        .replace('_', " ")
}

/// Observes every remote provider of the router at `socket` each `interval`; while the router
/// cannot be reached nothing is observed (its daemon check says so).
pub async fn watch_providers(
    socket: PathBuf,
    interval: Duration,
    timeout: Duration,
    observations: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(channel) = synos_common::client::connect(&socket, timeout).await else {
            continue;
        };
        let listed = tokio::time::timeout(
            timeout,
            RouterClient::new(channel).list_providers(ListProvidersRequest {}),
        )
        .await;
        let Ok(Ok(providers)) = listed else {
            continue;
        };
        let now = SystemTime::now();
        for provider in providers.into_inner().providers {
            // The local model is the last resort, not a remote provider to watch.
            if provider.kind == "local" {
                continue;
            }
            let state = provider.state();
            let detail = if provider.state_reason.is_empty() {
                state_name(state)
            } else {
                format!("{}: {}", state_name(state), provider.state_reason)
            };
            let observation = Observation {
                check: format!("{PREFIX}{}", provider.name),
                ok: !failing(state),
                health: DaemonHealth::Unspecified,
                detail,
                at: now,
            };
            if observations.send(observation).await.is_err() {
                return;
            }
        }
    }
}

/// Cools each provider whose incident opens (or reopens) for `cool_for`, and records what was
/// done in the incident.
pub async fn cool_failing_providers(
    book: SharedBook,
    socket: PathBuf,
    cool_for: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut events = book
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .subscribe();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = shutdown.cancelled() => return,
        };
        let event = match event {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if !matches!(
            event.kind(),
            IncidentEventKind::Opened | IncidentEventKind::Reopened
        ) {
            continue;
        }
        let Some(incident) = event.incident else {
            continue;
        };
        let Some(provider) = incident.check.strip_prefix(PREFIX) else {
            continue;
        };
        let outcome = cool(&socket, provider, cool_for, timeout).await;
        let line = match &outcome {
            Ok(()) => format!(
                "told the router to cool {provider} for {} s",
                cool_for.as_secs()
            ),
            Err(problem) => format!("could not tell the router to cool {provider}: {problem}"),
        };
        tracing::info!(incident = %incident.id, %line, "action");
        book.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record_action(&incident.id, &line);
    }
}

async fn cool(
    socket: &std::path::Path,
    provider: &str,
    cool_for: Duration,
    timeout: Duration,
) -> Result<(), String> {
    let channel = synos_common::client::connect(socket, timeout)
        .await
        .map_err(|error| error.to_string())?;
    let request = SetProviderStateRequest {
        name: provider.to_owned(),
        action: ProviderAction::Cool.into(),
        cool_for: prost_types::Duration::try_from(cool_for).ok(),
    };
    match tokio::time::timeout(
        timeout,
        RouterClient::new(channel).set_provider_state(request),
    )
    .await
    {
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Ok(Ok(_)) => Ok(()),
    }
}
