//! Who a daemon is: the names that the public contract derives sockets, configs and state from.

use std::path::{Path, PathBuf};

/// Built into every SynOS binary from the commit it was compiled from, or "unknown".
pub const GIT_REVISION: &str = env!("SYNOS_GIT_REVISION");

/// A daemon's fixed names. `short_name` keys every path: `/etc/synos/<short>.toml`,
/// `/var/lib/synos/<short>`, `/run/synos/<short>.sock`, env prefix `SYNOS_<SHORT>_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonIdentity {
    /// e.g. "llm-router".
    pub short_name: &'static str,
    /// e.g. "synos-llm-router": binary, package and unit name.
    pub binary: &'static str,
    /// The daemon's package version.
    pub version: &'static str,
}

impl DaemonIdentity {
    /// Prefix of the environment variables that override configuration keys, e.g.
    /// `SYNOS_LLM_ROUTER_` (then `SERVER__TCP_LISTEN` for `server.tcp_listen`).
    pub fn env_prefix(&self) -> String {
        format!(
            "SYNOS_{}_",
            self.short_name.replace('-', "_").to_uppercase()
        )
    }
}

/// The five daemons, in the order `synosctl status` lists them: `(short name, binary)`.
pub const ALL_DAEMONS: [(&str, &str); 5] = [
    ("llm-router", "synos-llm-router"),
    ("memory", "synos-memory"),
    ("hwaccel", "synos-hwaccel"),
    ("policy", "synos-policy"),
    ("doctor", "synos-doctor"),
];

/// The binary name of a daemon's short name, e.g. "memory" → "synos-memory".
pub fn daemon_binary(short_name: &str) -> Option<&'static str> {
    ALL_DAEMONS
        .iter()
        .find(|(short, _)| *short == short_name)
        .map(|(_, binary)| *binary)
}

/// One of the `SYNOS_*_DIR` variables of the contract: its name, the directory it replaces,
/// and what that directory holds (for manual pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryVariable {
    /// e.g. `SYNOS_CONFIG_DIR`.
    pub name: &'static str,
    /// The directory used when the variable is unset or empty, e.g. `/etc/synos`.
    pub default: &'static str,
    /// What the directory holds, e.g. "the configuration files".
    pub holds: &'static str,
}

/// `SYNOS_CONFIG_DIR`: where `<short>.toml` lives.
pub const CONFIG_DIR: DirectoryVariable = DirectoryVariable {
    name: "SYNOS_CONFIG_DIR",
    default: "/etc/synos",
    holds: "the configuration files",
};
/// `SYNOS_STATE_DIR`: the parent of each daemon's state directory.
pub const STATE_DIR: DirectoryVariable = DirectoryVariable {
    name: "SYNOS_STATE_DIR",
    default: "/var/lib/synos",
    holds: "the daemons' state directories",
};
/// `SYNOS_RUNTIME_DIR`: where the sockets live.
pub const RUNTIME_DIR: DirectoryVariable = DirectoryVariable {
    name: "SYNOS_RUNTIME_DIR",
    default: "/run/synos",
    holds: "the sockets",
};
/// `SYNOS_MODEL_DIR`: where the model packages install their models, one directory each.
pub const MODEL_DIR: DirectoryVariable = DirectoryVariable {
    name: "SYNOS_MODEL_DIR",
    default: "/usr/share/synos/models",
    holds: "the shipped models",
};
/// Every `SYNOS_*_DIR` variable.
pub const DIRECTORY_VARIABLES: [DirectoryVariable; 4] =
    [CONFIG_DIR, STATE_DIR, RUNTIME_DIR, MODEL_DIR];

/// The base directories of the contract, overridable for development and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directories {
    /// Where `<short>.toml` lives: [`CONFIG_DIR`].
    pub config: PathBuf,
    /// Parent of each daemon's state directory: [`STATE_DIR`].
    pub state: PathBuf,
    /// Where the sockets live: [`RUNTIME_DIR`].
    pub runtime: PathBuf,
    /// Where the model packages install their models, one directory each: [`MODEL_DIR`].
    pub models: PathBuf,
}

impl Directories {
    /// Reads the `SYNOS_*_DIR` variables; an unset or empty one means the default.
    pub fn from_environment() -> Self {
        Self::resolve(|variable| {
            std::env::var_os(variable.name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        })
    }

    /// The directories of an installed system, whatever the environment says.
    pub fn defaults() -> Self {
        Self::resolve(|_| None)
    }

    fn resolve(overridden: impl Fn(DirectoryVariable) -> Option<PathBuf>) -> Self {
        let read = |variable: DirectoryVariable| {
            overridden(variable).unwrap_or_else(|| PathBuf::from(variable.default))
        };
        Self {
            config: read(CONFIG_DIR),
            state: read(STATE_DIR),
            runtime: read(RUNTIME_DIR),
            models: read(MODEL_DIR),
        }
    }

    /// The socket a daemon serves on unless its configuration says otherwise.
    pub fn socket_path(&self, short_name: &str) -> PathBuf {
        socket_path(&self.runtime, short_name)
    }

    /// The configuration file a daemon reads unless `--config` names another.
    pub fn config_file(&self, short_name: &str) -> PathBuf {
        self.config.join(format!("{short_name}.toml"))
    }

    /// The daemon's own state directory (`StateDirectory=synos/<short>` under systemd).
    pub fn state_directory(&self, short_name: &str) -> PathBuf {
        self.state.join(short_name)
    }
}

/// `<runtime directory>/<short name>.sock`, the contract's socket path.
pub fn socket_path(runtime_directory: &Path, short_name: &str) -> PathBuf {
    runtime_directory.join(format!("{short_name}.sock"))
}

/// Whether `path` is a Unix socket (not following symlinks).
pub fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
}

/// `--version --verbose` text for every SynOS binary: workspace version and git revision.
pub fn long_version() -> String {
    format!("{} (git {GIT_REVISION})", env!("CARGO_PKG_VERSION"))
}
