//! The hardware daemon: knows what the machine is, picks its resource tier, samples how busy it
//! is and leases its accelerators, serving `synos.hwaccel.v1.Hardware`.

pub mod config;
pub mod detect;
pub mod leases;
mod nvidia;
pub mod sampler;
mod service;
pub mod tier;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::hwaccel::v1::GetSystemInfoResponse;
use synos_proto::hwaccel::v1::hardware_server::HardwareServer;

pub use config::Config;

use crate::detect::{Probe, WatchedPath};
use synos_common::time::now_unix_ms;

use crate::leases::{LEASES_FILE, LeaseBook};

/// The hardware daemon's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "hwaccel",
    binary: "synos-hwaccel",
    version: env!("CARGO_PKG_VERSION"),
};

/// How often expired leases are reclaimed.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Detects the machine, then serves until `shutdown` is cancelled. Nothing missing is fatal: no
/// GPU, no NVML, an unreadable file or an unusable state directory is said in the answers,
/// the notes and `STATUS=`.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let settings = config.settings.clone();
    let probe = Probe::new(&settings.detection.root);
    let paths = vec![
        WatchedPath {
            path: config.state_directory(),
            purpose: "state",
        },
        WatchedPath {
            path: config.directories.runtime.clone(),
            purpose: "runtime",
        },
    ];
    let (nvidia, info) = {
        let (probe, paths, use_nvml) = (probe.clone(), paths.clone(), settings.detection.nvml);
        tokio::task::spawn_blocking(move || {
            let nvidia = if use_nvml {
                nvidia::Nvidia::load()
            } else {
                Err("not asked (detection.nvml = false)".to_owned())
            };
            let (nvidia, gpus) = match nvidia {
                Ok(nvidia) => {
                    let gpus = nvidia.gpus();
                    (Some(Arc::new(nvidia)), gpus)
                }
                Err(problem) => (None, Err(problem)),
            };
            (nvidia, detect::system_info(&probe, &paths, gpus))
        })
        .await
        .map_err(|error| DaemonError::Startup {
            message: format!("hardware detection failed: {error}"),
            exit_code: synos_common::exit::SOFTWARE,
        })?
    };
    for note in &info.notes {
        tracing::info!(%note, "detection");
    }
    let tier = tier::tier(&info, &settings.tiers);
    tracing::info!(tier = tier::name(tier.tier()), reasons = %tier.reasons.join("; "), "tier");

    let state = config.prepare_state_directory();
    let (book, warnings) = LeaseBook::open(
        state
            .as_ref()
            .ok()
            .map(|directory| directory.join(LEASES_FILE)),
        now_unix_ms(),
    );
    for warning in &warnings {
        tracing::warn!(%warning, "leases");
    }
    let mut problems = warnings;
    if let Err(problem) = &state {
        tracing::error!(%problem, "leases will not survive a restart");
        problems.push(format!("{problem}; leases are kept in memory only"));
    }
    let status = StatusLine::new(summary(&info, tier::name(tier.tier()), &problems));

    let interval = Duration::from_millis(settings.sampler.interval_ms);
    let mut sampler = sampler::Sampler::new(probe, paths, &info, nvidia, interval);
    let (publish, utilization) = tokio::sync::watch::channel(Arc::new(sampler.sample()));
    let leases = Arc::new(Mutex::new(book));
    let background = [
        tokio::spawn(sampler.run(publish, shutdown.clone())),
        tokio::spawn(reap_expired(Arc::clone(&leases), shutdown.clone())),
    ];

    let service = service::HardwareService {
        info: Arc::new(info),
        tier,
        utilization,
        leases,
        lease_settings: settings.leases.clone(),
    };
    let hardware = HardwareServer::new(service)
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    let served = GrpcServer::new(status)
        .add_service(hardware)
        .serve(&config, shutdown.clone())
        .await;
    shutdown.cancel();
    for task in background {
        let _ = task.await;
    }
    served?;
    Ok(())
}

/// Reclaims expired leases every second, so `ListLeases` and the file never show them.
async fn reap_expired(leases: Arc<Mutex<LeaseBook>>, shutdown: Shutdown) {
    let mut ticks = tokio::time::interval(REAP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let _ = service::with_leases(&leases, |book| Ok(book.reap(now_unix_ms()))).await;
    }
}

/// The status line, e.g. "serving; tier standard: 2 CPUs, 3.8 GiB, no GPU, no NPU".
pub fn summary(info: &GetSystemInfoResponse, tier: &str, problems: &[String]) -> String {
    let effective = info.effective.unwrap_or_default();
    let count = |number: u32, what: &str| match number {
        0 => format!("no {what}"),
        1 => format!("1 {what}"),
        more => format!("{more} {what}s"),
    };
    let line = format!(
        "tier {tier}: {} CPUs, {}, {}, {}",
        tier::cpu_count(effective.cpus),
        tier::gibibytes(effective.memory_bytes),
        count(effective.gpus, "GPU"),
        count(effective.npus, "NPU")
    );
    if problems.is_empty() {
        format!("serving; {line}")
    } else {
        format!("DEGRADED: {}; {line}", problems.join("; "))
    }
}
