//! The policy daemon: decides who may do what to which resource, with Cedar, and serves
//! `synos.policy.v1.Policy`.

mod authorizer;
mod service;

use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::policy::v1::policy_server::PolicyServer;

pub use authorizer::{Authorizer, Decision, PolicyError};

/// The policy daemon's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "policy",
    binary: "synos-policy",
    version: env!("CARGO_PKG_VERSION"),
};

/// `/etc/synos/policy.toml`: only the common `[server]` and `[log]` sections so far.
pub type Config = synos_common::config::BasicSettings;

/// Serves authorization until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let authorizer =
        Authorizer::with_built_in_policies().map_err(|error| DaemonError::Startup {
            message: format!("built-in policies do not parse: {error}"),
            exit_code: synos_common::exit::SOFTWARE,
        })?;
    let status = StatusLine::new(format!(
        "serving; default deny with {} built-in policies",
        authorizer.policy_count()
    ));
    let policy = PolicyServer::new(service::PolicyService::new(authorizer))
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    GrpcServer::new(status)
        .add_service(policy)
        .serve(&config, shutdown)
        .await?;
    Ok(())
}
