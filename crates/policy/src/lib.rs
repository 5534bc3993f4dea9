//! The policy daemon: Cedar authorization, prompt screening, output redaction, sandboxed tool
//! execution and a hash-chained audit log, served as `synos.policy.v1.Policy`.

pub mod audit;
pub mod authorizer;
pub mod classifier;
pub mod config;
pub mod redaction;
pub mod runner;
pub mod sandbox;
pub mod screening;
pub mod semantic;
mod service;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::policy::v1::policy_server::{PolicyServer, SERVICE_NAME};

pub use crate::authorizer::{Authorizer, Decision, PolicyError, PolicyFiles};
pub use crate::config::Config;

/// `pattern` with ASCII word boundaries and digits, for every built-in pattern (screening rules
/// and redaction detectors). With Unicode `\b` the regex engine's lazy DFA gives up at the first
/// byte that is not ASCII: the digit detectors fall from ~600 MB/s to 13-40 MB/s on model output
/// with a single em dash in it, and the screening rule set from ~180 MB/s to ~1 MB/s on a prompt
/// with one. A Unicode `\d` would let through digits that no checksum here reads. The patterns
/// are about ASCII words; letters outside ASCII are folded or stay non-word characters.
pub(crate) fn ascii_boundaries_and_digits(pattern: &str) -> String {
    pattern.replace(r"\b", r"(?-u:\b)").replace(r"\d", "[0-9]")
}

/// The policy daemon's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "policy",
    binary: "synos-policy",
    version: env!("CARGO_PKG_VERSION"),
};

/// The one-line summary for `STATUS=`.
pub(crate) fn status_line(
    files: &PolicyFiles,
    sandbox: Result<&sandbox::Sandbox, &String>,
    screening: &str,
) -> String {
    let sandbox = match sandbox {
        Ok(sandbox) => format!("tools run under {}", sandbox.name()),
        Err(problem) => format!("tools disabled ({problem})"),
    };
    format!(
        "serving; default deny with {} policies from {} file(s); {screening}; {sandbox}",
        files.policy_count(),
        files.files.len()
    )
}

/// The screener the settings ask for, and how it screens, for the status line. A semantic
/// stage that cannot be loaded leaves the rules screening alone: weaker, but never down.
async fn screener(
    settings: &config::ScreeningConfig,
    directories: &synos_common::identity::Directories,
) -> (screening::Screener, String) {
    let screener = screening::Screener::new(settings.flag_threshold, settings.block_threshold);
    if !settings.semantic {
        return (
            screener,
            "screening by rules alone (semantic = false)".to_owned(),
        );
    }
    let directory = directories.models.join(&settings.model);
    let loaded = tokio::task::spawn_blocking(move || semantic::SemanticStage::load(&directory))
        .await
        .map_err(|error| error.to_string())
        .and_then(|loaded| loaded.map_err(|error| error.to_string()));
    match loaded {
        Ok(stage) => (
            screener.with_semantic_stage(Arc::new(stage)),
            format!(
                "screening by rules, similarity and a classifier ({})",
                settings.model
            ),
        ),
        Err(problem) => {
            tracing::warn!(%problem, "semantic screening unavailable: the rules screen alone");
            (
                screener,
                format!("screening by rules alone: semantic stage unavailable ({problem})"),
            )
        }
    }
}

/// Serves the policy API until `shutdown` is cancelled. Invalid policies stop the start (exit
/// 78, as `--check-config` reports them); an unusable audit log leaves the daemon up but
/// refusing every decision (NOT_SERVING), because no decision is given unaudited.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let settings = config.settings.clone();
    let policy_directory = settings.policies.directory(&config.directories);
    let files = PolicyFiles::load(&policy_directory).map_err(|error| DaemonError::Startup {
        message: error.to_string(),
        exit_code: synos_common::exit::CONFIG,
    })?;
    let sandbox = sandbox::Sandbox::choose(
        &settings.sandbox,
        &settings
            .sandbox
            .socket_directory(&config.directories.runtime),
    );
    let audit = match config.prepare_state_directory() {
        Err(problem) => Err(problem),
        Ok(directory) => audit::AuditLog::open(&audit::database_path(&directory))
            .await
            .map_err(|error| error.to_string()),
    };
    let (screener, screening) = screener(&settings.screening, &config.directories).await;
    if let Err(problem) = &audit {
        tracing::error!(%problem, "audit log unusable");
    }
    let status = StatusLine::default();
    let health = service::Health::new(
        status.clone(),
        status_line(&files, sandbox.as_ref(), &screening),
        audit
            .as_ref()
            .err()
            .map(|problem| format!("{problem}; every decision is refused")),
    );
    let rate_limits = Arc::new(service::RateLimits::new(&settings.rate_limits));
    let forget = {
        let rate_limits = rate_limits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => rate_limits.forget_idle(),
                }
            }
        })
    };
    let audit_usable = audit.is_ok();
    let service = service::PolicyService {
        authorizer: ArcSwap::from_pointee(Authorizer::new(
            files,
            service::tool_attributes(&settings.tools),
        )),
        policy_directory,
        screener,
        screening_summary: screening,
        redactor: redaction::Redactor::new(settings.redaction.disabled_kinds.clone()),
        audit,
        sandbox: sandbox.clone(),
        tools: settings.tools.clone(),
        rate_limits,
        health,
    };
    let policy = PolicyServer::new(service)
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    let mut server = GrpcServer::new(status).add_service(policy);
    if !audit_usable {
        server = server.start_not_serving(SERVICE_NAME);
    }
    let served = server.serve(&config, shutdown.clone()).await;
    shutdown.cancel();
    let _ = forget.await;
    served?;
    Ok(())
}
