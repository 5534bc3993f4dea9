//! `synos-policy`: parses arguments and runs the policy daemon.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

/// The security gate: authorization decisions for every SynOS action.
#[derive(Debug, Parser)]
#[command(name = "synos-policy", version, long_version = synos_common::identity::long_version())]
struct Arguments {
    #[command(flatten)]
    daemon: synos_common::config::DaemonArgs,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    synos_common::daemon::main(
        synos_policy::IDENTITY,
        Arguments::command,
        &arguments.daemon,
        synos_policy::run,
    )
}
