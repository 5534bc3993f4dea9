//! NVIDIA GPUs through NVML, loaded at run time from the driver's `libnvidia-ml.so.1`: a
//! machine without the driver has no NVML, which is "no NVIDIA GPU known to NVML", not an error.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use synos_proto::hwaccel::v1::AcceleratorUsage;

use crate::detect::NvmlGpu;

/// The library the NVIDIA driver installs (the unversioned name is only in development
/// packages).
const LIBRARY: &str = "libnvidia-ml.so.1";

/// A loaded NVML.
pub struct Nvidia {
    nvml: Nvml,
}

impl std::fmt::Debug for Nvidia {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Nvidia").finish_non_exhaustive()
    }
}

impl Nvidia {
    /// Loads NVML and initialises it; the error says why there is none, for the notes.
    pub fn load() -> Result<Self, String> {
        Nvml::builder()
            .lib_path(std::ffi::OsStr::new(LIBRARY))
            .init()
            .map(|nvml| Self { nvml })
            .map_err(|error| match error {
                nvml_wrapper::error::NvmlError::LibloadingError(_) => {
                    format!("{LIBRARY} not found (no NVIDIA driver)")
                }
                other => format!("cannot initialise: {other}"),
            })
    }

    /// Every GPU NVML sees.
    pub fn gpus(&self) -> Result<Vec<NvmlGpu>, String> {
        let count = self
            .nvml
            .device_count()
            .map_err(|error| format!("cannot count GPUs: {error}"))?;
        (0..count)
            .map(|index| {
                let device = self
                    .nvml
                    .device_by_index(index)
                    .map_err(|error| format!("GPU {index}: {error}"))?;
                Ok(NvmlGpu {
                    index,
                    name: device.name().unwrap_or_else(|_| "NVIDIA GPU".to_owned()),
                    memory_bytes: device.memory_info().map_or(0, |memory| memory.total),
                    pci_bus_id: device
                        .pci_info()
                        .map(|pci| pci.bus_id)
                        .map_err(|error| format!("GPU {index}: no PCI address: {error}"))?,
                })
            })
            .collect()
    }

    /// What the GPU at `pci_address` is doing now; `None` when NVML no longer knows it.
    pub fn usage(&self, pci_address: &str) -> Option<AcceleratorUsage> {
        let device = self.nvml.device_by_pci_bus_id(pci_address).ok()?;
        let memory = device.memory_info().ok();
        Some(AcceleratorUsage {
            id: String::new(),
            utilization_percent: device
                .utilization_rates()
                .ok()
                .map(|rates| f64::from(rates.gpu)),
            memory_used_bytes: memory.as_ref().map(|memory| memory.used),
            memory_total_bytes: memory.as_ref().map(|memory| memory.total),
            temperature_celsius: device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .map(f64::from),
            power_watts: device
                .power_usage()
                .ok()
                .map(|milliwatts| f64::from(milliwatts) / 1000.0),
        })
    }
}
