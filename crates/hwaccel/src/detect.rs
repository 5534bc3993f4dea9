//! Detection: what the machine is, read from `/proc`, `/sys`, `/dev`, `/etc` and `/run` under a
//! root directory, so that every branch can be tested against a fixture tree. Nothing here
//! fails: what cannot be read is left out and said in the answer's notes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use synos_common::filesystem::FileSystemUsage;
use synos_proto::hwaccel::v1::{
    Accelerator, AcceleratorKind, CgroupLimits, Cpu, Disk, EffectiveResources,
    GetSystemInfoResponse, Memory, Platform, Virtualization,
};

/// CPU features that matter to inference, as `/proc/cpuinfo` names them (x86 `flags`, ARM
/// `Features`; ARM's `asimd` is reported as "neon").
const INFERENCE_FEATURES: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
];

/// PCI vendors whose display devices are compute GPUs; other display devices (virtual VGA,
/// server management chips) are not.
const GPU_VENDORS: &[(&str, &str)] =
    &[("0x10de", "NVIDIA"), ("0x1002", "AMD"), ("0x8086", "Intel")];

/// Vendors of NPUs and other `/dev/accel` devices, by PCI id.
const ACCELERATOR_VENDORS: &[(&str, &str)] = &[
    ("0x8086", "Intel"),
    ("0x1022", "AMD"),
    ("0x1002", "AMD"),
    ("0x1e60", "Hailo"),
    ("0x1da3", "Habana"),
    ("0x17cb", "Qualcomm"),
];

/// Reads files under a root; every path given is absolute as on the running system.
#[derive(Debug, Clone)]
pub struct Probe {
    root: PathBuf,
}

