//! The watched daemons' systemd units as checks (`unit:synos-memory.service`), read over D-Bus
//! every interval: ActiveState, SubState, Result and NRestarts. A unit that failed, or waits to
//! be restarted after a crash, fails its check; the restart count goes into the evidence. Only
//! where systemd runs (`/run/systemd/system`, as sd_booted(3) tests it) and only for units
//! systemd has loaded; while the bus cannot be reached nothing is observed and the reason is
//! logged once, so the watch goes on without D-Bus.
//!
//! A unit systemd gave up on (failed, its own restarts spent) is restarted by the doctor with
//! exponential back-off, each restart written into the unit's incident; past the limit in the
//! window the doctor stops and asks an operator to approve the next one. Policy is asked before
//! each restart, and so audits it. PID 1 lets the
//! doctor's user do this for `synos-*` units only, through the polkit rule the package ships.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use synos_proto::doctor::v1::DaemonHealth;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

use crate::approvals::Action;
use crate::incidents::{Observation, SharedBook};

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
    /// Queues a restart job (mode "replace"); its object path.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Forgets the unit's failed state and its start-rate count.
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
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
    /// The job queued for the unit: id 0 when none.
    #[zbus(property)]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
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
    /// Whether a job (a start, a restart) is queued for it.
    pub job_queued: bool,
}

impl UnitState {
    /// Whether systemd gave up on the unit: failed, or (a socket-activated service whose
    /// restarts hit the start limit, which fails its socket instead) stopped after a crash
    /// rather than by an operator, whose stop leaves the result "success", with no job queued
    /// (an automatic restart passes through that state too, its job queued).
    pub fn given_up(&self) -> bool {
        self.active == "failed"
            || (self.active == "inactive" && self.result != "success" && !self.job_queued)
    }

    /// The observation of `unit` in this state: failing when systemd gave up on it or is
    /// about to restart it after a crash.
    pub fn observation(&self, unit: &str, at: SystemTime) -> Observation {
        let ok = !self.given_up() && self.sub != "auto-restart";
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
        job_queued: unit_proxy.job().await?.0 != 0,
    }))
}

/// Asks systemd to restart `unit` (after forgetting that it, and its socket, failed); what
/// was done, or why it could not be.
pub async fn restart(unit: &str, timeout: Duration) -> Result<String, String> {
    let restarting = async {
        let connection = zbus::Connection::system().await?;
        let manager = ManagerProxy::new(&connection).await?;
        manager.reset_failed_unit(unit).await?;
        if let Some(socket) = unit.strip_suffix(".service") {
            // The socket unit fails with its service when systemd gives up; no socket, no harm.
            let _ = manager.reset_failed_unit(&format!("{socket}.socket")).await;
        }
        manager.restart_unit(unit, "replace").await
    };
    match tokio::time::timeout(timeout, restarting).await {
        Ok(Ok(job)) => Ok(format!(
            "asked systemd to restart {unit} (job {})",
            job.as_str()
        )),
        Ok(Err(error)) => Err(format!("systemd refused to restart {unit}: {error}")),
        Err(_) => Err(format!(
            "systemd did not answer a restart of {unit} within {} ms",
            timeout.as_millis()
        )),
    }
}

/// How far the doctor restarts a failed unit on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// Restarts of one unit within `window` before it asks an operator instead.
    pub restarts: u32,
    /// The window.
    pub window: Duration,
    /// Wait before the first restart; doubled before each next one.
    pub backoff: Duration,
}

/// The doctor's restarts of failed units: the limits, and the book the incidents are in.
#[derive(Debug, Clone)]
pub struct Restarts {
    /// Where the unit's incident is and actions and proposals go.
    pub book: SharedBook,
    /// The policy daemon, asked before each restart (which audits it).
    pub policy: std::path::PathBuf,
    /// How far it goes on its own.
    pub limits: RestartLimits,
}

/// What to do about a unit seen failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Not yet: back-off.
    Wait,
    /// Restart it now; this is restart number `.0` in the window.
    Restart(u32),
    /// The limit is reached: ask an operator.
    GiveUp,
}

/// One unit's history with the doctor.
#[derive(Debug, Default)]
struct UnitRestarts {
    /// When the doctor restarted it, within the window.
    done: Vec<Instant>,
    /// Since when it has been seen failed this time: the back-off counts from there.
    failed_since: Option<Instant>,
    /// The incident an operator was asked about, so it is asked once.
    proposed_for: Option<String>,
}

impl UnitRestarts {
    /// The decision at `now` for a unit seen failed.
    fn next(&mut self, limits: RestartLimits, now: Instant) -> Next {
        self.done
            .retain(|restarted| now.duration_since(*restarted) < limits.window);
        let done = u32::try_from(self.done.len()).unwrap_or(u32::MAX);
        if done >= limits.restarts {
            return Next::GiveUp;
        }
        let failed_since = *self.failed_since.get_or_insert(now);
        let wait = limits.backoff.saturating_mul(1_u32 << done.min(16));
        if now.duration_since(failed_since) < wait {
            return Next::Wait;
        }
        self.done.push(now);
        self.failed_since = None;
        Next::Restart(done + 1)
    }
}

