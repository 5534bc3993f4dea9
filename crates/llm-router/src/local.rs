//! The in-process local model: a GGUF file run by llama.cpp on the CPU, loaded on first use,
//! answering in the same OpenAI-shaped replies and stream chunks as a remote provider, so the
//! engine treats it as one more chain entry (the last resort of every route by default).
//!
//! Generation runs on its own blocking thread, one at a time (each uses every thread it is
//! given; two at once would only slow each other down), and sends chunks through a bounded
//! channel: a caller that goes away closes the channel, which stops generation at the next token
//! and frees the CPU and the provider's slot.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::config::{ProviderConfig, Timeouts};
use crate::upstream::{ChatReply, Failure, OpenStream, StreamChunk};

/// Tokens decoded per batch while reading the prompt; the generation can be cancelled between
/// batches.
const PROMPT_BATCH: usize = 256;
/// Most stop sequences a request may give (OpenAI's limit).
const MAX_STOP_SEQUENCES: usize = 4;
/// Chunks buffered between the generating thread and the caller.
const CHANNEL_CAPACITY: usize = 64;
/// Sampling when a request does not say. OpenAI's defaults (temperature 1, top-p 1) suit large
/// models; a small local one wanders off at them, so these follow the shipped model's card
/// (SmolLM2: temperature 0.2, top-p 0.9).
const DEFAULT_TEMPERATURE: f64 = 0.2;
const DEFAULT_TOP_P: f64 = 0.9;
/// Always-on guards against the long tail of unlikely tokens, as llama.cpp's server has them.
const TOP_K: i32 = 40;
const MIN_P: f32 = 0.05;
/// Repeating the last tokens is discouraged, as llama.cpp's server and Ollama do by default:
/// small models otherwise fall into loops.
const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: i32 = 64;
/// Tokens generated when a request sets no limit: a runaway answer would hold the CPU.
const DEFAULT_MAX_TOKENS: u32 = 512;

/// llama.cpp's process-wide state: initialised once, on the first load.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
/// llama.cpp mutates shared model state while creating a context, so contexts are created one
/// at a time (see `LlamaModel::new_context`).
static CONTEXT_CREATION: Mutex<()> = Mutex::new(());

