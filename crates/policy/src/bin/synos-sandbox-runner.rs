//! `synos-sandbox-runner`: started by systemd, confined, for one connection to a sandbox socket
//! (the connection is its standard input and output); runs the one tool asked for.

use std::os::fd::AsFd as _;
use std::process::ExitCode;

use clap::Parser;
use synos_common::exit;
use synos_common::identity::DaemonIdentity;

/// Runs one tool for the policy daemon, inside a sandbox unit; not for interactive use.
#[derive(Debug, Parser)]
#[command(name = "synos-sandbox-runner", version)]
struct Arguments {
    /// This sandbox grants network access: only tools with `network = true` run here.
    #[arg(long)]
    network: bool,
    #[command(flatten)]
    daemon: synos_common::config::DaemonArgs,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let identity = DaemonIdentity {
        binary: "synos-sandbox-runner",
        ..synos_policy::IDENTITY
    };
    let config = match synos_common::config::load::<synos_policy::Config>(
        synos_policy::IDENTITY,
        &arguments.daemon,
    ) {
        Ok(config) => {
            synos_common::telemetry::init(identity, &config.settings.log.filter);
            config
        }
        Err(error) => {
            synos_common::telemetry::init(identity, "info");
            tracing::error!("invalid configuration, so nothing runs: {error}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let connection = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::os::unix::net::UnixStream::from)
        .and_then(|stream| {
            stream.set_nonblocking(true)?;
            Ok(stream)
        });
    let connection = match connection {
        Ok(connection) => connection,
        Err(error) => {
            tracing::error!("standard input is not the connection's socket: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the runtime: {error}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let settings = config.settings;
    let served = runtime.block_on(async {
        let mut connection = tokio::net::UnixStream::from_std(connection)
            .map_err(|error| format!("the connection: {error}"))?;
        synos_policy::runner::serve(
            &mut connection,
            &settings.tools,
            &settings.sandbox,
            arguments.network,
        )
        .await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            tracing::error!("the connection failed: {problem}");
            ExitCode::from(exit::SOFTWARE)
        }
    }
}
