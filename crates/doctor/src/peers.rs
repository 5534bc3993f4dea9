//! Calls from the doctor to the other daemons: one gRPC call over a fresh connection within a
//! timeout, and such a call repeated every interval with its answers turned into observations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::incidents::Observation;

/// Why a call to another daemon has no answer.
#[derive(Debug)]
pub(crate) enum AskError {
    /// The daemon could not be reached, did not answer in time, or said it is unavailable.
    Unreachable(String),
    /// It answered with another error.
    Refused(tonic::Status),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(problem) => formatter.write_str(problem),
            Self::Refused(status) => formatter.write_str(status.message()),
        }
    }
}

/// `call`'s answer over a new connection to `socket`, both within `timeout`; or why there is
/// none (its `Display` is one line).
pub(crate) async fn ask<Answer, Call>(
    socket: &Path,
    timeout: Duration,
    call: impl FnOnce(Channel) -> Call,
) -> Result<Answer, AskError>
where
    Call: Future<Output = Result<tonic::Response<Answer>, tonic::Status>>,
{
    let channel = synos_common::client::connect(socket, timeout)
        .await
        .map_err(|error| AskError::Unreachable(error.to_string()))?;
    match tokio::time::timeout(timeout, call(channel)).await {
        Err(_) => Err(AskError::Unreachable(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            Err(AskError::Unreachable(status.message().to_owned()))
        }
        Ok(Err(status)) => Err(AskError::Refused(status)),
        Ok(Ok(answer)) => Ok(answer.into_inner()),
    }
}

/// Asks the daemon at `socket` with `call` every `interval` until `shutdown`, and sends what
/// `observe` makes of each answer. While the daemon cannot be reached nothing is observed: its
/// own daemon check says so.
pub(crate) async fn poll<Answer, Call>(
    socket: PathBuf,
    interval: Duration,
    timeout: Duration,
    observations: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
    mut call: impl FnMut(Channel) -> Call,
    mut observe: impl FnMut(Answer) -> Vec<Observation>,
) where
    Call: Future<Output = Result<tonic::Response<Answer>, tonic::Status>>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(answer) = ask(&socket, timeout, &mut call).await else {
            continue;
        };
        for observation in observe(answer) {
            if observations.send(observation).await.is_err() {
                return;
            }
        }
    }
}
