//! The router's providers as checks (`provider:<name>`, every interval from `ListProviders`),
//! and the repairs the doctor makes there: a provider whose incident opens is cooled in the
//! router for `cool_for`, so requests stop waiting on it (once policy allows it, and so audits
//! it), and the action is written into the incident; one that fails again after recovering is proposed for draining, which takes an
//! operator's approval.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use synos_proto::doctor::v1::DaemonHealth;
use synos_proto::llm::v1::router_client::RouterClient;
use synos_proto::llm::v1::{
    ListProvidersRequest, ListProvidersResponse, ProviderAction, ProviderState,
    SetProviderStateRequest,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::incidents::{Observation, Opening, Openings, SharedBook};

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
    crate::peers::poll(
        socket,
        interval,
        timeout,
        observations,
        shutdown,
        |channel| async move {
            RouterClient::new(channel)
                .list_providers(ListProvidersRequest {})
                .await
        },
        |listed: ListProvidersResponse| {
            let now = SystemTime::now();
            listed
                .providers
                .into_iter()
                // The local model is the last resort, not a remote provider to watch.
                .filter(|provider| provider.kind != "local")
                .map(|provider| {
                    let state = provider.state();
                    let detail = if provider.state_reason.is_empty() {
                        state_name(state)
                    } else {
                        format!("{}: {}", state_name(state), provider.state_reason)
                    };
                    Observation {
                        check: format!("{PREFIX}{}", provider.name),
                        ok: !failing(state),
                        health: DaemonHealth::Unspecified,
                        detail,
                        at: now,
                    }
                })
                .collect()
        },
    )
    .await;
}

/// What the doctor does about a failing provider.
#[derive(Debug, Clone)]
pub struct Repairs {
    /// The policy daemon, asked before each cool (which audits it).
    pub policy: PathBuf,
    /// Cool it for this long when its incident opens or reopens.
    pub cool_for: Option<Duration>,
    /// Propose draining it when its incident reopens: cooling did not help.
    pub propose_drain: bool,
}

/// Cools each provider whose incident opens (or reopens) and records what was done in the
/// incident; proposes draining one whose incident reopens, for an operator to approve.
pub async fn repair_failing_providers(
    book: SharedBook,
    socket: PathBuf,
    repairs: Repairs,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut openings = Openings::new(&book, PREFIX);
    while let Some(Opening {
        incident,
        subject: provider,
        reopened,
    }) = openings.next(&shutdown).await
    {
        let provider = provider.as_str();
        if let Some(cool_for) = repairs.cool_for {
            let line = match crate::approvals::authorize_repair(
                &repairs.policy,
                timeout,
                "cool-provider",
                provider,
            )
            .await
            {
                Err(refused) => format!("did not cool {provider}: {refused}"),
                Ok(unaudited) => match set_provider_state(
                    &socket,
                    provider,
                    ProviderAction::Cool,
                    Some(cool_for),
                    timeout,
                )
                .await
                {
                    Ok(()) => format!(
                        "told the router to cool {provider} for {} s{unaudited}",
                        cool_for.as_secs()
                    ),
                    Err(problem) => {
                        format!("could not tell the router to cool {provider}: {problem}")
                    }
                },
            };
            tracing::info!(incident = %incident.id, %line, "action");
            book.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record_action(&incident.id, &line);
        }
        if repairs.propose_drain && reopened {
            let proposed = book
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .propose(
                    &incident.id,
                    crate::approvals::Action::DrainProvider,
                    provider,
                    &format!(
                        "{provider} failed again after it recovered ({} times now)",
                        incident.occurrences
                    ),
                );
            if let Some(proposal) = proposed {
                tracing::warn!(incident = %incident.id, pending = %proposal.id, "asking an operator to approve: {}", proposal.describe());
            }
        }
    }
}

/// Sets `provider`'s state in the router at `socket` (`cool_for` only for a cool).
pub async fn set_provider_state(
    socket: &std::path::Path,
    provider: &str,
    action: ProviderAction,
    cool_for: Option<Duration>,
    timeout: Duration,
) -> Result<(), String> {
    let request = SetProviderStateRequest {
        name: provider.to_owned(),
        action: action.into(),
        cool_for: cool_for.and_then(|cool_for| prost_types::Duration::try_from(cool_for).ok()),
    };
    crate::peers::ask(socket, timeout, |channel| async move {
        RouterClient::new(channel).set_provider_state(request).await
    })
    .await
    .map(|_| ())
    .map_err(|error| error.to_string())
}
