//! Logging: structured fields to journald under systemd, human text on stderr otherwise.
//!
//! Secrets never reach a log line: configuration errors name keys, not values, and service
//! code logs identifiers and sizes, never request content or credentials.

use std::os::fd::AsFd as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::identity::DaemonIdentity;

/// Libraries that log at "info" what an operator reads as debugging, and the level they get
/// unless the configured filter names them itself. llama.cpp reports every tensor and buffer
/// of every model load and context at info.
const QUIETER_LIBRARIES: [(&str, &str); 1] = [("llama-cpp-2", "warn")];

/// The configured filter, with the quieter libraries' levels added where it does not name them.
fn effective_filter(filter: &str) -> String {
    let mut effective = filter.to_owned();
    for (target, level) in QUIETER_LIBRARIES {
        if !filter.contains(target) {
            effective.push_str(&format!(",{target}={level}"));
        }
    }
    effective
}

/// Installs the global subscriber with a `RUST_LOG`-style `filter` (already validated).
pub fn init(identity: DaemonIdentity, filter: &str) {
    let filter =
        EnvFilter::try_new(effective_filter(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journald) => {
                registry
                    .with(journald.with_syslog_identifier(identity.binary.to_owned()))
                    .init();
                return;
            }
            Err(error) => {
                // Fall through to stderr, which systemd also forwards to the journal.
                eprintln!(
                    "{}: journald unavailable ({error}); logging to stderr",
                    identity.binary
                );
            }
        }
    }
    let use_colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(use_colour)
                .with_target(false),
        )
        .init();
}

/// True when stderr is the journal stream systemd connected, as `JOURNAL_STREAM` documents:
/// the variable alone is not enough, since children of a service inherit it with other stderr.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = value.to_str().and_then(|text| text.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    device
        .parse::<u64>()
        .is_ok_and(|device| device == stat.st_dev)
        && inode.parse::<u64>().is_ok_and(|inode| inode == stat.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quieter_libraries_are_added_unless_named() {
        assert_eq!(effective_filter("info"), "info,llama-cpp-2=warn");
        assert_eq!(
            effective_filter("debug,llama-cpp-2=debug"),
            "debug,llama-cpp-2=debug"
        );
        assert!(EnvFilter::try_new(effective_filter("info")).is_ok());
    }
}
