//! The pure core: labs and their capacity, the waiting queue, the routing policy, and the state
//! machine that applies every command at a given time. No I/O, no tonic: deterministic, so the
//! journal can replay it and the simulator and property tests can drive it.
//!
//! Its tables hash with rustc-hash's Fx: their keys are ids the broker or the directory chose
//! (request ids, ODS codes, catalogue test codes), never free text a client picked, so std's
//! flood-resistant SipHash buys nothing here and costs a large share of routing a request.

mod bulk;
mod core;
mod event;
mod labs;
mod policy;
mod queue;
mod rejection;
mod sharded;

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
#[cfg(test)]
mod proptests;

pub use core::{
    Command, Leases, Outcome, Reply, Router, SnapshotState, State, TimerKind, human_duration,
};
pub use event::{Event, EventKind, JobEventKind, TrustEventKind};
pub use labs::{LabConfig, LabState, Labs, Slot};
pub use policy::{DefaultPolicy, Placement, RouteQuery, RoutingPolicy};
pub use queue::{GroupKey, QueueKey, WaitQueue};
pub use rejection::Rejection;
pub use sharded::{ShardEntry, ShardedMap, VacantShardEntry};
