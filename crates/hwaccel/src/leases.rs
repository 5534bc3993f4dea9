//! Accelerator leases: who holds which accelerator, or how much of its memory, until when. Kept
//! in `leases.json` in the state directory, replaced atomically on every change, so a lease
//! outlives a daemon restart; a lease is granted only once it is on disk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use synos_common::time::{now_unix_ms, rfc3339_seconds, timestamp};
use synos_proto::hwaccel::v1::{Accelerator, AcceleratorKind, AcquireAcceleratorRequest, Lease};

use crate::config::LeasesConfig;
use crate::tier::gibibytes;

/// The file in the state directory.
pub const LEASES_FILE: &str = "leases.json";

/// Longest holder name accepted.
const MAX_HOLDER_CHARS: usize = 200;

/// Why a lease call fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// No such accelerator or lease.
    #[error("{0}")]
    NotFound(String),
    /// Everything that would do is taken.
    #[error("{0}")]
    Exhausted(String),
    /// The lease could not be written, so it is not granted.
    #[error("{0}")]
    Storage(String),
    /// The lease is someone else's.
    #[error("{0}")]
    Forbidden(String),
}

impl From<LeaseError> for synos_common::ServiceError {
    fn from(error: LeaseError) -> Self {
        use synos_common::error::ErrorKind;
        let kind = match &error {
            LeaseError::Invalid(_) => ErrorKind::InvalidArgument,
            LeaseError::NotFound(_) => ErrorKind::NotFound,
            LeaseError::Exhausted(_) => ErrorKind::ResourceExhausted,
            LeaseError::Storage(_) => ErrorKind::Unavailable,
            LeaseError::Forbidden(_) => ErrorKind::PermissionDenied,
        };
        Self::new(kind, error.to_string())
    }
}

/// One lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    id: String,
    accelerator_id: String,
    holder: String,
    memory_bytes: u64,
    acquired_unix_ms: i64,
    expires_unix_ms: i64,
}

