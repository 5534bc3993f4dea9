//! The durable store: one SQLite database (WAL, `synchronous=FULL`) holding memories, their
//! history and the full-text index, with the vector index kept beside it in memory.
//!
//! Invariants: a call that returns `Ok` after a write has committed it to disk, so `kill -9`
//! loses nothing acknowledged; every write goes through one writer, under `write_lock`, so
//! duplicate checks and the vector index see a consistent database; every read names its
//! scopes in the SQL itself, before any ranking or limit.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite};

use crate::record::{self, Kind, Memory, MemoryVersion, Metadata, NewMemory, Scope};
use crate::vector_index::{Neighbour, VectorIndex};
use synos_common::time::now_unix_ms;

/// `PRAGMA application_id` of a SynOS memory database ("SYNM").
const APPLICATION_ID: i64 = 0x5359_4E4D;
/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
const COLUMNS: &str = "sequence, id, scope, kind, text, importance, source, created_ms, updated_ms, \
                       accessed_ms, expires_ms, metadata, embedding_model, version";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the database cannot be used. Each is one line for `STATUS=` and the log.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file is not a SQLite database, or is damaged.
    #[error("{path}: {reason}; refusing to use it (move it away to start with an empty store)")]
    Unusable {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// SQLite or the filesystem failed.
    #[error("{path}: {reason}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The failure.
        reason: String,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing has this id.
    #[error("no memory with id {0:?}")]
    NotFound(String),
    /// The request contradicts what is stored (e.g. the text of another memory).
    #[error("{0}")]
    Conflict(String),
    /// The disk is full: nothing was stored.
    #[error("the disk holding the memory database is full: nothing was stored")]
    DiskFull,
    /// SQLite failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A task of the store failed (a bug).
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    fn from_write(error: sqlx::Error) -> Self {
        let full = error
            .as_database_error()
            .and_then(|database| database.code())
            .is_some_and(|code| code == "13" || code == "4874");
        if full {
            Self::DiskFull
        } else {
            Self::Database(error)
        }
    }
}

/// Restricts which memories a read or a forget considers, beyond the scopes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only these kinds; empty means all.
    pub kinds: Vec<Kind>,
    /// Only memories created at or after this (Unix ms).
    pub created_after_ms: Option<i64>,
    /// Only memories created before this (Unix ms).
    pub created_before_ms: Option<i64>,
    /// Only memories with every one of these labels.
    pub metadata: Metadata,
}

impl Filter {
    /// Whether it restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
            && self.created_after_ms.is_none()
            && self.created_before_ms.is_none()
            && self.metadata.is_empty()
    }

    fn push_conditions(&self, query: &mut QueryBuilder<'_, Sqlite>) {
        if !self.kinds.is_empty() {
            query.push(" AND m.kind IN (");
            let mut kinds = query.separated(", ");
            for kind in &self.kinds {
                kinds.push_bind(kind.name());
            }
            query.push(")");
        }
        if let Some(after) = self.created_after_ms {
            query.push(" AND m.created_ms >= ").push_bind(after);
        }
        if let Some(before) = self.created_before_ms {
            query.push(" AND m.created_ms < ").push_bind(before);
        }
        for (key, value) in &self.metadata {
            query
                .push(" AND EXISTS (SELECT 1 FROM json_each(m.metadata) WHERE json_each.key = ")
                .push_bind(key.clone())
                .push(" AND json_each.value = ")
                .push_bind(value.clone())
                .push(")");
        }
    }
}

/// What storing one memory did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new memory.
    Created,
    /// The same text was already there.
    Duplicate,
    /// A near duplicate now holds the new text.
    Superseded,
}

/// The result of storing one memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The memory that holds the text now.
    pub id: String,
    /// What happened.
    pub outcome: Outcome,
    /// For a supersede, the similarity to the text it replaced.
    pub similarity: f32,
}

/// A memory to store with its embedding, if the model made one.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The memory.
    pub memory: NewMemory,
    /// Its unit-length vector from `model`.
    pub vector: Option<Vec<f32>>,
}

/// Changes to one memory; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// New text, with its new vector when the model is loaded.
    pub text: Option<(String, Option<Vec<f32>>)>,
    /// New kind.
    pub kind: Option<Kind>,
    /// New importance.
    pub importance: Option<f32>,
    /// Labels to set; with `replace_metadata`, the whole new map.
    pub metadata: Metadata,
    /// Whether `metadata` replaces the map instead of adding to it.
    pub replace_metadata: bool,
    /// New expiry: `Some(None)` removes it.
    pub expires_ms: Option<Option<i64>>,
}

/// Counts for `Stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Memories stored.
    pub memories: u64,
    /// Distinct scopes.
    pub scopes: u64,
    /// The largest scopes and their sizes.
    pub largest_scopes: Vec<(String, u64)>,
    /// Earlier versions kept.
    pub history_versions: u64,
    /// Memories without a vector of the current model.
    pub pending_embeddings: u64,
}

