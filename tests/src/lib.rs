//! Harness for system tests: runs the real SynOS binaries in a private sandbox of directories
//! and talks to them over their real sockets.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    reason = "test harness: a failure should panic loudly"
)]

pub mod process;
pub mod stand_in;
pub mod users;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use synos_common::client;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

pub use synos_common::identity::ALL_DAEMONS;

/// How long a daemon may take to start serving before a test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A built binary of this workspace, next to the test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    let test_executable = std::env::current_exe().unwrap();
    let profile_directory = test_executable.parent().unwrap().parent().unwrap();
    let path = profile_directory.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --release --bins` before `cargo test --release` \
         (scripts/test.sh does), or `cargo build --bins` before a plain `cargo test`",
        path.display()
    );
    path
}

/// The shipped models, as `scripts/fetch-models.sh` lays them out: `$SYNOS_MODEL_DIR`, else
/// `${XDG_CACHE_HOME:-~/.cache}/synos/models`. Daemons started by a [`Sandbox`] read them there.
pub fn model_directory() -> PathBuf {
    if let Some(directory) = std::env::var_os("SYNOS_MODEL_DIR").filter(|value| !value.is_empty()) {
        return PathBuf::from(directory);
    }
    cache_directory().join("synos/models")
}

/// `${XDG_CACHE_HOME:-~/.cache}`, where the project's scripts keep models and Python clients.
fn cache_directory() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"),
            PathBuf::from,
        )
}

/// Fails the test unless the memory daemon's embedding model is in [`model_directory`]: tests
/// of vector search must not pass by silently falling back to keywords.
pub fn require_embedding_model() {
    let directory = model_directory().join("all-MiniLM-L6-v2");
    assert!(
        directory.join("model.safetensors").is_file(),
        "{} has no model: run scripts/fetch-models.sh (scripts/test.sh does)",
        directory.display()
    );
}

/// The router's shipped local model in [`model_directory`]; fails the test when it is missing,
/// so tests of the local model cannot pass by never running it.
pub fn require_local_model() -> PathBuf {
    let file = model_directory().join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        file.is_file(),
        "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does)",
        file.display()
    );
    file
}

/// The binary name of a daemon's short name, e.g. "memory" → "synos-memory".
pub fn binary_name(short_name: &str) -> &'static str {
    synos_common::identity::daemon_binary(short_name)
        .unwrap_or_else(|| panic!("no SynOS daemon is called {short_name:?}"))
}

/// Private config, state and runtime directories, removed when dropped.
#[derive(Debug)]
pub struct Sandbox {
    root: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A fresh sandbox.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("synos-test-")
            .tempdir()
            .unwrap();
        for directory in ["etc", "state", "run"] {
            std::fs::create_dir(root.path().join(directory)).unwrap();
        }
        Self { root }
    }

    /// The sandbox's root folder.
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// `SYNOS_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// `SYNOS_CONFIG_DIR`.
    pub fn config_dir(&self) -> PathBuf {
        self.path().join("etc")
    }

    /// `SYNOS_STATE_DIR`.
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The socket a daemon binds by default.
    pub fn socket(&self, short_name: &str) -> PathBuf {
        self.runtime_dir().join(format!("{short_name}.sock"))
    }

    /// Writes `/etc/synos/<short>.toml` of the sandbox.
    pub fn write_config(&self, short_name: &str, text: &str) {
        std::fs::write(self.config_dir().join(format!("{short_name}.toml")), text).unwrap();
    }

    /// A command for a workspace binary with the sandbox's directories and a clean environment:
    /// nothing of an outer systemd (notify socket, passed fds, journal) leaks in.
    pub fn command(&self, binary_name: &str) -> Command {
        let mut command = Command::new(binary(binary_name));
        command
            .env("SYNOS_RUNTIME_DIR", self.runtime_dir())
            .env("SYNOS_CONFIG_DIR", self.config_dir())
            .env("SYNOS_STATE_DIR", self.state_dir())
            .env("SYNOS_MODEL_DIR", model_directory())
            .env("RUST_LOG", "info")
            // Tests run in parallel: the router's HTTP endpoint and the doctor's metrics
            // endpoint take free ports, not 7311 and 9477.
            .env("SYNOS_LLM_ROUTER_HTTP__LISTEN", "127.0.0.1:0")
            .env("SYNOS_DOCTOR_METRICS__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null());
        for variable in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
        ] {
            command.env_remove(variable);
        }
        command
    }

    /// Runs `synosctl ARGUMENTS` against this sandbox's daemons on a blocking thread, so the
    /// test's runtime keeps serving in-process stand-ins meanwhile: (exit code, stdout, stderr).
    pub async fn synosctl(&self, arguments: &[&str]) -> (i32, String, String) {
        let mut command = self.command("synosctl");
        command.args(arguments);
        tokio::task::spawn_blocking(move || output(&mut command))
            .await
            .unwrap()
    }

    /// Starts a daemon on its default socket and waits until it is SERVING.
    pub async fn start(&self, short_name: &str) -> Daemon {
        let command = self.command(binary_name(short_name));
        self.start_with(short_name, command, &self.socket(short_name))
            .await
    }

    /// Starts a daemon on its default socket with extra arguments, e.g. `["--set", "k=v"]`.
    pub async fn start_with_args(&self, short_name: &str, arguments: &[&str]) -> Daemon {
        let mut command = self.command(binary_name(short_name));
        command.args(arguments);
        self.start_with(short_name, command, &self.socket(short_name))
            .await
    }

    /// Starts `command` as the daemon `short_name` and waits until `socket` answers SERVING.
    pub async fn start_with(&self, short_name: &str, command: Command, socket: &Path) -> Daemon {
        let mut daemon = self.spawn(short_name, command);
        daemon.wait_serving(socket).await;
        daemon
    }

    /// Spawns `command` with stdout and stderr captured to a log file, without waiting.
    pub fn spawn(&self, short_name: &str, mut command: Command) -> Daemon {
        let log_path = self.path().join(format!("{short_name}-{}.log", unique()));
        let log = std::fs::File::create(&log_path).unwrap();
        command.stdout(log.try_clone().unwrap()).stderr(log);
        let child = command.spawn().unwrap();
        Daemon {
            child,
            name: short_name.to_owned(),
            log_path,
        }
    }

    /// Starts all five daemons, keyed by short name.
    pub async fn start_all(&self) -> std::collections::BTreeMap<&'static str, Daemon> {
        let mut daemons = std::collections::BTreeMap::new();
        for (short_name, _) in ALL_DAEMONS {
            daemons.insert(short_name, self.start(short_name).await);
        }
        daemons
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running daemon process; killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    name: String,
    log_path: PathBuf,
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        kill(
            Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            signal,
        )
        .unwrap();
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `socket` answers a health check with SERVING; panics with the log if the
    /// process exits or the time runs out.
    pub async fn wait_serving(&mut self, socket: &Path) {
        self.wait_health(socket, ServingStatus::Serving).await;
    }

    /// Waits until `socket` answers a health check with `expected`.
    pub async fn wait_health(&mut self, socket: &Path, expected: ServingStatus) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before serving; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if health(socket).await == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not {expected:?} after {START_TIMEOUT:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A gRPC channel to a socket.
pub async fn channel(socket: &Path) -> Channel {
    client::connect(socket, Duration::from_secs(5))
        .await
        .unwrap()
}

/// The router's provider `name`, as it reports it now.
pub async fn router_provider(
    router: &mut synos_proto::llm::v1::router_client::RouterClient<Channel>,
    name: &str,
) -> synos_proto::llm::v1::Provider {
    router
        .list_providers(synos_proto::llm::v1::ListProvidersRequest {})
        .await
        .unwrap()
        .into_inner()
        .providers
        .into_iter()
        .find(|provider| provider.name == name)
        .unwrap_or_else(|| panic!("the router has no provider called {name}"))
}

/// The overall health a socket reports, or `None` when nothing answers.
pub async fn health(socket: &Path) -> Option<ServingStatus> {
    let channel = client::connect(socket, Duration::from_secs(1)).await.ok()?;
    client::health_status(channel, "", Duration::from_secs(1))
        .await
        .ok()
}

/// Runs a finished command and returns (exit code, stdout, stderr).
pub fn output(command: &mut Command) -> (i32, String, String) {
    let output = command.stdin(Stdio::null()).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends `body` as the raw protobuf payload of a unary call to `method` (e.g.
/// "/synos.policy.v1.Policy/Authorize"), bypassing our generated clients, which can only
/// send well-formed messages. Returns the raw reply payload.
pub async fn call_raw(
    socket: &Path,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel(socket).await);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, RawBytesCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A codec that moves payload bytes unchanged.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytesCodec;

impl tonic::codec::Codec for RawBytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytesCodec;
    type Decoder = RawBytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawBytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        destination: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(destination, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        source: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let length = bytes::Buf::remaining(source);
        Ok(Some(bytes::Buf::copy_to_bytes(source, length).to_vec()))
    }
}

/// The daemon's `STATUS=` line, as `Admin.GetInfo` serves it.
pub async fn status_line(socket: &Path) -> String {
    use synos_proto::admin::v1::{GetInfoRequest, admin_client::AdminClient};
    AdminClient::new(channel(socket).await)
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .state_summary
}

/// The HTTP listener a daemon reports in `Admin.GetInfo`, e.g. "http://127.0.0.1:41234".
pub async fn http_listener(socket: &Path) -> Option<String> {
    use synos_proto::admin::v1::{GetInfoRequest, admin_client::AdminClient};
    AdminClient::new(channel(socket).await)
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .listeners
        .into_iter()
        .find(|listener| listener.starts_with("http://"))
}

/// A path in this repository. Read at run time from the `CARGO_MANIFEST_DIR` cargo sets for
/// tests, not baked in at compile time: checkouts that share a build cache share test binaries.
pub fn repository_path(relative: &str) -> PathBuf {
    let tests_directory = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    tests_directory.join("..").join(relative)
}

/// The project's Python with the pinned official clients (`openai`, `grpcio`):
/// `$SYNOS_PYTHON`, else the virtual environment `scripts/install-dependencies.sh` makes.
pub fn project_python() -> PathBuf {
    if let Some(python) = std::env::var_os("SYNOS_PYTHON") {
        return python.into();
    }
    let python = cache_directory().join("synos/python/bin/python");
    assert!(
        python.exists(),
        "{} not found: run scripts/install-dependencies.sh (it installs the pinned Python \
         clients), or set SYNOS_PYTHON",
        python.display()
    );
    python
}

/// A small tmpfs, unmounted when dropped: a disk that a test can fill.
pub struct SmallFileSystem(pub PathBuf);

impl SmallFileSystem {
    /// Mounts a tmpfs of `size` (as mount's `size=` takes it) on `path`.
    pub fn mount(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let (code, _, stderr) = output(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&path),
        );
        assert_eq!(
            code, 0,
            "mounting a tmpfs needs root, as the rest of the test suite does: {stderr}"
        );
        Self(path)
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
