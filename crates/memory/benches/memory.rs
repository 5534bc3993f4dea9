//! Memory benchmark: recall latency at 10k and 100k memories, write throughput, and embedding
//! time per text, each next to a baseline measured in the same run.
//!
//! Run with `cargo bench -p synos-memory --bench memory` (add `-- --quick` for 10k only). The
//! store is the daemon's own (`Store`, `ranking::recall`) on a real SQLite file; vectors are
//! random unit vectors, so recall figures exclude query embedding, which is measured on its own
//! with the shipped model when `$SYNOS_MODEL_DIR` (or `~/.cache/synos/models`) has it.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a benchmark binary: it prints figures and panics on a broken setup"
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use synos_common::time::now_unix_ms;
use synos_embedding::Embedder;
use synos_memory::RecallConfig;
use synos_memory::ranking::{self, Query};
use synos_memory::record::{Kind, Memory, Metadata, NewMemory, Scope};
use synos_memory::store::{Embedded, Exported, Filter, Store};

const DIMENSIONS: usize = 384;
const RECALLS: usize = 400;
const MODEL: &str = "bench-model";

fn unit_vector(random: &mut StdRng) -> Vec<f32> {
    let vector: Vec<f32> = (0..DIMENSIONS)
        .map(|_| random.random_range(-1.0..1.0))
        .collect();
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    vector.into_iter().map(|value| value / norm).collect()
}

