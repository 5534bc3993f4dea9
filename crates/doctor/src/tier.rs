//! hwaccel's resource tier as a check (`hwaccel:tier`): a tier below the highest one seen since
//! the doctor started fails, with hwaccel's reasons as evidence, so a machine that lost memory
//! or an accelerator (after a restart of hwaccel, which decides its tier at start) is an
//! incident, and recovers when the tier is back.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use synos_proto::doctor::v1::DaemonHealth;
use synos_proto::hwaccel::v1::hardware_client::HardwareClient;
use synos_proto::hwaccel::v1::{GetTierRequest, GetTierResponse, Tier};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::incidents::Observation;

/// The check's name.
pub const CHECK: &str = "hwaccel:tier";

fn tier_name(tier: Tier) -> String {
    tier.as_str_name()
        .trim_start_matches("TIER_")
        .to_ascii_lowercase()
}

/// What one answer of hwaccel means against the best tier seen so far (which it may raise).
pub fn observe(best: &mut Tier, tier: Tier, reasons: &[String], at: SystemTime) -> Observation {
    if tier > *best {
        *best = tier;
    }
    let ok = tier >= *best;
    let detail = if ok {
        format!("tier {}", tier_name(tier))
    } else {
        format!(
            "tier {}, down from {}: {}",
            tier_name(tier),
            tier_name(*best),
            reasons.join("; ")
        )
    };
    Observation {
        check: CHECK.to_owned(),
        ok,
        health: DaemonHealth::Unspecified,
        detail,
        at,
    }
}

/// Asks hwaccel at `socket` for its tier each `interval`; while it cannot be reached nothing is
/// observed (its daemon check says so).
pub async fn watch_tier(
    socket: PathBuf,
    interval: Duration,
    timeout: Duration,
    observations: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
) {
    let mut best = Tier::Unspecified;
    crate::peers::poll(
        socket,
        interval,
        timeout,
        observations,
        shutdown,
        |channel| async move {
            HardwareClient::new(channel)
                .get_tier(GetTierRequest {})
                .await
        },
        move |answer: GetTierResponse| {
            vec![observe(
                &mut best,
                answer.tier(),
                &answer.reasons,
                SystemTime::now(),
            )]
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_below_the_best_seen_fails_until_it_is_back() {
        let mut best = Tier::Unspecified;
        let at = SystemTime::UNIX_EPOCH;
        assert!(observe(&mut best, Tier::Standard, &[], at).ok);
        assert!(observe(&mut best, Tier::Full, &[], at).ok);
        let dropped = observe(
            &mut best,
            Tier::Minimal,
            &["effective memory 512 MiB is below 1.0 GiB".to_owned()],
            at,
        );
        assert!(!dropped.ok);
        assert_eq!(
            dropped.detail,
            "tier minimal, down from full: effective memory 512 MiB is below 1.0 GiB"
        );
        assert!(observe(&mut best, Tier::Full, &[], at).ok);
    }
}
