//! Why the core refuses a command, by what went wrong in the domain; the server maps each kind to
//! its wire answer in one place.

use crate::domain::Violations;

/// A command the core would not apply. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The input breaks a domain rule; every bad field is named.
    #[error("invalid argument: {0}")]
    Invalid(Violations),
    /// No such id for this organisation (an id of another organisation reads the same).
    #[error("{0}")]
    NotFound(String),
    /// The request or job is not in a state that allows this.
    #[error("{0}")]
    WrongState(String),
    /// Another caller changed the same thing first.
    #[error("{0}")]
    LostRace(String),
    /// The same order number was used for a different request.
    #[error("{0}")]
    Conflict(String),
    /// The organisation may not do this (not a lab, not the owner).
    #[error("{0}")]
    NotPermitted(String),
    /// The core's own state broke an invariant: a bug, logged by the server and never sent.
    #[error("internal inconsistency: {0}")]
    Inconsistent(String),
}

impl Rejection {
    /// An invalid input naming one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(Violations::one(field, description))
    }
}
