//! The core's vocabulary: the commands it applies, the replies and outcomes they produce, the
//! offer leases per priority and the kinds of timer.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{
    BoundedText, FailureReason, LabStatus, MINUTE_MS, NewRequest, Observation, OdsCode, Priority,
    Request, RequestId, TestCode,
};
use crate::routing::event::Event;
use crate::routing::labs::LabState;

/// Offer lease per priority, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    /// STAT lease.
    pub stat_ms: i64,
    /// ASAP lease.
    pub asap_ms: i64,
    /// URGENT lease.
    pub urgent_ms: i64,
    /// ROUTINE lease.
    pub routine_ms: i64,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            stat_ms: 2 * MINUTE_MS,
            asap_ms: 5 * MINUTE_MS,
            urgent_ms: 10 * MINUTE_MS,
            routine_ms: 30 * MINUTE_MS,
        }
    }
}

impl Leases {
    /// The lease for a priority.
    pub fn for_priority(&self, p: Priority) -> i64 {
        match p {
            Priority::Stat => self.stat_ms,
            Priority::Asap => self.asap_ms,
            Priority::Urgent => self.urgent_ms,
            Priority::Routine => self.routine_ms,
        }
    }
}

/// A change asked of the core. Commands are journaled and replayed, so they carry validated data
/// and ids chosen at the edge, never anything the core would have to invent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A trust submits a request.
    Submit {
        /// The trust.
        trust: OdsCode,
        /// Id for the request if it is new.
        id: RequestId,
        /// The validated submission.
        request: NewRequest,
    },
    /// A trust cancels a request.
    Cancel {
        /// The trust.
        trust: OdsCode,
        /// The request.
        id: RequestId,
        /// Why.
        reason: BoundedText,
    },
    /// A lab accepts an offer.
    Accept {
        /// The lab.
        lab: OdsCode,
        /// The job.
        id: RequestId,
    },
    /// A lab declines an offer.
    Decline {
        /// The lab.
        lab: OdsCode,
        /// The job.
        id: RequestId,
        /// Why.
        reason: BoundedText,
    },
    /// A lab records a sample's arrival.
    Receive {
        /// The lab.
        lab: OdsCode,
        /// The job.
        id: RequestId,
    },
    /// A lab posts results.
    PostResults {
        /// The lab.
        lab: OdsCode,
        /// The job.
        id: RequestId,
        /// Validated observations.
        observations: Vec<Observation>,
    },
    /// A lab fails a job.
    Fail {
        /// The lab.
        lab: OdsCode,
        /// The job.
        id: RequestId,
        /// Why.
        reason: FailureReason,
        /// More detail.
        detail: BoundedText,
    },
    /// A lab sets its capacity for a test.
    SetCapacity {
        /// The lab.
        lab: OdsCode,
        /// The test.
        test: TestCode,
        /// The new capacity.
        capacity: u32,
    },
    /// A lab sets its status.
    SetStatus {
        /// The lab.
        lab: OdsCode,
        /// The new status.
        status: LabStatus,
    },
    /// Time passed: fire every timer that is due.
    Tick,
    // New commands go last: the journal encodes the variant's position.
    /// A coordinator returns an accepted job whose sample has not arrived to the queue.
    Reassign {
        /// The job.
        id: RequestId,
        /// Why.
        reason: BoundedText,
    },
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A request (or job) after the command.
    Request {
        /// The request.
        request: Arc<Request>,
        /// True when an idempotent resubmission returned the original.
        replayed: bool,
    },
    /// A declined job's id.
    Declined(RequestId),
    /// A lab after a capacity change (its `open` jobs left out: the reply is about capacity).
    Capacity(LabState),
    /// A lab after a status change.
    Status {
        /// The status now.
        status: LabStatus,
        /// Offers withdrawn by the change.
        withdrawn: u32,
    },
    /// Timers fired.
    Ticked,
}

/// What applying commands changed, for the journal, the read views and the watchers.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events, in order.
    pub events: Vec<Event>,
    /// Requests changed or created (may repeat; the last snapshot wins).
    pub requests: Vec<RequestId>,
    /// Requests purged after their retention.
    pub purged: Vec<RequestId>,
    /// Labs whose capacity, work in flight or status changed.
    pub labs: Vec<OdsCode>,
    /// True when any state changed (so the command must be journaled).
    pub changed: bool,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimerKind {
    /// An offer's lease runs out.
    Lease,
    /// The sample can no longer be finished in time anywhere.
    Expiry,
    /// A finished request's retention ends.
    Purge,
}
