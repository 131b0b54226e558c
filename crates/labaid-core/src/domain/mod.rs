//! Domain types that cannot hold invalid values, and the rules that build them from raw input.
//!
//! Everything here is pure: no I/O, no tonic, time passed in as a [`Timestamp`].

mod catalogue;
mod ids;
mod inline;
mod nhs;
mod request;
mod time;
mod violations;

pub use catalogue::{Catalogue, TestCode, TestDef};
pub use ids::{OdsCode, OrderNumber, RequestId};
pub use nhs::NhsNumber;
pub use request::{
    BoundedText, Exclusion, ExclusionReason, FailureReason, LabStatus, MAX_NOTE_CHARS, NewRequest,
    Observation, ObservationFlag, Patient, Priority, RawObservation, RawSubmission, Request,
    RequestState, TestSet,
};
pub use time::{Clock, MINUTE_MS, Sleep, Timestamp};
pub use violations::{FieldViolation, Violations};
