//! `synos.memory.v1.Memory`: checks every request, embeds texts, and turns store results
//! into replies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use prost_types::Timestamp;
use synos_common::ServiceError;
use synos_common::caller::Caller;
use synos_common::error::ErrorKind;
use synos_common::time::{now_unix_ms, timestamp};
use synos_proto::memory::v1 as proto;
use synos_proto::memory::v1::memory_server::Memory as MemoryApi;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{Access, Use};
use crate::config::Config;
use crate::export;
use crate::metrics::Metrics;
use crate::ranking;
use crate::record::{self, Kind, Limits, Memory, MemoryVersion, Metadata, NewMemory, Scope};
use crate::store::{self, Changes, Embedded, Filter, Outcome, Store, StoreError};
use synos_embedding::Model;

/// Most results one recall returns.
const MAX_RECALL_LIMIT: u32 = 100;
/// Most records one List page holds.
const MAX_PAGE_SIZE: u32 = 1000;
/// Memories per Export message.
const EXPORT_CHUNK: u32 = 256;

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(_) => Self::new(ErrorKind::NotFound, error.to_string()),
            StoreError::Conflict(message) => Self::new(ErrorKind::AlreadyExists, message),
            StoreError::DiskFull => Self::new(ErrorKind::ResourceExhausted, error.to_string()),
            StoreError::Database(detail) => Self::internal("the memory database failed", &detail),
            StoreError::Internal(detail) => Self::internal("the memory store failed", &detail),
        }
    }
}

fn invalid(message: impl Into<String>) -> Status {
    ServiceError::invalid_argument(message).into()
}

/// What the service works with; the store is absent when the database could not be opened.
#[derive(Debug)]
pub(crate) struct MemoryService {
    pub(crate) state_directory: PathBuf,
    pub(crate) store: Result<Arc<Store>, String>,
    pub(crate) model: Arc<Model>,
    pub(crate) config: Config,
    pub(crate) metrics: Arc<Metrics>,
    /// Memories recalled, whose last-access time a background task writes in batches.
    pub(crate) recalled: tokio::sync::mpsc::UnboundedSender<Vec<i64>>,
    /// Woken when memories were stored without a vector.
    pub(crate) embedding_wanted: Arc<tokio::sync::Notify>,
    /// Who may read and write which scope.
    pub(crate) access: Access,
}

/// An imported vector of the running model must have its length: one of another length would
/// fix the index to the wrong dimension and every real vector would then be dropped. Without a
/// model to ask (`dimensions` is `None`) the vector is dropped and embedded again later.
fn check_dimensions(
    memory: &mut store::Exported,
    model_id: &str,
    dimensions: Option<usize>,
) -> Result<(), String> {
    let Some(vector) = &memory.embedding else {
        return Ok(());
    };
    if memory.memory.embedding_model != model_id {
        return Ok(());
    }
    match dimensions {
        Some(dimensions) if vector.len() != dimensions => Err(format!(
            "embedding: {} values, but {model_id} makes vectors of {dimensions}",
            vector.len()
        )),
        Some(_) => Ok(()),
        None => {
            memory.embedding = None;
            memory.memory.embedding_model.clear();
            Ok(())
        }
    }
}

fn milliseconds(field: &str, value: &Timestamp) -> Result<i64, Status> {
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(invalid(format!(
            "{field}: nanos must be between 0 and 999999999"
        )));
    }
    value
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(value.nanos / 1_000_000)))
        .ok_or_else(|| invalid(format!("{field}: out of range")))
}

fn record_to_proto(memory: &Memory) -> proto::MemoryRecord {
    proto::MemoryRecord {
        id: memory.id.clone(),
        scope: memory.scope.to_string(),
        kind: memory.kind.name().to_owned(),
        text: memory.text.clone(),
        importance: memory.importance,
        source: memory.source.clone(),
        created: Some(timestamp(memory.created_ms)),
        updated: Some(timestamp(memory.updated_ms)),
        last_accessed: Some(timestamp(memory.accessed_ms)),
        expires: memory.expires_ms.map(timestamp),
        metadata: memory.metadata.clone().into_iter().collect(),
        embedding_model: memory.embedding_model.clone(),
        version: memory.version,
    }
}

