//! The process around a daemon: configuration, logging, runtime, signals and exit status.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, DaemonArgs, DaemonConfig, Reloads, Settings};
use crate::exit;
use crate::identity::DaemonIdentity;
use crate::listener::ListenError;
use crate::systemd;

/// Why a daemon's `run` returned with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Listeners could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The daemon could not start for a reason of its own.
    #[error("{message}")]
    Startup {
        /// What went wrong, one line.
        message: String,
        /// The process exit status to report.
        exit_code: u8,
    },
}

impl DaemonError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Listen(error) => error.exit_code(),
            Self::Startup { exit_code, .. } => *exit_code,
        }
    }
}

/// Runs a daemon process: loads and validates its configuration (`--check-config` stops there),
/// starts logging and the async runtime, turns SIGTERM/SIGINT into `shutdown`, handles SIGHUP,
/// and maps the outcome of `run(config, shutdown)` to the exit status. `command` is the
/// daemon's command-line definition, from which `--manual-page` renders its manual page.
pub fn main<S, Run, Running>(
    identity: DaemonIdentity,
    command: fn() -> clap::Command,
    args: &DaemonArgs,
    run: Run,
) -> ExitCode
where
    S: Settings,
    Run: FnOnce(DaemonConfig<S>, CancellationToken) -> Running,
    Running: Future<Output = Result<(), DaemonError>>,
{
    if args.manual_page {
        let page = crate::manual::daemon_page(&command(), identity, S::APPLIES_RELOADS);
        return match std::io::Write::write_all(&mut std::io::stdout(), page.source.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{}: cannot write the manual page: {error}", identity.binary);
                ExitCode::from(exit::FAILURE)
            }
        };
    }
    let mut config = match config::load::<S>(identity, args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", identity.binary);
            return ExitCode::from(exit::CONFIG);
        }
    };
    if args.check_config {
        eprintln!(
            "{}: configuration is valid ({})",
            identity.binary, config.source
        );
        return ExitCode::SUCCESS;
    }
    crate::telemetry::init(identity, &config.settings.log().filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(identity.binary)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let shutdown = CancellationToken::new();
    let (reload_sender, reloads) = Reloads::channel();
    config.reloads = reloads;
    let result = runtime.block_on(async {
        if let Err(error) =
            spawn_signal_handlers::<S>(identity, args.clone(), reload_sender, shutdown.clone())
        {
            tracing::error!(%error, "cannot install signal handlers");
            return Err(DaemonError::Startup {
                message: error.to_string(),
                exit_code: exit::SOFTWARE,
            });
        }
        run(config, shutdown).await
    });
    // Whatever still runs after the drain (long-lived streams) is cut here.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{}: {error}", identity.binary);
            ExitCode::from(error.exit_code())
        }
    }
}

fn spawn_signal_handlers<S: Settings>(
    identity: DaemonIdentity,
    args: DaemonArgs,
    reloads: watch::Sender<Option<Arc<S>>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
                _ = hangup.recv() => {
                    reload_config::<S>(identity, &args, &reloads);
                    continue;
                }
            }
            if shutdown.is_cancelled() {
                tracing::warn!("second stop signal: exiting without waiting for the drain");
                std::process::exit(i32::from(exit::FAILURE));
            }
            tracing::info!("stop requested: draining");
            shutdown.cancel();
        }
    });
    Ok(())
}

/// SIGHUP: re-reads and validates the configuration, so an operator learns at once whether an
/// edit is good. A valid one goes to daemons that apply reloads (`Settings::APPLIES_RELOADS`);
/// the rest apply changes on restart, and say so. An invalid one is logged and never applied.
fn reload_config<S: Settings>(
    identity: DaemonIdentity,
    args: &DaemonArgs,
    reloads: &watch::Sender<Option<Arc<S>>>,
) {
    systemd::notify_reloading();
    match config::load::<S>(identity, args) {
        Ok(config) if S::APPLIES_RELOADS => {
            tracing::info!(config = %config.source, "SIGHUP: configuration reloaded");
            reloads.send_replace(Some(Arc::new(config.settings)));
        }
        Ok(config) => {
            tracing::info!(config = %config.source, "SIGHUP: configuration is valid; changes apply on restart");
        }
        Err(error) => {
            tracing::error!("SIGHUP: new configuration rejected, running one kept: {error}");
        }
    }
    systemd::notify_reloaded();
}