impl Probe {
    /// A probe of the tree at `root` ("/" for this machine).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether this is the running system's own tree, where the process's own CPU affinity
    /// applies too.
    pub fn is_this_machine(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `absolute` under the root.
    pub fn path(&self, absolute: impl AsRef<Path>) -> PathBuf {
        let absolute = absolute.as_ref();
        self.root
            .join(absolute.strip_prefix("/").unwrap_or(absolute))
    }

    /// The file's text, or `None` when it cannot be read.
    pub fn read(&self, absolute: impl AsRef<Path>) -> Option<String> {
        std::fs::read_to_string(self.path(absolute)).ok()
    }

    /// The file's first line, trimmed; `None` when unreadable or empty.
    pub fn read_value(&self, absolute: impl AsRef<Path>) -> Option<String> {
        self.read(absolute)
            .map(|text| text.lines().next().unwrap_or("").trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// The last component of the link's target (a driver's or device's name).
    fn link_name(&self, absolute: impl AsRef<Path>) -> Option<String> {
        std::fs::read_link(self.path(absolute))
            .ok()
            .and_then(|target| {
                target
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
    }

    /// Entry names of a directory, sorted; empty when it cannot be read.
    fn entries(&self, absolute: impl AsRef<Path>) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(absolute))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by(|left, right| natural_order(left, right));
        names
    }
}

/// "card2" before "card10".
fn natural_order(left: &str, right: &str) -> std::cmp::Ordering {
    let split = |name: &str| {
        let digits = name.trim_end_matches(|c: char| c.is_ascii_digit());
        (
            digits.to_owned(),
            name[digits.len()..].parse::<u64>().unwrap_or(0),
        )
    };
    split(left).cmp(&split(right)).then_with(|| left.cmp(right))
}

/// An NVIDIA GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlGpu {
    /// NVML's index, also the `/dev/nvidiaN` minor.
    pub index: u32,
    /// e.g. "NVIDIA H200".
    pub name: String,
    /// Total memory.
    pub memory_bytes: u64,
    /// As NVML gives it, e.g. "00000000:03:00.0".
    pub pci_bus_id: String,
}

/// A path whose file system is reported, and what SynOS keeps there.
#[derive(Debug, Clone)]
pub struct WatchedPath {
    /// e.g. "/var/lib/synos/hwaccel".
    pub path: PathBuf,
    /// "state" or "runtime".
    pub purpose: &'static str,
}

/// Everything at once. `nvml` is NVML's list of GPUs, or why there is none.
pub fn system_info(
    probe: &Probe,
    paths: &[WatchedPath],
    nvml: Result<Vec<NvmlGpu>, String>,
) -> GetSystemInfoResponse {
    let mut notes = Vec::new();
    let cpu = cpu(probe, &mut notes);
    let memory = memory(probe, &mut notes);
    let (cgroup, cpuset_cpus) = cgroup_limits(probe);
    let accelerators = accelerators(probe, nvml, &mut notes);
    let mut cpus = f64::from(cpu.logical_cores.max(1));
    if let Some(count) = cpuset_cpus {
        cpus = cpus.min(f64::from(count));
    }
    if let Some(quota) = cgroup.cpu_max {
        cpus = cpus.min(quota);
    }
    if probe.is_this_machine()
        && let Ok(allowed) = std::thread::available_parallelism()
    {
        cpus = cpus.min(allowed.get() as f64);
    }
    let count = |kind: AcceleratorKind| {
        u32::try_from(
            accelerators
                .iter()
                .filter(|accelerator| accelerator.kind() == kind)
                .count(),
        )
        .unwrap_or(u32::MAX)
    };
    let effective = EffectiveResources {
        memory_bytes: cgroup
            .memory_max_bytes
            .map_or(memory.total_bytes, |limit| limit.min(memory.total_bytes)),
        cpus,
        gpus: count(AcceleratorKind::Gpu),
        npus: count(AcceleratorKind::Npu),
    };
    GetSystemInfoResponse {
        platform: Some(platform(probe)),
        cpu: Some(cpu),
        memory: Some(memory),
        disks: disks(paths, &mut notes),
        accelerators,
        virtualization: Some(virtualization(probe)),
        cgroup: Some(cgroup),
        effective: Some(effective),
        notes,
    }
}

fn platform(probe: &Probe) -> Platform {
    let unknown = || "unknown".to_owned();
    let os_name = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|path| probe.read(path))
        .and_then(|text| {
            let field = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                    .map(|value| value.trim().trim_matches('"').to_owned())
            };
            field("PRETTY_NAME").or_else(|| field("NAME"))
        });
    Platform {
        hostname: probe
            .read_value("/proc/sys/kernel/hostname")
            .unwrap_or_else(unknown),
        os_name: os_name.unwrap_or_else(unknown),
        kernel_version: probe
            .read_value("/proc/sys/kernel/osrelease")
            .unwrap_or_else(unknown),
        architecture: std::env::consts::ARCH.to_owned(),
    }
}

fn cpu(probe: &Probe, notes: &mut Vec<String>) -> Cpu {
    let Some(text) = probe.read("/proc/cpuinfo") else {
        notes.push("CPU: /proc/cpuinfo unreadable".to_owned());
        return Cpu {
            model: "unknown".to_owned(),
            logical_cores: 1,
            ..Cpu::default()
        };
    };
    let mut logical = 0_u32;
    let mut model = None;
    let mut vendor = None;
    let mut features: BTreeSet<String> = BTreeSet::new();
    let mut cores: BTreeSet<(String, String)> = BTreeSet::new();
    let mut package = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => logical += 1,
            "model name" | "Model" | "Hardware" if model.is_none() && !value.is_empty() => {
                model = Some(value.to_owned());
            }
            "vendor_id" | "CPU implementer" if vendor.is_none() => {
                vendor = Some(arm_implementer(value).unwrap_or(value).to_owned());
            }
            "flags" | "Features" => {
                for flag in value.split_whitespace() {
                    let flag = if flag == "asimd" { "neon" } else { flag };
                    if INFERENCE_FEATURES.contains(&flag) {
                        features.insert(flag.to_owned());
                    }
                }
            }
            "physical id" => value.clone_into(&mut package),
            "core id" => {
                cores.insert((package.clone(), value.to_owned()));
            }
            _ => {}
        }
    }
    let physical = if cores.is_empty() {
        sysfs_physical_cores(probe)
    } else {
        u32::try_from(cores.len()).ok()
    };
    Cpu {
        model: model.unwrap_or_else(|| "unknown".to_owned()),
        logical_cores: logical.max(1),
        physical_cores: physical,
        features: INFERENCE_FEATURES
            .iter()
            .filter(|feature| features.contains(**feature))
            .map(|feature| (*feature).to_owned())
            .collect(),
        vendor: vendor.unwrap_or_default(),
    }
}