fn backend() -> Result<&'static LlamaBackend, String> {
    BACKEND
        .get_or_init(|| {
            cpu_supported()?;
            // llama.cpp logs every tensor it loads; through tracing they sit at debug level.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|error| format!("cannot start llama.cpp: {error}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// llama.cpp's CPU kernels are built for x86-64-v3 (`.cargo/config.toml`); an older CPU would
/// die on an illegal instruction, so it is refused here, before any of them runs.
fn cpu_supported() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        let missing: Vec<&str> = [
            ("AVX2", std::arch::is_x86_feature_detected!("avx2")),
            ("FMA", std::arch::is_x86_feature_detected!("fma")),
            ("F16C", std::arch::is_x86_feature_detected!("f16c")),
            ("BMI2", std::arch::is_x86_feature_detected!("bmi2")),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(format!(
                "this CPU lacks {}, which the local model's kernels need (x86-64-v3)",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

/// Where a local model stands, for `STATUS=` and `ListProviders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadState {
    /// Not loaded yet; the first request loads it.
    NotLoaded,
    /// The first request is loading it.
    Loading,
    /// Loaded and serving.
    Loaded {
        /// The model's size in memory.
        bytes: u64,
        /// Threads each generation uses.
        threads: u32,
        /// How long loading took.
        took: Duration,
    },
    /// The last load failed (the next request tries again).
    Failed(String),
}

impl LoadState {
    /// A few words for the status line.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::NotLoaded => "not loaded (loads on first use)".to_owned(),
            Self::Loading => "loading".to_owned(),
            Self::Loaded {
                bytes,
                threads,
                took,
            } => format!(
                "loaded ({} MB, {threads} threads, in {} ms)",
                bytes / 1_000_000,
                took.as_millis()
            ),
            Self::Failed(problem) => format!("failed to load: {problem}"),
        }
    }
}

/// One local provider: its model file, loaded lazily and kept across configuration reloads
/// that leave its settings unchanged.
#[derive(Debug)]
pub(crate) struct LocalModel {
    provider: String,
    file: PathBuf,
    model_name: String,
    configured_threads: u32,
    context_tokens: u32,
    timeouts: Timeouts,
    hwaccel_socket: PathBuf,
    loaded: tokio::sync::OnceCell<Arc<Loaded>>,
    state: Mutex<LoadState>,
    /// One generation at a time.
    cpu: Arc<Semaphore>,
}

/// A loaded model and what requests need from its metadata.
struct Loaded {
    model: LlamaModel,
    template: ChatTemplate,
    threads: u32,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Loaded")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl LocalModel {
    /// The local provider `provider` (kind "local"), not yet loaded. A CPU the kernels cannot
    /// run on, or a missing model file, is a problem reported at once, so the provider shows as
    /// unusable with the reason.
    pub(crate) fn new(
        provider: &ProviderConfig,
        model_directory: &Path,
        hwaccel_socket: PathBuf,
    ) -> Result<Self, String> {
        // Said at once, in ListProviders and STATUS=, rather than on the first request.
        cpu_supported()?;
        let file = provider.model_path(model_directory);
        if !file.is_file() {
            return Err(format!(
                "model file {} not found (the shipped model is in the package synos-model-smollm2)",
                file.display()
            ));
        }
        Ok(Self {
            provider: provider.name.clone(),
            model_name: provider.local_model_name(),
            file,
            configured_threads: provider.threads,
            context_tokens: provider.context_tokens,
            timeouts: provider.timeouts,
            hwaccel_socket,
            loaded: tokio::sync::OnceCell::new(),
            state: Mutex::new(LoadState::NotLoaded),
            cpu: Arc::new(Semaphore::new(1)),
        })
    }

    /// Whether `other` would load the same model the same way, so this one can be kept.
    pub(crate) fn same_as(&self, other: &ProviderConfig, model_directory: &Path) -> bool {
        self.file == other.model_path(model_directory)
            && self.configured_threads == other.threads
            && self.context_tokens == other.context_tokens
            && self.timeouts == other.timeouts
    }

    /// The model file.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The model's name (its file's name without ".gguf").
    pub(crate) fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Where loading stands.
    pub(crate) fn load_state(&self) -> LoadState {
        self.state
            .lock()
            .map_or(LoadState::NotLoaded, |state| state.clone())
    }

    fn set_state(&self, state: LoadState) {
        if let Ok(mut current) = self.state.lock() {
            *current = state;
        }
    }

    async fn load(&self) -> Result<Arc<Loaded>, Failure> {
        self.loaded
            .get_or_try_init(|| async {
                self.set_state(LoadState::Loading);
                let advice = hardware_advice(&self.hwaccel_socket).await;
                if let Some(reasons) = advice.minimal_tier {
                    let problem = format!(
                        "hwaccel puts this machine in the minimal tier ({reasons}), where no local \
                         model runs; lowering [tiers] minimal_below_bytes in hwaccel.toml allows it"
                    );
                    tracing::warn!(provider = %self.provider, %problem, "local model not loaded");
                    self.set_state(LoadState::Failed(problem.clone()));
                    return Err(Failure::Connection(format!("local model not loaded: {problem}")));
                }
                let threads = self.thread_count(advice.physical_cores);
                let file = self.file.clone();
                let started = Instant::now();
                let loaded = tokio::task::spawn_blocking(move || load_model(&file, threads))
                    .await
                    .map_err(|error| format!("loading stopped: {error}"))
                    .and_then(|loaded| loaded);
                match loaded {
                    Ok(loaded) => {
                        let took = started.elapsed();
                        let bytes = loaded.model.size();
                        tracing::info!(provider = %self.provider, file = %self.file.display(), threads, ms = took.as_millis(), "local model loaded");
                        self.set_state(LoadState::Loaded {
                            bytes,
                            threads,
                            took,
                        });
                        Ok(Arc::new(loaded))
                    }
                    Err(problem) => {
                        tracing::error!(provider = %self.provider, file = %self.file.display(), %problem, "local model failed to load");
                        self.set_state(LoadState::Failed(problem.clone()));
                        Err(Failure::Connection(format!("local model failed to load: {problem}")))
                    }
                }
            })
            .await
            .map(Arc::clone)
    }

    /// Threads per generation: the configured count, or the physical cores hwaccel reports,
    /// capped by what this process may use (CPU affinity and the cgroup's `cpu.max`, which
    /// `available_parallelism` reads).
    fn thread_count(&self, physical: Option<u32>) -> u32 {
        if self.configured_threads > 0 {
            return self.configured_threads;
        }
        let allowed = std::thread::available_parallelism()
            .map_or(1, |count| u32::try_from(count.get()).unwrap_or(u32::MAX));
        physical.map_or(allowed, |cores| cores.min(allowed)).max(1)
    }

    /// A whole chat completion.
    pub(crate) async fn chat(&self, body: &Value) -> Result<ChatReply, Failure> {
        let mut open = self.chat_stream(body).await?;
        let mut content = String::new();
        let mut finish_reason = String::from("stop");
        let mut usage = None;
        let mut chunks = std::mem::take(&mut open.first);
        loop {
            for chunk in chunks.drain(..) {
                content.push_str(&chunk.delta);
                if let Some(reason) = chunk.finish_reason {
                    finish_reason = reason;
                }
                if chunk.usage.is_some() {
                    usage = chunk.usage;
                }
            }
            match open.rest.next().await? {
                Some(chunk) => chunks.push(chunk),
                None => break,
            }
        }
        let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, 0));
        let body = json!({
            "id": completion_id(),
            "object": "chat.completion",
            "created": unix_now(),
            "model": self.model_name,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        Ok(ChatReply {
            body,
            content,
            finish_reason,
            usage,
        })
    }

    /// Starts a streamed completion and waits for its first output, within the provider's
    /// first-token timeout (which covers loading the model and waiting for the CPU).
    pub(crate) async fn chat_stream(&self, body: &Value) -> Result<OpenStream, Failure> {
        let started = Instant::now();
        let request = GenerationRequest::parse(body)?;
        let first_token_deadline = started + self.timeouts.first_token();
        let opening = async {
            let loaded = self.load().await?;
            let permit = Arc::clone(&self.cpu)
                .acquire_owned()
                .await
                .map_err(|_| Failure::Connection("the local model is shutting down".to_owned()))?;
            let prompt = loaded.template.render(&loaded.model, &request.messages)?;
            let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
            let model_name = self.model_name.clone();
            let context_tokens = self.context_tokens;
            tokio::task::spawn_blocking(move || {
                generate(
                    &loaded,
                    &prompt,
                    &request,
                    context_tokens,
                    &model_name,
                    &sender,
                );
                drop(permit);
            });
            let mut rest = LocalChunks {
                receiver,
                deadline: started + self.timeouts.total(),
                idle: self.timeouts.idle(),
            };
            let mut first = Vec::new();
            loop {
                match rest.next().await? {
                    None => {
                        return Err(Failure::BadReply(
                            "the local model ended before any output".to_owned(),
                        ));
                    }
                    Some(chunk) => {
                        let has_output = chunk.has_output();
                        first.push(chunk);
                        if has_output {
                            return Ok((first, rest));
                        }
                    }
                }
            }
        };
        match tokio::time::timeout_at(first_token_deadline.into(), opening).await {
            Err(_) => Err(Failure::Timeout(format!(
                "no token within the first-token timeout of {}",
                crate::provider_state::seconds(self.timeouts.first_token())
            ))),
            Ok(Err(failure)) => Err(failure),
            Ok(Ok((first, rest))) => Ok(OpenStream {
                first,
                rest: crate::upstream::ChunkReader::Local(rest),
                time_to_first_token: started.elapsed(),
            }),
        }
    }
}

/// What hwaccel says about running a local model here.
#[derive(Debug, Default)]
struct HardwareAdvice {
    /// The tier's reasons, when the machine is in the minimal tier.
    minimal_tier: Option<String>,
    physical_cores: Option<u32>,
}

/// Asks hwaccel for the tier and the physical cores; nothing is known (and a local model is
/// tried) when it does not answer quickly, since the router must work without it.
async fn hardware_advice(socket: &Path) -> HardwareAdvice {
    use synos_proto::hwaccel::v1::{
        GetSystemInfoRequest, GetTierRequest, Tier, hardware_client::HardwareClient,
    };
    let timeout = Duration::from_millis(500);
    let Ok(channel) = synos_common::client::connect(socket, timeout).await else {
        return HardwareAdvice::default();
    };
    let (mut for_tier, mut for_info) = (
        HardwareClient::new(channel.clone()),
        HardwareClient::new(channel),
    );
    // Both at once: a slow hwaccel delays the first local answer by one timeout at most.
    let (tier, info) = tokio::join!(
        tokio::time::timeout(timeout, for_tier.get_tier(GetTierRequest {})),
        tokio::time::timeout(timeout, for_info.get_system_info(GetSystemInfoRequest {})),
    );
    let tier = tier
        .ok()
        .and_then(Result::ok)
        .map(tonic::Response::into_inner);
    let info = info
        .ok()
        .and_then(Result::ok)
        .map(tonic::Response::into_inner);
    HardwareAdvice {
        minimal_tier: tier
            .filter(|tier| tier.tier() == Tier::Minimal)
            .map(|tier| tier.reasons.join("; ")),
        physical_cores: info.and_then(|info| info.cpu.and_then(|cpu| cpu.physical_cores)),
    }
}

fn load_model(file: &Path, threads: u32) -> Result<Loaded, String> {
    let backend = backend()?;
    let model = LlamaModel::load_from_file(backend, file, &LlamaModelParams::default())
        .map_err(|error| format!("{}: not a loadable GGUF model ({error})", file.display()))?;
    let template = ChatTemplate::of(&model)?;
    Ok(Loaded {
        model,
        template,
        threads,
    })
}

/// The stream of a local generation, as the engine reads it.
#[derive(Debug)]
pub(crate) struct LocalChunks {
    receiver: mpsc::Receiver<Result<StreamChunk, Failure>>,
    deadline: Instant,
    idle: Duration,
}

impl LocalChunks {
    /// The next chunk; `None` when the answer is complete.
    pub(crate) async fn next(&mut self) -> Result<Option<StreamChunk>, Failure> {
        let deadline = self.deadline.min(Instant::now() + self.idle);
        match tokio::time::timeout_at(deadline.into(), self.receiver.recv()).await {
            Err(_) => Err(Failure::Timeout(
                "the local model exceeded its idle or total timeout".to_owned(),
            )),
            Ok(None) => Ok(None),
            Ok(Some(item)) => item.map(Some),
        }
    }
}

/// The sampling settings of one request, checked before any work is done.
#[derive(Debug, Clone)]
struct GenerationRequest {
    messages: Vec<(String, String)>,
    temperature: f32,
    top_p: f32,
    max_tokens: u32,
    frequency_penalty: f32,
    presence_penalty: f32,
    stop: Vec<String>,
    seed: u32,
}

fn rejected(message: impl Into<String>) -> Failure {
    Failure::Rejected {
        status: 400,
        message: message.into(),
    }
}

impl GenerationRequest {
    fn parse(body: &Value) -> Result<Self, Failure> {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .filter(|messages| !messages.is_empty())
            .ok_or_else(|| rejected("messages must be a non-empty array"))?
            .iter()
            .enumerate()
            .map(|(index, message)| {
                let role = message
                    .get("role")
                    .and_then(Value::as_str)
                    // OpenAI's newer name for the system role.
                    .map(|role| if role == "developer" { "system" } else { role })
                    .filter(|role| matches!(*role, "system" | "user" | "assistant"))
                    .ok_or_else(|| {
                        rejected(format!(
                            "messages[{index}].role must be system, user or assistant for the local model"
                        ))
                    })?;
                let content = match message.get("content") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .map(|part| match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(text)) => Ok(text),
                            _ => Err(rejected(format!("messages[{index}].content: the local model reads text parts only"))),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .concat(),
                    _ => return Err(rejected(format!("messages[{index}].content must be text"))),
                };
                Ok((role.to_owned(), content))
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        if body.get("tools").is_some_and(|tools| !tools.is_null()) {
            return Err(rejected("the local model does not call tools"));
        }
        if body
            .get("n")
            .and_then(Value::as_u64)
            .is_some_and(|n| n != 1)
        {
            return Err(rejected("the local model gives one choice (n = 1)"));
        }
        let number = |name: &str, default: f64, valid: fn(f64) -> bool, expected: &str| match body
            .get(name)
        {
            None | Some(Value::Null) => Ok(default),
            Some(value) => value
                .as_f64()
                .filter(|number| valid(*number))
                .ok_or_else(|| rejected(format!("{name} must be {expected}"))),
        };
        // f64 → f32 keeps every value these ranges allow to sampling precision.
        #[allow(clippy::cast_possible_truncation)]
        let temperature = number(
            "temperature",
            DEFAULT_TEMPERATURE,
            |value| (0.0..=2.0).contains(&value),
            "a number from 0 to 2",
        )? as f32;
        #[allow(clippy::cast_possible_truncation)]
        let top_p = number(
            "top_p",
            DEFAULT_TOP_P,
            |value| value > 0.0 && value <= 1.0,
            "a number in (0, 1]",
        )? as f32;
        #[allow(clippy::cast_possible_truncation)]
        let frequency_penalty = number(
            "frequency_penalty",
            0.0,
            |value| (-2.0..=2.0).contains(&value),
            "a number from -2 to 2",
        )? as f32;
        #[allow(clippy::cast_possible_truncation)]
        let presence_penalty = number(
            "presence_penalty",
            0.0,
            |value| (-2.0..=2.0).contains(&value),
            "a number from -2 to 2",
        )? as f32;
        let max_tokens = match body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
        {
            None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
            Some(value) => value
                .as_u64()
                .filter(|count| *count > 0)
                .and_then(|count| u32::try_from(count).ok())
                .ok_or_else(|| rejected("max_tokens must be a positive integer"))?,
        };
        let stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(stop)) => vec![stop.clone()],
            Some(Value::Array(stops)) => stops
                .iter()
                .map(|stop| stop.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| rejected("stop must be a string or an array of strings"))?,
            Some(_) => return Err(rejected("stop must be a string or an array of strings")),
        };
        if stop.len() > MAX_STOP_SEQUENCES || stop.iter().any(String::is_empty) {
            return Err(rejected(format!(
                "stop takes at most {MAX_STOP_SEQUENCES} non-empty sequences"
            )));
        }
        let seed = match body.get("seed") {
            None | Some(Value::Null) => rand::random(),
            Some(value) => value
                .as_i64()
                // The sampler's seed is 32 bits; larger seeds are folded, still deterministic.
                .map(|seed| (seed as u64 ^ ((seed as u64) >> 32)) as u32)
                .ok_or_else(|| rejected("seed must be an integer"))?,
        };
        Ok(Self {
            messages,
            temperature,
            top_p,
            max_tokens,
            frequency_penalty,
            presence_penalty,
            stop,
            seed,
        })
    }

    fn sampler(&self, vocabulary_size: i32) -> LlamaSampler {
        let penalties = LlamaSampler::penalties(
            vocabulary_size,
            REPEAT_WINDOW,
            REPEAT_PENALTY,
            self.frequency_penalty,
            self.presence_penalty,
        );
        if self.temperature == 0.0 {
            return LlamaSampler::chain_simple([penalties, LlamaSampler::greedy()]);
        }
        LlamaSampler::chain_simple([
            penalties,
            LlamaSampler::top_k(TOP_K),
            LlamaSampler::top_p(self.top_p, 1),
            LlamaSampler::min_p(MIN_P, 1),
            LlamaSampler::temp(self.temperature),
            LlamaSampler::dist(self.seed),
        ])
    }
}

/// The model's own chat template (`tokenizer.chat_template`, Jinja), rendered with minijinja.
struct ChatTemplate {
    environment: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// Marks where a message's content sits in the rendered prompt, so the content can be
/// tokenized as plain text: a user who types `<|im_start|>` gets those characters, not the
/// control token. Private-use characters, removed from contents first.
const CONTENT_START: char = '\u{F8F0}';
const CONTENT_END: char = '\u{F8F1}';

impl ChatTemplate {
    fn of(model: &LlamaModel) -> Result<Self, String> {
        let source = model
            .meta_val_str("tokenizer.chat_template")
            .map_err(|_| "the model has no chat template (tokenizer.chat_template)".to_owned())?;
        let mut environment = minijinja::Environment::new();
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        environment
            .add_template_owned("chat", source)
            .map_err(|error| format!("the model's chat template does not parse: {error}"))?;
        let vocab = model.vocab();
        let piece = |token: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        };
        Ok(Self {
            environment,
            bos_token: piece(vocab.bos()),
            eos_token: piece(vocab.eos()),
        })
    }

    /// The prompt's tokens: the template's markup parsed with special tokens, each message's
    /// content as plain text.
    fn render(
        &self,
        model: &LlamaModel,
        messages: &[(String, String)],
    ) -> Result<Vec<LlamaToken>, Failure> {
        let marked: Vec<Value> = messages
            .iter()
            .enumerate()
            .map(|(index, (role, _))| {
                json!({ "role": role, "content": format!("{CONTENT_START}{index}{CONTENT_END}") })
            })
            .collect();
        let rendered = self
            .environment
            .get_template("chat")
            .and_then(|template| {
                template.render(minijinja::context! {
                    messages => marked,
                    add_generation_prompt => true,
                    bos_token => self.bos_token,
                    eos_token => self.eos_token,
                })
            })
            .map_err(|error| {
                rejected(format!(
                    "the model's chat template refused the conversation: {error}"
                ))
            })?;
        let vocab = model.vocab();
        let mut tokens = Vec::new();
        if vocab.should_add_bos() && !rendered.starts_with(&self.bos_token) {
            tokens.push(vocab.bos());
        }
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find(CONTENT_START) {
            tokens.extend(vocab.tokenize(&rest.as_bytes()[..start], false, true));
            let after = &rest[start + CONTENT_START.len_utf8()..];
            let end = after
                .find(CONTENT_END)
                .ok_or_else(|| rejected("the model's chat template cut a message apart"))?;
            let index: usize = after[..end]
                .parse()
                .map_err(|_| rejected("the model's chat template changed a message"))?;
            let content = messages
                .get(index)
                .map(|(_, content)| content.replace([CONTENT_START, CONTENT_END], ""))
                .ok_or_else(|| rejected("the model's chat template changed a message"))?;
            tokens.extend(vocab.tokenize(content.as_bytes(), false, false));
            rest = &after[end + CONTENT_END.len_utf8()..];
        }
        tokens.extend(vocab.tokenize(rest.as_bytes(), false, true));
        Ok(tokens)
    }
}

/// Text decoded from byte-level tokens, released only when it is whole UTF-8 and cannot be
/// the start of a stop sequence.
struct TextAssembler {
    pending_bytes: Vec<u8>,
    text: String,
    released: usize,
    stop: Vec<String>,
}

impl TextAssembler {
    fn new(stop: Vec<String>) -> Self {
        Self {
            pending_bytes: Vec::new(),
            text: String::new(),
            released: 0,
            stop,
        }
    }

    /// Adds a token's bytes; returns the text now safe to release and whether a stop sequence
    /// was reached (the text before it is released, the sequence itself never).
    fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        self.pending_bytes.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.pending_bytes) {
                Ok(valid) => {
                    self.text.push_str(valid);
                    self.pending_bytes.clear();
                    break;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    // `valid_up_to` bytes are UTF-8 by definition.
                    self.text
                        .push_str(&String::from_utf8_lossy(&self.pending_bytes[..valid]));
                    match error.error_len() {
                        // An incomplete character: wait for the next token.
                        None => {
                            self.pending_bytes.drain(..valid);
                            break;
                        }
                        Some(invalid) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending_bytes.drain(..valid + invalid);
                        }
                    }
                }
            }
        }
        let unreleased = &self.text[self.released..];
        if let Some(position) = self
            .stop
            .iter()
            .filter_map(|stop| unreleased.find(stop.as_str()))
            .min()
        {
            let out = unreleased[..position].to_owned();
            self.released = self.text.len();
            return (out, true);
        }
        // Hold back the longest tail that could still grow into a stop sequence.
        let held = self
            .stop
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|length| stop.is_char_boundary(*length))
                    .filter(|length| unreleased.ends_with(&stop[..*length]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let end = self.text.len() - held;
        let out = self.text[self.released..end].to_owned();
        self.released = end;
        (out, false)
    }

    /// Whatever is left at the end.
    fn finish(&mut self) -> String {
        if !self.pending_bytes.is_empty() {
            self.text.push(char::REPLACEMENT_CHARACTER);
            self.pending_bytes.clear();
        }
        let out = self.text[self.released..].to_owned();
        self.released = self.text.len();
        out
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn completion_id() -> String {
    format!("chatcmpl-local-{:016x}", rand::random::<u64>())
}

/// Builds the chunks a generation sends, in the OpenAI stream shape.
struct ChunkMaker {
    id: String,
    created: u64,
    model: String,
}

impl ChunkMaker {
    fn text(&self, delta: String, finish_reason: Option<&str>) -> StreamChunk {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": if delta.is_empty() { json!({}) } else { json!({ "content": delta }) },
                "finish_reason": finish_reason,
            }],
        });
        StreamChunk {
            body,
            delta,
            finish_reason: finish_reason.map(str::to_owned),
            usage: None,
        }
    }

    fn usage(&self, prompt_tokens: u64, completion_tokens: u64) -> StreamChunk {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        StreamChunk {
            body,
            delta: String::new(),
            finish_reason: None,
            usage: Some((prompt_tokens, completion_tokens)),
        }
    }
}

