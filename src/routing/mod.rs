//! The pure core: labs and their capacity, the waiting queue, the routing policy, and the state
//! machine that applies every command at a given time. No I/O, no tonic: deterministic, so the
//! journal can replay it and the simulator and property tests can drive it.

mod core;
mod event;
mod fasthash;
mod labs;
mod policy;
mod queue;
mod sharded;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod proptests;

pub use core::{
    Command, Leases, Outcome, Reply, Router, SnapshotState, State, TimerKind, human_duration,
};
pub use event::{Event, EventKind, JobEventKind, TrustEventKind};
pub use fasthash::{FastHash, FastHasher, FastMap};
pub use labs::{LabConfig, LabState, Labs, Slot};
pub use policy::{DefaultPolicy, Placement, RouteQuery, RoutingPolicy};
pub use queue::{GroupKey, QueueKey, WaitQueue};
pub use sharded::{ShardEntry, ShardedMap, VacantShardEntry};
