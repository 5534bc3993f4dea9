//! Resource checks: space and inodes on the state, log and runtime file systems, available
//! memory and memory pressure (PSI), each an [`Observation`] every interval like a daemon's.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use synos_common::filesystem::FileSystemUsage;
use synos_common::units::bytes;
use synos_proto::doctor::v1::DaemonHealth;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::incidents::Observation;

/// The prefix of a file system's check, followed by the watched path.
pub const DISK_PREFIX: &str = "disk:";

/// When a resource counts as failing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// A file system this full (in %) or more fails.
    pub disk_used_percent: f64,
    /// Inodes this used (in %) or more fails.
    pub inodes_used_percent: f64,
    /// Less available memory than this (in % of the total) fails.
    pub memory_available_percent: f64,
    /// Memory pressure ("full", 10 s average, in %) at this or more fails.
    pub memory_pressure_percent: f64,
}

/// The resource checks of one machine.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Where `/proc` is read from ("/" but in tests).
    pub root: PathBuf,
    /// File systems to watch, by a path on each.
    pub paths: Vec<PathBuf>,
    /// When each fails.
    pub limits: Limits,
}

#[expect(clippy::cast_precision_loss, reason = "percentages")]
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64 * 100.0
    }
}

/// Whether a file system's use passes, and how it reads.
pub fn judge_disk(usage: &FileSystemUsage, limits: &Limits) -> (bool, String) {
    let used = percent(
        usage.total_bytes.saturating_sub(usage.available_bytes),
        usage.total_bytes,
    );
    let inodes = percent(
        usage.total_inodes.saturating_sub(usage.free_inodes),
        usage.total_inodes,
    );
    let ok = used < limits.disk_used_percent && inodes < limits.inodes_used_percent;
    (
        ok,
        format!(
            "{used:.1} % used ({} free of {}), inodes {inodes:.1} % used",
            bytes(usage.available_bytes),
            bytes(usage.total_bytes)
        ),
    )
}

impl Resources {
    fn proc_file(&self, name: &str) -> PathBuf {
        self.root.join("proc").join(name)
    }

    /// The checks' names, e.g. "disk:/var/lib/synos", "memory", "pressure:memory" (only where
    /// the kernel has PSI).
    pub fn check_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .paths
            .iter()
            .map(|path| format!("{DISK_PREFIX}{}", path.display()))
            .collect();
        names.push("memory".to_owned());
        if self.proc_file("pressure/memory").exists() {
            names.push("pressure:memory".to_owned());
        }
        names
    }

    /// Every check once (blocking: statvfs and `/proc` reads).
    pub fn observe_all(&self) -> Vec<Observation> {
        let now = SystemTime::now();
        let observation = |check: String, ok: bool, detail: String| Observation {
            check,
            ok,
            health: DaemonHealth::Unspecified,
            detail,
            at: now,
        };
        let mut seen = Vec::new();
        for path in &self.paths {
            let check = format!("{DISK_PREFIX}{}", path.display());
            seen.push(match synos_common::filesystem::usage(path) {
                Ok(usage) => {
                    let (ok, detail) = judge_disk(&usage, &self.limits);
                    observation(check, ok, detail)
                }
                Err(error) => observation(check, false, format!("cannot inspect: {error}")),
            });
        }
        seen.push(self.memory(&observation));
        if let Some(pressure) = self.pressure(&observation) {
            seen.push(pressure);
        }
        seen
    }

    fn memory(&self, observation: &impl Fn(String, bool, String) -> Observation) -> Observation {
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        };
        let Ok(text) = std::fs::read_to_string(self.proc_file("meminfo")) else {
            return observation(
                "memory".to_owned(),
                false,
                "cannot read /proc/meminfo".to_owned(),
            );
        };
        match (field(&text, "MemTotal"), field(&text, "MemAvailable")) {
            (Some(total), Some(available)) => {
                let share = percent(available, total);
                observation(
                    "memory".to_owned(),
                    share >= self.limits.memory_available_percent,
                    format!(
                        "{share:.1} % available ({} of {})",
                        bytes(available.saturating_mul(1024)),
                        bytes(total.saturating_mul(1024))
                    ),
                )
            }
            _ => observation(
                "memory".to_owned(),
                false,
                "/proc/meminfo has no MemTotal or MemAvailable".to_owned(),
            ),
        }
    }

    fn pressure(
        &self,
        observation: &impl Fn(String, bool, String) -> Observation,
    ) -> Option<Observation> {
        let text = std::fs::read_to_string(self.proc_file("pressure/memory")).ok()?;
        let full = text
            .lines()
            .find(|line| line.starts_with("full"))?
            .split_whitespace()
            .find_map(|field| field.strip_prefix("avg10="))?
            .parse::<f64>()
            .ok()?;
        Some(observation(
            "pressure:memory".to_owned(),
            full < self.limits.memory_pressure_percent,
            format!("all tasks stalled on memory {full:.1} % of the last 10 s"),
        ))
    }
}

