//! `/etc/synos/policy.toml`: where the Cedar policies live, screening thresholds, rate limits,
//! the sandbox backend and the tools that may be run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use synos_common::config::{LogConfig, Problem, ServerConfig, Settings};
use synos_common::identity::Directories;

/// The policy daemon's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and limits.
    pub server: ServerConfig,
    /// Log filter.
    pub log: LogConfig,
    /// Where the Cedar policies come from.
    pub policies: PoliciesConfig,
    /// Prompt-injection screening.
    pub screening: ScreeningConfig,
    /// Output redaction.
    pub redaction: RedactionConfig,
    /// Requests per principal and action.
    pub rate_limits: RateLimitsConfig,
    /// How tools are confined.
    pub sandbox: SandboxConfig,
    /// The tools `ExecTool` may run, by name.
    pub tools: BTreeMap<String, ToolConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            log: LogConfig::default(),
            policies: PoliciesConfig::default(),
            screening: ScreeningConfig::default(),
            redaction: RedactionConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            sandbox: SandboxConfig::default(),
            tools: default_tools(),
        }
    }
}

/// `[policies]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory of `*.cedar` files; default `$SYNOS_CONFIG_DIR/policy.d`. When it does not
    /// exist, the built-in defaults (the same as the packaged `00-defaults.cedar`) apply.
    pub directory: Option<PathBuf>,
}

impl PoliciesConfig {
    /// The policy directory these settings name.
    pub fn directory(&self, directories: &Directories) -> PathBuf {
        self.directory
            .clone()
            .unwrap_or_else(|| directories.config.join("policy.d"))
    }
}

/// `[screening]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScreeningConfig {
    /// Score from which a prompt is flagged.
    pub flag_threshold: f64,
    /// Score from which a prompt is blocked.
    pub block_threshold: f64,
    /// Whether the semantic stage (similarity to known attacks and the learned classifier) takes
    /// part. When its model is missing the daemon screens with the rules alone and says so in its
    /// status.
    pub semantic: bool,
    /// The model directory under `$SYNOS_MODEL_DIR` whose distilled token table the semantic
    /// stage reads.
    pub model: String,
}

impl Default for ScreeningConfig {
    fn default() -> Self {
        Self {
            flag_threshold: 0.4,
            block_threshold: 0.7,
            semantic: true,
            model: "all-MiniLM-L6-v2".to_owned(),
        }
    }
}

/// `[redaction]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactionConfig {
    /// Kinds left alone, e.g. ["phone_number"].
    pub disabled_kinds: Vec<String>,
}

/// `[rate_limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Requests per minute each principal may make of each action; 0 turns limits off.
    pub per_minute: u32,
    /// How many of them may come at once.
    pub burst: u32,
    /// Per-action overrides of `per_minute`, by action name without its resource part,
    /// e.g. `"tool.exec" = 60`.
    pub actions: BTreeMap<String, u32>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            per_minute: 6000,
            burst: 1000,
            actions: BTreeMap::from([("tool.exec".to_owned(), 120)]),
        }
    }
}

/// Which sandbox runs tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxBackend {
    /// systemd when the sandbox sockets are there, bubblewrap otherwise.
    #[default]
    Auto,
    /// The socket-activated sandbox units (`synos-sandbox.socket`, `synos-sandbox-network.socket`).
    Systemd,
    /// `bwrap`.
    Bubblewrap,
}

/// `[sandbox]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The backend.
    pub backend: SandboxBackend,
    /// The bubblewrap program.
    pub bubblewrap: PathBuf,
    /// `prlimit` (util-linux), which sets each tool's memory, CPU-time and file-size limits.
    pub prlimit: PathBuf,
    /// Where the systemd sandbox's sockets are (`offline.sock`, `network.sock`); default
    /// `sandbox/` in the runtime directory.
    pub socket_directory: Option<PathBuf>,
}

