//! Runs an allowed tool confined: under systemd, through a socket-activated sandbox unit that
//! systemd starts hardened (`DynamicUser`, no network unless granted, a read-only system,
//! private /tmp, cgroup limits) for each connection, running the [`crate::runner`]; where the
//! sockets are absent, bubblewrap with the equivalent namespaces and rlimits. Nothing ever runs
//! unconfined: with neither available, exec is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::config::{SandboxBackend, SandboxConfig, ToolConfig};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The program exited by itself (see the exit code).
    Exited,
    /// It ran past its time limit and was killed.
    Timeout,
    /// It was killed for exceeding its memory limit.
    MemoryLimit,
    /// It died of a signal.
    Killed,
}

impl Outcome {
    /// The outcome named `name` by [`Outcome::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Exited, Self::Timeout, Self::MemoryLimit, Self::Killed]
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }

    /// The name reported in `ExecToolResponse.outcome` and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory-limit",
            Self::Killed => "killed",
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The exit status; -1 when the program did not exit by itself.
    pub exit_code: i32,
    /// How it ended.
    pub outcome: Outcome,
    /// Standard output, cut at the tool's limit.
    pub stdout: Vec<u8>,
    /// Standard error, cut at the tool's limit.
    pub stderr: Vec<u8>,
    /// Whether either was cut.
    pub truncated: bool,
    /// Wall-clock time.
    pub duration: Duration,
}

/// The chosen backend.
#[derive(Debug, Clone)]
pub struct Sandbox {
    kind: Kind,
    config: SandboxConfig,
    /// Where the systemd sandbox's sockets are.
    socket_directory: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Systemd,
    Bubblewrap,
}

impl Sandbox {
    /// Picks the configured backend, or for `auto` the systemd sandbox when its sockets are in
    /// `socket_directory` and bubblewrap otherwise; `Err` says why neither can be used.
    pub fn choose(config: &SandboxConfig, socket_directory: &Path) -> Result<Self, String> {
        let systemd_ready = socket_path(socket_directory, false).exists();
        let bubblewrap_ready = config.bubblewrap.is_file() && config.prlimit.is_file();
        let kind = match config.backend {
            SandboxBackend::Systemd if systemd_ready => Kind::Systemd,
            SandboxBackend::Systemd => {
                return Err(format!(
                    "the systemd sandbox needs synos-sandbox.socket listening at {} (start it, or set sandbox.backend = \"bubblewrap\")",
                    socket_path(socket_directory, false).display()
                ));
            }
            SandboxBackend::Bubblewrap if bubblewrap_ready => Kind::Bubblewrap,
            SandboxBackend::Auto if systemd_ready => Kind::Systemd,
            SandboxBackend::Auto if bubblewrap_ready => Kind::Bubblewrap,
            SandboxBackend::Bubblewrap | SandboxBackend::Auto => {
                return Err(format!(
                    "no sandbox: no sandbox socket at {} and {} or {} is missing (install bubblewrap and util-linux)",
                    socket_path(socket_directory, false).display(),
                    config.bubblewrap.display(),
                    config.prlimit.display()
                ));
            }
        };
        Ok(Self {
            kind,
            config: config.clone(),
            socket_directory: socket_directory.to_owned(),
        })
    }