impl Stored {
    fn to_proto(&self) -> Lease {
        Lease {
            id: self.id.clone(),
            accelerator_id: self.accelerator_id.clone(),
            holder: self.holder.clone(),
            memory_bytes: self.memory_bytes,
            acquired_at: Some(timestamp(self.acquired_unix_ms)),
            expires_at: Some(timestamp(self.expires_unix_ms)),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    version: u32,
    leases: Vec<Stored>,
}

/// The leases in force and where they are kept.
#[derive(Debug)]
pub struct LeaseBook {
    leases: Vec<Stored>,
    /// `None`: the state directory is unusable, and leases last only as long as the process.
    file: Option<PathBuf>,
}

impl LeaseBook {
    /// Opens the book kept in `file` (`None` for one kept in memory), dropping leases that
    /// expired while the daemon was down. Returns it with what an operator should know: a file
    /// that cannot be read is renamed aside, never overwritten.
    pub fn open(file: Option<PathBuf>, now: i64) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut leases = Vec::new();
        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(text) => match serde_json::from_str::<LeaseFile>(&text) {
                    Ok(stored) if stored.version == 1 => leases = stored.leases,
                    Ok(stored) => warnings.push(set_aside(
                        path,
                        &format!("unknown version {}", stored.version),
                    )),
                    Err(error) => warnings.push(set_aside(path, &error.to_string())),
                },
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => warnings.push(format!(
                    "leases in {} unreadable, starting with none: {error}",
                    path.display()
                )),
            }
        }
        let before = leases.len();
        leases.retain(|lease| lease.expires_unix_ms > now);
        let book = Self { leases, file };
        if book.leases.len() != before {
            tracing::info!(
                expired = before - book.leases.len(),
                "leases that expired while the daemon was stopped are reclaimed"
            );
            if let Err(error) = book.persist() {
                warnings.push(error);
            }
        }
        (book, warnings)
    }

    /// Where the leases are kept, if anywhere.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Grants a lease on one of `accelerators` as `request` asks, or says why not.
    pub fn acquire(
        &mut self,
        request: &AcquireAcceleratorRequest,
        accelerators: &[Accelerator],
        settings: &LeasesConfig,
        now: i64,
    ) -> Result<Lease, LeaseError> {
        self.reap(now);
        let holder = request.holder.trim();
        if holder.is_empty() {
            return Err(LeaseError::Invalid(
                "holder is empty: say who holds the lease".to_owned(),
            ));
        }
        if holder.chars().count() > MAX_HOLDER_CHARS || holder.chars().any(char::is_control) {
            return Err(LeaseError::Invalid(format!(
                "holder must be at most {MAX_HOLDER_CHARS} characters, without control characters"
            )));
        }
        let ttl = ttl(request.ttl_seconds, settings)?;
        let candidates: Vec<&Accelerator> = if request.accelerator_id.is_empty() {
            let kind = request.kind();
            if kind == AcceleratorKind::Unspecified {
                return Err(LeaseError::Invalid(
                    "name a kind (GPU or NPU) or an accelerator id".to_owned(),
                ));
            }
            let candidates: Vec<&Accelerator> = accelerators
                .iter()
                .filter(|accelerator| accelerator.kind() == kind)
                .collect();
            if candidates.is_empty() {
                return Err(LeaseError::NotFound(format!(
                    "this machine has no {}",
                    kind_name(kind)
                )));
            }
            candidates
        } else {
            let Some(accelerator) = accelerators
                .iter()
                .find(|accelerator| accelerator.id == request.accelerator_id)
            else {
                return Err(LeaseError::NotFound(format!(
                    "no accelerator {:?} on this machine (see synosctl hw info)",
                    request.accelerator_id
                )));
            };
            if request.kind() != AcceleratorKind::Unspecified
                && request.kind() != accelerator.kind()
            {
                return Err(LeaseError::Invalid(format!(
                    "{} is a {}, not a {}",
                    accelerator.id,
                    kind_name(accelerator.kind()),
                    kind_name(request.kind())
                )));
            }
            vec![accelerator]
        };
        let mut refusals = Vec::new();
        for accelerator in candidates {
            match self.room_on(accelerator, request.memory_bytes) {
                Ok(()) => {
                    let lease = Stored {
                        id: uuid::Uuid::now_v7().to_string(),
                        accelerator_id: accelerator.id.clone(),
                        holder: holder.to_owned(),
                        memory_bytes: request.memory_bytes,
                        acquired_unix_ms: now,
                        expires_unix_ms: now.saturating_add(ttl),
                    };
                    self.leases.push(lease.clone());
                    if let Err(error) = self.persist() {
                        self.leases.pop();
                        return Err(LeaseError::Storage(format!(
                            "the lease is not granted: {error}"
                        )));
                    }
                    return Ok(lease.to_proto());
                }
                Err(refusal) => refusals.push(format!("{}: {refusal}", accelerator.id)),
            }
        }
        Err(LeaseError::Exhausted(refusals.join("; ")))
    }

    /// Why `memory` bytes of `accelerator` (0: all of it, alone) cannot be leased now.
    fn room_on(&self, accelerator: &Accelerator, memory: u64) -> Result<(), String> {
        let held: Vec<&Stored> = self
            .leases
            .iter()
            .filter(|lease| lease.accelerator_id == accelerator.id)
            .collect();
        if let Some(whole) = held.iter().find(|lease| lease.memory_bytes == 0) {
            return Err(format!(
                "held whole by {} until {}",
                whole.holder,
                rfc3339_seconds(whole.expires_unix_ms)
            ));
        }
        if memory == 0 {
            return match held.as_slice() {
                [] => Ok(()),
                [first, ..] => Err(format!(
                    "shared by {} lease(s) (first {}), so it cannot be held whole",
                    held.len(),
                    first.holder
                )),
            };
        }
        let Some(total) = accelerator.memory_bytes else {
            return Err(
                "its memory size is unknown, so only whole-device leases (memory 0) are granted"
                    .to_owned(),
            );
        };
        let leased: u64 = held.iter().map(|lease| lease.memory_bytes).sum();
        let free = total.saturating_sub(leased);
        if memory > free {
            return Err(format!(
                "{} of {} unleased, {} wanted",
                gibibytes(free),
                gibibytes(total),
                gibibytes(memory)
            ));
        }
        Ok(())
    }

    /// The position of lease `id`, when `holder` (`None`: an administrator, for any lease) holds
    /// it.
    fn held(&self, id: &str, holder: Option<&str>) -> Result<usize, LeaseError> {
        let position = self
            .leases
            .iter()
            .position(|lease| lease.id == id)
            .ok_or_else(|| not_found(id))?;
        match holder {
            Some(holder) if self.leases[position].holder != holder => {
                Err(LeaseError::Forbidden(format!(
                    "lease {id} is held by {}, not by {holder}; only its holder or root may \
                     renew or release it",
                    self.leases[position].holder
                )))
            }
            _ => Ok(position),
        }
    }

    /// Extends `id` to `ttl_seconds` (0: the default) from now, for `holder` (see
    /// [`LeaseBook::release`]).
    pub fn renew(
        &mut self,
        id: &str,
        holder: Option<&str>,
        ttl_seconds: u32,
        settings: &LeasesConfig,
        now: i64,
    ) -> Result<Lease, LeaseError> {
        self.reap(now);
        let ttl = ttl(ttl_seconds, settings)?;
        let position = self.held(id, holder)?;
        let previous = self.leases[position].expires_unix_ms;
        self.leases[position].expires_unix_ms = now.saturating_add(ttl);
        if let Err(error) = self.persist() {
            self.leases[position].expires_unix_ms = previous;
            return Err(LeaseError::Storage(format!(
                "the lease is not renewed: {error}"
            )));
        }
        Ok(self.leases[position].to_proto())
    }

    /// Ends `id` now, when `holder` holds it (`None`: whoever does, for an administrator).
    pub fn release(
        &mut self,
        id: &str,
        holder: Option<&str>,
        now: i64,
    ) -> Result<Lease, LeaseError> {
        self.reap(now);
        let position = self.held(id, holder)?;
        let released = self.leases.remove(position);
        if let Err(error) = self.persist() {
            self.leases.insert(position, released);
            return Err(LeaseError::Storage(format!(
                "the lease is not released: {error}"
            )));
        }
        Ok(released.to_proto())
    }

    /// The leases in force, oldest first.
    pub fn list(&mut self, now: i64) -> Vec<Lease> {
        self.reap(now);
        self.leases.iter().map(Stored::to_proto).collect()
    }

    /// Drops the leases that have expired by `now`, and returns them.
    pub fn reap(&mut self, now: i64) -> Vec<Lease> {
        let (expired, kept): (Vec<Stored>, Vec<Stored>) = std::mem::take(&mut self.leases)
            .into_iter()
            .partition(|lease| lease.expires_unix_ms <= now);
        self.leases = kept;
        if !expired.is_empty() {
            for lease in &expired {
                tracing::info!(lease = %lease.id, accelerator = %lease.accelerator_id, holder = %lease.holder, "lease expired and reclaimed");
            }
            // Not fatal: an expired lease found again on disk is dropped again when loaded.
            if let Err(error) = self.persist() {
                tracing::warn!(%error, "reclaimed leases not written");
            }
        }
        expired.iter().map(Stored::to_proto).collect()
    }

    /// Replaces the file with the leases in force: written beside it, synced, renamed over it,
    /// and the directory synced, so a crash leaves the old file or the new one.
    fn persist(&self) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&LeaseFile {
            version: 1,
            leases: self.leases.clone(),
        })
        .map_err(|error| error.to_string())?;
        let temporary = path.with_extension("json.new");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)?;
            if let Some(directory) = path.parent() {
                std::fs::File::open(directory)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|error| {
            let _ = std::fs::remove_file(&temporary);
            format!("cannot write {}: {error}", path.display())
        })
    }
}

