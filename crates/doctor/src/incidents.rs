//! From observations to incidents: each check's failures and successes in a row, with
//! hysteresis (N failures open an incident, M successes recover it, a flap within the window
//! reopens the same one), and the incidents kept in SQLite by a writer that never holds up the
//! watch loop: a write that fails (a full disk) is kept and tried again, never dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection as _, Row as _, SqliteConnection};
use synos_common::time::{rfc3339_seconds, timestamp, unix_ms};
use synos_proto::doctor::v1::{
    CheckReport, CheckStatus, DaemonHealth, Incident, IncidentEvent, IncidentEventKind,
    IncidentState, PendingAction, PendingState, Severity,
};
use tokio::sync::{broadcast, mpsc};

use crate::approvals::{Action, DECIDED_LISTED, Proposal};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `PRAGMA application_id` of a SynOS doctor database ("SYND").
const APPLICATION_ID: i64 = 0x5359_4E44;
/// Evidence lines kept per incident.
const MAX_EVIDENCE: usize = 20;
/// Incidents kept in memory (the newest); older ones stay in the database.
const MAX_INCIDENTS_IN_MEMORY: usize = 1000;
/// How long the writer waits before trying a failed write again.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// The database file in the state directory.
pub fn database_path(state_directory: &Path) -> std::path::PathBuf {
    state_directory.join("doctor.db")
}

/// What one check saw once.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The check's name, e.g. "daemon:synos-memory".
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// For daemon checks, the health seen.
    pub health: DaemonHealth,
    /// What was seen, e.g. "no socket at /run/synos/memory.sock"; empty when all is well.
    pub detail: String,
    /// When.
    pub at: SystemTime,
}

/// The hysteresis settings.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Failures in a row that open (or reopen) an incident.
    pub failures_to_open: u32,
    /// Successes in a row that recover it.
    pub successes_to_recover: u32,
    /// A check failing again within this time of recovering reopens its incident.
    pub flap_window: Duration,
}

/// An incident as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    id: String,
    check: String,
    open: bool,
    first_seen_ms: i64,
    last_changed_ms: i64,
    recovered_at_ms: Option<i64>,
    occurrences: u32,
    evidence: Vec<String>,
    actions: Vec<String>,
}

impl Record {
    fn to_proto(&self) -> Incident {
        Incident {
            id: self.id.clone(),
            check: self.check.clone(),
            state: if self.open {
                IncidentState::Open
            } else {
                IncidentState::Recovered
            }
            .into(),
            severity: Severity::Critical.into(),
            first_seen: Some(timestamp(self.first_seen_ms)),
            last_changed: Some(timestamp(self.last_changed_ms)),
            recovered_at: self.recovered_at_ms.map(timestamp),
            occurrences: self.occurrences,
            evidence: self.evidence.clone(),
            actions: self.actions.clone(),
        }
    }

    fn add_evidence(&mut self, at_ms: i64, line: &str) {
        self.evidence
            .push(format!("{} {line}", rfc3339_seconds(at_ms)));
        if self.evidence.len() > MAX_EVIDENCE {
            let excess = self.evidence.len() - MAX_EVIDENCE;
            self.evidence.drain(..excess);
        }
    }
}

/// Something for the database writer to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An incident, whole.
    Incident(Record),
    /// A proposal awaiting (or past) an operator's decision, whole.
    Proposal(Proposal),
}

impl Change {
    /// Later changes of the same thing replace earlier ones.
    fn key(&self) -> (bool, String) {
        match self {
            Self::Incident(record) => (false, record.id.clone()),
            Self::Proposal(proposal) => (true, proposal.id.clone()),
        }
    }
}

/// What the database held when the doctor started.
#[derive(Debug, Default)]
pub struct History {
    /// The newest incidents, oldest first.
    pub incidents: Vec<Record>,
    /// Every pending proposal and the newest decided ones, oldest first.
    pub proposals: Vec<Proposal>,
}

#[derive(Debug, Clone, Default)]
struct CheckState {
    failures: u32,
    successes: u32,
    observed: bool,
    health: DaemonHealth,
    detail: String,
    last_observed_ms: i64,
    open_incident: Option<String>,
}

/// Every check's state and the incidents: what the watch loop updates and the API reads.
#[derive(Debug)]
pub struct Book {
    thresholds: Thresholds,
    checks: BTreeMap<String, CheckState>,
    /// Oldest first.
    incidents: Vec<Record>,
    events: broadcast::Sender<IncidentEvent>,
    /// Oldest first.
    proposals: Vec<Proposal>,
    /// Proposals an Approve or Deny is deciding right now, so that a second waits its turn.
    deciding: Vec<String>,
    writes: mpsc::UnboundedSender<Change>,
}

