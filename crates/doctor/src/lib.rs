//! The doctor: watches every other SynOS daemon's health over its socket, turns failures into
//! incidents (kept in SQLite across restarts), keeps `STATUS=` current, and serves
//! `synos.doctor.v1.Doctor`.

pub mod approvals;
mod checks;
pub mod cleanup;
pub mod incidents;
pub mod metrics;
mod peers;
pub mod providers;
pub mod resources;
mod service;
pub mod tier;
pub mod units;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use synos_common::config::{LogConfig, Problem, ServerConfig, Settings};
use synos_common::identity::ALL_DAEMONS;
use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::doctor::v1::doctor_server::DoctorServer;

pub use checks::Watched;

use crate::incidents::{Book, History, Observation, Store, Thresholds};

/// The doctor's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "doctor",
    binary: "synos-doctor",
    version: env!("CARGO_PKG_VERSION"),
};

/// `/etc/synos/doctor.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and limits.
    pub server: ServerConfig,
    /// Log filter.
    pub log: LogConfig,
    /// What to watch and how often.
    pub watch: WatchConfig,
    /// The machine's resources.
    pub resources: ResourcesConfig,
    /// What the doctor repairs on its own.
    pub repairs: RepairsConfig,
    /// The host's Prometheus endpoint.
    pub metrics: MetricsConfig,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` serves the doctor's and every watched daemon's metrics when
    /// systemd passes no socket (under systemd, synos-doctor-metrics.socket owns it); "" for
    /// off. Loopback only.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9477".to_owned(),
        }
    }
}

impl MetricsConfig {
    /// The address to bind, `None` when off.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }
}

/// The `[repairs]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairsConfig {
    /// Cool a router provider in the router when its incident opens.
    pub cool_failing_providers: bool,
    /// For how long, in seconds.
    pub cool_for_s: u64,
    /// Ask an operator to approve draining a router provider whose incident reopens (it
    /// failed again after recovering): `synosctl doctor pending`.
    pub propose_draining_providers: bool,
    /// Restart a watched daemon's unit that systemd gave up on (failed), through D-Bus, with
    /// exponential back-off; past the limit, ask an operator to approve the next restart.
    pub restart_failed_units: bool,
    /// Restarts the doctor makes of one unit within `unit_restart_window_s` before it asks.
    pub unit_restarts: u32,
    /// The window, in seconds.
    pub unit_restart_window_s: u64,
    /// Wait before the first restart, in seconds; doubled before each next one.
    pub unit_restart_backoff_s: u64,
    /// When a watched file system's incident opens, delete files in those of
    /// `clean_directories` that are on it, oldest first, until it is back below its limits.
    pub clean_full_disks: bool,
    /// Directories whose content SynOS can rebuild, which the doctor may empty.
    pub clean_directories: Vec<std::path::PathBuf>,
}

impl Default for RepairsConfig {
    fn default() -> Self {
        Self {
            cool_failing_providers: true,
            cool_for_s: 300,
            propose_draining_providers: true,
            restart_failed_units: true,
            unit_restarts: 3,
            unit_restart_window_s: 900,
            unit_restart_backoff_s: 10,
            clean_full_disks: true,
            clean_directories: vec![std::path::PathBuf::from(CACHE_DIRECTORY)],
        }
    }
}

/// Where SynOS keeps what it can rebuild; the doctor owns it (tmpfiles.d) and may empty it
/// when its file system is full.
pub const CACHE_DIRECTORY: &str = "/var/cache/synos";

/// The `[resources]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesConfig {
    /// File systems to watch, by a path on each; unset: the state directory's, the runtime
    /// directory's and /var/log's.
    pub paths: Option<Vec<std::path::PathBuf>>,
    /// A file system this full (%) or more is critical.
    pub disk_used_percent: f64,
    /// Inodes this used (%) or more is critical.
    pub inodes_used_percent: f64,
    /// Less available memory than this (% of the total) is critical.
    pub memory_available_percent: f64,
    /// Memory pressure (PSI "full", 10 s average, %) at or above this is critical.
    pub memory_pressure_percent: f64,
    /// Where `/proc` is read from: "/" except to watch a tree mounted elsewhere.
    pub root: std::path::PathBuf,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        Self {
            paths: None,
            disk_used_percent: 95.0,
            inodes_used_percent: 95.0,
            memory_available_percent: 5.0,
            memory_pressure_percent: 20.0,
            root: std::path::PathBuf::from("/"),
        }
    }
}