fn ttl(seconds: u32, settings: &LeasesConfig) -> Result<i64, LeaseError> {
    let seconds = if seconds == 0 {
        settings.default_ttl_s
    } else {
        seconds
    };
    if seconds > settings.max_ttl_s {
        return Err(LeaseError::Invalid(format!(
            "ttl_seconds {seconds} is more than leases.max_ttl_s ({})",
            settings.max_ttl_s
        )));
    }
    Ok(i64::from(seconds) * 1000)
}

fn not_found(id: &str) -> LeaseError {
    LeaseError::NotFound(format!(
        "no lease {id:?} in force: it expired, was released, or never existed"
    ))
}

fn kind_name(kind: AcceleratorKind) -> &'static str {
    match kind {
        AcceleratorKind::Gpu => "GPU",
        AcceleratorKind::Npu => "NPU",
        AcceleratorKind::Unspecified => "accelerator",
    }
}

/// Renames an unreadable lease file aside and says so.
fn set_aside(path: &Path, problem: &str) -> String {
    let aside = path.with_extension(format!("json.unreadable-{}", now_unix_ms()));
    match std::fs::rename(path, &aside) {
        Ok(()) => format!(
            "leases in {} unreadable ({problem}); kept as {} and starting with none",
            path.display(),
            aside.display()
        ),
        Err(error) => format!(
            "leases in {} unreadable ({problem}) and cannot be set aside ({error})",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const SECOND: i64 = 1000;

    fn gpu(id: &str, memory: Option<u64>) -> Accelerator {
        Accelerator {
            id: id.to_owned(),
            kind: AcceleratorKind::Gpu.into(),
            memory_bytes: memory,
            ..Accelerator::default()
        }
    }

    fn ask(memory: u64, holder: &str, ttl: u32) -> AcquireAcceleratorRequest {
        AcquireAcceleratorRequest {
            kind: AcceleratorKind::Gpu.into(),
            accelerator_id: String::new(),
            memory_bytes: memory,
            holder: holder.to_owned(),
            ttl_seconds: ttl,
        }
    }

    #[test]
    fn memory_is_shared_until_it_runs_out_and_a_whole_device_is_alone() {
        let gpus = [gpu("gpu0", Some(8 * GIB)), gpu("gpu1", None)];
        let settings = LeasesConfig::default();
        let (mut book, warnings) = LeaseBook::open(None, 0);
        assert!(warnings.is_empty());
        let first = book
            .acquire(&ask(6 * GIB, "router", 60), &gpus, &settings, 0)
            .unwrap();
        assert_eq!(first.accelerator_id, "gpu0");
        // 2 GiB left on gpu0; gpu1's size is unknown, so it is only leased whole.
        let refused = book.acquire(&ask(4 * GIB, "memory", 60), &gpus, &settings, 0);
        assert_eq!(
            refused,
            Err(LeaseError::Exhausted(
                "gpu0: 2.0 GiB of 8.0 GiB unleased, 4.0 GiB wanted; gpu1: its memory size is \
                 unknown, so only whole-device leases (memory 0) are granted"
                    .to_owned()
            ))
        );
        let whole = book
            .acquire(&ask(0, "trainer", 60), &gpus, &settings, 0)
            .unwrap();
        assert_eq!(whole.accelerator_id, "gpu1");
        assert!(matches!(
            book.acquire(&ask(0, "another", 60), &gpus, &settings, 0),
            Err(LeaseError::Exhausted(reason)) if reason.contains("gpu0: shared by 1 lease(s)")
                && reason.contains("gpu1: held whole by trainer")
        ));
        let small = book
            .acquire(&ask(2 * GIB, "memory", 60), &gpus, &settings, 0)
            .unwrap();
        assert_eq!(small.accelerator_id, "gpu0");
        assert_eq!(book.list(0).len(), 3);
    }

    #[test]
    fn only_the_holder_or_an_administrator_renews_or_releases() {
        let gpus = [gpu("gpu0", Some(8 * GIB))];
        let settings = LeasesConfig::default();
        let (mut book, _) = LeaseBook::open(None, 0);
        let lease = book
            .acquire(&ask(GIB, "User::\"alice\"", 60), &gpus, &settings, 0)
            .unwrap();
        let bob = Some("User::\"bob\"");
        assert!(matches!(
            book.renew(&lease.id, bob, 30, &settings, SECOND),
            Err(LeaseError::Forbidden(reason)) if reason.contains("held by User::\"alice\"")
        ));
        assert!(matches!(
            book.release(&lease.id, bob, SECOND),
            Err(LeaseError::Forbidden(_))
        ));
        assert_eq!(
            book.list(SECOND).len(),
            1,
            "a refused release leaves the lease"
        );
        book.renew(&lease.id, Some("User::\"alice\""), 30, &settings, SECOND)
            .unwrap();
        book.release(&lease.id, None, 2 * SECOND).unwrap();
        assert!(book.list(2 * SECOND).is_empty());
    }

    #[test]
    fn leases_expire_renew_and_release() {
        let gpus = [gpu("gpu0", Some(8 * GIB))];
        let settings = LeasesConfig::default();
        let (mut book, _) = LeaseBook::open(None, 0);
        let lease = book
            .acquire(&ask(0, "router", 10), &gpus, &settings, 0)
            .unwrap();
        assert_eq!(lease.expires_at, Some(timestamp(10 * SECOND)));
        let renewed = book
            .renew(&lease.id, None, 30, &settings, 5 * SECOND)
            .unwrap();
        assert_eq!(renewed.expires_at, Some(timestamp(35 * SECOND)));
        assert_eq!(book.reap(34 * SECOND), []);
        let expired = book.reap(35 * SECOND);
        assert_eq!(expired.len(), 1);
        assert!(matches!(
            book.renew(&lease.id, None, 30, &settings, 36 * SECOND),
            Err(LeaseError::NotFound(_))
        ));
        let again = book
            .acquire(&ask(0, "other", 0), &gpus, &settings, 40 * SECOND)
            .unwrap();
        assert_eq!(
            again.expires_at,
            Some(timestamp(
                40 * SECOND + i64::from(settings.default_ttl_s) * SECOND
            ))
        );
        book.release(&again.id, None, 41 * SECOND).unwrap();
        assert!(matches!(
            book.release(&again.id, None, 41 * SECOND),
            Err(LeaseError::NotFound(_))
        ));
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let gpus = [gpu("gpu0", Some(8 * GIB))];
        let settings = LeasesConfig::default();
        let (mut book, _) = LeaseBook::open(None, 0);
        let cases = [
            (ask(0, " ", 10), "holder is empty"),
            (ask(0, "x\u{7}", 10), "without control characters"),
            (
                ask(0, "x", settings.max_ttl_s + 1),
                "is more than leases.max_ttl_s",
            ),
            (
                AcquireAcceleratorRequest {
                    kind: AcceleratorKind::Unspecified.into(),
                    ..ask(0, "x", 10)
                },
                "name a kind",
            ),
        ];
        for (request, reason) in cases {
            match book.acquire(&request, &gpus, &settings, 0) {
                Err(LeaseError::Invalid(message)) => assert!(message.contains(reason), "{message}"),
                other => panic!("{request:?}: {other:?}"),
            }
        }
        let npu = AcquireAcceleratorRequest {
            kind: AcceleratorKind::Npu.into(),
            ..ask(0, "x", 10)
        };
        assert_eq!(
            book.acquire(&npu, &gpus, &settings, 0),
            Err(LeaseError::NotFound("this machine has no NPU".to_owned()))
        );
        let named = AcquireAcceleratorRequest {
            accelerator_id: "gpu7".to_owned(),
            ..ask(0, "x", 10)
        };
        assert!(matches!(
            book.acquire(&named, &gpus, &settings, 0),
            Err(LeaseError::NotFound(message)) if message.contains("\"gpu7\"")
        ));
    }

    #[test]
    fn leases_survive_a_restart_and_a_bad_file_is_set_aside() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join(LEASES_FILE);
        let gpus = [gpu("gpu0", Some(8 * GIB)), gpu("gpu1", Some(8 * GIB))];
        let settings = LeasesConfig::default();
        let (mut book, _) = LeaseBook::open(Some(file.clone()), 0);
        let short = book
            .acquire(&ask(0, "short", 10), &gpus, &settings, 0)
            .unwrap();
        let long = book
            .acquire(&ask(0, "long", 100), &gpus, &settings, 0)
            .unwrap();
        drop(book);

        // Reopened after the short one's end: only the long one is left, and on disk too.
        let (mut book, warnings) = LeaseBook::open(Some(file.clone()), 50 * SECOND);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(book.list(50 * SECOND), std::slice::from_ref(&long));
        let (mut again, _) = LeaseBook::open(Some(file.clone()), 0);
        assert_eq!(again.list(0), [long]);
        assert_ne!(short.id, "");

        std::fs::write(&file, "{ not json").unwrap();
        let (mut book, warnings) = LeaseBook::open(Some(file), 0);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("unreadable"), "{warnings:?}");
        assert!(book.list(0).is_empty());
        let kept_aside = std::fs::read_dir(directory.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|entry| entry.file_name().to_string_lossy().contains("unreadable"));
        assert!(kept_aside, "the unreadable file was not kept");
    }

    #[test]
    fn a_lease_that_cannot_be_written_is_not_granted() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("missing-directory").join(LEASES_FILE);
        let gpus = [gpu("gpu0", Some(8 * GIB))];
        let (mut book, _) = LeaseBook::open(Some(file), 0);
        let refused = book.acquire(&ask(0, "router", 10), &gpus, &LeasesConfig::default(), 0);
        assert!(
            matches!(&refused, Err(LeaseError::Storage(message)) if message.contains("not granted")),
            "{refused:?}"
        );
        assert!(book.list(0).is_empty());
    }
}