/// A memory as exported: the record, its history and its stored vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The record.
    pub memory: Memory,
    /// Earlier versions, oldest first.
    pub history: Vec<MemoryVersion>,
    /// The stored vector, little-endian f32.
    pub embedding: Option<Vec<f32>>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// New memories.
    pub imported: u64,
    /// Already there, the same or newer.
    pub unchanged: u64,
    /// Replaced by a newer version from the file.
    pub replaced: u64,
    /// Skipped: the same text under another id.
    pub duplicates: u64,
}

/// The vectors one `remember` transaction wrote: searchable for near duplicates within the
/// batch at once, applied to the shared index only after the commit.
#[derive(Default)]
struct PendingVectors {
    index: VectorIndex,
    vectors: Vec<(i64, String, Option<i64>, Vec<f32>)>,
}

impl PendingVectors {
    fn add(&mut self, sequence: i64, memory: &NewMemory, vector: Vec<f32>) {
        self.index
            .insert(sequence, memory.scope.as_str(), memory.expires_ms, &vector);
        self.vectors.push((
            sequence,
            memory.scope.to_string(),
            memory.expires_ms,
            vector,
        ));
    }
}

/// The memory database and its vector index.
pub struct Store {
    path: PathBuf,
    reads: SqlitePool,
    writes: SqlitePool,
    write_lock: tokio::sync::Mutex<()>,
    /// Shared with the blocking threads that scan it.
    index: Arc<RwLock<VectorIndex>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn vector_to_bytes(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn vector_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect()
}

fn metadata_to_json(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned())
}

/// A value the database holds that this daemon never writes: the file was changed behind
/// its back. Reading on would hide it, and writing the row back would lose data.
fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

// Decoders of the columns memories and their versions share.

fn kind_column(row: &SqliteRow) -> Result<Kind, sqlx::Error> {
    Kind::parse(row.try_get("kind")?).map_err(corrupt)
}

fn importance_column(row: &SqliteRow) -> Result<f32, sqlx::Error> {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "importance is stored from an f32"
    )]
    Ok(row.try_get::<f64, _>("importance")? as f32)
}

fn metadata_column(row: &SqliteRow) -> Result<Metadata, sqlx::Error> {
    serde_json::from_str(row.try_get("metadata")?)
        .map_err(|error| corrupt(format!("metadata is not a JSON object of strings: {error}")))
}

fn version_column(row: &SqliteRow) -> Result<u32, sqlx::Error> {
    u32::try_from(row.try_get::<i64, _>("version")?)
        .map_err(|_| corrupt("version is out of range".to_owned()))
}

