//! `synosctl ask`: the system's main job in one command. Screens the question through policy,
//! recalls what memory holds for the user and chat, routes the completion (streamed through
//! policy's redaction to the terminal), remembers the exchange, and says who answered, how,
//! with which memories, at what cost.
//!
//! Policy is required: a question that was not screened, or an answer that was not redacted,
//! is never shown. Memory is not: without it the question is answered without recall, and the
//! command says so.

use std::collections::HashMap;
use std::io::Write as _;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use synos_common::exit;
use synos_proto::llm::v1::router_client::RouterClient;
use synos_proto::llm::v1::{self as llm, ChatMessage, ChatRequest, chat_stream_event};
use synos_proto::memory::v1::memory_client::MemoryClient;
use synos_proto::memory::v1::{self as memory, NewMemory, RecallRequest, RememberRequest};
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{
    RedactOutputChunk, RedactOutputRequest, ScreenInputRequest, ScreenInputResponse, Verdict,
};
use tonic::transport::Channel;

use crate::Cli;
use crate::commands::{CliError, CommandResult, Connected, connect};
use crate::llm::{attempts_json, served_json, served_summary};
use crate::output::emit_json;

/// Memories put before the question at most.
const RECALL_LIMIT: u32 = 5;
/// Below this cosine similarity a memory found only by vector search is not relevant enough
/// to show a small model, which would take it for the topic.
const MINIMUM_SIMILARITY: f32 = 0.35;
/// What an exchange is stored as: something that happened in the conversation.
const EXCHANGE_KIND: &str = "event";

/// What `synosctl ask` was asked.
#[derive(Debug)]
pub(crate) struct Question<'a> {
    /// The words of the question.
    pub(crate) words: &'a [String],
    /// `--user`; the login name when absent.
    pub(crate) user: Option<&'a str>,
    /// `--chat`.
    pub(crate) chat: Option<&'a str>,
    /// `--route`.
    pub(crate) route: &'a str,
    /// `--max-tokens`.
    pub(crate) max_tokens: Option<u32>,
    /// `--seed`.
    pub(crate) seed: Option<i64>,
    /// `--json`.
    pub(crate) json: bool,
}

/// A memory recalled for the question.
struct Recalled {
    id: String,
    scope: String,
    text: String,
    score: f64,
}

/// Memory ids (user and chat names) as the memory daemon accepts them.
fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "._@+-".contains(character))
}

fn user_name(given: Option<&str>) -> Result<String, CliError> {
    let user = match given {
        Some(user) => user.to_owned(),
        // Who the daemons will see on the socket, not what $USER claims.
        None => synos_common::caller::own_login().unwrap_or_else(|| "local".to_owned()),
    };
    if valid_id(&user) {
        Ok(user)
    } else {
        Err(CliError::usage(&format!(
            "--user {user:?}: expected 1 to 128 of A-Z a-z 0-9 . _ @ + -"
        )))
    }
}

