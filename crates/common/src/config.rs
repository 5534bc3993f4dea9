//! Configuration: TOML file, then environment, then command line, into one typed, validated value.
//!
//! Every daemon's settings type has `server` and `log` sections (from here) plus its own, all with
//! `#[serde(default, deny_unknown_fields)]`: a missing file means built-in defaults, an unknown key
//! is an error. Errors are one line naming the source (file path, environment variable or command
//! line), the key and the reason, and never echo the offending value: it may be a secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use figment::providers::{Env, Format as _, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::identity::{DaemonIdentity, Directories};

/// Largest request a daemon accepts unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long in-flight calls may finish after SIGTERM; below systemd's 5 s stop budget.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 3000;
const MAX_DRAIN_TIMEOUT_MS: u64 = 4500;

/// The `[server]` section every daemon has.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Unix socket to bind when systemd passes none; default `$SYNOS_RUNTIME_DIR/<short>.sock`.
    pub socket: Option<PathBuf>,
    /// Optional extra loopback TCP address, e.g. "127.0.0.1:7400"; only loopback is allowed.
    pub tcp_listen: Option<SocketAddr>,
    /// Largest request message accepted, in bytes; larger ones fail with OUT_OF_RANGE.
    pub max_message_bytes: usize,
    /// Time in-flight calls get to finish after SIGTERM before connections are closed.
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: None,
            tcp_listen: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
        }
    }
}

impl ServerConfig {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(address) = self.tcp_listen
            && !address.ip().is_loopback()
        {
            problems.push(Problem::new(
                "server.tcp_listen",
                "must be a loopback address (127.0.0.0/8 or ::1): daemons are not exposed to the network",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            problems.push(Problem::new(
                "server.max_message_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if self.drain_timeout_ms > MAX_DRAIN_TIMEOUT_MS {
            problems.push(Problem::new(
                "server.drain_timeout_ms",
                format!("must be at most {MAX_DRAIN_TIMEOUT_MS}: a stop must finish within 5 s"),
            ));
        }
        problems
    }
}

/// The `[log]` section every daemon has.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter, e.g. "info" or "info,synos_common=debug". `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
        }
    }
}

/// A problem found by validation beyond types: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. "server.tcp_listen".
    pub key: String,
    /// Why the value is wrong, without repeating the value.
    pub reason: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Implemented by each daemon's settings type.
pub trait Settings: DeserializeOwned + Default + Send + Sync + 'static {
    /// The `[server]` section.
    fn server(&self) -> &ServerConfig;
    /// The `[log]` section.
    fn log(&self) -> &LogConfig;
    /// Checks the types cannot express; the default has none.
    fn problems(&self) -> Vec<Problem> {
        Vec::new()
    }
    /// Checks the files these settings point to (the policy daemon's policy directory, say):
    /// an error is the whole one-line message, naming the file. The default has none.
    fn check_files(&self, directories: &Directories) -> Result<(), String> {
        let _ = directories;
        Ok(())
    }
    /// True for a daemon that applies a new configuration on SIGHUP: it receives the accepted
    /// settings through [`DaemonConfig::reloads`]. The others only have it validated, and apply
    /// it on restart.
    const APPLIES_RELOADS: bool = false;
}

/// The settings of a daemon with no sections of its own: just `[server]` and `[log]`.
/// A daemon that grows its own settings replaces this with its own type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicSettings {
    /// Listening and limits.
    pub server: ServerConfig,
    /// Log filter.
    pub log: LogConfig,
}