fn memory_from_row(row: &SqliteRow) -> Result<Memory, sqlx::Error> {
    Ok(Memory {
        sequence: row.try_get("sequence")?,
        id: row.try_get("id")?,
        scope: Scope::parse(row.try_get("scope")?).map_err(corrupt)?,
        kind: kind_column(row)?,
        text: row.try_get("text")?,
        importance: importance_column(row)?,
        source: row.try_get("source")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        accessed_ms: row.try_get("accessed_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        metadata: metadata_column(row)?,
        embedding_model: row.try_get("embedding_model")?,
        version: version_column(row)?,
    })
}

fn version_from_row(row: &SqliteRow) -> Result<MemoryVersion, sqlx::Error> {
    Ok(MemoryVersion {
        version: version_column(row)?,
        text: row.try_get("text")?,
        kind: kind_column(row)?,
        importance: importance_column(row)?,
        metadata: metadata_column(row)?,
        replaced_ms: row.try_get("replaced_ms")?,
        reason: row.try_get("reason")?,
    })
}

/// Reads what the file at `path` is, without writing to it: `Ok(())` for a missing or empty
/// file or a SynOS memory database, an error naming the problem otherwise.
async fn inspect(path: &Path) -> Result<(), OpenError> {
    let unusable = |reason: String| OpenError::Unusable {
        path: path.to_owned(),
        reason,
    };
    let mut header = Vec::with_capacity(16);
    match std::fs::File::open(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(OpenError::Io {
                path: path.to_owned(),
                reason: error.to_string(),
            });
        }
        Ok(file) => {
            file.take(16)
                .read_to_end(&mut header)
                .map_err(|error| unusable(format!("unreadable: {error}")))?;
        }
    }
    if header.is_empty() {
        return Ok(());
    }
    if header.as_slice() != SQLITE_HEADER {
        return Err(unusable(
            "not an SQLite database (its header is wrong)".to_owned(),
        ));
    }
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|error| unusable(format!("cannot be opened: {error}")))?;
    let application_id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&pool)
        .await
        .map_err(|error| unusable(format!("damaged: {error}")))?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .map_err(|error| unusable(format!("damaged: {error}")))?;
    pool.close().await;
    if application_id != APPLICATION_ID && !tables.is_empty() {
        return Err(unusable(format!(
            "not a SynOS memory database (application id {application_id:#x}, tables {})",
            tables.join(", ")
        )));
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the database at `path`, applies the shipped migrations and loads the
    /// vectors of `model_id`. A foreign, damaged or newer database is refused, never changed.
    pub async fn open(path: &Path, model_id: &str) -> Result<Self, OpenError> {
        inspect(path).await?;
        let io = |error: sqlx::Error| OpenError::Io {
            path: path.to_owned(),
            reason: error.to_string(),
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the write-ahead log is synced at every commit, so an acknowledged write
            // survives power loss too, not only a killed process.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // 32 MiB of page cache per connection (SQLite's default is 2): the indexes of 10⁵
            // memories then stay in memory.
            .pragma("cache_size", "-32768")
            .busy_timeout(Duration::from_secs(5));
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(io)?;
        MIGRATIONS
            .run(&writes)
            .await
            .map_err(|error| OpenError::Unusable {
                path: path.to_owned(),
                reason: format!("its schema cannot be brought up to date: {error}"),
            })?;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(io)?;
        let store = Self {
            path: path.to_owned(),
            reads,
            writes,
            write_lock: tokio::sync::Mutex::new(()),
            index: Arc::new(RwLock::new(VectorIndex::new())),
        };
        store.load_vectors(model_id).await.map_err(io)?;
        Ok(store)
    }

    async fn load_vectors(&self, model_id: &str) -> Result<(), sqlx::Error> {
        let rows = sqlx::query(
            "SELECT sequence, scope, expires_ms, embedding FROM memories \
             WHERE embedding_model = ? AND embedding IS NOT NULL",
        )
        .bind(model_id)
        .fetch_all(&self.reads)
        .await?;
        let mut index = self.index_mut();
        *index = VectorIndex::new();
        for row in rows {
            let bytes: Vec<u8> = row.try_get("embedding")?;
            index.insert(
                row.try_get("sequence")?,
                row.try_get::<&str, _>("scope")?,
                row.try_get("expires_ms")?,
                &vector_from_bytes(&bytes),
            );
        }
        Ok(())
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, VectorIndex> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, VectorIndex> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many vectors the index holds.
    pub fn indexed_vectors(&self) -> usize {
        self.index().len()
    }

    /// Stores `memories` in one transaction and returns once it is on disk. A memory whose
    /// scope already holds the same normalised text is a duplicate; one whose vector is at
    /// least `near_duplicate_similarity` from another memory of its scope supersedes it.
    pub async fn remember(
        &self,
        memories: Vec<Embedded>,
        model_id: &str,
        near_duplicate_similarity: f32,
    ) -> Result<Vec<Stored>, StoreError> {
        let _writer = self.write_lock.lock().await;
        let now = now_unix_ms();
        let mut transaction = self.writes.begin().await.map_err(StoreError::from_write)?;
        // Vectors written by this transaction, applied to the index only once it commits.
        let mut pending = PendingVectors::default();
        let mut results = Vec::with_capacity(memories.len());
        for Embedded { memory, vector } in memories {
            let normalized = record::normalize_text(&memory.text);
            let near = vector.as_deref().and_then(|vector| {
                let scopes = [memory.scope.as_str()];
                let committed =
                    self.index()
                        .search(vector, &scopes, None, now, near_duplicate_similarity, 1);
                let uncommitted =
                    pending
                        .index
                        .search(vector, &scopes, None, now, near_duplicate_similarity, 1);
                committed
                    .into_iter()
                    .chain(uncommitted)
                    .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
            });
            // An exact duplicate is also a near one; without a near one, the insert below
            // finds it through the UNIQUE constraint, so the common case costs no lookup.
            if near.is_some()
                && let Some(id) =
                    Self::touch_duplicate(&mut transaction, &memory.scope, &normalized, now).await?
            {
                results.push(Stored {
                    id,
                    outcome: Outcome::Duplicate,
                    similarity: 1.0,
                });
                continue;
            }
            let embedding = vector.as_deref().map(vector_to_bytes);
            let embedding_model = if vector.is_some() { model_id } else { "" };
            let metadata = metadata_to_json(&memory.metadata);
            if let Some(Neighbour {
                sequence,
                similarity,
            }) = near
            {
                let id = Self::supersede(
                    &mut transaction,
                    sequence,
                    &memory,
                    &normalized,
                    embedding.as_deref(),
                    embedding_model,
                    now,
                )
                .await?;
                if let Some(vector) = vector {
                    pending.add(sequence, &memory, vector);
                }
                results.push(Stored {
                    id,
                    outcome: Outcome::Superseded,
                    similarity,
                });
                continue;
            }
            let id = uuid::Uuid::now_v7().to_string();
            let sequence: Option<i64> = sqlx::query_scalar(
                "INSERT INTO memories (id, scope, kind, text, normalized_text, importance, source, \
                 created_ms, updated_ms, accessed_ms, expires_ms, metadata, embedding, embedding_model, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) \
                 ON CONFLICT (scope, normalized_text) DO NOTHING RETURNING sequence",
            )
            .bind(&id)
            .bind(memory.scope.as_str())
            .bind(memory.kind.name())
            .bind(&memory.text)
            .bind(&normalized)
            .bind(f64::from(memory.importance))
            .bind(&memory.source)
            .bind(now)
            .bind(now)
            .bind(now)
            .bind(memory.expires_ms)
            .bind(&metadata)
            .bind(embedding)
            .bind(embedding_model)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(StoreError::from_write)?;
            let Some(sequence) = sequence else {
                let id = Self::touch_duplicate(&mut transaction, &memory.scope, &normalized, now)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Internal("a duplicate vanished while storing".to_owned())
                    })?;
                results.push(Stored {
                    id,
                    outcome: Outcome::Duplicate,
                    similarity: 1.0,
                });
                continue;
            };
            if let Some(vector) = vector {
                pending.add(sequence, &memory, vector);
            }
            results.push(Stored {
                id,
                outcome: Outcome::Created,
                similarity: 0.0,
            });
        }
        transaction.commit().await.map_err(StoreError::from_write)?;
        let mut index = self.index_mut();
        for (sequence, scope, expires_ms, vector) in pending.vectors {
            index.insert(sequence, &scope, expires_ms, &vector);
        }
        Ok(results)
    }

    /// The id of the memory of `scope` with this normalised text, if any, marked as accessed.
    async fn touch_duplicate(
        transaction: &mut sqlx::Transaction<'_, Sqlite>,
        scope: &Scope,
        normalized: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "UPDATE memories SET accessed_ms = ? WHERE scope = ? AND normalized_text = ? RETURNING id",
        )
        .bind(now)
        .bind(scope.as_str())
        .bind(normalized)
        .fetch_optional(&mut **transaction)
        .await
        .map_err(StoreError::from_write)
    }

    /// Moves the current version of `sequence` into its history and gives it `memory`'s content.
    #[allow(clippy::too_many_arguments, reason = "one statement's parameters")]
    async fn supersede(
        transaction: &mut sqlx::Transaction<'_, Sqlite>,
        sequence: i64,
        memory: &NewMemory,
        normalized: &str,
        embedding: Option<&[u8]>,
        embedding_model: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        Self::archive(transaction, sequence, "superseded", now).await?;
        let current = sqlx::query("SELECT kind, metadata FROM memories WHERE sequence = ?")
            .bind(sequence)
            .fetch_one(&mut **transaction)
            .await?;
        let mut metadata = metadata_column(&current)?;
        metadata.extend(memory.metadata.clone());
        // "note" is the kind of memories nobody classified: it never replaces a real kind.
        let kind = if memory.kind == Kind::Note {
            kind_column(&current)?
        } else {
            memory.kind
        };
        // The memory matters at least as much as either statement of it did.
        let id: String = sqlx::query_scalar(
            "UPDATE memories SET text = ?, normalized_text = ?, kind = ?, importance = max(importance, ?), source = ?, \
             updated_ms = ?, accessed_ms = ?, expires_ms = ?, metadata = ?, embedding = ?, \
             embedding_model = ?, version = version + 1 WHERE sequence = ? RETURNING id",
        )
        .bind(&memory.text)
        .bind(normalized)
        .bind(kind.name())
        .bind(f64::from(memory.importance))
        .bind(&memory.source)
        .bind(now)
        .bind(now)
        .bind(memory.expires_ms)
        .bind(metadata_to_json(&metadata))
        .bind(embedding)
        .bind(embedding_model)
        .bind(sequence)
        .fetch_one(&mut **transaction)
        .await
        .map_err(StoreError::from_write)?;
        Ok(id)
    }

    /// Copies the current version of `sequence` into its history.
    async fn archive(
        transaction: &mut sqlx::Transaction<'_, Sqlite>,
        sequence: i64,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO memory_versions (memory_sequence, version, text, kind, importance, metadata, replaced_ms, reason) \
             SELECT sequence, version + 1, text, kind, importance, metadata, ?, ? FROM memories WHERE sequence = ?",
        )
        .bind(now)
        .bind(reason)
        .bind(sequence)
        .execute(&mut **transaction)
        .await
        .map_err(StoreError::from_write)?;
        Ok(())
    }

    /// One memory and its history.
    pub async fn get(&self, id: &str) -> Result<(Memory, Vec<MemoryVersion>), StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM memories WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reads)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let memory = memory_from_row(&row)?;
        let history = self.history(memory.sequence).await?;
        Ok((memory, history))
    }

    async fn history(&self, sequence: i64) -> Result<Vec<MemoryVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, text, kind, importance, metadata, replaced_ms, reason FROM memory_versions \
             WHERE memory_sequence = ? ORDER BY version",
        )
        .bind(sequence)
        .fetch_all(&self.reads)
        .await?;
        Ok(rows
            .iter()
            .map(version_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Applies `changes` to one memory, keeping its previous version in its history.
    pub async fn update(
        &self,
        id: &str,
        changes: Changes,
        model_id: &str,
    ) -> Result<Memory, StoreError> {
        let _writer = self.write_lock.lock().await;
        let now = now_unix_ms();
        let mut transaction = self.writes.begin().await.map_err(StoreError::from_write)?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM memories WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let current = memory_from_row(&row)?;
        let content_changes = changes.text.is_some()
            || changes.kind.is_some()
            || changes.importance.is_some()
            || !changes.metadata.is_empty()
            || changes.replace_metadata;
        if content_changes {
            Self::archive(&mut transaction, current.sequence, "updated", now).await?;
        }
        let mut metadata = if changes.replace_metadata {
            Metadata::new()
        } else {
            current.metadata.clone()
        };
        metadata.extend(changes.metadata);
        let expires_ms = changes.expires_ms.unwrap_or(current.expires_ms);
        let mut query = QueryBuilder::<Sqlite>::new("UPDATE memories SET kind = ");
        query
            .push_bind(changes.kind.unwrap_or(current.kind).name())
            .push(", importance = ")
            .push_bind(f64::from(changes.importance.unwrap_or(current.importance)))
            .push(", metadata = ")
            .push_bind(metadata_to_json(&metadata))
            .push(", expires_ms = ")
            .push_bind(expires_ms);
        let mut new_vector = None;
        if let Some((text, vector)) = &changes.text {
            let normalized = record::normalize_text(text);
            let clash: Option<String> = sqlx::query_scalar(
                "SELECT id FROM memories WHERE scope = ? AND normalized_text = ? AND sequence != ?",
            )
            .bind(current.scope.as_str())
            .bind(&normalized)
            .bind(current.sequence)
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(other) = clash {
                return Err(StoreError::Conflict(format!(
                    "text: memory {other} of scope {} already has this text",
                    current.scope
                )));
            }
            query
                .push(", text = ")
                .push_bind(text.clone())
                .push(", normalized_text = ")
                .push_bind(normalized)
                .push(", embedding = ")
                .push_bind(vector.as_deref().map(vector_to_bytes))
                .push(", embedding_model = ")
                .push_bind(if vector.is_some() { model_id } else { "" }.to_owned());
            new_vector = Some(vector.clone());
        }
        if content_changes {
            query
                .push(", version = version + 1, updated_ms = ")
                .push_bind(now);
        }
        query.push(" WHERE sequence = ").push_bind(current.sequence);
        query
            .build()
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::from_write)?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM memories WHERE sequence = ?"
        ))
        .bind(current.sequence)
        .fetch_one(&mut *transaction)
        .await?;
        let updated = memory_from_row(&row)?;
        transaction.commit().await.map_err(StoreError::from_write)?;
        let mut index = self.index_mut();
        match new_vector {
            Some(Some(vector)) => {
                index.insert(
                    updated.sequence,
                    updated.scope.as_str(),
                    updated.expires_ms,
                    &vector,
                );
            }
            Some(None) => index.remove(updated.sequence),
            None => index.set_expiry(updated.sequence, updated.expires_ms),
        }
        Ok(updated)
    }

    async fn delete_where(&self, mut query: QueryBuilder<'_, Sqlite>) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        query.push(" RETURNING sequence");
        let sequences: Vec<i64> = query
            .build_query_scalar()
            .fetch_all(&self.writes)
            .await
            .map_err(StoreError::from_write)?;
        let mut index = self.index_mut();
        for sequence in &sequences {
            index.remove(*sequence);
        }
        Ok(sequences.len() as u64)
    }

    /// Deletes one memory; `NotFound` when there is none.
    pub async fn forget_id(&self, id: &str) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::new("DELETE FROM memories WHERE id = ");
        query.push_bind(id.to_owned());
        match self.delete_where(query).await? {
            0 => Err(StoreError::NotFound(id.to_owned())),
            forgotten => Ok(forgotten),
        }
    }

    /// Deletes the memories of `scopes` that match `filter`.
    pub async fn forget_matching(
        &self,
        scopes: &[Scope],
        filter: &Filter,
    ) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::new("DELETE FROM memories AS m WHERE ");
        push_scopes(&mut query, scopes);
        filter.push_conditions(&mut query);
        self.delete_where(query).await
    }

    /// Deletes every memory that expired before `now`.
    pub async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::new(
            "DELETE FROM memories WHERE expires_ms IS NOT NULL AND expires_ms <= ",
        );
        query.push_bind(now);
        self.delete_where(query).await
    }

    /// Memories of `scopes` matching `filter`, newest first, after `before_sequence`.
    pub async fn list(
        &self,
        scopes: &[Scope],
        filter: &Filter,
        before_sequence: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Memory>, StoreError> {
        let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM memories AS m WHERE "));
        push_scopes(&mut query, scopes);
        filter.push_conditions(&mut query);
        if let Some(before) = before_sequence {
            query.push(" AND m.sequence < ").push_bind(before);
        }
        query
            .push(" ORDER BY m.sequence DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.reads).await?;
        Ok(rows.iter().map(memory_from_row).collect::<Result<_, _>>()?)
    }

    /// Full-text (BM25) ranking of the memories of `scopes` matching `filter`: `(sequence,
    /// score)`, best first, higher is better. The scopes are part of the MATCH expression.
    /// Without a filter the index alone answers and expired memories not yet purged may be
    /// among the results (callers drop them; see `ranking::recall`); with one, expired ones are
    /// left out here.
    pub async fn keyword_search(
        &self,
        query_text: &str,
        scopes: &[Scope],
        filter: &Filter,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let Some(words) = full_text_expression(query_text) else {
            return Ok(Vec::new());
        };
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let scope_keys: Vec<String> = scopes
            .iter()
            .map(|scope| format!("\"{}\"", scope_key(scope)))
            .collect();
        let expression = format!(
            "scope_key : ({}) AND text : ({words})",
            scope_keys.join(" OR ")
        );
        // The scope column has weight 0: every match has one scope token, which says nothing.
        if filter.is_empty() {
            return Ok(sqlx::query_as(
                "SELECT rowid, -bm25(memories_text, 1.0, 0.0) FROM memories_text WHERE memories_text MATCH ? \
                 ORDER BY bm25(memories_text, 1.0, 0.0) LIMIT ?",
            )
            .bind(expression)
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await?);
        }
        let mut query = QueryBuilder::new(
            "SELECT m.sequence, -bm25(memories_text, 1.0, 0.0) AS score FROM memories_text \
             JOIN memories AS m ON m.sequence = memories_text.rowid WHERE memories_text MATCH ",
        );
        query.push_bind(expression).push(" AND ");
        push_scopes(&mut query, scopes);
        query
            .push(" AND (m.expires_ms IS NULL OR m.expires_ms > ")
            .push_bind(now)
            .push(")");
        filter.push_conditions(&mut query);
        query
            .push(" ORDER BY bm25(memories_text, 1.0, 0.0) LIMIT ")
            .push_bind(i64::from(limit));
        Ok(query.build_query_as().fetch_all(&self.reads).await?)
    }

    /// Vector ranking of the memories of `scopes` matching `filter` and not expired.
    pub async fn vector_search(
        &self,
        query_vector: &[f32],
        scopes: &[Scope],
        filter: &Filter,
        now: i64,
        min_similarity: f32,
        limit: usize,
    ) -> Result<Vec<Neighbour>, StoreError> {
        // Other filters are resolved by SQL first, so the scan only scores rows they allow.
        let allowed = if filter.is_empty() {
            None
        } else {
            let mut query = QueryBuilder::new("SELECT m.sequence FROM memories AS m WHERE ");
            push_scopes(&mut query, scopes);
            filter.push_conditions(&mut query);
            let sequences: Vec<i64> = query.build_query_scalar().fetch_all(&self.reads).await?;
            Some(sequences.into_iter().collect::<HashSet<_>>())
        };
        // On a blocking thread: a scan of 10⁵ vectors takes milliseconds, which must neither
        // stall the runtime nor wait for the full-text query running beside it.
        let index = self.index.clone();
        let query_vector = query_vector.to_vec();
        let scope_names: Vec<String> = scopes
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect();
        tokio::task::spawn_blocking(move || {
            let scope_names: Vec<&str> = scope_names.iter().map(String::as_str).collect();
            index
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .search(
                    &query_vector,
                    &scope_names,
                    allowed.as_ref(),
                    now,
                    min_similarity,
                    limit,
                )
        })
        .await
        .map_err(|error| StoreError::Internal(format!("vector search failed: {error}")))
    }

    /// The memories with these row numbers.
    pub async fn memories(&self, sequences: &[i64]) -> Result<HashMap<i64, Memory>, StoreError> {
        if sequences.is_empty() {
            return Ok(HashMap::new());
        }
        let mut query = QueryBuilder::new(format!(
            "SELECT {COLUMNS} FROM memories WHERE sequence IN ("
        ));
        let mut list = query.separated(", ");
        for sequence in sequences {
            list.push_bind(*sequence);
        }
        query.push(")");
        let rows = query.build().fetch_all(&self.reads).await?;
        rows.iter()
            .map(|row| memory_from_row(row).map(|memory| (memory.sequence, memory)))
            .collect::<Result<_, _>>()
            .map_err(StoreError::Database)
    }

    /// Records that these memories were recalled at `now`.
    pub async fn touch(&self, sequences: &[i64], now: i64) -> Result<(), StoreError> {
        if sequences.is_empty() {
            return Ok(());
        }
        let _writer = self.write_lock.lock().await;
        let mut query = QueryBuilder::new("UPDATE memories SET accessed_ms = ");
        query.push_bind(now).push(" WHERE sequence IN (");
        let mut list = query.separated(", ");
        for sequence in sequences {
            list.push_bind(*sequence);
        }
        query.push(")");
        query
            .build()
            .execute(&self.writes)
            .await
            .map_err(StoreError::from_write)?;
        Ok(())
    }

    /// Up to `limit` memories without a vector of `model_id`: `(sequence, updated_ms, text)`.
    pub async fn needing_embedding(
        &self,
        model_id: &str,
        limit: u32,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sequence, updated_ms, text FROM memories WHERE embedding_model != ? OR embedding IS NULL \
             ORDER BY sequence LIMIT ?",
        )
        .bind(model_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?)
    }

    /// Stores vectors made for `(sequence, updated_ms)`; one whose memory changed since is
    /// skipped (the next pass embeds the new text).
    pub async fn set_embeddings(
        &self,
        vectors: Vec<(i64, i64, Vec<f32>)>,
        model_id: &str,
    ) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut transaction = self.writes.begin().await.map_err(StoreError::from_write)?;
        let mut applied = Vec::new();
        for (sequence, updated_ms, vector) in vectors {
            let scope: Option<(String, Option<i64>)> = sqlx::query_as(
                "UPDATE memories SET embedding = ?, embedding_model = ? WHERE sequence = ? AND updated_ms = ? \
                 RETURNING scope, expires_ms",
            )
            .bind(vector_to_bytes(&vector))
            .bind(model_id)
            .bind(sequence)
            .bind(updated_ms)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(StoreError::from_write)?;
            if let Some((scope, expires_ms)) = scope {
                applied.push((sequence, scope, expires_ms, vector));
            }
        }
        transaction.commit().await.map_err(StoreError::from_write)?;
        let mut index = self.index_mut();
        for (sequence, scope, expires_ms, vector) in applied {
            index.insert(sequence, &scope, expires_ms, &vector);
        }
        Ok(())
    }

    /// How many memories `scopes` (or all, when empty) hold.
    pub async fn count(&self, scopes: &[Scope]) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::new("SELECT count(*) FROM memories AS m WHERE ");
        if scopes.is_empty() {
            query.push("1");
        } else {
            push_scopes(&mut query, scopes);
        }
        let count: i64 = query.build_query_scalar().fetch_one(&self.reads).await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// A page of the export: memories of `scopes` (all when empty) after `after_sequence`.
    pub async fn export_page(
        &self,
        scopes: &[Scope],
        after_sequence: i64,
        limit: u32,
    ) -> Result<Vec<Exported>, StoreError> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {COLUMNS}, embedding FROM memories AS m WHERE "
        ));
        if scopes.is_empty() {
            query.push("1");
        } else {
            push_scopes(&mut query, scopes);
        }
        query
            .push(" AND m.sequence > ")
            .push_bind(after_sequence)
            .push(" ORDER BY m.sequence LIMIT ")
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.reads).await?;
        let mut page = Vec::with_capacity(rows.len());
        for row in rows {
            let memory = memory_from_row(&row)?;
            let embedding: Option<Vec<u8>> = row.try_get("embedding")?;
            let history = self.history(memory.sequence).await?;
            page.push(Exported {
                memory,
                history,
                embedding: embedding.as_deref().map(vector_from_bytes),
            });
        }
        Ok(page)
    }

    /// Stores exported memories as they were, in one transaction: new ids are added, older
    /// stored versions replaced, the same or newer ones left alone. A vector is indexed when
    /// it comes from `model_id`.
    pub async fn import(
        &self,
        memories: Vec<Exported>,
        model_id: &str,
    ) -> Result<ImportCounts, StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut counts = ImportCounts::default();
        let mut transaction = self.writes.begin().await.map_err(StoreError::from_write)?;
        let mut indexed = Vec::new();
        for Exported {
            memory,
            history,
            embedding,
        } in memories
        {
            let normalized = record::normalize_text(&memory.text);
            let existing: Option<(i64, i64)> =
                sqlx::query_as("SELECT sequence, updated_ms FROM memories WHERE id = ?")
                    .bind(&memory.id)
                    .fetch_optional(&mut *transaction)
                    .await?;
            let same_text_elsewhere: Option<String> = sqlx::query_scalar(
                "SELECT id FROM memories WHERE scope = ? AND normalized_text = ? AND id != ?",
            )
            .bind(memory.scope.as_str())
            .bind(&normalized)
            .bind(&memory.id)
            .fetch_optional(&mut *transaction)
            .await?;
            if same_text_elsewhere.is_some() {
                counts.duplicates += 1;
                continue;
            }
            match existing {
                Some((_, updated_ms)) if updated_ms >= memory.updated_ms => {
                    counts.unchanged += 1;
                    continue;
                }
                Some((sequence, _)) => {
                    sqlx::query("DELETE FROM memories WHERE sequence = ?")
                        .bind(sequence)
                        .execute(&mut *transaction)
                        .await
                        .map_err(StoreError::from_write)?;
                    indexed.push((sequence, None));
                    counts.replaced += 1;
                }
                None => counts.imported += 1,
            }
            let sequence: i64 = sqlx::query_scalar(
                "INSERT INTO memories (id, scope, kind, text, normalized_text, importance, source, \
                 created_ms, updated_ms, accessed_ms, expires_ms, metadata, embedding, embedding_model, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING sequence",
            )
            .bind(&memory.id)
            .bind(memory.scope.as_str())
            .bind(memory.kind.name())
            .bind(&memory.text)
            .bind(&normalized)
            .bind(f64::from(memory.importance))
            .bind(&memory.source)
            .bind(memory.created_ms)
            .bind(memory.updated_ms)
            .bind(memory.accessed_ms)
            .bind(memory.expires_ms)
            .bind(metadata_to_json(&memory.metadata))
            .bind(embedding.as_deref().map(vector_to_bytes))
            .bind(if embedding.is_some() { memory.embedding_model.as_str() } else { "" })
            .bind(i64::from(memory.version))
            .fetch_one(&mut *transaction)
            .await
            .map_err(StoreError::from_write)?;
            for version in &history {
                sqlx::query(
                    "INSERT INTO memory_versions (memory_sequence, version, text, kind, importance, metadata, replaced_ms, reason) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(sequence)
                .bind(i64::from(version.version))
                .bind(&version.text)
                .bind(version.kind.name())
                .bind(f64::from(version.importance))
                .bind(metadata_to_json(&version.metadata))
                .bind(version.replaced_ms)
                .bind(&version.reason)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::from_write)?;
            }
            if memory.embedding_model == model_id
                && let Some(vector) = embedding
            {
                indexed.push((
                    sequence,
                    Some((memory.scope.to_string(), memory.expires_ms, vector)),
                ));
            }
        }
        transaction.commit().await.map_err(StoreError::from_write)?;
        let mut index = self.index_mut();
        for (sequence, vector) in indexed {
            match vector {
                Some((scope, expires_ms, vector)) => {
                    index.insert(sequence, &scope, expires_ms, &vector);
                }
                None => index.remove(sequence),
            }
        }
        Ok(counts)
    }

    /// Counts for `Stats`; `model_id` is the model whose vectors are current.
    pub async fn counts(&self, model_id: &str) -> Result<Counts, StoreError> {
        let memories: i64 = sqlx::query_scalar("SELECT count(*) FROM memories")
            .fetch_one(&self.reads)
            .await?;
        let scopes: i64 = sqlx::query_scalar("SELECT count(DISTINCT scope) FROM memories")
            .fetch_one(&self.reads)
            .await?;
        let largest: Vec<(String, i64)> = sqlx::query_as(
            "SELECT scope, count(*) AS n FROM memories GROUP BY scope ORDER BY n DESC, scope LIMIT 20",
        )
        .fetch_all(&self.reads)
        .await?;
        let history: i64 = sqlx::query_scalar("SELECT count(*) FROM memory_versions")
            .fetch_one(&self.reads)
            .await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM memories WHERE embedding_model != ? OR embedding IS NULL",
        )
        .bind(model_id)
        .fetch_one(&self.reads)
        .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Counts {
            memories: count(memories),
            scopes: count(scopes),
            largest_scopes: largest
                .into_iter()
                .map(|(scope, n)| (scope, count(n)))
                .collect(),
            history_versions: count(history),
            pending_embeddings: count(pending),
        })
    }

    /// Bytes of the database and its write-ahead log.
    pub fn database_bytes(&self) -> u64 {
        let size = |path: PathBuf| std::fs::metadata(path).map_or(0, |metadata| metadata.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        size(self.path.clone()) + size(PathBuf::from(wal))
    }

    /// Closes the database cleanly (checkpointing the log).
    pub async fn close(&self) {
        self.reads.close().await;
        self.writes.close().await;
    }
}