/// `synosctl ask`.
pub(crate) async fn ask(cli: &Cli, question: Question<'_>) -> CommandResult {
    let text = question.words.join(" ");
    if text.trim().is_empty() {
        return Err(CliError::usage("the question is empty"));
    }
    let user = user_name(question.user)?;
    if let Some(chat) = question.chat
        && !valid_id(chat)
    {
        return Err(CliError::usage(&format!(
            "--chat {chat:?}: expected 1 to 128 of A-Z a-z 0-9 . _ @ + -"
        )));
    }
    let user_scope = format!("user:{user}");
    let chat_scope = question.chat.map(|chat| format!("chat:{chat}"));
    let mut warnings = Vec::new();

    let policy_connection = connect(cli, "policy").await?;
    let mut policy = PolicyClient::new(policy_connection.channel.clone());
    let screening = policy
        .screen_input(ScreenInputRequest {
            text: text.clone(),
            // Every daemon knows who asks from the socket; `--user` only picks whose memories.
            principal: String::new(),
            resource: format!("Route::{:?}", question.route),
        })
        .await
        .map_err(|status| policy_connection.call_failed(&status))?
        .into_inner();
    if screening.verdict() == Verdict::Block {
        return Err(CliError::failure(&format!(
            "synos-policy: refused: the question was screened as an attack ({})",
            screening_summary(&screening)
        )));
    }

    let memory = match connect(cli, "memory").await {
        Ok(connection) => Some(connection),
        Err(error) => {
            warnings.push(format!("answered without memory: {error}"));
            None
        }
    };
    let mut scopes = vec!["global".to_owned(), user_scope.clone()];
    scopes.extend(chat_scope.clone());
    let recalled = match &memory {
        Some(connection) => match recall(connection, &text, scopes).await {
            Ok(recalled) => recalled,
            // Another user's memories are refused outright, not answered without them.
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                return Err(connection.call_failed(&status));
            }
            Err(status) => {
                let error = connection.call_failed(&status);
                warnings.push(format!("answered without recall: {error}"));
                Vec::new()
            }
        },
        None => Vec::new(),
    };

    let mut messages = Vec::new();
    if !recalled.is_empty() {
        let mut context =
            String::from("What you remember from earlier conversations with this user:\n");
        for memory in &recalled {
            context.push_str(&format!("- {}\n", memory.text.replace('\n', " ")));
        }
        messages.push(ChatMessage {
            role: "system".to_owned(),
            content: context,
        });
    }
    messages.push(ChatMessage {
        role: "user".to_owned(),
        content: text.clone(),
    });
    let request = ChatRequest {
        route: question.route.to_owned(),
        messages,
        max_tokens: question.max_tokens,
        seed: question.seed,
        ..ChatRequest::default()
    };
    let (answer, redactions, served) =
        answer(cli, request, &policy_connection, !question.json).await?;

    let scope = chat_scope.unwrap_or(user_scope);
    let remembered = match &memory {
        Some(connection) => {
            match remember(connection, &mut policy, &scope, &text, &answer, &served).await {
                Ok(id) => Some(id),
                Err(error) => {
                    warnings.push(format!("the exchange was not remembered: {error}"));
                    None
                }
            }
        }
        None => None,
    };

    if question.json {
        let mut value = served_json(&served);
        value["answer"] = Value::String(answer);
        value["memories"] = recalled
            .iter()
            .map(|memory| {
                json!({ "id": memory.id, "scope": memory.scope, "text": memory.text,
                        "score": memory.score })
            })
            .collect();
        value["screening"] = json!({
            "verdict": verdict_name(&screening), "score": screening.score,
            "rules": screening.rules.iter().map(|rule| rule.id.clone()).collect::<Vec<_>>(),
        });
        value["redactions"] = json!(redactions);
        value["remembered"] = remembered
            .as_ref()
            .map_or(Value::Null, |id| json!({ "id": id, "scope": scope }));
        value["warnings"] = json!(warnings);
        emit_json(&value);
        return Ok(exit::OK);
    }
    eprintln!("[{}]", served_summary(&served));
    if served.attempts.len() > 1 {
        let attempts: Vec<String> = attempts_json(&served.attempts)
            .as_array()
            .into_iter()
            .flatten()
            .map(|attempt| {
                format!(
                    "{} {} {} ms",
                    attempt["provider"].as_str().unwrap_or_default(),
                    attempt["outcome"].as_str().unwrap_or_default(),
                    attempt["latency_ms"].as_u64().unwrap_or_default()
                )
            })
            .collect();
        eprintln!("[attempts: {}]", attempts.join(" → "));
    }
    if recalled.is_empty() {
        eprintln!("[memories used: none]");
    } else {
        let used: Vec<String> = recalled
            .iter()
            .map(|memory| format!("{} {}", memory.scope, memory.id))
            .collect();
        eprintln!("[memories used: {}]", used.join(", "));
    }
    if screening.verdict() == Verdict::Flag {
        eprintln!(
            "[screening flagged the question: {}]",
            screening_summary(&screening)
        );
    }
    if !redactions.is_empty() {
        eprintln!("[redacted from the answer: {}]", redactions.join(", "));
    }
    if let Some(id) = remembered {
        eprintln!("[remembered in {scope} as {id}]");
    }
    for warning in warnings {
        eprintln!("[warning: {warning}]");
    }
    Ok(exit::OK)
}

fn verdict_name(screening: &ScreenInputResponse) -> &'static str {
    match screening.verdict() {
        Verdict::Block => "block",
        Verdict::Flag => "flag",
        _ => "allow",
    }
}

fn screening_summary(screening: &ScreenInputResponse) -> String {
    let rules: Vec<&str> = screening
        .rules
        .iter()
        .map(|rule| rule.id.as_str())
        .collect();
    format!("score {:.2}; rules {}", screening.score, rules.join(", "))
}

async fn recall(
    connection: &Connected,
    question: &str,
    scopes: Vec<String>,
) -> Result<Vec<Recalled>, tonic::Status> {
    let response = MemoryClient::new(connection.channel.clone())
        .recall(RecallRequest {
            query: question.to_owned(),
            scopes,
            limit: RECALL_LIMIT,
            mode: memory::RecallMode::Hybrid.into(),
            filter: None,
        })
        .await?
        .into_inner();
    Ok(response
        .results
        .into_iter()
        .filter(|result| result.keyword_rank > 0 || result.similarity >= MINIMUM_SIMILARITY)
        .filter_map(|result| {
            let record = result.memory?;
            Some(Recalled {
                id: record.id,
                scope: record.scope,
                text: record.text,
                score: result.score,
            })
        })
        .collect())
}

