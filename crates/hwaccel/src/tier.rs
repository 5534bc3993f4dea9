//! The resource tier (minimal / standard / full) from the effective resources, with the facts
//! that decided it.

use synos_proto::hwaccel::v1::{EffectiveResources, GetSystemInfoResponse, GetTierResponse, Tier};

use crate::config::TiersConfig;

/// "2.0 GiB".
pub fn gibibytes(bytes: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a rounded figure for people")]
    let value = bytes as f64 / f64::from(1_u32 << 30);
    format!("{value:.1} GiB")
}

/// The tier of a machine described by `info`, under `thresholds`.
pub fn tier(info: &GetSystemInfoResponse, thresholds: &TiersConfig) -> GetTierResponse {
    let effective = info.effective.unwrap_or_default();
    let limits = info.cgroup.clone().unwrap_or_default();
    let memory_origin = match limits.memory_max_bytes {
        Some(limit) if limit == effective.memory_bytes => " (cgroup memory.max)",
        _ => "",
    };
    let memory = format!(
        "effective memory {}{memory_origin}",
        gibibytes(effective.memory_bytes)
    );
    let mut reasons = Vec::new();
    let tier = if effective.memory_bytes < thresholds.minimal_below_bytes {
        reasons.push(format!(
            "{memory} is below {}",
            gibibytes(thresholds.minimal_below_bytes)
        ));
        Tier::Minimal
    } else if effective.memory_bytes < thresholds.full_from_bytes {
        reasons.push(format!(
            "{memory} is at least {} and below {}",
            gibibytes(thresholds.minimal_below_bytes),
            gibibytes(thresholds.full_from_bytes)
        ));
        Tier::Standard
    } else {
        reasons.push(format!(
            "{memory} is at least {}",
            gibibytes(thresholds.full_from_bytes)
        ));
        let enough_cpus = effective.cpus >= f64::from(thresholds.full_min_cpus);
        if effective.gpus > 0 {
            reasons.push(format!("{} GPU(s)", effective.gpus));
            Tier::Full
        } else if enough_cpus {
            reasons.push(format!(
                "{} effective CPUs, at least {}",
                cpus(&effective),
                thresholds.full_min_cpus
            ));
            Tier::Full
        } else {
            reasons.push(format!(
                "but only {} effective CPUs (full needs {}) and no GPU",
                cpus(&effective),
                thresholds.full_min_cpus
            ));
            Tier::Standard
        }
    };
    if let Some(quota) = limits.cpu_max
        && (quota - effective.cpus).abs() < 1e-9
    {
        reasons.push(format!("CPUs limited by cgroup cpu.max to {quota:.2}"));
    }
    GetTierResponse {
        tier: tier.into(),
        reasons,
        effective: Some(effective),
    }
}

fn cpus(effective: &EffectiveResources) -> String {
    cpu_count(effective.cpus)
}

/// "2" CPUs, or "1.50" under a fractional cgroup quota.
pub fn cpu_count(cpus: f64) -> String {
    if cpus.fract() == 0.0 {
        format!("{cpus:.0}")
    } else {
        format!("{cpus:.2}")
    }
}

/// The tier's name as configuration and the CLI spell it.
pub fn name(tier: Tier) -> &'static str {
    match tier {
        Tier::Minimal => "minimal",
        Tier::Standard => "standard",
        Tier::Full => "full",
        Tier::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use synos_proto::hwaccel::v1::CgroupLimits;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn machine(memory: u64, cpus: f64, gpus: u32, limits: CgroupLimits) -> GetSystemInfoResponse {
        GetSystemInfoResponse {
            effective: Some(EffectiveResources {
                memory_bytes: memory,
                cpus,
                gpus,
                npus: 0,
            }),
            cgroup: Some(limits),
            ..GetSystemInfoResponse::default()
        }
    }

    fn decide(memory: u64, cpus: f64, gpus: u32) -> (Tier, Vec<String>) {
        let answer = tier(
            &machine(memory, cpus, gpus, CgroupLimits::default()),
            &TiersConfig::default(),
        );
        (answer.tier(), answer.reasons)
    }

    #[test]
    fn the_seed_thresholds_decide_and_say_why() {
        assert_eq!(decide(GIB / 2, 8.0, 1).0, Tier::Minimal);
        assert_eq!(decide(GIB - 1, 8.0, 0).0, Tier::Minimal);
        assert_eq!(decide(GIB, 1.0, 0).0, Tier::Standard);
        assert_eq!(decide(4 * GIB - 1, 16.0, 2).0, Tier::Standard);
        assert_eq!(decide(4 * GIB, 4.0, 0).0, Tier::Full);
        assert_eq!(decide(4 * GIB, 2.0, 1).0, Tier::Full);
        let (tier, reasons) = decide(8 * GIB, 2.0, 0);
        assert_eq!(tier, Tier::Standard);
        assert_eq!(
            reasons,
            [
                "effective memory 8.0 GiB is at least 4.0 GiB",
                "but only 2 effective CPUs (full needs 4) and no GPU"
            ]
        );
    }

    #[test]
    fn cgroup_limits_are_named_when_they_decide() {
        let limited = machine(
            2 * GIB,
            1.5,
            0,
            CgroupLimits {
                path: "/system.slice/x.service".to_owned(),
                memory_max_bytes: Some(2 * GIB),
                cpu_max: Some(1.5),
            },
        );
        let answer = tier(&limited, &TiersConfig::default());
        assert_eq!(answer.tier(), Tier::Standard);
        assert_eq!(
            answer.reasons,
            [
                "effective memory 2.0 GiB (cgroup memory.max) is at least 1.0 GiB and below 4.0 GiB",
                "CPUs limited by cgroup cpu.max to 1.50"
            ]
        );
    }

    #[test]
    fn thresholds_come_from_the_configuration() {
        let strict = TiersConfig {
            minimal_below_bytes: 16 * GIB,
            full_from_bytes: 64 * GIB,
            full_min_cpus: 32,
        };
        let answer = tier(&machine(8 * GIB, 64.0, 4, CgroupLimits::default()), &strict);
        assert_eq!(answer.tier(), Tier::Minimal);
    }
}
