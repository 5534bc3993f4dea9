//! The router's configuration: `[http]`, `[[provider]]`, `[[route]]`, `[budgets]`, `[breaker]`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use synos_common::config::{LogConfig, Problem, ServerConfig, Settings};

/// `/etc/synos/llm-router.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and limits.
    pub server: ServerConfig,
    /// Log filter.
    pub log: LogConfig,
    /// The OpenAI-compatible endpoint.
    pub http: HttpConfig,
    /// Where credentials come from when neither systemd nor the environment has them.
    pub credentials: CredentialsConfig,
    /// When a failing provider is taken out of rotation.
    pub breaker: BreakerConfig,
    /// Per-principal daily spending limits.
    pub budgets: BudgetsConfig,
    /// Screening every prompt through synos-policy.
    pub policy: PolicyGateConfig,
    /// The providers, in the order they are listed (`[[provider]]`).
    #[serde(rename = "provider")]
    pub providers: Vec<ProviderConfig>,
    /// The routes (`[[route]]`).
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// `[http]`: the OpenAI-compatible endpoint on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; "" turns the endpoint off. Port 0 picks a free port.
    pub listen: String,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Failed authentications allowed per second, across all clients, before answering 429.
    pub failed_auth_per_second: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7311".to_owned(),
            max_body_bytes: 4 * 1024 * 1024,
            failed_auth_per_second: 10,
        }
    }
}

impl HttpConfig {
    /// The parsed listen address; `None` when the endpoint is off.
    pub fn address(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[credentials]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialsConfig {
    /// A TOML file of `name = "secret"` lines, readable by the router only.
    pub file: PathBuf,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("/etc/synos/llm-router.credentials"),
        }
    }
}

/// `[breaker]`: the per-provider circuit breaker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// The window over which the error ratio is measured.
    pub window_ms: u64,
    /// Fewer outcomes than this in the window never open the breaker.
    pub min_requests: u32,
    /// Share of failures in the window (0 < ratio ≤ 1) that opens the breaker.
    pub error_ratio: f64,
    /// How long an open breaker waits before letting a single probe through.
    pub open_ms: u64,
    /// How long a provider cools down after a 429 or 5xx without `Retry-After`.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_ms: 30_000,
            min_requests: 5,
            error_ratio: 0.5,
            open_ms: 30_000,
            cooldown_ms: 5_000,
        }
    }
}

/// `[policy]`: the gate that screens every prompt through synos-policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyGateConfig {
    /// Whether prompts are screened.
    pub gate: GateMode,
    /// What happens when synos-policy cannot be reached.
    pub when_unreachable: Unreachable,
    /// synos-policy's socket; default `$SYNOS_RUNTIME_DIR/policy.sock`.
    pub socket: Option<PathBuf>,
}

/// `[policy] gate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMode {
    /// On whenever synos-policy's socket exists.
    #[default]
    Auto,
    /// Always on: without policy, `when_unreachable` decides.
    On,
    /// Never screened.
    Off,
}

/// `[policy] when_unreachable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unreachable {
    /// Fail closed: refuse the request.
    #[default]
    Refuse,
    /// Fail open: route it unscreened, counted and logged.
    Allow,
}

/// `[budgets]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetsConfig {
    /// Daily limit in US dollars per named principal.
    pub principal_daily_usd: BTreeMap<String, f64>,
    /// Daily limit for principals not named above; none when unset.
    pub default_principal_daily_usd: Option<f64>,
}

impl BudgetsConfig {
    /// The daily limit that applies to `principal` (`User::"alice"` is configured as `alice`).
    pub fn for_principal(&self, principal: &str) -> Option<f64> {
        self.principal_daily_usd
            .get(synos_common::caller::account_name(principal))
            .copied()
            .or(self.default_principal_daily_usd)
    }
}