fn version_to_proto(version: &MemoryVersion) -> proto::MemoryVersion {
    proto::MemoryVersion {
        version: version.version,
        text: version.text.clone(),
        kind: version.kind.name().to_owned(),
        importance: version.importance,
        metadata: version.metadata.clone().into_iter().collect(),
        replaced: Some(timestamp(version.replaced_ms)),
        reason: version.reason.clone(),
    }
}

fn scopes(field: &str, names: &[String]) -> Result<Vec<Scope>, Status> {
    if names.is_empty() {
        return Err(invalid(format!(
            "{field}: name at least one scope to read (global, user:<id>, chat:<id>)"
        )));
    }
    let mut parsed: Vec<Scope> = names
        .iter()
        .map(|name| Scope::parse(name))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

fn metadata(field: &str, map: &HashMap<String, String>) -> Result<Metadata, Status> {
    record::check_metadata(map.iter()).map_err(|error| invalid(format!("{field}: {error}")))?;
    Ok(map.clone().into_iter().collect())
}

fn filter(given: Option<&proto::Filter>) -> Result<Filter, Status> {
    let Some(given) = given else {
        return Ok(Filter::default());
    };
    Ok(Filter {
        kinds: given
            .kinds
            .iter()
            .map(|kind| Kind::parse(kind))
            .collect::<Result<_, _>>()
            .map_err(|error| invalid(format!("filter.kinds: {error}")))?,
        created_after_ms: given
            .created_after
            .as_ref()
            .map(|time| milliseconds("filter.created_after", time))
            .transpose()?,
        created_before_ms: given
            .created_before
            .as_ref()
            .map(|time| milliseconds("filter.created_before", time))
            .transpose()?,
        metadata: metadata("filter.metadata", &given.metadata)?,
    })
}

fn recall_mode_name(mode: proto::RecallMode) -> &'static str {
    match mode {
        proto::RecallMode::Keyword => "keyword",
        proto::RecallMode::Vector => "vector",
        proto::RecallMode::Hybrid | proto::RecallMode::Unspecified => "hybrid",
    }
}

impl MemoryService {
    fn store(&self) -> Result<&Arc<Store>, Status> {
        self.store.as_ref().map_err(|problem| {
            ServiceError::new(
                ErrorKind::FailedPrecondition,
                format!("the memory store is unavailable: {problem}"),
            )
            .into()
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            max_text_bytes: self.config.store.max_text_bytes,
        }
    }

    fn new_memory(&self, index: usize, given: proto::NewMemory) -> Result<NewMemory, Status> {
        let at = |error: String| invalid(format!("memories[{index}]: {error}"));
        record::check_text(&given.text, self.limits()).map_err(at)?;
        let scope = if given.scope.is_empty() {
            Scope::global()
        } else {
            Scope::parse(&given.scope).map_err(at)?
        };
        let kind = Kind::parse(&given.kind).map_err(at)?;
        let importance = given.importance.unwrap_or(0.5);
        record::check_importance(importance).map_err(at)?;
        record::check_source(&given.source).map_err(at)?;
        record::check_metadata(given.metadata.iter()).map_err(at)?;
        let expires_ms = given
            .expires
            .as_ref()
            .map(|time| milliseconds(&format!("memories[{index}].expires"), time))
            .transpose()?;
        if expires_ms.is_some_and(|expires| expires <= now_unix_ms()) {
            return Err(at("expires: is in the past".to_owned()));
        }
        Ok(NewMemory {
            text: given.text,
            scope,
            kind,
            importance,
            source: given.source,
            expires_ms,
            metadata: given.metadata.into_iter().collect(),
        })
    }

    /// Vectors for `texts` from the model, or `None` each while no model is loaded.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Option<Vec<f32>>>, Status> {
        let count = texts.len();
        let started = Instant::now();
        match self.model.embed(texts).await {
            Ok(Some(vectors)) => {
                self.metrics.observe_embedding(started.elapsed(), count);
                Ok(vectors.into_iter().map(Some).collect())
            }
            Ok(None) => Ok(vec![None; count]),
            Err(error) => Err(ServiceError::internal("embedding the text", &error).into()),
        }
    }

