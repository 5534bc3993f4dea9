//! The approval queue: actions the doctor may not take on its own (draining a provider that
//! fails again after it was cooled, restarting a unit past the doctor's own restarts) wait as
//! proposals until an operator approves or denies them.
//! Who decides comes from the socket's peer credentials and is authorized by the policy daemon,
//! which audits it; the proposal, the decision and its outcome are kept in the incident
//! database and written into the incident.

use std::path::{Path, PathBuf};
use std::time::Duration;

use synos_common::time::timestamp;
use synos_proto::doctor::v1::{PendingAction, PendingState};
use synos_proto::llm::v1::ProviderAction;
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{AuthorizeRequest, Decision};
use tonic::Status;

use crate::peers::AskError;

/// Decided proposals `ListPending` gives when asked for them.
pub const DECIDED_LISTED: usize = 100;

/// What a proposal would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take a router provider out of every route until an operator restores it.
    DrainProvider,
    /// Restart a watched daemon's unit that the doctor gave up restarting on its own.
    RestartUnit,
}

impl Action {
    /// The name in the API, the database and the policy action's resource.
    pub fn name(self) -> &'static str {
        match self {
            Self::DrainProvider => "drain-provider",
            Self::RestartUnit => "restart-unit",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::DrainProvider, Self::RestartUnit]
            .into_iter()
            .find(|action| action.name() == name)
    }
}

/// One proposal, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// A UUIDv7.
    pub id: String,
    /// The incident that called for it.
    pub incident_id: String,
    /// What it would do.
    pub action: Action,
    /// To what (a provider's name, a unit's).
    pub target: String,
    /// Why the doctor proposes it.
    pub reason: String,
    /// When, in Unix milliseconds.
    pub proposed_ms: i64,
    /// Pending, or how it was decided.
    pub state: PendingState,
    /// The Cedar principal that decided it; empty while pending.
    pub decided_by: String,
    /// When it was decided.
    pub decided_ms: Option<i64>,
    /// What carrying it out did, or why it was denied.
    pub outcome: String,
}

impl Proposal {
    /// The API's view.
    pub fn to_proto(&self) -> PendingAction {
        PendingAction {
            id: self.id.clone(),
            incident_id: self.incident_id.clone(),
            action: self.action.name().to_owned(),
            target: self.target.clone(),
            reason: self.reason.clone(),
            proposed: Some(timestamp(self.proposed_ms)),
            state: self.state.into(),
            decided_by: self.decided_by.clone(),
            decided: self.decided_ms.map(timestamp),
            outcome: self.outcome.clone(),
        }
    }

    /// What it does, for people: "drain provider openai".
    pub fn describe(&self) -> String {
        match self.action {
            Action::DrainProvider => format!("drain provider {}", self.target),
            Action::RestartUnit => format!("restart {}", self.target),
        }
    }
}

/// The database's name of `state`.
pub fn state_name(state: PendingState) -> &'static str {
    match state {
        PendingState::Unspecified | PendingState::Pending => "pending",
        PendingState::Done => "done",
        PendingState::Failed => "failed",
        PendingState::Denied => "denied",
    }
}

/// A proposal read back from the database, or why its row makes no sense.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per column of the row"
)]
pub fn from_row(
    id: String,
    incident_id: String,
    action: &str,
    target: String,
    reason: String,
    proposed_ms: i64,
    state: &str,
    decided_by: String,
    decided_ms: Option<i64>,
    outcome: String,
) -> Result<Proposal, String> {
    let action = Action::from_name(action)
        .ok_or_else(|| format!("pending action {id}: unknown action {action:?}"))?;
    let state = match state {
        "pending" => PendingState::Pending,
        "done" => PendingState::Done,
        "failed" => PendingState::Failed,
        "denied" => PendingState::Denied,
        other => return Err(format!("pending action {id}: unknown state {other:?}")),
    };
    Ok(Proposal {
        id,
        incident_id,
        action,
        target,
        reason,
        proposed_ms,
        state,
        decided_by,
        decided_ms,
        outcome,
    })
}