/// One LLM provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name that routes refer to.
    pub name: String,
    /// The protocol it speaks.
    pub kind: ProviderKind,
    /// Base URL of its API, e.g. "http://127.0.0.1:11434/v1" (kind "openai" only).
    #[serde(default)]
    pub base_url: String,
    /// Name of the credential to send as a bearer token; none for local servers.
    #[serde(default)]
    pub credential: Option<String>,
    /// Cost tier.
    pub tier: Tier,
    /// How far its operator is trusted with prompts.
    pub trust: Trust,
    /// Price per million tokens, or "free". Required: an unknown price is never $0.
    pub price: Option<Price>,
    /// Timeouts for each request.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Requests in flight at once; more are routed elsewhere.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Largest reply (or streamed event) accepted from it; larger is a bad reply.
    #[serde(default = "default_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// Route model names to the provider's own, e.g. `{ "llama-3.1-8b" = "llama3.1:8b" }`.
    #[serde(default)]
    pub models: HashMap<String, String>,
    /// The GGUF file a local provider runs; relative paths are under `$SYNOS_MODEL_DIR`
    /// (kind "local" only; default: the shipped SmolLM2-135M-Instruct).
    #[serde(default)]
    pub model_file: Option<PathBuf>,
    /// Threads a local provider's generation uses; 0 takes the physical cores hwaccel reports,
    /// capped by the CPUs this process may use (affinity and the cgroup's `cpu.max`).
    #[serde(default)]
    pub threads: u32,
    /// Tokens a local provider's context holds: prompt and answer together.
    #[serde(default = "default_context_tokens")]
    pub context_tokens: u32,
}

fn default_max_concurrency() -> u32 {
    64
}
fn default_max_reply_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_context_tokens() -> u32 {
    2048
}

/// The name of the local provider every route falls back to unless it says otherwise; built
/// in when the configuration defines no provider of that name.
pub const LOCAL_PROVIDER: &str = "local";
/// The model the built-in local provider runs, under `$SYNOS_MODEL_DIR` (package
/// synos-model-smollm2).
pub const SHIPPED_LOCAL_MODEL: &str = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

impl ProviderConfig {
    /// The provider's own name for `model`; a local provider runs one model, named after its
    /// file.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> std::borrow::Cow<'a, str> {
        match self.kind {
            ProviderKind::Local => std::borrow::Cow::Owned(self.local_model_name()),
            ProviderKind::OpenAi => {
                std::borrow::Cow::Borrowed(self.models.get(model).map_or(model, String::as_str))
            }
        }
    }

    /// The built-in local provider: the shipped model, free and trusted, generous timeouts
    /// (the first request loads the model; it is the last resort, so better slow than never).
    pub fn built_in_local() -> Self {
        Self {
            name: LOCAL_PROVIDER.to_owned(),
            kind: ProviderKind::Local,
            base_url: String::new(),
            credential: None,
            tier: Tier::Free,
            trust: Trust::Local,
            price: Some(Price::Named(PriceName::Free)),
            timeouts: Timeouts {
                first_token_ms: 60_000,
                total_ms: 300_000,
                ..Timeouts::default()
            },
            max_concurrency: 4,
            max_reply_bytes: default_max_reply_bytes(),
            models: HashMap::new(),
            model_file: None,
            threads: 0,
            context_tokens: default_context_tokens(),
        }
    }

    /// A local provider's model file, resolved against `model_directory`.
    pub fn model_path(&self, model_directory: &std::path::Path) -> PathBuf {
        let file = self
            .model_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SHIPPED_LOCAL_MODEL));
        model_directory.join(file)
    }

    /// A local provider's model name: its file's name without ".gguf".
    pub fn local_model_name(&self) -> String {
        let file = self
            .model_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SHIPPED_LOCAL_MODEL));
        file.file_stem().map_or_else(
            || "local".to_owned(),
            |stem| stem.to_string_lossy().into_owned(),
        )
    }
}

/// The protocols the router speaks to providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible HTTP: remote APIs, LM Studio, Ollama, llama.cpp server.
    OpenAi,
    /// A GGUF model run in the router's own process by llama.cpp, on the CPU.
    Local,
}

impl ProviderKind {
    /// The name used in configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Local => "local",
        }
    }
}

/// Cost tiers, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Costs nothing per token (local models).
    Free,
    /// Cheap hosted models.
    Cheap,
    /// Mid-priced hosted models.
    Standard,
    /// The most expensive models.
    Premium,
}

impl Tier {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Cheap => "cheap",
            Self::Standard => "standard",
            Self::Premium => "premium",
        }
    }
}

/// Trust levels, least trusted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// A third party's service.
    External,
    /// A service under contract or the operator's own infrastructure.
    Trusted,
    /// This machine.
    Local,
}

impl Trust {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::External => "external",
            Self::Trusted => "trusted",
            Self::Local => "local",
        }
    }
}

