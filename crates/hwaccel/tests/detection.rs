//! Detection against fixture trees (fake `/proc`, `/sys`, `/dev`, `/etc` and `/run`), one per
//! kind of machine, so every branch is exercised on a machine that has none of them; and
//! against this machine's own tree, checked with `/proc`.
#![allow(
    clippy::unwrap_used,
    reason = "tests: a failure should panic with its location"
)]

use std::path::Path;

use synos_hwaccel::config::TiersConfig;
use synos_hwaccel::detect::{NvmlGpu, Probe, WatchedPath, system_info};
use synos_hwaccel::tier::tier;
use synos_proto::hwaccel::v1::{AcceleratorKind, GetSystemInfoResponse, Tier};

const GIB: u64 = 1 << 30;

/// A fake root directory.
struct Tree(tempfile::TempDir);

impl Tree {
    /// A plain x86 machine: 8 threads on 4 cores with AVX2, 16 GiB, no GPU, no limits.
    fn machine() -> Self {
        let tree = Self(tempfile::tempdir().unwrap());
        let mut cpuinfo = String::new();
        for processor in 0..8 {
            cpuinfo.push_str(&format!(
                "processor\t: {processor}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz\n\
                 physical id\t: 0\ncore id\t\t: {}\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n\n",
                processor % 4
            ));
        }
        tree.file("/proc/cpuinfo", &cpuinfo)
            .file(
                "/proc/meminfo",
                "MemTotal:       16777216 kB\nMemFree:         1000000 kB\nMemAvailable:   12582912 kB\n\
                 SwapTotal:       2097152 kB\nSwapFree:        2097152 kB\n",
            )
            .file("/proc/self/cgroup", "0::/\n")
            .file("/proc/sys/kernel/hostname", "workstation\n")
            .file("/proc/sys/kernel/osrelease", "6.1.0-28-amd64\n")
            .file(
                "/etc/os-release",
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n",
            )
            .file(
                "/sys/devices/system/clocksource/clocksource0/available_clocksource",
                "tsc hpet acpi_pm \n",
            )
    }

