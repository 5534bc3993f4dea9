//! The hardware daemon: knows what the machine is and serves `synos.hwaccel.v1.Hardware`.

mod service;

use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::hwaccel::v1::hardware_server::HardwareServer;

/// The hardware daemon's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "hwaccel",
    binary: "synos-hwaccel",
    version: env!("CARGO_PKG_VERSION"),
};

/// `/etc/synos/hwaccel.toml`: only the common `[server]` and `[log]` sections so far.
pub type Config = synos_common::config::BasicSettings;

/// Serves hardware facts until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let snapshot = tokio::task::spawn_blocking(service::system_info)
        .await
        .map_err(|error| DaemonError::Startup {
            message: format!("hardware detection failed: {error}"),
            exit_code: synos_common::exit::SOFTWARE,
        })?;
    let status = StatusLine::new(service::summary(&snapshot));
    let hardware = HardwareServer::new(service::HardwareService)
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    GrpcServer::new(status)
        .add_service(hardware)
        .serve(&config, shutdown)
        .await?;
    Ok(())
}
