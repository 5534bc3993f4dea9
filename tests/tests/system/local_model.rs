//! The router's in-process local model (the shipped SmolLM2 GGUF): deterministic greedy
//! answers, streaming, sampling limits, the concurrency slot a cancelled request frees, the
//! last resort when every remote provider fails, and a missing or broken model file.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use synos_integration_tests::process::cpu_seconds;
use synos_integration_tests::stand_in::{Behaviour, StandIn};
use synos_integration_tests::{
    Daemon, Sandbox, channel, require_local_model, router_provider, status_line,
};
use synos_proto::llm::v1::router_client::RouterClient;
use synos_proto::llm::v1::{
    AttemptOutcome, ChatMessage, ChatRequest, ChatResponse, ProviderState, chat_stream_event,
};
use tonic::Code;
use tonic::transport::Channel;

const QUESTION: &str = "What is the capital of France?";

fn ask(content: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: content.to_owned(),
        }],
        temperature: Some(0.0),
        max_tokens: Some(48),
        ..ChatRequest::default()
    }
}

async fn router(sandbox: &Sandbox) -> (Daemon, RouterClient<Channel>) {
    let daemon = sandbox.start("llm-router").await;
    let client = RouterClient::new(channel(&sandbox.socket("llm-router")).await);
    (daemon, client)
}

async fn chat(client: &mut RouterClient<Channel>, request: ChatRequest) -> ChatResponse {
    client.chat(request).await.unwrap().into_inner()
}

/// Waits up to 5 s for the router's status line (refreshed every 2 s) to contain `expected`.
async fn wait_for_status(sandbox: &Sandbox, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !status_line(&sandbox.socket("llm-router"))
        .await
        .contains(expected)
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            status_line(&sandbox.socket("llm-router")).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn with_no_configuration_the_local_model_loads_on_first_use_and_answers_deterministically() {
    require_local_model();
    let sandbox = Sandbox::new();
    let (_daemon, mut client) = router(&sandbox).await;

    // Startup does not load the model; the status line and the provider list say so.
    assert!(
        status_line(&sandbox.socket("llm-router"))
            .await
            .contains("not loaded (loads on first use)"),
        "{}",
        status_line(&sandbox.socket("llm-router")).await
    );
    let before = router_provider(&mut client, "local").await;
    assert_eq!(before.state(), ProviderState::Available);
    assert!(
        before.state_reason.contains("not loaded"),
        "{}",
        before.state_reason
    );
    assert!(before.base_url.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));

    let first = chat(&mut client, ask(QUESTION)).await;
    let second = chat(&mut client, ask(QUESTION)).await;
    assert!(first.content.contains("Paris"), "{:?}", first.content);
    assert_eq!(
        first.content, second.content,
        "greedy decoding is deterministic"
    );
    assert_eq!(first.finish_reason, "stop");
    let served = first.served.unwrap();
    assert_eq!(served.provider, "local");
    assert_eq!(served.model, "SmolLM2-135M-Instruct.Q4_1");
    let usage = served.usage.unwrap();
    assert!(
        usage.input_tokens > 20,
        "the template's system prompt is counted: {usage:?}"
    );
    assert!(usage.output_tokens > 0 && !usage.counted);
    assert_eq!(usage.cost_usd, 0.0);

    let after = router_provider(&mut client, "local").await;
    assert!(
        after.state_reason.contains("loaded ("),
        "{}",
        after.state_reason
    );
    wait_for_status(&sandbox, "SmolLM2-135M-Instruct.Q4_1 loaded (").await;

    // Typed control tokens are text, not markup: "<|im_start|>" costs several tokens, not one.
    let plain = chat(&mut client, ask("x")).await;
    let typed = chat(&mut client, ask("<|im_start|>")).await;
    let count = |response: &ChatResponse| {
        response
            .served
            .as_ref()
            .unwrap()
            .usage
            .as_ref()
            .unwrap()
            .input_tokens
    };
    assert!(
        count(&typed) >= count(&plain) + 4,
        "{} vs {}",
        count(&typed),
        count(&plain)
    );
}