impl Settings for BasicSettings {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// A packaged configuration file with its commented-out settings (`#key = value`) made
/// settings, except the keys in `examples` (shown as examples, unset by default): the file's
/// promise that it shows the built-in defaults, which each daemon's tests hold it to.
pub fn uncommented_settings(shipped: &str, examples: &[&str]) -> String {
    shipped
        .lines()
        .filter(|line| {
            !examples.iter().any(|example| {
                line.strip_prefix('#')
                    .and_then(|setting| setting.strip_prefix(example))
                    .is_some_and(|rest| rest.starts_with(" = "))
            })
        })
        .map(|line| match line.strip_prefix('#') {
            Some(setting) if setting.contains(" = ") && !setting.starts_with(' ') => setting,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// No file: embedded defaults (possibly with environment or command-line overrides).
    BuiltInDefaults,
    /// This file.
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltInDefaults => formatter.write_str("built-in defaults"),
            Self::File(path) => write!(formatter, "{}", path.display()),
        }
    }
}

/// A daemon's loaded configuration: its settings plus where they and its directories come from.
#[derive(Debug, Clone)]
pub struct DaemonConfig<S> {
    /// The typed, validated settings.
    pub settings: S,
    /// The file they were read from, if any.
    pub source: ConfigSource,
    /// The contract's base directories.
    pub directories: Directories,
    /// The daemon these settings belong to.
    pub identity: DaemonIdentity,
    /// Settings accepted on SIGHUP (for daemons whose `Settings::APPLIES_RELOADS` is true).
    pub reloads: Reloads<S>,
}

/// The settings `daemon::main` accepts on each SIGHUP: it reloads and validates them, logs a
/// rejection and keeps the running ones, so a daemon only applies what is valid.
pub struct Reloads<S>(watch::Receiver<Option<Arc<S>>>);

impl<S> Reloads<S> {
    /// A sender for `daemon::main` and its receiving end.
    pub(crate) fn channel() -> (watch::Sender<Option<Arc<S>>>, Self) {
        let (sender, receiver) = watch::channel(None);
        (sender, Self(receiver))
    }

    /// Waits for the next accepted settings; `None` when no more can come (the process is
    /// not run by `daemon::main`, as in tests that call `run` directly).
    pub async fn next(&mut self) -> Option<Arc<S>> {
        loop {
            self.0.changed().await.ok()?;
            if let Some(settings) = self.0.borrow_and_update().clone() {
                return Some(settings);
            }
        }
    }
}

impl<S> Clone for Reloads<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> fmt::Debug for Reloads<S> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Reloads")
    }
}

impl<S: Settings> DaemonConfig<S> {
    /// The Unix socket to bind when systemd passes none.
    pub fn socket_path(&self) -> PathBuf {
        self.settings
            .server()
            .socket
            .clone()
            .unwrap_or_else(|| self.directories.socket_path(self.identity.short_name))
    }

    /// This daemon's state directory.
    pub fn state_directory(&self) -> PathBuf {
        self.directories.state_directory(self.identity.short_name)
    }

    /// Creates this daemon's state directory if needed and checks that it can write there.
    /// The error is one line naming the directory; a daemon degrades on it rather than dying.
    pub fn prepare_state_directory(&self) -> Result<PathBuf, String> {
        let directory = self.state_directory();
        std::fs::create_dir_all(&directory).map_err(|error| {
            format!("state directory {} unusable: {error}", directory.display())
        })?;
        // Mode bits do not tell: a read-only mount or a foreign owner refuses the write itself.
        let probe = directory.join(".writable");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|error| {
                format!(
                    "state directory {} unusable: not writable: {error}",
                    directory.display()
                )
            })?;
        Ok(directory)
    }
}

/// The arguments every daemon takes; flatten into the daemon's own clap parser.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonArgs {
    /// Configuration file [default: $SYNOS_CONFIG_DIR/<name>.toml or /etc/synos/<name>.toml;
    /// built-in defaults when that does not exist]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print where it came from, and exit (0 valid, 78 invalid)
    #[arg(long)]
    pub check_config: bool,
    /// Serve on this Unix socket (same as --set server.socket=PATH)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Override one configuration key, e.g. --set server.max_message_bytes=1048576 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    pub overrides: Vec<(String, String)>,
    /// Print this program's manual page (roff) and exit; the packages build theirs with it
    #[arg(long, hide = true)]
    pub manual_page: bool,
}

fn parse_override(argument: &str) -> Result<(String, String), String> {
    match argument.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "expected KEY=VALUE, e.g. server.drain_timeout_ms=1000, got {argument:?}"
        )),
    }
}

