//! The memory daemon: durable, scoped agent memories in SQLite, searched by full text and by
//! vectors from an in-process embedding model, served as `synos.memory.v1.Memory`.

mod access;
pub mod config;
mod export;
mod metrics;
pub mod ranking;
pub mod record;
mod service;
pub mod store;
pub mod vector_index;

use std::sync::Arc;
use std::time::Duration;

use synos_common::systemd::StatusLine;
use synos_common::{DaemonConfig, DaemonError, DaemonIdentity, GrpcServer, Shutdown};
use synos_proto::memory::v1::memory_server::{MemoryServer, SERVICE_NAME};

pub use crate::config::{Config, EmbeddingConfig, RecallConfig, StoreConfig};
use crate::store::Store;
use synos_embedding::Model;

/// The memory daemon's fixed names.
pub const IDENTITY: DaemonIdentity = DaemonIdentity {
    short_name: "memory",
    binary: "synos-memory",
    version: env!("CARGO_PKG_VERSION"),
};

/// How often recalled memories' last-access times are written.
const TOUCH_INTERVAL: Duration = Duration::from_secs(2);
/// How long the re-embedding task waits for work before looking again anyway.
const EMBEDDING_RECHECK: Duration = Duration::from_secs(30);

/// Serves memory until `shutdown` is cancelled. An unusable state directory or database, or a
/// missing model, is reported in health and `STATUS=`, not fatal: the daemon keeps answering
/// what it can (a missing model leaves keyword recall).
pub async fn run(config: DaemonConfig<Config>, shutdown: Shutdown) -> Result<(), DaemonError> {
    let state_directory = config.state_directory();
    let settings = config.settings.clone();
    let model_directory = settings
        .embedding
        .model_directory
        .clone()
        .unwrap_or_else(|| config.directories.models.join(&settings.embedding.model));
    let model = Model::load_in_background(model_directory);

    let store = match config.prepare_state_directory() {
        Err(problem) => Err(problem),
        Ok(directory) => Store::open(&store::database_path(&directory), &model.id())
            .await
            .map(Arc::new)
            .map_err(|error| error.to_string()),
    };
    let status = StatusLine::new(match &store {
        Ok(store) => format!(
            "serving; {} memories with vectors in {}; loading embedding model {}",
            store.indexed_vectors(),
            store.path().display(),
            model.id()
        ),
        Err(problem) => {
            tracing::error!(%problem, "memory store unusable");
            format!("DEGRADED: {problem}")
        }
    });

    let (metrics, registry) = metrics::Metrics::new();
    let (recalled_sender, recalled) = tokio::sync::mpsc::unbounded_channel();
    let embedding_wanted = Arc::new(tokio::sync::Notify::new());
    let mut background = Vec::new();
    if let Ok(store) = &store {
        background.push(tokio::spawn(write_access_times(
            store.clone(),
            recalled,
            shutdown.clone(),
        )));
        background.push(tokio::spawn(purge_expired(
            store.clone(),
            Duration::from_secs(settings.store.purge_interval_s),
            shutdown.clone(),
        )));
        background.push(tokio::spawn(embed_pending(
            store.clone(),
            model.clone(),
            settings.embedding.batch_size,
            embedding_wanted.clone(),
            status.clone(),
            shutdown.clone(),
        )));
    }

    let service = service::MemoryService {
        state_directory,
        store: store.clone(),
        model,
        config: settings,
        metrics,
        recalled: recalled_sender,
        embedding_wanted,
        access: access::Access::new(config.directories.socket_path("policy")),
    };
    let memory = MemoryServer::new(service)
        .max_decoding_message_size(config.settings.server.max_message_bytes);
    let mut server = GrpcServer::new(status)
        .metrics(Arc::new(registry))
        .add_service(memory);
    if store.is_err() {
        server = server.start_not_serving(SERVICE_NAME);
    }
    let served = server.serve(&config, shutdown.clone()).await;
    shutdown.cancel();
    for task in background {
        let _ = task.await;
    }
    if let Ok(store) = &store {
        store.close().await;
    }
    served?;
    Ok(())
}

/// Writes last-access times of recalled memories in batches, and once more on shutdown.
async fn write_access_times(
    store: Arc<Store>,
    mut recalled: tokio::sync::mpsc::UnboundedReceiver<Vec<i64>>,
    shutdown: Shutdown,
) {
    let mut interval = tokio::time::interval(TOUCH_INTERVAL);
    let mut waiting: Vec<i64> = Vec::new();
    loop {
        let stopping = tokio::select! {
            batch = recalled.recv() => match batch {
                Some(batch) => { waiting.extend(batch); continue; }
                None => true,
            },
            _ = interval.tick() => false,
            () = shutdown.cancelled() => true,
        };
        while let Ok(batch) = recalled.try_recv() {
            waiting.extend(batch);
        }
        if !waiting.is_empty() {
            waiting.sort_unstable();
            waiting.dedup();
            if let Err(error) = store
                .touch(&waiting, synos_common::time::now_unix_ms())
                .await
            {
                tracing::warn!(%error, "could not record when memories were last recalled");
            }
            waiting.clear();
        }
        if stopping {
            return;
        }
    }
}

/// Deletes expired memories every `period`.
async fn purge_expired(store: Arc<Store>, period: Duration, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match store.purge_expired(synos_common::time::now_unix_ms()).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired memories deleted"),
            Err(error) => tracing::warn!(%error, "could not delete expired memories"),
        }
    }
}

/// Gives every memory a vector of the current model: those stored while the model was not
/// loaded, imported from another model, or stored under a model since replaced.
async fn embed_pending(
    store: Arc<Store>,
    model: Arc<Model>,
    batch_size: usize,
    wanted: Arc<tokio::sync::Notify>,
    status: StatusLine,
    shutdown: Shutdown,
) {
    let ready = tokio::select! {
        ready = model.ready() => ready,
        () = shutdown.cancelled() => return,
    };
    let Some(_embedder) = ready else {
        status.set(format!(
            "DEGRADED: {}; keyword recall only",
            model.problem().unwrap_or_default()
        ));
        return;
    };
    let model_id = model.id();
    let batch = u32::try_from(batch_size).unwrap_or(16);
    loop {
        let pending = match store.needing_embedding(&model_id, batch).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "could not look for memories to embed");
                Vec::new()
            }
        };
        if pending.is_empty() {
            status.set(format!(
                "serving; {} memories with vectors of {} in {}",
                store.indexed_vectors(),
                model_id,
                store.path().display()
            ));
            tokio::select! {
                () = wanted.notified() => continue,
                () = tokio::time::sleep(EMBEDDING_RECHECK) => continue,
                () = shutdown.cancelled() => return,
            }
        }
        status.set(format!(
            "serving; embedding memories with {model_id} ({} indexed so far)",
            store.indexed_vectors()
        ));
        let texts = pending.iter().map(|(_, _, text)| text.clone()).collect();
        let vectors = tokio::select! {
            vectors = model.embed(texts) => vectors,
            () = shutdown.cancelled() => return,
        };
        match vectors {
            Ok(Some(vectors)) => {
                let updates = pending
                    .into_iter()
                    .zip(vectors)
                    .map(|((sequence, updated_ms, _), vector)| (sequence, updated_ms, vector))
                    .collect();
                if let Err(error) = store.set_embeddings(updates, &model_id).await {
                    tracing::warn!(%error, "could not store new embeddings");
                    tokio::time::sleep(EMBEDDING_RECHECK).await;
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "re-embedding failed; retrying later");
                tokio::select! {
                    () = tokio::time::sleep(EMBEDDING_RECHECK) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}
