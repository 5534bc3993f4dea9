//! The doctor's disk repair: when a watched file system fills past its limit, it empties the
//! cache directories it owns there (what SynOS can rebuild), oldest files first, until the file
//! system is back below the limit with a margin.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use synos_common::units::bytes;
use tokio_util::sync::CancellationToken;

use crate::incidents::{Opening, Openings, SharedBook};
use crate::resources::{DISK_PREFIX, Limits, judge_disk};

/// Percentage points below the limit a cleaning aims for, so that the next write does not
/// cross the limit and open the incident again.
pub const MARGIN_PERCENT: f64 = 5.0;

/// How deep a cleaning goes below one directory: deeper trees are left alone rather than
/// walked without end.
const MAX_DEPTH: usize = 32;

/// What the doctor may clean, and how.
#[derive(Debug, Clone)]
pub struct Cleanup {
    /// Where incidents are and actions go.
    pub book: SharedBook,
    /// The policy daemon, asked before each cleaning (which audits it).
    pub policy: PathBuf,
    /// Directories whose content the doctor may delete.
    pub directories: Vec<PathBuf>,
    /// The resource limits; a cleaning aims [`MARGIN_PERCENT`] below them.
    pub limits: Limits,
    /// How long policy may take to answer.
    pub timeout: Duration,
}

/// What one cleaning removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Files (and symbolic links) removed.
    pub files: u64,
    /// Their apparent size.
    pub bytes: u64,
    /// The first few things that could not be removed or read, and how many in all.
    pub problems: Vec<String>,
    /// How many problems there were.
    pub problem_count: usize,
    /// The file system's use afterwards, as the disk check reads it.
    pub after: String,
}

impl Cleaned {
    fn problem(&mut self, problem: String) {
        self.problem_count += 1;
        if self.problems.len() < 3 {
            self.problems.push(problem);
        }
    }

    /// One line for the incident.
    pub fn describe(&self, directory: &Path) -> String {
        let mut line = if self.files == 0 {
            format!("removed nothing from {}", directory.display())
        } else {
            format!(
                "removed {} file{} ({}) from {}",
                self.files,
                if self.files == 1 { "" } else { "s" },
                bytes(self.bytes),
                directory.display()
            )
        };
        line.push_str(&format!("; now {}", self.after));
        if self.problem_count > 0 {
            line.push_str(&format!(
                "; {} left: {}",
                self.problem_count,
                self.problems.join("; ")
            ));
        }
        line
    }
}

/// Cleans each full file system whose incident opens (or reopens) and records what was done in
/// the incident.
pub async fn clean_full_disks(cleanup: Cleanup, shutdown: CancellationToken) {
    let mut openings = Openings::new(&cleanup.book, DISK_PREFIX);
    while let Some(Opening {
        incident,
        subject: watched,
        ..
    }) = openings.next(&shutdown).await
    {
        for line in clean(&cleanup, Path::new(&watched)).await {
            tracing::info!(incident = %incident.id, %line, "action");
            cleanup
                .book
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record_action(&incident.id, &line);
        }
    }
}

/// Cleans the directories on `watched`'s file system: one line per directory.
async fn clean(cleanup: &Cleanup, watched: &Path) -> Vec<String> {
    let (watched_owned, directories) = (watched.to_owned(), cleanup.directories.clone());
    // stat on a hung file system blocks: never on a runtime thread.
    let Ok(here) =
        tokio::task::spawn_blocking(move || on_file_system_of(&watched_owned, &directories)).await
    else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for directory in here {
        let target = directory.display().to_string();
        let allowed = crate::approvals::authorize_repair(
            &cleanup.policy,
            cleanup.timeout,
            "clean-disk",
            &target,
        )
        .await;
        let line = match allowed {
            Err(refused) => format!("did not clean {target}: {refused}"),
            Ok(unaudited) => {
                let limits = cleanup.limits;
                let cleaning = directory.clone();
                match tokio::task::spawn_blocking(move || empty_oldest_first(&cleaning, &limits))
                    .await
                {
                    Ok(Ok(cleaned)) => cleaned.describe(&directory) + &unaudited,
                    Ok(Err(problem)) => format!("could not clean {target}: {problem}"),
                    Err(error) => format!("could not clean {target}: {error}"),
                }
            }
        };
        lines.push(line);
    }
    lines
}

