//! Startup benchmark: time from spawn to `READY=1`, idle memory and binary size of each daemon.
//!
//! Run with `cargo build --release --bins && cargo bench -p synos-integration-tests --bench startup`.
//! Prints medians over repeated starts next to a baseline measured in the same run (spawning
//! `/bin/true` and waiting for it to exit), since absolute times on shared machines are noisy.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary: it prints figures and panics on a broken setup"
)]

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use synos_integration_tests::process::resident_kib;
use synos_integration_tests::{ALL_DAEMONS, Sandbox, binary};

const STARTS: usize = 25;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Milliseconds with two decimals.
fn milliseconds(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// Starts the daemon with a notify socket and returns the time until READY=1 and its idle RSS.
fn start_once(
    sandbox: &Sandbox,
    binary_name: &str,
    notify: &UnixDatagram,
    measure_rss: bool,
) -> (Duration, Option<u64>) {
    let mut command = sandbox.command(binary_name);
    command
        .env("NOTIFY_SOCKET", sandbox.path().join("notify.sock"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    let mut buffer = [0u8; 4096];
    let ready = loop {
        let length = notify
            .recv(&mut buffer)
            .expect("no READY=1 within the read timeout");
        if String::from_utf8_lossy(&buffer[..length])
            .lines()
            .any(|line| line == "READY=1")
        {
            break started.elapsed();
        }
    };
    let rss = measure_rss.then(|| {
        // Let start-up allocations settle, as a daemon idles most of its life.
        std::thread::sleep(Duration::from_secs(2));
        resident_kib(child.id(), "VmRSS:")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    // Drain STOPPING=1 and anything else, so the next start reads only its own messages.
    notify.set_nonblocking(true).unwrap();
    while notify.recv(&mut buffer).is_ok() {}
    notify.set_nonblocking(false).unwrap();
    (ready, rss)
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let sandbox = Sandbox::new();
    let notify = UnixDatagram::bind(sandbox.path().join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let baseline = median(
        (0..STARTS)
            .map(|_| {
                let started = Instant::now();
                std::process::Command::new("/bin/true").status().unwrap();
                started.elapsed()
            })
            .collect(),
    );
    let profile = binary("synosctl")
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    println!("SynOS startup benchmark ({STARTS} starts per daemon, {profile} binaries)");
    println!(
        "baseline: spawn and reap /bin/true, median {}",
        milliseconds(baseline)
    );
    println!();
    println!(
        "{:<18} {:>14} {:>10} {:>12} {:>12}",
        "daemon", "start→READY", "× spawn", "idle RSS", "binary"
    );
    for (_, binary_name) in ALL_DAEMONS {
        let (_, rss) = start_once(&sandbox, binary_name, &notify, true);
        let ready = median(
            (0..STARTS)
                .map(|_| start_once(&sandbox, binary_name, &notify, false).0)
                .collect(),
        );
        let size = std::fs::metadata(binary(binary_name)).unwrap().len();
        println!(
            "{:<18} {:>14} {:>10.1} {:>9.1} MiB {:>8.1} MiB",
            binary_name,
            milliseconds(ready),
            ready.as_secs_f64() / baseline.as_secs_f64(),
            rss.unwrap() as f64 / 1024.0,
            size as f64 / 1024.0 / 1024.0,
        );
    }
    let size = std::fs::metadata(binary("synosctl")).unwrap().len();
    println!(
        "{:<18} {:>14} {:>10} {:>12} {:>8.1} MiB",
        "synosctl",
        "-",
        "-",
        "-",
        size as f64 / 1024.0 / 1024.0
    );
}