/// `price = { input_per_mtok = …, output_per_mtok = … }` or `price = "free"`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Price {
    /// US dollars per million tokens.
    PerMillionTokens {
        /// Per million input (prompt) tokens.
        input_per_mtok: f64,
        /// Per million output (completion) tokens.
        output_per_mtok: f64,
    },
    /// The word "free".
    Named(PriceName),
}

/// The only price that is a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriceName {
    /// Declared free: a local model.
    Free,
}

impl Price {
    /// Cost in US dollars of a request with these token counts.
    pub fn cost(self, input_tokens: u64, output_tokens: u64) -> f64 {
        match self {
            Self::PerMillionTokens {
                input_per_mtok,
                output_per_mtok,
            } => {
                // Token counts stay far below 2^52, so the conversions are exact.
                #[allow(clippy::cast_precision_loss)]
                let (input, output) = (input_tokens as f64, output_tokens as f64);
                (input * input_per_mtok + output * output_per_mtok) / 1_000_000.0
            }
            Self::Named(PriceName::Free) => 0.0,
        }
    }
}

/// Per-request timeouts of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Establishing the connection (TCP and TLS).
    pub connect_ms: u64,
    /// From sending the request to the first token (or, unstreamed, the response headers).
    pub first_token_ms: u64,
    /// Longest silence between two chunks of a streamed reply or body.
    pub idle_ms: u64,
    /// The whole request.
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 2_000,
            first_token_ms: 10_000,
            idle_ms: 30_000,
            total_ms: 120_000,
        }
    }
}

impl Timeouts {
    /// `connect_ms` as a duration.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// `first_token_ms` as a duration.
    pub fn first_token(&self) -> Duration {
        Duration::from_millis(self.first_token_ms)
    }
    /// `idle_ms` as a duration.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    /// `total_ms` as a duration.
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
}

/// A named, ordered fallback chain.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// What requests name, e.g. "default" (the OpenAI endpoint's `model`).
    pub name: String,
    /// Never fall back to a provider above this tier.
    #[serde(default = "default_max_tier")]
    pub max_tier: Tier,
    /// Never fall back to a provider below this trust level.
    #[serde(default = "default_min_trust")]
    pub min_trust: Trust,
    /// Retries of each entry after a failure that does not cool the provider, before the next.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First wait between retries; doubles each time, with jitter.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Daily limit in US dollars for all requests through this route.
    #[serde(default)]
    pub daily_budget_usd: Option<f64>,
    /// The entries, tried in order.
    #[serde(default)]
    pub chain: Vec<ChainEntryConfig>,
    /// The provider tried after the chain when it has not been tried already; "" for none.
    #[serde(default = "default_last_resort")]
    pub last_resort: String,
}

fn default_last_resort() -> String {
    LOCAL_PROVIDER.to_owned()
}

fn default_max_tier() -> Tier {
    Tier::Standard
}
fn default_min_trust() -> Trust {
    Trust::External
}
fn default_retries() -> u32 {
    1
}
fn default_backoff_ms() -> u64 {
    100
}

/// One link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntryConfig {
    /// A `[[provider]]` name.
    pub provider: String,
    /// The model to ask it for (mapped through the provider's `models`); a local provider
    /// runs its one model and needs none.
    #[serde(default)]
    pub model: String,
}

impl Config {
    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|provider| provider.name == name)
    }

    /// The configuration as the router runs it: the built-in local provider when none is
    /// called "local", a route "default" when none is, and each route's last resort appended
    /// to its chain when the chain does not name it already. Applying it twice changes nothing.
    #[must_use]
    pub fn with_built_ins(mut self) -> Self {
        if self.provider(LOCAL_PROVIDER).is_none() {
            self.providers.push(ProviderConfig::built_in_local());
        }
        if !self
            .routes
            .iter()
            .any(|route| route.name == crate::engine::DEFAULT_CHAT_ROUTE)
        {
            self.routes.push(RouteConfig {
                name: crate::engine::DEFAULT_CHAT_ROUTE.to_owned(),
                max_tier: default_max_tier(),
                min_trust: default_min_trust(),
                retries: default_retries(),
                backoff_ms: default_backoff_ms(),
                daily_budget_usd: None,
                chain: Vec::new(),
                last_resort: default_last_resort(),
            });
        }
        for route in &mut self.routes {
            if !route.last_resort.is_empty()
                && !route
                    .chain
                    .iter()
                    .any(|entry| entry.provider == route.last_resort)
            {
                route.chain.push(ChainEntryConfig {
                    provider: route.last_resort.clone(),
                    model: String::new(),
                });
            }
        }
        self
    }
}

