//! Doctor benchmark: its own CPU and resident memory while it watches the four other daemons
//! (health streams, resource checks and the router's providers, at the default 1 s interval),
//! and the time from a daemon's death to the incident, over several kills.
//!
//! Run with `cargo build --release --bins && cargo bench -p synos-integration-tests --bench doctor`.
//! `DOCTOR_BENCH_SECONDS` (default 600, the 10 minutes) sets how long it is watched.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary: it prints figures and panics on a broken setup"
)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use synos_integration_tests::process::{cpu_seconds, resident_kib};
use synos_integration_tests::{Sandbox, channel};
use synos_proto::doctor::v1::doctor_client::DoctorClient;
use synos_proto::doctor::v1::{IncidentEventKind, WatchIncidentsRequest};

const KILLS: usize = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: u64 = std::env::var("DOCTOR_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(600);
    let sandbox = Sandbox::new();
    let mut daemons = sandbox.start_all().await;
    let doctor_pid = daemons["doctor"].pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_seconds(doctor_pid);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let used = cpu_seconds(doctor_pid) - before;
    println!(
        "doctor watching 4 daemons for {seconds} s (clock-tick resolution {:.3} %):",
        1.0 / seconds as f64
    );
    println!(
        "  CPU {:.3} % of one core (target ≤ 0.5 %)",
        used / seconds as f64 * 100.0
    );
    println!(
        "  resident memory {:.1} MiB now, {:.1} MiB at peak (target ≤ 15 MB)",
        resident_kib(doctor_pid, "VmRSS:") as f64 / 1024.0,
        resident_kib(doctor_pid, "VmHWM:") as f64 / 1024.0
    );

    let mut doctor = DoctorClient::new(channel(&sandbox.socket("doctor")).await);
    let mut events = doctor
        .watch_incidents(WatchIncidentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut detections = Vec::new();
    for _ in 0..KILLS {
        let killed = Instant::now();
        daemons["memory"].signal(Signal::SIGKILL);
        loop {
            let event = events.message().await.unwrap().unwrap();
            if matches!(
                event.kind(),
                IncidentEventKind::Opened | IncidentEventKind::Reopened
            ) {
                detections.push(killed.elapsed());
                break;
            }
        }
        daemons.insert("memory", sandbox.start("memory").await);
        loop {
            let event = events.message().await.unwrap().unwrap();
            if event.kind() == IncidentEventKind::Recovered {
                break;
            }
        }
    }
    detections.sort();
    println!(
        "death to incident over {KILLS} kills: median {:.0} ms, worst {:.0} ms (target ≤ 1 s; \
         2 failures in a row at a 500 ms retry)",
        detections[KILLS / 2].as_secs_f64() * 1000.0,
        detections[KILLS - 1].as_secs_f64() * 1000.0
    );
}
