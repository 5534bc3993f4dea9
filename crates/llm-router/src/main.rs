//! `synos-llm-router`: parses arguments and runs the router daemon.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

/// Routes chat completions and embeddings across LLM providers with fallback.
#[derive(Debug, Parser)]
#[command(name = "synos-llm-router", version, long_version = synos_common::identity::long_version())]
struct Arguments {
    #[command(flatten)]
    daemon: synos_common::config::DaemonArgs,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    synos_common::daemon::main(
        synos_llm_router::IDENTITY,
        Arguments::command,
        &arguments.daemon,
        synos_llm_router::run,
    )
}
