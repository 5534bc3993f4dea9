//! `synosctl doctor`: the doctor's report, its incidents and its queue of actions awaiting
//! approval.

use serde_json::{Value, json};
use synos_common::exit;
use synos_proto::doctor::v1::doctor_client::DoctorClient;
use synos_proto::doctor::v1::{
    ApproveRequest, CheckStatus, DaemonHealth, DenyRequest, GetReportRequest, Incident,
    ListIncidentsRequest, ListPendingRequest, OverallState, PendingAction, PendingState,
};

use crate::Cli;
use crate::commands::{CommandResult, connect};
use crate::output::{emit, emit_json, enum_value, table, timestamp_text};

fn lower(name: &str, prefix: &str) -> String {
    enum_value(name, prefix).to_ascii_lowercase()
}

fn incident_json(incident: &Incident) -> Value {
    json!({
        "id": incident.id,
        "check": incident.check,
        "state": lower(incident.state().as_str_name(), "INCIDENT_STATE_"),
        "severity": lower(incident.severity().as_str_name(), "SEVERITY_"),
        "first_seen": timestamp_text(incident.first_seen.as_ref()),
        "last_changed": timestamp_text(incident.last_changed.as_ref()),
        "recovered_at": incident.recovered_at.as_ref().map(|time| timestamp_text(Some(time))),
        "occurrences": incident.occurrences,
        "evidence": incident.evidence,
        "actions": incident.actions,
    })
}

