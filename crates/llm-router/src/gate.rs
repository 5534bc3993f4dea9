//! The router's policy gate: every prompt is screened by synos-policy before any provider is
//! called, on both front ends, whole and streamed. A blocked prompt is refused; when policy
//! cannot be reached the configured stance applies (refuse by default).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{ScreenInputRequest, Verdict};
use tonic::transport::Channel;

use crate::config::{GateMode, PolicyGateConfig, Unreachable};
use crate::engine::{ChatCall, RouteError};

/// How long the gate waits for policy to accept a connection or answer.
const POLICY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the gate did with one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Screening {
    /// Screened and allowed (or only flagged).
    Passed,
    /// Not screened: the gate is off, or "auto" found no policy socket.
    Off,
    /// Not screened: policy was unreachable and the stance is "allow".
    Unscreened(String),
}

/// The gate, with its connection to policy (made on first use, remade after a failure).
#[derive(Debug)]
pub(crate) struct Gate {
    config: PolicyGateConfig,
    socket: PathBuf,
    channel: Mutex<Option<Channel>>,
    /// Why the last screening could not reach policy; cleared by the next that does.
    unreachable: Mutex<Option<String>>,
}

impl Gate {
    /// A gate for `config`; `default_socket` is policy's socket in the runtime directory.
    pub(crate) fn new(config: PolicyGateConfig, default_socket: PathBuf) -> Self {
        let socket = config.socket.clone().unwrap_or(default_socket);
        Self {
            config,
            socket,
            channel: Mutex::new(None),
            unreachable: Mutex::new(None),
        }
    }

    /// Whether this gate has the same settings, so it can be kept across a reload.
    pub(crate) fn same_as(&self, config: &PolicyGateConfig) -> bool {
        &self.config == config
    }

    /// "on", "off", "auto (on: …)" for the status line.
    pub(crate) fn describe(&self) -> String {
        let stance = match self.config.when_unreachable {
            Unreachable::Refuse => "fail closed",
            Unreachable::Allow => "fail open",
        };
        if !self.active() {
            return match self.config.gate {
                GateMode::Auto => format!(
                    "policy gate off (no policy socket at {})",
                    self.socket.display()
                ),
                _ => "policy gate off".to_owned(),
            };
        }
        match self
            .unreachable
            .lock()
            .ok()
            .and_then(|problem| problem.clone())
        {
            Some(problem) => format!("policy gate on ({stance}), DEGRADED: {problem}"),
            None => format!("policy gate on ({stance})"),
        }
    }

    fn active(&self) -> bool {
        match self.config.gate {
            GateMode::Off => false,
            GateMode::On => true,
            GateMode::Auto => self.socket.exists(),
        }
    }

    async fn client(&self) -> Result<PolicyClient<Channel>, String> {
        let cached = self
            .channel
            .lock()
            .map_err(|_| "the gate's connection is broken".to_owned())?
            .clone();
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let channel = synos_common::client::connect(&self.socket, POLICY_TIMEOUT)
                    .await
                    .map_err(|error| error.to_string())?;
                if let Ok(mut slot) = self.channel.lock() {
                    *slot = Some(channel.clone());
                }
                channel
            }
        };
        Ok(PolicyClient::new(channel))
    }

    fn forget_connection(&self) {
        if let Ok(mut slot) = self.channel.lock() {
            *slot = None;
        }
    }

    /// Screens the prompt of `call`: every message's text, in order.
    pub(crate) async fn screen(&self, call: &ChatCall) -> Result<Screening, RouteError> {
        if !self.active() {
            return Ok(Screening::Off);
        }
        let text = prompt_text(call);
        let answer = match self.client().await {
            Err(problem) => Err(problem),
            Ok(mut client) => tokio::time::timeout(
                POLICY_TIMEOUT,
                client.screen_input(ScreenInputRequest {
                    text,
                    principal: call.principal.clone(),
                }),
            )
            .await
            .map_err(|_| format!("no answer within {} s", POLICY_TIMEOUT.as_secs()))
            .and_then(|answer| answer.map_err(|status| status.message().to_owned())),
        };
        if let Ok(mut unreachable) = self.unreachable.lock() {
            *unreachable = answer
                .as_ref()
                .err()
                .map(|problem| format!("synos-policy at {}: {problem}", self.socket.display()));
        }
        match answer {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.verdict() == Verdict::Block {
                    let rules: Vec<String> =
                        reply.rules.iter().map(|rule| rule.id.clone()).collect();
                    tracing::warn!(route = %call.route, principal = %call.principal, score = reply.score, rules = %rules.join(","), "prompt blocked by policy");
                    return Err(RouteError::Blocked {
                        message: format!(
                            "the prompt was blocked by policy (score {:.2}; rules {})",
                            reply.score,
                            rules.join(", ")
                        ),
                        rules,
                    });
                }
                Ok(Screening::Passed)
            }
            Err(problem) => {
                self.forget_connection();
                let problem = format!("synos-policy at {}: {problem}", self.socket.display());
                match self.config.when_unreachable {
                    Unreachable::Refuse => Err(RouteError::PolicyUnavailable(format!(
                        "cannot screen the prompt, so it is refused: {problem}"
                    ))),
                    Unreachable::Allow => {
                        tracing::warn!(route = %call.route, principal = %call.principal, %problem, "prompt not screened: policy unreachable and when_unreachable = \"allow\"");
                        Ok(Screening::Unscreened(problem))
                    }
                }
            }
        }
    }
}

/// The text of every message, in order, one per paragraph.
fn prompt_text(call: &ChatCall) -> String {
    call.fields
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .filter_map(|message| match message.get("content") {
                    Some(Value::String(text)) => Some(text.clone()),
                    Some(Value::Array(parts)) => Some(
                        parts
                            .iter()
                            .filter_map(|part| part.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n\n")
        })
        .unwrap_or_default()
}