    /// "systemd" or "bubblewrap".
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Systemd => "systemd",
            Kind::Bubblewrap => "bubblewrap",
        }
    }

    /// Runs `tool` named `name` with already checked `arguments`.
    pub async fn run(
        &self,
        name: &str,
        tool: &ToolConfig,
        arguments: &[String],
    ) -> Result<Execution, String> {
        match self.kind {
            Kind::Bubblewrap => self.run_bubblewrap(tool, arguments).await,
            Kind::Systemd => {
                Self::run_over_socket(&self.socket_directory, name, tool, arguments).await
            }
        }
    }

    async fn run_bubblewrap(
        &self,
        tool: &ToolConfig,
        arguments: &[String],
    ) -> Result<Execution, String> {
        let mut command = limited_command(&self.config.prlimit, tool);
        command
            .arg(&self.config.bubblewrap)
            .args(["--die-with-parent", "--new-session", "--unshare-all"])
            .args(["--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"])
            .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
        if tool.network {
            command.arg("--share-net");
        }
        // Private, empty replacements for temporary, runtime and private data.
        for directory in [
            "/tmp", "/var/tmp", "/run", "/home", "/root", "/var/lib", "/var/log", "/srv",
        ] {
            if Path::new(directory).is_dir() {
                command.args(["--tmpfs", directory]);
            }
        }
        command
            .args(["--chdir", "/tmp", "--clearenv"])
            .args(["--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin"])
            .args(["--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8"])
            .arg("--")
            .arg(&tool.command)
            .args(&tool.fixed_arguments)
            .args(arguments);
        execute(command, tool, &self.config.bubblewrap).await
    }

    /// Asks the runner behind the socket for the tool's network stance, which systemd starts
    /// confined for this one connection.
    async fn run_over_socket(
        directory: &Path,
        name: &str,
        tool: &ToolConfig,
        arguments: &[String],
    ) -> Result<Execution, String> {
        let socket = socket_path(directory, tool.network);
        let exchange = async {
            let mut connection = tokio::net::UnixStream::connect(&socket)
                .await
                .map_err(|error| format!("cannot reach {}: {error}", socket.display()))?;
            let request = crate::runner::RunRequest {
                tool: name.to_owned(),
                arguments: arguments.to_vec(),
            };
            // The connection stays open while the tool runs: closing it (this future dropped,
            // the call cancelled) makes the runner stop the tool.
            crate::runner::send_message(&mut connection, &request).await?;
            let most = 2 * tool.max_output_bytes as u64 + 64 * 1024;
            let result: crate::runner::RunResult =
                crate::runner::read_message(&mut connection, most).await?;
            result
                .into_execution()
                .map_err(|problem| format!("the sandbox runner: {problem}"))
        };
        // The unit's RuntimeMaxSec= and the runner's own timer end the tool; this is a backstop.
        let backstop = Duration::from_secs(tool.timeout_seconds + 15);
        tokio::time::timeout(backstop, exchange)
            .await
            .map_err(|_| format!("no answer from {} within {backstop:?}", socket.display()))?
    }
}

/// The sandbox socket for a network stance, in `directory`.
pub fn socket_path(directory: &Path, network: bool) -> std::path::PathBuf {
    directory.join(if network {
        "network.sock"
    } else {
        "offline.sock"
    })
}

/// `prlimit` with the tool's memory, CPU-time and file-size limits, ready for the program.
pub(crate) fn limited_command(prlimit: &Path, tool: &ToolConfig) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(prlimit);
    command
        .arg(format!("--as={}", tool.memory_max_bytes))
        .arg(format!("--cpu={}", tool.timeout_seconds))
        // Files written in the private /tmp count against memory too; keep them bounded.
        .arg(format!("--fsize={}", tool.memory_max_bytes))
        .arg("--");
    command
}

/// Runs `command` (whose first program is `program`) to its end or the tool's time limit,
/// keeping at most the tool's output limit of each stream.
pub(crate) async fn execute(
    mut command: tokio::process::Command,
    tool: &ToolConfig,
    program: &Path,
) -> Result<Execution, String> {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", program.display()))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let limit = tool.max_output_bytes;
    let collect = async {
        tokio::join!(
            read_limited(stdout, limit),
            read_limited(stderr, limit),
            child.wait()
        )
    };
    let timeout = Duration::from_secs(tool.timeout_seconds);
    match tokio::time::timeout(timeout, collect).await {
        Ok(((stdout, stdout_cut), (stderr, stderr_cut), status)) => {
            let status = status.map_err(|error| format!("waiting for the tool: {error}"))?;
            use std::os::unix::process::ExitStatusExt as _;
            let (exit_code, outcome) = match (status.code(), status.signal()) {
                (Some(code), _) => (code, Outcome::Exited),
                // RLIMIT_CPU ends a program with SIGXCPU (then SIGKILL).
                (None, Some(24)) => (-1, Outcome::Timeout),
                (None, _) => (-1, Outcome::Killed),
            };
            Ok(Execution {
                exit_code,
                outcome,
                stdout,
                stderr,
                truncated: stdout_cut || stderr_cut,
                duration: started.elapsed(),
            })
        }
        Err(_) => {
            // Dropping the future dropped the child: kill_on_drop ends it (and bubblewrap's
            // --die-with-parent what it started).
            Ok(Execution {
                exit_code: -1,
                outcome: Outcome::Timeout,
                stdout: Vec::new(),
                stderr: Vec::new(),
                truncated: false,
                duration: started.elapsed(),
            })
        }
    }
}

/// Reads to the end, keeping the first `limit` bytes; the rest is drained so the writer never
/// blocks on a full pipe.
async fn read_limited<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..read.min(room)]);
                truncated |= read > room;
            }
        }
    }
    (kept, truncated)
}