/// ARM's `CPU implementer` codes that name a company.
fn arm_implementer(code: &str) -> Option<&'static str> {
    Some(match code {
        "0x41" => "ARM",
        "0x42" => "Broadcom",
        "0x43" => "Cavium",
        "0x48" => "HiSilicon",
        "0x4e" => "NVIDIA",
        "0x51" => "Qualcomm",
        "0x61" => "Apple",
        "0xc0" => "Ampere",
        _ => return None,
    })
}

/// Distinct (package, core) pairs from sysfs topology, where `/proc/cpuinfo` has no core ids.
fn sysfs_physical_cores(probe: &Probe) -> Option<u32> {
    let mut cores = BTreeSet::new();
    for name in probe.entries("/sys/devices/system/cpu") {
        if !name.starts_with("cpu") || !name[3..].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let topology = format!("/sys/devices/system/cpu/{name}/topology");
        if let (Some(package), Some(core)) = (
            probe.read_value(format!("{topology}/physical_package_id")),
            probe.read_value(format!("{topology}/core_id")),
        ) {
            cores.insert((package, core));
        }
    }
    u32::try_from(cores.len()).ok().filter(|count| *count > 0)
}

/// `/proc/meminfo`'s fields in bytes.
pub fn meminfo(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let mut parts = value.split_whitespace();
            let number: u64 = parts.next()?.parse().ok()?;
            let bytes = match parts.next() {
                Some("kB") => number.saturating_mul(1024),
                _ => number,
            };
            Some((key.trim(), bytes))
        })
        .collect()
}

fn memory(probe: &Probe, notes: &mut Vec<String>) -> Memory {
    let Some(text) = probe.read("/proc/meminfo") else {
        notes.push("memory: /proc/meminfo unreadable".to_owned());
        return Memory::default();
    };
    let fields = meminfo(&text);
    let field = |key: &str| fields.get(key).copied().unwrap_or(0);
    Memory {
        total_bytes: field("MemTotal"),
        available_bytes: fields
            .get("MemAvailable")
            .copied()
            .unwrap_or_else(|| field("MemFree")),
        swap_total_bytes: field("SwapTotal"),
        swap_free_bytes: field("SwapFree"),
    }
}

/// The cgroup directories this process is in: the v2 one, and v1 ones by controller.
#[derive(Debug, Default)]
pub struct CgroupPaths {
    /// `/sys/fs/cgroup/<path>` of the unified hierarchy.
    pub unified: Option<String>,
    /// Controller ("memory", "cpu", "cpuset") to its v1 directory.
    pub legacy: BTreeMap<String, String>,
    /// The path as `/proc/self/cgroup` gives it (v2's, else the memory controller's).
    pub path: String,
}

/// Where `/proc/self/cgroup` puts this process.
pub fn cgroup_paths(probe: &Probe) -> CgroupPaths {
    let mut paths = CgroupPaths::default();
    let Some(text) = probe.read("/proc/self/cgroup") else {
        return paths;
    };
    let (mut unified_path, mut memory_path) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            paths.unified = Some(join_cgroup("/sys/fs/cgroup", relative));
            unified_path = Some(path.to_owned());
            continue;
        }
        let mount = controllers.replace("name=", "");
        for controller in controllers.split(',') {
            // The mount point is named after the controllers it holds ("cpu,cpuacct"), often
            // with a link per controller; the controller's own name is tried first.
            for candidate in [controller, mount.as_str()] {
                let directory = join_cgroup(&format!("/sys/fs/cgroup/{candidate}"), relative);
                if probe.path(&directory).is_dir() {
                    paths.legacy.insert(controller.to_owned(), directory);
                    break;
                }
            }
            if controller == "memory" {
                memory_path = Some(path.to_owned());
            }
        }
    }
    // On a hybrid system the unified path is "/" and the v1 memory path says more.
    paths.path = match (unified_path, memory_path) {
        (Some(unified), Some(memory)) if unified == "/" => memory,
        (Some(unified), _) => unified,
        (None, Some(memory)) => memory,
        (None, None) => String::new(),
    };
    paths
}

