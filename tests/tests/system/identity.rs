//! Identity proven, not claimed: two real local users in group synos call the daemons (run as
//! root, as systemd runs them as their own users), which learn who calls from the socket's peer
//! credentials. A principal a user names for someone else is refused; another user's memories
//! cannot be read, listed, exported, updated or forgotten; administration calls by a user are
//! refused and audited.

use synos_integration_tests::users::{LocalUser, LocalUsers};
use synos_integration_tests::{Daemon, Sandbox, channel, require_embedding_model};
use synos_proto::llm::v1::{ChatMessage, ChatRequest, EmbedRequest};
use synos_proto::memory::v1::{ForgetRequest, UpdateRequest, forget_request};
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{
    AuditRecord, AuthorizeRequest, AuthorizeResponse, Decision, QueryAuditRequest,
    ScreenInputRequest,
};
use tonic::Code;

/// Two accounts used by these tests (created once on the machine, left for the next run).
const ALICE: &str = "synostest-alice";
const BOB: &str = "synostest-bob";

struct Machine {
    sandbox: Sandbox,
    users: LocalUsers,
    alice: LocalUser,
    bob: LocalUser,
    _daemons: Vec<Daemon>,
}

/// `short_names` started as root in a fresh sandbox whose sockets members of synos may use;
/// `None` when not root.
async fn machine(short_names: &[&str]) -> Option<Machine> {
    let users = LocalUsers::new()?;
    let alice = users.user(ALICE);
    let bob = users.user(BOB);
    let sandbox = Sandbox::new();
    let mut daemons = Vec::new();
    for short_name in short_names {
        daemons.push(sandbox.start(short_name).await);
    }
    users.open_sockets(&sandbox);
    Some(Machine {
        sandbox,
        users,
        alice,
        bob,
        _daemons: daemons,
    })
}

fn principal(user: &LocalUser) -> String {
    format!("User::\"{}\"", user.name)
}