impl Book {
    /// A book of `checks` (all unknown yet) over the `history` loaded from disk; changed
    /// incidents go to `writes`.
    pub fn new(
        thresholds: Thresholds,
        checks: &[String],
        history: History,
        writes: mpsc::UnboundedSender<Change>,
    ) -> Self {
        let History {
            incidents: history,
            proposals,
        } = history;
        let mut states: BTreeMap<String, CheckState> = checks
            .iter()
            .map(|check| (check.clone(), CheckState::default()))
            .collect();
        // An incident still open when the doctor stopped stays open until its check recovers.
        for record in history.iter().filter(|record| record.open) {
            if let Some(state) = states.get_mut(&record.check) {
                state.open_incident = Some(record.id.clone());
            }
        }
        let (events, _) = broadcast::channel(256);
        Self {
            thresholds,
            checks: states,
            incidents: history,
            events,
            proposals,
            deciding: Vec::new(),
            writes,
        }
    }

    /// Incident events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<IncidentEvent> {
        self.events.subscribe()
    }

    /// The id of `check`'s open incident, if it has one.
    pub fn open_incident(&self, check: &str) -> Option<String> {
        self.checks
            .get(check)
            .and_then(|state| state.open_incident.clone())
    }

    /// Whether `check` is one this book knows.
    pub fn knows(&self, check: &str) -> bool {
        self.checks.contains_key(check)
    }

    /// Counts `observation` and opens, reopens or recovers an incident when it tips a
    /// threshold.
    pub fn observe(&mut self, observation: &Observation) {
        let at_ms = unix_ms(observation.at);
        let thresholds = self.thresholds;
        // Provider checks come and go with the router's configuration, unit checks with what
        // systemd has loaded.
        if observation.check.starts_with(crate::providers::PREFIX)
            || observation.check.starts_with(crate::units::PREFIX)
        {
            self.checks.entry(observation.check.clone()).or_default();
        }
        let Some(state) = self.checks.get_mut(&observation.check) else {
            return;
        };
        let detail_changed = state.detail != observation.detail;
        state.observed = true;
        state.health = observation.health;
        state.detail.clone_from(&observation.detail);
        state.last_observed_ms = at_ms;
        if observation.ok {
            state.successes = state.successes.saturating_add(1);
            state.failures = 0;
            if state.successes >= thresholds.successes_to_recover
                && let Some(id) = state.open_incident.take()
                && let Some(record) = self.incidents.iter_mut().find(|record| record.id == id)
            {
                record.open = false;
                record.recovered_at_ms = Some(at_ms);
                record.last_changed_ms = at_ms;
                record.add_evidence(
                    at_ms,
                    &format!("recovered after {} successful checks", state.successes),
                );
                tracing::info!(incident = %record.id, check = %record.check, "recovered");
                let record = record.clone();
                self.publish(IncidentEventKind::Recovered, &record);
            }
            return;
        }
        state.failures = state.failures.saturating_add(1);
        state.successes = 0;
        if let Some(id) = &state.open_incident {
            if detail_changed
                && let Some(record) = self.incidents.iter_mut().find(|record| &record.id == id)
            {
                record.add_evidence(at_ms, &observation.detail);
                record.last_changed_ms = at_ms;
                let _ = self.writes.send(Change::Incident(record.clone()));
            }
            return;
        }
        if state.failures < thresholds.failures_to_open {
            return;
        }
        let flap_window_ms = i64::try_from(thresholds.flap_window.as_millis()).unwrap_or(i64::MAX);
        let recent = self.incidents.iter_mut().rev().find(|record| {
            record.check == observation.check
                && !record.open
                && record
                    .recovered_at_ms
                    .is_some_and(|recovered| at_ms - recovered <= flap_window_ms)
        });
        let failures = state.failures;
        let (kind, record) = if let Some(record) = recent {
            record.open = true;
            record.recovered_at_ms = None;
            record.occurrences += 1;
            record.last_changed_ms = at_ms;
            record.add_evidence(
                at_ms,
                &format!(
                    "failing again ({failures} in a row): {}",
                    observation.detail
                ),
            );
            (IncidentEventKind::Reopened, record.clone())
        } else {
            let mut record = Record {
                id: uuid::Uuid::now_v7().to_string(),
                check: observation.check.clone(),
                open: true,
                first_seen_ms: at_ms,
                last_changed_ms: at_ms,
                recovered_at_ms: None,
                occurrences: 1,
                evidence: Vec::new(),
                actions: Vec::new(),
            };
            record.add_evidence(
                at_ms,
                &format!("failing ({failures} in a row): {}", observation.detail),
            );
            self.incidents.push(record.clone());
            if self.incidents.len() > MAX_INCIDENTS_IN_MEMORY {
                let excess = self.incidents.len() - MAX_INCIDENTS_IN_MEMORY;
                self.incidents.drain(..excess);
            }
            (IncidentEventKind::Opened, record)
        };
        state.open_incident = Some(record.id.clone());
        tracing::warn!(incident = %record.id, check = %record.check, detail = %observation.detail, occurrences = record.occurrences, "incident");
        self.publish(kind, &record);
    }

    fn publish(&self, kind: IncidentEventKind, record: &Record) {
        // The database copy is written later by the writer; the watch loop never waits for it.
        let _ = self.writes.send(Change::Incident(record.clone()));
        let _ = self.events.send(IncidentEvent {
            kind: kind.into(),
            incident: Some(record.to_proto()),
        });
    }

    /// Writes what was done about incident `id`.
    pub fn record_action(&mut self, id: &str, line: &str) {
        let now = unix_ms(SystemTime::now());
        if let Some(record) = self.incidents.iter_mut().find(|record| record.id == id) {
            record
                .actions
                .push(format!("{} {line}", rfc3339_seconds(now)));
            if record.actions.len() > MAX_EVIDENCE {
                let excess = record.actions.len() - MAX_EVIDENCE;
                record.actions.drain(..excess);
            }
            record.last_changed_ms = now;
            let _ = self.writes.send(Change::Incident(record.clone()));
        }
    }

    /// Proposes `action` on `target` for incident `incident_id`, to wait for an operator;
    /// `None` when the same is already waiting.
    pub fn propose(
        &mut self,
        incident_id: &str,
        action: Action,
        target: &str,
        reason: &str,
    ) -> Option<Proposal> {
        if self.proposals.iter().any(|proposal| {
            proposal.state == PendingState::Pending
                && proposal.action == action
                && proposal.target == target
        }) {
            return None;
        }
        let proposal = Proposal {
            id: uuid::Uuid::now_v7().to_string(),
            incident_id: incident_id.to_owned(),
            action,
            target: target.to_owned(),
            reason: reason.to_owned(),
            proposed_ms: unix_ms(SystemTime::now()),
            state: PendingState::Pending,
            decided_by: String::new(),
            decided_ms: None,
            outcome: String::new(),
        };
        self.proposals.push(proposal.clone());
        let _ = self.writes.send(Change::Proposal(proposal.clone()));
        self.record_action(
            incident_id,
            &format!(
                "asked an operator to approve: {} (synosctl doctor approve {})",
                proposal.describe(),
                proposal.id
            ),
        );
        Some(proposal)
    }

    /// The pending proposals and, with `include_decided`, the newest decided ones; oldest
    /// first.
    pub fn proposals(&self, include_decided: bool) -> Vec<PendingAction> {
        self.proposals
            .iter()
            .filter(|proposal| include_decided || proposal.state == PendingState::Pending)
            .map(Proposal::to_proto)
            .collect()
    }

    /// Takes pending proposal `id` for a decision, which must end with [`Self::decide`] or
    /// [`Self::release`]. NOT_FOUND for an unknown id, FAILED_PRECONDITION when it was already
    /// decided or is being decided.
    pub fn claim(&mut self, id: &str) -> Result<Proposal, tonic::Status> {
        let proposal = self.pending(id)?;
        self.deciding.push(id.to_owned());
        Ok(proposal)
    }

    /// Pending proposal `id`, left unclaimed (to authorize its decision before claiming it);
    /// the errors of [`Self::claim`].
    pub fn pending(&self, id: &str) -> Result<Proposal, tonic::Status> {
        let proposal = self
            .proposals
            .iter()
            .find(|proposal| proposal.id == id)
            .ok_or_else(|| tonic::Status::not_found(format!("no pending action {id:?}")))?;
        if proposal.state != PendingState::Pending {
            return Err(tonic::Status::failed_precondition(format!(
                "pending action {id} was already decided: {} by {}",
                crate::approvals::state_name(proposal.state),
                proposal.decided_by
            )));
        }
        if self.deciding.iter().any(|deciding| deciding == id) {
            return Err(tonic::Status::failed_precondition(format!(
                "pending action {id} is being decided by another call"
            )));
        }
        Ok(proposal.clone())
    }

    /// Gives a claimed proposal back undecided (its decision was refused).
    pub fn release(&mut self, id: &str) {
        self.deciding.retain(|deciding| deciding != id);
    }

    /// Records how claimed proposal `id` was decided, and writes it into its incident.
    pub fn decide(
        &mut self,
        id: &str,
        state: PendingState,
        decided_by: &str,
        outcome: &str,
    ) -> Option<PendingAction> {
        self.release(id);
        let now = unix_ms(SystemTime::now());
        let proposal = self
            .proposals
            .iter_mut()
            .find(|proposal| proposal.id == id)?;
        proposal.state = state;
        decided_by.clone_into(&mut proposal.decided_by);
        proposal.decided_ms = Some(now);
        outcome.clone_into(&mut proposal.outcome);
        let proposal = proposal.clone();
        let _ = self.writes.send(Change::Proposal(proposal.clone()));
        // Decided ones stay in the database; memory keeps the newest.
        let decided = self
            .proposals
            .iter()
            .filter(|kept| kept.state != PendingState::Pending)
            .count();
        let mut excess = decided.saturating_sub(DECIDED_LISTED);
        self.proposals.retain(|kept| {
            if excess > 0 && kept.state != PendingState::Pending {
                excess -= 1;
                return false;
            }
            true
        });
        let verdict = match state {
            PendingState::Denied => "denied",
            _ => "approved",
        };
        self.record_action(
            &proposal.incident_id,
            &format!(
                "{} {verdict} by {decided_by}: {outcome}",
                proposal.describe()
            ),
        );
        Some(proposal.to_proto())
    }

    /// Why the system is in survival mode: every remote provider down (with at least one
    /// configured), a daemon's unit still failed after the doctor's restarts (an operator is
    /// asked to approve the next), or a resource critical: memory, its pressure, a watched
    /// disk. Empty when it is not.
    pub fn survival_reasons(&self) -> Vec<String> {
        let critical = |state: &CheckState| state.open_incident.is_some();
        let mut reasons = Vec::new();
        let providers: Vec<&CheckState> = self
            .checks
            .iter()
            .filter(|(name, _)| name.starts_with(crate::providers::PREFIX))
            .map(|(_, state)| state)
            .collect();
        if !providers.is_empty() && providers.iter().all(|state| critical(state)) {
            reasons.push(format!(
                "every remote LLM provider is down ({}): only the local model answers",
                providers.len()
            ));
        }
        for (check, state) in &self.checks {
            let Some(incident) = &state.open_incident else {
                continue;
            };
            if check == "memory"
                || check == "pressure:memory"
                || check.starts_with(crate::resources::DISK_PREFIX)
            {
                reasons.push(format!("{check} critical: {}", state.detail));
            } else if let Some(unit) = check.strip_prefix(crate::units::PREFIX)
                && let Some(proposal) = self.proposals.iter().find(|proposal| {
                    proposal.state == PendingState::Pending
                        && proposal.action == Action::RestartUnit
                        && &proposal.incident_id == incident
                })
            {
                reasons.push(format!(
                    "{unit} stays failed after the doctor's restarts: restarting it waits for an operator (synosctl doctor approve {})",
                    proposal.id
                ));
            }
        }
        reasons
    }

    /// Every check, by name.
    pub fn check_reports(&self) -> Vec<CheckReport> {
        self.checks
            .iter()
            .map(|(name, state)| self.check_report(name, state))
            .collect()
    }

    /// One check's report, or `None` for an unknown name.
    pub fn check(&self, name: &str) -> Option<CheckReport> {
        self.checks
            .get(name)
            .map(|state| self.check_report(name, state))
    }

    fn check_report(&self, name: &str, state: &CheckState) -> CheckReport {
        let status = if !state.observed {
            CheckStatus::Unknown
        } else if state.open_incident.is_some() {
            CheckStatus::Critical
        } else if state.failures > 0 {
            CheckStatus::Failing
        } else {
            CheckStatus::Ok
        };
        CheckReport {
            name: name.to_owned(),
            status: status.into(),
            detail: state.detail.clone(),
            consecutive_failures: state.failures,
            consecutive_successes: state.successes,
            last_observed: state.observed.then(|| timestamp(state.last_observed_ms)),
        }
    }

    /// A daemon check's last health and detail.
    pub fn daemon_health(&self, check: &str) -> (DaemonHealth, String) {
        self.checks.get(check).map_or_else(
            || (DaemonHealth::Unspecified, String::new()),
            |state| (state.health, state.detail.clone()),
        )
    }

    /// Incidents, newest first.
    pub fn incidents(&self, open_only: bool, limit: usize) -> Vec<Incident> {
        self.incidents
            .iter()
            .rev()
            .filter(|record| record.open || !open_only)
            .take(limit)
            .map(Record::to_proto)
            .collect()
    }

    /// One line for `STATUS=`.
    pub fn summary(&self) -> String {
        let survival = self.survival_reasons();
        let line = self.incident_summary();
        if survival.is_empty() {
            line
        } else {
            format!("SURVIVAL: {}; {line}", survival.join("; "))
        }
    }

    fn incident_summary(&self) -> String {
        let open: Vec<&Record> = self.incidents.iter().filter(|record| record.open).collect();
        let watching = self.checks.len();
        match open.as_slice() {
            [] => format!("serving; {watching} checks, no open incident"),
            [only] => format!(
                "serving; DEGRADED: open incident on {} since {}",
                only.check,
                rfc3339_seconds(only.first_seen_ms)
            ),
            many => format!(
                "serving; DEGRADED: {} open incidents: {}",
                many.len(),
                many.iter()
                    .map(|record| record.check.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The shared book.
pub type SharedBook = Arc<Mutex<Book>>;

/// The incident database, opened.
pub struct Store {
    connection: SqliteConnection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, String> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let problem = |reason: String| format!("incident database {}: {reason}", path.display());
        let mut connection = SqliteConnection::connect_with(&options)
            .await
            .map_err(|error| problem(error.to_string()))?;
        let application_id: i64 = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&mut connection)
            .await
            .map_err(|error| problem(format!("damaged: {error}")))?;
        if application_id != 0 && application_id != APPLICATION_ID {
            return Err(problem(format!(
                "not a SynOS doctor database (application id {application_id:#x}); refusing to use it"
            )));
        }
        MIGRATIONS.run(&mut connection).await.map_err(|error| {
            problem(format!("its schema cannot be brought up to date: {error}"))
        })?;
        Ok(Self { connection })
    }

    /// The newest incidents and the proposals worth keeping in memory, oldest first.
    pub async fn load(&mut self) -> Result<History, String> {
        let incidents = self.load_incidents().await?;
        let proposals = self.load_proposals().await?;
        Ok(History {
            incidents,
            proposals,
        })
    }

    async fn load_proposals(&mut self) -> Result<Vec<Proposal>, String> {
        let rows = sqlx::query(
            "SELECT id, incident_id, action, target, reason, proposed_ms, state, decided_by, \
             decided_ms, outcome FROM pending_actions WHERE state = 'pending' OR id IN \
             (SELECT id FROM pending_actions WHERE state != 'pending' \
             ORDER BY proposed_ms DESC, id DESC LIMIT ?) ORDER BY proposed_ms, id",
        )
        .bind(i64::try_from(DECIDED_LISTED).unwrap_or(i64::MAX))
        .fetch_all(&mut self.connection)
        .await
        .map_err(|error| format!("cannot read pending actions: {error}"))?;
        rows.iter()
            .map(|row| -> Result<Proposal, String> {
                let read = |error: sqlx::Error| format!("cannot read pending actions: {error}");
                crate::approvals::from_row(
                    row.try_get("id").map_err(read)?,
                    row.try_get("incident_id").map_err(read)?,
                    row.try_get::<&str, _>("action").map_err(read)?,
                    row.try_get("target").map_err(read)?,
                    row.try_get("reason").map_err(read)?,
                    row.try_get("proposed_ms").map_err(read)?,
                    row.try_get::<&str, _>("state").map_err(read)?,
                    row.try_get("decided_by").map_err(read)?,
                    row.try_get("decided_ms").map_err(read)?,
                    row.try_get("outcome").map_err(read)?,
                )
            })
            .collect()
    }

    async fn load_incidents(&mut self) -> Result<Vec<Record>, String> {
        let rows = sqlx::query(
            "SELECT id, check_name, state, first_seen_ms, last_changed_ms, recovered_at_ms, \
             occurrences, evidence, actions FROM incidents ORDER BY first_seen_ms DESC, id DESC LIMIT ?",
        )
        .bind(i64::try_from(MAX_INCIDENTS_IN_MEMORY).unwrap_or(i64::MAX))
        .fetch_all(&mut self.connection)
        .await
        .map_err(|error| format!("cannot read incidents: {error}"))?;
        let mut records = rows
            .iter()
            .map(|row| -> Result<Record, sqlx::Error> {
                let evidence: String = row.try_get("evidence")?;
                let actions: String = row.try_get("actions")?;
                Ok(Record {
                    id: row.try_get("id")?,
                    check: row.try_get("check_name")?,
                    open: row.try_get::<String, _>("state")? == "open",
                    first_seen_ms: row.try_get("first_seen_ms")?,
                    last_changed_ms: row.try_get("last_changed_ms")?,
                    recovered_at_ms: row.try_get("recovered_at_ms")?,
                    occurrences: u32::try_from(row.try_get::<i64, _>("occurrences")?)
                        .unwrap_or(u32::MAX),
                    evidence: serde_json::from_str(&evidence).unwrap_or_default(),
                    actions: serde_json::from_str(&actions).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("cannot read incidents: {error}"))?;
        records.reverse();
        Ok(records)
    }

    async fn save(&mut self, changes: &[Change]) -> Result<(), sqlx::Error> {
        let mut transaction = self.connection.begin().await?;
        for change in changes {
            let record = match change {
                Change::Incident(record) => record,
                Change::Proposal(proposal) => {
                    sqlx::query(
                        "INSERT INTO pending_actions (id, incident_id, action, target, reason, \
                         proposed_ms, state, decided_by, decided_ms, outcome) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                         ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                         decided_by = excluded.decided_by, decided_ms = excluded.decided_ms, \
                         outcome = excluded.outcome",
                    )
                    .bind(&proposal.id)
                    .bind(&proposal.incident_id)
                    .bind(proposal.action.name())
                    .bind(&proposal.target)
                    .bind(&proposal.reason)
                    .bind(proposal.proposed_ms)
                    .bind(crate::approvals::state_name(proposal.state))
                    .bind(&proposal.decided_by)
                    .bind(proposal.decided_ms)
                    .bind(&proposal.outcome)
                    .execute(&mut *transaction)
                    .await?;
                    continue;
                }
            };
            sqlx::query(
                "INSERT INTO incidents (id, check_name, state, severity, first_seen_ms, \
                 last_changed_ms, recovered_at_ms, occurrences, evidence, actions) \
                 VALUES (?, ?, ?, 'critical', ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                 last_changed_ms = excluded.last_changed_ms, \
                 recovered_at_ms = excluded.recovered_at_ms, \
                 occurrences = excluded.occurrences, evidence = excluded.evidence, \
                 actions = excluded.actions",
            )
            .bind(&record.id)
            .bind(&record.check)
            .bind(if record.open { "open" } else { "recovered" })
            .bind(record.first_seen_ms)
            .bind(record.last_changed_ms)
            .bind(record.recovered_at_ms)
            .bind(i64::from(record.occurrences))
            .bind(serde_json::to_string(&record.evidence).unwrap_or_else(|_| "[]".to_owned()))
            .bind(serde_json::to_string(&record.actions).unwrap_or_else(|_| "[]".to_owned()))
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await
    }
}

/// Writes changed incidents and proposals as they come, coalescing by id; a failed write keeps
/// them and is tried again, with the problem in `problem` (and so in `STATUS=`) until it
/// succeeds.
pub async fn write_incidents(
    mut store: Option<Store>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    problem: Arc<Mutex<Option<String>>>,
    shutdown: synos_common::Shutdown,
) {
    let mut dirty: BTreeMap<(bool, String), Change> = BTreeMap::new();
    loop {
        let stopping = tokio::select! {
            change = changes.recv() => match change {
                Some(change) => { dirty.insert(change.key(), change); false }
                None => true,
            },
            () = tokio::time::sleep(WRITE_RETRY), if !dirty.is_empty() => false,
            () = shutdown.cancelled() => true,
        };
        while let Ok(change) = changes.try_recv() {
            dirty.insert(change.key(), change);
        }
        if let Some(store) = &mut store
            && !dirty.is_empty()
        {
            let pending: Vec<Change> = dirty.values().cloned().collect();
            let outcome = store.save(&pending).await;
            let mut current = problem
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match outcome {
                Ok(()) => {
                    dirty.clear();
                    if current.take().is_some() {
                        tracing::info!("incidents are written again");
                    }
                }
                Err(error) => {
                    let message = format!(
                        "{} incident change(s) not yet written: {error}",
                        pending.len()
                    );
                    if current.is_none() {
                        tracing::error!(%message, "incident database");
                    }
                    *current = Some(message);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// The incidents of one kind of check as they open or reopen: what a repair listens to.
pub struct Openings {
    events: broadcast::Receiver<IncidentEvent>,
    prefix: &'static str,
}

/// One opened or reopened incident, as [`Openings`] gives it.
pub struct Opening {
    /// The incident.
    pub incident: Incident,
    /// Its check, less the prefix: the provider, unit or path it is about.
    pub subject: String,
    /// Whether it opened again after it had recovered.
    pub reopened: bool,
}

impl Openings {
    /// Incidents of checks named `prefix…` that open or reopen from now on.
    pub fn new(book: &SharedBook, prefix: &'static str) -> Self {
        let events = book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .subscribe();
        Self { events, prefix }
    }

    /// The next opening; `None` once `shutdown` is cancelled or the book is gone. A repair
    /// that falls behind skips what it missed rather than repair from stale news.
    pub async fn next(
        &mut self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<Opening> {
        loop {
            let event = tokio::select! {
                event = self.events.recv() => event,
                () = shutdown.cancelled() => return None,
            };
            let event = match event {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let reopened = match event.kind() {
                IncidentEventKind::Opened => false,
                IncidentEventKind::Reopened => true,
                _ => continue,
            };
            let Some(incident) = event.incident else {
                continue;
            };
            let Some(subject) = incident.check.strip_prefix(self.prefix) else {
                continue;
            };
            let subject = subject.to_owned();
            return Some(Opening {
                incident,
                subject,
                reopened,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn book() -> (Book, mpsc::UnboundedReceiver<Change>) {
        let (writes, written) = mpsc::unbounded_channel();
        let book = Book::new(
            Thresholds {
                failures_to_open: 2,
                successes_to_recover: 2,
                flap_window: Duration::from_secs(600),
            },
            &["daemon:synos-memory".to_owned()],
            History::default(),
            writes,
        );
        (book, written)
    }

    fn seen(ok: bool, seconds: u64, detail: &str) -> Observation {
        Observation {
            check: "daemon:synos-memory".to_owned(),
            ok,
            health: if ok {
                DaemonHealth::Serving
            } else {
                DaemonHealth::Unreachable
            },
            detail: detail.to_owned(),
            at: UNIX_EPOCH + Duration::from_secs(seconds),
        }
    }

    #[test]
    fn hysteresis_opens_recovers_and_a_flap_reopens_the_same_incident() {
        let (mut book, mut written) = book();
        book.observe(&seen(false, 1, "no socket"));
        assert!(
            book.incidents(false, 10).is_empty(),
            "one failure is not an incident"
        );
        book.observe(&seen(true, 2, ""));
        book.observe(&seen(false, 3, "no socket"));
        assert!(
            book.incidents(false, 10).is_empty(),
            "the success reset the count"
        );
        book.observe(&seen(false, 4, "no socket"));
        let opened = book.incidents(true, 10);
        assert_eq!(opened.len(), 1);
        assert_eq!(
            book.check("daemon:synos-memory").unwrap().status(),
            CheckStatus::Critical
        );
        book.observe(&seen(true, 5, ""));
        assert_eq!(
            book.incidents(true, 10).len(),
            1,
            "one success does not recover"
        );
        book.observe(&seen(true, 6, ""));
        assert!(book.incidents(true, 10).is_empty());
        // Down again within the window: the same incident, twice now.
        book.observe(&seen(false, 7, "refused"));
        book.observe(&seen(false, 8, "refused"));
        let all = book.incidents(false, 10);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, opened[0].id);
        assert_eq!(
            (all[0].state(), all[0].occurrences),
            (IncidentState::Open, 2)
        );
        assert!(
            all[0]
                .evidence
                .iter()
                .any(|line| line.contains("failing again"))
        );
        let mut writes = 0;
        while written.try_recv().is_ok() {
            writes += 1;
        }
        assert_eq!(writes, 3, "opened, recovered, reopened");
    }

    #[test]
    fn after_the_window_a_failure_is_a_new_incident() {
        let (mut book, _written) = book();
        for (ok, second) in [(false, 1), (false, 2), (true, 3), (true, 4)] {
            book.observe(&seen(ok, second, "down"));
        }
        book.observe(&seen(false, 1000, "down"));
        book.observe(&seen(false, 1001, "down"));
        assert_eq!(book.incidents(false, 10).len(), 2);
        assert!(
            book.summary()
                .contains("DEGRADED: open incident on daemon:synos-memory")
        );
    }

    #[test]
    fn survival_needs_every_remote_provider_down_a_unit_given_up_or_a_critical_resource() {
        let (writes, _written) = mpsc::unbounded_channel();
        let mut book = Book::new(
            Thresholds {
                failures_to_open: 1,
                successes_to_recover: 1,
                flap_window: Duration::from_secs(600),
            },
            &["memory", "disk:/var/lib/synos", "unit:synos-memory.service"].map(str::to_owned),
            History::default(),
            writes,
        );
        let see = |check: &str, ok: bool| Observation {
            check: check.to_owned(),
            ok,
            health: DaemonHealth::Unspecified,
            detail: if ok { "fine" } else { "down" }.to_owned(),
            at: UNIX_EPOCH,
        };
        book.observe(&see("provider:a", false));
        book.observe(&see("provider:b", true));
        assert!(book.survival_reasons().is_empty(), "one of two is still up");
        book.observe(&see("provider:b", false));
        assert_eq!(
            book.survival_reasons(),
            ["every remote LLM provider is down (2): only the local model answers"]
        );
        book.observe(&see("provider:a", true));
        book.observe(&see("memory", false));
        assert_eq!(book.survival_reasons(), ["memory critical: down"]);
        assert!(
            book.summary()
                .starts_with("SURVIVAL: memory critical: down; ")
        );
        book.observe(&see("memory", true));
        assert!(book.survival_reasons().is_empty());

        book.observe(&see("disk:/var/lib/synos", false));
        assert_eq!(
            book.survival_reasons(),
            ["disk:/var/lib/synos critical: down"]
        );
        book.observe(&see("disk:/var/lib/synos", true));

        // A failed unit is not survival while the doctor still restarts it; it is once the
        // doctor has given up and asks an operator, and no longer once it runs again.
        let unit = "unit:synos-memory.service";
        book.observe(&see(unit, false));
        assert!(book.survival_reasons().is_empty(), "still being restarted");
        let incident = book.open_incident(unit).unwrap();
        let proposal = book
            .propose(
                &incident,
                Action::RestartUnit,
                "synos-memory.service",
                "failed again",
            )
            .unwrap();
        assert_eq!(
            book.survival_reasons(),
            [format!(
                "synos-memory.service stays failed after the doctor's restarts: restarting it waits for an operator (synosctl doctor approve {})",
                proposal.id
            )]
        );
        book.observe(&see(unit, true));
        assert!(book.survival_reasons().is_empty());
    }

    #[tokio::test]
    async fn a_proposal_waits_once_is_decided_once_and_is_kept() {
        let directory = tempfile::tempdir().unwrap();
        let mut store = Store::open(&database_path(directory.path())).await.unwrap();
        let (mut book, mut written) = book();
        book.observe(&seen(false, 1, "down"));
        book.observe(&seen(false, 2, "down"));
        let incident = book.incidents(true, 1).remove(0).id;
        let proposal = book
            .propose(&incident, Action::DrainProvider, "remote", "failed again")
            .unwrap();
        assert!(
            book.propose(&incident, Action::DrainProvider, "remote", "failed again")
                .is_none(),
            "the same action waits once"
        );
        assert_eq!(book.proposals(false).len(), 1);

        book.claim(&proposal.id).unwrap();
        let twice = book.claim(&proposal.id).unwrap_err();
        assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
        book.release(&proposal.id);
        book.claim(&proposal.id).unwrap();
        let decided = book
            .decide(
                &proposal.id,
                PendingState::Denied,
                "User::\"root\"",
                "denied: no",
            )
            .unwrap();
        assert_eq!(decided.state(), PendingState::Denied);
        assert_eq!(
            book.claim(&proposal.id).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            book.claim("unknown").unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert!(book.proposals(false).is_empty());
        assert_eq!(book.proposals(true), std::slice::from_ref(&decided));
        let actions = &book.incidents(true, 1)[0].actions;
        assert!(
            actions[0].contains("asked an operator to approve: drain provider remote")
                && actions[1]
                    .contains("drain provider remote denied by User::\"root\": denied: no"),
            "{actions:?}"
        );

        let changes: Vec<Change> = std::iter::from_fn(|| written.try_recv().ok()).collect();
        store.save(&changes).await.unwrap();
        let history = store.load().await.unwrap();
        assert_eq!(
            history
                .proposals
                .iter()
                .map(Proposal::to_proto)
                .collect::<Vec<_>>(),
            [decided]
        );
    }

    #[tokio::test]
    async fn incidents_survive_in_the_database_and_a_foreign_one_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(directory.path());
        let mut store = Store::open(&path).await.unwrap();
        let (mut book, mut written) = book();
        book.observe(&seen(false, 1, "down"));
        book.observe(&seen(false, 2, "down"));
        let record = written.try_recv().unwrap();
        store.save(std::slice::from_ref(&record)).await.unwrap();
        drop(store);
        let mut reopened = Store::open(&path).await.unwrap();
        assert_eq!(
            reopened
                .load()
                .await
                .unwrap()
                .incidents
                .into_iter()
                .map(Change::Incident)
                .collect::<Vec<_>>(),
            [record]
        );

        let foreign = directory.path().join("foreign.db");
        let mut other = SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(&foreign)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::query("PRAGMA application_id = 7")
            .execute(&mut other)
            .await
            .unwrap();
        drop(other);
        let refused = Store::open(&foreign).await.unwrap_err();
        assert!(refused.contains("not a SynOS doctor database"), "{refused}");
    }
}