fn join_cgroup(mount: &str, relative: &str) -> String {
    if relative.is_empty() {
        mount.to_owned()
    } else {
        format!("{mount}/{relative}")
    }
}

/// `directory` and each parent up to `/sys/fs/cgroup[/<controller>]`, leaf first.
fn cgroup_ancestry(directory: &str, top: &str) -> Vec<String> {
    let mut chain = vec![directory.to_owned()];
    let mut current = directory;
    while current.len() > top.len()
        && let Some((parent, _)) = current.rsplit_once('/')
    {
        chain.push(parent.to_owned());
        current = parent;
    }
    chain
}

/// The tightest limits along this process's cgroups (v2 and v1), and the CPUs its cpuset
/// allows.
pub fn cgroup_limits(probe: &Probe) -> (CgroupLimits, Option<u32>) {
    let paths = cgroup_paths(probe);
    let mut memory_max: Option<u64> = None;
    let mut cpu_max: Option<f64> = None;
    let mut cpuset: Option<u32> = None;
    let mut tighten_memory = |limit: u64| {
        memory_max = Some(memory_max.map_or(limit, |current| current.min(limit)));
    };
    let mut tighten_cpu = |limit: f64| {
        cpu_max = Some(cpu_max.map_or(limit, |current| current.min(limit)));
    };
    if let Some(unified) = &paths.unified {
        for directory in cgroup_ancestry(unified, "/sys/fs/cgroup") {
            if let Some(limit) = probe
                .read_value(format!("{directory}/memory.max"))
                .and_then(|value| value.parse::<u64>().ok())
            {
                tighten_memory(limit);
            }
            if let Some(value) = probe.read_value(format!("{directory}/cpu.max")) {
                let mut parts = value.split_whitespace();
                if let (Some(Ok(quota)), Some(Ok(period))) = (
                    parts.next().map(str::parse::<f64>),
                    parts.next().map(str::parse::<f64>),
                ) && period > 0.0
                {
                    tighten_cpu(quota / period);
                }
            }
        }
        cpuset = probe
            .read_value(format!("{unified}/cpuset.cpus.effective"))
            .and_then(|list| count_cpu_list(&list));
    }
    if let Some(directory) = paths.legacy.get("memory") {
        for directory in cgroup_ancestry(directory, "/sys/fs/cgroup/memory") {
            // v1 writes "no limit" as the largest page-aligned value.
            if let Some(limit) = probe
                .read_value(format!("{directory}/memory.limit_in_bytes"))
                .and_then(|value| value.parse::<u64>().ok())
                .filter(|limit| *limit < 1 << 62)
            {
                tighten_memory(limit);
            }
        }
    }
    if let Some(directory) = paths.legacy.get("cpu") {
        let quota = probe
            .read_value(format!("{directory}/cpu.cfs_quota_us"))
            .and_then(|value| value.parse::<f64>().ok());
        let period = probe
            .read_value(format!("{directory}/cpu.cfs_period_us"))
            .and_then(|value| value.parse::<f64>().ok());
        if let (Some(quota), Some(period)) = (quota, period)
            && quota > 0.0
            && period > 0.0
        {
            tighten_cpu(quota / period);
        }
    }
    if cpuset.is_none()
        && let Some(directory) = paths.legacy.get("cpuset")
    {
        cpuset = probe
            .read_value(format!("{directory}/cpuset.cpus"))
            .and_then(|list| count_cpu_list(&list));
    }
    (
        CgroupLimits {
            path: paths.path,
            memory_max_bytes: memory_max,
            cpu_max,
        },
        cpuset,
    )
}