/// The audit records of `principal`, as root reads them.
async fn audit_of(sandbox: &Sandbox, principal: &str) -> Vec<AuditRecord> {
    PolicyClient::new(channel(&sandbox.socket("policy")).await)
        .query_audit(QueryAuditRequest {
            principal: principal.to_owned(),
            limit: 1000,
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
}

fn refused(result: &Result<Vec<u8>, (Code, String)>, code: Code, what: &str) {
    match result {
        Err((got, message)) => assert_eq!(*got, code, "{what}: {message}"),
        Ok(_) => panic!("{what}: was answered, expected {code:?}"),
    }
}

#[tokio::test]
async fn a_principal_named_for_someone_else_is_refused_by_policy_and_the_router() {
    let Some(machine) = machine(&["policy", "llm-router"]).await else {
        return;
    };
    let (users, alice) = (&machine.users, &machine.alice);
    let policy = machine.sandbox.socket("policy");
    let router = machine.sandbox.socket("llm-router");
    let authorize = "/synos.policy.v1.Policy/Authorize";

    // Naming root, a service or bob is refused; naming nobody means the caller.
    for forged in [
        "User::\"root\"",
        "Service::\"synos-llm-router\"",
        &principal(&machine.bob),
    ] {
        let request = AuthorizeRequest {
            principal: forged.to_owned(),
            action: "llm.chat".to_owned(),
            resource: "Route::\"default\"".to_owned(),
        };
        let answer = users.call(alice, &policy, authorize, &request).await;
        refused(&answer, Code::PermissionDenied, forged);
        let (_, message) = answer.unwrap_err();
        assert!(message.contains(&principal(alice)), "{message}");
    }
    let own = AuthorizeRequest {
        principal: String::new(),
        action: "llm.chat".to_owned(),
        resource: "Route::\"default\"".to_owned(),
    };
    let answer = users.call(alice, &policy, authorize, &own).await.unwrap();
    let answer: AuthorizeResponse = prost::Message::decode(answer.as_slice()).unwrap();
    assert_eq!(answer.decision(), Decision::Allow);

    let screen = ScreenInputRequest {
        text: "hello".to_owned(),
        principal: principal(&machine.bob),
        resource: String::new(),
    };
    let answer = users
        .call(
            alice,
            &policy,
            "/synos.policy.v1.Policy/ScreenInput",
            &screen,
        )
        .await;
    refused(&answer, Code::PermissionDenied, "ScreenInput as bob");

    // The router believes the socket too, for chat and embeddings, before any provider is asked.
    let chat = ChatRequest {
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: "hello".to_owned(),
        }],
        principal: "User::\"root\"".to_owned(),
        ..ChatRequest::default()
    };
    let answer = users
        .call(alice, &router, "/synos.llm.v1.Router/Chat", &chat)
        .await;
    refused(&answer, Code::PermissionDenied, "Chat as root");
    let embed = EmbedRequest {
        inputs: vec!["hello".to_owned()],
        principal: principal(&machine.bob),
        ..EmbedRequest::default()
    };
    let answer = users
        .call(alice, &router, "/synos.llm.v1.Router/Embed", &embed)
        .await;
    refused(&answer, Code::PermissionDenied, "Embed as bob");

    // The audit log names alice, as the kernel does, never the name she typed.
    let records = audit_of(&machine.sandbox, &principal(alice)).await;
    assert!(
        records
            .iter()
            .any(|record| record.kind == "authorize" && record.action == "llm.chat"),
        "{records:?}"
    );
    assert!(
        audit_of(&machine.sandbox, "User::\"root\"")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn administration_by_a_user_is_refused_and_audited() {
    let Some(machine) = machine(&["policy", "llm-router"]).await else {
        return;
    };
    let (users, sandbox) = (&machine.users, &machine.sandbox);
    let (alice, bob) = (&machine.alice, &machine.bob);

    for arguments in [
        &["policy", "reload"][..],
        &["audit", "verify"],
        &["audit", "tail"],
        &["llm", "provider", "drain", "local"],
        &["llm", "provider", "cool", "local"],
    ] {
        let (code, stdout, stderr) = users.synosctl(sandbox, alice, arguments).await;
        assert_ne!(code, 0, "{arguments:?}: {stdout}");
        assert!(
            stderr.contains("permission denied"),
            "{arguments:?}: {stderr}"
        );
    }
    let records = audit_of(sandbox, &principal(alice)).await;
    for action in ["policy.reload", "audit.read", "llm.manage"] {
        assert!(
            records
                .iter()
                .any(|record| record.action == action && record.outcome == "deny"),
            "no refusal of {action} audited: {records:?}"
        );
    }

    // Keys: alice makes her own, not bob's; bob neither sees nor revokes hers.
    let (code, _, stderr) = users
        .synosctl(
            sandbox,
            alice,
            &["llm", "keys", "create", "--principal", BOB],
        )
        .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("permission denied"), "{stderr}");
    let (code, stdout, stderr) = users
        .synosctl(sandbox, alice, &["llm", "keys", "create"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&principal(alice)), "{stdout}");
    let (_, listed, _) = users
        .synosctl(sandbox, alice, &["llm", "keys", "list", "--json"])
        .await;
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = keys["keys"][0]["id"].as_str().unwrap().to_owned();
    let (_, listed, _) = users
        .synosctl(sandbox, bob, &["llm", "keys", "list", "--json"])
        .await;
    assert!(!listed.contains(&id), "{listed}");
    let (code, _, stderr) = users
        .synosctl(sandbox, bob, &["llm", "keys", "revoke", &id])
        .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("permission denied"), "{stderr}");
    // Root administers.
    let (code, _, stderr) = sandbox
        .synosctl(&["llm", "provider", "drain", "local"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = sandbox.synosctl(&["llm", "keys", "revoke", &id]).await;
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn another_users_memories_cannot_be_read_listed_exported_changed_or_forgotten() {
    require_embedding_model();
    let Some(machine) = machine(&["policy", "memory"]).await else {
        return;
    };
    let (users, sandbox) = (&machine.users, &machine.sandbox);
    let (alice, bob) = (&machine.alice, &machine.bob);
    let bobs_scope = format!("user:{BOB}");

    let (code, stdout, stderr) = users
        .synosctl(
            sandbox,
            bob,
            &[
                "memory",
                "remember",
                "--scope",
                &bobs_scope,
                "My locker code is 4711",
            ],
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.trim().to_owned();

    let denied = |(code, stdout, stderr): (i32, String, String), what: &str| {
        assert_ne!(code, 0, "{what}: {stdout}");
        assert!(stderr.contains("permission denied"), "{what}: {stderr}");
        assert!(!stdout.contains("4711"), "{what}: {stdout}");
    };
    for arguments in [
        &["memory", "recall", "--scope", &bobs_scope, "locker code"][..],
        &["memory", "list", "--scope", &bobs_scope],
        &["memory", "get", &id],
        &["memory", "forget", &id],
        &["memory", "forget", "--scope", &bobs_scope],
        &[
            "memory",
            "remember",
            "--scope",
            &bobs_scope,
            "My locker code is 0000",
        ],
        &["ask", "--user", BOB, "What is my locker code?"],
        // global is everyone's to read, the administrator's to write
        &[
            "memory",
            "remember",
            "--scope",
            "global",
            "Everyone's code is 0000",
        ],
    ] {
        denied(
            users.synosctl(sandbox, alice, arguments).await,
            &arguments.join(" "),
        );
    }
    let update = UpdateRequest {
        id: id.clone(),
        text: Some("My locker code is 0000".to_owned()),
        ..UpdateRequest::default()
    };
    let memory = sandbox.socket("memory");
    let answer = users
        .call(alice, &memory, "/synos.memory.v1.Memory/Update", &update)
        .await;
    refused(&answer, Code::PermissionDenied, "Update of bob's memory");
    let forget = ForgetRequest {
        target: Some(forget_request::Target::Filter(
            synos_proto::memory::v1::ForgetFilter {
                scopes: vec![bobs_scope.clone()],
                filter: None,
            },
        )),
    };
    let answer = users
        .call(alice, &memory, "/synos.memory.v1.Memory/Forget", &forget)
        .await;
    refused(
        &answer,
        Code::PermissionDenied,
        "Forget by filter of bob's scope",
    );

    // An export that names no scope is the caller's own.
    let (code, exported, stderr) = users.synosctl(sandbox, alice, &["memory", "export"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!exported.contains("4711"), "{exported}");

    // Alice's own memories are hers; bob's are untouched by all of the above.
    let (code, _, stderr) = users
        .synosctl(
            sandbox,
            alice,
            &[
                "memory",
                "remember",
                "--scope",
                &format!("user:{ALICE}"),
                "My bike is blue",
            ],
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let (code, recalled, stderr) = users
        .synosctl(
            sandbox,
            bob,
            &["memory", "recall", "--scope", &bobs_scope, "locker code"],
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        recalled.contains("4711") && !recalled.contains("0000"),
        "{recalled}"
    );
    let (code, _, _) = users
        .synosctl(
            sandbox,
            bob,
            &[
                "memory",
                "recall",
                "--scope",
                &format!("user:{ALICE}"),
                "bike",
            ],
        )
        .await;
    assert_ne!(code, 0);

    let records = audit_of(sandbox, &principal(alice)).await;
    assert!(
        records.iter().any(
            |record| record.action == format!("memory.read:{bobs_scope}")
                && record.outcome == "deny"
        ),
        "{records:?}"
    );
}