impl Settings for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    const APPLIES_RELOADS: bool = true;

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !self.http.listen.is_empty() {
            match self.http.address() {
                None => problems.push(Problem::new(
                    "http.listen",
                    "must be an IP address and port such as 127.0.0.1:7311, or \"\" for off",
                )),
                // Keys travel in clear text over plain HTTP: only this machine may see them.
                Some(address) if !address.ip().is_loopback() => problems.push(Problem::new(
                    "http.listen",
                    "must be a loopback address (127.0.0.0/8 or ::1): keys travel in clear text",
                )),
                Some(_) => {}
            }
        }
        if self.http.max_body_bytes == 0 {
            problems.push(Problem::new("http.max_body_bytes", "must be positive"));
        }
        if self.http.failed_auth_per_second == 0 {
            problems.push(Problem::new(
                "http.failed_auth_per_second",
                "must be positive",
            ));
        }
        let breaker = &self.breaker;
        if !(breaker.error_ratio > 0.0 && breaker.error_ratio <= 1.0) {
            problems.push(Problem::new("breaker.error_ratio", "must be in (0, 1]"));
        }
        if breaker.window_ms == 0 || breaker.open_ms == 0 {
            problems.push(Problem::new(
                "breaker",
                "window_ms and open_ms must be positive",
            ));
        }
        for (principal, limit) in &self.budgets.principal_daily_usd {
            if !is_amount(*limit) {
                problems.push(Problem::new(
                    format!("budgets.principal_daily_usd.{principal}"),
                    "must be a non-negative number of dollars",
                ));
            }
        }
        if self
            .budgets
            .default_principal_daily_usd
            .is_some_and(|limit| !is_amount(limit))
        {
            problems.push(Problem::new(
                "budgets.default_principal_daily_usd",
                "must be a non-negative number of dollars",
            ));
        }
        // Routes are checked as the router runs them: with the built-in local provider and
        // each route's last resort.
        let effective = self.clone().with_built_ins();
        effective.provider_problems(&mut problems);
        effective.route_problems(&mut problems);
        problems
    }
}