/// The `[watch]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Short names of the daemons to watch (e.g. "memory"); sockets follow the runtime directory.
    pub daemons: Vec<String>,
    /// While a daemon is up, how often its state is counted again (its health stream is held
    /// open, so a death is seen at once regardless).
    pub interval_ms: u64,
    /// While a daemon is down, how often the doctor tries to reach it again.
    pub retry_ms: u64,
    /// How long one daemon may take to answer a check.
    pub check_timeout_ms: u64,
    /// Failures in a row that open an incident.
    pub failures_to_open: u32,
    /// Successes in a row that recover it.
    pub successes_to_recover: u32,
    /// A check failing again within this many seconds of recovering reopens its incident
    /// rather than opening another.
    pub flap_window_s: u64,
    /// Where systemd runs, also read each watched daemon's unit over D-Bus (state, result,
    /// restarts) as the check `unit:<name>.service`.
    pub systemd_units: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            daemons: ALL_DAEMONS
                .iter()
                .map(|(short_name, _)| (*short_name).to_owned())
                .filter(|short_name| short_name != IDENTITY.short_name)
                .collect(),
            interval_ms: 1000,
            retry_ms: 500,
            check_timeout_ms: 1000,
            failures_to_open: 2,
            successes_to_recover: 2,
            flap_window_s: 600,
            systemd_units: true,
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
        if !(50..=3_600_000).contains(&self.watch.retry_ms) {
            problems.push(Problem::new(
                "watch.retry_ms",
                "must be between 50 and 3600000",
            ));
        }
        for (key, value) in [
            ("watch.failures_to_open", self.watch.failures_to_open),
            (
                "watch.successes_to_recover",
                self.watch.successes_to_recover,
            ),
        ] {
            if !(1..=1000).contains(&value) {
                problems.push(Problem::new(key, "must be between 1 and 1000"));
            }
        }
        let resources = &self.resources;
        for (key, value) in [
            ("resources.disk_used_percent", resources.disk_used_percent),
            (
                "resources.inodes_used_percent",
                resources.inodes_used_percent,
            ),
            (
                "resources.memory_available_percent",
                resources.memory_available_percent,
            ),
            (
                "resources.memory_pressure_percent",
                resources.memory_pressure_percent,
            ),
        ] {
            if !(0.0..=100.0).contains(&value) {
                problems.push(Problem::new(key, "must be a percentage, 0 to 100"));
            }
        }
        if !resources.root.is_absolute() {
            problems.push(Problem::new("resources.root", "must be an absolute path"));
        }
        if resources
            .paths
            .iter()
            .flatten()
            .any(|path| !path.is_absolute())
        {
            problems.push(Problem::new(
                "resources.paths",
                "every path must be absolute",
            ));
        }
        if !(1..=86_400).contains(&self.repairs.cool_for_s) {
            problems.push(Problem::new(
                "repairs.cool_for_s",
                "must be between 1 and 86400",
            ));
        }
        if !(1..=100).contains(&self.repairs.unit_restarts) {
            problems.push(Problem::new(
                "repairs.unit_restarts",
                "must be between 1 and 100",
            ));
        }
        if !(1..=7 * 86_400).contains(&self.repairs.unit_restart_window_s) {
            problems.push(Problem::new(
                "repairs.unit_restart_window_s",
                "must be between 1 and 604800 (a week)",
            ));
        }
        if !(1..=3_600).contains(&self.repairs.unit_restart_backoff_s) {
            problems.push(Problem::new(
                "repairs.unit_restart_backoff_s",
                "must be between 1 and 3600",
            ));
        }
        for (index, directory) in self.repairs.clean_directories.iter().enumerate() {
            // Two levels at least: "/" or "/var" emptied would be a disaster, not a repair.
            if !directory.is_absolute()
                || directory
                    .components()
                    .filter(|part| matches!(part, std::path::Component::Normal(_)))
                    .count()
                    < 2
                || directory
                    .components()
                    .any(|part| matches!(part, std::path::Component::ParentDir))
            {
                problems.push(Problem::new(
                    format!("repairs.clean_directories.{index}"),
                    "must be an absolute path two levels deep or more, without \"..\", such as \
                     /var/cache/synos",
                ));
            }
        }
        if !self.metrics.listen.is_empty() {
            match self.metrics.address() {
                None => problems.push(Problem::new(
                    "metrics.listen",
                    "must be an IP address and port such as 127.0.0.1:9477, or \"\" for off",
                )),
                Some(address) if !address.ip().is_loopback() => problems.push(Problem::new(
                    "metrics.listen",
                    "must be a loopback address (127.0.0.0/8 or ::1): daemons are not exposed \
                     to the network",
                )),
                Some(_) => {}
            }
        }
        if self.watch.flap_window_s > 7 * 86_400 {
            problems.push(Problem::new(
                "watch.flap_window_s",
                "must be at most 604800 (a week)",
            ));
        }
        problems
    }
}