    /// The memory `id`, when `caller` may `use_` its scope.
    async fn owned(&self, caller: &Caller, id: &str, use_: Use) -> Result<Memory, Status> {
        if id.is_empty() {
            return Err(invalid("id: must not be empty"));
        }
        let (memory, _) = self.store()?.get(id).await.map_err(ServiceError::from)?;
        self.access
            .check(caller, std::slice::from_ref(&memory.scope), use_)
            .await?;
        Ok(memory)
    }

    async fn recall_results(
        &self,
        caller: &Caller,
        request: proto::RecallRequest,
    ) -> Result<proto::RecallResponse, Status> {
        let store = self.store()?;
        if request.query.trim().is_empty() {
            return Err(invalid("query: must not be empty"));
        }
        record::check_text(&request.query, self.limits())
            .map_err(|error| invalid(error.replace("text:", "query:")))?;
        let scopes = scopes("scopes", &request.scopes)?;
        self.access.check(caller, &scopes, Use::Read).await?;
        let filter = filter(request.filter.as_ref())?;
        let limit = match request.limit {
            0 => 10,
            limit if limit > MAX_RECALL_LIMIT => {
                return Err(invalid(format!("limit: at most {MAX_RECALL_LIMIT}")));
            }
            limit => limit,
        };
        let requested = proto::RecallMode::try_from(request.mode)
            .map_err(|_| invalid(format!("mode: {} is not a recall mode", request.mode)))?;
        let wants_vector = requested != proto::RecallMode::Keyword;
        let query_vector = if wants_vector {
            self.embed(vec![request.query.clone()])
                .await?
                .pop()
                .flatten()
        } else {
            None
        };
        let mode = match (requested, &query_vector) {
            (proto::RecallMode::Keyword, _) => proto::RecallMode::Keyword,
            (proto::RecallMode::Vector, None) => {
                return Err(ServiceError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "vector recall needs the embedding model, which is not loaded: {}",
                        self.model.problem().unwrap_or_default()
                    ),
                )
                .into());
            }
            (proto::RecallMode::Vector, Some(_)) => proto::RecallMode::Vector,
            (_, None) => proto::RecallMode::Keyword,
            (_, Some(_)) => proto::RecallMode::Hybrid,
        };
        let query = ranking::Query {
            text: (mode != proto::RecallMode::Vector).then_some(request.query.as_str()),
            vector: query_vector
                .as_deref()
                .filter(|_| mode != proto::RecallMode::Keyword),
            scopes: &scopes,
            filter: &filter,
            limit,
        };
        let ranked = ranking::recall(store, query, now_unix_ms(), &self.config.recall)
            .await
            .map_err(ServiceError::from)?;
        // A lost update of last-access times only weakens recency: never worth failing a recall.
        let _ = self
            .recalled
            .send(ranked.iter().map(|ranked| ranked.memory.sequence).collect());
        self.metrics.count_recall(recall_mode_name(mode));
        Ok(proto::RecallResponse {
            results: ranked
                .iter()
                .map(|ranked| proto::RecallResult {
                    memory: Some(record_to_proto(&ranked.memory)),
                    score: ranked.score,
                    keyword_rank: ranked.candidate.keyword_rank.unwrap_or(0),
                    vector_rank: ranked.candidate.vector_rank.unwrap_or(0),
                    similarity: ranked.candidate.similarity.unwrap_or(0.0),
                })
                .collect(),
            mode: mode.into(),
        })
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<proto::ExportResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MemoryApi for MemoryService {
    async fn remember(
        &self,
        request: Request<proto::RememberRequest>,
    ) -> Result<Response<proto::RememberResponse>, Status> {
        let caller = Caller::of(&request);
        let store = self.store()?.clone();
        let given = request.into_inner().memories;
        if given.is_empty() {
            return Err(invalid("memories: give at least one memory"));
        }
        if given.len() > self.config.store.max_batch {
            return Err(invalid(format!(
                "memories: {} is more than the limit of {} per call",
                given.len(),
                self.config.store.max_batch
            )));
        }
        let memories: Vec<NewMemory> = given
            .into_iter()
            .enumerate()
            .map(|(index, memory)| self.new_memory(index, memory))
            .collect::<Result<_, _>>()?;
        let written: Vec<Scope> = memories.iter().map(|memory| memory.scope.clone()).collect();
        self.access.check(&caller, &written, Use::Write).await?;
        let vectors = self
            .embed(memories.iter().map(|memory| memory.text.clone()).collect())
            .await?;
        let unembedded = vectors.iter().any(Option::is_none);
        let embedded = memories
            .into_iter()
            .zip(vectors)
            .map(|(memory, vector)| Embedded { memory, vector })
            .collect();
        let stored = store
            .remember(
                embedded,
                &self.model.id(),
                self.config.store.near_duplicate_similarity,
            )
            .await
            .map_err(ServiceError::from)?;
        if unembedded {
            self.embedding_wanted.notify_one();
        }
        let results = stored
            .into_iter()
            .map(|stored| {
                let outcome = match stored.outcome {
                    Outcome::Created => proto::RememberOutcome::Created,
                    Outcome::Duplicate => proto::RememberOutcome::Duplicate,
                    Outcome::Superseded => proto::RememberOutcome::Superseded,
                };
                self.metrics.count_remembered(stored.outcome);
                proto::RememberResult {
                    id: stored.id,
                    outcome: outcome.into(),
                    similarity: stored.similarity,
                }
            })
            .collect();
        Ok(Response::new(proto::RememberResponse { results }))
    }

    async fn recall(
        &self,
        request: Request<proto::RecallRequest>,
    ) -> Result<Response<proto::RecallResponse>, Status> {
        let started = Instant::now();
        let caller = Caller::of(&request);
        let result = self.recall_results(&caller, request.into_inner()).await;
        self.metrics.observe_recall(started.elapsed());
        result.map(Response::new)
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let caller = Caller::of(&request);
        let store = self.store()?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(invalid("id: must not be empty"));
        }
        let (memory, history) = store.get(&id).await.map_err(ServiceError::from)?;
        self.access
            .check(&caller, std::slice::from_ref(&memory.scope), Use::Read)
            .await?;
        Ok(Response::new(proto::GetResponse {
            memory: Some(record_to_proto(&memory)),
            history: history.iter().map(version_to_proto).collect(),
        }))
    }

    async fn update(
        &self,
        request: Request<proto::UpdateRequest>,
    ) -> Result<Response<proto::UpdateResponse>, Status> {
        let caller = Caller::of(&request);
        let store = self.store()?;
        let request = request.into_inner();
        self.owned(&caller, &request.id, Use::Write).await?;
        if let Some(text) = &request.text {
            record::check_text(text, self.limits()).map_err(invalid)?;
        }
        let kind = request
            .kind
            .as_deref()
            .map(Kind::parse)
            .transpose()
            .map_err(invalid)?;
        if let Some(importance) = request.importance {
            record::check_importance(importance).map_err(invalid)?;
        }
        let metadata = metadata("metadata", &request.metadata)?;
        if request.clear_expires && request.expires.is_some() {
            return Err(invalid(
                "expires: give either expires or clear_expires, not both",
            ));
        }
        let expires_ms = match (&request.expires, request.clear_expires) {
            (Some(time), _) => {
                let expires = milliseconds("expires", time)?;
                if expires <= now_unix_ms() {
                    return Err(invalid("expires: is in the past"));
                }
                Some(Some(expires))
            }
            (None, true) => Some(None),
            (None, false) => None,
        };
        let text = match request.text {
            Some(text) => {
                let vector = self.embed(vec![text.clone()]).await?.pop().flatten();
                Some((text, vector))
            }
            None => None,
        };
        let changes = Changes {
            text,
            kind,
            importance: request.importance,
            metadata,
            replace_metadata: request.replace_metadata,
            expires_ms,
        };
        let memory = store
            .update(&request.id, changes, &self.model.id())
            .await
            .map_err(ServiceError::from)?;
        if memory.embedding_model.is_empty() {
            self.embedding_wanted.notify_one();
        }
        Ok(Response::new(proto::UpdateResponse {
            memory: Some(record_to_proto(&memory)),
        }))
    }

    async fn forget(
        &self,
        request: Request<proto::ForgetRequest>,
    ) -> Result<Response<proto::ForgetResponse>, Status> {
        use proto::forget_request::Target;
        let caller = Caller::of(&request);
        let store = self.store()?;
        let forgotten = match request.into_inner().target {
            None => return Err(invalid("target: name an id, a scope or a filter")),
            Some(Target::Id(id)) => {
                self.owned(&caller, &id, Use::Write).await?;
                store.forget_id(&id).await
            }
            Some(Target::Scope(scope)) => {
                let scope = Scope::parse(&scope).map_err(invalid)?;
                self.access
                    .check(&caller, std::slice::from_ref(&scope), Use::Write)
                    .await?;
                store.forget_matching(&[scope], &Filter::default()).await
            }
            Some(Target::Filter(given)) => {
                let scopes = scopes("filter.scopes", &given.scopes)?;
                self.access.check(&caller, &scopes, Use::Write).await?;
                let filter = filter(given.filter.as_ref())?;
                store.forget_matching(&scopes, &filter).await
            }
        }
        .map_err(ServiceError::from)?;
        Ok(Response::new(proto::ForgetResponse { forgotten }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let caller = Caller::of(&request);
        let store = self.store()?;
        let request = request.into_inner();
        let scopes = scopes("scopes", &request.scopes)?;
        self.access.check(&caller, &scopes, Use::Read).await?;
        let filter = filter(request.filter.as_ref())?;
        let page_size = match request.page_size {
            0 => 50,
            size if size > MAX_PAGE_SIZE => {
                return Err(invalid(format!("page_size: at most {MAX_PAGE_SIZE}")));
            }
            size => size,
        };
        let before = if request.page_token.is_empty() {
            None
        } else {
            Some(
                request
                    .page_token
                    .parse::<i64>()
                    .map_err(|_| invalid("page_token: not a token from a previous List"))?,
            )
        };
        let memories = store
            .list(&scopes, &filter, before, page_size)
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = match memories.last() {
            Some(last) if memories.len() == page_size as usize => last.sequence.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListResponse {
            memories: memories.iter().map(record_to_proto).collect(),
            next_page_token,
        }))
    }

    type ExportStream = ExportStream;

    async fn export(
        &self,
        request: Request<proto::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let caller = Caller::of(&request);
        let store = self.store()?.clone();
        let request = request.into_inner();
        // No scopes: all of them for root and the services, the caller's own otherwise.
        let scopes = if request.scopes.is_empty() {
            Access::default_scopes(&caller)?.unwrap_or_default()
        } else {
            scopes("scopes", &request.scopes)?
        };
        self.access.check(&caller, &scopes, Use::Read).await?;
        let total = store.count(&scopes).await.map_err(ServiceError::from)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let page = match store.export_page(&scopes, after, EXPORT_CHUNK).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = sender
                            .send(Err(Status::from(ServiceError::from(error))))
                            .await;
                        return;
                    }
                };
                let Some(last) = page.last() else {
                    if after == 0 {
                        let _ = sender
                            .send(Ok(proto::ExportResponse {
                                lines: Vec::new(),
                                total,
                            }))
                            .await;
                    }
                    return;
                };
                after = last.memory.sequence;
                let lines = page.iter().map(export::to_line).collect();
                if sender
                    .send(Ok(proto::ExportResponse { lines, total }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn import(
        &self,
        request: Request<Streaming<proto::ImportRequest>>,
    ) -> Result<Response<proto::ImportResponse>, Status> {
        let caller = Caller::of(&request);
        let store = self.store()?;
        let mut stream = request.into_inner();
        let mut line_number = 0_u64;
        let mut totals = store::ImportCounts::default();
        let model_id = self.model.id();
        // The length every vector of this model has; `None` while no model could be loaded,
        // when imported vectors of its id cannot be checked and are dropped (the text is kept
        // and embedded again once a model loads).
        let dimensions = self
            .model
            .ready()
            .await
            .map(|embedder| embedder.dimensions());
        while let Some(message) = stream.next().await {
            let message = message?;
            if message.lines.len() > self.config.store.max_batch {
                return Err(invalid(format!(
                    "lines: {} is more than the limit of {} per message",
                    message.lines.len(),
                    self.config.store.max_batch
                )));
            }
            let mut memories = Vec::with_capacity(message.lines.len());
            for line in &message.lines {
                line_number += 1;
                if line.trim().is_empty() {
                    continue;
                }
                let memory = export::from_line(line, self.limits())
                    .and_then(|mut memory| {
                        check_dimensions(&mut memory, &model_id, dimensions)?;
                        Ok(memory)
                    })
                    .map_err(|error| {
                        invalid(format!(
                            "line {line_number}: {error} (the {} memories before it were imported)",
                            totals.imported + totals.replaced
                        ))
                    })?;
                memories.push(memory);
            }
            let written: Vec<Scope> = memories
                .iter()
                .map(|exported| exported.memory.scope.clone())
                .collect();
            self.access.check(&caller, &written, Use::Write).await?;
            let counts = store
                .import(memories, &model_id)
                .await
                .map_err(ServiceError::from)?;
            totals.imported += counts.imported;
            totals.unchanged += counts.unchanged;
            totals.replaced += counts.replaced;
            totals.duplicates += counts.duplicates;
        }
        self.embedding_wanted.notify_one();
        Ok(Response::new(proto::ImportResponse {
            imported: totals.imported,
            unchanged: totals.unchanged,
            replaced: totals.replaced,
            duplicates: totals.duplicates,
        }))
    }

    async fn stats(
        &self,
        _request: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let directory = self.state_directory.clone();
        let mut stats = tokio::task::spawn_blocking(move || {
            let filesystem = synos_common::filesystem::usage(&directory)?;
            let writable = nix::unistd::access(&directory, nix::unistd::AccessFlags::W_OK).is_ok();
            Ok::<_, nix::Error>(proto::StatsResponse {
                state_directory: directory.display().to_string(),
                state_directory_writable: writable,
                filesystem_total_bytes: filesystem.total_bytes,
                filesystem_available_bytes: filesystem.available_bytes,
                ..proto::StatsResponse::default()
            })
        })
        .await
        .map_err(|error| ServiceError::internal("inspecting the state directory", &error))?
        .map_err(|error| {
            ServiceError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "state directory {} unusable: {error}",
                    self.state_directory.display()
                ),
            )
        })?;
        let store = self.store()?;
        let model_id = self.model.id();
        let counts = store.counts(&model_id).await.map_err(ServiceError::from)?;
        stats.memories = counts.memories;
        stats.scope_count = counts.scopes;
        stats.scopes = counts
            .largest_scopes
            .into_iter()
            .map(|(scope, memories)| proto::ScopeCount { scope, memories })
            .collect();
        stats.history_versions = counts.history_versions;
        stats.pending_embeddings = counts.pending_embeddings;
        stats.database_bytes = store.database_bytes();
        match self.model.problem() {
            None => stats.embedding_model = model_id,
            Some(problem) => stats.embedding_problem = problem,
        }
        Ok(Response::new(stats))
    }
}
