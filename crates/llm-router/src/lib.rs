//! The LLM router daemon: knows the configured providers and serves `synos.llm.v1.Router`.

mod config;
mod service;

pub use config::{Config, ProviderConfig, ProviderKind};
use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::llm::v1::router_server::RouterServer;

/// The router's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "llm-router",
    binary: "synos-llm-router",
    version: env!("CARGO_PKG_VERSION"),
};

/// Serves the router until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let providers = config.settings.providers.clone();
    let status = StatusLine::new(match providers.len() {
        0 => "serving; no providers configured".to_owned(),
        count => format!("serving; {count} providers configured"),
    });
    let router = RouterServer::new(service::RouterService::new(providers))
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    GrpcServer::new(status)
        .add_service(router)
        .serve(&config, shutdown)
        .await?;
    Ok(())
}