/// How many CPUs a list such as "0-3,8,10-11" names.
fn count_cpu_list(list: &str) -> Option<u32> {
    let mut count = 0_u32;
    for part in list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        count += match part.split_once('-') {
            Some((first, last)) => {
                last.parse::<u32>()
                    .ok()?
                    .checked_sub(first.parse::<u32>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    (count > 0).then_some(count)
}

/// The hypervisor and container, named as `systemd-detect-virt` names them.
pub fn virtualization(probe: &Probe) -> Virtualization {
    Virtualization {
        vm: virtual_machine(probe).to_owned(),
        container: container(probe),
    }
}

fn virtual_machine(probe: &Probe) -> &'static str {
    let dmi: Vec<String> = [
        "sys_vendor",
        "product_name",
        "board_vendor",
        "bios_vendor",
        "product_version",
    ]
    .iter()
    .filter_map(|field| probe.read_value(format!("/sys/class/dmi/id/{field}")))
    .collect();
    let kvm_clock = probe
        .read("/sys/devices/system/clocksource/clocksource0/available_clocksource")
        .is_some_and(|sources| {
            sources
                .split_whitespace()
                .any(|source| source == "kvm-clock")
        });
    const BY_DMI: &[(&str, &str)] = &[
        ("KVM", "kvm"),
        ("Amazon EC2", "amazon"),
        ("Google Compute Engine", "google"),
        ("QEMU", "qemu"),
        ("VMware", "vmware"),
        ("VMW", "vmware"),
        ("innotek GmbH", "oracle"),
        ("VirtualBox", "oracle"),
        ("Xen", "xen"),
        ("Bochs", "bochs"),
        ("Parallels", "parallels"),
        ("BHYVE", "bhyve"),
        ("Firecracker", "firecracker"),
        ("Apple Virtualization", "apple"),
    ];
    for value in &dmi {
        if let Some((_, name)) = BY_DMI.iter().find(|(marker, _)| value.starts_with(marker)) {
            // QEMU with KVM acceleration is KVM, as systemd-detect-virt says (from CPUID).
            return if *name == "qemu" && kvm_clock {
                "kvm"
            } else {
                name
            };
        }
    }
    if dmi.iter().any(|value| value == "Microsoft Corporation")
        && dmi.iter().any(|value| value == "Virtual Machine")
    {
        return "microsoft";
    }
    if let Some(kind) = probe.read_value("/sys/hypervisor/type") {
        return if kind == "xen" { "xen" } else { "vm-other" };
    }
    if probe
        .read_value("/proc/device-tree/hypervisor/compatible")
        .is_some_and(|value| value.contains("kvm"))
    {
        return "kvm";
    }
    let hypervisor_flag = probe.read("/proc/cpuinfo").is_some_and(|text| {
        text.lines()
            .find(|line| line.starts_with("flags"))
            .is_some_and(|line| line.split_whitespace().any(|flag| flag == "hypervisor"))
    });
    match (hypervisor_flag, kvm_clock) {
        (_, true) => "kvm",
        (true, false) => "vm-other",
        (false, false) => "none",
    }
}

fn container(probe: &Probe) -> String {
    if probe
        .read_value("/proc/sys/kernel/osrelease")
        .is_some_and(|release| release.contains("Microsoft") || release.contains("WSL"))
    {
        return "wsl".to_owned();
    }
    // systemd and nspawn write this; podman and others set container= for PID 1.
    let named = probe.read_value("/run/systemd/container").or_else(|| {
        probe.read("/proc/1/environ").and_then(|environment| {
            environment
                .split('\0')
                .find_map(|entry| entry.strip_prefix("container="))
                .map(str::to_owned)
                .filter(|value| !value.is_empty())
        })
    });
    if let Some(name) = named {
        return match name.as_str() {
            "oci" => "container-other".to_owned(),
            _ => name,
        };
    }
    if probe.path("/run/.containerenv").exists() {
        return "podman".to_owned();
    }
    if probe.path("/.dockerenv").exists() {
        return "docker".to_owned();
    }
    let cgroups = probe.read("/proc/1/cgroup").unwrap_or_default();
    if cgroups.contains("/docker/") {
        return "docker".to_owned();
    }
    if cgroups.contains("/lxc/") || probe.path("/dev/lxd").exists() {
        return "lxc".to_owned();
    }
    "none".to_owned()
}

fn disks(paths: &[WatchedPath], notes: &mut Vec<String>) -> Vec<Disk> {
    paths
        .iter()
        .filter_map(|watched| match file_system_of(&watched.path) {
            Ok(usage) => Some(Disk {
                path: watched.path.display().to_string(),
                purpose: watched.purpose.to_owned(),
                total_bytes: usage.total_bytes,
                available_bytes: usage.available_bytes,
                total_inodes: usage.total_inodes,
                free_inodes: usage.free_inodes,
            }),
            Err(problem) => {
                notes.push(format!(
                    "{} path {}: {problem}",
                    watched.purpose,
                    watched.path.display()
                ));
                None
            }
        })
        .collect()
}

/// The file system holding `path`, or its nearest existing ancestor (a state directory not
/// made yet lives where it will be made).
pub fn file_system_of(path: &Path) -> Result<FileSystemUsage, String> {
    let existing = path
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .ok_or_else(|| "no part of it exists".to_owned())?;
    synos_common::filesystem::usage(existing).map_err(|error| error.to_string())
}

/// GPUs (NVML's, then PCI display devices NVML does not cover) and `/dev/accel` devices.
fn accelerators(
    probe: &Probe,
    nvml: Result<Vec<NvmlGpu>, String>,
    notes: &mut Vec<String>,
) -> Vec<Accelerator> {
    let mut found = Vec::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    match nvml {
        Ok(gpus) => {
            for gpu in gpus {
                let address = normalised_pci_address(&gpu.pci_bus_id);
                covered.insert(address.clone());
                found.push(Accelerator {
                    id: String::new(),
                    kind: AcceleratorKind::Gpu.into(),
                    vendor: "NVIDIA".to_owned(),
                    model: gpu.name,
                    driver: "nvidia".to_owned(),
                    memory_bytes: Some(gpu.memory_bytes),
                    device_path: format!("/dev/nvidia{}", gpu.index),
                    source: "nvml".to_owned(),
                    pci_address: address,
                });
            }
        }
        Err(problem) => notes.push(format!("NVML: {problem}")),
    }
    let names = PciNames::load(probe);
    for address in probe.entries("/sys/bus/pci/devices") {
        let device = format!("/sys/bus/pci/devices/{address}");
        let Some(class) = probe.read_value(format!("{device}/class")) else {
            continue;
        };
        // Display controllers: 0x03xxxx.
        if !class.starts_with("0x03") || covered.contains(&address) {
            continue;
        }
        let (vendor_id, device_id) = pci_ids(probe, &device);
        let driver = probe
            .link_name(format!("{device}/driver"))
            .unwrap_or_default();
        let Some((_, vendor)) = GPU_VENDORS.iter().find(|(id, _)| *id == vendor_id) else {
            notes.push(format!(
                "display adapter {address} ({vendor_id}:{device_id}, driver {}) is not a compute GPU",
                if driver.is_empty() { "none" } else { &driver }
            ));
            continue;
        };
        let card = probe
            .entries(format!("{device}/drm"))
            .into_iter()
            .find(|name| name.starts_with("card"));
        let model = probe
            .read_value(format!("{device}/product_name"))
            .or_else(|| names.device(&vendor_id, &device_id))
            .unwrap_or_else(|| device_id.clone());
        if vendor_id == "0x10de" && driver == "nvidia" {
            notes.push(format!(
                "NVIDIA GPU {address} is listed from sysfs: without NVML its memory and use are unknown"
            ));
        }
        found.push(Accelerator {
            id: String::new(),
            kind: AcceleratorKind::Gpu.into(),
            vendor: (*vendor).to_owned(),
            model,
            driver,
            // amdgpu says how much VRAM a card has; integrated GPUs share system memory.
            memory_bytes: probe
                .read_value(format!("{device}/mem_info_vram_total"))
                .and_then(|value| value.parse().ok())
                .filter(|bytes| *bytes > 0),
            device_path: card.map_or_else(String::new, |card| format!("/dev/dri/{card}")),
            source: "drm".to_owned(),
            pci_address: address,
        });
    }
    for name in probe.entries("/sys/class/accel") {
        if !name.starts_with("accel") {
            continue;
        }
        let device = format!("/sys/class/accel/{name}/device");
        let (vendor_id, device_id) = pci_ids(probe, &device);
        let vendor = ACCELERATOR_VENDORS
            .iter()
            .find(|(id, _)| *id == vendor_id)
            .map_or_else(|| vendor_id.clone(), |(_, vendor)| (*vendor).to_owned());
        found.push(Accelerator {
            id: String::new(),
            kind: AcceleratorKind::Npu.into(),
            vendor,
            model: names
                .device(&vendor_id, &device_id)
                .unwrap_or_else(|| device_id.clone()),
            driver: probe
                .link_name(format!("{device}/driver"))
                .unwrap_or_default(),
            memory_bytes: None,
            device_path: format!("/dev/accel/{name}"),
            source: "accel".to_owned(),
            pci_address: probe.link_name(&device).unwrap_or_default(),
        });
    }
    let mut numbers: BTreeMap<i32, usize> = BTreeMap::new();
    for accelerator in &mut found {
        let number = numbers.entry(accelerator.kind).or_default();
        let prefix = if accelerator.kind() == AcceleratorKind::Npu {
            "npu"
        } else {
            "gpu"
        };
        accelerator.id = format!("{prefix}{number}");
        *number += 1;
    }
    found
}

/// A PCI device's vendor and device ids ("0x1002", "0x73bf"); empty where unreadable.
fn pci_ids(probe: &Probe, device: &str) -> (String, String) {
    let id = |file: &str| {
        probe
            .read_value(format!("{device}/{file}"))
            .unwrap_or_default()
    };
    (id("vendor"), id("device"))
}

/// NVML writes a PCI domain with eight digits ("00000000:03:00.0"), sysfs with four.
fn normalised_pci_address(address: &str) -> String {
    let lower = address.to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => lower,
    }
}

/// Names from the PCI id database (`pci.ids`), where the system has it.
struct PciNames(Option<String>);

impl PciNames {
    fn load(probe: &Probe) -> Self {
        Self(
            ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"]
                .iter()
                .find_map(|path| probe.read(path)),
        )
    }

    /// "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]" for ("0x1002", "0x73bf").
    fn device(&self, vendor: &str, device: &str) -> Option<String> {
        let text = self.0.as_deref()?;
        let vendor = vendor.strip_prefix("0x")?;
        let device = device.strip_prefix("0x")?;
        let mut in_vendor = false;
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if !line.starts_with('\t') {
                if in_vendor {
                    return None;
                }
                in_vendor = line.starts_with(vendor);
            } else if in_vendor
                && !line.starts_with("\t\t")
                && let Some(name) = line[1..].strip_prefix(device)
            {
                return Some(name.trim().to_owned());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_pci_addresses_are_read_as_the_kernel_writes_them() {
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("5"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(normalised_pci_address("00000000:03:00.0"), "0000:03:00.0");
        assert_eq!(normalised_pci_address("0000:03:00.0"), "0000:03:00.0");
        assert_eq!(natural_order("card2", "card10"), std::cmp::Ordering::Less);
    }

    #[test]
    fn meminfo_is_in_bytes() {
        let fields = meminfo("MemTotal:       16318396 kB\nHugePages_Total:       0\n");
        assert_eq!(fields["MemTotal"], 16_318_396 * 1024);
        assert_eq!(fields["HugePages_Total"], 0);
    }
}
