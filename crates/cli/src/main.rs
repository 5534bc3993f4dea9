//! `synosctl`: one command-line client for every SynOS daemon.

mod commands;
mod llm;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Talks to the SynOS daemons over their Unix sockets.
#[derive(Debug, Parser)]
#[command(name = "synosctl", version, long_version = synos_common::identity::long_version())]
pub(crate) struct Cli {
    /// Directory holding the daemons' sockets
    #[arg(
        long,
        global = true,
        env = "SYNOS_RUNTIME_DIR",
        default_value = "/run/synos",
        value_name = "DIR"
    )]
    runtime_dir: PathBuf,
    /// How long to wait for each daemon, in seconds
    #[arg(long, global = true, default_value = "3", value_name = "SECONDS", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every daemon's health, version, uptime and socket; exit 1 unless all are SERVING
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// The LLM router
    #[command(subcommand)]
    Llm(LlmCommand),
    /// Long-term memory
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// Hardware knowledge
    #[command(subcommand)]
    Hw(HwCommand),
    /// The security policy
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The doctor
    #[command(subcommand)]
    Doctor(DoctorCommand),
}

#[derive(Debug, Subcommand)]
enum LlmCommand {
    /// Ask a model: streams the answer to stdout, then who served it to stderr
    Chat {
        /// The route to use
        #[arg(long, default_value = "default")]
        route: String,
        /// Upper bound on generated tokens
        #[arg(long, value_name = "N")]
        max_tokens: Option<u32>,
        /// Wait for the whole answer and print it as JSON with provider, model, attempts,
        /// usage and cost
        #[arg(long)]
        json: bool,
        /// What to ask
        #[arg(required = true, value_name = "PROMPT")]
        prompt: Vec<String>,
    },
    /// List the configured providers and their state
    Providers {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Today's tokens, cost and budgets per route, principal and provider
    Usage {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Bearer keys for the OpenAI-compatible HTTP endpoint
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once, alone on the last line
    Create {
        /// Whom requests with the key are for (budgets apply to it)
        #[arg(long)]
        principal: String,
        /// A route the key may use (repeatable); all routes when none is given
        #[arg(long = "route", value_name = "ROUTE")]
        routes: Vec<String>,
    },
    /// List the keys (never their secrets)
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once
    Revoke {
        /// The key's id, as `list` shows it
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum MemoryCommand {
    /// Show the memory store's state directory and free space
    Stats {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum HwCommand {
    /// Show platform, CPU and memory
    Info {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Ask whether a principal may perform an action on a resource; exit 0 allow, 1 deny
    Check {
        /// Who asks, as a Cedar entity uid, e.g. 'User::"alice"'
        #[arg(long)]
        principal: String,
        /// The action, e.g. llm.chat
        #[arg(long)]
        action: String,
        /// What is acted on, as a Cedar entity uid, e.g. 'Route::"default"'
        #[arg(long)]
        resource: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DoctorCommand {
    /// Check every daemon now and report
    Report {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text:?}"))?;
    if !(0.001..=3600.0).contains(&seconds) {
        return Err("must be between 0.001 and 3600 seconds".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("synosctl: cannot start: {error}");
            return ExitCode::from(synos_common::exit::SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Status { json } => commands::status(&cli, *json).await,
            Command::Llm(LlmCommand::Chat {
                route,
                max_tokens,
                json,
                prompt,
            }) => llm::chat(&cli, route, prompt, *max_tokens, *json).await,
            Command::Llm(LlmCommand::Providers { json }) => llm::providers(&cli, *json).await,
            Command::Llm(LlmCommand::Usage { json }) => llm::usage(&cli, *json).await,
            Command::Llm(LlmCommand::Keys(KeysCommand::Create { principal, routes })) => {
                llm::keys_create(&cli, principal, routes).await
            }
            Command::Llm(LlmCommand::Keys(KeysCommand::List { json })) => {
                llm::keys_list(&cli, *json).await
            }
            Command::Llm(LlmCommand::Keys(KeysCommand::Revoke { id })) => {
                llm::keys_revoke(&cli, id).await
            }
            Command::Memory(MemoryCommand::Stats { json }) => {
                commands::memory_stats(&cli, *json).await
            }
            Command::Hw(HwCommand::Info { json }) => commands::hw_info(&cli, *json).await,
            Command::Policy(PolicyCommand::Check {
                principal,
                action,
                resource,
                json,
            }) => commands::policy_check(&cli, principal, action, resource, *json).await,
            Command::Doctor(DoctorCommand::Report { json }) => {
                commands::doctor_report(&cli, *json).await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(error.exit_code)
        }
    }
}
