//! `synosctl memory …`: remember, recall, get, list, forget, export, import and stats.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use synos_common::exit;
use synos_proto::memory::v1::memory_client::MemoryClient;
use synos_proto::memory::v1::{self as api, forget_request};

use crate::Cli;
use crate::commands::{CliError, CommandResult, Connected, connect};
use crate::output::{bytes, emit, emit_json, enum_value, table, timestamp_text};

/// Lines per Import message.
const IMPORT_CHUNK: usize = 500;

async fn memory(
    cli: &Cli,
) -> Result<(Connected, MemoryClient<tonic::transport::Channel>), CliError> {
    let connection = connect(cli, "memory").await?;
    let client = MemoryClient::new(connection.channel.clone());
    Ok((connection, client))
}

/// `KEY=VALUE` for `--meta`.
pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn record_json(record: &api::MemoryRecord) -> Value {
    json!({
        "id": record.id,
        "scope": record.scope,
        "kind": record.kind,
        "text": record.text,
        "importance": record.importance,
        "source": record.source,
        "created": timestamp_text(record.created.as_ref()),
        "updated": timestamp_text(record.updated.as_ref()),
        "last_accessed": timestamp_text(record.last_accessed.as_ref()),
        "expires": record.expires.as_ref().map(|time| timestamp_text(Some(time))),
        "metadata": record.metadata,
        "embedding_model": record.embedding_model,
        "version": record.version,
    })
}

/// What `memory remember` stores.
pub(crate) struct Remember<'a> {
    pub(crate) scope: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) importance: Option<f32>,
    pub(crate) expires: Option<Duration>,
    pub(crate) source: &'a str,
    pub(crate) metadata: &'a [(String, String)],
    pub(crate) text: &'a [String],
}

/// `synosctl memory remember`: prints the id of the memory that holds the text.
pub(crate) async fn remember(cli: &Cli, what: Remember<'_>) -> CommandResult {
    let (connection, mut client) = memory(cli).await?;
    let expires = what
        .expires
        .map(|duration| prost_types::Timestamp::from(SystemTime::now() + duration));
    let request = api::RememberRequest {
        memories: vec![api::NewMemory {
            text: what.text.join(" "),
            scope: what.scope.to_owned(),
            kind: what.kind.to_owned(),
            importance: what.importance,
            source: what.source.to_owned(),
            expires,
            metadata: what.metadata.iter().cloned().collect::<HashMap<_, _>>(),
        }],
    };
    let response = client
        .remember(request)
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let Some(result) = response.results.first() else {
        return Err(CliError::failure("synos-memory: answered without a result"));
    };
    emit(&result.id);
    match api::RememberOutcome::try_from(result.outcome) {
        Ok(api::RememberOutcome::Duplicate) => eprintln!("already remembered: nothing new stored"),
        Ok(api::RememberOutcome::Superseded) => eprintln!(
            "replaced a near duplicate (similarity {:.2}); its earlier text is in its history",
            result.similarity
        ),
        _ => {}
    }
    Ok(exit::OK)
}

/// `synosctl memory recall`.
pub(crate) async fn recall(
    cli: &Cli,
    scopes: &[String],
    limit: u32,
    mode: &str,
    kinds: &[String],
    query: &[String],
    as_json: bool,
) -> CommandResult {
    let mode = match mode {
        "hybrid" => api::RecallMode::Hybrid,
        "keyword" => api::RecallMode::Keyword,
        "vector" => api::RecallMode::Vector,
        other => {
            return Err(CliError::usage(&format!(
                "--mode {other:?}: expected hybrid, keyword or vector"
            )));
        }
    };
    let (connection, mut client) = memory(cli).await?;
    let request = api::RecallRequest {
        query: query.join(" "),
        scopes: if scopes.is_empty() {
            vec!["global".to_owned()]
        } else {
            scopes.to_vec()
        },
        limit,
        mode: mode.into(),
        filter: Some(api::Filter {
            kinds: kinds.to_vec(),
            ..api::Filter::default()
        }),
    };
    let response = client
        .recall(request)
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let used = api::RecallMode::try_from(response.mode).unwrap_or(mode);
    if as_json {
        let results: Vec<Value> = response
            .results
            .iter()
            .filter_map(|result| {
                let mut value = record_json(result.memory.as_ref()?);
                value["score"] = json!(result.score);
                value["keyword_rank"] = json!(result.keyword_rank);
                value["vector_rank"] = json!(result.vector_rank);
                value["similarity"] = json!(result.similarity);
                Some(value)
            })
            .collect();
        emit_json(&Value::Array(results));
    } else if response.results.is_empty() {
        emit("no memories found");
    } else {
        let rows: Vec<Vec<String>> = response
            .results
            .iter()
            .filter_map(|result| {
                let record = result.memory.as_ref()?;
                Some(vec![
                    format!("{:.4}", result.score),
                    record.scope.clone(),
                    record.kind.clone(),
                    record.text.replace('\n', " "),
                    record.id.clone(),
                ])
            })
            .collect();
        emit(&table(&["SCORE", "SCOPE", "KIND", "TEXT", "ID"], &rows));
    }
    if used != mode {
        eprintln!(
            "recall used {} search: the embedding model is not loaded (see synosctl memory stats)",
            enum_value(used.as_str_name(), "RECALL_MODE_").to_lowercase()
        );
    }
    Ok(exit::OK)
}

