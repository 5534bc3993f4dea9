//! The systemd service protocol: readiness, status line, watchdog, stopping and reloading.
//!
//! Every call is a no-op when the daemon is not run by systemd (`NOTIFY_SOCKET` unset).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "could not notify the service manager");
    }
}

/// Tells systemd the daemon serves: only call once every listener accepts connections.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is draining and will exit.
pub fn notify_stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining in-flight calls"),
    ]);
}

/// Brackets a configuration reload (`ExecReload=` sends SIGHUP).
pub fn notify_reloading() {
    notify(&[NotifyState::Reloading]);
}

/// Ends a reload started with [`notify_reloading`].
pub fn notify_reloaded() {
    notify(&[NotifyState::Ready]);
}

/// The daemon's one-line human summary, shared by `STATUS=` and `Admin.GetInfo`.
#[derive(Debug, Clone, Default)]
pub struct StatusLine(Arc<RwLock<String>>);

impl StatusLine {
    /// A status line with an initial text (not sent to systemd until [`Self::set`] or readiness).
    pub fn new(initial: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(initial.into())))
    }

    /// Replaces the summary and sends it to systemd as `STATUS=` when it changed.
    pub fn set(&self, line: impl Into<String>) {
        let line = line.into();
        let mut current = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != line {
            notify(&[NotifyState::Status(&line)]);
            *current = line;
        }
    }

    /// The current summary.
    pub fn get(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Pings the watchdog at half of `WATCHDOG_USEC` until `shutdown`, if systemd asked for it.
/// The pings run on the daemon's own runtime, so a wedged runtime stops them and systemd acts.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (timeout / 2).max(Duration::from_millis(1));
    tracing::debug!(?period, "watchdog enabled");
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = interval.tick() => notify(&[NotifyState::Watchdog]),
                () = shutdown.cancelled() => break,
            }
        }
    });
}