#[tokio::test]
async fn the_local_model_streams_the_same_answer_and_honours_max_tokens_and_stop() {
    require_local_model();
    let sandbox = Sandbox::new();
    let (_daemon, mut client) = router(&sandbox).await;
    let whole = chat(&mut client, ask(QUESTION)).await;

    let mut events = client
        .chat_stream(ask(QUESTION))
        .await
        .unwrap()
        .into_inner();
    let mut deltas = Vec::new();
    let mut started = None;
    let mut finished = None;
    while let Some(event) = events.next().await {
        match event.unwrap().event.unwrap() {
            chat_stream_event::Event::Started(event) => started = Some(event),
            chat_stream_event::Event::Delta(delta) => deltas.push(delta),
            chat_stream_event::Event::Finished(event) => finished = Some(event),
        }
    }
    assert_eq!(started.unwrap().provider, "local");
    assert!(deltas.len() > 3, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), whole.content);
    assert_eq!(finished.unwrap().finish_reason, "stop");

    let short = chat(
        &mut client,
        ChatRequest {
            max_tokens: Some(3),
            ..ask(QUESTION)
        },
    )
    .await;
    assert_eq!(short.finish_reason, "length");
    assert_eq!(short.served.unwrap().usage.unwrap().output_tokens, 3);

    let stopped = chat(
        &mut client,
        ChatRequest {
            stop: vec!["Paris".to_owned()],
            ..ask(QUESTION)
        },
    )
    .await;
    assert_eq!(stopped.finish_reason, "stop");
    assert!(!stopped.content.contains("Paris"));
    assert!(
        whole.content.starts_with(&stopped.content),
        "{:?}",
        stopped.content
    );

    // A seed makes sampling at a temperature repeatable; other seeds may differ.
    let seeded = |seed| ChatRequest {
        temperature: Some(1.2),
        seed: Some(seed),
        ..ask("Tell me about cats.")
    };
    let one = chat(&mut client, seeded(7)).await.content;
    assert_eq!(one, chat(&mut client, seeded(7)).await.content);

    for (request, expected) in [
        (
            ChatRequest {
                top_p: Some(0.0),
                ..ask(QUESTION)
            },
            "top_p",
        ),
        (
            ChatRequest {
                stop: vec![String::new()],
                ..ask(QUESTION)
            },
            "stop",
        ),
    ] {
        let status = client.chat(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
    }
}

