//! Local model benchmark: prompt and generation speed and time to first token of the router's
//! in-process llama.cpp, side by side with llama.cpp's own server (llama-cpp-python[server],
//! the baseline) on the same GGUF, same threads, same greedy requests, in the same run. Both are
//! driven through their OpenAI-compatible HTTP endpoints by the same streaming client, so the
//! figures include what a client sees of each.
//!
//! Run with `scripts/install-dependencies.sh benchmarks && cargo build --release --bins &&
//! cargo bench -p synos-integration-tests --bench local_model`. `LOCAL_BENCH_RUNS` (default 5)
//! sets the runs per case; `LOCAL_BENCH_THREADS` (default: the cores) the threads of both.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a benchmark binary: it prints figures and panics on a broken setup"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use synos_integration_tests::{Sandbox, http_listener, output, require_local_model};

/// What one streamed request measured.
struct Sample {
    time_to_first_token: Duration,
    prompt_tokens: u64,
    generated_tokens: u64,
    generation: Duration,
}

/// One request: streamed, greedy, `max_tokens` long; timing from sending to the first content
/// and from there to the end.
async fn measure(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    prompt: &str,
    max_tokens: u32,
) -> Sample {
    let started = Instant::now();
    let response = client
        .post(url)
        .bearer_auth(key)
        .json(&json!({
            "model": "default",
            "messages": [{ "role": "user", "content": prompt }],
            "temperature": 0, "max_tokens": max_tokens, "stream": true,
            "stream_options": { "include_usage": true },
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut first = None;
    let mut pieces = 0_u64;
    let mut usage = None;
    while let Some(bytes) = body.next().await {
        buffer.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(data).unwrap();
            if chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|text| !text.is_empty())
            {
                first.get_or_insert_with(Instant::now);
                pieces += 1;
            }
            if chunk["usage"].is_object() {
                usage = Some((
                    chunk["usage"]["prompt_tokens"].as_u64().unwrap(),
                    chunk["usage"]["completion_tokens"].as_u64().unwrap(),
                ));
            }
        }
    }
    let ended = Instant::now();
    let first = first.expect("some output");
    let (prompt_tokens, generated_tokens) = usage.unwrap_or((0, pieces));
    Sample {
        time_to_first_token: first - started,
        prompt_tokens,
        generated_tokens,
        generation: ended - first,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Medians of `runs` samples: (time to first token in ms, prompt tok/s, generation tok/s,
/// prompt tokens, generated tokens). llama-cpp-python's server reports no usage when
/// streaming; `prompt_tokens` (the router's count for the same prompt, the same template and
/// tokenizer) stands in for it.
async fn case(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    prompt: &str,
    max_tokens: u32,
    runs: usize,
    prompt_tokens: Option<u64>,
) -> (f64, f64, f64, u64, u64) {
    // One unmeasured request: loading, caches, first allocations. Each request's prompt starts
    // differently, so neither engine answers from a cache of the previous identical prompt
    // (llama.cpp's server keeps one).
    measure(client, url, key, &format!("(0) {prompt}"), max_tokens).await;
    let mut samples = Vec::new();
    for run in 1..=runs {
        samples.push(measure(client, url, key, &format!("({run}) {prompt}"), max_tokens).await);
    }
    let first_token = median(
        samples
            .iter()
            .map(|sample| sample.time_to_first_token.as_secs_f64() * 1000.0)
            .collect(),
    );
    let prompt_speed = median(
        samples
            .iter()
            .map(|sample| {
                let tokens = prompt_tokens.unwrap_or(sample.prompt_tokens);
                tokens as f64 / sample.time_to_first_token.as_secs_f64()
            })
            .collect(),
    );
    // The first token arrives with the first content; the rest come in `generation`.
    let generation_speed = median(
        samples
            .iter()
            .map(|sample| {
                sample.generated_tokens.saturating_sub(1) as f64 / sample.generation.as_secs_f64()
            })
            .collect(),
    );
    let last = samples.last().unwrap();
    (
        first_token,
        prompt_speed,
        generation_speed,
        prompt_tokens.unwrap_or(last.prompt_tokens),
        last.generated_tokens,
    )
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn llama_server_python() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"),
            PathBuf::from,
        );
    let python = cache.join("synos/llama-cpp-server/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-dependencies.sh benchmarks",
        python.display()
    );
    python
}

#[tokio::main]
async fn main() {
    let model = require_local_model();
    let runs: usize = std::env::var("LOCAL_BENCH_RUNS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5);
    let threads: usize = std::env::var("LOCAL_BENCH_THREADS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));

    let sandbox = Sandbox::new();
    sandbox.write_config(
        "llm-router",
        &format!(
            "[[provider]]\nname = \"local\"\nkind = \"local\"\ntier = \"free\"\ntrust = \"local\"\n\
             price = \"free\"\nthreads = {threads}\n"
        ),
    );
    let router = sandbox.start("llm-router").await;
    let router_url = format!(
        "{}/v1/chat/completions",
        http_listener(&sandbox.socket("llm-router")).await.unwrap()
    );
    let (code, key, _) =
        output(
            sandbox
                .command("synosctl")
                .args(["llm", "keys", "create", "--principal", "bench"]),
        );
    assert_eq!(code, 0);
    let key = key.lines().last().unwrap().to_owned();

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let _server = KillOnDrop(
        Command::new(llama_server_python())
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_threads", &threads.to_string(), "--n_ctx", "2048"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server_url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("http://127.0.0.1:{port}/v1/models"))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "llama.cpp's server did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let long_prompt = "Summarise the following notes in one sentence. ".to_owned()
        + &"The build machine has two cores and no GPU; the router runs the model in-process, \
            and every request streams its answer token by token to the terminal. "
            .repeat(12);
    let cases = [
        (
            "short prompt, 128 tokens",
            "What is the capital of France?",
            128,
        ),
        ("long prompt, 128 tokens", long_prompt.as_str(), 128),
    ];
    println!(
        "local model benchmark: {} , {threads} threads, greedy, median of {runs} runs each",
        model.display()
    );
    println!(
        "{:<26} {:<14} {:>9} {:>10} {:>12} {:>12}",
        "case", "engine", "first ms", "prompt tok", "prompt tok/s", "gen tok/s"
    );
    for (name, prompt, max_tokens) in cases {
        // Interleaved: the router, then the baseline, for each case.
        let ours = case(&client, &router_url, &key, prompt, max_tokens, runs, None).await;
        let baseline = case(
            &client,
            &server_url,
            "none",
            prompt,
            max_tokens,
            runs,
            Some(ours.3),
        )
        .await;
        for (engine, figures) in [("llama.cpp server", baseline), ("synos router", ours)] {
            println!(
                "{name:<26} {engine:<14} {:>9.1} {:>10} {:>12.1} {:>12.1}",
                figures.0, figures.3, figures.1, figures.2
            );
        }
        println!(
            "{name:<26} ratio router/server: generation {:.2}x, prompt {:.2}x, first token {:.2}x",
            ours.2 / baseline.2,
            ours.1 / baseline.1,
            ours.0 / baseline.0
        );
    }
    drop(router);
}