fn incident_rows(incidents: &[Incident]) -> String {
    let rows: Vec<Vec<String>> = incidents
        .iter()
        .map(|incident| {
            vec![
                incident.id.clone(),
                incident.check.clone(),
                lower(incident.state().as_str_name(), "INCIDENT_STATE_"),
                timestamp_text(incident.first_seen.as_ref()),
                incident.occurrences.to_string(),
                incident.evidence.last().cloned().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "INCIDENT",
            "CHECK",
            "STATE",
            "FIRST SEEN",
            "TIMES",
            "LAST EVIDENCE",
        ],
        &rows,
    )
}

/// Why the doctor says the system is in survival mode; empty when it is not, or when the doctor
/// cannot say (its own line in `synosctl status` tells that).
pub(crate) async fn survival_reasons(cli: &Cli) -> Vec<String> {
    let Ok(connection) = connect(cli, "doctor").await else {
        return Vec::new();
    };
    let report = tokio::time::timeout(
        cli.timeout,
        DoctorClient::new(connection.channel.clone()).get_report(GetReportRequest {}),
    )
    .await;
    match report {
        Ok(Ok(report)) => report.into_inner().survival_reasons,
        _ => Vec::new(),
    }
}

/// `synosctl doctor report`: exit 0 when ok, 1 otherwise.
pub(crate) async fn report(cli: &Cli, as_json: bool) -> CommandResult {
    let connection = connect(cli, "doctor").await?;
    let mut doctor = DoctorClient::new(connection.channel.clone());
    let report = doctor
        .get_report(GetReportRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let state = lower(report.state().as_str_name(), "OVERALL_STATE_");
    let health =
        |health: DaemonHealth| enum_value(health.as_str_name(), "DAEMON_HEALTH_").to_owned();
    let status = |status: CheckStatus| lower(status.as_str_name(), "CHECK_STATUS_");
    if as_json {
        emit_json(&json!({
            "state": state,
            "daemons": report.daemons.iter().map(|daemon| json!({
                "daemon": daemon.name, "socket": daemon.socket,
                "health": health(daemon.health()), "detail": daemon.detail,
            })).collect::<Vec<_>>(),
            "checks": report.checks.iter().map(|check| json!({
                "check": check.name, "status": status(check.status()), "detail": check.detail,
                "consecutive_failures": check.consecutive_failures,
                "consecutive_successes": check.consecutive_successes,
                "last_observed": timestamp_text(check.last_observed.as_ref()),
            })).collect::<Vec<_>>(),
            "open_incidents": report.open_incidents.iter().map(incident_json).collect::<Vec<_>>(),
            "survival_reasons": report.survival_reasons,
        }));
    } else {
        let daemons: Vec<Vec<String>> = report
            .daemons
            .iter()
            .map(|daemon| {
                vec![
                    daemon.name.clone(),
                    health(daemon.health()),
                    daemon.detail.clone(),
                ]
            })
            .collect();
        let mut text = format!("state: {state}\n");
        for reason in &report.survival_reasons {
            text.push_str(&format!("survival: {reason}\n"));
        }
        text.push_str(&table(&["DAEMON", "HEALTH", "DETAIL"], &daemons));
        if !report.open_incidents.is_empty() {
            text.push_str("\n\nopen incidents:\n");
            text.push_str(&incident_rows(&report.open_incidents));
        }
        emit(&text);
    }
    Ok(if report.state() == OverallState::Ok {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// `synosctl doctor incidents`.
pub(crate) async fn incidents(
    cli: &Cli,
    open_only: bool,
    limit: u32,
    as_json: bool,
) -> CommandResult {
    let connection = connect(cli, "doctor").await?;
    let mut doctor = DoctorClient::new(connection.channel.clone());
    let incidents = doctor
        .list_incidents(ListIncidentsRequest { open_only, limit })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner()
        .incidents;
    if as_json {
        emit_json(&Value::Array(incidents.iter().map(incident_json).collect()));
    } else if incidents.is_empty() {
        emit(if open_only {
            "no open incidents"
        } else {
            "no incidents"
        });
    } else {
        emit(&incident_rows(&incidents));
    }
    Ok(exit::OK)
}

fn pending_json(action: &PendingAction) -> Value {
    json!({
        "id": action.id,
        "incident": action.incident_id,
        "action": action.action,
        "target": action.target,
        "reason": action.reason,
        "proposed": timestamp_text(action.proposed.as_ref()),
        "state": lower(action.state().as_str_name(), "PENDING_STATE_"),
        "decided_by": action.decided_by,
        "decided": action.decided.as_ref().map(|time| timestamp_text(Some(time))),
        "outcome": action.outcome,
    })
}

/// `synosctl doctor pending`.
pub(crate) async fn pending(cli: &Cli, include_decided: bool, as_json: bool) -> CommandResult {
    let connection = connect(cli, "doctor").await?;
    let actions = DoctorClient::new(connection.channel.clone())
        .list_pending(ListPendingRequest { include_decided })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner()
        .actions;
    if as_json {
        emit_json(&Value::Array(actions.iter().map(pending_json).collect()));
    } else if actions.is_empty() {
        emit("no actions await approval");
    } else {
        let rows: Vec<Vec<String>> = actions
            .iter()
            .map(|action| {
                vec![
                    action.id.clone(),
                    format!("{} {}", action.action, action.target),
                    lower(action.state().as_str_name(), "PENDING_STATE_"),
                    timestamp_text(action.proposed.as_ref()),
                    if action.outcome.is_empty() {
                        action.reason.clone()
                    } else {
                        action.outcome.clone()
                    },
                ]
            })
            .collect();
        emit(&table(
            &["ID", "ACTION", "STATE", "PROPOSED", "REASON OR OUTCOME"],
            &rows,
        ));
    }
    Ok(exit::OK)
}

/// `synosctl doctor approve` (no `deny_reason`) and `synosctl doctor deny`: exit 1 when an
/// approved action failed.
pub(crate) async fn decide(
    cli: &Cli,
    id: &str,
    deny_reason: Option<&str>,
    as_json: bool,
) -> CommandResult {
    let connection = connect(cli, "doctor").await?;
    let mut doctor = DoctorClient::new(connection.channel.clone());
    let decided = match deny_reason {
        None => doctor.approve(ApproveRequest { id: id.to_owned() }).await,
        Some(reason) => {
            doctor
                .deny(DenyRequest {
                    id: id.to_owned(),
                    reason: reason.to_owned(),
                })
                .await
        }
    }
    .map_err(|status| connection.call_failed(&status))?
    .into_inner();
    if as_json {
        emit_json(&pending_json(&decided));
    } else {
        emit(&format!(
            "{} {}: {}",
            decided.action, decided.target, decided.outcome
        ));
    }
    Ok(if decided.state() == PendingState::Failed {
        exit::FAILURE
    } else {
        exit::OK
    })
}
