//! The sandbox runner: what systemd starts, confined, for each connection to a sandbox socket,
//! and the two messages the policy daemon and the runner exchange over it.
//!
//! The runner trusts nothing it is sent: it re-reads the policy configuration, refuses a tool
//! that is not configured, whose arguments fail the tool's checks, or whose network stance is
//! not its socket's, and runs the tool with the tool's own limits.
//!
//! The daemon sends its request and keeps its side open while the tool runs: the end of that
//! stream means the daemon's call is gone (cancelled, or the daemon stopped), and the runner
//! kills the tool rather than finish work nobody will read.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::config::{SandboxConfig, ToolConfig};
use crate::sandbox::{Execution, Outcome, execute, limited_command};

/// The longest request a runner reads: a tool name and its arguments.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// What the policy daemon asks a runner: run this configured tool with these arguments, which
/// it has already authorized, checked and audited.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RunRequest {
    /// The tool's name in `[tools]`.
    #[prost(string, tag = "1")]
    pub tool: String,
    /// The caller's arguments as checked (fixed arguments are added by the runner).
    #[prost(string, repeated, tag = "2")]
    pub arguments: Vec<String>,
}

/// What a runner answers.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RunResult {
    /// Empty when the tool ran; otherwise why the runner refused it or could not start it.
    #[prost(string, tag = "1")]
    pub refused: String,
    /// The exit status; -1 when the tool did not exit by itself.
    #[prost(int32, tag = "2")]
    pub exit_code: i32,
    /// [`Outcome::as_str`].
    #[prost(string, tag = "3")]
    pub outcome: String,
    /// Standard output, cut at the tool's limit.
    #[prost(bytes = "vec", tag = "4")]
    pub stdout: Vec<u8>,
    /// Standard error, cut at the tool's limit.
    #[prost(bytes = "vec", tag = "5")]
    pub stderr: Vec<u8>,
    /// Whether either was cut.
    #[prost(bool, tag = "6")]
    pub truncated: bool,
    /// Wall-clock time of the tool, in microseconds.
    #[prost(uint64, tag = "7")]
    pub duration_micros: u64,
}

impl RunResult {
    fn refusal(reason: String) -> Self {
        Self {
            refused: reason,
            exit_code: -1,
            ..Self::default()
        }
    }

    /// The execution this result reports, or the runner's refusal.
    pub fn into_execution(self) -> Result<Execution, String> {
        if !self.refused.is_empty() {
            return Err(self.refused);
        }
        let outcome = Outcome::parse(&self.outcome)
            .ok_or_else(|| format!("the runner reported an unknown outcome {:?}", self.outcome))?;
        Ok(Execution {
            exit_code: self.exit_code,
            outcome,
            stdout: self.stdout,
            stderr: self.stderr,
            truncated: self.truncated,
            duration: Duration::from_micros(self.duration_micros),
        })
    }
}

/// Reads one length-delimited message of at most `limit` bytes, up to the end of the stream.
pub async fn read_message<Message: prost::Message + Default>(
    stream: &mut (impl AsyncRead + Unpin),
    limit: u64,
) -> Result<Message, String> {
    let mut bytes = Vec::new();
    stream
        .take(limit + 16)
        .read_to_end(&mut bytes)
        .await
        .map_err(|error| format!("reading: {error}"))?;
    if bytes.len() as u64 > limit + 10 {
        return Err(format!("the message is longer than {limit} bytes"));
    }
    Message::decode_length_delimited(bytes.as_slice())
        .map_err(|error| format!("malformed message: {error}"))
}

/// Reads one length-delimited message of at most `limit` bytes, leaving the stream open.
pub async fn read_one_message<Message: prost::Message + Default>(
    stream: &mut (impl AsyncRead + Unpin),
    limit: u64,
) -> Result<Message, String> {
    let mut prefix = Vec::with_capacity(10);
    let length = loop {
        let byte = stream
            .read_u8()
            .await
            .map_err(|error| format!("reading: {error}"))?;
        prefix.push(byte);
        if byte & 0x80 == 0 {
            break prost::encoding::decode_varint(&mut prefix.as_slice())
                .map_err(|error| format!("malformed message: {error}"))?;
        }
        if prefix.len() == 10 {
            return Err("malformed message: its length does not end".to_owned());
        }
    };
    if length > limit {
        return Err(format!("the message is longer than {limit} bytes"));
    }
    let mut bytes = vec![0; usize::try_from(length).unwrap_or(usize::MAX)];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|error| format!("reading: {error}"))?;
    Message::decode(bytes.as_slice()).map_err(|error| format!("malformed message: {error}"))
}

