//! The utilisation sampler: every interval, CPU, memory, load, pressure, disks and accelerators
//! from a handful of small kernel files (and NVML), published to a watch channel that
//! `GetUtilization` reads and `WatchUtilization` streams, so no call ever waits for a
//! measurement.

use std::sync::Arc;
use std::time::Duration;

use synos_proto::hwaccel::v1::{
    Accelerator, AcceleratorUsage, DiskUsage, GetSystemInfoResponse, LoadAverage, Pressure,
    Utilization,
};
use tokio::sync::watch;

use crate::detect::{self, Probe, WatchedPath};
use crate::nvidia::Nvidia;

/// CPU time counters from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// One `/proc/pressure/*` file.
fn pressure(text: &str) -> Option<Pressure> {
    let average = |kind: &str| {
        text.lines()
            .find(|line| line.starts_with(kind))?
            .split_whitespace()
            .find_map(|field| field.strip_prefix("avg10="))?
            .parse::<f64>()
            .ok()
    };
    Some(Pressure {
        some_avg10: average("some")?,
        full_avg10: average("full"),
    })
}

fn load(text: &str) -> Option<LoadAverage> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    Some(LoadAverage {
        one: fields.next()?.ok()?,
        five: fields.next()?.ok()?,
        fifteen: fields.next()?.ok()?,
    })
}

/// What the sampler reads, and what it remembers between samples.
pub struct Sampler {
    probe: Probe,
    paths: Vec<WatchedPath>,
    accelerators: Vec<Accelerator>,
    /// The effective memory total (cgroup memory.max where lower).
    memory_total: u64,
    /// The cgroup file with this process's memory use, when memory is limited.
    cgroup_memory_current: Option<String>,
    nvidia: Option<Arc<Nvidia>>,
    previous: Option<CpuTimes>,
    sequence: u64,
    interval: Duration,
}

impl Sampler {
    /// A sampler of the machine `info` describes.
    pub fn new(
        probe: Probe,
        paths: Vec<WatchedPath>,
        info: &GetSystemInfoResponse,
        nvidia: Option<Arc<Nvidia>>,
        interval: Duration,
    ) -> Self {
        let limits = info.cgroup.clone().unwrap_or_default();
        let cgroup_memory_current = limits.memory_max_bytes.and_then(|_| {
            let paths = detect::cgroup_paths(&probe);
            paths
                .unified
                .map(|directory| format!("{directory}/memory.current"))
                .filter(|file| probe.path(file).exists())
                .or_else(|| {
                    paths
                        .legacy
                        .get("memory")
                        .map(|directory| format!("{directory}/memory.usage_in_bytes"))
                })
        });
        Self {
            memory_total: info
                .effective
                .as_ref()
                .map_or(0, |effective| effective.memory_bytes),
            accelerators: info.accelerators.clone(),
            probe,
            paths,
            cgroup_memory_current,
            nvidia,
            previous: None,
            sequence: 0,
            interval,
        }
    }

