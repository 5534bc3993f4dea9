//! Listening sockets: taken from systemd socket activation, else bound by the daemon itself.
//!
//! Binding a Unix socket path is careful: the parent directory is created, a stale socket left by
//! a crash is replaced, but a socket some live process still answers on is never stolen, and a
//! file that is not a socket is never removed.

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::exit;

/// Why a daemon could not get its listeners. Each maps to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process answers on the socket path.
    #[error("another instance is already serving {}; refusing to take over its socket", .0.display())]
    AlreadyServing(PathBuf),
    /// Something that is not a socket occupies the path.
    #[error("{} exists and is not a socket; refusing to remove it", .0.display())]
    NotASocket(PathBuf),
    /// The OS refused to create or bind the listener.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The socket path or address.
        address: String,
        /// The OS error.
        source: io::Error,
    },
    /// systemd passed something that cannot be served.
    #[error("socket activation: {0}")]
    Activation(String),
}

impl ListenError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::AlreadyServing(_) => exit::UNAVAILABLE,
            Self::NotASocket(_) | Self::Bind { .. } | Self::Activation(_) => exit::CANT_CREATE,
        }
    }
}

/// One listening socket, ready to serve.
#[derive(Debug)]
pub enum Listener {
    /// A Unix stream socket.
    Unix {
        /// The listener.
        listener: tokio::net::UnixListener,
        /// Its path, for display.
        path: PathBuf,
        /// Set when the daemon bound the path itself and must remove it on exit (systemd's
        /// sockets belong to systemd).
        owned: Option<OwnedSocketPath>,
    },
    /// A loopback TCP socket.
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// A URI-like description, e.g. `unix:/run/synos/memory.sock` or `tcp:127.0.0.1:7400`.
    pub fn describe(&self) -> String {
        match self {
            Self::Unix { path, .. } => format!("unix:{}", path.display()),
            Self::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "tcp:?".to_owned(), |address| format!("tcp:{address}")),
        }
    }
}

/// A socket file this process created; removed on drop if it is still the same file.
#[derive(Debug)]
pub struct OwnedSocketPath {
    path: PathBuf,
    device: u64,
    inode: u64,
}

impl Drop for OwnedSocketPath {
    fn drop(&mut self) {
        // Only remove our own inode: never a socket a later instance bound at the same path.
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path)
            && metadata.dev() == self.device
            && metadata.ino() == self.inode
            && let Err(error) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove socket");
        }
    }
}

/// What the daemon should listen on when systemd passes nothing.
#[derive(Debug, Clone)]
pub struct ListenPlan {
    /// The Unix socket path.
    pub socket: PathBuf,
    /// An optional loopback TCP address.
    pub tcp: Option<std::net::SocketAddr>,
    /// Names (`FileDescriptorName=`) of passed TCP sockets the daemon serves itself, such as
    /// an HTTP endpoint, rather than gRPC.
    pub set_aside: Vec<&'static str>,
}

/// The listeners a daemon got.
#[derive(Debug, Default)]
pub struct Acquired {
    /// Those that serve gRPC.
    pub grpc: Vec<Listener>,
    /// Passed TCP sockets named in [`ListenPlan::set_aside`], by name.
    pub set_aside: Vec<(String, tokio::net::TcpListener)>,
}

