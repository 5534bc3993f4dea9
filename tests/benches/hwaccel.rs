//! Hardware daemon benchmark: the sampler's CPU cost at its default 1 s interval, against the
//! same daemon with sampling effectively off, both watched from `/proc` over the same seconds;
//! and `GetUtilization` latency over the socket, against a gRPC health check on the same
//! connection in the same run.
//!
//! Run with `cargo build --release --bins && cargo bench -p synos-integration-tests --bench hwaccel`.
//! `HWACCEL_BENCH_SECONDS` (default 30) sets how long the daemons are watched; the CPU figure's
//! resolution is one clock tick (10 ms) over that time.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary: it prints figures and panics on a broken setup"
)]

use std::time::{Duration, Instant};

use synos_integration_tests::process::{cpu_seconds, resident_kib};
use synos_integration_tests::{Sandbox, channel};
use synos_proto::hwaccel::v1::GetUtilizationRequest;
use synos_proto::hwaccel::v1::hardware_client::HardwareClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CALLS_PER_ROUND: usize = 1000;
const ROUNDS: usize = 10;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn microseconds(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: u64 = std::env::var("HWACCEL_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(30);
    let (sampling, resting) = (Sandbox::new(), Sandbox::new());
    sampling.write_config("hwaccel", "[sampler]\ninterval_ms = 1000\n");
    resting.write_config("hwaccel", "[sampler]\ninterval_ms = 3600000\n");
    let sampler = sampling.start("hwaccel").await;
    let baseline = resting.start("hwaccel").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (cpu_seconds(sampler.pid()), cpu_seconds(baseline.pid()));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = (cpu_seconds(sampler.pid()), cpu_seconds(baseline.pid()));
    let share = |used: f64| used / seconds as f64 * 100.0;
    let (sampling_share, resting_share) = (share(after.0 - before.0), share(after.1 - before.1));
    println!(
        "hwaccel: {seconds} s watched, CPU as % of one core (resolution {:.3} %)",
        share(0.01)
    );
    println!("  sampling every 1 s            {sampling_share:6.3} %");
    println!("  sampling every hour (baseline) {resting_share:6.3} %");
    println!(
        "  the sampler's cost            {:6.3} %  (target ≤ 0.5 %)",
        sampling_share - resting_share
    );
    println!(
        "  resident memory: {:.1} MiB sampling, {:.1} MiB baseline",
        resident_kib(sampler.pid(), "VmRSS:") as f64 / 1024.0,
        resident_kib(baseline.pid(), "VmRSS:") as f64 / 1024.0
    );

    let connection = channel(&sampling.socket("hwaccel")).await;
    let mut hardware = HardwareClient::new(connection.clone());
    let mut health = HealthClient::new(connection);
    let (mut utilization, mut checks) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        // Round 0 warms both paths up and is not counted; the rest alternate, so drift on a
        // shared machine hits both alike.
        for _ in 0..CALLS_PER_ROUND {
            let started = Instant::now();
            hardware
                .get_utilization(GetUtilizationRequest {})
                .await
                .unwrap();
            if round > 0 {
                utilization.push(started.elapsed());
            }
        }
        for _ in 0..CALLS_PER_ROUND {
            let started = Instant::now();
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
            if round > 0 {
                checks.push(started.elapsed());
            }
        }
    }
    utilization.sort();
    checks.sort();
    println!(
        "GetUtilization over the socket, {} calls: p50 {}  p99 {}  (target p99 ≤ 1 ms)",
        utilization.len(),
        microseconds(percentile(&utilization, 0.5)),
        microseconds(percentile(&utilization, 0.99))
    );
    println!(
        "health Check, same connection (baseline): p50 {}  p99 {}",
        microseconds(percentile(&checks, 0.5)),
        microseconds(percentile(&checks, 0.99))
    );
}
