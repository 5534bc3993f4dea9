//! Runs an allowed tool confined: a transient systemd unit (started over D-Bus) with
//! `DynamicUser`, no network unless granted, a read-only system, private /tmp and cgroup
//! limits; or, where systemd is not PID 1, bubblewrap with the equivalent namespaces and
//! rlimits. Nothing ever runs unconfined: with neither available, exec is refused.

use std::collections::HashMap;
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Systemd,
    Bubblewrap,
}

const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

impl Sandbox {
    /// Picks the configured backend, or for `auto` systemd when it is PID 1 with a reachable
    /// bus and bubblewrap otherwise; `Err` says why neither can be used.
    pub fn choose(config: &SandboxConfig) -> Result<Self, String> {
        let systemd_ready =
            Path::new("/run/systemd/system").is_dir() && Path::new(SYSTEM_BUS).exists();
        let bubblewrap_ready = config.bubblewrap.is_file() && config.prlimit.is_file();
        let kind = match config.backend {
            SandboxBackend::Systemd if systemd_ready => Kind::Systemd,
            SandboxBackend::Systemd => {
                return Err(
                    "the systemd sandbox needs systemd as PID 1 and the system bus".to_owned(),
                );
            }
            SandboxBackend::Bubblewrap if bubblewrap_ready => Kind::Bubblewrap,
            SandboxBackend::Auto if systemd_ready => Kind::Systemd,
            SandboxBackend::Auto if bubblewrap_ready => Kind::Bubblewrap,
            SandboxBackend::Bubblewrap | SandboxBackend::Auto => {
                return Err(format!(
                    "no sandbox: systemd is not PID 1 and {} or {} is missing (install bubblewrap and util-linux)",
                    config.bubblewrap.display(),
                    config.prlimit.display()
                ));
            }
        };
        Ok(Self {
            kind,
            config: config.clone(),
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
            Kind::Systemd => systemd::run(name, tool, arguments).await,
        }
    }

    async fn run_bubblewrap(
        &self,
        tool: &ToolConfig,
        arguments: &[String],
    ) -> Result<Execution, String> {
        let mut command = tokio::process::Command::new(&self.config.prlimit);
        command
            .arg(format!("--as={}", tool.memory_max_bytes))
            .arg(format!("--cpu={}", tool.timeout_seconds))
            // Files written in the private /tmp count against memory too; keep them bounded.
            .arg(format!("--fsize={}", tool.memory_max_bytes))
            .arg("--")
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
            .args(arguments)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|error| {
            format!("cannot start {}: {error}", self.config.bubblewrap.display())
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let limit = tool.max_output_bytes;
        let collect = async {
            let (stdout, stderr, status) = tokio::join!(
                read_limited(stdout, limit),
                read_limited(stderr, limit),
                child.wait()
            );
            (stdout, stderr, status)
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
                // Dropping the future dropped the child: kill_on_drop and --die-with-parent end it.
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

/// The systemd backend: `StartTransientUnit` over the system bus.
mod systemd {
    use std::os::fd::OwnedFd;

    use zbus::zvariant::{Fd, OwnedObjectPath, OwnedValue, Value};

    use super::{Duration, Execution, HashMap, Instant, Outcome, ToolConfig, read_limited};

    const DESTINATION: &str = "org.freedesktop.systemd1";
    const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
    const MANAGER: &str = "org.freedesktop.systemd1.Manager";

    fn bus_error(context: &str) -> impl Fn(zbus::Error) -> String + '_ {
        move |error| format!("{context}: {error}")
    }

    pub(super) async fn run(
        name: &str,
        tool: &ToolConfig,
        arguments: &[String],
    ) -> Result<Execution, String> {
        let connection = zbus::Connection::system()
            .await
            .map_err(bus_error("cannot reach the system bus"))?;
        let (stdout_reader, stdout_writer) =
            std::io::pipe().map_err(|error| format!("pipe: {error}"))?;
        let (stderr_reader, stderr_writer) =
            std::io::pipe().map_err(|error| format!("pipe: {error}"))?;
        let stdout_writer = OwnedFd::from(stdout_writer);
        let stderr_writer = OwnedFd::from(stderr_writer);
        let unit = format!("synos-tool-{}.service", uuid::Uuid::now_v7().simple());
        let command = tool.command.display().to_string();
        let mut argv = vec![command.clone()];
        argv.extend(tool.fixed_arguments.iter().cloned());
        argv.extend(arguments.iter().cloned());
        let microseconds = |seconds: u64| seconds.saturating_mul(1_000_000);
        let properties: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(format!("SynOS tool {name}"))),
            ("ExecStart", Value::from(vec![(command, argv, false)])),
            ("Type", Value::from("exec")),
            // Keeps the exit status readable after the process is gone; stopped below.
            ("RemainAfterExit", Value::from(true)),
            ("DynamicUser", Value::from(true)),
            ("PrivateNetwork", Value::from(!tool.network)),
            ("PrivateTmp", Value::from(true)),
            ("PrivateDevices", Value::from(true)),
            ("PrivateIPC", Value::from(true)),
            ("ProtectSystem", Value::from("strict")),
            ("ProtectHome", Value::from("yes")),
            ("ProtectKernelTunables", Value::from(true)),
            ("ProtectKernelModules", Value::from(true)),
            ("ProtectKernelLogs", Value::from(true)),
            ("ProtectControlGroups", Value::from(true)),
            ("ProtectClock", Value::from(true)),
            ("ProtectHostname", Value::from(true)),
            ("ProtectProc", Value::from("invisible")),
            ("NoNewPrivileges", Value::from(true)),
            ("RestrictSUIDSGID", Value::from(true)),
            ("RestrictRealtime", Value::from(true)),
            ("RestrictNamespaces", Value::from(true)),
            ("LockPersonality", Value::from(true)),
            ("CapabilityBoundingSet", Value::from(0u64)),
            (
                "InaccessiblePaths",
                Value::from(vec!["-/run/synos", "-/var/lib/synos"]),
            ),
            ("MemoryMax", Value::from(tool.memory_max_bytes)),
            ("MemorySwapMax", Value::from(0u64)),
            (
                "CPUQuotaPerSecUSec",
                Value::from(u64::from(tool.cpu_quota_percent) * 10_000),
            ),
            ("TasksMax", Value::from(64u64)),
            (
                "RuntimeMaxUSec",
                Value::from(microseconds(tool.timeout_seconds)),
            ),
            ("WorkingDirectory", Value::from("/tmp")),
            ("StandardInput", Value::from("null")),
            (
                "StandardOutputFileDescriptor",
                Value::from(Fd::from(&stdout_writer)),
            ),
            (
                "StandardErrorFileDescriptor",
                Value::from(Fd::from(&stderr_writer)),
            ),
        ];
        let auxiliary: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let started = Instant::now();
        connection
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "StartTransientUnit",
                &(unit.as_str(), "fail", properties, auxiliary),
            )
            .await
            .map_err(bus_error("systemd refused the transient unit"))?;
        // systemd holds its own copies now; ours must close, or the pipes never reach EOF.
        drop(stdout_writer);
        drop(stderr_writer);
        let limit = tool.max_output_bytes;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_reader));
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stderr_reader));
        let collect = async {
            tokio::join!(
                read_limited(stdout.ok(), limit),
                read_limited(stderr.ok(), limit)
            )
        };
        // systemd's RuntimeMaxUSec= is the limit; this is only a backstop.
        let backstop = Duration::from_secs(tool.timeout_seconds + 10);
        let output = tokio::time::timeout(backstop, collect).await;
        let status = unit_status(&connection, &unit).await;
        // Best effort: a unit that is already gone needs neither.
        let _ = connection
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "StopUnit",
                &(unit.as_str(), "replace"),
            )
            .await;
        let _ = connection
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "ResetFailedUnit",
                &(unit.as_str(),),
            )
            .await;
        let ((stdout, stdout_cut), (stderr, stderr_cut)) =
            output.unwrap_or(((Vec::new(), false), (Vec::new(), false)));
        let (exit_code, outcome) = status.unwrap_or((-1, Outcome::Timeout));
        Ok(Execution {
            exit_code,
            outcome,
            stdout,
            stderr,
            truncated: stdout_cut || stderr_cut,
            duration: started.elapsed(),
        })
    }

    /// Waits (briefly) for systemd to record the main process's exit, then reads how it ended.
    async fn unit_status(connection: &zbus::Connection, unit: &str) -> Option<(i32, Outcome)> {
        let reply = connection
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "GetUnit",
                &(unit,),
            )
            .await
            .ok()?;
        let path: OwnedObjectPath = reply.body().deserialize().ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = connection
                .call_method(
                    Some(DESTINATION),
                    path.as_str(),
                    Some("org.freedesktop.DBus.Properties"),
                    "GetAll",
                    &("org.freedesktop.systemd1.Service",),
                )
                .await
                .ok()?;
            let properties: HashMap<String, OwnedValue> = reply.body().deserialize().ok()?;
            let number = |key: &str| {
                properties.get(key).and_then(|value| {
                    i64::try_from(value)
                        .ok()
                        .or_else(|| {
                            u64::try_from(value)
                                .ok()
                                .and_then(|v| i64::try_from(v).ok())
                        })
                        .or_else(|| i32::try_from(value).ok().map(i64::from))
                })
            };
            let exited = properties
                .get("ExecMainExitTimestampMonotonic")
                .and_then(|value| u64::try_from(value).ok())
                .is_some_and(|timestamp| timestamp > 0);
            if exited || Instant::now() > deadline {
                let result = properties
                    .get("Result")
                    .and_then(|value| <&str>::try_from(value).ok().map(ToOwned::to_owned))
                    .unwrap_or_default();
                // CLD_EXITED is 1: the status is an exit code; otherwise it is a signal.
                let code = number("ExecMainCode").unwrap_or(0);
                let status = i32::try_from(number("ExecMainStatus").unwrap_or(-1)).unwrap_or(-1);
                let outcome = match result.as_str() {
                    "timeout" => Outcome::Timeout,
                    "oom-kill" => Outcome::MemoryLimit,
                    _ if code == 1 => Outcome::Exited,
                    _ => Outcome::Killed,
                };
                let exit_code = if outcome == Outcome::Exited {
                    status
                } else {
                    -1
                };
                return Some((exit_code, outcome));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