/// Runs one generation on the calling (blocking) thread, sending chunks until the answer ends
/// or the receiver goes away.
fn generate(
    loaded: &Loaded,
    prompt: &[LlamaToken],
    request: &GenerationRequest,
    context_tokens: u32,
    model_name: &str,
    sender: &mpsc::Sender<Result<StreamChunk, Failure>>,
) {
    let maker = ChunkMaker {
        id: completion_id(),
        created: unix_now(),
        model: model_name.to_owned(),
    };
    let send = |item: Result<StreamChunk, Failure>| sender.blocking_send(item).is_ok();
    match run_generation(loaded, prompt, request, context_tokens, &maker, sender) {
        Ok(Some((finish_reason, completion_tokens))) => {
            let _ = send(Ok(maker.text(String::new(), Some(finish_reason))))
                && send(Ok(maker.usage(prompt.len() as u64, completion_tokens)));
        }
        // The caller went away.
        Ok(None) => {}
        Err(failure) => {
            let _ = send(Err(failure));
        }
    }
}

/// The decode loop. `Ok(None)` when the caller went away, else the finish reason and the
/// number of generated tokens.
fn run_generation(
    loaded: &Loaded,
    prompt: &[LlamaToken],
    request: &GenerationRequest,
    context_tokens: u32,
    maker: &ChunkMaker,
    sender: &mpsc::Sender<Result<StreamChunk, Failure>>,
) -> Result<Option<(&'static str, u64)>, Failure> {
    let send = |item: Result<StreamChunk, Failure>| sender.blocking_send(item).is_ok();
    let backend = backend().map_err(Failure::Connection)?;
    let prompt_length = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
    if prompt_length >= context_tokens {
        return Err(rejected(format!(
            "the prompt is {prompt_length} tokens; the local model's context holds {context_tokens}"
        )));
    }
    let room = context_tokens - prompt_length;
    let max_tokens = request.max_tokens.min(room);
    // A context just large enough for this request: less memory to allocate and clear.
    let size = (prompt_length + max_tokens)
        .next_multiple_of(256)
        .min(context_tokens);
    let threads = i32::try_from(loaded.threads).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(size))
        .with_n_batch(PROMPT_BATCH as u32)
        .with_n_ubatch(PROMPT_BATCH as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut context = {
        let _creating = CONTEXT_CREATION
            .lock()
            .map_err(|_| Failure::Connection("the local model is broken".to_owned()))?;
        loaded.model.new_context(backend, params).map_err(|error| {
            Failure::Connection(format!("cannot create a llama.cpp context: {error}"))
        })?
    };
    let decode_failed = |error: llama_cpp_2::DecodeError| {
        Failure::Connection(format!("llama.cpp failed to decode: {error}"))
    };
    let mut batch = LlamaBatch::new(PROMPT_BATCH, 1);
    let mut position = 0_i32;
    for (index, piece) in prompt.chunks(PROMPT_BATCH).enumerate() {
        if sender.is_closed() {
            return Ok(None);
        }
        batch.clear();
        let last_piece = (index + 1) * PROMPT_BATCH >= prompt.len();
        for (offset, token) in piece.iter().enumerate() {
            let wants_logits = last_piece && offset + 1 == piece.len();
            batch
                .add(*token, position, &[0], wants_logits)
                .map_err(|error| Failure::Connection(error.to_string()))?;
            position += 1;
        }
        context.decode(&mut batch).map_err(decode_failed)?;
    }
    let mut sampler = request.sampler(loaded.model.n_vocab());
    let vocab = loaded.model.vocab();
    let mut text = TextAssembler::new(request.stop.clone());
    let mut generated = 0_u64;
    let mut piece = Vec::with_capacity(16);
    loop {
        if generated >= u64::from(max_tokens) {
            let rest = text.finish();
            if !rest.is_empty() && !send(Ok(maker.text(rest, None))) {
                return Ok(None);
            }
            return Ok(Some(("length", generated)));
        }
        let token = sampler.sample(&context, batch.n_tokens() - 1);
        generated += 1;
        if vocab.is_eog(token) {
            let rest = text.finish();
            if !rest.is_empty() && !send(Ok(maker.text(rest, None))) {
                return Ok(None);
            }
            return Ok(Some(("stop", generated)));
        }
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        let (released, stopped) = text.push(&piece);
        if !released.is_empty() && !send(Ok(maker.text(released, None))) {
            return Ok(None);
        }
        if stopped {
            return Ok(Some(("stop", generated)));
        }
        batch.clear();
        batch
            .add(token, position, &[0], true)
            .map_err(|error| Failure::Connection(error.to_string()))?;
        position += 1;
        context.decode(&mut batch).map_err(decode_failed)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(assembler: &mut TextAssembler, parts: &[&[u8]]) -> (String, bool) {
        let mut out = String::new();
        for part in parts {
            let (released, stopped) = assembler.push(part);
            out.push_str(&released);
            if stopped {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let mut assembler = TextAssembler::new(Vec::new());
        let euro = "€".as_bytes();
        assert_eq!(assembler.push(&euro[..1]).0, "");
        assert_eq!(assembler.push(&euro[1..2]).0, "");
        assert_eq!(assembler.push(&euro[2..]).0, "€");
        assert_eq!(assembler.push(b"\xff!").0, "\u{FFFD}!");
        assembler.push(&euro[..2]);
        assert_eq!(assembler.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_sequences_end_the_text_even_across_tokens() {
        let mut assembler = TextAssembler::new(vec!["\nUser:".to_owned()]);
        let (text, stopped) = pushed(&mut assembler, &[b"Paris.", b"\nUs", b"er:", b" more"]);
        assert_eq!(text, "Paris.");
        assert!(stopped);
        let mut assembler = TextAssembler::new(vec!["\nUser:".to_owned()]);
        let (text, stopped) = pushed(&mut assembler, &[b"a\nUs", b"ually"]);
        assert_eq!(text, "a\nUsually");
        assert!(!stopped);
    }

    #[test]
    fn requests_are_checked_before_any_work() {
        let parse = |body: Value| {
            GenerationRequest::parse(&body)
                .map(|_| ())
                .map_err(|failure| failure.describe())
        };
        let message = json!([{ "role": "user", "content": "hi" }]);
        assert!(parse(json!({ "messages": message })).is_ok());
        for (body, expected) in [
            (json!({ "messages": [] }), "non-empty"),
            (
                json!({ "messages": [{ "role": "tool", "content": "x" }] }),
                "role",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url" }] }] }),
                "text parts",
            ),
            (
                json!({ "messages": message, "temperature": 3 }),
                "temperature",
            ),
            (json!({ "messages": message, "top_p": 0 }), "top_p"),
            (
                json!({ "messages": message, "max_tokens": 0 }),
                "max_tokens",
            ),
            (
                json!({ "messages": message, "stop": ["a", "b", "c", "d", "e"] }),
                "stop",
            ),
            (json!({ "messages": message, "stop": 7 }), "stop"),
            (json!({ "messages": message, "n": 2 }), "one choice"),
            (
                json!({ "messages": message, "presence_penalty": -3 }),
                "presence_penalty",
            ),
            (json!({ "messages": message, "tools": [] }), "tools"),
        ] {
            let error = parse(body).expect_err(expected);
            assert!(
                error.contains(expected),
                "{error} should mention {expected}"
            );
        }
    }
}