/// Those of `directories` that exist, as directories, on the file system of `watched`.
pub fn on_file_system_of(watched: &Path, directories: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(device) = std::fs::metadata(watched).map(|found| found.dev()) else {
        return Vec::new();
    };
    directories
        .iter()
        .filter(|directory| {
            std::fs::symlink_metadata(directory)
                .is_ok_and(|found| found.is_dir() && found.dev() == device)
        })
        .cloned()
        .collect()
}

/// Deletes the files under `directory`, oldest change first, until its file system is
/// [`MARGIN_PERCENT`] below `limits` (space and inodes). It never follows a symbolic link,
/// never leaves the file system, and leaves directories in place (their owners expect them).
///
/// Members of group synos may write in a cache directory, so they could swap a directory
/// below it for a link between the walk and a removal: every step therefore goes through the
/// descriptor of the directory above it (`openat` with `O_NOFOLLOW`, `unlinkat`), never
/// through a path the kernel would resolve again.
pub fn empty_oldest_first(directory: &Path, limits: &Limits) -> Result<Cleaned, String> {
    let root = open_directory(AT_FDCWD, directory).map_err(|error| match error {
        Errno::ENOTDIR | Errno::ELOOP => "not a directory".to_owned(),
        error => format!("cannot open it: {}", error.desc()),
    })?;
    let device = fstat(&root)
        .map_err(|error| format!("cannot inspect it: {}", error.desc()))?
        .st_dev;
    let aim = Limits {
        disk_used_percent: limits.disk_used_percent - MARGIN_PERCENT,
        inodes_used_percent: limits.inodes_used_percent - MARGIN_PERCENT,
        ..*limits
    };
    let below_aim = || {
        synos_common::filesystem::usage(directory)
            .map(|usage| judge_disk(&usage, &aim))
            .map_err(|error| format!("cannot inspect its file system: {error}"))
    };
    let mut cleaned = Cleaned::default();
    let mut files = Vec::new();
    collect_files(&root, device, &mut PathBuf::new(), &mut files, &mut cleaned);
    files.sort();
    for (_, size, relative) in files {
        if below_aim()?.0 {
            break;
        }
        match remove_beneath(&root, device, &relative) {
            Ok(()) => {
                cleaned.files += 1;
                cleaned.bytes += size;
            }
            // Its owner removed it first.
            Err(Errno::ENOENT) => {}
            Err(error) => cleaned.problem(format!(
                "{}: {}",
                directory.join(&relative).display(),
                error.desc()
            )),
        }
    }
    let usage = synos_common::filesystem::usage(directory)
        .map_err(|error| format!("cannot inspect its file system: {error}"))?;
    cleaned.after = judge_disk(&usage, limits).1;
    Ok(cleaned)
}

