//! `synos-memory`: parses arguments and runs the memory daemon.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

/// Long-term agent memory: scoped, searchable, durable.
#[derive(Debug, Parser)]
#[command(name = "synos-memory", version, long_version = synos_common::identity::long_version())]
struct Arguments {
    #[command(flatten)]
    daemon: synos_common::config::DaemonArgs,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    synos_common::daemon::main(
        synos_memory::IDENTITY,
        Arguments::command,
        &arguments.daemon,
        synos_memory::run,
    )
}