/// A configuration that cannot be used. Display is the one-line message operators see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Loads a daemon's configuration from its file (if any), environment and arguments.
pub fn load<S: Settings>(
    identity: DaemonIdentity,
    args: &DaemonArgs,
) -> Result<DaemonConfig<S>, ConfigError> {
    load_with(identity, args, Directories::from_environment())
}

/// [`load`] with explicit directories (tests use this to avoid touching the environment).
pub fn load_with<S: Settings>(
    identity: DaemonIdentity,
    args: &DaemonArgs,
    directories: Directories,
) -> Result<DaemonConfig<S>, ConfigError> {
    let (path, explicit) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (directories.config_file(identity.short_name), false),
    };
    let source = match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_file() => ConfigSource::File(path),
        Ok(_) => {
            return Err(ConfigError::new(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
            ConfigSource::BuiltInDefaults
        }
        Err(error) => {
            return Err(ConfigError::new(format!(
                "{}: cannot read: {error}",
                path.display()
            )));
        }
    };
    // Read the file ourselves so a TOML syntax error names the file, with line and column.
    let mut figment = Figment::new();
    if let ConfigSource::File(path) = &source {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::new(format!("{}: cannot read: {error}", path.display()))
        })?;
        figment = figment.merge(TomlFile {
            path: path.clone(),
            text,
        });
    }
    figment = figment.merge(Env::prefixed(&identity.env_prefix()).split("__"));
    if let Ok(filter) = std::env::var("RUST_LOG")
        && !filter.is_empty()
    {
        figment = figment.merge(CommandLine::single(
            "log.filter",
            &filter,
            "environment variable RUST_LOG",
        ));
    }
    let mut overrides = args.overrides.clone();
    if let Some(socket) = &args.socket {
        overrides.push(("server.socket".to_owned(), socket.display().to_string()));
    }
    figment = figment.merge(CommandLine::from_overrides(&overrides));

    let env_prefix = identity.env_prefix();
    let settings: S = figment
        .extract()
        .map_err(|error| describe_figment_error(&error, &figment, &env_prefix))?;
    let mut problems = settings.server().problems();
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&settings.log().filter) {
        problems.push(Problem::new(
            "log.filter",
            format!("not a valid log filter: {error}"),
        ));
    }
    problems.extend(settings.problems());
    if let Some(problem) = problems.first() {
        let origin = find_metadata(&figment, &problem.key).map_or_else(
            || "built-in defaults".to_owned(),
            |metadata| describe_origin(metadata, &problem.key, &env_prefix),
        );
        return Err(ConfigError::new(format!(
            "{origin}: key `{}`: {}",
            problem.key, problem.reason
        )));
    }
    settings
        .check_files(&directories)
        .map_err(ConfigError::new)?;
    Ok(DaemonConfig {
        settings,
        source,
        directories,
        identity,
        // Until `daemon::main` installs its own, nothing is ever reloaded.
        reloads: Reloads::channel().1,
    })
}

/// A TOML file read up front, so syntax errors are reported against its path.
struct TomlFile {
    path: PathBuf,
    text: String,
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", figment::Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data().map_err(|error| {
            // The toml crate's message spans several lines: "TOML parse error at line L,
            // column C", a source excerpt, then the reason. Keep the location and the reason.
            let text = error.to_string();
            let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
            let location = lines
                .next()
                .unwrap_or_default()
                .trim_start_matches("TOML parse error at ");
            let reason = lines
                .filter(|line| !line.contains('|') && !line.starts_with('^'))
                .collect::<Vec<_>>()
                .join(" ");
            figment::Error::from(format!("syntax error at {location}: {reason}"))
        })
    }
}

/// Overrides from the command line (`--set`, `--socket`) or a single special variable.
struct CommandLine {
    values: Dict,
    name: String,
}

impl CommandLine {
    fn from_overrides(overrides: &[(String, String)]) -> Self {
        let mut values = Dict::new();
        for (key, raw) in overrides {
            // "1000" becomes a number and "true" a boolean, as in TOML; anything else a string.
            let value = raw
                .parse::<Value>()
                .unwrap_or_else(|_| Value::from(raw.clone()));
            merge_into(&mut values, figment::util::nest(key, value));
        }
        Self {
            values,
            name: "command line".to_owned(),
        }
    }

