//! The audit log: every decision, verdict and exec appended to SQLite, each record chained to
//! the previous one by SHA-256, and committed (WAL, `synchronous=FULL`) before the caller gets
//! its answer. Concurrent appends share one commit, so the fsync is paid once per batch.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection as _, Row as _, SqlitePool};
use tokio::sync::{mpsc, oneshot};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `PRAGMA application_id` of a SynOS audit database ("SYNA").
const APPLICATION_ID: i64 = 0x5359_4E41;
/// Most records one commit carries.
const MAX_BATCH: usize = 512;
/// Records read per query while verifying.
const VERIFY_PAGE: i64 = 10_000;
const GENESIS: [u8; 32] = [0; 32];

/// The audit database's path in the state directory.
pub fn database_path(state_directory: &Path) -> PathBuf {
    state_directory.join("audit.sqlite")
}

/// Why the audit log cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Opening failed; the message names the file.
    #[error("audit log {path}: {reason}")]
    Open {
        /// The database.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A record could not be made durable; the decision it records must not be given.
    #[error("audit log unwritable: {0}")]
    Write(String),
    /// Reading for a query or verification failed.
    #[error("audit log unreadable: {0}")]
    Read(String),
}

/// What is recorded (the log adds sequence, time and hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// "authorize", "screen", "redact", "tool-check", "exec", "reload", "rate-limit".
    pub kind: &'static str,
    /// Who asked.
    pub principal: String,
    /// What for.
    pub action: String,
    /// On what.
    pub resource: String,
    /// "allow", "deny", "block", ...
    pub outcome: String,
    /// JSON object with the kind's details; never secrets or screened text.
    pub detail: serde_json::Value,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1, 2, 3, ...
    pub sequence: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// See [`Entry::kind`].
    pub kind: String,
    /// See [`Entry`].
    pub principal: String,
    /// See [`Entry`].
    pub action: String,
    /// See [`Entry`].
    pub resource: String,
    /// See [`Entry`].
    pub outcome: String,
    /// The detail as stored.
    pub detail: String,
    /// Hex hash of the record before.
    pub previous_hash: String,
    /// Hex hash of this record.
    pub hash: String,
}

/// The outcome of verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records read.
    pub records: u64,
    /// The first record that does not fit, and why; `None` when the chain is intact.
    pub first_bad: Option<(u64, String)>,
}

/// The last record appended: what the next one chains to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    sequence: u64,
    hash: [u8; 32],
}

/// Entries that must share one commit, and where to send the first one's sequence number.
type Pending = (Vec<Entry>, oneshot::Sender<Result<u64, AuditError>>);

/// Appends and reads the audit log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    appends: mpsc::Sender<Pending>,
    reads: SqlitePool,
    /// The head as this process last wrote it; a log that ends earlier was truncated.
    head: Arc<Mutex<Head>>,
    path: PathBuf,
}

fn hash_record(previous: &[u8; 32], sequence: u64, fields: [&str; 7]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(sequence.to_be_bytes());
    // Length prefixes: moving bytes from one field to the next changes the hash.
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().into()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut hash = [0; 32];
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

fn head_file(database: &Path) -> PathBuf {
    database.with_extension("head")
}

/// `sequence hash` of the last record written, kept beside the database so a log cut short
/// while the daemon was stopped is still noticed.
fn read_head_file(database: &Path) -> Option<Head> {
    let text = std::fs::read_to_string(head_file(database)).ok()?;
    let (sequence, hash) = text.trim().split_once(' ')?;
    Some(Head {
        sequence: sequence.parse().ok()?,
        hash: parse_hash(hash)?,
    })
}

/// The head file's one line, always the same length so that it can be overwritten in place.
fn head_line(head: Head) -> String {
    format!("{:020} {}\n", head.sequence, hex::encode(head.hash))
}

/// Overwrites the head file in place: no new inode and no rename per commit, which would add
/// their metadata to the journal commit that every audit fsync waits for. A torn line only
/// fails to parse, which weakens the truncation check once and never breaks the log.
fn write_head_file(file: &std::fs::File, head: Head) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    file.write_all_at(head_line(head).as_bytes(), 0)
}