    fn file(self, path: &str, content: &str) -> Self {
        let path = self.0.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    /// A symbolic link at `path` to `target` (both absolute inside the tree).
    fn link(self, path: &str, target: &str) -> Self {
        let path = self.0.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::create_dir_all(self.0.path().join(target.trim_start_matches('/'))).unwrap();
        std::os::unix::fs::symlink(self.0.path().join(target.trim_start_matches('/')), path)
            .unwrap();
        self
    }

    /// A PCI function with its class, ids and driver.
    fn pci(self, address: &str, class: &str, vendor: &str, device: &str, driver: &str) -> Self {
        let directory = format!("/sys/devices/pci0000:00/{address}");
        self.file(&format!("{directory}/class"), &format!("{class}\n"))
            .file(&format!("{directory}/vendor"), &format!("{vendor}\n"))
            .file(&format!("{directory}/device"), &format!("{device}\n"))
            .link(
                &format!("{directory}/driver"),
                &format!("/sys/bus/pci/drivers/{driver}"),
            )
            .link(&format!("/sys/bus/pci/devices/{address}"), &directory)
    }

    fn detect(&self, nvml: Result<Vec<NvmlGpu>, String>) -> GetSystemInfoResponse {
        system_info(
            &Probe::new(self.0.path()),
            &[WatchedPath {
                path: self.0.path().join("var/lib/synos/hwaccel"),
                purpose: "state",
            }],
            nvml,
        )
    }
}

fn no_nvml() -> Result<Vec<NvmlGpu>, String> {
    Err("libnvidia-ml.so.1 not found (no NVIDIA driver)".to_owned())
}

#[test]
fn a_plain_machine_has_no_accelerators_and_says_why_nvml_is_silent() {
    let info = Tree::machine().detect(no_nvml());
    let cpu = info.cpu.unwrap();
    assert_eq!(
        (cpu.logical_cores, cpu.physical_cores, cpu.vendor.as_str()),
        (8, Some(4), "GenuineIntel")
    );
    assert_eq!(cpu.model, "Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz");
    assert_eq!(cpu.features, ["sse4_2", "avx", "avx2", "fma", "f16c"]);
    let memory = info.memory.unwrap();
    assert_eq!(memory.total_bytes, 16 * GIB);
    assert_eq!(memory.available_bytes, 12 * GIB);
    let platform = info.platform.unwrap();
    assert_eq!(platform.hostname, "workstation");
    assert_eq!(platform.os_name, "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(platform.kernel_version, "6.1.0-28-amd64");
    assert!(info.accelerators.is_empty());
    let virtualization = info.virtualization.unwrap();
    assert_eq!(
        (
            virtualization.vm.as_str(),
            virtualization.container.as_str()
        ),
        ("none", "none")
    );
    assert_eq!(
        info.notes,
        ["NVML: libnvidia-ml.so.1 not found (no NVIDIA driver)"]
    );
    let effective = info.effective.unwrap();
    assert_eq!((effective.memory_bytes, effective.gpus), (16 * GIB, 0));
    // The state path does not exist yet: its file system is the nearest existing parent's.
    assert_eq!(info.disks.len(), 1);
    assert!(info.disks[0].total_bytes > 0);
    assert_eq!(info.disks[0].purpose, "state");
}

#[test]
fn an_nvidia_card_is_listed_from_sysfs_without_nvml_and_from_nvml_with_it() {
    let tree = Tree::machine().pci("0000:01:00.0", "0x030200", "0x10de", "0x2335", "nvidia");
    let info = tree.detect(no_nvml());
    assert_eq!(info.accelerators.len(), 1);
    let card = &info.accelerators[0];
    assert_eq!(
        (
            card.id.as_str(),
            card.kind(),
            card.vendor.as_str(),
            card.driver.as_str()
        ),
        ("gpu0", AcceleratorKind::Gpu, "NVIDIA", "nvidia")
    );
    assert_eq!((card.source.as_str(), card.memory_bytes), ("drm", None));
    assert!(
        info.notes
            .iter()
            .any(|note| note.contains("0000:01:00.0 is listed from sysfs")),
        "{:?}",
        info.notes
    );

    let with_nvml = tree.detect(Ok(vec![NvmlGpu {
        index: 0,
        name: "NVIDIA H200".to_owned(),
        memory_bytes: 141 * GIB,
        pci_bus_id: "00000000:01:00.0".to_owned(),
    }]));
    assert_eq!(with_nvml.accelerators.len(), 1, "listed twice");
    let gpu = &with_nvml.accelerators[0];
    assert_eq!(
        (gpu.model.as_str(), gpu.source.as_str(), gpu.memory_bytes),
        ("NVIDIA H200", "nvml", Some(141 * GIB))
    );
    assert_eq!(
        (gpu.device_path.as_str(), gpu.pci_address.as_str()),
        ("/dev/nvidia0", "0000:01:00.0")
    );
    assert!(with_nvml.notes.is_empty(), "{:?}", with_nvml.notes);
}

#[test]
fn an_amd_card_has_its_vram_and_name_from_pci_ids() {
    let info = Tree::machine()
        .pci("0000:03:00.0", "0x030000", "0x1002", "0x73bf", "amdgpu")
        .file(
            "/sys/devices/pci0000:00/0000:03:00.0/mem_info_vram_total",
            "17163091968\n",
        )
        .file("/sys/devices/pci0000:00/0000:03:00.0/drm/card0/dev", "226:0\n")
        .file(
            "/usr/share/misc/pci.ids",
            "# pci.ids\n1002  Advanced Micro Devices, Inc. [AMD/ATI]\n\t73a5  Navi 21 [Radeon RX 6950 XT]\n\
             \t73bf  Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]\n\t\t1002 0e3a  Radeon RX 6900 XT\n\
             1022  Advanced Micro Devices, Inc. [AMD]\n",
        )
        .detect(no_nvml());
    let card = &info.accelerators[0];
    assert_eq!(card.vendor, "AMD");
    assert_eq!(card.model, "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]");
    assert_eq!(card.memory_bytes, Some(17_163_091_968));
    assert_eq!(card.device_path, "/dev/dri/card0");
    assert_eq!(card.driver, "amdgpu");
    assert_eq!(info.effective.unwrap().gpus, 1);
}

#[test]
fn an_intel_igpu_shares_memory_and_a_virtual_display_is_not_a_gpu() {
    let info = Tree::machine()
        .pci("0000:00:02.0", "0x030000", "0x8086", "0x9a49", "i915")
        .file(
            "/sys/devices/pci0000:00/0000:00:02.0/drm/card1/dev",
            "226:1\n",
        )
        .pci("0000:00:01.0", "0x030000", "0x1234", "0x1111", "bochs-drm")
        .detect(no_nvml());
    assert_eq!(info.accelerators.len(), 1, "{:?}", info.accelerators);
    let igpu = &info.accelerators[0];
    assert_eq!(
        (igpu.vendor.as_str(), igpu.model.as_str(), igpu.memory_bytes),
        ("Intel", "0x9a49", None)
    );
    assert_eq!(igpu.device_path, "/dev/dri/card1");
    assert!(
        info.notes.iter().any(|note| note
            == "display adapter 0000:00:01.0 (0x1234:0x1111, driver bochs-drm) is not a compute GPU"),
        "{:?}",
        info.notes
    );
}

#[test]
fn an_npu_under_dev_accel_is_listed_apart_from_gpus() {
    let info = Tree::machine()
        .pci("0000:00:0b.0", "0x120000", "0x8086", "0x7d1d", "intel_vpu")
        .link(
            "/sys/class/accel/accel0/device",
            "/sys/devices/pci0000:00/0000:00:0b.0",
        )
        .file("/dev/accel/accel0", "")
        .detect(no_nvml());
    assert_eq!(info.accelerators.len(), 1);
    let npu = &info.accelerators[0];
    assert_eq!(
        (
            npu.id.as_str(),
            npu.kind(),
            npu.vendor.as_str(),
            npu.driver.as_str()
        ),
        ("npu0", AcceleratorKind::Npu, "Intel", "intel_vpu")
    );
    assert_eq!(
        (npu.device_path.as_str(), npu.pci_address.as_str()),
        ("/dev/accel/accel0", "0000:00:0b.0")
    );
    let effective = info.effective.unwrap();
    assert_eq!((effective.gpus, effective.npus), (0, 1));
}

#[test]
fn cgroup_v2_limits_override_the_host_in_the_tier() {
    let info = Tree::machine()
        .file("/proc/self/cgroup", "0::/system.slice/app.service\n")
        .file("/sys/fs/cgroup/system.slice/memory.max", "max\n")
        .file("/sys/fs/cgroup/system.slice/cpu.max", "max 100000\n")
        .file(
            "/sys/fs/cgroup/system.slice/app.service/memory.max",
            "2147483648\n",
        )
        .file(
            "/sys/fs/cgroup/system.slice/app.service/cpu.max",
            "150000 100000\n",
        )
        .file(
            "/sys/fs/cgroup/system.slice/app.service/cpuset.cpus.effective",
            "0-5\n",
        )
        .file("/run/systemd/container", "systemd-nspawn\n")
        .detect(no_nvml());
    let limits = info.cgroup.clone().unwrap();
    assert_eq!(limits.path, "/system.slice/app.service");
    assert_eq!(limits.memory_max_bytes, Some(2 * GIB));
    assert_eq!(limits.cpu_max, Some(1.5));
    let effective = info.effective.unwrap();
    assert_eq!((effective.memory_bytes, effective.cpus), (2 * GIB, 1.5));
    assert_eq!(
        info.virtualization.clone().unwrap().container,
        "systemd-nspawn"
    );
    let decided = tier(&info, &TiersConfig::default());
    assert_eq!(decided.tier(), Tier::Standard);
    assert!(
        decided.reasons[0].contains("(cgroup memory.max)"),
        "{:?}",
        decided.reasons
    );
    // Without the limits the same host is "full".
    let host = Tree::machine().detect(no_nvml());
    assert_eq!(tier(&host, &TiersConfig::default()).tier(), Tier::Full);
}

#[test]
fn cgroup_v1_limits_in_a_docker_container_count_too() {
    let info = Tree::machine()
        .file(
            "/proc/self/cgroup",
            "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n2:cpuset:/docker/abc\n0::/\n",
        )
        .file(
            "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
            "536870912\n",
        )
        .file(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        )
        .file(
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
            "200000\n",
        )
        .file(
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
            "100000\n",
        )
        .file("/sys/fs/cgroup/cpuset/docker/abc/cpuset.cpus", "0-3\n")
        .file("/.dockerenv", "")
        .detect(no_nvml());
    let limits = info.cgroup.clone().unwrap();
    assert_eq!(limits.path, "/docker/abc");
    assert_eq!(
        (limits.memory_max_bytes, limits.cpu_max),
        (Some(GIB / 2), Some(2.0))
    );
    assert_eq!(info.virtualization.clone().unwrap().container, "docker");
    assert_eq!(tier(&info, &TiersConfig::default()).tier(), Tier::Minimal);
}

#[test]
fn hypervisors_are_named_as_systemd_detect_virt_names_them() {
    let qemu = |clocksources: &str| {
        Tree::machine()
            .file("/sys/class/dmi/id/sys_vendor", "QEMU\n")
            .file(
                "/sys/class/dmi/id/product_name",
                "Standard PC (Q35 + ICH9, 2009)\n",
            )
            .file(
                "/sys/devices/system/clocksource/clocksource0/available_clocksource",
                clocksources,
            )
            .detect(no_nvml())
            .virtualization
            .unwrap()
            .vm
    };
    assert_eq!(qemu("tsc acpi_pm \n"), "qemu");
    assert_eq!(qemu("kvm-clock tsc acpi_pm \n"), "kvm");
    let named = |vendor: &str, product: &str| {
        Tree::machine()
            .file("/sys/class/dmi/id/sys_vendor", &format!("{vendor}\n"))
            .file("/sys/class/dmi/id/product_name", &format!("{product}\n"))
            .detect(no_nvml())
            .virtualization
            .unwrap()
            .vm
    };
    assert_eq!(named("VMware, Inc.", "VMware Virtual Platform"), "vmware");
    assert_eq!(
        named("Microsoft Corporation", "Virtual Machine"),
        "microsoft"
    );
    assert_eq!(named("innotek GmbH", "VirtualBox"), "oracle");
    assert_eq!(named("Dell Inc.", "PowerEdge R750"), "none");
    let wsl = Tree::machine()
        .file(
            "/proc/sys/kernel/osrelease",
            "5.15.153.1-microsoft-standard-WSL2\n",
        )
        .detect(no_nvml());
    assert_eq!(wsl.virtualization.unwrap().container, "wsl");
}

#[test]
fn missing_files_leave_honest_blanks_not_errors() {
    let empty = tempfile::tempdir().unwrap();
    let info = system_info(&Probe::new(empty.path()), &[], no_nvml());
    assert_eq!(info.cpu.as_ref().unwrap().model, "unknown");
    assert_eq!(info.memory.unwrap_or_default().total_bytes, 0);
    assert!(
        info.notes
            .iter()
            .any(|note| note.contains("/proc/cpuinfo unreadable"))
    );
    assert_eq!(tier(&info, &TiersConfig::default()).tier(), Tier::Minimal);
}

#[test]
fn this_machine_agrees_with_proc() {
    let info = system_info(&Probe::new("/"), &[], no_nvml());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let processors = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let cpu = info.cpu.unwrap();
    assert_eq!(cpu.logical_cores as usize, processors);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert_eq!(info.memory.unwrap().total_bytes, total_kib * 1024);
    let effective = info.effective.unwrap();
    assert!(effective.memory_bytes <= total_kib * 1024);
    let allowed = std::thread::available_parallelism().unwrap().get() as f64;
    assert!(effective.cpus <= allowed, "{} > {allowed}", effective.cpus);
    assert!(Path::new("/proc/cpuinfo").exists());
    let flags = cpuinfo
        .lines()
        .find(|line| line.starts_with("flags") || line.starts_with("Features"))
        .unwrap_or_default();
    for feature in &cpu.features {
        let kernel_name = if feature == "neon" {
            "asimd"
        } else {
            feature.as_str()
        };
        assert!(
            flags.split_whitespace().any(|flag| flag == kernel_name),
            "{feature}"
        );
    }
}