    fn single(key: &str, value: &str, name: &str) -> Self {
        let mut values = Dict::new();
        merge_into(
            &mut values,
            figment::util::nest(key, Value::from(value.to_owned())),
        );
        Self {
            values,
            name: name.to_owned(),
        }
    }
}

fn merge_into(target: &mut Dict, nested: Value) {
    if let Value::Dict(_, dict) = nested {
        for (key, value) in dict {
            match (target.get_mut(&key), value) {
                (Some(Value::Dict(_, existing)), Value::Dict(tag, inner)) => {
                    merge_into(existing, Value::Dict(tag, inner));
                }
                (_, value) => {
                    target.insert(key, value);
                }
            }
        }
    }
}

impl Provider for CommandLine {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The provider that set `key` or, for keys inside arrays, the nearest enclosing key.
fn find_metadata<'figment>(figment: &'figment Figment, key: &str) -> Option<&'figment Metadata> {
    let mut key = key;
    loop {
        if let Some(metadata) = figment.find_metadata(key) {
            return Some(metadata);
        }
        key = &key[..key.rfind('.')?];
    }
}

/// "/etc/synos/x.toml", "environment variable SYNOS_X_SERVER__Y", or "command line".
fn describe_origin(metadata: &Metadata, key: &str, env_prefix: &str) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        _ if metadata.name.contains("environment variable(s)") => {
            format!(
                "environment variable {env_prefix}{}",
                key.replace('.', "__").to_uppercase()
            )
        }
        _ => metadata.name.to_string(),
    }
}

fn describe_figment_error(
    error: &figment::Error,
    figment: &Figment,
    env_prefix: &str,
) -> ConfigError {
    let key = error.path.join(".");
    let reason = describe_kind(&error.kind);
    // Syntax errors carry their own location and have no key.
    if key.is_empty() && error.metadata.is_none() {
        return ConfigError::new(reason);
    }
    let origin = error
        .metadata
        .as_ref()
        .or_else(|| find_metadata(figment, &key))
        .map_or_else(
            || "configuration".to_owned(),
            |metadata| describe_origin(metadata, &key, env_prefix),
        );
    if key.is_empty() {
        ConfigError::new(format!("{origin}: {reason}"))
    } else {
        ConfigError::new(format!("{origin}: key `{key}`: {reason}"))
    }
}

