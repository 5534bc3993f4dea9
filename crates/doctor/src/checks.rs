//! Health of the watched daemons: a gRPC health `Watch` held open on each daemon's socket, so a
//! death is seen when its connection drops, not at the next poll; while it is down, a
//! reconnection every `retry`. Each outcome is an [`Observation`] for the incident book.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use synos_common::client;
use synos_proto::doctor::v1::DaemonHealth;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::incidents::Observation;

/// A daemon the doctor watches.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Its binary name, e.g. "synos-memory".
    pub binary: &'static str,
    /// Its socket.
    pub socket: PathBuf,
}

impl Watched {
    /// The name of its check, e.g. "daemon:synos-memory".
    pub fn check(&self) -> String {
        format!("daemon:{}", self.binary)
    }

    fn observation(&self, health: DaemonHealth, detail: String) -> Observation {
        Observation {
            check: self.check(),
            ok: health == DaemonHealth::Serving,
            health,
            detail,
            at: SystemTime::now(),
        }
    }
}

fn health_of(status: ServingStatus) -> (DaemonHealth, String) {
    if status == ServingStatus::Serving {
        (DaemonHealth::Serving, String::new())
    } else {
        (
            DaemonHealth::NotServing,
            format!("health says {}", status.as_str_name()),
        )
    }
}

/// Checks `daemon` once, within `timeout`.
pub(crate) async fn check_once(daemon: &Watched, timeout: Duration) -> Observation {
    let (health, detail) = match client::connect(&daemon.socket, timeout).await {
        Err(error) => (DaemonHealth::Unreachable, error.to_string()),
        Ok(channel) => match client::health_status(channel, "", timeout).await {
            Ok(status) => health_of(status),
            Err(error) => (
                DaemonHealth::Unreachable,
                format!("health check failed: {}", error.message()),
            ),
        },
    };
    daemon.observation(health, detail)
}

/// How the watcher paces itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// How long a connection or a first answer may take.
    pub(crate) timeout: Duration,
    /// While a daemon is up, its state is counted again this often (a held stream is
    /// evidence that it is alive), so an open incident can recover.
    pub(crate) heartbeat: Duration,
    /// While it is down, a reconnection this often.
    pub(crate) retry: Duration,
}

/// Watches `daemon` until `shutdown`, sending every observation to `observations`.
pub(crate) async fn watch_daemon(
    daemon: Watched,
    pacing: Pacing,
    observations: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let failure = match client::connect(&daemon.socket, pacing.timeout).await {
            Err(error) => daemon.observation(DaemonHealth::Unreachable, error.to_string()),
            Ok(channel) => follow(&daemon, channel, pacing, &observations, &shutdown).await,
        };
        if shutdown.is_cancelled() || observations.send(failure).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(pacing.retry) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Follows one health stream until it fails; returns the failure.
async fn follow(
    daemon: &Watched,
    channel: tonic::transport::Channel,
    pacing: Pacing,
    observations: &mpsc::Sender<Observation>,
    shutdown: &CancellationToken,
) -> Observation {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut client = HealthClient::new(channel);
    let opened = tokio::time::timeout(pacing.timeout, client.watch(request)).await;
    let mut stream = match opened {
        Err(_) => {
            return daemon.observation(
                DaemonHealth::Unreachable,
                format!("no health answer within {} ms", pacing.timeout.as_millis()),
            );
        }
        Ok(Err(status)) => {
            return daemon.observation(
                DaemonHealth::Unreachable,
                format!("health watch refused: {}", status.message()),
            );
        }
        Ok(Ok(response)) => response.into_inner(),
    };
    let mut last = None;
    let mut heartbeat = tokio::time::interval(pacing.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(response)) => {
                    let (health, detail) = health_of(response.status());
                    last = Some((health, detail.clone()));
                    if observations.send(daemon.observation(health, detail)).await.is_err() {
                        return daemon.observation(DaemonHealth::Unspecified, String::new());
                    }
                }
                Ok(None) => {
                    return daemon.observation(
                        DaemonHealth::Unreachable,
                        "its health stream ended (the daemon stopped)".to_owned(),
                    );
                }
                Err(status) => {
                    return daemon.observation(
                        DaemonHealth::Unreachable,
                        format!("connection lost: {}", status.message()),
                    );
                }
            },
            _ = heartbeat.tick() => {
                if let Some((health, detail)) = &last
                    && observations.send(daemon.observation(*health, detail.clone())).await.is_err()
                {
                    return daemon.observation(DaemonHealth::Unspecified, String::new());
                }
            }
            () = shutdown.cancelled() => {
                return daemon.observation(DaemonHealth::Unspecified, String::new());
            }
        }
    }
}