impl AuditLog {
    /// Opens (or creates) the log at `path` and starts its writer.
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        let open_error = |reason: String| AuditError::Open {
            path: path.to_owned(),
            reason,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|error| open_error(error.to_string()))?;
        let application_id: i64 = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&writes)
            .await
            .map_err(|error| open_error(format!("damaged: {error}")))?;
        if application_id != 0 && application_id != APPLICATION_ID {
            return Err(open_error(format!(
                "not a SynOS audit log (application id {application_id:#x}); refusing to use it"
            )));
        }
        MIGRATIONS.run(&writes).await.map_err(|error| {
            open_error(format!("its schema cannot be brought up to date: {error}"))
        })?;
        let reads = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.read_only(true))
            .await
            .map_err(|error| open_error(error.to_string()))?;
        let last = sqlx::query("SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1")
            .fetch_optional(&writes)
            .await
            .map_err(|error| open_error(format!("damaged: {error}")))?;
        let stored = match last {
            None => Head {
                sequence: 0,
                hash: GENESIS,
            },
            Some(row) => {
                let sequence: i64 = row
                    .try_get("sequence")
                    .map_err(|error| open_error(error.to_string()))?;
                let hash: String = row
                    .try_get("hash")
                    .map_err(|error| open_error(error.to_string()))?;
                Head {
                    sequence: u64::try_from(sequence).unwrap_or(0),
                    hash: parse_hash(&hash).unwrap_or(GENESIS),
                }
            }
        };
        // Records cut off the end while we were stopped: keep chaining from what was written,
        // so the gap stays visible to verification instead of being papered over.
        let head = match read_head_file(path) {
            Some(remembered) if remembered.sequence > stored.sequence => {
                tracing::error!(
                    written = remembered.sequence,
                    found = stored.sequence,
                    "audit log is shorter than what was written: records were deleted"
                );
                remembered
            }
            _ => stored,
        };
        let head = Arc::new(Mutex::new(head));
        let (appends, receiver) = mpsc::channel(4 * MAX_BATCH);
        // The one writer owns its connection: no pool to pass through on every commit.
        let writer = writes
            .acquire()
            .await
            .map_err(|error| open_error(error.to_string()))?
            .detach();
        tokio::spawn(write_batches(
            writer,
            receiver,
            head.clone(),
            path.to_owned(),
        ));
        Ok(Self {
            appends,
            reads,
            head,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry`; returns its sequence number once it is on disk.
    pub async fn append(&self, entry: Entry) -> Result<u64, AuditError> {
        self.append_together(vec![entry]).await
    }

    /// Appends `entries` in order and in one commit, so either all of them are on disk or none;
    /// returns the first one's sequence number (the others follow it one by one).
    pub async fn append_together(&self, entries: Vec<Entry>) -> Result<u64, AuditError> {
        if entries.is_empty() {
            return Err(AuditError::Write("nothing to append".to_owned()));
        }
        let (reply, answer) = oneshot::channel();
        self.appends
            .send((entries, reply))
            .await
            .map_err(|_| AuditError::Write("the writer has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| AuditError::Write("the writer has stopped".to_owned()))?
    }

    /// Recomputes the chain from the first record and compares its end with what this process
    /// wrote.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        let read = |error: sqlx::Error| AuditError::Read(error.to_string());
        let expected_head = *self
            .head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut previous = Head {
            sequence: 0,
            hash: GENESIS,
        };
        let mut records = 0;
        loop {
            let rows = sqlx::query(
                "SELECT sequence, time, kind, principal, action, resource, outcome, detail, \
                 previous_hash, hash FROM audit WHERE sequence > ? ORDER BY sequence LIMIT ?",
            )
            .bind(i64::try_from(previous.sequence).unwrap_or(i64::MAX))
            .bind(VERIFY_PAGE)
            .fetch_all(&self.reads)
            .await
            .map_err(read)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let record = record_from_row(&row).map_err(read)?;
                records += 1;
                if let Some(problem) = check_link(&previous, &record) {
                    return Ok(Verification {
                        records,
                        first_bad: Some(problem),
                    });
                }
                previous = Head {
                    sequence: record.sequence,
                    hash: parse_hash(&record.hash).unwrap_or(GENESIS),
                };
            }
        }
        let first_bad = if previous.sequence < expected_head.sequence {
            Some((
                previous.sequence + 1,
                format!(
                    "missing: the log ends at record {} but {} were written (records deleted from the end)",
                    previous.sequence, expected_head.sequence
                ),
            ))
        } else if previous.sequence == expected_head.sequence && previous.hash != expected_head.hash
        {
            Some((
                previous.sequence,
                "replaced: the last record is not the one that was written".to_owned(),
            ))
        } else {
            None
        };
        Ok(Verification { records, first_bad })
    }

    /// The newest `limit` records after `after` matching the filters, oldest first.
    pub async fn query(
        &self,
        after: u64,
        limit: u32,
        kind: &str,
        principal: &str,
        action: &str,
    ) -> Result<Vec<Record>, AuditError> {
        let rows = sqlx::query(
            "SELECT sequence, time, kind, principal, action, resource, outcome, detail, \
             previous_hash, hash FROM audit WHERE sequence > ?1 \
             AND (?2 = '' OR kind = ?2) AND (?3 = '' OR principal = ?3) AND (?4 = '' OR action = ?4) \
             ORDER BY sequence DESC LIMIT ?5",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(kind)
        .bind(principal)
        .bind(action)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await
        .map_err(|error| AuditError::Read(error.to_string()))?;
        let mut records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| AuditError::Read(error.to_string()))?;
        records.reverse();
        Ok(records)
    }
}

fn check_link(previous: &Head, record: &Record) -> Option<(u64, String)> {
    let expected = previous.sequence + 1;
    if record.sequence != expected {
        return Some((
            expected,
            format!(
                "missing: record {expected} is gone (the next one is {})",
                record.sequence
            ),
        ));
    }
    if parse_hash(&record.previous_hash) != Some(previous.hash) {
        return Some((
            record.sequence,
            "out of place: it does not chain to the record before it (reordered or replaced)"
                .to_owned(),
        ));
    }
    let computed = hash_record(
        &previous.hash,
        record.sequence,
        [
            &record.time,
            &record.kind,
            &record.principal,
            &record.action,
            &record.resource,
            &record.outcome,
            &record.detail,
        ],
    );
    if parse_hash(&record.hash) != Some(computed) {
        return Some((
            record.sequence,
            "edited: its contents do not match its hash".to_owned(),
        ));
    }
    None
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Record, sqlx::Error> {
    let sequence: i64 = row.try_get("sequence")?;
    Ok(Record {
        sequence: u64::try_from(sequence).unwrap_or(0),
        time: row.try_get("time")?,
        kind: row.try_get("kind")?,
        principal: row.try_get("principal")?,
        action: row.try_get("action")?,
        resource: row.try_get("resource")?,
        outcome: row.try_get("outcome")?,
        detail: row.try_get("detail")?,
        previous_hash: row.try_get("previous_hash")?,
        hash: row.try_get("hash")?,
    })
}

async fn write_batches(
    mut writes: SqliteConnection,
    mut receiver: mpsc::Receiver<Pending>,
    head: Arc<Mutex<Head>>,
    path: PathBuf,
) {
    let initial = *head
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let head_file = open_head_file(&path, initial);
    while let Some(first) = receiver.recv().await {
        let mut entries = first.0.len();
        let mut batch = vec![first];
        while entries < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => {
                    entries += pending.0.len();
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let start = *head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match write_batch(&mut writes, start, &batch).await {
            Ok(new_head) => {
                *head
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = new_head;
                let mut next = start.sequence + 1;
                for (entries, reply) in batch {
                    let _ = reply.send(Ok(next));
                    next += entries.len() as u64;
                }
                // After the replies: the commit is what makes them true; the head file only
                // helps notice a truncation later, and never runs ahead of the database.
                if let Some(file) = &head_file
                    && let Err(error) = write_head_file(file, new_head)
                {
                    tracing::warn!(%error, "cannot update the audit head file");
                }
            }
            Err(error) => {
                tracing::error!(%error, "audit records could not be written; their requests fail");
                let error = AuditError::Write(error.to_string());
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
    let _ = writes.close().await;
}

/// Opens the head file to be overwritten in place from now on; `None` (with a warning) when it
/// cannot be, which costs only the truncation check.
fn open_head_file(database: &Path, head: Head) -> Option<std::fs::File> {
    let path = head_file(database);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .and_then(|file| {
            file.set_len(head_line(head).len() as u64)?;
            Ok(file)
        })
        .inspect_err(|error| {
            tracing::warn!(%error, path = %path.display(), "cannot keep the audit head file; a log cut short while stopped will go unnoticed");
        })
        .ok()
}

/// Appends `batch` after `start` with one multi-row INSERT: one statement is one implicit
/// transaction, so the batch costs one trip to SQLite's thread and one fsync.
async fn write_batch(
    writes: &mut SqliteConnection,
    start: Head,
    batch: &[Pending],
) -> Result<Head, sqlx::Error> {
    let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let mut head = start;
    let mut rows = Vec::with_capacity(batch.len());
    for entry in batch.iter().flat_map(|(entries, _)| entries) {
        let sequence = head.sequence + 1;
        let detail = entry.detail.to_string();
        let hash = hash_record(
            &head.hash,
            sequence,
            [
                &time,
                entry.kind,
                &entry.principal,
                &entry.action,
                &entry.resource,
                &entry.outcome,
                &detail,
            ],
        );
        rows.push((sequence, entry, detail, head.hash, hash));
        head = Head { sequence, hash };
    }
    let mut insert = sqlx::QueryBuilder::new(
        "INSERT INTO audit (sequence, time, kind, principal, action, resource, outcome, detail, \
         previous_hash, hash) ",
    );
    insert.push_values(
        rows,
        |mut row, (sequence, entry, detail, previous, hash)| {
            row.push_bind(i64::try_from(sequence).unwrap_or(i64::MAX))
                .push_bind(time.clone())
                .push_bind(entry.kind)
                .push_bind(entry.principal.clone())
                .push_bind(entry.action.clone())
                .push_bind(entry.resource.clone())
                .push_bind(entry.outcome.clone())
                .push_bind(detail)
                .push_bind(hex::encode(previous))
                .push_bind(hex::encode(hash));
        },
    );
    // Small batches recur and are worth a prepared statement; large ones would only churn
    // the connection's statement cache.
    insert
        .build()
        .persistent(batch.len() <= 16)
        .execute(&mut *writes)
        .await?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(number: usize) -> Entry {
        Entry {
            kind: "authorize",
            principal: format!("User::\"user{number}\""),
            action: "llm.chat".to_owned(),
            resource: "Route::\"default\"".to_owned(),
            outcome: "allow".to_owned(),
            detail: serde_json::json!({ "policies": ["users-use-models"] }),
        }
    }

    async fn log_with(records: usize) -> (tempfile::TempDir, AuditLog) {
        let directory = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&database_path(directory.path()))
            .await
            .unwrap();
        let appends: Vec<_> = (0..records)
            .map(|number| log.append(entry(number)))
            .collect();
        let sequences = futures_util::future::try_join_all(appends).await.unwrap();
        assert_eq!(sequences, (1..=records as u64).collect::<Vec<_>>());
        (directory, log)
    }

    async fn raw(log: &AuditLog, statement: &str) {
        let pool = SqlitePool::connect(&format!("sqlite://{}", log.path().display()))
            .await
            .unwrap();
        sqlx::query(statement).execute(&pool).await.unwrap();
        pool.close().await;
    }

    #[tokio::test]
    async fn an_intact_log_verifies_and_survives_a_restart() {
        let (directory, log) = log_with(20).await;
        assert_eq!(
            log.verify().await.unwrap(),
            Verification {
                records: 20,
                first_bad: None
            }
        );
        drop(log);
        let reopened = AuditLog::open(&database_path(directory.path()))
            .await
            .unwrap();
        assert_eq!(reopened.append(entry(99)).await.unwrap(), 21);
        assert_eq!(reopened.verify().await.unwrap().first_bad, None);
        let tail = reopened.query(0, 3, "", "", "").await.unwrap();
        assert_eq!(
            tail.iter()
                .map(|record| record.sequence)
                .collect::<Vec<_>>(),
            vec![19, 20, 21]
        );
        let one = reopened
            .query(0, 10, "authorize", "User::\"user7\"", "")
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
    }

    #[tokio::test]
    async fn edits_deletions_and_reorders_name_the_first_bad_record() {
        let (_directory, log) = log_with(10).await;
        raw(&log, "UPDATE audit SET outcome = 'deny' WHERE sequence = 4").await;
        let verification = log.verify().await.unwrap();
        let (sequence, problem) = verification.first_bad.unwrap();
        assert_eq!(sequence, 4);
        assert!(problem.starts_with("edited"), "{problem}");

        let (_directory, log) = log_with(10).await;
        raw(&log, "DELETE FROM audit WHERE sequence = 6").await;
        let (sequence, problem) = log.verify().await.unwrap().first_bad.unwrap();
        assert_eq!(sequence, 6);
        assert!(problem.starts_with("missing"), "{problem}");

        let (_directory, log) = log_with(10).await;
        // Swap records 3 and 5 (through -1: sequence is unique).
        raw(&log, "UPDATE audit SET sequence = -1 WHERE sequence = 3").await;
        raw(&log, "UPDATE audit SET sequence = 3 WHERE sequence = 5").await;
        raw(&log, "UPDATE audit SET sequence = 5 WHERE sequence = -1").await;
        let (sequence, problem) = log.verify().await.unwrap().first_bad.unwrap();
        assert_eq!(sequence, 3);
        assert!(problem.starts_with("out of place"), "{problem}");

        let (directory, log) = log_with(10).await;
        raw(&log, "DELETE FROM audit WHERE sequence >= 9").await;
        let (sequence, problem) = log.verify().await.unwrap().first_bad.unwrap();
        assert_eq!(sequence, 9);
        assert!(problem.contains("deleted from the end"), "{problem}");
        // After a restart the head file still tells, and new records do not hide the gap.
        drop(log);
        let reopened = AuditLog::open(&database_path(directory.path()))
            .await
            .unwrap();
        assert_eq!(reopened.append(entry(1)).await.unwrap(), 11);
        assert_eq!(
            reopened.verify().await.unwrap().first_bad.map(|bad| bad.0),
            Some(9)
        );
    }

    #[tokio::test]
    async fn a_foreign_database_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(directory.path());
        let pool = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        sqlx::query("PRAGMA application_id = 42")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let error = AuditLog::open(&path).await.unwrap_err().to_string();
        assert!(error.contains("not a SynOS audit log"), "{error}");
    }
}
