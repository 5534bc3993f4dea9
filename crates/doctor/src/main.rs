//! `synos-doctor`: parses arguments and runs the doctor daemon.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

/// Watches every SynOS daemon and reports what it sees.
#[derive(Debug, Parser)]
#[command(name = "synos-doctor", version, long_version = synos_common::identity::long_version())]
struct Arguments {
    #[command(flatten)]
    daemon: synos_common::config::DaemonArgs,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    synos_common::daemon::main(
        synos_doctor::IDENTITY,
        Arguments::command,
        &arguments.daemon,
        synos_doctor::run,
    )
}
