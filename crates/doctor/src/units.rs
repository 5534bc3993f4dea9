//! The watched daemons' systemd units as checks (`unit:synos-memory.service`), read over D-Bus
//! every interval: ActiveState, SubState, Result and NRestarts. A unit that failed, or waits to
//! be restarted after a crash, fails its check; the restart count goes into the evidence. Only
//! where systemd runs (`/run/systemd/system`, as sd_booted(3) tests it) and only for units
//! systemd has loaded; while the bus cannot be reached nothing is observed and the reason is
//! logged once, so the watch goes on without D-Bus.

use std::time::{Duration, SystemTime};

use synos_proto::doctor::v1::DaemonHealth;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

use crate::incidents::Observation;

/// The prefix of unit checks.
pub const PREFIX: &str = "unit:";

/// Whether systemd is the init system here.
pub fn systemd_booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// The unit's object path, loading it if needed (LoadState says whether it exists).
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property, name = "NRestarts")]
    fn restarts(&self) -> zbus::Result<u32>;
}

/// One unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// "active", "failed", "activating"…
    pub active: String,
    /// "running", "auto-restart", "dead"…
    pub sub: String,
    /// "success", "signal", "exit-code"…
    pub result: String,
    /// Restarts systemd made since the unit was last started by hand.
    pub restarts: u32,
}

impl UnitState {
    /// The observation of `unit` in this state: failing when systemd gave up on it or is
    /// about to restart it after a crash.
    pub fn observation(&self, unit: &str, at: SystemTime) -> Observation {
        let ok = self.active != "failed" && self.sub != "auto-restart";
        Observation {
            check: format!("{PREFIX}{unit}"),
            ok,
            health: DaemonHealth::Unspecified,
            detail: format!(
                "{} ({}), result {}, {} restart{}",
                self.active,
                self.sub,
                self.result,
                self.restarts,
                if self.restarts == 1 { "" } else { "s" }
            ),
            at,
        }
    }
}

/// The state of `unit`, `None` when systemd has no such unit.
async fn read(connection: &zbus::Connection, unit: &str) -> zbus::Result<Option<UnitState>> {
    let path = ManagerProxy::new(connection).await?.load_unit(unit).await?;
    let unit_proxy = UnitProxy::builder(connection)
        .path(path.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    if unit_proxy.load_state().await? != "loaded" {
        return Ok(None);
    }
    let service = ServiceProxy::builder(connection)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    Ok(Some(UnitState {
        active: unit_proxy.active_state().await?,
        sub: unit_proxy.sub_state().await?,
        result: service.result().await?,
        restarts: service.restarts().await?,
    }))
}

/// Observes each of `units` every `interval` over the system bus.
pub async fn watch_units(
    units: Vec<String>,
    interval: Duration,
    timeout: Duration,
    observations: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<zbus::Connection> = None;
    let mut bus_problem: Option<String> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if connection.is_none() {
            match tokio::time::timeout(timeout, zbus::Connection::system()).await {
                Ok(Ok(connected)) => {
                    if bus_problem.take().is_some() {
                        tracing::info!("the system bus is back: unit states are watched again");
                    }
                    connection = Some(connected);
                }
                Ok(Err(error)) => note_bus_problem(&mut bus_problem, error.to_string()),
                Err(_) => note_bus_problem(
                    &mut bus_problem,
                    format!("no connection within {} ms", timeout.as_millis()),
                ),
            }
        }
        let Some(bus) = &connection else {
            continue;
        };
        for unit in &units {
            match tokio::time::timeout(timeout, read(bus, unit)).await {
                Ok(Ok(Some(state))) => {
                    let observation = state.observation(unit, SystemTime::now());
                    if observations.send(observation).await.is_err() {
                        return;
                    }
                }
                // Not installed as a unit here (a development run): nothing to watch.
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    note_bus_problem(&mut bus_problem, error.to_string());
                    connection = None;
                    break;
                }
                Err(_) => {
                    note_bus_problem(
                        &mut bus_problem,
                        format!("systemd did not answer within {} ms", timeout.as_millis()),
                    );
                    connection = None;
                    break;
                }
            }
        }
    }
}

/// Logs a problem with the bus once, until it is solved.
fn note_bus_problem(current: &mut Option<String>, problem: String) {
    if current.is_none() {
        tracing::warn!(%problem, "cannot read unit states over the system bus; the other checks go on");
    }
    *current = Some(problem);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashed_or_failed_unit_fails_its_check_with_its_restarts_as_evidence() {
        let state = |active: &str, sub: &str, result: &str, restarts| UnitState {
            active: active.to_owned(),
            sub: sub.to_owned(),
            result: result.to_owned(),
            restarts,
        };
        let at = SystemTime::UNIX_EPOCH;
        let running =
            state("active", "running", "success", 0).observation("synos-memory.service", at);
        assert!(running.ok);
        assert_eq!(running.check, "unit:synos-memory.service");
        assert_eq!(
            running.detail,
            "active (running), result success, 0 restarts"
        );
        let restarting = state("activating", "auto-restart", "signal", 3)
            .observation("synos-memory.service", at);
        assert!(!restarting.ok);
        assert_eq!(
            restarting.detail,
            "activating (auto-restart), result signal, 3 restarts"
        );
        assert!(
            !state("failed", "failed", "start-limit-hit", 5)
                .observation("x", at)
                .ok
        );
        // Stopped by an operator: not a failure of the unit.
        assert!(
            state("inactive", "dead", "success", 1)
                .observation("x", at)
                .ok
        );
    }
}