impl SandboxConfig {
    /// The sandbox sockets' directory for a system whose runtime directory is `runtime`.
    pub fn socket_directory(&self, runtime: &std::path::Path) -> PathBuf {
        self.socket_directory
            .clone()
            .unwrap_or_else(|| runtime.join("sandbox"))
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            backend: SandboxBackend::Auto,
            bubblewrap: PathBuf::from("/usr/bin/bwrap"),
            prlimit: PathBuf::from("/usr/bin/prlimit"),
            socket_directory: None,
        }
    }
}

/// How a tool's positional arguments are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgumentKind {
    /// No positional arguments at all.
    #[default]
    None,
    /// Each is a path that must lie inside `allowed_roots` once resolved.
    Paths,
    /// Each is an http(s) URL whose host is in `allowed_hosts`.
    Urls,
    /// Anything (still subject to `max_arguments` and `max_argument_bytes`).
    Free,
}

/// `[tools.NAME]`: one tool `ExecTool` may run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolConfig {
    /// Absolute path of the program; run directly, never through a shell.
    pub command: PathBuf,
    /// Arguments always passed first, before the caller's.
    pub fixed_arguments: Vec<String>,
    /// The `risk` attribute policies see on `Tool::"NAME"` (the defaults let users run "low").
    pub risk: String,
    /// What positional arguments are.
    pub arguments: ArgumentKind,
    /// Options (arguments starting with `-`) the caller may pass; others are refused.
    pub allowed_options: Vec<String>,
    /// Roots path arguments must resolve inside.
    pub allowed_roots: Vec<PathBuf>,
    /// Hosts URL arguments may name.
    pub allowed_hosts: Vec<String>,
    /// Whether the sandbox has network access; without it, only an empty loopback.
    pub network: bool,
    /// Most caller arguments.
    pub max_arguments: usize,
    /// Longest caller argument, in bytes.
    pub max_argument_bytes: usize,
    /// Memory limit, in bytes.
    pub memory_max_bytes: u64,
    /// CPU limit, percent of one core (systemd backend; bubblewrap limits CPU seconds).
    pub cpu_quota_percent: u32,
    /// Wall-clock limit, in seconds.
    pub timeout_seconds: u64,
    /// Most bytes kept of stdout and of stderr each; the rest is dropped and `truncated` set.
    pub max_output_bytes: usize,
}

impl Default for ToolConfig {
    fn default() -> Self {
        Self {
            command: PathBuf::new(),
            fixed_arguments: Vec::new(),
            risk: "high".to_owned(),
            arguments: ArgumentKind::None,
            allowed_options: Vec::new(),
            allowed_roots: Vec::new(),
            allowed_hosts: Vec::new(),
            network: false,
            max_arguments: 32,
            max_argument_bytes: 4096,
            memory_max_bytes: 256 * 1024 * 1024,
            cpu_quota_percent: 100,
            timeout_seconds: 30,
            max_output_bytes: 1024 * 1024,
        }
    }
}

/// The tools a system has with no configuration: harmless, read-only ones.
fn default_tools() -> BTreeMap<String, ToolConfig> {
    let read_only = |command: &str, options: &[&str]| ToolConfig {
        command: PathBuf::from(command),
        risk: "low".to_owned(),
        arguments: ArgumentKind::Paths,
        allowed_options: options.iter().map(|option| (*option).to_owned()).collect(),
        allowed_roots: vec![PathBuf::from("/usr/share")],
        timeout_seconds: 10,
        ..ToolConfig::default()
    };
    BTreeMap::from([
        (
            "date".to_owned(),
            ToolConfig {
                command: PathBuf::from("/bin/date"),
                risk: "low".to_owned(),
                allowed_options: vec!["-u".to_owned(), "-R".to_owned(), "-I".to_owned()],
                timeout_seconds: 5,
                ..ToolConfig::default()
            },
        ),
        (
            "list-files".to_owned(),
            read_only("/bin/ls", &["-l", "-a", "-h", "-1", "-R"]),
        ),
        (
            "word-count".to_owned(),
            read_only("/usr/bin/wc", &["-l", "-w", "-c", "-m"]),
        ),
    ])
}

