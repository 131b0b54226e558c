//! Events: what the core tells trusts and labs, each numbered per organisation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{OdsCode, Request, Timestamp};

/// What happened, from a trust's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustEventKind {
    /// The request changed state.
    StateChanged,
    /// Results were posted.
    Resulted,
    /// A result is critical.
    CriticalResult,
    /// No lab can finish before the deadline.
    Expired,
    /// The accepting lab went offline before the sample arrived.
    LabOffline,
    /// The lab could not use the sample.
    Failed,
}

/// What happened, from a lab's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEventKind {
    /// A new offer.
    Offered,
    /// Accepted by this lab.
    Accepted,
    /// Declined by this lab.
    Declined,
    /// The lease ran out.
    LeaseExpired,
    /// Withdrawn: cancelled, expired or the lab went offline.
    Withdrawn,
    /// An accepted job was cancelled.
    Cancelled,
    /// Sample arrived.
    Received,
    /// Results posted.
    Resulted,
    /// Job failed.
    Failed,
}

/// An event for a trust or for a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// For the requesting trust.
    Trust(TrustEventKind),
    /// For a lab.
    Lab(JobEventKind),
}

/// One event, numbered in its organisation's sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The organisation it is for.
    pub org: OdsCode,
    /// Its number in that organisation's sequence, from 1.
    pub sequence: u64,
    /// When it happened.
    pub time: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// The request right after the event.
    pub request: Arc<Request>,
}
