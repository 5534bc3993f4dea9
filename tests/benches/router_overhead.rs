//! Router overhead benchmark: the latency the router adds to a chat completion, over its
//! OpenAI-compatible HTTP endpoint and over gRPC, against calling the stand-in provider directly
//! (the baseline, measured in the same run), at a fixed concurrency and request rate; then the
//! most it sustains unpaced; the router's resident memory idle and after the load; and what
//! the policy gate adds (screening and redaction by the real synos-policy) with a 1 KB prompt
//! and reply, gate off against gate on, in the same run.
//!
//! Run with `cargo build --release --bins && cargo bench -p synos-integration-tests --bench router_overhead`.
//! `ROUTER_BENCH_RATE` (requests per second, default 2000), `ROUTER_BENCH_CONCURRENCY`
//! (default 16) and `ROUTER_BENCH_SECONDS` (per phase, default 5) change the load;
//! `ROUTER_BENCH_CLIENT_THREADS` (default 2) the threads of the clients and the stand-in, and
//! `ROUTER_BENCH_ROUTER_THREADS` the router's worker threads (default: one per core);
//! `ROUTER_BENCH_ONLY_GATE` (set to anything) measures the policy gate alone;
//! `ROUTER_BENCH_GATE_PROVIDER_MS` (default 2) is how long the provider takes in the gate's
//! second comparison.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a benchmark binary: it prints figures and panics on a broken setup"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use synos_integration_tests::process::resident_kib;
use synos_integration_tests::stand_in::{Behaviour, StandIn};
use synos_integration_tests::{Sandbox, channel, http_listener};
use synos_proto::admin::v1::GetMetricsRequest;
use synos_proto::admin::v1::admin_client::AdminClient;
use synos_proto::llm::v1::router_client::RouterClient;
use synos_proto::llm::v1::{ChatMessage, ChatRequest};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Latencies of one phase, and how long it took.
struct Phase {
    latencies: Vec<Duration>,
    elapsed: Duration,
    failures: usize,
}

impl Phase {
    fn percentile(&self, fraction: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
        sorted[index]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn milliseconds(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// Runs `concurrency` workers for `seconds`, each pacing itself to `rate / concurrency` requests
/// per second (`rate` 0: as fast as they can), calling `request`.
async fn load<Request, Requesting>(
    concurrency: u64,
    rate: u64,
    seconds: u64,
    request: Request,
) -> Phase
where
    Request: Fn() -> Requesting + Send + Sync + 'static,
    Requesting: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let interval = (rate > 0).then(|| Duration::from_secs_f64(concurrency as f64 / rate as f64));
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let request = Arc::clone(&request);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            // Workers start spread over one interval so requests arrive evenly.
            let mut next = started
                + interval.map_or(Duration::ZERO, |interval| {
                    interval.mul_f64(worker as f64 / concurrency as f64)
                });
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let sent = Instant::now();
                if request().await {
                    latencies.push(sent.elapsed());
                } else {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut phase = Phase {
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
        failures: 0,
    };
    for worker in workers {
        let (latencies, failures) = worker.await.unwrap();
        phase.latencies.extend(latencies);
        phase.failures += failures;
    }
    phase.elapsed = started.elapsed();
    phase
}

fn chat_body(model: &str) -> String {
    chat_body_with(model, "hello there")
}

fn chat_body_with(model: &str, content: &str) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{ "role": "user", "content": content }],
    })
    .to_string()
}