/// A sentence of 10 content words, drawn as English draws them once its stop words are gone:
/// Zipf's law (frequency ∝ 1/rank) over ranks 100 to 30 000, so the commonest word is in about
/// 2 % of memories.
fn sentence(random: &mut StdRng) -> String {
    (0..10)
        .map(|_| {
            let rank = (100.0_f64 * 300.0_f64.powf(random.random_range(0.0..1.0))) as usize;
            format!("w{rank}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * fraction).round() as usize]
}

fn milliseconds(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// `count` memories spread round-robin over `scopes` scopes (`user:u0`, …).
async fn fill(store: &Store, count: usize, scopes: usize, random: &mut StdRng) -> Vec<String> {
    let now = now_unix_ms();
    let mut ids = Vec::with_capacity(count);
    for start in (0..count).step_by(1000) {
        let batch: Vec<Exported> = (start..(start + 1000).min(count))
            .map(|n| {
                let id = uuid::Uuid::now_v7().to_string();
                ids.push(id.clone());
                Exported {
                    memory: Memory {
                        sequence: 0,
                        id,
                        scope: Scope::parse(&format!("user:u{}", n % scopes)).unwrap(),
                        kind: Kind::Note,
                        text: sentence(random),
                        importance: 0.5,
                        source: String::new(),
                        created_ms: now,
                        updated_ms: now,
                        accessed_ms: now,
                        expires_ms: None,
                        metadata: Metadata::new(),
                        embedding_model: MODEL.to_owned(),
                        version: 0,
                    },
                    history: Vec::new(),
                    embedding: Some(unit_vector(random)),
                }
            })
            .collect();
        store.import(batch, MODEL).await.unwrap();
    }
    ids
}

/// Recall over `named` of the `scopes` scopes holding `size` memories.
async fn recall_latency(size: usize, scopes: usize, named: usize) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(&directory.path().join("memory.sqlite"), MODEL)
        .await
        .unwrap();
    let mut random = StdRng::seed_from_u64(7);
    let started = Instant::now();
    let ids = fill(&store, size, scopes, &mut random).await;
    let filled = started.elapsed();
    // Random vectors are all far apart: no similarity floor, so every scan returns results.
    let config = RecallConfig {
        min_similarity: -1.0,
        ..RecallConfig::default()
    };
    let scope_names: Vec<Scope> = (0..named)
        .map(|n| Scope::parse(&format!("user:u{n}")).unwrap())
        .collect();
    let filter = Filter::default();
    let mut baseline = Vec::with_capacity(RECALLS);
    let mut modes: Vec<(&str, Vec<Duration>)> = vec![
        ("hybrid", Vec::new()),
        ("keyword", Vec::new()),
        ("vector", Vec::new()),
    ];
    for round in 0..RECALLS {
        let started = Instant::now();
        store
            .get(&ids[random.random_range(0..ids.len())])
            .await
            .unwrap();
        baseline.push(started.elapsed());
        // A query of three content words, as a person types them.
        let words: Vec<String> = sentence(&mut random)
            .split(' ')
            .take(3)
            .map(str::to_owned)
            .collect();
        let text = words.join(" ");
        let vector = unit_vector(&mut random);
        for (mode, samples) in &mut modes {
            let query = Query {
                text: (*mode != "vector").then_some(text.as_str()),
                vector: (*mode != "keyword").then_some(vector.as_slice()),
                scopes: &scope_names,
                filter: &filter,
                limit: 10,
            };
            let started = Instant::now();
            let results = ranking::recall(&store, query, now_unix_ms(), &config)
                .await
                .unwrap();
            samples.push(started.elapsed());
            assert!(round > 0 || !results.is_empty(), "{mode}: no results");
        }
    }
    let base = percentile(&mut baseline, 0.5);
    println!(
        "\n{size} memories in {scopes} scopes, recall naming {named} ({} memories; loaded in {:.1} s):",
        size / scopes * named,
        filled.as_secs_f64()
    );
    println!("  baseline, one memory by id:  p50 {}", milliseconds(base));
    for (mode, samples) in &mut modes {
        let p50 = percentile(samples, 0.5);
        let p99 = percentile(samples, 0.99);
        println!(
            "  recall {mode:<8} limit 10:   p50 {}  p99 {}  ({:.1}× baseline at p50)",
            milliseconds(p50),
            milliseconds(p99),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    }
    store.close().await;
}

async fn write_throughput(scopes: usize, total: usize, batch: usize) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(&directory.path().join("memory.sqlite"), MODEL)
        .await
        .unwrap();
    let mut random = StdRng::seed_from_u64(11);
    let scope_names: Vec<Scope> = (0..scopes)
        .map(|n| Scope::parse(&format!("user:u{n}")).unwrap())
        .collect();
    let batches: Vec<Vec<Embedded>> = (0..total / batch)
        .map(|_| {
            (0..batch)
                .map(|_| Embedded {
                    memory: NewMemory {
                        text: sentence(&mut random),
                        scope: scope_names[random.random_range(0..scopes)].clone(),
                        kind: Kind::Note,
                        importance: 0.5,
                        source: String::new(),
                        expires_ms: None,
                        metadata: Metadata::new(),
                    },
                    vector: Some(unit_vector(&mut random)),
                })
                .collect()
        })
        .collect();
    // Baseline: the same number of single-memory durable commits, i.e. what batching saves.
    let started = Instant::now();
    let mut commits = 0;
    for _ in 0..20 {
        let one = vec![Embedded {
            memory: NewMemory {
                text: sentence(&mut random),
                scope: Scope::parse("user:baseline").unwrap(),
                kind: Kind::Note,
                importance: 0.5,
                source: String::new(),
                expires_ms: None,
                metadata: Metadata::new(),
            },
            vector: Some(unit_vector(&mut random)),
        }];
        store.remember(one, MODEL, 0.92).await.unwrap();
        commits += 1;
    }
    let single_rate = f64::from(commits) / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for memories in batches {
        store.remember(memories, MODEL, 0.92).await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    println!(
        "  {total} writes in batches of {batch} over {scopes} scopes: {rate:.0} writes/s ({:.0}× one memory per call: {single_rate:.0}/s)",
        rate / single_rate
    );
    store.close().await;
}

fn model_directory() -> PathBuf {
    std::env::var_os("SYNOS_MODEL_DIR")
        .filter(|value| !value.is_empty())
        .map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/synos/models"),
            PathBuf::from,
        )
        .join("all-MiniLM-L6-v2")
}

fn embedding_time() {
    let directory = model_directory();
    let Ok(embedder) = Embedder::load(&directory) else {
        println!(
            "\nembedding: no model in {} (scripts/fetch-models.sh)",
            directory.display()
        );
        return;
    };
    let texts: Vec<String> = (0..64)
        .map(|n| format!("Memory number {n}: the user mentioned that their favourite season is autumn and they walk the dog at seven."))
        .collect();
    let mut single = Vec::new();
    for text in &texts {
        let started = Instant::now();
        embedder.embed(&[text]).unwrap();
        single.push(started.elapsed());
    }
    let mut batched = Vec::new();
    for chunk in texts.chunks(32) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let started = Instant::now();
        embedder.embed(&chunk).unwrap();
        batched.push(started.elapsed() / 32);
    }
    let started = Instant::now();
    embedder.embed(&["hi"]).unwrap();
    let shortest = started.elapsed();
    println!(
        "\nembedding with {} (CPU, {} threads available):",
        embedder.model_id(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "  baseline, a two-token text:       {}",
        milliseconds(shortest)
    );
    println!(
        "  one 25-token text per call:        p50 {}",
        milliseconds(percentile(&mut single, 0.5))
    );
    println!(
        "  per text in batches of 32:         p50 {}",
        milliseconds(percentile(&mut batched, 0.5))
    );
}

fn main() {
    let quick = std::env::args().any(|argument| argument == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The worst case: every memory in the one scope a recall names.
        recall_latency(10_000, 1, 1).await;
        if !quick {
            recall_latency(100_000, 1, 1).await;
            // The usual shape: many users and chats, a recall naming a few.
            recall_latency(100_000, 1000, 3).await;
        }
        println!("\nwrite throughput (durable: WAL, synchronous=FULL):");
        write_throughput(100, 20_000, 500).await;
        write_throughput(1, 5_000, 500).await;
    });
    embedding_time();
}
