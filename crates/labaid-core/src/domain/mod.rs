//! Domain types that cannot hold invalid values, and the rules that build them from raw input.
//!
//! Everything here is pure: no I/O, no tonic, time passed in as a [`Timestamp`].

mod catalogue;
mod ids;
mod inline;
mod nhs;
mod observation;
mod request;
mod submission;
mod text;
mod time;
mod violations;

pub use catalogue::{Catalogue, TestCode, TestDef};
pub use ids::{OdsCode, OrderNumber, RequestId};
pub use nhs::NhsNumber;
pub use observation::{Observation, ObservationFlag, RawObservation};
pub use request::{Exclusion, ExclusionReason, FailureReason, LabStatus, Request, RequestState};
pub use submission::{MAX_NOTE_CHARS, NewRequest, Patient, Priority, RawSubmission, TestSet};
pub use text::BoundedText;
pub use time::{Clock, MINUTE_MS, Sleep, Timestamp};
pub use violations::{FieldViolation, Violations};