/// Those of `directories` that neither hold nor lie in any of `kept` (the state, runtime and
/// configuration directories, the models), which a cleaning must never reach; each left out is logged.
fn cleanable(
    directories: &[std::path::PathBuf],
    kept: &[&std::path::Path],
) -> Vec<std::path::PathBuf> {
    directories
        .iter()
        .filter(|directory| {
            let holds = kept.iter().find(|kept| kept.starts_with(directory) || directory.starts_with(kept));
            if let Some(kept) = holds {
                tracing::error!(directory = %directory.display(), kept = %kept.display(), "not cleaning this directory on a full disk: it overlaps a directory SynOS keeps");
            }
            holds.is_none()
        })
        .cloned()
        .collect()
}

/// Watches and serves until `shutdown` is cancelled. An unusable state directory or database
/// leaves incidents in memory only, said in `STATUS=`; the watch goes on.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let settings = &config.settings.watch;
    let watched: Vec<Watched> = settings
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
    let pacing = checks::Pacing {
        timeout: Duration::from_millis(settings.check_timeout_ms),
        heartbeat: Duration::from_millis(settings.interval_ms),
        retry: Duration::from_millis(settings.retry_ms),
    };

    let resources = resources::Resources {
        root: config.settings.resources.root.clone(),
        paths: config.settings.resources.paths.clone().unwrap_or_else(|| {
            resources::default_paths(&config.directories.state, &config.directories.runtime)
        }),
        limits: resources::Limits {
            disk_used_percent: config.settings.resources.disk_used_percent,
            inodes_used_percent: config.settings.resources.inodes_used_percent,
            memory_available_percent: config.settings.resources.memory_available_percent,
            memory_pressure_percent: config.settings.resources.memory_pressure_percent,
        },
    };
    let mut checks: Vec<String> = watched.iter().map(Watched::check).collect();
    checks.extend(resources.check_names());
    let watches_hwaccel = settings.daemons.iter().any(|name| name == "hwaccel");
    if watches_hwaccel {
        checks.push(tier::CHECK.to_owned());
    }

    let store = match config.prepare_state_directory() {
        Err(problem) => Err(problem),
        Ok(directory) => Store::open(&incidents::database_path(&directory)).await,
    };
    let (store, history, storage_problem) = match store {
        Ok(mut store) => match store.load().await {
            Ok(history) => (Some(store), history, None),
            Err(problem) => (None, History::default(), Some(problem)),
        },
        Err(problem) => (None, History::default(), Some(problem)),
    };
    if let Some(problem) = &storage_problem {
        tracing::error!(%problem, "incidents are kept in memory only");
    }
    let (writes, changes) = tokio::sync::mpsc::unbounded_channel();
    let book = Arc::new(Mutex::new(Book::new(
        Thresholds {
            failures_to_open: settings.failures_to_open,
            successes_to_recover: settings.successes_to_recover,
            flap_window: Duration::from_secs(settings.flap_window_s),
        },
        &checks,
        history,
        writes,
    )));
    let write_problem = Arc::new(Mutex::new(None));
    let status = StatusLine::new(status_line(
        &book,
        storage_problem.as_deref(),
        &write_problem,
    ));

    let (doctor_metrics, registry) = metrics::DoctorMetrics::new();
    let registry = Arc::new(registry);
    let (observations, observed) = tokio::sync::mpsc::channel(256);
    let mut background = vec![tokio::spawn(incidents::write_incidents(
        store,
        changes,
        Arc::clone(&write_problem),
        shutdown.clone(),
    ))];
    for daemon in &watched {
        background.push(tokio::spawn(checks::watch_daemon(
            daemon.clone(),
            pacing,
            observations.clone(),
            shutdown.clone(),
        )));
    }
    let limits = resources.limits;
    background.push(tokio::spawn(resources::watch_resources(
        resources,
        pacing.heartbeat,
        observations.clone(),
        shutdown.clone(),
    )));
    if settings.systemd_units && units::systemd_booted() {
        let repairs = &config.settings.repairs;
        background.push(tokio::spawn(units::watch_units(
            watched
                .iter()
                .map(|daemon| format!("{}.service", daemon.binary))
                .collect(),
            pacing.heartbeat,
            pacing.timeout,
            observations.clone(),
            repairs.restart_failed_units.then(|| units::Restarts {
                book: Arc::clone(&book),
                policy: config.directories.socket_path("policy"),
                limits: units::RestartLimits {
                    restarts: repairs.unit_restarts,
                    window: Duration::from_secs(repairs.unit_restart_window_s),
                    backoff: Duration::from_secs(repairs.unit_restart_backoff_s),
                },
            }),
            shutdown.clone(),
        )));
    }
    if watches_hwaccel {
        background.push(tokio::spawn(tier::watch_tier(
            config.directories.socket_path("hwaccel"),
            pacing.heartbeat,
            pacing.timeout,
            observations.clone(),
            shutdown.clone(),
        )));
    }
    if settings.daemons.iter().any(|name| name == "llm-router") {
        let router = config.directories.socket_path("llm-router");
        background.push(tokio::spawn(providers::watch_providers(
            router.clone(),
            pacing.heartbeat,
            pacing.timeout,
            observations.clone(),
            shutdown.clone(),
        )));
        let repairs = &config.settings.repairs;
        if repairs.cool_failing_providers || repairs.propose_draining_providers {
            background.push(tokio::spawn(providers::repair_failing_providers(
                Arc::clone(&book),
                router,
                providers::Repairs {
                    policy: config.directories.socket_path("policy"),
                    cool_for: repairs
                        .cool_failing_providers
                        .then(|| Duration::from_secs(repairs.cool_for_s)),
                    propose_drain: repairs.propose_draining_providers,
                },
                pacing.timeout,
                shutdown.clone(),
            )));
        }
    }
    if config.settings.repairs.clean_full_disks {
        let directories = cleanable(
            &config.settings.repairs.clean_directories,
            &[
                &config.directories.state,
                &config.directories.runtime,
                &config.directories.config,
                &config.directories.models,
            ],
        );
        background.push(tokio::spawn(cleanup::clean_full_disks(
            cleanup::Cleanup {
                book: Arc::clone(&book),
                policy: config.directories.socket_path("policy"),
                directories,
                limits,
                timeout: pacing.timeout,
            },
            shutdown.clone(),
        )));
    }
    drop(observations);
    background.push(tokio::spawn(count_observations(
        observed,
        Arc::clone(&book),
        status.clone(),
        doctor_metrics,
        storage_problem,
        write_problem,
        pacing.heartbeat,
    )));
    let scrape = metrics::Scrape {
        registry: Arc::clone(&registry),
        daemons: watched
            .iter()
            .map(|daemon| (daemon.binary, daemon.socket.clone()))
            .collect(),
        timeout: pacing.timeout,
    };

    let doctor = DoctorServer::new(service::DoctorService {
        book,
        watched,
        timeout: pacing.timeout,
        peers: approvals::Peers {
            policy: config.directories.socket_path("policy"),
            router: config.directories.socket_path("llm-router"),
            timeout: pacing.timeout,
        },
    })
    .max_decoding_message_size(config.settings.server.max_message_bytes);
    let served = GrpcServer::new(status)
        .metrics(registry)
        .http(
            metrics::FD_NAME,
            config.settings.metrics.address(),
            metrics::app(scrape),
        )
        .add_service(doctor)
        .serve(&config, shutdown.clone())
        .await;
    shutdown.cancel();
    for task in background {
        let _ = task.await;
    }
    served?;
    Ok(())
}

