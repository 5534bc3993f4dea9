//! What each `synosctl` subcommand asks which daemon, and how it shows the answer.

use std::fmt;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use synos_common::client;
use synos_common::exit;
use synos_common::identity::{ALL_DAEMONS, daemon_binary, socket_path};
use synos_proto::admin::v1::GetInfoRequest;
use synos_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::Cli;
use crate::output::{emit, emit_json, table, uptime};

/// A failed command: one line for stderr and the exit status.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    pub(crate) exit_code: u8,
}

impl fmt::Display for CliError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl CliError {
    /// A command used wrongly: exit status 2, as for clap's own usage errors.
    pub(crate) fn usage(message: &str) -> Self {
        Self {
            message: format!("synosctl: {message}"),
            exit_code: exit::USAGE,
        }
    }

    /// The daemon answered, but the command failed: exit status 1.
    pub(crate) fn failure(message: &str) -> Self {
        Self {
            message: message.to_owned(),
            exit_code: exit::FAILURE,
        }
    }
}

pub(crate) type CommandResult = Result<u8, CliError>;

/// A daemon `synosctl` is talking to: the channel, and the name its errors are reported under.
pub(crate) struct Connected {
    binary: &'static str,
    pub(crate) channel: Channel,
}

/// Connects to one daemon by short name; failure is "synos-<name>: <why>" with exit status 69.
pub(crate) async fn connect(cli: &Cli, short_name: &str) -> Result<Connected, CliError> {
    let binary = daemon_binary(short_name).unwrap_or("synos-unknown");
    let channel = client::connect(&socket_path(&cli.runtime_dir, short_name), cli.timeout)
        .await
        .map_err(|error| CliError {
            message: format!("{binary}: {error}"),
            exit_code: exit::UNAVAILABLE,
        })?;
    Ok(Connected { binary, channel })
}

impl Connected {
    /// A failed call: "synos-<name>: invalid argument: <message>".
    pub(crate) fn call_failed(&self, status: &tonic::Status) -> CliError {
        let code = format!("{:?}", status.code());
        let mut words = String::new();
        for character in code.chars() {
            if character.is_uppercase() && !words.is_empty() {
                words.push(' ');
            }
            words.push(character.to_ascii_lowercase());
        }
        CliError {
            message: format!("{}: {words}: {}", self.binary, status.message()),
            exit_code: exit::FAILURE,
        }
    }
}

/// A duration argument such as `30d`, `12h`, `90s` or `1h 30m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (e.g. 30d, 12h, 1h 30m)"))
}

pub(crate) fn duration_from(duration: Option<prost_types::Duration>) -> Option<Duration> {
    duration.and_then(|duration| Duration::try_from(duration).ok())
}

/// What `status` learned about one daemon.
struct DaemonStatus {
    binary: &'static str,
    socket: String,
    health: &'static str,
    version: String,
    git_revision: String,
    uptime: Option<Duration>,
    pid: Option<u32>,
    state: String,
    error: Option<String>,
}

async fn probe(cli: &Cli, short_name: &'static str, binary: &'static str) -> DaemonStatus {
    let socket = socket_path(&cli.runtime_dir, short_name);
    let mut status = DaemonStatus {
        binary,
        socket: socket.display().to_string(),
        health: "UNREACHABLE",
        version: String::new(),
        git_revision: String::new(),
        uptime: None,
        pid: None,
        state: String::new(),
        error: None,
    };
    let channel = match client::connect(&socket, cli.timeout).await {
        Ok(channel) => channel,
        Err(error) => {
            status.health = match error {
                client::ConnectError::NoSocket(_) | client::ConnectError::Refused(_) => {
                    "NOT_RUNNING"
                }
                client::ConnectError::PermissionDenied(_) => "PERMISSION_DENIED",
                _ => "UNREACHABLE",
            };
            status.error = Some(error.to_string());
            return status;
        }
    };
    match client::health_status(channel.clone(), "", cli.timeout).await {
        Ok(serving) => {
            status.health = match serving {
                ServingStatus::Serving => "SERVING",
                ServingStatus::NotServing => "NOT_SERVING",
                ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
                ServingStatus::Unknown => "UNKNOWN",
            };
            if serving != ServingStatus::Serving {
                status.error = Some(format!("health check says {}", status.health));
            }
        }
        Err(error) => status.error = Some(format!("health check failed: {}", error.message())),
    }
    let mut admin = AdminClient::new(channel);
    if let Ok(Ok(info)) = tokio::time::timeout(cli.timeout, admin.get_info(GetInfoRequest {})).await
    {
        let info = info.into_inner();
        status.version = info.version;
        status.git_revision = info.git_revision;
        status.uptime = duration_from(info.uptime);
        status.pid = Some(info.pid);
        status.state = info.state_summary;
    }
    // A daemon that is up but not serving says why in its state summary.
    if status.health == "NOT_SERVING" && !status.state.is_empty() {
        status.error = Some(format!("not serving: {}", status.state));
    }
    status
}