/// An HTTP key for the principal "bench", for every route.
async fn create_key(mut router: RouterClient<tonic::transport::Channel>) -> String {
    router
        .create_key(synos_proto::llm::v1::CreateKeyRequest {
            principal: "bench".into(),
            routes: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .key
}

/// A router in its own sandbox over `stand_in`, with `[policy]` set to `policy`; its HTTP
/// chat URL and a key.
async fn gated_router(
    sandbox: &Sandbox,
    stand_in: &StandIn,
    policy: &str,
) -> (synos_integration_tests::Daemon, String, String) {
    sandbox.write_config(
        "llm-router",
        &format!(
            "[log]\nfilter = \"warn\"\n\n[policy]\n{policy}\n{}\n[[route]]\nname = \"default\"\n\
             last_resort = \"\"\nchain = [{{ provider = \"provider\", model = \"m\" }}]\n",
            stand_in.provider_block("provider", "max_concurrency = 256")
        ),
    );
    let router = sandbox.start("llm-router").await;
    let socket = sandbox.socket("llm-router");
    let key = create_key(RouterClient::new(channel(&socket).await)).await;
    let url = format!(
        "{}/v1/chat/completions",
        http_listener(&socket).await.unwrap()
    );
    (router, url, key)
}

async fn http_phase(
    url: String,
    key: Option<String>,
    body: String,
    concurrency: u64,
    rate: u64,
    seconds: u64,
) -> Phase {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency as usize)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    load(concurrency, rate, seconds, move || {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(key) = &key {
            request = request.bearer_auth(key);
        }
        async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
}

async fn grpc_phase(
    client: RouterClient<tonic::transport::Channel>,
    concurrency: u64,
    rate: u64,
    seconds: u64,
) -> Phase {
    let request = ChatRequest {
        route: "default".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hello there".into(),
        }],
        ..ChatRequest::default()
    };
    load(concurrency, rate, seconds, move || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.chat(request).await.is_ok() }
    })
    .await
}

/// The upper bound of the histogram bucket holding quantile `fraction`, from the text exposition.
fn histogram_quantile(text: &str, name: &str, fraction: f64) -> String {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, count)| *count);
    buckets
        .iter()
        .find(|(_, count)| *count >= total * fraction)
        .map_or_else(
            || "n/a".to_owned(),
            |(bound, _)| format!("{:.3} ms", bound * 1000.0),
        )
}

fn report(name: &str, phase: &Phase, baseline: Option<&Phase>) {
    let (p50, p99) = (phase.percentile(0.50), phase.percentile(0.99));
    let overhead = baseline.map_or_else(String::new, |baseline| {
        format!(
            "  overhead p50 {}  p99 {}",
            milliseconds(p50.saturating_sub(baseline.percentile(0.50))),
            milliseconds(p99.saturating_sub(baseline.percentile(0.99)))
        )
    });
    println!(
        "{name:<24} {:>7.0} req/s  p50 {}  p99 {}  failed {}{overhead}",
        phase.throughput(),
        milliseconds(p50),
        milliseconds(p99),
        phase.failures
    );
}

