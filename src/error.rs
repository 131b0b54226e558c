//! The library's one error type, and its one mapping to a gRPC status.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Violations;
use crate::routing::Rejection;

/// Everything that can go wrong in a call, by the answer the caller gets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input; every bad field is named.
    #[error("invalid argument: {0}")]
    InvalidArgument(Violations),
    /// Unknown id, or one of another organisation.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Lost a race with another caller.
    #[error("{0}")]
    Aborted(String),
    /// The same key with different content.
    #[error("{0}")]
    AlreadyExists(String),
    /// A rate limit or quota.
    #[error("{0}")]
    ResourceExhausted(String),
    /// No or bad credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The broker is starting, draining or stopping.
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside the broker; the cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An INVALID_ARGUMENT naming one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(Violations::one(field, description))
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Invalid(v) => Self::InvalidArgument(v),
            Rejection::NotFound(m) => Self::NotFound(m),
            Rejection::WrongState(m) => Self::FailedPrecondition(m),
            Rejection::LostRace(m) => Self::Aborted(m),
            Rejection::Conflict(m) => Self::AlreadyExists(m),
            Rejection::NotPermitted(m) => Self::PermissionDenied(m),
            Rejection::Inconsistent(m) => Self::Internal(m),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations.0 {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid argument: {violations}"),
                    details,
                )
            }
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Internal(cause) => {
                tracing::error!(error.cause = %cause, "internal error");
                Status::internal("internal error; the broker logged the cause")
            }
        }
    }
}