/// `synosctl status`: all daemons at once; exit 0 only when every one is SERVING.
pub(crate) async fn status(cli: &Cli, as_json: bool) -> CommandResult {
    let statuses: Vec<DaemonStatus> = join_all(
        ALL_DAEMONS
            .iter()
            .map(|(short_name, binary)| probe(cli, short_name, binary)),
    )
    .await;
    let all_serving = statuses.iter().all(|status| status.health == "SERVING");
    let survival = crate::doctor::survival_reasons(cli).await;
    if as_json {
        let daemons: Vec<_> = statuses
            .iter()
            .map(|status| {
                json!({
                    "daemon": status.binary,
                    "health": status.health,
                    "version": status.version,
                    "git_revision": status.git_revision,
                    "uptime_seconds": status.uptime.map(|uptime| uptime.as_secs_f64()),
                    "pid": status.pid,
                    "socket": status.socket,
                    "state": status.state,
                    "error": status.error,
                })
            })
            .collect();
        emit_json(&json!({
            "all_serving": all_serving,
            "daemons": daemons,
            "survival_reasons": survival,
        }));
    } else {
        let mut rows = Vec::new();
        let header = ["DAEMON", "HEALTH", "VERSION", "UPTIME", "SOCKET"];
        for status in &statuses {
            let dash = || "-".to_owned();
            rows.push(vec![
                status.binary.to_owned(),
                status.health.to_owned(),
                if status.version.is_empty() {
                    dash()
                } else {
                    status.version.clone()
                },
                status.uptime.map_or_else(dash, uptime),
                status.socket.clone(),
            ]);
        }
        emit(&table(&header, &rows));
        for reason in &survival {
            emit(&format!("SURVIVAL MODE: {reason}"));
        }
    }
    for status in &statuses {
        if let Some(error) = &status.error {
            eprintln!("{}: {error}", status.binary);
        }
    }
    Ok(if all_serving { exit::OK } else { exit::FAILURE })
}

/// `synosctl policy check`: exit 0 when allowed, 1 when denied.
pub(crate) async fn policy_check(
    cli: &Cli,
    principal: &str,
    action: &str,
    resource: &str,
    as_json: bool,
) -> CommandResult {
    use synos_proto::policy::v1::{AuthorizeRequest, Decision, policy_client::PolicyClient};
    let connection = connect(cli, "policy").await?;
    let mut policy = PolicyClient::new(connection.channel.clone());
    let request = AuthorizeRequest {
        principal: principal.to_owned(),
        action: action.to_owned(),
        resource: resource.to_owned(),
    };
    let reply = policy
        .authorize(request)
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let allowed = reply.decision() == Decision::Allow;
    if as_json {
        emit_json(&json!({
            "decision": if allowed { "allow" } else { "deny" },
            "determining_policies": reply.determining_policies,
            "errors": reply.errors,
        }));
    } else if reply.determining_policies.is_empty() {
        emit(if allowed {
            "allow"
        } else {
            "deny (no policy permits this)"
        });
    } else {
        let decision = if allowed { "allow" } else { "deny" };
        emit(&format!(
            "{decision} (by {})",
            reply.determining_policies.join(", ")
        ));
    }
    Ok(if allowed { exit::OK } else { exit::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_say_why() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        for hostile in ["soon", "", "-5s", "30", "1y 400000000000000000d"] {
            assert!(
                parse_duration(hostile).unwrap_err().contains("e.g. 30d"),
                "{hostile:?}"
            );
        }
    }
}
