//! `synos-hwaccel`: parses arguments and runs the hardware daemon.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

/// Knows the machine, picks the resource tier, leases accelerators.
#[derive(Debug, Parser)]
#[command(name = "synos-hwaccel", version, long_version = synos_common::identity::long_version())]
struct Arguments {
    #[command(flatten)]
    daemon: synos_common::config::DaemonArgs,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    synos_common::daemon::main(
        synos_hwaccel::IDENTITY,
        Arguments::command,
        &arguments.daemon,
        synos_hwaccel::run,
    )
}