impl Settings for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let screening = &self.screening;
        for (key, value) in [
            ("screening.flag_threshold", screening.flag_threshold),
            ("screening.block_threshold", screening.block_threshold),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                problems.push(Problem::new(key, "must be above 0 and at most 1"));
            }
        }
        if screening.flag_threshold > screening.block_threshold {
            problems.push(Problem::new(
                "screening.flag_threshold",
                "must not exceed screening.block_threshold",
            ));
        }
        let model = &screening.model;
        if model.is_empty() || model.contains('/') || model.starts_with('.') {
            problems.push(Problem::new(
                "screening.model",
                "must be the name of a directory under the model directory",
            ));
        }
        for kind in &self.redaction.disabled_kinds {
            if !crate::redaction::KINDS.contains(&kind.as_str()) {
                problems.push(Problem::new(
                    "redaction.disabled_kinds",
                    format!(
                        "unknown kind {kind:?}; known: {}",
                        crate::redaction::KINDS.join(", ")
                    ),
                ));
            }
        }
        if self.rate_limits.per_minute > 0 && self.rate_limits.burst == 0 {
            problems.push(Problem::new(
                "rate_limits.burst",
                "must be at least 1 when limits are on",
            ));
        }
        for (action, per_minute) in &self.rate_limits.actions {
            if *per_minute == 0 {
                problems.push(Problem::new(
                    format!("rate_limits.actions.{action}"),
                    "must be at least 1",
                ));
            }
        }
        for (name, tool) in &self.tools {
            problems.extend(tool_problems(name, tool));
        }
        problems
    }

    fn check_files(&self, directories: &Directories) -> Result<(), String> {
        crate::authorizer::PolicyFiles::load(&self.policies.directory(directories))
            .map(drop)
            .map_err(|error| error.to_string())
    }
}

fn tool_problems(name: &str, tool: &ToolConfig) -> Vec<Problem> {
    let key = |field: &str| format!("tools.{name}.{field}");
    let mut problems = Vec::new();
    if !crate::authorizer::is_plain_name(name) {
        problems.push(Problem::new(
            format!("tools.{name}"),
            "tool names are letters, digits, '.', '_' and '-'",
        ));
    }
    if !tool.command.is_absolute() {
        problems.push(Problem::new(key("command"), "must be an absolute path"));
    }
    if tool.arguments == ArgumentKind::Paths && tool.allowed_roots.is_empty() {
        problems.push(Problem::new(
            key("allowed_roots"),
            "path arguments need at least one allowed root",
        ));
    }
    if tool.allowed_roots.iter().any(|root| !root.is_absolute()) {
        problems.push(Problem::new(
            key("allowed_roots"),
            "roots must be absolute paths",
        ));
    }
    if tool.arguments == ArgumentKind::Urls && (tool.allowed_hosts.is_empty() || !tool.network) {
        problems.push(Problem::new(
            key("allowed_hosts"),
            "URL arguments need allowed hosts and network = true",
        ));
    }
    if tool.timeout_seconds == 0 || tool.timeout_seconds > 3600 {
        problems.push(Problem::new(
            key("timeout_seconds"),
            "must be between 1 and 3600",
        ));
    }
    if tool.memory_max_bytes < 16 * 1024 * 1024 {
        problems.push(Problem::new(
            key("memory_max_bytes"),
            "must be at least 16 MiB",
        ));
    }
    if tool.cpu_quota_percent == 0 {
        problems.push(Problem::new(key("cpu_quota_percent"), "must be at least 1"));
    }
    if tool.max_output_bytes == 0 || tool.max_output_bytes > 16 * 1024 * 1024 {
        problems.push(Problem::new(
            key("max_output_bytes"),
            "must be between 1 and 16777216",
        ));
    }
    problems
}
