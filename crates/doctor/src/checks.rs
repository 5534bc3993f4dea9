//! Health checks of the watched daemons over their sockets.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use synos_common::client;
use synos_common::systemd::StatusLine;
use synos_proto::doctor::v1::{DaemonHealth, DaemonReport, OverallState};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

/// A daemon the doctor watches.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Its binary name, e.g. "synos-memory".
    pub binary: &'static str,
    /// Its socket.
    pub socket: PathBuf,
}

/// Checks every watched daemon at once; each gets `timeout`.
pub async fn check_all(
    watched: &[Watched],
    timeout: Duration,
) -> (OverallState, Vec<DaemonReport>) {
    let reports: Vec<DaemonReport> =
        join_all(watched.iter().map(|daemon| check_one(daemon, timeout))).await;
    let all_serving = reports
        .iter()
        .all(|report| report.health() == DaemonHealth::Serving);
    (
        if all_serving {
            OverallState::Ok
        } else {
            OverallState::Degraded
        },
        reports,
    )
}

async fn check_one(daemon: &Watched, timeout: Duration) -> DaemonReport {
    let (health, detail) = match client::connect(&daemon.socket, timeout).await {
        Err(error) => (DaemonHealth::Unreachable, error.to_string()),
        Ok(channel) => match client::health_status(channel, "", timeout).await {
            Ok(status) if status == ServingStatus::Serving.into() => {
                (DaemonHealth::Serving, String::new())
            }
            Ok(status) => (
                DaemonHealth::NotServing,
                format!("health check says {}", status.as_str_name()),
            ),
            Err(error) => (
                DaemonHealth::Unreachable,
                format!("health check failed: {}", error.message()),
            ),
        },
    };
    DaemonReport {
        name: daemon.binary.to_owned(),
        socket: daemon.socket.display().to_string(),
        health: health.into(),
        detail,
    }
}

/// Re-checks every `interval` and keeps the status line saying what the doctor sees.
pub(crate) async fn keep_status_current(
    watched: Vec<Watched>,
    timeout: Duration,
    interval: Duration,
    status: StatusLine,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (state, reports) = check_all(&watched, timeout).await;
        let line = if state == OverallState::Ok {
            format!("serving; all {} watched daemons serving", reports.len())
        } else {
            let down: Vec<&str> = reports
                .iter()
                .filter(|report| report.health() != DaemonHealth::Serving)
                .map(|report| report.name.as_str())
                .collect();
            format!("serving; DEGRADED: not serving: {}", down.join(", "))
        };
        status.set(line);
    }
}
