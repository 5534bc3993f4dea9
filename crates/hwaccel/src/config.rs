//! `/etc/synos/hwaccel.toml`: tier thresholds, the sampler's interval, lease limits, and where
//! detection looks.

use std::path::PathBuf;

use serde::Deserialize;
use synos_common::config::{LogConfig, Problem, ServerConfig, Settings};

const GIBIBYTE: u64 = 1 << 30;

/// The hardware daemon's settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and limits.
    pub server: ServerConfig,
    /// Log filter.
    pub log: LogConfig,
    /// Where the tiers begin.
    pub tiers: TiersConfig,
    /// The utilisation sampler.
    pub sampler: SamplerConfig,
    /// Accelerator leases.
    pub leases: LeasesConfig,
    /// Where detection looks.
    pub detection: DetectionConfig,
}

/// `[tiers]`: the seed design's thresholds over the effective resources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TiersConfig {
    /// Effective memory below this is the minimal tier.
    pub minimal_below_bytes: u64,
    /// From this much effective memory, with `full_min_cpus` or a GPU, the full tier.
    pub full_from_bytes: u64,
    /// CPUs that, with enough memory, make the full tier without a GPU.
    pub full_min_cpus: u32,
}

impl Default for TiersConfig {
    fn default() -> Self {
        Self {
            minimal_below_bytes: GIBIBYTE,
            full_from_bytes: 4 * GIBIBYTE,
            full_min_cpus: 4,
        }
    }
}

/// `[sampler]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// How often utilisation is sampled, in milliseconds.
    pub interval_ms: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { interval_ms: 1000 }
    }
}

/// `[leases]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeasesConfig {
    /// A lease's time to live when the request names none, in seconds.
    pub default_ttl_s: u32,
    /// The longest time to live granted at once, in seconds.
    pub max_ttl_s: u32,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        Self {
            default_ttl_s: 300,
            max_ttl_s: 86_400,
        }
    }
}

/// `[detection]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectionConfig {
    /// Where `/proc`, `/sys`, `/dev`, `/etc` and `/run` are read from: "/" except to describe
    /// a tree mounted elsewhere (and in tests).
    pub root: PathBuf,
    /// Ask NVML (`libnvidia-ml.so.1`, from the NVIDIA driver) about NVIDIA GPUs.
    pub nvml: bool,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            nvml: true,
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
        let mut check = |ok: bool, key: &str, reason: &str| {
            if !ok {
                problems.push(Problem::new(key, reason));
            }
        };
        let tiers = &self.tiers;
        check(
            tiers.minimal_below_bytes > 0,
            "tiers.minimal_below_bytes",
            "must be more than 0",
        );
        check(
            tiers.full_from_bytes >= tiers.minimal_below_bytes,
            "tiers.full_from_bytes",
            "must be at least tiers.minimal_below_bytes",
        );
        check(
            (1..=4096).contains(&tiers.full_min_cpus),
            "tiers.full_min_cpus",
            "must be between 1 and 4096",
        );
        check(
            (100..=3_600_000).contains(&self.sampler.interval_ms),
            "sampler.interval_ms",
            "must be between 100 and 3600000",
        );
        let leases = &self.leases;
        check(
            (1..=31_536_000).contains(&leases.max_ttl_s),
            "leases.max_ttl_s",
            "must be between 1 and 31536000 (a year)",
        );
        check(
            leases.default_ttl_s >= 1 && leases.default_ttl_s <= leases.max_ttl_s,
            "leases.default_ttl_s",
            "must be at least 1 and at most leases.max_ttl_s",
        );
        check(
            self.detection.root.is_absolute(),
            "detection.root",
            "must be an absolute path",
        );
        problems
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
        let shipped = include_str!("../../../packaging/config/hwaccel.toml");
        let uncommented =
            synos_common::config::uncommented_settings(shipped, &["socket", "tcp_listen"]);
        let parsed: Config = Figment::from(Toml::string(&uncommented))
            .extract()
            .unwrap_or_else(|error| panic!("{error}\n{uncommented}"));
        assert_eq!(parsed, Config::default());
        assert!(parsed.problems().is_empty());
    }

    #[test]
    fn inconsistent_thresholds_are_named() {
        let config = Config {
            tiers: TiersConfig {
                minimal_below_bytes: 8 * GIBIBYTE,
                ..TiersConfig::default()
            },
            leases: LeasesConfig {
                default_ttl_s: 100,
                max_ttl_s: 10,
            },
            ..Config::default()
        };
        let keys: Vec<String> = config
            .problems()
            .iter()
            .map(|problem| problem.key.clone())
            .collect();
        assert_eq!(keys, ["tiers.full_from_bytes", "leases.default_ttl_s"]);
    }
}