fn main() {
    let rate = setting("ROUTER_BENCH_RATE", 2000);
    let concurrency = setting("ROUTER_BENCH_CONCURRENCY", 16);
    let seconds = setting("ROUTER_BENCH_SECONDS", 5);
    let client_threads = setting("ROUTER_BENCH_CLIENT_THREADS", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(client_threads).unwrap())
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stand_in = StandIn::start("provider").await;
        let sandbox = Sandbox::new();
        sandbox.write_config(
            "llm-router",
            &format!(
                "[log]\nfilter = \"warn\"\n\n[[provider]]\nname = \"provider\"\nkind = \"openai\"\n\
                 base_url = \"{}\"\ntier = \"cheap\"\ntrust = \"external\"\n\
                 price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}\nmax_concurrency = 256\n\n\
                 [[route]]\nname = \"default\"\nchain = [{{ provider = \"provider\", model = \"m\" }}]\n",
                stand_in.base_url()
            ),
        );
        let mut command = sandbox.command("synos-llm-router");
        command.env("RUST_LOG", "warn");
        if let Ok(threads) = std::env::var("ROUTER_BENCH_ROUTER_THREADS") {
            command.env("TOKIO_WORKER_THREADS", threads);
        }
        let router = sandbox
            .start_with("llm-router", command, &sandbox.socket("llm-router"))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_kib = resident_kib(router.pid(), "VmRSS:");
        let socket = sandbox.socket("llm-router");
        let grpc = RouterClient::new(channel(&socket).await);
        let http = http_listener(&socket).await.unwrap();
        let key = create_key(grpc.clone()).await;
        let only_gate = std::env::var_os("ROUTER_BENCH_ONLY_GATE").is_some();

        if !only_gate {
        println!(
            "router overhead: {concurrency} concurrent clients, {rate} req/s paced, {seconds} s per phase, \
             {client_threads} client threads, stand-in provider answering at once"
        );
        let direct_url = format!("{}/chat/completions", stand_in.base_url());
        let router_url = format!("{http}/v1/chat/completions");
        // Warm-up: connections, caches, the allocator.
        http_phase(router_url.clone(), Some(key.clone()), chat_body("default"), concurrency, rate, 1).await;
        grpc_phase(grpc.clone(), concurrency, rate, 1).await;

        let direct = http_phase(direct_url.clone(), None, chat_body("m"), concurrency, rate, seconds).await;
        let via_http = http_phase(router_url.clone(), Some(key.clone()), chat_body("default"), concurrency, rate, seconds).await;
        let via_grpc = grpc_phase(grpc.clone(), concurrency, rate, seconds).await;
        report("direct to provider", &direct, None);
        report("router, HTTP", &via_http, Some(&direct));
        report("router, gRPC", &via_grpc, Some(&direct));

        println!("unpaced ({concurrency} concurrent clients, as fast as they go):");
        let direct = http_phase(direct_url, None, chat_body("m"), concurrency, 0, seconds).await;
        let via_http = http_phase(router_url, Some(key), chat_body("default"), concurrency, 0, seconds).await;
        let via_grpc = grpc_phase(grpc, concurrency, 0, seconds).await;
        report("direct to provider", &direct, None);
        report("router, HTTP", &via_http, Some(&direct));
        report("router, gRPC", &via_grpc, Some(&direct));

        let metrics = AdminClient::new(channel(&socket).await)
            .get_metrics(GetMetricsRequest {})
            .await
            .unwrap()
            .into_inner()
            .text;
        println!(
            "router's own work per request (its overhead histogram, bucket bounds): p50 ≤ {}, p99 ≤ {}",
            histogram_quantile(&metrics, "synos_llm_router_overhead_seconds", 0.50),
            histogram_quantile(&metrics, "synos_llm_router_overhead_seconds", 0.99)
        );
        println!(
            "router memory: idle {:.1} MiB, after the load {:.1} MiB, peak {:.1} MiB",
            idle_kib as f64 / 1024.0,
            resident_kib(router.pid(), "VmRSS:") as f64 / 1024.0,
            resident_kib(router.pid(), "VmHWM:") as f64 / 1024.0
        );
        }

        // The policy gate: two routers over one stand-in answering 1 KB, one gated by a real
        // synos-policy (screening before, redaction after; every screening is audited), one
        // not; alternated twice so drift hits both.
        let gate_rate = setting("ROUTER_BENCH_GATE_RATE", 200);
        let kilobyte = "The quick brown fox jumps over the lazy dog. ".repeat(23);
        let big = StandIn::start(&kilobyte).await;
        let (off_sandbox, on_sandbox) = (Sandbox::new(), Sandbox::new());
        let _policy = on_sandbox.start("policy").await;
        let (_off_router, off_url, off_key) = gated_router(&off_sandbox, &big, "gate = \"off\"").await;
        let (_on_router, on_url, on_key) = gated_router(&on_sandbox, &big, "gate = \"on\"").await;
        let body = chat_body_with("default", &kilobyte);
        println!(
            "policy gate: 1 KB prompt and reply over HTTP, {concurrency} concurrent clients, {gate_rate} req/s paced, {seconds} s per phase"
        );
        http_phase(on_url.clone(), Some(on_key.clone()), body.clone(), concurrency, gate_rate, 1).await;
        http_phase(off_url.clone(), Some(off_key.clone()), body.clone(), concurrency, gate_rate, 1).await;
        for round in 1..=2 {
            let off = http_phase(off_url.clone(), Some(off_key.clone()), body.clone(), concurrency, gate_rate, seconds).await;
            let on = http_phase(on_url.clone(), Some(on_key.clone()), body.clone(), concurrency, gate_rate, seconds).await;
            report(&format!("gate off, round {round}"), &off, None);
            report(&format!("gate on, round {round}"), &on, Some(&off));
        }
        // A stand-in answering at once leaves the audit commit (an fsync) nothing to overlap
        // with; any real provider takes longer than this, which hides the commit as designed.
        let provider_time = Duration::from_millis(setting("ROUTER_BENCH_GATE_PROVIDER_MS", 2));
        big.script([], Behaviour::Delayed(provider_time));
        println!("policy gate, the provider answering in {} ms:", provider_time.as_millis());
        for round in 1..=2 {
            let off = http_phase(off_url.clone(), Some(off_key.clone()), body.clone(), concurrency, gate_rate, seconds).await;
            let on = http_phase(on_url.clone(), Some(on_key.clone()), body.clone(), concurrency, gate_rate, seconds).await;
            report(&format!("gate off, round {round}"), &off, None);
            report(&format!("gate on, round {round}"), &on, Some(&off));
        }
    });
}
