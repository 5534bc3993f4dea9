//! The memory daemon: owns the state directory where agent memories are stored and serves
//! `synos.memory.v1.Memory`.

mod service;

use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::memory::v1::memory_server::MemoryServer;

/// The memory daemon's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "memory",
    binary: "synos-memory",
    version: env!("CARGO_PKG_VERSION"),
};

/// `/etc/synos/memory.toml`: only the common `[server]` and `[log]` sections so far.
pub type Config = synos_common::config::BasicSettings;

/// Serves memory until `shutdown` is cancelled. A state directory that cannot be used is
/// reported in health and `STATUS=`, not fatal: the daemon keeps answering what it can.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let state_directory = config.state_directory();
    let usable = config.prepare_state_directory();
    let status = StatusLine::new(match &usable {
        Ok(_) => format!("serving; state in {}", state_directory.display()),
        Err(problem) => {
            tracing::error!(%problem, "state directory unusable");
            format!("DEGRADED: {problem}")
        }
    });
    let memory = MemoryServer::new(service::MemoryService::new(state_directory))
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    let mut server = GrpcServer::new(status).add_service(memory);
    if usable.is_err() {
        server = server.start_not_serving(synos_proto::memory::v1::memory_server::SERVICE_NAME);
    }
    server.serve(&config, shutdown).await?;
    Ok(())
}