impl Restarts {
    /// Acts on `unit` seen in `state`: restarts it (after its back-off) when systemd gave up
    /// on it and its incident is open, or asks an operator once past the limit.
    async fn consider(
        &self,
        history: &mut HashMap<String, UnitRestarts>,
        unit: &str,
        state: &UnitState,
        timeout: Duration,
    ) {
        let entry = history.entry(unit.to_owned()).or_default();
        if !state.given_up() {
            entry.failed_since = None;
            return;
        }
        let check = format!("{PREFIX}{unit}");
        let Some(incident) = self.book().open_incident(&check) else {
            return;
        };
        let limits = self.limits;
        match entry.next(limits, Instant::now()) {
            Next::Wait => {}
            Next::Restart(number) => {
                let allowed = crate::approvals::authorize_repair(
                    &self.policy,
                    timeout,
                    Action::RestartUnit.name(),
                    unit,
                )
                .await;
                let line = match allowed {
                    Err(refused) => format!("did not restart {unit}: {refused}"),
                    Ok(unaudited) => match restart(unit, timeout).await {
                        Ok(done) => format!(
                            "{done}: restart {number} of {} the doctor makes within {} s{unaudited}",
                            limits.restarts,
                            limits.window.as_secs()
                        ),
                        Err(problem) => problem,
                    },
                };
                tracing::info!(%incident, %line, "action");
                self.book().record_action(&incident, &line);
            }
            Next::GiveUp => {
                if entry.proposed_for.as_deref() == Some(incident.as_str()) {
                    return;
                }
                entry.proposed_for = Some(incident.clone());
                let proposed = self.book().propose(
                    &incident,
                    Action::RestartUnit,
                    unit,
                    &format!(
                        "{unit} failed again after the doctor restarted it {} times within {} s",
                        limits.restarts,
                        limits.window.as_secs()
                    ),
                );
                if let Some(proposal) = proposed {
                    tracing::warn!(%incident, pending = %proposal.id, "asking an operator to approve: {}", proposal.describe());
                }
            }
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, crate::incidents::Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Observes each of `units` every `interval` over the system bus.
pub async fn watch_units(
    units: Vec<String>,
    interval: Duration,
    timeout: Duration,
    observations: mpsc::Sender<Observation>,
    restarts: Option<Restarts>,
    shutdown: CancellationToken,
) {
    let mut history = HashMap::new();
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
                    if let Some(restarts) = &restarts {
                        restarts.consider(&mut history, unit, &state, timeout).await;
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
    fn failed_units_are_restarted_with_doubling_back_off_then_handed_to_an_operator() {
        let limits = RestartLimits {
            restarts: 3,
            window: Duration::from_secs(100),
            backoff: Duration::from_secs(2),
        };
        let mut unit = UnitRestarts::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(unit.next(limits, at(0)), Next::Wait, "first seen failed");
        assert_eq!(unit.next(limits, at(1)), Next::Wait);
        assert_eq!(unit.next(limits, at(2)), Next::Restart(1));
        // Failed again: 4 s after it is seen failed, then 8 s.
        assert_eq!(unit.next(limits, at(3)), Next::Wait);
        assert_eq!(unit.next(limits, at(6)), Next::Wait);
        assert_eq!(unit.next(limits, at(7)), Next::Restart(2));
        assert_eq!(unit.next(limits, at(8)), Next::Wait);
        assert_eq!(unit.next(limits, at(15)), Next::Wait);
        assert_eq!(unit.next(limits, at(16)), Next::Restart(3));
        assert_eq!(unit.next(limits, at(17)), Next::GiveUp);
        assert_eq!(unit.next(limits, at(90)), Next::GiveUp);
        // Restarts that left the window no longer count: at 110 those at 2 and 7 have, so
        // the back-off (from 102, when it was seen failed again) is 4 s for the one left.
        assert_eq!(unit.next(limits, at(102)), Next::Wait);
        assert_eq!(unit.next(limits, at(110)), Next::Restart(2));
        // Seen failed again at 111, with restarts at 16 and 110 in the window: 8 s.
        assert_eq!(unit.next(limits, at(111)), Next::Wait);
        assert_eq!(unit.next(limits, at(115)), Next::Wait);
        // At 118 the restart at 16 has left as well: 4 s from 111 have passed.
        assert_eq!(unit.next(limits, at(118)), Next::Restart(2));
    }

    #[test]
    fn a_crashed_or_failed_unit_fails_its_check_with_its_restarts_as_evidence() {
        let state = |active: &str, sub: &str, result: &str, restarts| UnitState {
            active: active.to_owned(),
            sub: sub.to_owned(),
            result: result.to_owned(),
            restarts,
            job_queued: false,
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
        // Killed, and its restart refused at the start limit (its socket failed instead).
        assert!(
            !state("inactive", "dead", "signal", 5)
                .observation("x", at)
                .ok
        );
        // Killed, on its way through an automatic restart.
        let restarting = UnitState {
            job_queued: true,
            ..state("inactive", "dead", "signal", 2)
        };
        assert!(restarting.observation("x", at).ok);
    }
}
