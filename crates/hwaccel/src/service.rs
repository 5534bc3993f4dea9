//! `synos.hwaccel.v1.Hardware`: platform, CPU and memory as the kernel reports them.

use synos_common::ServiceError;
use synos_proto::hwaccel::v1::hardware_server::Hardware;
use synos_proto::hwaccel::v1::{
    Cpu, GetSystemInfoRequest, GetSystemInfoResponse, Memory, Platform,
};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tonic::{Request, Response, Status};

/// The hardware daemon's gRPC service.
#[derive(Debug)]
pub(crate) struct HardwareService;

/// Reads the machine now (blocking: it reads `/proc`).
pub(crate) fn system_info() -> GetSystemInfoResponse {
    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::everything())
            .with_cpu(CpuRefreshKind::nothing()),
    );
    let unknown = || "unknown".to_owned();
    GetSystemInfoResponse {
        platform: Some(Platform {
            hostname: System::host_name().unwrap_or_else(unknown),
            os_name: System::long_os_version().unwrap_or_else(unknown),
            kernel_version: System::kernel_version().unwrap_or_else(unknown),
            architecture: System::cpu_arch(),
        }),
        cpu: Some(Cpu {
            model: system
                .cpus()
                .first()
                .map_or_else(unknown, |cpu| cpu.brand().trim().to_owned()),
            logical_cores: u32::try_from(system.cpus().len()).unwrap_or(u32::MAX),
            physical_cores: System::physical_core_count()
                .and_then(|count| u32::try_from(count).ok()),
        }),
        memory: Some(Memory {
            total_bytes: system.total_memory(),
            available_bytes: system.available_memory(),
            swap_total_bytes: system.total_swap(),
            swap_free_bytes: system.free_swap(),
        }),
    }
}

/// The one-line status summary, e.g. "serving; 2 CPUs, 23.4 GiB memory".
pub(crate) fn summary(info: &GetSystemInfoResponse) -> String {
    let cores = info.cpu.as_ref().map_or(0, |cpu| cpu.logical_cores);
    let memory = info.memory.as_ref().map_or(0, |memory| memory.total_bytes);
    #[expect(clippy::cast_precision_loss, reason = "a rounded figure for people")]
    let gibibytes = memory as f64 / f64::from(1u32 << 30);
    format!("serving; {cores} CPUs, {gibibytes:.1} GiB memory")
}

#[tonic::async_trait]
impl Hardware for HardwareService {
    async fn get_system_info(
        &self,
        _request: Request<GetSystemInfoRequest>,
    ) -> Result<Response<GetSystemInfoResponse>, Status> {
        let info = tokio::task::spawn_blocking(system_info)
            .await
            .map_err(|error| ServiceError::internal("reading system information", &error))?;
        Ok(Response::new(info))
    }
}