/// Writes one length-delimited message and keeps the stream open.
pub async fn send_message(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &impl prost::Message,
) -> Result<(), String> {
    stream
        .write_all(&message.encode_length_delimited_to_vec())
        .await
        .map_err(|error| format!("writing: {error}"))
}

/// Writes one length-delimited message and closes the writing side.
pub async fn write_message(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &impl prost::Message,
) -> Result<(), String> {
    let bytes = message.encode_length_delimited_to_vec();
    stream
        .write_all(&bytes)
        .await
        .map_err(|error| format!("writing: {error}"))?;
    stream
        .shutdown()
        .await
        .map_err(|error| format!("closing: {error}"))
}

/// Serves one connection: reads the request, checks it against `tools`, runs the tool with its
/// limits and writes the result. `network` is the stance of the socket the connection came in
/// on; a tool whose stance differs is refused, whichever way.
pub async fn serve(
    connection: &mut (impl AsyncRead + AsyncWrite + Unpin),
    tools: &BTreeMap<String, ToolConfig>,
    sandbox: &SandboxConfig,
    network: bool,
) -> Result<(), String> {
    let result = match read_one_message::<RunRequest>(connection, MAX_REQUEST_BYTES).await {
        Err(problem) => RunResult::refusal(format!("bad request: {problem}")),
        Ok(request) => {
            let mut extra = [0_u8; 1];
            tokio::select! {
                result = run(&request, tools, sandbox, network) => result,
                // The daemon sends nothing more: anything here, the end included, means its
                // call is gone. Dropping `run` kills the tool (kill_on_drop).
                _ = connection.read(&mut extra) => {
                    return Err(format!(
                        "the policy daemon went away while {:?} ran; the tool was stopped",
                        request.tool
                    ));
                }
            }
        }
    };
    if !result.refused.is_empty() {
        tracing::warn!("request refused: {}", result.refused);
    }
    write_message(connection, &result).await
}

