//! `synosctl policy …` and `synosctl audit …`: screening, redaction, reloads, tools and the
//! audit log of the policy daemon.

use std::io::Read as _;

use serde_json::json;
use synos_common::exit;
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{
    QueryAuditRequest, RedactOutputRequest, ReloadPoliciesRequest, ScreenInputRequest,
    ToolCallRequest, Verdict, VerifyAuditRequest,
};
use tonic::transport::Channel;

use crate::Cli;
use crate::commands::{CliError, CommandResult, Connected, connect};
use crate::output::{emit, emit_json};

async fn client(cli: &Cli) -> Result<(Connected, PolicyClient<Channel>), CliError> {
    let connection = connect(cli, "policy").await?;
    let policy = PolicyClient::new(connection.channel.clone());
    Ok((connection, policy))
}

/// TEXT, or standard input for `-`.
fn text_argument(text: &str) -> Result<String, CliError> {
    if text != "-" {
        return Ok(text.to_owned());
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|error| CliError::usage(&format!("cannot read standard input: {error}")))?;
    Ok(input)
}

/// `synosctl policy screen`: exit 0 allow or flag, 1 block.
pub(crate) async fn screen(cli: &Cli, text: &str, as_json: bool) -> CommandResult {
    let text = text_argument(text)?;
    let (connection, mut policy) = client(cli).await?;
    let reply = policy
        .screen_input(ScreenInputRequest {
            text,
            principal: String::new(),
            resource: String::new(),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let verdict = match reply.verdict() {
        Verdict::Block => "block",
        Verdict::Flag => "flag",
        _ => "allow",
    };
    if as_json {
        emit_json(&json!({
            "score": reply.score,
            "verdict": verdict,
            "rules": reply.rules.iter().map(|rule| json!({
                "id": rule.id, "description": rule.description, "weight": rule.weight,
                "start": rule.start, "end": rule.end,
            })).collect::<Vec<_>>(),
            "rule_set": reply.rule_set_version,
        }));
    } else {
        let rules: Vec<&str> = reply.rules.iter().map(|rule| rule.id.as_str()).collect();
        emit(&format!(
            "{verdict} (score {:.2}{})",
            reply.score,
            if rules.is_empty() {
                String::new()
            } else {
                format!("; {}", rules.join(", "))
            }
        ));
    }
    Ok(if verdict == "block" {
        exit::FAILURE
    } else {
        exit::OK
    })
}

/// `synosctl policy redact`: prints the redacted text.
pub(crate) async fn redact(cli: &Cli, text: &str, as_json: bool) -> CommandResult {
    let text = text_argument(text)?;
    let (connection, mut policy) = client(cli).await?;
    let reply = policy
        .redact_output(RedactOutputRequest {
            text,
            principal: String::new(),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    if as_json {
        emit_json(&json!({
            "text": reply.text,
            "spans": reply.spans.iter().map(|span| json!({
                "kind": span.kind, "start": span.start, "end": span.end,
            })).collect::<Vec<_>>(),
        }));
    } else {
        emit(reply.text.strip_suffix('\n').unwrap_or(&reply.text));
    }
    Ok(exit::OK)
}

/// `synosctl policy reload`.
pub(crate) async fn reload(cli: &Cli) -> CommandResult {
    let (connection, mut policy) = client(cli).await?;
    let reply = policy
        .reload_policies(ReloadPoliciesRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    emit(&format!(
        "{} policies from {}",
        reply.policy_count,
        reply.files.join(", ")
    ));
    Ok(exit::OK)
}

/// `synosctl policy exec`: runs a configured tool in the sandbox; exits with its status.
pub(crate) async fn exec(
    cli: &Cli,
    principal: &str,
    tool: &str,
    arguments: &[String],
    as_json: bool,
) -> CommandResult {
    let (connection, mut policy) = client(cli).await?;
    let reply = policy
        .exec_tool(ToolCallRequest {
            principal: principal.to_owned(),
            tool: tool.to_owned(),
            arguments: arguments.to_vec(),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    if as_json {
        emit_json(&json!({
            "exit_code": reply.exit_code, "outcome": reply.outcome, "stdout": reply.stdout,
            "stderr": reply.stderr, "truncated": reply.truncated, "sandbox": reply.sandbox,
            "duration_seconds": reply.duration_seconds,
        }));
    } else {
        emit(reply.stdout.strip_suffix('\n').unwrap_or(&reply.stdout));
        if !reply.stderr.is_empty() {
            eprint!("{}", reply.stderr);
        }
        if reply.outcome != "exited" {
            eprintln!("synosctl: {tool}: {}", reply.outcome);
        }
    }
    Ok(match reply.exit_code {
        0 => exit::OK,
        code => u8::try_from(code).unwrap_or(exit::FAILURE).max(1),
    })
}

/// `synosctl audit verify`: exit 0 intact, 1 tampered.
pub(crate) async fn audit_verify(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut policy) = client(cli).await?;
    let reply = policy
        .verify_audit(VerifyAuditRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    if as_json {
        emit_json(&json!({
            "intact": reply.intact,
            "records": reply.records,
            "first_bad_sequence": (!reply.intact).then_some(reply.first_bad_sequence),
            "problem": (!reply.intact).then_some(&reply.problem),
        }));
    } else if reply.intact {
        emit(&format!(
            "intact: {} records, hash chain verified",
            reply.records
        ));
    } else {
        emit(&format!(
            "TAMPERED: record {}: {}",
            reply.first_bad_sequence, reply.problem
        ));
    }
    Ok(if reply.intact {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// `synosctl audit tail` and `synosctl audit search`.
pub(crate) async fn audit_query(
    cli: &Cli,
    request: QueryAuditRequest,
    as_json: bool,
) -> CommandResult {
    let (connection, mut policy) = client(cli).await?;
    let reply = policy
        .query_audit(request)
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    for record in &reply.records {
        if as_json {
            let detail: serde_json::Value =
                serde_json::from_str(&record.detail_json).unwrap_or(json!(null));
            // JSON Lines: one record per line, for `jq -c` and friends.
            emit(&json!({
                "sequence": record.sequence, "time": record.time, "kind": record.kind,
                "principal": record.principal, "action": record.action, "resource": record.resource,
                "outcome": record.outcome, "detail": detail, "hash": record.hash,
            }).to_string());
        } else {
            emit(&format!(
                "{:>6} {} {:<10} {:<8} {} {} {} {}",
                record.sequence,
                record.time,
                record.kind,
                record.outcome,
                record.principal,
                record.action,
                record.resource,
                record.detail_json
            ));
        }
    }
    Ok(exit::OK)
}