/// Observes every resource each `interval` until `shutdown`.
pub async fn watch_resources(
    resources: Resources,
    interval: Duration,
    observations: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let resources = resources.clone();
        // statvfs on a hung network file system blocks: never on the watch loop's thread.
        let Ok(seen) = tokio::task::spawn_blocking(move || resources.observe_all()).await else {
            continue;
        };
        for observation in seen {
            if observations.send(observation).await.is_err() {
                return;
            }
        }
    }
}

/// The default paths: the state and runtime directories' file systems and the logs'.
pub fn default_paths(state: &Path, runtime: &Path) -> Vec<PathBuf> {
    vec![
        state.to_owned(),
        runtime.to_owned(),
        PathBuf::from("/var/log"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        disk_used_percent: 95.0,
        inodes_used_percent: 95.0,
        memory_available_percent: 5.0,
        memory_pressure_percent: 20.0,
    };

    #[test]
    fn a_full_disk_or_inode_table_fails_and_says_how_full() {
        let usage = |available: u64, free_inodes: u64| FileSystemUsage {
            total_bytes: 1 << 20,
            available_bytes: available,
            total_inodes: 1000,
            free_inodes,
        };
        let (ok, detail) = judge_disk(&usage(40 << 10, 900), &LIMITS);
        assert!(!ok);
        assert_eq!(
            detail,
            "96.1 % used (40.0 KiB free of 1.0 MiB), inodes 10.0 % used"
        );
        assert!(judge_disk(&usage(512 << 10, 900), &LIMITS).0);
        assert!(!judge_disk(&usage(512 << 10, 10), &LIMITS).0, "inodes");
        // An empty file system (0 bytes) is not "full".
        assert!(judge_disk(&FileSystemUsage::default(), &LIMITS).0);
    }

    #[test]
    fn memory_and_pressure_are_read_from_proc() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/pressure")).unwrap();
        std::fs::write(
            root.path().join("proc/meminfo"),
            "MemTotal: 1000000 kB\nMemAvailable: 30000 kB\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("proc/pressure/memory"),
            "some avg10=50.00 avg60=1.00 avg300=0.00 total=1\nfull avg10=25.50 avg60=0.00 avg300=0.00 total=1\n",
        )
        .unwrap();
        let resources = Resources {
            root: root.path().to_owned(),
            paths: vec![root.path().join("missing")],
            limits: LIMITS,
        };
        assert_eq!(
            resources.check_names(),
            [
                format!("disk:{}", root.path().join("missing").display()),
                "memory".to_owned(),
                "pressure:memory".to_owned()
            ]
        );
        let seen = resources.observe_all();
        assert!(
            !seen[0].ok && seen[0].detail.starts_with("cannot inspect"),
            "{:?}",
            seen[0]
        );
        assert!(!seen[1].ok);
        assert_eq!(seen[1].detail, "3.0 % available (29.3 MiB of 976.6 MiB)");
        assert!(!seen[2].ok);
        assert_eq!(
            seen[2].detail,
            "all tasks stalled on memory 25.5 % of the last 10 s"
        );
    }
}