/// Routes the request and passes the answer through policy's streaming redaction; prints
/// what comes back as it comes when `print` is set. Returns the redacted answer, what was
/// redacted, and who served it.
async fn answer(
    cli: &Cli,
    request: ChatRequest,
    policy_connection: &Connected,
    print: bool,
) -> Result<(String, Vec<String>, llm::Served), CliError> {
    let router_connection = connect(cli, "llm-router").await?;
    let mut events = RouterClient::new(router_connection.channel.clone())
        .chat_stream(request)
        .await
        .map_err(|status| router_connection.call_failed(&status))?
        .into_inner();
    let (sender, receiver) = tokio::sync::mpsc::channel::<RedactOutputChunk>(32);
    let mut redacted = PolicyClient::new(policy_connection.channel.clone())
        .redact_output_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .map_err(|status| policy_connection.call_failed(&status))?
        .into_inner();
    // Forwards the router's text into the redaction stream; closing it (by returning) makes
    // policy release what it held back.
    let forward = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event
                .map_err(|status| router_connection.call_failed(&status))?
                .event
            {
                Some(chat_stream_event::Event::Delta(text)) => {
                    let chunk = RedactOutputChunk {
                        text,
                        spans: Vec::new(),
                        principal: String::new(),
                    };
                    if sender.send(chunk).await.is_err() {
                        return Err(CliError::failure(
                            "synos-policy: the redaction stream closed early",
                        ));
                    }
                }
                Some(chat_stream_event::Event::Finished(finished)) => {
                    return Ok(finished.served.unwrap_or_default());
                }
                Some(chat_stream_event::Event::Started(_)) | None => {}
            }
        }
        Err(CliError::failure(
            "synos-llm-router: the stream ended without finishing; the answer is incomplete",
        ))
    });
    let mut answer = String::new();
    let mut redactions = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let mut redaction_failure = None;
    while let Some(chunk) = redacted.next().await {
        match chunk {
            Ok(chunk) => {
                redactions.extend(chunk.spans.into_iter().map(|span| span.kind));
                if print {
                    // A closed stdout (`| head`) ends the printing, not the exchange.
                    let _ = write!(stdout, "{}", chunk.text).and_then(|()| stdout.flush());
                }
                answer.push_str(&chunk.text);
            }
            Err(status) => {
                redaction_failure = Some(policy_connection.call_failed(&status));
                break;
            }
        }
    }
    if print && !answer.ends_with('\n') && !answer.is_empty() {
        let _ = writeln!(stdout);
    }
    drop(stdout);
    let served = forward
        .await
        .map_err(|error| CliError::failure(&format!("synosctl: {error}")))??;
    if let Some(failure) = redaction_failure {
        return Err(failure);
    }
    Ok((answer, redactions, served))
}

/// Stores the exchange (the question redacted like the answer) in `scope`; its id.
async fn remember(
    connection: &Connected,
    policy: &mut PolicyClient<Channel>,
    scope: &str,
    question: &str,
    answer: &str,
    served: &llm::Served,
) -> Result<String, CliError> {
    let question = policy
        .redact_output(RedactOutputRequest {
            text: question.to_owned(),
            principal: String::new(),
        })
        .await
        .map_err(|status| CliError::failure(&format!("synos-policy: {}", status.message())))?
        .into_inner()
        .text;
    let metadata = HashMap::from([
        ("provider".to_owned(), served.provider.clone()),
        ("route".to_owned(), served.route.clone()),
    ]);
    let response = MemoryClient::new(connection.channel.clone())
        .remember(RememberRequest {
            memories: vec![NewMemory {
                text: format!("Q: {question}\nA: {answer}"),
                scope: scope.to_owned(),
                kind: EXCHANGE_KIND.to_owned(),
                importance: None,
                source: "synosctl ask".to_owned(),
                expires: None,
                metadata,
            }],
        })
        .await
        .map_err(|status| connection.call_failed(&status))?
        .into_inner();
    response
        .results
        .into_iter()
        .next()
        .map(|result| result.id)
        .ok_or_else(|| CliError::failure("synos-memory: answered without a result"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_chat_names_follow_the_memory_id_rules() {
        for good in ["alice", "a.b_c@d+e-f", "42"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", "a b", "a:b", "ä", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(user_name(Some("bob")).is_ok());
        assert_eq!(
            user_name(Some("bob smith")).unwrap_err().exit_code,
            exit::USAGE
        );
    }
}
