//! The one mapping from domain errors to `tonic::Status`, so every daemon answers alike.

use tonic::{Code, Status};

/// What went wrong, in the terms a gRPC client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed; retrying it unchanged cannot succeed.
    InvalidArgument,
    /// What the request names does not exist.
    NotFound,
    /// What the request would create exists already.
    AlreadyExists,
    /// The caller is known but not allowed.
    PermissionDenied,
    /// The caller could not be identified.
    Unauthenticated,
    /// A quota, budget, rate limit or size limit is exhausted.
    ResourceExhausted,
    /// The system is not in a state where this can be done (e.g. disk full, read-only).
    FailedPrecondition,
    /// A dependency (peer daemon, provider) is down; retrying later may succeed.
    Unavailable,
    /// A deadline passed before the work finished.
    DeadlineExceeded,
    /// The daemon does not implement this.
    Unimplemented,
    /// A bug or an unexpected failure inside the daemon.
    Internal,
}

impl ErrorKind {
    /// The gRPC code for this kind.
    pub fn code(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::ResourceExhausted => Code::ResourceExhausted,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::Unavailable => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Unimplemented => Code::Unimplemented,
            Self::Internal => Code::Internal,
        }
    }
}

/// An error a service returns to its caller. Domain error types convert into this (with
/// `From`), choosing the kind; the message must be safe to show: no secrets, no user content
/// that policy would redact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    kind: ErrorKind,
    message: String,
}

impl ServiceError {
    /// An error of any kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A malformed request; the message says which field and why.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// An unexpected failure. The detail goes to the log only; the caller learns what failed,
    /// not why, since the detail may hold paths or content it must not see.
    pub fn internal(what_failed: &str, detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "{what_failed}");
        Self::new(
            ErrorKind::Internal,
            format!("internal error: {what_failed} (details in the daemon's log)"),
        )
    }

    /// The kind, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        Status::new(error.kind.code(), error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_own_code() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::PermissionDenied,
            ErrorKind::Unauthenticated,
            ErrorKind::ResourceExhausted,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unavailable,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Unimplemented,
            ErrorKind::Internal,
        ];
        let codes: std::collections::HashSet<_> = kinds.iter().map(|kind| kind.code()).collect();
        assert_eq!(codes.len(), kinds.len(), "two kinds share a gRPC code");
        assert!(!codes.contains(&Code::Ok) && !codes.contains(&Code::Unknown));
    }

    #[test]
    fn status_carries_code_and_message() {
        let status = Status::from(ServiceError::invalid_argument(
            "principal: expected Type::\"id\"",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "principal: expected Type::\"id\"");
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let status = Status::from(ServiceError::internal(
            "reading the store",
            &"/secret/path: EIO",
        ));
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("/secret/path"),
            "{}",
            status.message()
        );
    }
}
