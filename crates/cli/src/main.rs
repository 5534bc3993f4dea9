//! `synosctl`: one command-line client for every SynOS daemon.

mod ask;
mod commands;
mod doctor;
mod hardware;
mod llm;
mod memory;
mod output;
mod policy;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};
use synos_common::identity::RUNTIME_DIR;
use synos_proto::llm::v1::ProviderAction;

/// Talks to the SynOS daemons over their Unix sockets.
#[derive(Debug, Parser)]
#[command(name = "synosctl", version, long_version = synos_common::identity::long_version())]
pub(crate) struct Cli {
    /// Directory holding the daemons' sockets
    #[arg(
        long,
        global = true,
        env = RUNTIME_DIR.name,
        default_value = RUNTIME_DIR.default,
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
    /// Ask a question: recall memories, screen it, route it (streamed), redact the answer,
    /// remember the exchange, and say who answered, how, with which memories, at what cost
    Ask {
        /// Whose memories to recall and whom the request is for [default: the login name]
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The conversation: its memories are recalled, and the exchange is remembered in it
        /// (else in the user's memories)
        #[arg(long, value_name = "CHAT")]
        chat: Option<String>,
        /// The route to use
        #[arg(long, default_value = "default")]
        route: String,
        /// Upper bound on generated tokens
        #[arg(long, value_name = "N")]
        max_tokens: Option<u32>,
        /// Sample with this seed, so the same question gets the same answer from the same model
        #[arg(long, value_name = "N")]
        seed: Option<i64>,
        /// Wait for the whole answer and print it as JSON with provider, attempts, usage,
        /// memories, screening and redactions
        #[arg(long)]
        json: bool,
        /// The question
        #[arg(required = true, value_name = "QUESTION")]
        question: Vec<String>,
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
    /// The audit log of every policy decision
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The doctor
    #[command(subcommand)]
    Doctor(DoctorCommand),
    /// Print the completion script for SHELL (the synos-cli package installs bash, zsh and
    /// fish ones)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write synosctl's manual pages (one for each subcommand) into DIRECTORY
    #[command(hide = true)]
    ManualPages {
        /// Where to write them
        directory: PathBuf,
    },
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
    /// Take a provider out of rotation, cool it for a while, or put it back
    #[command(subcommand)]
    Provider(ProviderCommand),
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
enum ProviderCommand {
    /// No new requests until it is restored; requests in flight finish
    Drain {
        /// The provider, as `synosctl llm providers` lists it
        name: String,
        /// Print the provider's new state as JSON
        #[arg(long)]
        json: bool,
    },
    /// Skip it for a while, as after a rate limit
    Cool {
        /// The provider, as `synosctl llm providers` lists it
        name: String,
        /// How long, e.g. 90s, 10m (the router caps it)
        #[arg(long = "for", value_name = "DURATION", default_value = "60s", value_parser = commands::parse_duration)]
        cool_for: Duration,
        /// Print the provider's new state as JSON
        #[arg(long)]
        json: bool,
    },
    /// Back into rotation: clears a drain, a cooldown and an open circuit breaker
    Restore {
        /// The provider, as `synosctl llm providers` lists it
        name: String,
        /// Print the provider's new state as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once, alone on the last line
    Create {
        /// Whom requests with the key are for (budgets apply to it); you when left out. A key
        /// for someone else needs policy's llm.manage
        #[arg(long, default_value = "")]
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
    /// Store a memory; prints the id of the memory that holds it
    Remember {
        /// global, user:<id> or chat:<id>
        #[arg(long, default_value = "global")]
        scope: String,
        /// fact, preference, decision, event, note, task or summary
        #[arg(long, default_value = "note")]
        kind: String,
        /// How much it matters, 0 to 1 [default: 0.5]
        #[arg(long)]
        importance: Option<f32>,
        /// Forget it after this long, e.g. 30d, 12h, "1h 30m"
        #[arg(long, value_name = "DURATION", value_parser = commands::parse_duration)]
        expires: Option<Duration>,
        /// Who or what it comes from
        #[arg(long, default_value = "synosctl")]
        source: String,
        /// A label, KEY=VALUE (repeatable)
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = memory::parse_label)]
        metadata: Vec<(String, String)>,
        /// What to remember
        #[arg(required = true, value_name = "TEXT")]
        text: Vec<String>,
    },
    /// Search memories of the given scopes, best first
    Recall {
        /// A scope to search (repeatable) [default: global]
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// How many results at most
        #[arg(long, default_value = "10")]
        limit: u32,
        /// hybrid (full text and vectors), keyword or vector
        #[arg(long, default_value = "hybrid")]
        mode: String,
        /// Only this kind (repeatable)
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// Print JSON: an array of objects with id, text, scope, kind, score, …
        #[arg(long)]
        json: bool,
        /// What to look for
        #[arg(required = true, value_name = "QUERY")]
        query: Vec<String>,
    },
    /// Show one memory with its history
    Get {
        /// The memory's id
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List memories of the given scopes, newest first
    List {
        /// A scope to list (repeatable) [default: global]
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// How many at most
        #[arg(long, default_value = "50")]
        limit: u32,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete one memory, or every memory of a scope
    Forget {
        /// The memory's id
        #[arg(required_unless_present = "scope", conflicts_with = "scope")]
        id: Option<String>,
        /// Forget everything in this scope instead
        #[arg(long)]
        scope: Option<String>,
    },
    /// Write memories as JSON Lines to FILE (or stdout), every field included
    Export {
        /// Only this scope (repeatable) [default: every scope]
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Where to write; stdout when absent
        file: Option<PathBuf>,
    },
    /// Read memories from a JSON Lines export (`-` for stdin); importing twice changes nothing
    Import {
        /// The export to read
        file: PathBuf,
    },
    /// Show counts, the embedding model, the database and free space
    Stats {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum HwCommand {
    /// Show platform, CPU and its features, memory, disks, GPUs and NPUs, virtualisation and
    /// cgroup limits, and what could not be read
    Info {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show the resource tier (minimal, standard or full) and why
    Tier {
        /// Print JSON (`tier` and `reasons`)
        #[arg(long)]
        json: bool,
    },
    /// Watch CPU, memory, load, pressure, disks and accelerators live, one sample per interval
    Top {
        /// Stop after N samples [default: until interrupted]
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Print each sample as one line of JSON
        #[arg(long)]
        json: bool,
    },
    /// List accelerator leases in force
    Leases {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Ask whether a principal may perform an action on a resource; exit 0 allow, 1 deny
    Check {
        /// Who asks, as a Cedar entity uid, e.g. 'User::"alice"'; you (as the socket proves)
        /// when left out. Only root and the SynOS services may ask for someone else
        #[arg(long, default_value = "")]
        principal: String,
        /// The action, e.g. llm.chat
        #[arg(long)]
        action: String,
        /// What is acted on, as a Cedar entity uid, e.g. 'Route::"default"' (may be left out
        /// when the action names it: tool.exec:ls, memory.read:user:alice)
        #[arg(long, default_value = "")]
        resource: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Score a prompt for injection; exit 1 when it would be blocked
    Screen {
        /// The text, or - for standard input
        text: String,
        /// Print JSON: score, verdict, rules
        #[arg(long)]
        json: bool,
    },
    /// Print a text with secrets and personal data replaced
    Redact {
        /// The text, or - for standard input
        text: String,
        /// Print JSON: text and spans (kind, start, end as byte offsets)
        #[arg(long)]
        json: bool,
    },
    /// Re-read /etc/synos/policy.d; an invalid set is refused and the running one kept
    Reload,
    /// Run a configured tool in the sandbox, as a principal; exits with the tool's status
    Exec {
        /// Who runs it, as a Cedar entity uid; you (as the socket proves) when left out. Only
        /// root and the SynOS services may name someone else
        #[arg(long, default_value = "")]
        principal: String,
        /// The tool's name in policy.toml
        tool: String,
        /// Its arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        arguments: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; exit 0 intact, 1 tampered (naming the first bad record)
    Verify {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// The newest records
    Tail {
        /// How many
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Print JSON Lines
        #[arg(long)]
        json: bool,
    },
    /// Records matching exact filters
    Search {
        /// authorize, screen, redact, tool-check, exec, reload, rate-limit
        #[arg(long, default_value = "")]
        kind: String,
        /// A principal, e.g. 'User::"alice"'
        #[arg(long, default_value = "")]
        principal: String,
        /// An action, e.g. tool.exec:ls
        #[arg(long, default_value = "")]
        action: String,
        /// At most this many, newest
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
        /// Print JSON Lines
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DoctorCommand {
    /// The overall state (ok or degraded), every watched daemon and check, and the open
    /// incidents; exit 1 unless ok
    Report {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Incidents, newest first, open and recovered (kept across the doctor's restarts)
    Incidents {
        /// Only open ones
        #[arg(long)]
        open: bool,
        /// At most N
        #[arg(long, short = 'n', default_value = "20", value_name = "N")]
        limit: u32,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Actions the doctor may not take alone, waiting for approval, oldest first
    Pending {
        /// Also the newest 100 already approved or denied
        #[arg(long)]
        all: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending action, which the doctor then carries out (authorized and audited
    /// by the policy daemon); exit 1 if carrying it out failed
    Approve {
        /// The pending action's id, as `synosctl doctor pending` lists it
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Deny a pending action (authorized and audited by the policy daemon)
    Deny {
        /// The pending action's id, as `synosctl doctor pending` lists it
        id: String,
        /// Why, for the record
        #[arg(long, default_value = "")]
        reason: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

async fn memory_command(cli: &Cli, command: &MemoryCommand) -> commands::CommandResult {
    match command {
        MemoryCommand::Remember {
            scope,
            kind,
            importance,
            expires,
            source,
            metadata,
            text,
        } => {
            let what = memory::Remember {
                scope,
                kind,
                importance: *importance,
                expires: *expires,
                source,
                metadata,
                text,
            };
            memory::remember(cli, what).await
        }
        MemoryCommand::Recall {
            scopes,
            limit,
            mode,
            kinds,
            json,
            query,
        } => memory::recall(cli, scopes, *limit, mode, kinds, query, *json).await,
        MemoryCommand::Get { id, json } => memory::get(cli, id, *json).await,
        MemoryCommand::List {
            scopes,
            limit,
            json,
        } => memory::list(cli, scopes, *limit, *json).await,
        MemoryCommand::Forget { id, scope } => {
            memory::forget(cli, id.as_deref(), scope.as_deref()).await
        }
        MemoryCommand::Export { scopes, file } => {
            memory::export(cli, scopes, file.as_deref()).await
        }
        MemoryCommand::Import { file } => memory::import(cli, file).await,
        MemoryCommand::Stats { json } => memory::stats(cli, *json).await,
    }
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
            Command::Ask {
                user,
                chat,
                route,
                max_tokens,
                seed,
                json,
                question,
            } => {
                ask::ask(
                    &cli,
                    ask::Question {
                        words: question,
                        user: user.as_deref(),
                        chat: chat.as_deref(),
                        route,
                        max_tokens: *max_tokens,
                        seed: *seed,
                        json: *json,
                    },
                )
                .await
            }
            Command::Llm(LlmCommand::Chat {
                route,
                max_tokens,
                json,
                prompt,
            }) => llm::chat(&cli, route, prompt, *max_tokens, *json).await,
            Command::Llm(LlmCommand::Providers { json }) => llm::providers(&cli, *json).await,
            Command::Llm(LlmCommand::Usage { json }) => llm::usage(&cli, *json).await,
            Command::Llm(LlmCommand::Provider(ProviderCommand::Drain { name, json })) => {
                llm::set_provider_state(&cli, name, ProviderAction::Drain, None, *json).await
            }
            Command::Llm(LlmCommand::Provider(ProviderCommand::Cool {
                name,
                cool_for,
                json,
            })) => {
                llm::set_provider_state(&cli, name, ProviderAction::Cool, Some(*cool_for), *json)
                    .await
            }
            Command::Llm(LlmCommand::Provider(ProviderCommand::Restore { name, json })) => {
                llm::set_provider_state(&cli, name, ProviderAction::Restore, None, *json).await
            }
            Command::Llm(LlmCommand::Keys(KeysCommand::Create { principal, routes })) => {
                llm::keys_create(&cli, principal, routes).await
            }
            Command::Llm(LlmCommand::Keys(KeysCommand::List { json })) => {
                llm::keys_list(&cli, *json).await
            }
            Command::Llm(LlmCommand::Keys(KeysCommand::Revoke { id })) => {
                llm::keys_revoke(&cli, id).await
            }
            Command::Memory(command) => memory_command(&cli, command).await,
            Command::Hw(HwCommand::Info { json }) => hardware::info(&cli, *json).await,
            Command::Hw(HwCommand::Tier { json }) => hardware::tier(&cli, *json).await,
            Command::Hw(HwCommand::Top { count, json }) => hardware::top(&cli, *count, *json).await,
            Command::Hw(HwCommand::Leases { json }) => hardware::leases(&cli, *json).await,
            Command::Policy(PolicyCommand::Check {
                principal,
                action,
                resource,
                json,
            }) => commands::policy_check(&cli, principal, action, resource, *json).await,
            Command::Policy(PolicyCommand::Screen { text, json }) => {
                policy::screen(&cli, text, *json).await
            }
            Command::Policy(PolicyCommand::Redact { text, json }) => {
                policy::redact(&cli, text, *json).await
            }
            Command::Policy(PolicyCommand::Reload) => policy::reload(&cli).await,
            Command::Policy(PolicyCommand::Exec {
                principal,
                tool,
                arguments,
                json,
            }) => policy::exec(&cli, principal, tool, arguments, *json).await,
            Command::Audit(AuditCommand::Verify { json }) => {
                policy::audit_verify(&cli, *json).await
            }
            Command::Audit(AuditCommand::Tail { lines, json }) => {
                let request = synos_proto::policy::v1::QueryAuditRequest {
                    limit: *lines,
                    ..Default::default()
                };
                policy::audit_query(&cli, request, *json).await
            }
            Command::Audit(AuditCommand::Search {
                kind,
                principal,
                action,
                lines,
                json,
            }) => {
                let request = synos_proto::policy::v1::QueryAuditRequest {
                    limit: *lines,
                    kind: kind.clone(),
                    principal: principal.clone(),
                    action: action.clone(),
                    ..Default::default()
                };
                policy::audit_query(&cli, request, *json).await
            }
            Command::Doctor(DoctorCommand::Report { json }) => doctor::report(&cli, *json).await,
            Command::Doctor(DoctorCommand::Incidents { open, limit, json }) => {
                doctor::incidents(&cli, *open, *limit, *json).await
            }
            Command::Doctor(DoctorCommand::Pending { all, json }) => {
                doctor::pending(&cli, *all, *json).await
            }
            Command::Doctor(DoctorCommand::Approve { id, json }) => {
                doctor::decide(&cli, id, None, *json).await
            }
            Command::Doctor(DoctorCommand::Deny { id, reason, json }) => {
                doctor::decide(&cli, id, Some(reason), *json).await
            }
            Command::Completions { shell } => Ok(print_completions(*shell)),
            Command::ManualPages { directory } => write_manual_pages(directory),
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

fn print_completions(shell: clap_complete::Shell) -> u8 {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "synosctl", &mut std::io::stdout());
    synos_common::exit::OK
}

/// What `synosctl`'s manual says of its environment and exit statuses.
const ENVIRONMENT: &[(&str, &str)] = &[(
    RUNTIME_DIR.name,
    "Directory of the daemons' sockets, instead of /run/synos (--runtime-dir wins).",
)];
const EXIT_STATUSES: &[(u8, &str)] = &[
    (synos_common::exit::OK, "Success."),
    (
        synos_common::exit::FAILURE,
        "The command failed, naming the daemon and why, or its answer is no: a daemon is not \
         serving (status), a policy check denies, a prompt would be blocked, the audit log \
         does not verify.",
    ),
    (synos_common::exit::USAGE, "Bad command-line usage."),
    (
        synos_common::exit::UNAVAILABLE,
        "A daemon could not be reached: not running, or its socket is not readable by you \
         (the sockets are for root and group synos).",
    ),
    (
        synos_common::exit::SOFTWARE,
        "An internal error (a bug in SynOS).",
    ),
];

fn write_manual_pages(directory: &std::path::Path) -> commands::CommandResult {
    let pages = synos_common::manual::client_pages(Cli::command(), ENVIRONMENT, EXIT_STATUSES);
    for page in pages {
        page.write_to(directory).map_err(|error| {
            commands::CliError::failure(&format!(
                "synosctl: cannot write {}: {error}",
                directory.join(&page.file_name).display()
            ))
        })?;
    }
    Ok(synos_common::exit::OK)
}
