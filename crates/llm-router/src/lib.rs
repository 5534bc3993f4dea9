//! The LLM router daemon: routes chat completions and embeddings across providers along
//! fallback chains, serving `synos.llm.v1.Router` on its socket and an OpenAI-compatible
//! endpoint on loopback.

mod accounting;
mod config;
mod credentials;
mod engine;
mod gate;
mod http;
mod keys;
mod local;
mod metrics;
mod provider_state;
mod released;
mod service;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

pub use config::{
    Config, LOCAL_PROVIDER, ProviderConfig, ProviderKind, RouteConfig, SHIPPED_LOCAL_MODEL, Tier,
    Trust,
};
use synos_common::config::Reloads;
use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::llm::v1::router_server::RouterServer;

use crate::accounting::Ledger;
use crate::credentials::CredentialSources;
use crate::engine::{Engine, LocalEnvironment};
use crate::keys::KeyStore;

/// The router's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "llm-router",
    binary: "synos-llm-router",
    version: env!("CARGO_PKG_VERSION"),
};

/// How often usage is written to the state directory.
const PERSIST_INTERVAL: Duration = Duration::from_secs(2);

fn summary(engine: &Engine, http: &str, state_problem: Option<&str>) -> String {
    let topology = engine.topology();
    let mut line = format!(
        "serving; {} providers, {} routes; HTTP {http}",
        topology.config.providers.len(),
        topology.config.routes.len()
    );
    line.push_str("; ");
    line.push_str(&topology.gate.describe());
    for local in engine.local_models_summary() {
        line.push_str("; ");
        line.push_str(&local);
    }
    if let Some(problem) = state_problem {
        line.push_str("; DEGRADED: ");
        line.push_str(problem);
    }
    line
}

/// Opens the usage ledger and key store in the state directory. Without a usable one the
/// router still routes, in memory only, and says so.
fn open_stores(config: &DaemonConfig<Config>) -> (Ledger, KeyStore, Option<String>) {
    let stores = config.prepare_state_directory().and_then(|directory| {
        Ok((
            Ledger::open(directory.join("usage.json"))?,
            KeyStore::open(directory.join("keys.json"))?,
        ))
    });
    match stores {
        Ok((ledger, keys)) => (ledger, keys, None),
        Err(problem) => {
            tracing::error!(%problem, "usage and keys kept in memory only: budgets reset and keys vanish on restart");
            (Ledger::in_memory(), KeyStore::in_memory(), Some(problem))
        }
    }
}

/// Serves the router until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let (metrics, registry) = metrics::Metrics::new();
    let (ledger, keys, state_problem) = open_stores(&config);
    let credentials = CredentialSources::from_environment(&config.settings.credentials.file);
    let local = LocalEnvironment {
        model_directory: config.directories.models.clone(),
        hwaccel_socket: config.directories.socket_path("hwaccel"),
        policy_socket: config.directories.socket_path("policy"),
    };
    let engine = Arc::new(Engine::new(
        config.settings.clone(),
        credentials,
        local,
        ledger,
        keys,
        metrics,
    ));

    let mut http_listening = None;
    let mut http_description = "off".to_owned();
    let mut http_task = None;
    if let Some(address) = config.settings.http.address() {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                let bound = listener.local_addr().map_or(address, |bound| bound);
                http_description = format!("http://{bound}");
                http_listening = Some(http_description.clone());
                let app = http::router(
                    Arc::clone(&engine),
                    config.settings.http.max_body_bytes,
                    config.settings.http.failed_auth_per_second,
                );
                let stop = shutdown.clone();
                http_task = Some(tokio::spawn(synos_common::server::serve_http_connections(
                    listener, app, stop,
                )));
            }
            Err(error) => {
                // gRPC still serves: degrade, and say so, rather than refuse to start.
                tracing::error!(%address, %error, "cannot listen for HTTP; the OpenAI-compatible endpoint is off");
                http_description = format!("off ({address}: {error})");
            }
        }
    }
    let status = StatusLine::new(summary(
        &engine,
        &http_description,
        state_problem.as_deref(),
    ));
    let mut server = GrpcServer::new(status.clone()).metrics(Arc::new(registry));
    if let Some(description) = http_listening {
        server = server.also_listening(description);
    }

    let background = tokio::spawn(background_tasks(
        Arc::clone(&engine),
        config.reloads.clone(),
        status,
        http_description.clone(),
        state_problem.clone(),
        shutdown.clone(),
    ));

    let router = RouterServer::new(service::RouterService::new(Arc::clone(&engine)))
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    let served = server.add_service(router).serve(&config, shutdown).await;
    if let Some(task) = http_task {
        let drain = Duration::from_millis(config.settings.server.drain_timeout_ms);
        if tokio::time::timeout(drain, task).await.is_err() {
            tracing::info!("HTTP drain time over; closing the remaining connections");
        }
    }
    let _ = background.await;
    if let Err(error) = engine.ledger.persist() {
        tracing::error!(%error, "usage not saved");
    }
    served?;
    Ok(())
}

/// Saves usage periodically, and applies the configurations `daemon::main` accepts on SIGHUP.
async fn background_tasks(
    engine: Arc<Engine>,
    mut reloads: Reloads<Config>,
    status: StatusLine,
    http_description: String,
    state_problem: Option<String>,
    shutdown: Shutdown,
) {
    let mut persist = tokio::time::interval(PERSIST_INTERVAL);
    let mut reloading = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = persist.tick() => {
                if let Err(error) = engine.ledger.persist() {
                    tracing::error!(%error, "usage not saved; retrying");
                }
                engine.update_state_metrics();
                // The local model loads on first use; the status line says when it has.
                status.set(summary(&engine, &http_description, state_problem.as_deref()));
            }
            reloaded = reloads.next(), if reloading => {
                let Some(settings) = reloaded else {
                    reloading = false;
                    continue;
                };
                let running = engine.topology();
                if settings.http != running.config.http || settings.server != running.config.server {
                    tracing::warn!("SIGHUP: [http] and [server] changes apply on restart");
                }
                engine.apply(Config::clone(&settings));
                status.set(summary(&engine, &http_description, state_problem.as_deref()));
            }
        }
    }
}