/// The reason, naming what was found only by its type, never its value.
fn describe_kind(kind: &figment::error::Kind) -> String {
    use figment::error::{Actual, Kind, OneOf};
    let type_of = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        Actual::Unit | Actual::Option => "nothing",
        _ => "a value of another type",
    };
    match kind {
        Kind::Message(message) => message.clone(),
        Kind::InvalidType(actual, expected) => {
            format!(
                "expected {}, found {}",
                describe_expected(expected),
                type_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => format!(
            "invalid {}: expected {expected}",
            type_of(actual)
                .trim_start_matches("a ")
                .trim_start_matches("an ")
        ),
        Kind::InvalidLength(length, expected) => {
            format!("has {length} elements, expected {expected}")
        }
        Kind::UnknownVariant(_, expected) => format!("unknown value, expected {}", OneOf(expected)),
        Kind::UnknownField(_, expected) => format!("unknown key (known here: {})", OneOf(expected)),
        Kind::MissingField(field) => format!("missing required key `{field}`"),
        Kind::DuplicateField(field) => format!("key `{field}` given twice"),
        other => other.to_string(),
    }
}

/// Rust type names in serde's "expected" text, said as a configuration author would.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct TestSettings {
        server: ServerConfig,
        log: LogConfig,
        api_key: String,
        limit: u32,
    }

    impl Settings for TestSettings {
        fn server(&self) -> &ServerConfig {
            &self.server
        }
        fn log(&self) -> &LogConfig {
            &self.log
        }
        fn problems(&self) -> Vec<Problem> {
            if self.limit > 100 {
                vec![Problem::new("limit", "must be at most 100")]
            } else {
                Vec::new()
            }
        }
    }

    const IDENTITY: DaemonIdentity = DaemonIdentity {
        short_name: "unit-test",
        binary: "synos-unit-test",
        version: "0",
    };

    fn directories(root: &Path) -> Directories {
        Directories {
            config: root.join("etc"),
            state: root.join("state"),
            runtime: root.join("run"),
            models: root.join("models"),
        }
    }

    fn load_file(
        text: &str,
        args: &DaemonArgs,
    ) -> (
        tempfile::TempDir,
        Result<DaemonConfig<TestSettings>, ConfigError>,
    ) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/unit-test.toml"), text).unwrap();
        let result = load_with(IDENTITY, args, directories(root.path()));
        (root, result)
    }

    #[test]
    fn no_file_means_built_in_defaults() {
        let root = tempfile::tempdir().unwrap();
        let config: DaemonConfig<TestSettings> =
            load_with(IDENTITY, &DaemonArgs::default(), directories(root.path())).unwrap();
        assert_eq!(config.source, ConfigSource::BuiltInDefaults);
        assert_eq!(config.settings.server, ServerConfig::default());
        assert_eq!(config.socket_path(), root.path().join("run/unit-test.sock"));
        assert_eq!(
            config.state_directory(),
            root.path().join("state/unit-test")
        );
    }

    #[test]
    fn an_explicit_missing_file_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let args = DaemonArgs {
            config: Some(root.path().join("nope.toml")),
            ..DaemonArgs::default()
        };
        let error =
            load_with::<TestSettings>(IDENTITY, &args, directories(root.path())).unwrap_err();
        assert!(
            error.to_string().contains("nope.toml: cannot read"),
            "{error}"
        );
    }

    #[test]
    fn file_values_are_used_and_command_line_wins() {
        let args = DaemonArgs {
            overrides: vec![("limit".into(), "7".into())],
            socket: Some("/tmp/x.sock".into()),
            ..DaemonArgs::default()
        };
        let (_root, result) = load_file("limit = 3\n[server]\nmax_message_bytes = 2048\n", &args);
        let config = result.unwrap();
        assert!(matches!(config.source, ConfigSource::File(_)));
        assert_eq!(config.settings.limit, 7);
        assert_eq!(config.settings.server.max_message_bytes, 2048);
        assert_eq!(config.socket_path(), PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let (_root, result) = load_file("[server]\nsockett = \"/x\"\n", &DaemonArgs::default());
        let message = result.unwrap_err().to_string();
        assert!(message.contains("unit-test.toml"), "{message}");
        assert!(message.contains("sockett"), "{message}");
        assert!(!message.contains('\n'), "not one line: {message}");
    }

    #[test]
    fn bad_value_names_key_without_echoing_it() {
        let (_root, result) = load_file("api_key = 12345678\n", &DaemonArgs::default());
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("unit-test.toml: key `api_key`"),
            "{message}"
        );
        assert!(
            message.contains("expected a string, found an integer"),
            "{message}"
        );
        assert!(!message.contains("12345678"), "value echoed: {message}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let (_root, result) = load_file("limit = = 3\n", &DaemonArgs::default());
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("unit-test.toml") && message.contains("line 1"),
            "{message}"
        );
    }

    #[test]
    fn validation_problems_name_their_source() {
        let (_root, result) = load_file("limit = 101\n", &DaemonArgs::default());
        let message = result.unwrap_err().to_string();
        assert!(
            message.ends_with("unit-test.toml: key `limit`: must be at most 100"),
            "{message}"
        );

        let args = DaemonArgs {
            overrides: vec![("server.tcp_listen".into(), "10.1.2.3:80".into())],
            ..DaemonArgs::default()
        };
        let (_root, result) = load_file("", &args);
        let message = result.unwrap_err().to_string();
        assert!(
            message.starts_with("command line: key `server.tcp_listen`: must be a loopback"),
            "{message}"
        );
    }

    #[test]
    fn malformed_override_is_rejected_by_the_parser() {
        assert!(parse_override("novalue").is_err());
        assert!(parse_override("=3").is_err());
        assert_eq!(
            parse_override("a.b=c=d").unwrap(),
            ("a.b".into(), "c=d".into())
        );
    }
}
