//! The hardware daemon over its real socket: tier and utilisation consistent with what it
//! detected, a live stream, and accelerator leases on a fixture machine with a GPU that
//! survive `kill -9`, expire, and refuse bad requests with the right codes; and synosctl's
//! `hw` commands against it.

use std::path::Path;
use std::time::Duration;

use synos_integration_tests::{Sandbox, channel};
use synos_proto::hwaccel::v1::hardware_client::HardwareClient;
use synos_proto::hwaccel::v1::{
    AcceleratorKind, AcquireAcceleratorRequest, GetSystemInfoRequest, GetTierRequest,
    GetUtilizationRequest, ListLeasesRequest, ReleaseLeaseRequest, RenewLeaseRequest, Tier,
    WatchUtilizationRequest,
};
use tonic::Code;
use tonic::transport::Channel;

const GIB: u64 = 1 << 30;

async fn client(sandbox: &Sandbox) -> HardwareClient<Channel> {
    HardwareClient::new(channel(&sandbox.socket("hwaccel")).await)
}

#[tokio::test]
async fn tier_and_utilisation_agree_with_what_was_detected_and_stream_live() {
    let sandbox = Sandbox::new();
    sandbox.write_config("hwaccel", "[sampler]\ninterval_ms = 100\n");
    let _daemon = sandbox.start("hwaccel").await;
    let mut hardware = client(&sandbox).await;
    let info = hardware
        .get_system_info(GetSystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let effective = info.effective.unwrap();
    assert!(effective.memory_bytes > 0 && effective.cpus >= 1.0 - 1e-9);
    let purposes: Vec<&str> = info
        .disks
        .iter()
        .map(|disk| disk.purpose.as_str())
        .collect();
    assert_eq!(purposes, ["state", "runtime"]);

    let tier = hardware
        .get_tier(GetTierRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier.effective, Some(effective));
    let expected = if effective.memory_bytes < GIB {
        Tier::Minimal
    } else if effective.memory_bytes < 4 * GIB || (effective.cpus < 4.0 && effective.gpus == 0) {
        Tier::Standard
    } else {
        Tier::Full
    };
    assert_eq!(tier.tier(), expected, "{:?}", tier.reasons);
    assert!(!tier.reasons.is_empty());

    let now = hardware
        .get_utilization(GetUtilizationRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(now.sequence >= 1);
    assert!(
        (0.0..=100.0).contains(&now.cpu_percent),
        "{}",
        now.cpu_percent
    );
    assert_eq!(now.memory_total_bytes, effective.memory_bytes);
    assert!(now.memory_used_bytes > 0 && now.memory_used_bytes <= now.memory_total_bytes);
    assert!((now.interval_seconds - 0.1).abs() < 1e-9);

    let mut stream = hardware
        .watch_utilization(WatchUtilizationRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut sequences = Vec::new();
    let started = std::time::Instant::now();
    while sequences.len() < 4 {
        let sample = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a sample within 5 s")
            .unwrap()
            .unwrap();
        sequences.push(sample.sequence);
    }
    assert!(
        sequences.windows(2).all(|pair| pair[1] > pair[0]),
        "{sequences:?}"
    );
    // Four samples at 100 ms: the stream follows the sampler, it does not wait a second.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A machine with one AMD GPU of 16 GiB, written under `root`.
fn machine_with_a_gpu(root: &Path) {
    let files = [
        (
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Test CPU\ncore id\t: 0\n",
        ),
        (
            "proc/meminfo",
            "MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n",
        ),
        ("sys/bus/pci/devices/0000:03:00.0/class", "0x030000\n"),
        ("sys/bus/pci/devices/0000:03:00.0/vendor", "0x1002\n"),
        ("sys/bus/pci/devices/0000:03:00.0/device", "0x73bf\n"),
        (
            "sys/bus/pci/devices/0000:03:00.0/mem_info_vram_total",
            "17179869184\n",
        ),
    ];
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

fn ask(memory: u64, holder: &str, ttl: u32) -> AcquireAcceleratorRequest {
    AcquireAcceleratorRequest {
        kind: AcceleratorKind::Gpu.into(),
        accelerator_id: String::new(),
        memory_bytes: memory,
        holder: holder.to_owned(),
        ttl_seconds: ttl,
    }
}

#[tokio::test]
async fn leases_survive_kill_9_expire_and_refuse_what_cannot_be_granted() {
    let sandbox = Sandbox::new();
    let root = sandbox.path().join("machine");
    machine_with_a_gpu(&root);
    sandbox.write_config(
        "hwaccel",
        &format!(
            "[detection]\nroot = \"{}\"\nnvml = false\n\n[leases]\nmax_ttl_s = 3600\n",
            root.display()
        ),
    );
    let mut daemon = sandbox.start("hwaccel").await;
    let mut hardware = client(&sandbox).await;
    let info = hardware
        .get_system_info(GetSystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.accelerators.len(), 1);
    assert_eq!(info.accelerators[0].memory_bytes, Some(16 * GIB));

    let router = hardware
        .acquire_accelerator(ask(10 * GIB, "synos-llm-router", 600))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(router.accelerator_id, "gpu0");
    let refused = hardware
        .acquire_accelerator(ask(8 * GIB, "trainer", 600))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "gpu0: 6.0 GiB of 16.0 GiB unleased, 8.0 GiB wanted"
    );
    let brief = hardware
        .acquire_accelerator(ask(GIB, "brief", 1))
        .await
        .unwrap()
        .into_inner();

    // Hostile and impossible requests, each with its code and reason.
    let cases = [
        (
            ask(GIB, &"x".repeat(300), 10),
            Code::InvalidArgument,
            "over the limit of 256",
        ),
        (
            ask(GIB, "User::\"a\\\"b\"", 10),
            Code::InvalidArgument,
            "principal: the id must be one quoted string",
        ),
        (
            ask(GIB, "x", 7200),
            Code::InvalidArgument,
            "leases.max_ttl_s (3600)",
        ),
        (
            AcquireAcceleratorRequest {
                kind: AcceleratorKind::Npu.into(),
                ..ask(0, "x", 10)
            },
            Code::NotFound,
            "this machine has no NPU",
        ),
        (
            AcquireAcceleratorRequest {
                kind: 42,
                ..ask(0, "x", 10)
            },
            Code::InvalidArgument,
            "name a kind",
        ),
    ];
    for (request, code, reason) in cases {
        let error = hardware.acquire_accelerator(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{}", error.message());
        assert!(error.message().contains(reason), "{}", error.message());
    }
    let unknown = hardware
        .release_lease(ReleaseLeaseRequest {
            lease_id: "no-such-lease".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // A lease is on disk before it is granted: kill -9 loses nothing.
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _daemon = sandbox.start("hwaccel").await;
    let mut hardware = client(&sandbox).await;
    let leases = hardware
        .list_leases(ListLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(
        leases,
        std::slice::from_ref(&router),
        "the brief lease expired while down"
    );
    assert_ne!(brief.id, router.id);

    let renewed = hardware
        .renew_lease(RenewLeaseRequest {
            lease_id: router.id.clone(),
            ttl_seconds: 1200,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.expires_at.unwrap().seconds > router.expires_at.unwrap().seconds);

    // synosctl shows the same lease.
    let (code, stdout, stderr) = sandbox.synosctl(&["hw", "leases"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&router.id) && stdout.contains("synos-llm-router"),
        "{stdout}"
    );
    assert!(stdout.contains("10.0 GiB"), "{stdout}");

    hardware
        .release_lease(ReleaseLeaseRequest {
            lease_id: router.id.clone(),
        })
        .await
        .unwrap();
    let whole = hardware
        .acquire_accelerator(ask(0, "trainer", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.memory_bytes, 0);
    // The reaper reclaims it within its second, without a call touching the book.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let file = std::fs::read_to_string(sandbox.state_dir().join("hwaccel/leases.json")).unwrap();
    assert!(!file.contains(&whole.id), "{file}");
    let (code, stdout, _) = sandbox.synosctl(&["hw", "leases", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "[]");
}

#[tokio::test]
async fn synosctl_hw_shows_the_machine_its_tier_and_a_live_view() {
    let sandbox = Sandbox::new();
    sandbox.write_config("hwaccel", "[sampler]\ninterval_ms = 100\n");
    let _daemon = sandbox.start("hwaccel").await;

    let (code, stdout, stderr) = sandbox.synosctl(&["hw", "info", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in [
        "platform",
        "cpu",
        "memory",
        "disks",
        "accelerators",
        "virtualization",
        "cgroup",
        "effective",
        "notes",
    ] {
        assert!(info.get(key).is_some(), "{key} missing: {stdout}");
    }

    let (code, stdout, _) = sandbox.synosctl(&["hw", "tier", "--json"]).await;
    assert_eq!(code, 0);
    let tier: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        ["minimal", "standard", "full"].contains(&tier["tier"].as_str().unwrap()),
        "{stdout}"
    );
    assert!(!tier["reasons"].as_array().unwrap().is_empty());

    let (code, stdout, stderr) = sandbox
        .synosctl(&["hw", "top", "--count", "3", "--json"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let samples: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(samples.len(), 3, "{stdout}");
    assert!(samples[2]["sequence"].as_u64() > samples[0]["sequence"].as_u64());

    let (code, stdout, _) = sandbox.synosctl(&["hw", "top", "--count", "1"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("cpu ") && stdout.contains("memory "),
        "{stdout}"
    );
}