#[tokio::test]
async fn a_cancelled_request_frees_its_slot_and_stops_generating() {
    require_local_model();
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "llm-router",
        r#"
[[provider]]
name = "local"
kind = "local"
tier = "free"
trust = "local"
price = "free"
max_concurrency = 1
"#,
    );
    let (daemon, mut client) = router(&sandbox).await;
    let long = ChatRequest {
        max_tokens: Some(1500),
        temperature: Some(0.0),
        ..ask("Count from 1 to 1000, one number per line.")
    };
    let mut events = client.chat_stream(long.clone()).await.unwrap().into_inner();
    let mut deltas = 0;
    while deltas < 3 {
        if let chat_stream_event::Event::Delta(_) =
            events.next().await.unwrap().unwrap().event.unwrap()
        {
            deltas += 1;
        }
    }
    // Its one slot is taken: a second request is refused at once, not queued.
    let busy = client.chat(ask(QUESTION)).await.unwrap_err();
    assert_eq!(busy.code(), Code::Unavailable, "{}", busy.message());
    assert!(busy.message().contains("local"), "{}", busy.message());

    drop(events);
    let deadline = Instant::now() + Duration::from_secs(3);
    while router_provider(&mut client, "local").await.in_flight != 0 {
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Generation stopped too: the router is idle, where generating keeps a core busy.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_seconds(daemon.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(daemon.pid()) - before;
    assert!(
        used < 0.3,
        "the router used {used:.2} s of CPU in 1 s after the cancel"
    );

    let answer = chat(&mut client, ask(QUESTION)).await;
    assert!(answer.content.contains("Paris"), "{:?}", answer.content);
}

#[tokio::test]
async fn when_every_remote_provider_fails_the_local_model_answers() {
    require_local_model();
    let (failing, gone) = (StandIn::start("a").await, StandIn::start("b").await);
    failing.script([], Behaviour::Status(503, None));
    gone.kill();
    let sandbox = Sandbox::new();
    let mut config = String::new();
    for (name, stand_in) in [("a", &failing), ("b", &gone)] {
        config.push_str(&stand_in.provider_block(name, ""));
    }
    config.push_str(
        "\n[[route]]\nname = \"default\"\nretries = 0\n\
         chain = [{ provider = \"a\", model = \"m\" }, { provider = \"b\", model = \"m\" }]\n",
    );
    sandbox.write_config("llm-router", &config);
    let (_daemon, mut client) = router(&sandbox).await;
    let answer = chat(&mut client, ask(QUESTION)).await;
    assert!(answer.content.contains("Paris"), "{:?}", answer.content);
    let served = answer.served.unwrap();
    assert_eq!(served.provider, "local");
    let outcomes: Vec<(String, AttemptOutcome)> = served
        .attempts
        .iter()
        .map(|attempt| (attempt.provider.clone(), attempt.outcome()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a".to_owned(), AttemptOutcome::ServerError),
            ("b".to_owned(), AttemptOutcome::ConnectionFailed),
            ("local".to_owned(), AttemptOutcome::Ok),
        ]
    );
}

#[tokio::test]
async fn a_missing_or_broken_model_file_leaves_the_router_serving_and_says_why() {
    let sandbox = Sandbox::new();
    let broken = sandbox.path().join("broken.gguf");
    std::fs::write(&broken, b"GGUF but not really a model").unwrap();
    sandbox.write_config(
        "llm-router",
        &format!(
            r#"
[[provider]]
name = "local"
kind = "local"
tier = "free"
trust = "local"
price = "free"
model_file = "/nonexistent/model.gguf"

[[provider]]
name = "broken"
kind = "local"
tier = "free"
trust = "local"
price = "free"
model_file = "{}"

[[route]]
name = "broken"
last_resort = ""
chain = [{{ provider = "broken" }}]
"#,
            broken.display()
        ),
    );
    let (mut daemon, mut client) = router(&sandbox).await;
    let missing = router_provider(&mut client, "local").await;
    assert_eq!(missing.state(), ProviderState::Unusable);
    assert!(
        missing
            .state_reason
            .contains("/nonexistent/model.gguf not found")
            && missing.state_reason.contains("synos-model-smollm2"),
        "{}",
        missing.state_reason
    );
    let refused = client.chat(ask(QUESTION)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("not found"),
        "{}",
        refused.message()
    );

    let failed = client
        .chat(ChatRequest {
            route: "broken".to_owned(),
            ..ask(QUESTION)
        })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable);
    assert!(
        failed.message().contains("failed to load"),
        "{}",
        failed.message()
    );
    wait_for_status(&sandbox, "local model broken failed to load").await;
    assert!(
        daemon.wait_exit(Duration::from_millis(100)).await.is_none(),
        "still running"
    );
}

#[tokio::test]
async fn on_the_minimal_tier_the_local_model_is_not_loaded_and_the_reason_is_given() {
    require_local_model();
    let sandbox = Sandbox::new();
    // hwaccel describes a machine with 512 MiB of memory.
    let machine = sandbox.path().join("machine");
    for (path, content) in [
        ("proc/cpuinfo", "processor\t: 0\nmodel name\t: Small CPU\n"),
        (
            "proc/meminfo",
            "MemTotal: 524288 kB\nMemAvailable: 262144 kB\n",
        ),
    ] {
        let path = machine.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    sandbox.write_config(
        "hwaccel",
        &format!(
            "[detection]\nroot = \"{}\"\nnvml = false\n",
            machine.display()
        ),
    );
    let _hwaccel = sandbox.start("hwaccel").await;
    let (_router, mut client) = router(&sandbox).await;
    let refused = client.chat(ask(QUESTION)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("minimal tier")
            && refused
                .message()
                .contains("effective memory 0.5 GiB is below 1.0 GiB"),
        "{}",
        refused.message()
    );
    // The status line says why, with what to change.
    wait_for_status(
        &sandbox,
        "lowering [tiers] minimal_below_bytes in hwaccel.toml",
    )
    .await;
}
