//! The doctor: checks the health of every other SynOS daemon over its socket, keeps `STATUS=`
//! current, and serves `synos.doctor.v1.Doctor`.

mod checks;
mod service;

use std::time::Duration;

use serde::Deserialize;
use synos_common::config::{LogConfig, Problem, ServerConfig, Settings};
use synos_common::identity::ALL_DAEMONS;
use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::doctor::v1::doctor_server::DoctorServer;

pub use checks::{Watched, check_all};

/// The doctor's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "doctor",
    binary: "synos-doctor",
    version: env!("CARGO_PKG_VERSION"),
};

/// `/etc/synos/doctor.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and limits.
    pub server: ServerConfig,
    /// Log filter.
    pub log: LogConfig,
    /// What to watch and how often.
    pub watch: WatchConfig,
}

/// The `[watch]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Short names of the daemons to watch (e.g. "memory"); sockets follow the runtime directory.
    pub daemons: Vec<String>,
    /// How often the background check runs.
    pub interval_ms: u64,
    /// How long one daemon may take to answer a check.
    pub check_timeout_ms: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            daemons: ALL_DAEMONS
                .iter()
                .map(|(short_name, _)| (*short_name).to_owned())
                .filter(|short_name| short_name != IDENTITY.short_name)
                .collect(),
            interval_ms: 5000,
            check_timeout_ms: 1000,
        }
    }
}

impl Settings for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (index, name) in self.watch.daemons.iter().enumerate() {
            if !ALL_DAEMONS.iter().any(|(short_name, _)| short_name == name)
                || name == IDENTITY.short_name
            {
                problems.push(Problem::new(
                    format!("watch.daemons.{index}"),
                    "not a daemon the doctor can watch (llm-router, memory, hwaccel, policy)",
                ));
            }
        }
        if !(100..=3_600_000).contains(&self.watch.interval_ms) {
            problems.push(Problem::new(
                "watch.interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        if !(10..=60_000).contains(&self.watch.check_timeout_ms) {
            problems.push(Problem::new(
                "watch.check_timeout_ms",
                "must be between 10 and 60000",
            ));
        }
        problems
    }
}

/// Watches and serves until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let watched: Vec<Watched> = config
        .settings
        .watch
        .daemons
        .iter()
        .filter_map(|name| {
            ALL_DAEMONS
                .iter()
                .find(|(short_name, _)| short_name == name)
        })
        .map(|(short_name, binary)| Watched {
            binary,
            socket: config.directories.socket_path(short_name),
        })
        .collect();
    let timeout = Duration::from_millis(config.settings.watch.check_timeout_ms);
    let interval = Duration::from_millis(config.settings.watch.interval_ms);
    let status = StatusLine::new(format!("serving; watching {} daemons", watched.len()));
    tokio::spawn(checks::keep_status_current(
        watched.clone(),
        timeout,
        interval,
        status.clone(),
        shutdown.clone(),
    ));
    let doctor = DoctorServer::new(service::DoctorService::new(watched, timeout))
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    GrpcServer::new(status)
        .add_service(doctor)
        .serve(&config, shutdown)
        .await?;
    Ok(())
}
