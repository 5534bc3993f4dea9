//! The memory daemon over its real socket, with its real SQLite file and embedding model:
//! isolation, duplicates, expiry, export and import, crash safety, ranking quality, hostile
//! input and damaged databases.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use synos_integration_tests::{Daemon, Sandbox, channel, output, require_embedding_model};
use synos_proto::memory::v1::memory_client::MemoryClient;
use synos_proto::memory::v1::{self as api, RecallMode, RememberOutcome};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

async fn start(sandbox: &Sandbox) -> (Daemon, MemoryClient<Channel>) {
    require_embedding_model();
    let daemon = sandbox.start("memory").await;
    let client = MemoryClient::new(channel(&sandbox.socket("memory")).await);
    (daemon, client)
}

fn new_memory(scope: &str, text: &str) -> api::NewMemory {
    api::NewMemory {
        text: text.to_owned(),
        scope: scope.to_owned(),
        ..api::NewMemory::default()
    }
}

async fn remember(
    client: &mut MemoryClient<Channel>,
    scope: &str,
    text: &str,
) -> api::RememberResult {
    let mut results = client
        .remember(api::RememberRequest {
            memories: vec![new_memory(scope, text)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 1);
    results.remove(0)
}

async fn recall(
    client: &mut MemoryClient<Channel>,
    scopes: &[&str],
    query: &str,
    mode: RecallMode,
) -> Vec<api::RecallResult> {
    client
        .recall(api::RecallRequest {
            query: query.to_owned(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            limit: 10,
            mode: mode.into(),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results
}

fn texts(results: &[api::RecallResult]) -> Vec<String> {
    results
        .iter()
        .map(|result| result.memory.as_ref().unwrap().text.clone())
        .collect()
}

#[tokio::test]
async fn one_chat_never_sees_another_chats_memories() {
    let sandbox = Sandbox::new();
    let (_daemon, mut client) = start(&sandbox).await;
    remember(&mut client, "chat:a", "The launch code word is pineapple").await;
    remember(&mut client, "chat:b", "The launch code word is marmalade").await;
    remember(
        &mut client,
        "user:carol",
        "Carol's launch code word is biscuit",
    )
    .await;
    remember(&mut client, "global", "Launch windows open at dawn").await;
    for mode in [RecallMode::Hybrid, RecallMode::Keyword, RecallMode::Vector] {
        // The query is chat b's text word for word: the best match anywhere, and never shown.
        let found = texts(
            &recall(
                &mut client,
                &["chat:a"],
                "The launch code word is marmalade",
                mode,
            )
            .await,
        );
        assert!(!found.is_empty(), "{mode:?}: found nothing");
        assert!(
            found.iter().all(|text| text.contains("pineapple")),
            "{mode:?}: chat:a saw {found:?}"
        );
        let found = texts(
            &recall(
                &mut client,
                &["chat:a", "global"],
                "launch code marmalade biscuit",
                mode,
            )
            .await,
        );
        assert!(
            found
                .iter()
                .all(|text| text.contains("pineapple") || text.contains("dawn")),
            "{mode:?}: chat:a + global saw {found:?}"
        );
    }
    let listed = client
        .list(api::ListRequest {
            scopes: vec!["chat:b".into()],
            ..api::ListRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memories;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].scope, "chat:b");
    // Naming no scope is an error, never "all scopes".
    let error = client
        .recall(api::RecallRequest {
            query: "launch".into(),
            ..api::RecallRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("scopes"), "{}", error.message());
}

#[tokio::test]
async fn duplicates_are_stored_once_and_near_duplicates_supersede_with_history() {
    let sandbox = Sandbox::new();
    let (_daemon, mut client) = start(&sandbox).await;
    let first = client
        .remember(api::RememberRequest {
            memories: vec![api::NewMemory {
                kind: "preference".into(),
                ..new_memory("user:alice", "Alice prefers green tea without sugar")
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(first.outcome(), RememberOutcome::Created);

    let again = remember(
        &mut client,
        "user:alice",
        "  alice PREFERS green tea without sugar. ",
    )
    .await;
    assert_eq!(
        (again.outcome(), again.id.as_str()),
        (RememberOutcome::Duplicate, first.id.as_str())
    );

    let near = remember(
        &mut client,
        "user:alice",
        "Alice prefers green tea, without any sugar",
    )
    .await;
    assert_eq!(
        (near.outcome(), near.id.as_str()),
        (RememberOutcome::Superseded, first.id.as_str())
    );
    assert!(near.similarity >= 0.92, "{}", near.similarity);

    // The same text in another scope is another memory; an unrelated text too.
    let bob = remember(
        &mut client,
        "user:bob",
        "Alice prefers green tea without sugar",
    )
    .await;
    assert_eq!(bob.outcome(), RememberOutcome::Created);
    let other = remember(
        &mut client,
        "user:alice",
        "Alice's flight to Lisbon leaves on Friday",
    )
    .await;
    assert_eq!(other.outcome(), RememberOutcome::Created);

    // A batch that repeats itself stores the text once.
    let batch = client
        .remember(api::RememberRequest {
            memories: vec![
                new_memory("chat:9", "Deploys happen on Tuesdays"),
                new_memory("chat:9", "deploys happen on tuesdays"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(batch[0].id, batch[1].id);
    assert_eq!(batch[1].outcome(), RememberOutcome::Duplicate);

    let got = client
        .get(api::GetRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let memory = got.memory.unwrap();
    assert_eq!(memory.text, "Alice prefers green tea, without any sugar");
    assert_eq!(
        memory.kind, "preference",
        "an unclassified note must not replace the kind"
    );
    assert_eq!(memory.version, 1);
    assert_eq!(got.history.len(), 1);
    assert_eq!(got.history[0].text, "Alice prefers green tea without sugar");
    assert_eq!(got.history[0].reason, "superseded");

    let listed = client
        .list(api::ListRequest {
            scopes: vec!["user:alice".into()],
            ..api::ListRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memories;
    assert_eq!(listed.len(), 2, "{listed:?}");
}

#[tokio::test]
async fn expired_memories_leave_recall_and_are_purged() {
    let sandbox = Sandbox::new();
    sandbox.write_config("memory", "[store]\npurge_interval_s = 1\n");
    let (_daemon, mut client) = start(&sandbox).await;
    let expires = prost_types::Timestamp::from(SystemTime::now() + Duration::from_millis(1500));
    let short = client
        .remember(api::RememberRequest {
            memories: vec![api::NewMemory {
                expires: Some(expires),
                ..new_memory("global", "The door code this week is 4711")
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    remember(&mut client, "global", "The door code of the garage is 1234").await;
    let found = texts(&recall(&mut client, &["global"], "door code", RecallMode::Hybrid).await);
    assert_eq!(found.len(), 2, "{found:?}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for mode in [RecallMode::Hybrid, RecallMode::Keyword, RecallMode::Vector] {
        let found = texts(&recall(&mut client, &["global"], "door code this week", mode).await);
        assert!(
            found.iter().all(|text| text.contains("garage")),
            "{mode:?}: {found:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gone = client
            .get(api::GetRequest {
                id: short.id.clone(),
            })
            .await;
        if gone
            .as_ref()
            .is_err_and(|status| status.code() == Code::NotFound)
        {
            break;
        }
        assert!(Instant::now() < deadline, "not purged: {gone:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An expiry in the past is refused.
    let error = client
        .remember(api::RememberRequest {
            memories: vec![api::NewMemory {
                expires: Some(prost_types::Timestamp::from(
                    SystemTime::now() - Duration::from_secs(1),
                )),
                ..new_memory("global", "Too late")
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("expires: is in the past"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn export_then_import_is_lossless_and_idempotent() {
    let source = Sandbox::new();
    let (_daemon, mut client) = start(&source).await;
    let mut metadata = HashMap::new();
    metadata.insert("topic".to_owned(), "drinks".to_owned());
    client
        .remember(api::RememberRequest {
            memories: vec![
                api::NewMemory {
                    kind: "preference".into(),
                    importance: Some(0.9),
                    metadata,
                    ..new_memory("user:alice", "Alice drinks oolong tea in the morning")
                },
                api::NewMemory {
                    source: "agent:planner".into(),
                    expires: Some(prost_types::Timestamp::from(
                        SystemTime::now() + Duration::from_secs(86_400),
                    )),
                    ..new_memory(
                        "chat:7",
                        "The meeting moved to Thursday \"after lunch\"\nfor everyone",
                    )
                },
                new_memory("global", "Ünïcödé and emoji 🚀 survive the trip"),
            ],
        })
        .await
        .unwrap();
    let superseded = remember(
        &mut client,
        "user:alice",
        "Alice drinks oolong tea each morning",
    )
    .await;
    assert_eq!(superseded.outcome(), RememberOutcome::Superseded);

    let first_export = source.path().join("first.jsonl");
    let (code, _, stderr) = output(
        source
            .command("synosctl")
            .args(["memory", "export"])
            .arg(&first_export),
    );
    assert_eq!(code, 0, "{stderr}");
    let exported = std::fs::read_to_string(&first_export).unwrap();
    assert_eq!(exported.lines().count(), 3, "{exported}");
    for field in [
        "\"embedding_model\":\"all-MiniLM-L6-v2\"",
        "\"history\":[{",
        "\"agent:planner\"",
        "\"expires_ms\":1",
        "\"importance\":0.9",
        "\"metadata\":{\"topic\":\"drinks\"}",
    ] {
        assert!(exported.contains(field), "{field} missing from {exported}");
    }

    let target = Sandbox::new();
    let (_target_daemon, mut target_client) = start(&target).await;
    let (code, stdout, stderr) = output(
        target
            .command("synosctl")
            .args(["memory", "import"])
            .arg(&first_export),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("imported 3"), "{stdout}");
    let (code, stdout, _) = output(
        target
            .command("synosctl")
            .args(["memory", "import"])
            .arg(&first_export),
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains("imported 0") && stdout.contains("3 unchanged"),
        "{stdout}"
    );

    let second_export = target.path().join("second.jsonl");
    let (code, _, stderr) = output(
        target
            .command("synosctl")
            .args(["memory", "export"])
            .arg(&second_export),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&second_export).unwrap(),
        exported,
        "the round trip changed something"
    );

    // Imported vectors are live: vector recall finds the memory in the new store.
    let found = texts(
        &recall(
            &mut target_client,
            &["user:alice"],
            "what does Alice have for breakfast",
            RecallMode::Vector,
        )
        .await,
    );
    assert_eq!(
        found.first().map(String::as_str),
        Some("Alice drinks oolong tea each morning")
    );

    // A damaged line is refused with its number; the lines before it are kept.
    let broken = target.path().join("broken.jsonl");
    let mut lines: Vec<&str> = exported.lines().collect();
    lines.insert(1, "{\"synos_memory\":1,\"id\":\"not-a-uuid\"}");
    std::fs::write(&broken, lines.join("\n")).unwrap();
    let (code, _, stderr) = output(
        target
            .command("synosctl")
            .args(["memory", "import"])
            .arg(&broken),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("invalid argument: line 2: not a memory"),
        "{stderr}"
    );
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_to_sigkill() {
    let sandbox = Sandbox::new();
    // Every write its own memory: numbered notes would otherwise merge as near duplicates.
    sandbox.write_config("memory", "[store]\nnear_duplicate_similarity = 1.0\n");
    let (mut daemon, client) = start(&sandbox).await;
    let writer = tokio::spawn(async move {
        let mut client = client;
        let mut acknowledged = Vec::new();
        for batch in 0.. {
            let texts: Vec<String> = (0..4).map(|item| format!("write {batch}-{item}")).collect();
            let memories = texts
                .iter()
                .map(|text| new_memory("chat:crash", text))
                .collect();
            match client.remember(api::RememberRequest { memories }).await {
                Ok(response) => {
                    let results = response.into_inner().results;
                    assert!(
                        results
                            .iter()
                            .all(|result| result.outcome() == RememberOutcome::Created)
                    );
                    acknowledged.extend(results.into_iter().map(|result| result.id).zip(texts));
                }
                Err(_) => return acknowledged,
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    daemon.signal(Signal::SIGKILL);
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() >= 8,
        "only {} writes before the kill",
        acknowledged.len()
    );
    daemon.wait_exit(Duration::from_secs(5)).await;
    drop(daemon);

    let (_restarted, mut client) = start(&sandbox).await;
    for (id, text) in &acknowledged {
        let got = client.get(api::GetRequest { id: id.clone() }).await;
        assert!(got.is_ok(), "acknowledged {id} lost: {got:?}");
        assert_eq!(&got.unwrap().into_inner().memory.unwrap().text, text);
    }
    let stats = client
        .stats(api::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    // At most the one batch in flight at the kill may have landed without an acknowledgement.
    let stored = usize::try_from(stats.memories).unwrap();
    assert!(
        (acknowledged.len()..=acknowledged.len() + 4).contains(&stored),
        "{stored} stored, {} acknowledged",
        acknowledged.len()
    );
}

/// A labelled fixture: memories, and queries with the memory each should find. Some queries
/// are paraphrases that share no telling word with their memory (full text alone misses them),
/// some name identifiers that look alike to an embedding model (vectors alone confuse them).
const FIXTURE: &[&str] = &[
    "Ticket QX-7718 is about the VPN outage in the Berlin office",
    "Ticket QX-7178 is about the VPN outage in the Munich office",
    "Ticket QX-7781 is about the broken printer on the second floor",
    "Ticket QX-1877 is about a refund for a duplicate invoice",
    "Invoice 88213 from Kestrel Logistics is still unpaid",
    "Invoice 82813 from Kestrel Logistics was paid in March",
    "The staging database runs PostgreSQL 15 on host pg-stg-03",
    "The production database runs PostgreSQL 16 on host pg-prd-01",
    "Maria is allergic to peanuts and shellfish",
    "Tom plays the cello in a community orchestra",
    "The team retrospective happens every other Friday afternoon",
    "Our office cat is called Biscuit and sleeps on the radiator",
    "The annual budget review is scheduled for the first week of November",
    "Sam moved from Lisbon to Oslo last spring",
    "The backup job copies the photo archive to tape every Sunday night",
    "Priya prefers to be contacted by text message rather than phone calls",
    "The guest wifi password rotates on the first of each month",
    "Serial number KX93-4471 belongs to the laptop issued to Maria",
    "Serial number KX39-4417 belongs to the laptop issued to Tom",
];

/// (query, index in FIXTURE of the memory it should find)
const QUERIES: &[(&str, &str)] = &[
    ("QX-7718", "Ticket QX-7718"),
    ("QX-7178", "Ticket QX-7178"),
    ("QX-7781", "Ticket QX-7781"),
    ("QX-1877", "Ticket QX-1877"),
    ("invoice 88213", "Invoice 88213"),
    ("invoice 82813", "Invoice 82813"),
    ("pg-prd-01", "The production database"),
    ("pg-stg-03", "The staging database"),
    ("KX93-4471", "Serial number KX93-4471"),
    ("KX39-4417", "Serial number KX39-4417"),
    ("what food must Maria avoid", "Maria is allergic"),
    (
        "which musical instrument does Tom play",
        "Tom plays the cello",
    ),
    (
        "when do we reflect on how the sprint went",
        "The team retrospective",
    ),
    ("the pet that lives at work", "Our office cat"),
    (
        "when are finances examined this year",
        "The annual budget review",
    ),
    ("where does Sam live now", "Sam moved"),
    ("how are the pictures preserved", "The backup job"),
    ("how should I reach Priya", "Priya prefers"),
    (
        "how often does the network key for visitors change",
        "The guest wifi",
    ),
    (
        "why can the Berlin team not connect remotely",
        "Ticket QX-7718",
    ),
    ("someone wants their money back", "Ticket QX-1877"),
];

/// 1/rank of the memory starting with `expected`, 0 when it is not among the results.
fn reciprocal_rank(results: &[api::RecallResult], expected: &str) -> f64 {
    results
        .iter()
        .position(|result| result.memory.as_ref().unwrap().text.starts_with(expected))
        .map_or(0.0, |position| 1.0 / (position as f64 + 1.0))
}

#[tokio::test]
async fn hybrid_recall_beats_keyword_and_vector_alone_on_a_labelled_fixture() {
    let sandbox = Sandbox::new();
    let (_daemon, mut client) = start(&sandbox).await;
    client
        .remember(api::RememberRequest {
            memories: FIXTURE
                .iter()
                .map(|text| new_memory("global", text))
                .collect(),
        })
        .await
        .unwrap();
    let mut report = String::new();
    let mut mean = HashMap::new();
    for mode in [RecallMode::Keyword, RecallMode::Vector, RecallMode::Hybrid] {
        let mut total = 0.0;
        let mut top = 0;
        for (query, expected) in QUERIES {
            let results = recall(&mut client, &["global"], query, mode).await;
            let rank = reciprocal_rank(&results, expected);
            total += rank;
            top += usize::from(rank == 1.0);
            report.push_str(&format!("{mode:?} {rank:.2} {query}\n"));
        }
        let mrr = total / QUERIES.len() as f64;
        report.push_str(&format!(
            "{mode:?}: MRR {mrr:.3}, top-1 {top}/{}\n",
            QUERIES.len()
        ));
        mean.insert(mode, (mrr, top));
    }
    eprintln!("{report}");
    let (hybrid, hybrid_top) = mean[&RecallMode::Hybrid];
    for single in [RecallMode::Keyword, RecallMode::Vector] {
        let (mrr, top) = mean[&single];
        assert!(
            hybrid > mrr && hybrid_top >= top,
            "hybrid does not beat {single:?}:\n{report}"
        );
        // The fixture is only meaningful if each single mode misses somewhere.
        assert!(top < QUERIES.len(), "{single:?} never misses:\n{report}");
    }
}

#[tokio::test]
async fn hostile_requests_get_precise_errors() {
    let sandbox = Sandbox::new();
    sandbox.write_config("memory", "[store]\nmax_text_bytes = 100\nmax_batch = 3\n");
    let (_daemon, mut client) = start(&sandbox).await;
    let cases: Vec<(api::NewMemory, &str)> = vec![
        (
            new_memory("global", "   "),
            "memories[0]: text: must not be empty",
        ),
        (
            new_memory("global", &"x".repeat(101)),
            "101 bytes is more than the limit of 100",
        ),
        (
            new_memory("team:x", "hello"),
            "scope \"team:x\": expected global, user:<id> or chat:<id>",
        ),
        (new_memory("user:a b", "hello"), "is not allowed in an id"),
        (
            api::NewMemory {
                kind: "gossip".into(),
                ..new_memory("global", "hello")
            },
            "kind \"gossip\": expected one of fact, preference",
        ),
        (
            api::NewMemory {
                importance: Some(2.0),
                ..new_memory("global", "hello")
            },
            "importance: 2 is not between 0 and 1",
        ),
        (
            api::NewMemory {
                metadata: [("bad key".to_owned(), String::new())].into(),
                ..new_memory("global", "hello")
            },
            "metadata key \"bad key\"",
        ),
    ];
    for (memory, expected) in cases {
        let error = client
            .remember(api::RememberRequest {
                memories: vec![memory],
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{expected}");
        assert!(
            error.message().contains(expected),
            "{expected:?} not in {:?}",
            error.message()
        );
    }
    let error = client
        .remember(api::RememberRequest { memories: vec![] })
        .await
        .unwrap_err();
    assert!(
        error.message().contains("at least one"),
        "{}",
        error.message()
    );
    let four = (0..4)
        .map(|n| new_memory("global", &format!("memory {n}")))
        .collect();
    let error = client
        .remember(api::RememberRequest { memories: four })
        .await
        .unwrap_err();
    assert!(
        error.message().contains("4 is more than the limit of 3"),
        "{}",
        error.message()
    );
    // A batch with one bad memory stores none of them.
    let mixed = vec![new_memory("global", "fine"), new_memory("nowhere", "bad")];
    let error = client
        .remember(api::RememberRequest { memories: mixed })
        .await
        .unwrap_err();
    assert!(
        error.message().starts_with("memories[1]: scope"),
        "{}",
        error.message()
    );
    let stats = client
        .stats(api::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.memories, 0);

    let recall_cases = [
        (
            api::RecallRequest {
                query: String::new(),
                scopes: vec!["global".into()],
                ..Default::default()
            },
            "query: must not be empty",
        ),
        (
            api::RecallRequest {
                query: "x".into(),
                scopes: vec!["chat:".into()],
                ..Default::default()
            },
            "scope \"chat:\"",
        ),
        (
            api::RecallRequest {
                query: "x".into(),
                scopes: vec!["global".into()],
                limit: 1000,
                ..Default::default()
            },
            "limit: at most 100",
        ),
        (
            api::RecallRequest {
                query: "x".into(),
                scopes: vec!["global".into()],
                mode: 42,
                ..Default::default()
            },
            "mode: 42",
        ),
        (
            api::RecallRequest {
                query: "x".into(),
                scopes: vec!["global".into()],
                filter: Some(api::Filter {
                    kinds: vec!["rumour".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.kinds: kind \"rumour\"",
        ),
    ];
    for (request, expected) in recall_cases {
        let error = client.recall(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{expected}");
        assert!(
            error.message().contains(expected),
            "{expected:?} not in {:?}",
            error.message()
        );
    }
    for (id, code) in [
        ("", Code::InvalidArgument),
        ("01a237d2-e249-7717-aa01-6bd89d9bd991", Code::NotFound),
    ] {
        assert_eq!(
            client
                .get(api::GetRequest { id: id.into() })
                .await
                .unwrap_err()
                .code(),
            code
        );
        let forget = api::ForgetRequest {
            target: Some(api::forget_request::Target::Id(id.into())),
        };
        assert_eq!(client.forget(forget).await.unwrap_err().code(), code);
    }
    let error = client
        .forget(api::ForgetRequest { target: None })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    // Query syntax of the full-text engine is never interpreted.
    remember(
        &mut client,
        "global",
        "quotes \" and NEAR(stars *) are text",
    )
    .await;
    let found = recall(
        &mut client,
        &["global"],
        "\" NEAR( * OR AND",
        RecallMode::Keyword,
    )
    .await;
    assert_eq!(found.len(), 1);
}

/// Starts the daemon over a database file that is not ours and checks it refuses it, says why,
/// and leaves the file exactly as it was.
async fn refuses_database(contents: &[u8], expected: &str) {
    let sandbox = Sandbox::new();
    let directory = sandbox.state_dir().join("memory");
    std::fs::create_dir_all(&directory).unwrap();
    let database = directory.join("memory.sqlite");
    std::fs::write(&database, contents).unwrap();
    let mut daemon = sandbox.spawn("memory", sandbox.command("synos-memory"));
    let socket = sandbox.socket("memory");
    daemon.wait_health(&socket, ServingStatus::NotServing).await;
    let mut client = MemoryClient::new(channel(&socket).await);
    let error = client
        .remember(api::RememberRequest {
            memories: vec![new_memory("global", "hello")],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains(expected),
        "{expected:?} not in {:?}",
        error.message()
    );
    assert!(
        error.message().contains("refusing to use it"),
        "{}",
        error.message()
    );
    let (code, _, stderr) = output(sandbox.command("synosctl").arg("status"));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("DEGRADED") && stderr.contains(expected),
        "{stderr}"
    );
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        std::fs::read(&database).unwrap(),
        contents,
        "the refused file was changed"
    );
}

#[tokio::test]
async fn a_garbage_database_file_is_refused_and_left_alone() {
    refuses_database(
        b"this is a text file, not a database\n",
        "not an SQLite database",
    )
    .await;
}

#[tokio::test]
async fn a_foreign_sqlite_database_is_refused_and_left_alone() {
    // Another program's database, made by Debian's python3 (its sqlite3 module).
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("foreign.sqlite");
    let (code, _, stderr) = output(
        std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE invoices (id INTEGER)'); c.commit()")
            .arg(&path),
    );
    assert_eq!(code, 0, "{stderr}");
    refuses_database(
        &std::fs::read(&path).unwrap(),
        "not a SynOS memory database",
    )
    .await;
}

#[tokio::test]
async fn without_its_model_memory_keeps_working_on_keywords_and_embeds_later() {
    let sandbox = Sandbox::new();
    let empty_models = sandbox.path().join("no-models");
    std::fs::create_dir(&empty_models).unwrap();
    let mut command = sandbox.command("synos-memory");
    command.env("SYNOS_MODEL_DIR", &empty_models);
    let socket = sandbox.socket("memory");
    let mut daemon = sandbox.start_with("memory", command, &socket).await;
    let mut client = MemoryClient::new(channel(&socket).await);
    let stored = remember(&mut client, "global", "The boiler was serviced in October").await;
    assert_eq!(stored.outcome(), RememberOutcome::Created);
    let response = client
        .recall(api::RecallRequest {
            query: "boiler".into(),
            scopes: vec!["global".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.mode(), RecallMode::Keyword);
    assert_eq!(response.results.len(), 1);
    let error = client
        .recall(api::RecallRequest {
            query: "heating".into(),
            scopes: vec!["global".into()],
            mode: RecallMode::Vector.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("config.json"),
        "{}",
        error.message()
    );
    let stats = client
        .stats(api::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats
            .embedding_problem
            .contains("embedding model unavailable"),
        "{stats:?}"
    );
    assert_eq!(stats.pending_embeddings, 1);
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(5)).await;
    drop(daemon);

    // With the model back, the memory stored without a vector gets one.
    let (_daemon, mut client) = start(&sandbox).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .stats(api::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pending_embeddings
        > 0
    {
        assert!(Instant::now() < deadline, "never embedded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = texts(
        &recall(
            &mut client,
            &["global"],
            "heating maintenance",
            RecallMode::Vector,
        )
        .await,
    );
    assert_eq!(found, ["The boiler was serviced in October"]);
}

#[tokio::test]
async fn synosctl_remembers_recalls_forgets_and_reports() {
    let sandbox = Sandbox::new();
    let (_daemon, _client) = start(&sandbox).await;
    let synosctl = |arguments: &[&str]| output(sandbox.command("synosctl").args(arguments));
    let (code, id, stderr) = synosctl(&[
        "memory",
        "remember",
        "--scope",
        "user:dana",
        "--kind",
        "fact",
        "--importance",
        "0.8",
        "--expires",
        "30d",
        "Dana",
        "speaks",
        "Finnish",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let id = id.trim().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let (code, stdout, stderr) = synosctl(&[
        "memory",
        "recall",
        "--scope",
        "user:dana",
        "--json",
        "which languages does Dana know",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first = &results[0];
    assert_eq!(
        (first["id"].as_str(), first["text"].as_str()),
        (Some(id.as_str()), Some("Dana speaks Finnish"))
    );
    assert_eq!(
        (first["scope"].as_str(), first["kind"].as_str()),
        (Some("user:dana"), Some("fact"))
    );
    assert!(first["score"].as_f64().unwrap() > 0.0);
    let (code, stdout, _) = synosctl(&["memory", "recall", "--scope", "user:erik", "Finnish"]);
    assert_eq!((code, stdout.trim()), (0, "no memories found"));
    let (code, stdout, _) = synosctl(&["memory", "stats", "--json"]);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stats["memories"], 1);
    assert_eq!(stats["embedding_model"], "all-MiniLM-L6-v2");
    let (code, _, stderr) = synosctl(&["memory", "remember", "--scope", "nowhere", "x"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("synos-memory: invalid argument: memories[0]: scope \"nowhere\""),
        "{stderr}"
    );
    let (code, _, stderr) = synosctl(&["memory", "remember", "--expires", "soon", "x"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, _) = synosctl(&["memory", "forget", &id]);
    assert_eq!((code, stdout.trim()), (0, "forgot 1 memories"));
    let (code, _, stderr) = synosctl(&["memory", "forget", &id]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not found"), "{stderr}");
}

#[tokio::test]
async fn updates_keep_history_re_embed_and_refuse_contradictions() {
    let sandbox = Sandbox::new();
    let (_daemon, mut client) = start(&sandbox).await;
    let parking = remember(
        &mut client,
        "user:erin",
        "Erin parks on level 3 of the garage",
    )
    .await;
    let other = remember(&mut client, "user:erin", "Erin's badge number is 5521").await;
    let updated = client
        .update(api::UpdateRequest {
            id: parking.id.clone(),
            text: Some("Erin now rides a bicycle to the office".into()),
            kind: Some("fact".into()),
            metadata: [("topic".to_owned(), "commute".to_owned())].into(),
            ..api::UpdateRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memory
        .unwrap();
    assert_eq!((updated.kind.as_str(), updated.version), ("fact", 1));
    let got = client
        .get(api::GetRequest {
            id: parking.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.history[0].text, "Erin parks on level 3 of the garage");
    assert_eq!(got.history[0].reason, "updated");
    // The new text has a new vector: found by meaning, the old one is not.
    let found = texts(
        &recall(
            &mut client,
            &["user:erin"],
            "how does Erin get to work",
            RecallMode::Vector,
        )
        .await,
    );
    assert_eq!(
        found.first().map(String::as_str),
        Some("Erin now rides a bicycle to the office")
    );
    let keyword = texts(
        &recall(
            &mut client,
            &["user:erin"],
            "garage level",
            RecallMode::Keyword,
        )
        .await,
    );
    assert!(keyword.is_empty(), "{keyword:?}");

    let hostile = [
        (
            api::UpdateRequest {
                id: parking.id.clone(),
                text: Some("erin's BADGE number is 5521.".into()),
                ..Default::default()
            },
            Code::AlreadyExists,
            "already has this text",
        ),
        (
            api::UpdateRequest {
                id: parking.id.clone(),
                expires: Some(prost_types::Timestamp::from(
                    SystemTime::now() + Duration::from_secs(60),
                )),
                clear_expires: true,
                ..Default::default()
            },
            Code::InvalidArgument,
            "either expires or clear_expires",
        ),
        (
            api::UpdateRequest {
                id: parking.id.clone(),
                importance: Some(-1.0),
                ..Default::default()
            },
            Code::InvalidArgument,
            "importance",
        ),
        (
            api::UpdateRequest {
                id: parking.id.clone(),
                kind: Some("gossip".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "kind \"gossip\"",
        ),
        (
            api::UpdateRequest {
                id: parking.id.clone(),
                text: Some(" ".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "text: must not be empty",
        ),
        (
            api::UpdateRequest {
                id: other.id.replace('-', "0"),
                importance: Some(0.1),
                ..Default::default()
            },
            Code::NotFound,
            "no memory with id",
        ),
    ];
    for (request, code, expected) in hostile {
        let error = client.update(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{expected}: {}", error.message());
        assert!(
            error.message().contains(expected),
            "{expected:?} not in {:?}",
            error.message()
        );
    }
    // Nothing a refused update asked for happened.
    let unchanged = client
        .get(api::GetRequest {
            id: parking.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unchanged.memory.unwrap().text,
        "Erin now rides a bicycle to the office"
    );
    assert_eq!(unchanged.history.len(), 1);
}

#[tokio::test]
async fn forget_by_filter_touches_only_what_matches_in_the_named_scopes() {
    let sandbox = Sandbox::new();
    let (_daemon, mut client) = start(&sandbox).await;
    let labelled = |scope: &str, text: &str, project: &str| api::NewMemory {
        metadata: [("project".to_owned(), project.to_owned())].into(),
        kind: "task".into(),
        ..new_memory(scope, text)
    };
    client
        .remember(api::RememberRequest {
            memories: vec![
                labelled("chat:1", "Rename the staging bucket", "apollo"),
                labelled("chat:1", "Rotate the deploy keys", "hermes"),
                labelled("chat:2", "Archive the old dashboards", "apollo"),
                new_memory("chat:1", "The standup moved to 9:30"),
            ],
        })
        .await
        .unwrap();
    let forget = |scopes: Vec<String>, filter: api::Filter| api::ForgetRequest {
        target: Some(api::forget_request::Target::Filter(api::ForgetFilter {
            scopes,
            filter: Some(filter),
        })),
    };
    let apollo = api::Filter {
        kinds: vec!["task".into()],
        metadata: [("project".to_owned(), "apollo".to_owned())].into(),
        ..Default::default()
    };
    let forgotten = client
        .forget(forget(vec!["chat:1".into()], apollo.clone()))
        .await
        .unwrap()
        .into_inner()
        .forgotten;
    assert_eq!(forgotten, 1);
    let left = |client: &mut MemoryClient<Channel>, scope: &str| {
        let request = api::ListRequest {
            scopes: vec![scope.to_owned()],
            ..Default::default()
        };
        let mut client = client.clone();
        async move {
            let mut texts: Vec<String> = client
                .list(request)
                .await
                .unwrap()
                .into_inner()
                .memories
                .into_iter()
                .map(|m| m.text)
                .collect();
            texts.sort();
            texts
        }
    };
    assert_eq!(
        left(&mut client, "chat:1").await,
        ["Rotate the deploy keys", "The standup moved to 9:30"]
    );
    assert_eq!(
        left(&mut client, "chat:2").await,
        ["Archive the old dashboards"],
        "another scope was touched"
    );
    // A filter without scopes is refused, never "every scope".
    let error = client.forget(forget(Vec::new(), apollo)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("filter.scopes"),
        "{}",
        error.message()
    );
    let forgotten = client
        .forget(api::ForgetRequest {
            target: Some(api::forget_request::Target::Scope("chat:1".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .forgotten;
    assert_eq!(forgotten, 2);
    assert!(left(&mut client, "chat:1").await.is_empty());
}

#[tokio::test]
async fn an_import_is_held_to_the_model_and_to_the_limits_of_remember() {
    let source = Sandbox::new();
    let (_daemon, mut client) = start(&source).await;
    remember(&mut client, "user:alice", "Alice keeps bees on the roof").await;
    let exported = source.path().join("export.jsonl");
    let (code, _, stderr) = output(
        source
            .command("synosctl")
            .args(["memory", "export"])
            .arg(&exported),
    );
    assert_eq!(code, 0, "{stderr}");
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&exported).unwrap().trim()).unwrap();

    let target = Sandbox::new();
    let (_target_daemon, mut target_client) = start(&target).await;
    let import = |name: &str, line: &serde_json::Value| {
        let file = target.path().join(name);
        std::fs::write(&file, format!("{line}\n")).unwrap();
        output(
            target
                .command("synosctl")
                .args(["memory", "import"])
                .arg(&file),
        )
    };
    // One float claiming to be the running model's vector: refused, and the index keeps the
    // model's dimension.
    let mut tiny = line.clone();
    tiny["id"] = serde_json::json!("0190a0b2-7c4e-7a1b-9f3e-000000000001");
    tiny["embedding"] = serde_json::json!("AACAPw==");
    let (code, _, stderr) = import("tiny.jsonl", &tiny);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("line 1: embedding: 1 values, but all-MiniLM-L6-v2 makes vectors of 384"),
        "{stderr}"
    );
    // History is checked as Update would check it.
    let mut long_history = line.clone();
    long_history["history"] = serde_json::json!([{
        "version": 1, "text": "x".repeat(64 * 1024), "kind": "fact",
        "importance": 0.5, "metadata": {}, "replaced_ms": 1, "reason": "update"
    }]);
    let (code, _, stderr) = import("history.jsonl", &long_history);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("line 1: history version 1: text"),
        "{stderr}"
    );

    // The real line imports, and vector recall finds it.
    let (code, _, stderr) = import("real.jsonl", &line);
    assert_eq!(code, 0, "{stderr}");
    let found = recall(
        &mut target_client,
        &["user:alice"],
        "who has beehives",
        RecallMode::Vector,
    )
    .await;
    assert_eq!(texts(&found), ["Alice keeps bees on the roof"]);
}
