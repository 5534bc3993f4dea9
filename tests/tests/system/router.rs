//! The LLM router against stand-in providers (real HTTP servers on 127.0.0.1 following
//! scripts): routing decisions and their timing for every failure mode, the escalation guard,
//! budgets, configuration errors, HTTP key authentication, reload, and a load test with
//! providers killed under load.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use nix::sys::signal::Signal;
use synos_integration_tests::stand_in::{Behaviour, StandIn};
use synos_integration_tests::{
    Daemon, Sandbox, channel, http_listener, output, project_python, repository_path,
};
use synos_proto::llm::v1::router_client::RouterClient;
use synos_proto::llm::v1::{
    AttemptOutcome, BreakerState, ChatMessage, ChatRequest, EmbedRequest, ListProvidersRequest,
    ProviderState, Tier, chat_stream_event,
};
use tonic::Code;
use tonic::transport::Channel;

/// A `[[provider]]` block: cheap, external, priced, with short timeouts.
fn provider(name: &str, stand_in: &StandIn, extra: &str) -> String {
    stand_in.provider_block(name, extra)
}

/// A `[[route]]` block over `chain` (provider names, each asked for model "m"), without the
/// local model as last resort: these tests watch the chain's own decisions (local_model.rs
/// tests the last resort).
fn route(name: &str, chain: &[&str], extra: &str) -> String {
    let entries: Vec<String> = chain
        .iter()
        .map(|provider| format!("{{ provider = \"{provider}\", model = \"m-{provider}\" }}"))
        .collect();
    format!(
        "\n[[route]]\nname = \"{name}\"\nretries = 0\nbackoff_ms = 10\nlast_resort = \"\"\n{extra}\nchain = [{}]\n",
        entries.join(", ")
    )
}

struct Router {
    daemon: Daemon,
    client: RouterClient<Channel>,
    http: Option<String>,
}

async fn start_router(sandbox: &Sandbox, config: &str) -> Router {
    sandbox.write_config("llm-router", config);
    let daemon = sandbox.start("llm-router").await;
    let socket = sandbox.socket("llm-router");
    let client = RouterClient::new(channel(&socket).await);
    let http = http_listener(&socket).await;
    Router {
        daemon,
        client,
        http,
    }
}

/// Stand-ins "a" (following `steps`, then `then`) and "b" (answering), a router whose route
/// "default" chains a then b, and the sandbox it runs in; `adjust` edits a's configuration.
async fn a_then_b(
    steps: impl IntoIterator<Item = Behaviour>,
    then: Behaviour,
    adjust: impl Fn(String) -> String,
) -> (StandIn, StandIn, Router, Sandbox) {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    first.script(steps, then);
    let sandbox = Sandbox::new();
    let config = adjust(provider("a", &first, ""))
        + &provider("b", &second, "")
        + &route("default", &["a", "b"], "");
    let router = start_router(&sandbox, &config).await;
    (first, second, router, sandbox)
}

fn ask(route: &str) -> ChatRequest {
    ChatRequest {
        route: route.to_owned(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hello there".into(),
        }],
        ..ChatRequest::default()
    }
}

/// Asks the default route and returns who served the answer; panics on an error.
async fn chat_served(client: &mut RouterClient<Channel>) -> synos_proto::llm::v1::Served {
    client
        .chat(ask(""))
        .await
        .unwrap()
        .into_inner()
        .served
        .unwrap()
}

fn outcomes(served: &synos_proto::llm::v1::Served) -> Vec<(String, AttemptOutcome)> {
    served
        .attempts
        .iter()
        .map(|attempt| (attempt.provider.clone(), attempt.outcome()))
        .collect()
}

fn pair(provider: &str, outcome: AttemptOutcome) -> (String, AttemptOutcome) {
    (provider.to_owned(), outcome)
}

async fn providers(client: &mut RouterClient<Channel>) -> Vec<synos_proto::llm::v1::Provider> {
    client
        .list_providers(ListProvidersRequest {})
        .await
        .unwrap()
        .into_inner()
        .providers
}

#[tokio::test]
async fn a_429_cools_the_provider_for_its_retry_after_and_later_requests_skip_it() {
    let (first, _second, mut router, _sandbox) = a_then_b(
        [Behaviour::Status(429, Some("30".into()))],
        Behaviour::Ok,
        |config| config,
    )
    .await;

    let reply = router.client.chat(ask("")).await.unwrap().into_inner();
    assert_eq!(reply.content, "reply from b");
    let served = reply.served.unwrap();
    assert_eq!(
        (served.provider.as_str(), served.model.as_str()),
        ("b", "m-b")
    );
    assert_eq!(
        outcomes(&served),
        [
            pair("a", AttemptOutcome::RateLimited),
            pair("b", AttemptOutcome::Ok)
        ]
    );
    assert_eq!(served.attempts[0].detail, "HTTP 429, Retry-After 30.0 s");

    // Cooling: skipped without a request reaching it.
    let started = Instant::now();
    let reply = router
        .client
        .chat(ask("default"))
        .await
        .unwrap()
        .into_inner();
    assert!(started.elapsed() < Duration::from_secs(1));
    let served = reply.served.unwrap();
    assert_eq!(
        outcomes(&served),
        [
            pair("a", AttemptOutcome::Skipped),
            pair("b", AttemptOutcome::Ok)
        ]
    );
    let detail = &served.attempts[0].detail;
    assert!(
        detail.starts_with("cooling down for ")
            && detail.ends_with(" s more (HTTP 429, Retry-After 30.0 s)"),
        "{detail}"
    );
    assert_eq!(first.count(), 1);
    let listed = providers(&mut router.client).await;
    assert_eq!(listed[0].state(), ProviderState::CoolingDown);
    let remaining = Duration::try_from(listed[0].cooldown_remaining.unwrap()).unwrap();
    assert!(remaining > Duration::from_secs(28) && remaining <= Duration::from_secs(30));
    assert_eq!(listed[0].state_reason, "HTTP 429, Retry-After 30.0 s");
    assert_eq!(listed[1].state(), ProviderState::Available);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    let in_a_minute =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    first.script([Behaviour::Status(503, Some(in_a_minute))], Behaviour::Ok);
    let sandbox = Sandbox::new();
    let config = provider("a", &first, "")
        + &provider("b", &second, "")
        + &route("default", &["a", "b"], "");
    let mut router = start_router(&sandbox, &config).await;
    let served = chat_served(&mut router.client).await;
    assert_eq!(
        outcomes(&served),
        [
            pair("a", AttemptOutcome::ServerError),
            pair("b", AttemptOutcome::Ok)
        ]
    );
    let remaining = Duration::try_from(
        providers(&mut router.client).await[0]
            .cooldown_remaining
            .unwrap(),
    )
    .unwrap();
    assert!(
        remaining > Duration::from_secs(55) && remaining <= Duration::from_secs(60),
        "{remaining:?}"
    );
}