fn is_amount(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

impl Config {
    fn provider_problems(&self, problems: &mut Vec<Problem>) {
        let mut names = HashSet::new();
        for (index, provider) in self.providers.iter().enumerate() {
            let key = |field: &str| format!("provider.{index}.{field}");
            if provider.name.trim().is_empty() {
                problems.push(Problem::new(key("name"), "must not be empty"));
            } else if !names.insert(provider.name.as_str()) {
                problems.push(Problem::new(
                    key("name"),
                    format!("provider {:?} is defined twice", provider.name),
                ));
            }
            match provider.kind {
                ProviderKind::OpenAi => {
                    if reqwest::Url::parse(&provider.base_url)
                        .ok()
                        .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                        .is_none()
                    {
                        problems.push(Problem::new(
                            key("base_url"),
                            "must be an http:// or https:// URL with a host",
                        ));
                    }
                    if provider.model_file.is_some() || provider.threads != 0 {
                        problems.push(Problem::new(
                            key("model_file"),
                            "model_file and threads are for kind = \"local\" only",
                        ));
                    }
                }
                ProviderKind::Local => local_provider_problems(provider, &key, problems),
            }
            match provider.price {
                None => problems.push(Problem::new(
                    key("price"),
                    format!(
                        "provider {:?} has no price: set {{ input_per_mtok = …, output_per_mtok = … }} \
                         in US dollars, or \"free\" for a local model (an unknown price is never $0)",
                        provider.name
                    ),
                )),
                Some(Price::PerMillionTokens {
                    input_per_mtok,
                    output_per_mtok,
                }) if !is_amount(input_per_mtok) || !is_amount(output_per_mtok) => {
                    problems.push(Problem::new(
                        key("price"),
                        "prices must be non-negative numbers of dollars per million tokens",
                    ));
                }
                Some(Price::Named(PriceName::Free)) if provider.tier != Tier::Free => {
                    problems.push(Problem::new(
                        key("price"),
                        "a free provider must have tier = \"free\"",
                    ));
                }
                _ => {}
            }
            let timeouts = provider.timeouts;
            if [
                timeouts.connect_ms,
                timeouts.first_token_ms,
                timeouts.idle_ms,
                timeouts.total_ms,
            ]
            .contains(&0)
            {
                problems.push(Problem::new(
                    key("timeouts"),
                    "every timeout must be positive",
                ));
            }
            if provider.max_reply_bytes < 1024 {
                problems.push(Problem::new(
                    key("max_reply_bytes"),
                    "must be at least 1024",
                ));
            }
            if provider.max_concurrency == 0 {
                problems.push(Problem::new(key("max_concurrency"), "must be positive"));
            }
            if let Some(credential) = &provider.credential
                && !is_credential_name(credential)
            {
                problems.push(Problem::new(
                    key("credential"),
                    "must be a name of letters, digits, '-' and '_' (a file name under \
                     $CREDENTIALS_DIRECTORY)",
                ));
            }
        }
    }

    fn route_problems(&self, problems: &mut Vec<Problem>) {
        let mut names = HashSet::new();
        for (index, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("route.{index}.{field}");
            if route.name.trim().is_empty() {
                problems.push(Problem::new(key("name"), "must not be empty"));
            } else if !names.insert(route.name.as_str()) {
                problems.push(Problem::new(
                    key("name"),
                    format!("route {:?} is defined twice", route.name),
                ));
            }
            if route.chain.is_empty() {
                problems.push(Problem::new(
                    key("chain"),
                    "must name at least one provider (or keep a last_resort)",
                ));
            }
            if route.retries > 10 {
                problems.push(Problem::new(key("retries"), "must be at most 10"));
            }
            if route
                .daily_budget_usd
                .is_some_and(|limit| !is_amount(limit))
            {
                problems.push(Problem::new(
                    key("daily_budget_usd"),
                    "must be a non-negative number of dollars",
                ));
            }
            for (position, entry) in route.chain.iter().enumerate() {
                let entry_key = format!("route.{index}.chain.{position}.provider");
                let Some(provider) = self.provider(&entry.provider) else {
                    problems.push(Problem::new(
                        entry_key,
                        format!("no provider is called {:?}", entry.provider),
                    ));
                    continue;
                };
                if provider.tier > route.max_tier {
                    problems.push(Problem::new(
                        entry_key,
                        format!(
                            "provider {:?} is tier {}, above the route's max_tier {}",
                            provider.name,
                            provider.tier.as_str(),
                            route.max_tier.as_str()
                        ),
                    ));
                } else if provider.trust < route.min_trust {
                    problems.push(Problem::new(
                        entry_key,
                        format!(
                            "provider {:?} is trust {}, below the route's min_trust {}",
                            provider.name,
                            provider.trust.as_str(),
                            route.min_trust.as_str()
                        ),
                    ));
                }
                if entry.model.trim().is_empty() && provider.kind != ProviderKind::Local {
                    problems.push(Problem::new(
                        format!("route.{index}.chain.{position}.model"),
                        "must not be empty",
                    ));
                }
            }
        }
    }
}

/// What a local provider must be: in-process, so free, trusted and without a URL or credential.
fn local_provider_problems(
    provider: &ProviderConfig,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) {
    if !provider.base_url.is_empty() || provider.credential.is_some() {
        problems.push(Problem::new(
            key("base_url"),
            "a local provider runs in the router's process: no base_url and no credential",
        ));
    }
    if provider.tier != Tier::Free
        || provider.trust != Trust::Local
        || provider.price != Some(Price::Named(PriceName::Free))
    {
        problems.push(Problem::new(
            key("tier"),
            "a local provider is tier = \"free\", trust = \"local\", price = \"free\"",
        ));
    }
    if let Some(file) = &provider.model_file
        && (file.as_os_str().is_empty()
            || file.extension().is_none_or(|extension| extension != "gguf"))
    {
        problems.push(Problem::new(
            key("model_file"),
            "must name a .gguf file (relative paths are under $SYNOS_MODEL_DIR)",
        ));
    }
    if !(256..=131_072).contains(&provider.context_tokens) {
        problems.push(Problem::new(
            key("context_tokens"),
            "must be from 256 to 131072",
        ));
    }
    if provider.threads > 1024 {
        problems.push(Problem::new(
            key("threads"),
            "must be at most 1024 (0: automatic)",
        ));
    }
}

/// Credential names become file names and environment variable names.
pub(crate) fn is_credential_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '-' | '_'))
}