/// Where the doctor reaches the daemons that decide and carry out approvals.
#[derive(Debug, Clone)]
pub struct Peers {
    /// The policy daemon, which authorizes and audits each decision.
    pub policy: PathBuf,
    /// The router, whose providers are drained.
    pub router: PathBuf,
    /// How long each may take to answer.
    pub timeout: Duration,
}

/// Asks policy whether `principal` may `verb` ("doctor.approve") `action`. While policy cannot
/// be reached only root may, and the answer says it went unaudited.
pub async fn authorize(
    peers: &Peers,
    principal: &str,
    is_root: bool,
    verb: &str,
    action: Action,
) -> Result<Option<String>, Status> {
    let request = AuthorizeRequest {
        principal: principal.to_owned(),
        action: format!("{verb}:{}", action.name()),
        resource: String::new(),
    };
    let answer = crate::peers::ask(&peers.policy, peers.timeout, |channel| async move {
        PolicyClient::new(channel).authorize(request).await
    })
    .await;
    match answer {
        Ok(decided) if decided.decision() == Decision::Allow => Ok(None),
        Ok(_) => Err(Status::permission_denied(format!(
            "{principal} may not {verb}:{} (the policy daemon's decision)",
            action.name()
        ))),
        Err(AskError::Refused(status)) => Err(Status::permission_denied(format!(
            "the policy daemon refused to decide: {}",
            status.message()
        ))),
        Err(AskError::Unreachable(problem)) if is_root => Ok(Some(format!(
            "unaudited: the policy daemon was unreachable ({problem}), and root may decide alone"
        ))),
        Err(AskError::Unreachable(problem)) => Err(Status::unavailable(format!(
            "the policy daemon, which authorizes approvals, is unreachable ({problem}); \
             until it is back only root may decide"
        ))),
    }
}

/// Asks policy, before an automatic repair, whether the doctor may make it: `repair`
/// ("cool-provider", "restart-unit") on `target`, as `doctor.repair` on
/// `System::"<repair>:<target>"`, which policy audits. `Ok` with a note to add to the action's
/// line (empty when audited; while policy is unreachable the repair goes ahead, said to be
/// unaudited, since the doctor must work with every other daemon down); `Err` with why policy
/// refuses it.
pub async fn authorize_repair(
    policy: &Path,
    timeout: Duration,
    repair: &str,
    target: &str,
) -> Result<String, String> {
    let request = AuthorizeRequest {
        principal: REPAIRER.to_owned(),
        action: "doctor.repair".to_owned(),
        resource: format!("System::{:?}", format!("{repair}:{target}")),
    };
    let answer = crate::peers::ask(policy, timeout, |channel| async move {
        PolicyClient::new(channel).authorize(request).await
    })
    .await;
    match answer {
        Ok(decided) if decided.decision() == Decision::Allow => Ok(String::new()),
        Ok(decided) => Err(format!(
            "policy does not allow {REPAIRER} to {repair} {target}{}",
            if decided.determining_policies.is_empty() {
                String::new()
            } else {
                format!(" ({})", decided.determining_policies.join(", "))
            }
        )),
        Err(AskError::Refused(status)) => Err(format!(
            "policy refused to decide whether {REPAIRER} may {repair} {target}: {}",
            status.message()
        )),
        Err(AskError::Unreachable(problem)) => Ok(format!(
            " (unaudited: the policy daemon was unreachable: {problem})"
        )),
    }
}

/// The doctor's Cedar principal for its own repairs.
pub const REPAIRER: &str = "Service::\"synos-doctor\"";

/// Carries out `proposal`; what was done, or why it failed.
pub async fn carry_out(peers: &Peers, proposal: &Proposal) -> Result<String, String> {
    match proposal.action {
        Action::DrainProvider => {
            crate::providers::set_provider_state(
                &peers.router,
                &proposal.target,
                ProviderAction::Drain,
                None,
                peers.timeout,
            )
            .await?;
            Ok(format!(
                "told the router to drain {}: it takes no new requests until an operator \
                 restores it",
                proposal.target
            ))
        }
        Action::RestartUnit => crate::units::restart(&proposal.target, peers.timeout).await,
    }
}