#[tokio::test]
async fn a_burst_of_server_errors_opens_the_breaker_and_one_probe_closes_it() {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    first.script([], Behaviour::Status(500, None));
    let sandbox = Sandbox::new();
    let config = String::from(
        "[breaker]\nwindow_ms = 10000\nmin_requests = 3\nerror_ratio = 0.5\nopen_ms = 600\ncooldown_ms = 1\n",
    ) + &provider("a", &first, "")
        + &provider("b", &second, "")
        + &route("default", &["a", "b"], "");
    let mut router = start_router(&sandbox, &config).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let served = chat_served(&mut router.client).await;
        assert_eq!(served.provider, "b");
        assert_eq!(served.attempts[0].outcome(), AttemptOutcome::ServerError);
    }
    // Past the 1 ms cooldown of the last failure, so only the breaker keeps `a` out (an
    // optimised router answers the next call within that millisecond).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let listed = providers(&mut router.client).await;
    assert_eq!(listed[0].state(), ProviderState::CircuitOpen);
    assert_eq!(listed[0].breaker(), BreakerState::Open);
    // Open: skipped without a round trip.
    for _ in 0..5 {
        let served = chat_served(&mut router.client).await;
        assert_eq!(served.attempts[0].outcome(), AttemptOutcome::Skipped);
        assert!(
            served.attempts[0].detail.starts_with("circuit open"),
            "{:?}",
            served.attempts[0]
        );
    }
    assert_eq!(first.count(), 3);
    // After open_ms, the provider has recovered: a single probe closes the breaker.
    first.script([], Behaviour::Ok);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        providers(&mut router.client).await[0].breaker(),
        BreakerState::HalfOpen
    );
    let served = chat_served(&mut router.client).await;
    assert_eq!(outcomes(&served), [pair("a", AttemptOutcome::Ok)]);
    assert_eq!(
        providers(&mut router.client).await[0].breaker(),
        BreakerState::Closed
    );
    assert_eq!(first.count(), 4);
}

#[tokio::test]
async fn a_provider_that_hangs_before_headers_is_abandoned_at_the_first_token_timeout() {
    let (_first, _second, mut router, _sandbox) =
        a_then_b([], Behaviour::HangBeforeHeaders, |config| {
            config.replace("first_token_ms = 2000", "first_token_ms = 400")
        })
        .await;
    let started = Instant::now();
    let served = chat_served(&mut router.client).await;
    let elapsed = started.elapsed();
    assert_eq!(
        outcomes(&served),
        [
            pair("a", AttemptOutcome::Timeout),
            pair("b", AttemptOutcome::Ok)
        ]
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    let waited = Duration::try_from(served.attempts[0].latency.unwrap()).unwrap();
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_millis(1000));
    assert!(
        served.attempts[0]
            .detail
            .contains("first-token timeout of 0.4 s")
    );
}

async fn stream(
    client: &mut RouterClient<Channel>,
    request: ChatRequest,
) -> (Vec<chat_stream_event::Event>, Option<tonic::Status>) {
    let mut events = Vec::new();
    let mut stream = client.chat_stream(request).await.unwrap().into_inner();
    loop {
        match stream.next().await {
            None => return (events, None),
            Some(Ok(event)) => events.push(event.event.unwrap()),
            Some(Err(status)) => return (events, Some(status)),
        }
    }
}

#[tokio::test]
async fn a_slow_first_token_fails_over_before_anything_reaches_the_client() {
    let (_first, _second, mut router, _sandbox) = a_then_b(
        [],
        Behaviour::SlowFirstToken(Duration::from_secs(3)),
        |config| config.replace("first_token_ms = 2000", "first_token_ms = 500"),
    )
    .await;
    let started = Instant::now();
    let (events, error) = stream(&mut router.client, ask("")).await;
    let elapsed = started.elapsed();
    assert!(error.is_none(), "{error:?}");
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(2000),
        "{elapsed:?}"
    );
    let chat_stream_event::Event::Started(started) = &events[0] else {
        panic!("first event is not Started: {events:?}")
    };
    assert_eq!(started.provider, "b");
    assert_eq!(started.attempts[0].outcome(), AttemptOutcome::Timeout);
    let text: String = events
        .iter()
        .filter_map(|event| match event {
            chat_stream_event::Event::Delta(delta) => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "reply from b");
    let Some(chat_stream_event::Event::Finished(finished)) = events.last() else {
        panic!("stream did not finish: {events:?}")
    };
    assert_eq!(finished.finish_reason, "stop");
    let usage = finished.served.as_ref().unwrap().usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.counted),
        (11, 7, false)
    );
}

#[tokio::test]
async fn a_stream_broken_after_its_first_token_ends_in_an_error_not_a_short_answer() {
    let (_first, second, mut router, _sandbox) =
        a_then_b([], Behaviour::DisconnectMidStream, |config| config).await;
    let (events, error) = stream(&mut router.client, ask("")).await;
    let error =
        error.unwrap_or_else(|| panic!("a broken stream must end with an error: {events:?}"));
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error.message().contains("the answer is incomplete"),
        "{error:?}"
    );
    assert!(matches!(events[0], chat_stream_event::Event::Started(_)));
    assert!(
        events
            .iter()
            .any(|event| matches!(event, chat_stream_event::Event::Delta(_)))
    );
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, chat_stream_event::Event::Finished(_)))
    );
    assert_eq!(second.count(), 0, "no failover after the first byte");
}