/// `synosctl memory get`.
pub(crate) async fn get(cli: &Cli, id: &str, as_json: bool) -> CommandResult {
    let (connection, mut client) = memory(cli).await?;
    let response = client
        .get(api::GetRequest { id: id.to_owned() })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let record = response.memory.unwrap_or_default();
    if as_json {
        let mut value = record_json(&record);
        value["history"] = response
            .history
            .iter()
            .map(|version| {
                json!({
                    "version": version.version, "text": version.text, "kind": version.kind,
                    "importance": version.importance, "metadata": version.metadata,
                    "replaced": timestamp_text(version.replaced.as_ref()), "reason": version.reason,
                })
            })
            .collect();
        emit_json(&value);
    } else {
        let mut text = format!(
            "{}\nscope {}, kind {}, importance {:.2}, created {}, updated {}",
            record.text,
            record.scope,
            record.kind,
            record.importance,
            timestamp_text(record.created.as_ref()),
            timestamp_text(record.updated.as_ref()),
        );
        for version in &response.history {
            text.push_str(&format!(
                "\n  version {} ({} {}): {}",
                version.version,
                version.reason,
                timestamp_text(version.replaced.as_ref()),
                version.text
            ));
        }
        emit(&text);
    }
    Ok(exit::OK)
}

/// `synosctl memory list`.
pub(crate) async fn list(cli: &Cli, scopes: &[String], limit: u32, as_json: bool) -> CommandResult {
    let (connection, mut client) = memory(cli).await?;
    let response = client
        .list(api::ListRequest {
            scopes: if scopes.is_empty() {
                vec!["global".to_owned()]
            } else {
                scopes.to_vec()
            },
            filter: None,
            page_size: limit,
            page_token: String::new(),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    if as_json {
        emit_json(&Value::Array(
            response.memories.iter().map(record_json).collect(),
        ));
    } else {
        let rows: Vec<Vec<String>> = response
            .memories
            .iter()
            .map(|record| {
                vec![
                    timestamp_text(record.created.as_ref()),
                    record.scope.clone(),
                    record.kind.clone(),
                    record.text.replace('\n', " "),
                    record.id.clone(),
                ]
            })
            .collect();
        emit(&table(&["CREATED", "SCOPE", "KIND", "TEXT", "ID"], &rows));
    }
    Ok(exit::OK)
}

/// `synosctl memory forget ID` or `--scope S`.
pub(crate) async fn forget(cli: &Cli, id: Option<&str>, scope: Option<&str>) -> CommandResult {
    let target = match (id, scope) {
        (Some(id), None) => forget_request::Target::Id(id.to_owned()),
        (None, Some(scope)) => forget_request::Target::Scope(scope.to_owned()),
        _ => {
            return Err(CliError::usage(
                "memory forget: give an ID or --scope SCOPE",
            ));
        }
    };
    let (connection, mut client) = memory(cli).await?;
    let response = client
        .forget(api::ForgetRequest {
            target: Some(target),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    emit(&format!("forgot {} memories", response.forgotten));
    Ok(exit::OK)
}

fn progress(total: u64, verb: &str) -> ProgressBar {
    // Drawn only when stderr is a terminal; scripts see nothing.
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{verb} {{bar:40}} {{pos}}/{{len}} memories ({{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}

fn io_failure(what: &str, path: &Path, error: &std::io::Error) -> CliError {
    CliError::failure(&format!("synosctl: {what} {}: {error}", path.display()))
}

/// `synosctl memory export [FILE]`: JSON Lines to FILE (written whole, then renamed into
/// place, so a failed export never leaves half a file) or to stdout.
pub(crate) async fn export(cli: &Cli, scopes: &[String], file: Option<&Path>) -> CommandResult {
    let (connection, mut client) = memory(cli).await?;
    let mut stream = client
        .export(api::ExportRequest {
            scopes: scopes.to_vec(),
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    let (mut output, temporary): (Box<dyn std::io::Write>, Option<tempfile::NamedTempFile>) =
        match file {
            None => (Box::new(std::io::stdout().lock()), None),
            Some(path) => {
                let directory = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let temporary = tempfile::NamedTempFile::new_in(directory)
                    .map_err(|error| io_failure("cannot write", path, &error))?;
                let writer = temporary
                    .reopen()
                    .map_err(|error| io_failure("cannot write", path, &error))?;
                (Box::new(std::io::BufWriter::new(writer)), Some(temporary))
            }
        };
    let mut bar: Option<ProgressBar> = None;
    let mut written = 0_u64;
    while let Some(message) = stream.next().await {
        let message = message.map_err(|status| connection.call_failed(&status))?;
        let bar = bar.get_or_insert_with(|| progress(message.total, "exporting"));
        for line in &message.lines {
            writeln!(output, "{line}").map_err(|error| {
                CliError::failure(&format!("synosctl: writing the export: {error}"))
            })?;
        }
        written += message.lines.len() as u64;
        bar.set_position(written);
    }
    output
        .flush()
        .map_err(|error| CliError::failure(&format!("synosctl: writing the export: {error}")))?;
    drop(output);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let (Some(temporary), Some(path)) = (temporary, file) {
        temporary
            .as_file()
            .sync_all()
            .map_err(|error| io_failure("cannot write", path, &error))?;
        temporary
            .persist(path)
            .map_err(|error| io_failure("cannot write", path, &error.error))?;
        eprintln!("exported {written} memories to {}", path.display());
    }
    Ok(exit::OK)
}

/// `synosctl memory import FILE` (`-` for stdin).
pub(crate) async fn import(cli: &Cli, file: &Path) -> CommandResult {
    let lines: Vec<String> = if file == Path::new("-") {
        std::io::stdin().lock().lines().collect::<Result<_, _>>()
    } else {
        std::fs::File::open(file)
            .and_then(|opened| std::io::BufReader::new(opened).lines().collect())
    }
    .map_err(|error| io_failure("cannot read", file, &error))?;
    let (connection, mut client) = memory(cli).await?;
    let bar = progress(lines.len() as u64, "importing");
    let progress_bar = bar.clone();
    let chunks: Vec<Vec<String>> = lines.chunks(IMPORT_CHUNK).map(<[String]>::to_vec).collect();
    let requests = futures_util::stream::iter(chunks).map(move |lines| {
        progress_bar.inc(lines.len() as u64);
        api::ImportRequest { lines }
    });
    let response = client.import(requests).await;
    bar.finish_and_clear();
    let response = response
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    emit(&format!(
        "imported {}, replaced {} older, {} unchanged, {} duplicates skipped",
        response.imported, response.replaced, response.unchanged, response.duplicates
    ));
    Ok(exit::OK)
}

/// `synosctl memory stats`.
pub(crate) async fn stats(cli: &Cli, as_json: bool) -> CommandResult {
    let (connection, mut client) = memory(cli).await?;
    let stats = client
        .stats(api::StatsRequest {})
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    if as_json {
        emit_json(&json!({
            "state_directory": stats.state_directory,
            "state_directory_writable": stats.state_directory_writable,
            "filesystem_total_bytes": stats.filesystem_total_bytes,
            "filesystem_available_bytes": stats.filesystem_available_bytes,
            "memories": stats.memories,
            "scope_count": stats.scope_count,
            "scopes": stats.scopes.iter().map(|scope| json!({"scope": scope.scope, "memories": scope.memories})).collect::<Vec<_>>(),
            "database_bytes": stats.database_bytes,
            "embedding_model": stats.embedding_model,
            "embedding_problem": stats.embedding_problem,
            "pending_embeddings": stats.pending_embeddings,
            "history_versions": stats.history_versions,
        }));
        return Ok(exit::OK);
    }
    let model = if stats.embedding_problem.is_empty() {
        format!(
            "{} ({} memories waiting for a vector)",
            stats.embedding_model, stats.pending_embeddings
        )
    } else {
        format!("NONE: {} (keyword recall only)", stats.embedding_problem)
    };
    let mut text = format!(
        "memories:        {} in {} scopes ({} earlier versions kept)\nembedding model: {model}\ndatabase:        {}\nstate directory: {} ({})\nfilesystem:      {} free of {}",
        stats.memories,
        stats.scope_count,
        stats.history_versions,
        bytes(stats.database_bytes),
        stats.state_directory,
        if stats.state_directory_writable {
            "writable"
        } else {
            "NOT WRITABLE"
        },
        bytes(stats.filesystem_available_bytes),
        bytes(stats.filesystem_total_bytes),
    );
    for scope in stats.scopes.iter().take(10) {
        text.push_str(&format!("\n  {:<24} {}", scope.scope, scope.memories));
    }
    emit(&text);
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_or_say_why() {
        assert_eq!(
            parse_label("topic=tea=green"),
            Ok(("topic".into(), "tea=green".into()))
        );
        assert!(parse_label("=x").is_err());
    }
}