/// Takes the listeners passed by systemd (`LISTEN_FDS`, `LISTEN_FDNAMES`) or binds the plan's.
/// A Unix socket passed by systemd replaces binding the path; a TCP one replaces `plan.tcp`.
pub fn acquire(plan: &ListenPlan) -> Result<Acquired, ListenError> {
    let mut listeners = Vec::new();
    let mut set_aside = Vec::new();
    for (name, listener) in inherited()? {
        match listener {
            Listener::Tcp(listener) if plan.set_aside.contains(&name.as_str()) => {
                set_aside.push((name, listener));
            }
            listener => listeners.push(listener),
        }
    }
    let has_unix = listeners
        .iter()
        .any(|listener| matches!(listener, Listener::Unix { .. }));
    let has_tcp = listeners
        .iter()
        .any(|listener| matches!(listener, Listener::Tcp(_)));
    if !has_unix {
        listeners.push(bind_unix(&plan.socket)?);
    }
    if let (Some(address), false) = (plan.tcp, has_tcp) {
        let bind_error = |source| ListenError::Bind {
            address: address.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        listeners.push(Listener::Tcp(
            tokio::net::TcpListener::from_std(listener).map_err(bind_error)?,
        ));
    }
    Ok(Acquired {
        grpc: listeners,
        set_aside,
    })
}

fn inherited() -> Result<Vec<(String, Listener)>, ListenError> {
    let passed = sd_notify::listen_fds_with_names().map_err(|error| {
        ListenError::Activation(format!("invalid LISTEN_* environment: {error}"))
    })?;
    passed
        .map(|(fd, name)| adopt(fd, &name).map(|listener| (name, listener)))
        .collect()
}

fn adopt(fd: RawFd, name: &str) -> Result<Listener, ListenError> {
    let activation = |what: &str| ListenError::Activation(format!("fd {fd} ({name}): {what}"));
    #[expect(
        unsafe_code,
        reason = "socket activation hands us raw file descriptors"
    )]
    // SAFETY: sd_notify validated LISTEN_PID and yields each fd of LISTEN_FDS exactly once;
    // systemd passed them to this process to own, and nothing else in the process uses them.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = socket2::Socket::from(owned);
    let io_error = |error: io::Error| activation(&error.to_string());
    if socket.r#type().map_err(io_error)? != socket2::Type::STREAM
        || !socket.is_listener().map_err(io_error)?
    {
        return Err(activation("not a listening stream socket"));
    }
    socket.set_nonblocking(true).map_err(io_error)?;
    let domain = socket.domain().map_err(io_error)?;
    let fd = OwnedFd::from(socket);
    if domain == socket2::Domain::UNIX {
        let listener = std::os::unix::net::UnixListener::from(fd);
        let path = listener
            .local_addr()
            .ok()
            .and_then(|address| address.as_pathname().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from(format!("<fd {name}>")));
        let listener = tokio::net::UnixListener::from_std(listener).map_err(io_error)?;
        Ok(Listener::Unix {
            listener,
            path,
            owned: None,
        })
    } else if domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6 {
        let listener =
            tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd)).map_err(io_error)?;
        Ok(Listener::Tcp(listener))
    } else {
        Err(activation("neither a Unix nor a TCP socket"))
    }
}

fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
    let bind_error = |source| ListenError::Bind {
        address: path.display().to_string(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(bind_error)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()) => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ListenError::AlreadyServing(path.to_path_buf())),
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing stale socket left by an earlier run");
                    std::fs::remove_file(path).map_err(bind_error)?;
                }
                Err(error) => return Err(bind_error(error)),
            }
        }
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(bind_error(error)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
    restrict_access(path).map_err(bind_error)?;
    let metadata = std::fs::symlink_metadata(path).map_err(bind_error)?;
    let owned = OwnedSocketPath {
        path: path.to_path_buf(),
        device: metadata.dev(),
        inode: metadata.ino(),
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(bind_error)?;
    Ok(Listener::Unix {
        listener,
        path: path.to_path_buf(),
        owned: Some(owned),
    })
}

/// Mode 0660, and group `synos` when running as root and the group exists, as the socket
/// units do: only root and members of `synos` may talk to a daemon.
fn restrict_access(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if nix::unistd::geteuid().is_root()
        && let Ok(Some(group)) = nix::unistd::Group::from_name("synos")
    {
        nix::unistd::chown(path, None, Some(group.gid)).map_err(io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(path: &Path) -> ListenPlan {
        ListenPlan {
            socket: path.to_path_buf(),
            tcp: None,
            set_aside: Vec::new(),
        }
    }

    #[tokio::test]
    async fn binds_creates_parent_and_removes_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("deep/er/test.sock");
        let listeners = acquire(&plan(&path)).unwrap().grpc;
        assert!(crate::identity::is_socket(&path));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(listeners);
        assert!(!path.exists(), "socket file left behind");
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_but_not_a_live_one() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("test.sock");
        // A stale socket: bound, then its listener closed without removing the file.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = acquire(&plan(&path)).unwrap().grpc;
        let error = acquire(&plan(&path)).unwrap_err();
        assert!(matches!(error, ListenError::AlreadyServing(_)), "{error}");
        assert_eq!(error.exit_code(), exit::UNAVAILABLE);
        drop(live);
    }

    #[tokio::test]
    async fn never_removes_a_regular_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("test.sock");
        std::fs::write(&path, "precious").unwrap();
        let error = acquire(&plan(&path)).unwrap_err();
        assert!(matches!(error, ListenError::NotASocket(_)), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
