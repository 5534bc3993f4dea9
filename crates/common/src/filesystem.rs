//! Sizes of the file system that holds a path (statvfs), for the daemons that report or watch
//! free space.

use std::path::Path;

/// Sizes of a file system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileSystemUsage {
    /// Size.
    pub total_bytes: u64,
    /// What an unprivileged process may still write.
    pub available_bytes: u64,
    /// All inodes.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

/// The file system holding `path`.
pub fn usage(path: &Path) -> Result<FileSystemUsage, nix::Error> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    #[allow(
        clippy::useless_conversion,
        reason = "fsblkcnt_t and fsfilcnt_t are 32 bits on some Debian architectures"
    )]
    let (fragment, blocks, available, files, free_files) = (
        u64::from(stats.fragment_size()),
        u64::from(stats.blocks()),
        u64::from(stats.blocks_available()),
        u64::from(stats.files()),
        u64::from(stats.files_free()),
    );
    Ok(FileSystemUsage {
        total_bytes: blocks.saturating_mul(fragment),
        available_bytes: available.saturating_mul(fragment),
        total_inodes: files,
        free_inodes: free_files,
    })
}