/// `m.scope IN (…)`: every query names its scopes; an empty list matches nothing.
fn push_scopes(query: &mut QueryBuilder<'_, Sqlite>, scopes: &[Scope]) {
    if scopes.is_empty() {
        query.push("0");
        return;
    }
    query.push("m.scope IN (");
    let mut list = query.separated(", ");
    for scope in scopes {
        list.push_bind(scope.as_str().to_owned());
    }
    query.push(")");
}

/// Words too common to tell memories apart: matching them would rank nearly every memory.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "had",
    "has", "have", "he", "her", "his", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on",
    "or", "our", "she", "that", "the", "their", "them", "they", "this", "to", "was", "we", "were",
    "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
];

/// The FTS5 expression for a free-text query: each word quoted (so no query syntax is ever
/// interpreted) and joined with OR, so BM25 ranks partial matches; stop words are left out
/// unless nothing else is left. `None` without words.
fn full_text_expression(query: &str) -> Option<String> {
    let words: Vec<&str> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .take(64)
        .collect();
    let telling: Vec<&str> = words
        .iter()
        .copied()
        .filter(|word| !STOP_WORDS.contains(&word.to_lowercase().as_str()))
        .collect();
    let chosen = if telling.is_empty() { words } else { telling };
    (!chosen.is_empty()).then(|| {
        chosen
            .iter()
            .map(|word| format!("\"{word}\""))
            .collect::<Vec<_>>()
            .join(" OR ")
    })
}

/// The token that stands for `scope` in the full-text index, as the triggers write it:
/// "scope", the hex of its bytes, "0". Injective, one token for the tokenizer, and ending in
/// a digit so that the Porter stemmer leaves it alone.
fn scope_key(scope: &Scope) -> String {
    format!("scope{}0", hex::encode_upper(scope.as_str()))
}

/// The database file in a state directory.
pub fn database_path(state_directory: &Path) -> PathBuf {
    state_directory.join("memory.sqlite")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_text_queries_cannot_inject_syntax() {
        assert_eq!(
            full_text_expression("tea OR \"x\" NEAR(a b) *").as_deref(),
            Some("\"tea\" OR \"x\" OR \"NEAR\" OR \"b\"")
        );
        assert_eq!(
            full_text_expression("What is it?").as_deref(),
            Some("\"What\" OR \"is\" OR \"it\"")
        );
        assert_eq!(full_text_expression(" ?! "), None);
    }

    #[test]
    fn vectors_round_trip_through_bytes() {
        let vector = vec![0.1, -2.5, f32::MIN_POSITIVE, 1.0e-30];
        assert_eq!(vector_from_bytes(&vector_to_bytes(&vector)), vector);
    }
}