/// The directory `name` in `parent`, opened only if it is one itself (not a link to one).
fn open_directory<Parent: AsFd, Name: ?Sized + nix::NixPath>(
    parent: Parent,
    name: &Name,
) -> nix::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Every file and symbolic link below `directory` on `device`, as (modified, size, path
/// relative to the cleaned directory); `relative` is `directory`'s own.
fn collect_files(
    directory: &OwnedFd,
    device: u64,
    relative: &mut PathBuf,
    files: &mut Vec<(SystemTime, u64, PathBuf)>,
    cleaned: &mut Cleaned,
) {
    let listing = directory
        .try_clone()
        .map_err(|error| Errno::from_raw(error.raw_os_error().unwrap_or(0)))
        .and_then(Dir::from_fd);
    let mut listing = match listing {
        Ok(listing) => listing,
        Err(error) => {
            cleaned.problem(format!("{}: {}", relative.display(), error.desc()));
            return;
        }
    };
    for entry in listing.iter().flatten() {
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        // AT_SYMLINK_NOFOLLOW: a link is itself the file, never what it points to.
        let Ok(found) = fstatat(directory, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if found.st_dev != device {
            continue;
        }
        let kind = SFlag::from_bits_truncate(found.st_mode) & SFlag::S_IFMT;
        relative.push(name);
        if kind == SFlag::S_IFDIR {
            if relative.components().count() <= MAX_DEPTH
                && let Ok(below) = open_directory(directory, name)
            {
                collect_files(&below, device, relative, files, cleaned);
            }
        } else if kind == SFlag::S_IFREG || kind == SFlag::S_IFLNK {
            let modified = SystemTime::UNIX_EPOCH
                + Duration::new(
                    u64::try_from(found.st_mtime).unwrap_or(0),
                    u32::try_from(found.st_mtime_nsec).unwrap_or(0),
                );
            files.push((
                modified,
                u64::try_from(found.st_size).unwrap_or(0),
                relative.clone(),
            ));
        }
        relative.pop();
    }
}

/// Removes the file at `relative` below `root`, going down one directory at a time without
/// following links or leaving `device`.
fn remove_beneath(root: &OwnedFd, device: u64, relative: &Path) -> nix::Result<()> {
    let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
        return Err(Errno::EINVAL);
    };
    let mut directory: Option<OwnedFd> = None;
    for step in parent.components() {
        let below = open_directory(directory.as_ref().unwrap_or(root), step.as_os_str())?;
        if fstat(&below)?.st_dev != device {
            return Err(Errno::EXDEV);
        }
        directory = Some(below);
    }
    unlinkat(
        directory.as_ref().unwrap_or(root),
        name,
        UnlinkatFlags::NoRemoveDir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_directories_on_the_same_file_system_are_cleaned() {
        let here = tempfile::tempdir().unwrap();
        let cache = here.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let file = here.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let found = on_file_system_of(
            here.path(),
            &[
                cache.clone(),
                here.path().join("missing"),
                file,
                PathBuf::from("/proc"),
            ],
        );
        assert_eq!(found, [cache]);
        assert!(
            on_file_system_of(Path::new("/no/such/path"), &[here.path().to_owned()]).is_empty()
        );
    }

    #[test]
    fn cleaning_stops_once_below_the_aim_and_never_follows_links() {
        let here = tempfile::tempdir().unwrap();
        let outside = here.path().join("outside");
        std::fs::write(&outside, "keep me").unwrap();
        let cache = here.path().join("cache");
        std::fs::create_dir_all(cache.join("nested")).unwrap();
        std::fs::write(cache.join("nested/old"), "old").unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("link")).unwrap();
        // Limits no real disk reaches: nothing is removed.
        let roomy = Limits {
            disk_used_percent: 100.0 + MARGIN_PERCENT,
            inodes_used_percent: 100.0 + MARGIN_PERCENT,
            memory_available_percent: 5.0,
            memory_pressure_percent: 20.0,
        };
        let cleaned = empty_oldest_first(&cache, &roomy).unwrap();
        assert_eq!(cleaned.files, 0);
        assert!(cache.join("nested/old").exists());
        // Limits no disk meets: everything goes, but not what a link points to, nor any
        // directory.
        let full = Limits {
            disk_used_percent: 0.0,
            inodes_used_percent: 0.0,
            ..roomy
        };
        let cleaned = empty_oldest_first(&cache, &full).unwrap();
        assert_eq!(
            (cleaned.files, cleaned.bytes),
            (2, 3 + outside.as_os_str().len() as u64)
        );
        assert!(!cache.join("nested/old").exists());
        assert!(cache.join("nested").is_dir());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
        assert!(
            cleaned.describe(&cache).starts_with("removed 2 files (")
                && cleaned.describe(&cache).contains("% used ("),
            "{}",
            cleaned.describe(&cache)
        );
        assert_eq!(
            empty_oldest_first(&outside, &full).unwrap_err(),
            "not a directory"
        );
        std::os::unix::fs::symlink(&cache, here.path().join("cache-link")).unwrap();
        assert_eq!(
            empty_oldest_first(&here.path().join("cache-link"), &full).unwrap_err(),
            "not a directory"
        );
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_the_walk_steers_no_removal_elsewhere() {
        let here = tempfile::tempdir().unwrap();
        let cache = here.path().join("cache");
        std::fs::create_dir_all(cache.join("nested")).unwrap();
        std::fs::write(cache.join("nested/file"), "cache").unwrap();
        let kept = here.path().join("state");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("file"), "precious").unwrap();
        let root = open_directory(AT_FDCWD, &cache).unwrap();
        let device = fstat(&root).unwrap().st_dev;
        let (mut files, mut cleaned) = (Vec::new(), Cleaned::default());
        collect_files(&root, device, &mut PathBuf::new(), &mut files, &mut cleaned);
        assert_eq!(files.len(), 1);
        // Between the walk and the removal, a group member swaps the directory for a link to
        // a directory the doctor may write.
        std::fs::remove_dir_all(cache.join("nested")).unwrap();
        std::os::unix::fs::symlink(&kept, cache.join("nested")).unwrap();
        let refused = remove_beneath(&root, device, &files[0].2).unwrap_err();
        assert!(
            matches!(refused, Errno::ELOOP | Errno::ENOTDIR),
            "{refused}"
        );
        assert_eq!(
            std::fs::read_to_string(kept.join("file")).unwrap(),
            "precious"
        );
    }
}