async fn run(
    request: &RunRequest,
    tools: &BTreeMap<String, ToolConfig>,
    sandbox: &SandboxConfig,
    network: bool,
) -> RunResult {
    let Some(tool) = tools.get(&request.tool) else {
        return RunResult::refusal(format!("no tool {:?} is configured", request.tool));
    };
    if tool.network != network {
        return RunResult::refusal(format!(
            "tool {:?} {} network access, and this sandbox {} it",
            request.tool,
            if tool.network {
                "needs"
            } else {
                "must not have"
            },
            if network { "grants" } else { "has no" },
        ));
    }
    let arguments = match crate::tools::check_arguments(tool, &request.arguments) {
        Ok(arguments) => arguments,
        Err(reason) => return RunResult::refusal(format!("tool {:?}: {reason}", request.tool)),
    };
    let mut command = limited_command(&sandbox.prlimit, tool);
    command
        .arg(&tool.command)
        .args(&tool.fixed_arguments)
        .args(&arguments)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("HOME", "/tmp")
        .current_dir("/tmp");
    match execute(command, tool, &sandbox.prlimit).await {
        Err(problem) => RunResult::refusal(problem),
        Ok(execution) => RunResult {
            refused: String::new(),
            exit_code: execution.exit_code,
            outcome: execution.outcome.as_str().to_owned(),
            stdout: execution.stdout,
            stderr: execution.stderr,
            truncated: execution.truncated,
            duration_micros: u64::try_from(execution.duration.as_micros()).unwrap_or(u64::MAX),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use prost::Message as _;

    use super::*;
    use crate::config::ArgumentKind;

    fn tools() -> BTreeMap<String, ToolConfig> {
        let shell = ToolConfig {
            command: PathBuf::from("/bin/sh"),
            fixed_arguments: vec!["-c".to_owned()],
            risk: "low".to_owned(),
            arguments: ArgumentKind::Free,
            timeout_seconds: 2,
            max_output_bytes: 100,
            ..ToolConfig::default()
        };
        BTreeMap::from([
            (
                "patient-shell".to_owned(),
                ToolConfig {
                    timeout_seconds: 600,
                    ..shell.clone()
                },
            ),
            ("shell".to_owned(), shell.clone()),
            (
                "online-shell".to_owned(),
                ToolConfig {
                    network: true,
                    ..shell
                },
            ),
            (
                "list-files".to_owned(),
                ToolConfig {
                    command: PathBuf::from("/bin/ls"),
                    arguments: ArgumentKind::Paths,
                    allowed_roots: vec![PathBuf::from("/usr/share")],
                    ..ToolConfig::default()
                },
            ),
        ])
    }

    /// Sends `request` (raw bytes) to a runner of the given stance and returns its answer,
    /// keeping the daemon's side open as the daemon does.
    async fn ask(request: Vec<u8>, network: bool) -> RunResult {
        exchange(request, network, false).await
    }

    /// [`ask`], closing the daemon's writing side after the request when `close` is set.
    async fn exchange(request: Vec<u8>, network: bool, close: bool) -> RunResult {
        let (mut daemon, mut runner) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move {
            serve(&mut runner, &tools(), &SandboxConfig::default(), network).await
        });
        // An oversized request is cut off by the runner, which then stops reading.
        if daemon.write_all(&request).await.is_ok() && close {
            daemon.shutdown().await.unwrap();
        }
        let result = read_message(&mut daemon, 1024 * 1024).await.unwrap();
        serving.await.unwrap().unwrap();
        result
    }

    fn request(tool: &str, arguments: &[&str]) -> Vec<u8> {
        RunRequest {
            tool: tool.to_owned(),
            arguments: arguments
                .iter()
                .map(|argument| (*argument).to_owned())
                .collect(),
        }
        .encode_length_delimited_to_vec()
    }

    #[tokio::test]
    async fn a_configured_tool_runs_with_its_limits() {
        let ran = ask(
            request("shell", &["echo hello; echo oops >&2; exit 3"]),
            false,
        )
        .await;
        assert_eq!(ran.refused, "");
        let execution = ran.into_execution().unwrap();
        assert_eq!(
            (
                execution.exit_code,
                execution.outcome,
                execution.stdout,
                execution.stderr
            ),
            (3, Outcome::Exited, b"hello\n".to_vec(), b"oops\n".to_vec())
        );
        let noisy = ask(request("shell", &["yes | head -c 5000"]), false).await;
        assert!(noisy.truncated);
        assert_eq!(noisy.stdout.len(), 100);
        let sleeper = ask(request("shell", &["sleep 30"]), false).await;
        assert_eq!(sleeper.outcome, "timeout");
        assert!(
            sleeper.duration_micros < 5_000_000,
            "{}",
            sleeper.duration_micros
        );
    }

    #[tokio::test]
    async fn a_daemon_that_goes_away_stops_the_tool() {
        let directory = tempfile::tempdir().unwrap();
        let started = directory.path().join("started");
        let (mut daemon, mut runner) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move {
            serve(&mut runner, &tools(), &SandboxConfig::default(), false).await
        });
        let script = format!("echo $$ > {}; exec sleep 30", started.display());
        daemon
            .write_all(&request("patient-shell", &[&script]))
            .await
            .unwrap();
        // The tool has started when it has written its pid (prlimit execs the shell).
        let pid = loop {
            if let Ok(text) = std::fs::read_to_string(&started)
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        drop(daemon);
        let stopped = serving.await.unwrap().unwrap_err();
        assert!(stopped.contains("went away"), "{stopped}");
        // SIGKILL is sent as the run is dropped; the process is gone (or a zombie until it is
        // reaped) as soon as the kernel has delivered it, long before the 600 s limit.
        let mut state = String::new();
        for _ in 0..500 {
            state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the tool still runs: {state}");
    }

    #[tokio::test]
    async fn the_runner_checks_everything_again_and_refuses_what_its_configuration_does_not_allow()
    {
        // Shorter than its length says, and then the stream ends.
        let garbage = exchange(b"\x05\xff\xff\xff".to_vec(), false, true).await;
        assert!(
            garbage.refused.starts_with("bad request"),
            "{}",
            garbage.refused
        );
        let mut oversized = vec![0x80, 0x80, 0x80, 0x01];
        oversized.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
        let oversized = ask(oversized, false).await;
        assert!(
            oversized.refused.contains("longer than"),
            "{}",
            oversized.refused
        );
        for (tool, arguments, network, reason) in [
            (
                "rm",
                vec!["-rf", "/"],
                false,
                "no tool \"rm\" is configured",
            ),
            ("online-shell", vec!["true"], false, "needs network access"),
            ("shell", vec!["true"], true, "must not have network access"),
            (
                "list-files",
                vec!["/etc"],
                false,
                "outside the allowed roots",
            ),
        ] {
            let refused = ask(request(tool, &arguments), network).await;
            assert!(
                refused.refused.contains(reason),
                "{tool}: {}",
                refused.refused
            );
            assert!(refused.into_execution().is_err());
        }
    }
}
