//! `synos.memory.v1.Memory`: what the store and its filesystem look like now.

use std::path::PathBuf;

use synos_common::ServiceError;
use synos_proto::memory::v1::memory_server::Memory;
use synos_proto::memory::v1::{StatsRequest, StatsResponse};
use tonic::{Request, Response, Status};

/// The memory daemon's gRPC service.
#[derive(Debug)]
pub(crate) struct MemoryService {
    state_directory: PathBuf,
}

impl MemoryService {
    pub(crate) fn new(state_directory: PathBuf) -> Self {
        Self { state_directory }
    }
}

#[tonic::async_trait]
impl Memory for MemoryService {
    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let directory = self.state_directory.clone();
        #[allow(
            clippy::useless_conversion,
            reason = "fsblkcnt_t is 32 bits on some Debian architectures"
        )]
        let stats = tokio::task::spawn_blocking(move || {
            let filesystem = nix::sys::statvfs::statvfs(&directory)?;
            let writable = nix::unistd::access(&directory, nix::unistd::AccessFlags::W_OK).is_ok();
            let block = u64::from(filesystem.fragment_size());
            Ok::<_, nix::Error>(StatsResponse {
                state_directory: directory.display().to_string(),
                state_directory_writable: writable,
                filesystem_total_bytes: u64::from(filesystem.blocks()).saturating_mul(block),
                filesystem_available_bytes: u64::from(filesystem.blocks_available())
                    .saturating_mul(block),
            })
        })
        .await
        .map_err(|error| ServiceError::internal("inspecting the state directory", &error))?
        .map_err(|error| {
            ServiceError::new(
                synos_common::error::ErrorKind::FailedPrecondition,
                format!(
                    "state directory {} unusable: {error}",
                    self.state_directory.display()
                ),
            )
        })?;
        Ok(Response::new(stats))
    }
}