/// The watch loop's consumer: every observation goes into the book, and `STATUS=` follows.
async fn count_observations(
    mut observed: tokio::sync::mpsc::Receiver<Observation>,
    book: incidents::SharedBook,
    status: StatusLine,
    metrics: metrics::DoctorMetrics,
    storage_problem: Option<String>,
    write_problem: Arc<Mutex<Option<String>>>,
    refresh: Duration,
) {
    let mut ticks = tokio::time::interval(refresh);
    let mut in_survival = false;
    loop {
        tokio::select! {
            observation = observed.recv() => match observation {
                Some(observation) => book
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .observe(&observation),
                None => return,
            },
            _ = ticks.tick() => {}
        }
        let survival = {
            let book = book
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            metrics.refresh(&book);
            book.survival_reasons()
        };
        if survival.is_empty() == in_survival {
            in_survival = !survival.is_empty();
            if in_survival {
                tracing::warn!(reasons = %survival.join("; "), "entering survival mode");
            } else {
                tracing::info!("leaving survival mode: the essentials are back");
            }
        }
        status.set(status_line(
            &book,
            storage_problem.as_deref(),
            &write_problem,
        ));
    }
}

fn status_line(
    book: &incidents::SharedBook,
    storage_problem: Option<&str>,
    write_problem: &Mutex<Option<String>>,
) -> String {
    let summary = book
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .summary();
    let writing = write_problem
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    match (storage_problem, writing) {
        (Some(problem), _) => {
            format!("{summary}; DEGRADED: {problem}; incidents kept in memory only")
        }
        (None, Some(problem)) => format!("{summary}; DEGRADED: {problem}"),
        (None, None) => summary,
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format as _, Toml};

    use super::*;

    /// The packaged file shows every key commented out with its built-in default.
    #[test]
    fn the_packaged_file_shows_the_built_in_defaults() {
        let shipped = include_str!("../../../packaging/config/doctor.toml");
        let uncommented =
            synos_common::config::uncommented_settings(shipped, &["socket", "tcp_listen", "paths"]);
        let config: Config = Figment::from(Toml::string(&uncommented))
            .extract()
            .unwrap_or_else(|error| panic!("{error}\n{uncommented}"));
        assert_eq!(config, Config::default());
        assert!(config.problems().is_empty());
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let mut config = Config::default();
        config.resources.disk_used_percent = 120.0;
        config.resources.paths = Some(vec!["relative".into()]);
        config.watch.failures_to_open = 0;
        config.metrics.listen = "0.0.0.0:9477".to_owned();
        // Relative, too shallow (emptying /var would be a disaster) and climbing out: only the
        // last is a cache directory the doctor may empty.
        config.repairs.clean_directories = [
            "cache",
            "/var",
            "/var/cache/../lib/synos",
            "/var/cache/synos",
        ]
        .map(std::path::PathBuf::from)
        .to_vec();
        let keys: Vec<String> = config
            .problems()
            .into_iter()
            .map(|problem| problem.key)
            .collect();
        assert_eq!(
            keys,
            [
                "watch.failures_to_open",
                "resources.disk_used_percent",
                "resources.paths",
                "repairs.clean_directories.0",
                "repairs.clean_directories.1",
                "repairs.clean_directories.2",
                "metrics.listen"
            ]
        );
    }

    #[test]
    fn a_cache_directory_overlapping_what_synos_keeps_is_never_cleaned() {
        let state = std::path::Path::new("/var/lib/synos");
        let models = std::path::Path::new("/usr/share/synos/models");
        let asked = [
            "/var/cache/synos",
            "/var/lib/synos/memory",
            "/usr/share/synos",
        ]
        .map(std::path::PathBuf::from);
        assert_eq!(
            cleanable(&asked, &[state, models]),
            [std::path::PathBuf::from("/var/cache/synos")]
        );
    }
}