#[tokio::test]
async fn malformed_mistyped_and_oversized_replies_fail_over_with_the_reason() {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    let sandbox = Sandbox::new();
    let config = provider("a", &first, "max_reply_bytes = 65536")
        + &provider("b", &second, "")
        + &route("default", &["a", "b"], "");
    let mut router = start_router(&sandbox, &config).await;
    for (behaviour, reason) in [
        (Behaviour::MalformedJson, "malformed JSON reply"),
        (
            Behaviour::WrongContentType,
            "content type \"text/html\", expected application/json",
        ),
        (
            Behaviour::Oversized(200_000),
            "reply larger than 65536 bytes",
        ),
        (Behaviour::Status(502, None), "HTTP 502"),
    ] {
        first.script([behaviour.clone()], Behaviour::Ok);
        // Each failure cools or counts; restore so the next case reaches the provider.
        restore(&mut router.client, "a").await;
        let served = chat_served(&mut router.client).await;
        assert_eq!(served.provider, "b", "{behaviour:?}");
        assert!(
            served.attempts[0].detail.contains(reason),
            "{behaviour:?}: {:?}",
            served.attempts[0]
        );
    }
}

async fn restore(client: &mut RouterClient<Channel>, name: &str) {
    use synos_proto::llm::v1::{ProviderAction, SetProviderStateRequest};
    client
        .set_provider_state(SetProviderStateRequest {
            name: name.into(),
            action: ProviderAction::Restore.into(),
            cool_for: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_slow_trickle_is_cut_by_the_total_timeout() {
    let (_first, _second, mut router, _sandbox) = a_then_b(
        [],
        Behaviour::Trickle(Duration::from_millis(100)),
        |config| config.replace("total_ms = 5000", "total_ms = 800"),
    )
    .await;
    let started = Instant::now();
    let served = chat_served(&mut router.client).await;
    let elapsed = started.elapsed();
    assert_eq!(
        outcomes(&served),
        [
            pair("a", AttemptOutcome::Timeout),
            pair("b", AttemptOutcome::Ok)
        ]
    );
    assert!(
        served.attempts[0].detail.contains("total timeout"),
        "{:?}",
        served.attempts[0]
    );
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(2000),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_stream_that_falls_silent_after_its_first_token_is_cut_by_the_idle_timeout() {
    let (_first, second, mut router, _sandbox) =
        a_then_b([], Behaviour::StallMidStream, |config| {
            config.replace("idle_ms = 2000", "idle_ms = 300")
        })
        .await;
    let started = Instant::now();
    let (events, error) = stream(&mut router.client, ask("")).await;
    let elapsed = started.elapsed();
    let error =
        error.unwrap_or_else(|| panic!("a stalled stream must end with an error: {events:?}"));
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error
            .message()
            .contains("no data for the idle timeout of 0.3 s")
            && error.message().contains("the answer is incomplete"),
        "{}",
        error.message()
    );
    assert!(
        events
            .iter()
            .any(|event| matches!(event, chat_stream_event::Event::Delta(_)))
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert_eq!(second.count(), 0, "no failover after the first byte");
}

#[tokio::test]
async fn transient_failures_are_retried_on_the_same_entry_with_backoff() {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    first.script([Behaviour::MalformedJson], Behaviour::Ok);
    let sandbox = Sandbox::new();
    let config = provider("a", &first, "")
        + &provider("b", &second, "")
        + &route("default", &["a", "b"], "").replace("retries = 0", "retries = 2");
    let mut router = start_router(&sandbox, &config).await;
    let served = chat_served(&mut router.client).await;
    assert_eq!(
        outcomes(&served),
        [
            pair("a", AttemptOutcome::BadReply),
            pair("a", AttemptOutcome::Ok)
        ]
    );
    assert_eq!(second.count(), 0);
}

#[tokio::test]
async fn the_escalation_guard_refuses_rather_than_fall_back_above_the_ceiling() {
    let (cheap, standard) = (
        StandIn::start("cheap").await,
        StandIn::start("standard").await,
    );
    cheap.script([], Behaviour::Status(503, None));
    let sandbox = Sandbox::new();
    let config = provider("cheap", &cheap, "")
        + &provider("standard", &standard, "").replace("tier = \"cheap\"", "tier = \"standard\"")
        + &route("default", &["cheap", "standard"], "max_tier = \"standard\"");
    let mut router = start_router(&sandbox, &config).await;

    // The request tightens the ceiling to cheap: the standard entry is never tried.
    let mut request = ask("");
    request.max_tier = Tier::Cheap.into();
    let error = router.client.chat(request.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error.message().contains("standard/m-standard not_allowed 0 ms (tier standard is above this request's ceiling cheap)"),
        "{}",
        error.message()
    );
    assert_eq!(standard.count(), 0);

    // With only above-ceiling entries left, the refusal says so.
    request.max_tier = Tier::Free.into();
    let error = router.client.chat(request).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("refusing to escalate"),
        "{}",
        error.message()
    );

    // A route whose own chain breaks its ceiling is a configuration error.
    let broken = provider("cheap", &cheap, "")
        + &provider("premium", &standard, "").replace("tier = \"cheap\"", "tier = \"premium\"")
        + &route("default", &["cheap", "premium"], "max_tier = \"standard\"");
    sandbox.write_config("llm-router", &broken);
    let (code, _, stderr) = output(sandbox.command("synos-llm-router").arg("--check-config"));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("key `route.0.chain.1.provider`: provider \"premium\" is tier premium, above the route's max_tier standard"),
        "{stderr}"
    );
    drop(router.daemon);
}

#[tokio::test]
async fn route_and_principal_budgets_refuse_once_spent() {
    let only = StandIn::start("a").await;
    let sandbox = Sandbox::new();
    // One request costs 11 × $1 + 7 × $2 per million tokens = $0.000025.
    let config = String::from("[budgets]\nprincipal_daily_usd = { alice = 0.00001 }\n")
        + &provider("a", &only, "")
        + &route("default", &["a"], "daily_budget_usd = 0.00004")
        + &route("other", &["a"], "");
    let mut router = start_router(&sandbox, &config).await;
    let served = chat_served(&mut router.client).await;
    let usage = served.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (11, 7));
    assert!((usage.cost_usd - 0.000_025).abs() < 1e-12, "{usage:?}");
    router.client.chat(ask("")).await.unwrap();
    let error = router.client.chat(ask("")).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(
        error
            .message()
            .starts_with("the daily budget of route \"default\" is spent: $0.000050 of $0.000040"),
        "{}",
        error.message()
    );
    assert_eq!(
        only.count(),
        2,
        "a refused request never reaches a provider"
    );

    let mut alice = ask("other");
    alice.principal = "alice".into();
    router.client.chat(alice.clone()).await.unwrap();
    let error = router.client.chat(alice).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(
        error
            .message()
            .contains("budget of User::\"alice\" is spent"),
        "{}",
        error.message()
    );
    // Others are unaffected.
    router.client.chat(ask("other")).await.unwrap();

    // Usage survives a restart: the budget still holds.
    router.daemon.signal(Signal::SIGTERM);
    router
        .daemon
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap();
    let mut router = start_router(&sandbox, &config).await;
    assert_eq!(
        router.client.chat(ask("")).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    use synos_proto::llm::v1::GetUsageRequest;
    let usage = router
        .client
        .get_usage(GetUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    let default = usage
        .routes
        .iter()
        .find(|total| total.name == "default")
        .unwrap();
    assert_eq!(
        (
            default.requests,
            default.input_tokens,
            default.daily_budget_usd
        ),
        (2, 22, Some(0.00004))
    );
    let providers_total = &usage.providers[0];
    assert_eq!(
        (providers_total.name.as_str(), providers_total.requests),
        ("a", 4)
    );
}

#[tokio::test]
async fn configuration_errors_name_the_key_and_the_reason() {
    let sandbox = Sandbox::new();
    let base = "[[provider]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ntier = \"cheap\"\ntrust = \"external\"\n";
    let priced = format!("{base}price = {{ input_per_mtok = 1, output_per_mtok = 1 }}\n");
    let cases = [
        (
            base.to_owned(),
            "key `provider.0.price`: provider \"a\" has no price: set { input_per_mtok = …, output_per_mtok = … } in US dollars, or \"free\" for a local model (an unknown price is never $0)",
        ),
        (
            format!("{base}price = \"free\"\n"),
            "key `provider.0.price`: a free provider must have tier = \"free\"",
        ),
        (
            format!("{base}price = \"cheap\"\n"),
            "key `provider.0.price`",
        ),
        (
            priced.clone() + &priced,
            "key `provider.1.name`: provider \"a\" is defined twice",
        ),
        (
            priced.replace("http://127.0.0.1:9/v1", "ftp://x"),
            "key `provider.0.base_url`: must be an http:// or https:// URL with a host",
        ),
        (
            priced.replace("openai", "carrier-pigeon"),
            "key `provider.0.kind`: unknown value",
        ),
        // A local provider runs in-process: free, trusted, no URL, a .gguf, a sane context.
        (
            format!("{}base_url = \"http://127.0.0.1:9/v1\"\n", "[[provider]]\nname = \"local\"\nkind = \"local\"\ntier = \"free\"\ntrust = \"local\"\nprice = \"free\"\n"),
            "key `provider.0.base_url`: a local provider runs in the router's process: no base_url and no credential",
        ),
        (
            "[[provider]]\nname = \"local\"\nkind = \"local\"\ntier = \"free\"\ntrust = \"local\"\nprice = \"free\"\n".replace("tier = \"free\"", "tier = \"cheap\""),
            "key `provider.0.tier`: a local provider is tier = \"free\", trust = \"local\", price = \"free\"",
        ),
        (
            format!("{}model_file = \"model.bin\"\n", "[[provider]]\nname = \"local\"\nkind = \"local\"\ntier = \"free\"\ntrust = \"local\"\nprice = \"free\"\n"),
            "key `provider.0.model_file`: must name a .gguf file",
        ),
        (
            format!("{}context_tokens = 16\n", "[[provider]]\nname = \"local\"\nkind = \"local\"\ntier = \"free\"\ntrust = \"local\"\nprice = \"free\"\n"),
            "key `provider.0.context_tokens`: must be from 256 to 131072",
        ),
        (
            format!("{priced}model_file = \"x.gguf\"\n"),
            "key `provider.0.model_file`: model_file and threads are for kind = \"local\" only",
        ),
        (
            priced.clone() + "\n[[route]]\nname = \"default\"\nlast_resort = \"nobody\"\nchain = [{ provider = \"a\", model = \"m\" }]\n",
            "key `route.0.chain.1.provider`: no provider is called \"nobody\"",
        ),
        (
            priced.clone() + "\n[policy]\ngate = \"maybe\"\n",
            "key `policy.gate`: unknown value",
        ),
        (
            priced.clone() + "\n[policy]\nwhen_unreachable = \"shrug\"\n",
            "key `policy.when_unreachable`: unknown value",
        ),
        (
            priced.clone()
                + "\n[[route]]\nname = \"default\"\nchain = [{ provider = \"nobody\", model = \"m\" }]\n",
            "key `route.0.chain.0.provider`: no provider is called \"nobody\"",
        ),
        (
            priced.clone() + "\n[[route]]\nname = \"default\"\nlast_resort = \"\"\nchain = []\n",
            "key `route.0.chain`: must name at least one provider",
        ),
        (
            format!("[http]\nlisten = \"localhost\"\n{priced}"),
            "key `http.listen`: must be an IP address and port",
        ),
        (
            format!("[http]\nlisten = \"0.0.0.0:7311\"\n{priced}"),
            "key `http.listen`: must be a loopback address (127.0.0.0/8 or ::1): keys travel in clear text",
        ),
        (
            priced.replace("trust = \"external\"", "trust = \"extremely\""),
            "key `provider.0.trust`: unknown value",
        ),
    ];
    for (text, expected) in cases {
        sandbox.write_config("llm-router", &text);
        let (code, _, stderr) = output(
            sandbox
                .command("synos-llm-router")
                .arg("--check-config")
                .env_remove("SYNOS_LLM_ROUTER_HTTP__LISTEN"),
        );
        assert_eq!(code, 78, "{text}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
}

#[tokio::test]
async fn credentials_come_from_the_credentials_directory_then_the_environment_and_never_leak() {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    let sandbox = Sandbox::new();
    let credentials = sandbox.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("a-key"), "sk-from-systemd-credential\n").unwrap();
    let config = provider("a", &first, "credential = \"a-key\"")
        + &provider("b", &second, "credential = \"b-key\"")
        + &provider("c", &second, "credential = \"nowhere\"")
        + &route("default", &["c", "a", "b"], "");
    sandbox.write_config("llm-router", &config);
    let mut command = sandbox.command("synos-llm-router");
    command
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("SYNOS_CREDENTIAL_B_KEY", "sk-from-environment");
    let daemon = sandbox
        .start_with("llm-router", command, &sandbox.socket("llm-router"))
        .await;
    let mut client = RouterClient::new(channel(&sandbox.socket("llm-router")).await);
    let served = chat_served(&mut client).await;
    assert_eq!(
        outcomes(&served),
        [
            pair("c", AttemptOutcome::Skipped),
            pair("a", AttemptOutcome::Ok)
        ]
    );
    assert!(
        served.attempts[0]
            .detail
            .contains("credential \"nowhere\" not found"),
        "{:?}",
        served.attempts[0]
    );
    assert_eq!(
        first.received()[0].authorization.as_deref(),
        Some("Bearer sk-from-systemd-credential")
    );
    first.script([], Behaviour::Status(401, None));
    let served = chat_served(&mut client).await;
    assert_eq!(served.provider, "b");
    assert_eq!(
        second.received()[0].authorization.as_deref(),
        Some("Bearer sk-from-environment")
    );
    let listed = providers(&mut client).await;
    assert_eq!(listed[2].state(), ProviderState::Unusable);
    assert!(
        listed[2].state_reason.contains("SYNOS_CREDENTIAL_NOWHERE"),
        "{:?}",
        listed[2]
    );
    let log = daemon.log();
    assert!(!log.contains("sk-from"), "a secret reached the log:\n{log}");
}

async fn http_client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

fn synosctl(sandbox: &Sandbox, arguments: &[&str]) -> (i32, String, String) {
    output(sandbox.command("synosctl").args(arguments))
}

/// `synosctl` off the test's runtime thread, which must stay free to serve the stand-ins.
#[tokio::test]
async fn the_http_endpoint_wants_a_valid_unrevoked_key_for_the_route() {
    let only = StandIn::start("a").await;
    let sandbox = Sandbox::new();
    let config =
        provider("a", &only, "") + &route("default", &["a"], "") + &route("other", &["a"], "");
    let router = start_router(&sandbox, &config).await;
    let base = router.http.clone().unwrap();
    let http = http_client().await;
    let chat = |key: Option<String>, route: &str| {
        let mut request = http
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({ "model": route, "messages": [{ "role": "user", "content": "hi" }] })
                    .to_string(),
            );
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };

    let missing = chat(None, "default").await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("synosctl llm keys create")
    );
    let wrong = chat(Some("sk-synos-0123456789ab-00".into()), "default")
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let (code, stdout, stderr) = synosctl(
        &sandbox,
        &[
            "llm",
            "keys",
            "create",
            "--principal",
            "alice",
            "--route",
            "default",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("sk-synos-"), "{stdout}");
    let right = chat(Some(key.clone()), "default").await.unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(right.headers()["x-synos-provider"], "a");
    assert_eq!(right.headers()["x-synos-model"], "m-a");
    assert!(
        right.headers()["x-synos-attempts"]
            .to_str()
            .unwrap()
            .starts_with("a/m-a ok")
    );
    let body: serde_json::Value = right.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "reply from a");
    // The key is bound to "default".
    assert_eq!(
        chat(Some(key.clone()), "other").await.unwrap().status(),
        403
    );
    let models: serde_json::Value = http
        .get(format!("{base}/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "default");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    // Budgets and usage apply to the key's principal.
    use synos_proto::llm::v1::GetUsageRequest;
    let mut client = router.client.clone();
    let usage = client
        .get_usage(GetUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    // Principals are named one way everywhere: as the audit log names them.
    assert_eq!(usage.principals[0].name, "User::\"alice\"");

    let (code, stdout, _) = synosctl(&sandbox, &["llm", "keys", "list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let id = listed["keys"][0]["id"].as_str().unwrap().to_owned();
    assert!(
        !stdout.contains(key.rsplit('-').next().unwrap()),
        "list shows the secret"
    );
    let stored = std::fs::read_to_string(sandbox.state_dir().join("llm-router/keys.json")).unwrap();
    assert!(
        !stored.contains(key.rsplit('-').next().unwrap()),
        "secret stored in clear"
    );
    let (code, _, stderr) = synosctl(&sandbox, &["llm", "keys", "revoke", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(chat(Some(key), "default").await.unwrap().status(), 401);
    let (code, _, stderr) = synosctl(&sandbox, &["llm", "keys", "revoke", &id]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no key"), "{stderr}");

    // Failed attempts are rate limited (10 per second by default) and counted.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(
            chat(Some("sk-synos-guess-guess".into()), "default")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    use synos_proto::admin::v1::{GetMetricsRequest, admin_client::AdminClient};
    let metrics = AdminClient::new(channel(&sandbox.socket("llm-router")).await)
        .get_metrics(GetMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .text;
    assert!(
        metrics.contains("synos_llm_router_http_rejected_total{reason=\"wrong_key\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("synos_llm_router_http_rejected_total{reason=\"auth_rate_limited\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "synos_llm_router_requests_total{route=\"default\",provider=\"a\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_http_endpoint_streams_sse_and_serves_embeddings() {
    let only = StandIn::start("a").await;
    let sandbox = Sandbox::new();
    // A small body limit: an oversized body then fits in the socket buffers, so the client
    // reads the 413 instead of racing the server's early close with a broken pipe.
    let config = "[http]\nmax_body_bytes = 65536\n".to_owned()
        + &provider("a", &only, "")
        + &route("default", &["a"], "")
        + &route("embed", &["a"], "");
    let router = start_router(&sandbox, &config).await;
    let base = router.http.clone().unwrap();
    let (_, stdout, _) = synosctl(&sandbox, &["llm", "keys", "create", "--principal", "bob"]);
    let key = stdout.lines().last().unwrap().trim().to_owned();
    let http = http_client().await;
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"model": "default", "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-synos-provider"], "a");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "reply from a");
    // The provider was asked to stream with usage, the client did not ask for it.
    assert_eq!(
        only.received()[0].body["stream_options"]["include_usage"],
        true
    );
    assert!(!text.contains("\"usage\""), "{text}");

    for (format, expected) in [
        ("float", serde_json::json!([2.0, 1.0, 0.5])),
        ("base64", serde_json::Value::Null),
    ] {
        let reply: serde_json::Value = http
            .post(format!("{base}/v1/embeddings"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "model": "embed", "input": ["a", "bb"], "encoding_format": format }).to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if format == "float" {
            assert_eq!(reply["data"][1]["embedding"], expected);
        } else {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(reply["data"][1]["embedding"].as_str().unwrap())
                .unwrap();
            let values: Vec<f32> = bytes
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(values, [2.0, 1.0, 0.5]);
        }
    }
    // Malformed requests get OpenAI-style errors, and no provider sees them.
    let before = only.count();
    let oversized = format!(
        r#"{{"model": "default", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(100 * 1024)
    );
    for (path, body, expected) in [
        ("chat/completions", "not json".to_owned(), "not valid JSON"),
        ("chat/completions", "[1]".to_owned(), "must be a JSON object"),
        ("chat/completions", oversized, "cannot read the request body"),
        (
            "chat/completions",
            r#"{"model": "default", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}"#.to_owned(),
            "`stream` must be true or false",
        ),
        ("embeddings", r#"{"model": "embed", "input": [[1, 2]]}"#.to_owned(), "token arrays are not supported"),
        (
            "embeddings",
            r#"{"model": "embed", "input": "a", "encoding_format": "hex"}"#.to_owned(),
            "`encoding_format` must be",
        ),
        ("chat/completions", r#"{"messages": []}"#.to_owned(), "`model` is required"),
        (
            "chat/completions",
            r#"{"model": "default", "messages": []}"#.to_owned(),
            "`messages` must be a non-empty array",
        ),
        ("chat/completions", r#"{"model": "nope", "messages": [{"role": "user", "content": "x"}]}"#.to_owned(), "no route \"nope\""),
    ] {
        let response = http
            .post(format!("{base}/v1/{path}"))
            .bearer_auth(&key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{path}: {expected}");
        let reply: serde_json::Value = response.json().await.unwrap();
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(expected),
            "{path}: {reply}"
        );
    }
    assert_eq!(
        only.count(),
        before,
        "a malformed request reached the provider"
    );
}

#[tokio::test]
async fn embeddings_over_grpc_use_the_embed_route() {
    let only = StandIn::start("a").await;
    let sandbox = Sandbox::new();
    let config = provider("a", &only, "") + &route("embed", &["a"], "");
    let mut router = start_router(&sandbox, &config).await;
    let reply = router
        .client
        .embed(EmbedRequest {
            route: String::new(),
            inputs: vec!["one".into(), "three".into()],
            principal: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.embeddings[1].values, [5.0, 1.0, 0.5]);
    assert_eq!(reply.served.unwrap().usage.unwrap().input_tokens, 5);
    let error = router
        .client
        .embed(EmbedRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn hostile_chat_requests_get_precise_errors() {
    let only = StandIn::start("a").await;
    let sandbox = Sandbox::new();
    let config = provider("a", &only, "") + &route("default", &["a"], "");
    let mut router = start_router(&sandbox, &config).await;
    let mut no_messages = ask("");
    no_messages.messages.clear();
    let mut bad_role = ask("");
    bad_role.messages[0].role = "wizard".into();
    let mut bad_temperature = ask("");
    bad_temperature.temperature = Some(f32::NAN);
    let mut bad_tier = ask("");
    bad_tier.max_tier = 42;
    for (request, expected) in [
        (no_messages, "messages: at least one message is required"),
        (bad_role, "messages[0].role: must be"),
        (bad_temperature, "temperature: must be between 0 and 2"),
        (bad_tier, "max_tier: unknown tier 42"),
    ] {
        let error = router.client.chat(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains(expected), "{}", error.message());
    }
    let error = router.client.chat(ask("missing")).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(error.message(), "no route \"missing\"; routes: default");
    assert_eq!(only.count(), 0);
}

#[tokio::test]
async fn usage_is_counted_and_marked_when_the_provider_reports_none() {
    let only = StandIn::start("a").await;
    only.script([], Behaviour::OkWithoutUsage);
    let sandbox = Sandbox::new();
    let config = provider("a", &only, "") + &route("default", &["a"], "");
    let mut router = start_router(&sandbox, &config).await;
    let usage = chat_served(&mut router.client).await.usage.unwrap();
    // "hello there" is 11 bytes, "reply from a" 12: about four bytes a token.
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.counted),
        (3, 3, true)
    );
}

#[tokio::test]
async fn operators_drain_cool_and_restore_providers() {
    use synos_proto::llm::v1::{ProviderAction, SetProviderStateRequest};
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    let sandbox = Sandbox::new();
    let config = provider("a", &first, "")
        + &provider("b", &second, "")
        + &route("default", &["a", "b"], "");
    let mut router = start_router(&sandbox, &config).await;
    let set = |action: ProviderAction| SetProviderStateRequest {
        name: "a".into(),
        action: action.into(),
        cool_for: Some(prost_types::Duration {
            seconds: 120,
            nanos: 0,
        }),
    };
    let drained = router
        .client
        .set_provider_state(set(ProviderAction::Drain))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.state(), ProviderState::Drained);
    let served = chat_served(&mut router.client).await;
    assert_eq!(served.attempts[0].detail, "drained");
    router
        .client
        .set_provider_state(set(ProviderAction::Restore))
        .await
        .unwrap();
    let cooled = router
        .client
        .set_provider_state(set(ProviderAction::Cool))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cooled.state(), ProviderState::CoolingDown);
    router
        .client
        .set_provider_state(set(ProviderAction::Restore))
        .await
        .unwrap();
    let served = chat_served(&mut router.client).await;
    assert_eq!(served.provider, "a");
    let error = router
        .client
        .set_provider_state(SetProviderStateRequest {
            name: "zz".into(),
            ..set(ProviderAction::Drain)
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let (code, stdout, _) = synosctl(&sandbox, &["llm", "providers"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("available"), "{stdout}");
}

#[tokio::test]
async fn sighup_applies_a_good_configuration_and_keeps_the_old_one_on_a_bad_one() {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    second.script([], Behaviour::Delayed(Duration::from_millis(600)));
    let sandbox = Sandbox::new();
    let config =
        provider("a", &first, "") + &provider("b", &second, "") + &route("default", &["b"], "");
    let mut router = start_router(&sandbox, &config).await;
    // A request in flight during the reload finishes on the configuration it started with.
    let mut in_flight_client = router.client.clone();
    let in_flight = tokio::spawn(async move { in_flight_client.chat(ask("")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sandbox.write_config(
        "llm-router",
        &(provider("a", &first, "") + &provider("b", &second, "") + &route("default", &["a"], "")),
    );
    router.daemon.signal(Signal::SIGHUP);
    let reply = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.served.unwrap().provider, "b");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = chat_served(&mut router.client).await;
        if served.provider == "a" {
            break;
        }
        assert!(Instant::now() < deadline, "the new route never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sandbox.write_config("llm-router", "[[provider]]\nname = \"broken\"\n");
    router.daemon.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = chat_served(&mut router.client).await;
    assert_eq!(served.provider, "a", "the running configuration was kept");
    let log = router.daemon.log();
    assert!(
        log.contains("SIGHUP: new configuration rejected, running one kept"),
        "{log}"
    );
    assert!(log.contains("llm-router.toml"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_no_request_fails_while_any_provider_lives() {
    let stand_ins = [
        StandIn::start("a").await,
        StandIn::start("b").await,
        StandIn::start("c").await,
    ];
    for stand_in in &stand_ins {
        stand_in.script([], Behaviour::Delayed(Duration::from_millis(5)));
    }
    let sandbox = Sandbox::new();
    let config = provider("a", &stand_ins[0], "")
        + &provider("b", &stand_ins[1], "")
        + &provider("c", &stand_ins[2], "")
        + &route("default", &["a", "b", "c"], "").replace("retries = 0", "retries = 1");
    let router = start_router(&sandbox, &config).await;

    let workers = 16;
    let requests_per_worker = 60;
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let served_by = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u32,
    >::new()));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut client = router.client.clone();
        let failures = std::sync::Arc::clone(&failures);
        let served_by = std::sync::Arc::clone(&served_by);
        tasks.push(tokio::spawn(async move {
            for _ in 0..requests_per_worker {
                match client.chat(ask("")).await {
                    Ok(reply) => {
                        let provider = reply.into_inner().served.unwrap().provider;
                        *served_by.lock().unwrap().entry(provider).or_default() += 1;
                    }
                    Err(status) => failures.lock().unwrap().push(status.message().to_owned()),
                }
            }
        }));
    }
    let total = workers * requests_per_worker;
    let wait_for = |count: u32| {
        let served_by = std::sync::Arc::clone(&served_by);
        async move {
            while served_by.lock().unwrap().values().sum::<u32>() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(total / 4).await;
    stand_ins[0].kill();
    wait_for(total / 2).await;
    stand_ins[1].kill();
    for task in tasks {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let served_by = served_by.lock().unwrap().clone();
    assert_eq!(served_by.values().sum::<u32>(), total);
    assert!(served_by["a"] > 0 && served_by["c"] > 0, "{served_by:?}");

    // With every provider dead, the error says what was tried.
    stand_ins[2].kill();
    let mut client = router.client.clone();
    let mut error = None;
    for _ in 0..3 {
        match client.chat(ask("")).await {
            Err(status) => {
                error = Some(status);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let error = error.expect("requests still succeed with every provider dead");
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error
            .message()
            .starts_with("route \"default\": no provider could serve the request: a/m-a"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("c/m-c connection_failed"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn the_official_openai_python_client_works_unmodified() {
    let only = StandIn::start("a").await;
    only.script(
        [
            Behaviour::Ok,
            Behaviour::Ok,
            Behaviour::Ok,
            Behaviour::Ok,
            Behaviour::DisconnectMidStream,
        ],
        Behaviour::Ok,
    );
    let sandbox = Sandbox::new();
    let config =
        provider("a", &only, "") + &route("default", &["a"], "") + &route("embed", &["a"], "");
    let router = start_router(&sandbox, &config).await;
    let (_, stdout, _) = synosctl(&sandbox, &["llm", "keys", "create", "--principal", "carol"]);
    let key = stdout.lines().last().unwrap().trim().to_owned();
    let script = repository_path("tests/python/openai_client.py");
    let base = router.http.clone().unwrap();
    let run = tokio::task::spawn_blocking(move || {
        output(
            std::process::Command::new(project_python())
                .arg(script)
                .arg(base)
                .arg(key),
        )
    });
    let (code, stdout, stderr) = run.await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["models"], serde_json::json!(["default", "embed"]));
    assert_eq!(seen["content"], "reply from a");
    assert_eq!(seen["usage"], serde_json::json!([11, 7]));
    assert_eq!(seen["provider_header"], "a");
    assert_eq!(seen["streamed"], "reply from a");
    assert_eq!(seen["embedding"], serde_json::json!([2.0, 1.0, 0.5]));
    assert!(
        seen["broken_stream_error"]
            .as_str()
            .is_some_and(|message| message.contains("the answer is incomplete")),
        "{seen}"
    );
    assert_eq!(seen["wrong_key"], 401);
    assert_eq!(seen["unknown_route"], 404);
}

#[tokio::test]
async fn synosctl_chats_streaming_or_as_json_and_reports_usage() {
    let (first, second) = (StandIn::start("a").await, StandIn::start("b").await);
    first.script([Behaviour::Status(503, None)], Behaviour::Ok);
    let sandbox = Sandbox::new();
    let config = provider("a", &first, "")
        + &provider("b", &second, "")
        + &route("default", &["a", "b"], "");
    let _router = start_router(&sandbox, &config).await;
    let (code, stdout, stderr) = sandbox.synosctl(&["llm", "chat", "hello", "there"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "reply from b\n");
    assert_eq!(
        stderr.trim(),
        "[served by b/m-b after a server_error; 11 tokens in, 7 out; $0.000025]"
    );
    assert_eq!(
        second.received()[0].body["messages"][0]["content"],
        "hello there"
    );

    let (code, stdout, stderr) = sandbox.synosctl(&["llm", "chat", "--json", "hi"]).await;
    assert_eq!(code, 0, "{stderr}");
    let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reply["content"], "reply from b");
    assert_eq!(reply["provider"], "b");
    assert_eq!(reply["attempts"][0]["outcome"], "skipped");
    assert_eq!(reply["attempts"][1]["outcome"], "ok");
    assert_eq!(reply["usage"]["output_tokens"], 7);

    let (code, stdout, _) = sandbox.synosctl(&["llm", "usage", "--json"]).await;
    assert_eq!(code, 0);
    let usage: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(usage["routes"][0]["name"], "default");
    assert_eq!(usage["routes"][0]["requests"], 2);
    // A request naming no principal is the caller's, as the socket proves.
    assert_eq!(usage["principals"][0]["name"], "User::\"root\"");

    let (code, stdout, stderr) = sandbox
        .synosctl(&["llm", "chat", "--route", "nope", "hi"])
        .await;
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr.trim(),
        "synos-llm-router: not found: no route \"nope\"; routes: default"
    );
}

#[tokio::test]
async fn an_unusable_state_directory_degrades_the_router_but_it_still_routes() {
    let only = StandIn::start("a").await;
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "llm-router",
        &(provider("a", &only, "") + &route("default", &["a"], "")),
    );
    // A file where the state root should be: the state directory cannot be created.
    let blocked = sandbox.path().join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let mut command = sandbox.command("synos-llm-router");
    command.env("SYNOS_STATE_DIR", &blocked);
    let daemon = sandbox
        .start_with("llm-router", command, &sandbox.socket("llm-router"))
        .await;
    let mut client = RouterClient::new(channel(&sandbox.socket("llm-router")).await);
    assert_eq!(chat_served(&mut client).await.provider, "a");
    let summary = synos_integration_tests::status_line(&sandbox.socket("llm-router")).await;
    assert!(
        summary.contains("; DEGRADED: state directory") && summary.contains("unusable"),
        "{summary}"
    );
    assert!(
        daemon
            .log()
            .contains("budgets reset and keys vanish on restart")
    );
}

#[tokio::test]
async fn idle_and_unauthenticated_http_clients_cannot_starve_the_router() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let only = StandIn::start("a").await;
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "llm-router",
        &(provider("a", &only, "") + &route("default", &["a"], "")),
    );
    // The router with 300 descriptors: fewer than the clients below.
    let mut command = std::process::Command::new("prlimit");
    command
        .args(["--nofile=300:300", "--"])
        .arg(synos_integration_tests::binary("synos-llm-router"));
    let template = sandbox.command("synos-llm-router");
    for (name, value) in template.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command.stdin(std::process::Stdio::null());
    let socket = sandbox.socket("llm-router");
    let _router = sandbox.start_with("llm-router", command, &socket).await;
    let base = http_listener(&socket).await.unwrap();
    let address = base.trim_start_matches("http://").to_owned();

    // Headers promising a huge body, and no key: refused at once, the body never read.
    let mut probe = tokio::net::TcpStream::connect(&address).await.unwrap();
    probe
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100000000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut reply = vec![0_u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), probe.read(&mut reply))
        .await
        .expect("an unauthenticated request waited for its body")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..read]);
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");

    // Up to 1 100 idle connections (those the kernel's backlog takes): more than the router's
    // descriptors. It serves 256 at a time and leaves the rest waiting in the backlog.
    let mut idle = Vec::new();
    let mut refused_in_a_row = 0;
    while idle.len() < 1100 && refused_in_a_row < 3 {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(&address),
        )
        .await
        {
            Ok(Ok(stream)) => {
                idle.push(stream);
                refused_in_a_row = 0;
            }
            // The backlog is full: the kernel drops further handshakes.
            _ => refused_in_a_row += 1,
        }
    }
    assert!(idle.len() > 300, "only {} connections opened", idle.len());
    // The gRPC socket still answers, on new connections.
    for _ in 0..3 {
        let mut client = RouterClient::new(channel(&socket).await);
        client
            .list_providers(ListProvidersRequest {})
            .await
            .expect("the gRPC socket stopped answering");
    }
    drop(idle);
    // And HTTP serves again once they are gone.
    let (_, stdout, _) = synosctl(&sandbox, &["llm", "keys", "create", "--principal", "bob"]);
    let key = stdout.lines().last().unwrap().trim().to_owned();
    let response = http_client()
        .await
        .get(format!("{base}/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
