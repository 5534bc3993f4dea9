//! The router's configuration: the common sections plus `[[provider]]` entries.

use std::collections::HashSet;

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
    /// The providers, in the order they are listed (`[[provider]]`).
    #[serde(rename = "provider")]
    pub providers: Vec<ProviderConfig>,
}

/// One LLM provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name that routes refer to.
    pub name: String,
    /// The protocol it speaks.
    pub kind: ProviderKind,
    /// Base URL of its API, e.g. "http://127.0.0.1:11434/v1".
    pub base_url: String,
}

/// The protocols the router speaks to providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible HTTP: remote APIs, LM Studio, Ollama, llama.cpp server.
    OpenAi,
}

impl ProviderKind {
    /// The name used in configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
        }
    }
}

impl Settings for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
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
            let url = provider.base_url.as_str();
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
                problems.push(Problem::new(
                    key("base_url"),
                    "must be an http:// or https:// URL with a host",
                ));
            }
        }
        problems
    }
}