    /// Takes one sample. The first one's CPU share covers the time since boot.
    pub fn sample(&mut self) -> Utilization {
        let now = cpu_times(&self.probe.read("/proc/stat").unwrap_or_default());
        let cpu_percent = match (self.previous, now) {
            (Some(before), Some(after)) if after.total > before.total => {
                (after.busy.saturating_sub(before.busy)) as f64
                    / (after.total - before.total) as f64
                    * 100.0
            }
            (_, Some(after)) if after.total > 0 => after.busy as f64 / after.total as f64 * 100.0,
            _ => 0.0,
        };
        self.previous = now;
        let fields_text = self.probe.read("/proc/meminfo").unwrap_or_default();
        let fields = detect::meminfo(&fields_text);
        let field = |key: &str| fields.get(key).copied().unwrap_or(0);
        let host_used = field("MemTotal").saturating_sub(field("MemAvailable"));
        let memory_used = self
            .cgroup_memory_current
            .as_ref()
            .and_then(|file| self.probe.read_value(file))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(host_used);
        self.sequence += 1;
        let pressure_of =
            |kind: &str| pressure(&self.probe.read(format!("/proc/pressure/{kind}"))?);
        Utilization {
            sampled_at: Some(synos_common::time::timestamp(
                synos_common::time::now_unix_ms(),
            )),
            sequence: self.sequence,
            cpu_percent,
            memory_used_bytes: memory_used,
            memory_total_bytes: self.memory_total,
            swap_used_bytes: field("SwapTotal").saturating_sub(field("SwapFree")),
            load: self
                .probe
                .read("/proc/loadavg")
                .and_then(|text| load(&text)),
            cpu_pressure: pressure_of("cpu"),
            memory_pressure: pressure_of("memory"),
            io_pressure: pressure_of("io"),
            disks: self
                .paths
                .iter()
                .filter_map(|watched| {
                    let usage = detect::file_system_of(&watched.path).ok()?;
                    Some(DiskUsage {
                        path: watched.path.display().to_string(),
                        used_bytes: usage.total_bytes.saturating_sub(usage.available_bytes),
                        total_bytes: usage.total_bytes,
                    })
                })
                .collect(),
            accelerators: self
                .accelerators
                .iter()
                .map(|accelerator| self.accelerator_usage(accelerator))
                .collect(),
            interval_seconds: self.interval.as_secs_f64(),
        }
    }

    fn accelerator_usage(&self, accelerator: &Accelerator) -> AcceleratorUsage {
        if accelerator.source == "nvml"
            && let Some(nvidia) = &self.nvidia
            && let Some(usage) = nvidia.usage(&accelerator.pci_address)
        {
            return AcceleratorUsage {
                id: accelerator.id.clone(),
                ..usage
            };
        }
        // amdgpu publishes its use in sysfs; other drivers publish nothing comparable.
        let device = format!("/sys/bus/pci/devices/{}", accelerator.pci_address);
        let number = |file: &str| {
            self.probe
                .read_value(format!("{device}/{file}"))
                .and_then(|value| value.parse::<u64>().ok())
        };
        let hwmon = self
            .probe
            .path(format!("{device}/hwmon"))
            .read_dir()
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(Result::ok)
            .map(|entry| format!("{device}/hwmon/{}", entry.file_name().to_string_lossy()));
        let hwmon_number = |file: &str| {
            hwmon.as_ref().and_then(|directory| {
                self.probe
                    .read_value(format!("{directory}/{file}"))
                    .and_then(|value| value.parse::<f64>().ok())
            })
        };
        AcceleratorUsage {
            id: accelerator.id.clone(),
            utilization_percent: number("gpu_busy_percent").map(|percent| percent as f64),
            memory_used_bytes: number("mem_info_vram_used"),
            memory_total_bytes: accelerator.memory_bytes,
            temperature_celsius: hwmon_number("temp1_input")
                .map(|millidegrees| millidegrees / 1000.0),
            power_watts: hwmon_number("power1_average").map(|microwatts| microwatts / 1_000_000.0),
        }
    }

    /// Samples every interval into `publish` until `shutdown`.
    pub async fn run(
        mut self,
        publish: watch::Sender<Arc<Utilization>>,
        shutdown: synos_common::Shutdown,
    ) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            // A few small files and, with a GPU, a few NVML calls: well under a millisecond,
            // so on this task rather than a blocking thread's.
            let sample = self.sample();
            publish.send_replace(Arc::new(sample));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_files_are_read_as_documented() {
        let times = cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(
            times,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        assert_eq!(cpu_times("intr 1 2"), None);
        let cpu = pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=123\n").unwrap();
        assert_eq!((cpu.some_avg10, cpu.full_avg10), (1.5, None));
        let memory = pressure(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=2.25 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        assert_eq!(memory.full_avg10, Some(2.25));
        let average = load("0.52 0.58 0.59 1/467 12345\n").unwrap();
        assert_eq!(
            (average.one, average.five, average.fifteen),
            (0.52, 0.58, 0.59)
        );
        assert_eq!(load("garbage"), None);
    }
}
