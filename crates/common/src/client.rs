//! Connecting to a daemon's Unix socket, with errors a person can act on.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a daemon could not be reached. Display is the part after "synos-<name>: ".
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing at the path: the daemon is not running (or uses another runtime directory).
    #[error("not running (no socket at {})", .0.display())]
    NoSocket(PathBuf),
    /// A socket file, but no process listening: the daemon stopped or crashed.
    #[error("not running (nothing listens on {})", .0.display())]
    Refused(PathBuf),
    /// The socket exists but this user may not use it.
    #[error("permission denied on {} (is this user in group synos?)", .0.display())]
    PermissionDenied(PathBuf),
    /// The daemon did not accept within the timeout.
    #[error("no answer on {} within {:?}", .0.display(), .1)]
    TimedOut(PathBuf, Duration),
    /// Anything else.
    #[error("cannot connect to {}: {}", .0.display(), .1)]
    Other(PathBuf, String),
}

/// Opens a gRPC channel to the daemon listening on `socket`.
///
/// The first connection is made here, so a missing or dead daemon is reported precisely; the
/// channel reconnects to the same path if that connection later drops.
pub async fn connect(socket: &Path, timeout: Duration) -> Result<Channel, ConnectError> {
    let path = socket.to_path_buf();
    let first = match tokio::time::timeout(timeout, UnixStream::connect(&path)).await {
        Err(_) => return Err(ConnectError::TimedOut(path, timeout)),
        Ok(Err(error)) => return Err(classify(path, &error)),
        Ok(Ok(stream)) => stream,
    };
    let first = Arc::new(Mutex::new(Some(first)));
    let connector_path = path.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let first = first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let path = connector_path.clone();
        async move {
            let stream = match first {
                Some(stream) => stream,
                None => UnixStream::connect(&path).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by the HTTP/2 layer but never resolved: the connector ignores it.
    Endpoint::from_static("http://synos.localhost")
        .connect_timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(|error| ConnectError::Other(path, error.to_string()))
}

fn classify(path: PathBuf, error: &io::Error) -> ConnectError {
    match error.kind() {
        io::ErrorKind::NotFound => ConnectError::NoSocket(path),
        io::ErrorKind::ConnectionRefused => ConnectError::Refused(path),
        io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied(path),
        _ => ConnectError::Other(path, error.to_string()),
    }
}

/// Asks a daemon's `grpc.health.v1.Health/Check` about `service` ("" for the whole daemon).
pub async fn health_status(
    channel: Channel,
    service: &str,
    timeout: Duration,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = tokio::time::timeout(timeout, client.check(request))
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded(format!("no health answer within {timeout:?}"))
        })??;
    Ok(response.into_inner().status())
}
