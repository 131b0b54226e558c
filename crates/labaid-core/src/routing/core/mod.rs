//! The state machine: every command applied at a given time, deterministically. This file holds
//! the [`Router`] and its [`State`], the accessors and the one `apply` that hands each command to
//! its handler; the rest lives beside it, one seam to a file (see the module list).
//!
//! A rejected command changes nothing: each handler checks everything before its first mutation.

mod command;
mod directory;
mod dispatch;
mod jobs;
mod record;
mod requests;
mod snapshot;
mod timers;

pub use command::{Command, Leases, Outcome, Reply, TimerKind};
pub use record::human_duration;
pub use snapshot::SnapshotState;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::domain::{Catalogue, OdsCode, OrderNumber, Request, RequestId, Timestamp};
use crate::routing::labs::{LabConfig, Labs};
use crate::routing::policy::{DefaultPolicy, RoutingPolicy};
use crate::routing::queue::WaitQueue;
use crate::routing::rejection::Rejection;
use crate::routing::sharded::ShardedMap;

/// Everything the core knows; serialisable for snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    catalogue: Arc<Catalogue>,
    leases: Leases,
    retention_ms: i64,
    trusts: BTreeMap<OdsCode, String>,
    labs: Labs,
    // Fast hash: the broker picks request ids. Order numbers are the client's, so SipHash.
    // Sharded, so that neither grows by rehashing every live request inside one decision.
    #[serde(deserialize_with = "crate::routing::bulk::presized_map")]
    requests: ShardedMap<RequestId, Arc<Request>>,
    #[serde(deserialize_with = "crate::routing::bulk::presized_map")]
    orders: ShardedMap<(OdsCode, OrderNumber), RequestId, RandomState>,
    queue: WaitQueue,
    #[serde(deserialize_with = "crate::routing::bulk::packed_set")]
    timers: BTreeSet<(Timestamp, TimerKind, RequestId)>,
    sequences: FxHashMap<OdsCode, u64>,
    next_ordinal: u64,
    offers_made: u64,
}

/// The core: state plus the routing policy.
#[derive(Debug)]
pub struct Router {
    state: State,
    policy: Arc<dyn RoutingPolicy>,
}

impl Router {
    /// A core with the given directory and no requests.
    pub fn new(
        catalogue: Arc<Catalogue>,
        trusts: BTreeMap<OdsCode, String>,
        labs: Vec<LabConfig>,
        leases: Leases,
        retention_ms: i64,
    ) -> Self {
        Self::with_policy(
            catalogue,
            trusts,
            labs,
            leases,
            retention_ms,
            Arc::new(DefaultPolicy),
        )
    }

    /// A core with another routing policy.
    pub fn with_policy(
        catalogue: Arc<Catalogue>,
        trusts: BTreeMap<OdsCode, String>,
        labs: Vec<LabConfig>,
        leases: Leases,
        retention_ms: i64,
        policy: Arc<dyn RoutingPolicy>,
    ) -> Self {
        Self {
            state: State {
                catalogue,
                leases,
                retention_ms,
                trusts,
                labs: Labs::new(labs),
                requests: ShardedMap::default(),
                orders: ShardedMap::default(),
                queue: WaitQueue::default(),
                timers: BTreeSet::new(),
                sequences: FxHashMap::default(),
                next_ordinal: 1,
                offers_made: 0,
            },
            policy,
        }
    }

    /// Rebuilds a core from a snapshot.
    pub fn from_state(state: State, policy: Arc<dyn RoutingPolicy>) -> Self {
        Self { state, policy }
    }

    /// Brings the core forward by an incremental snapshot (see [`State::apply_delta`]).
    pub fn apply_delta(
        &mut self,
        head: State,
        changed: impl IntoIterator<Item = (RequestId, Option<Arc<Request>>)>,
    ) {
        self.state.apply_delta(head, changed);
    }

    /// The state, for a snapshot.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &Arc<Catalogue> {
        &self.state.catalogue
    }

    /// The trusts of the directory.
    pub fn trusts(&self) -> &BTreeMap<OdsCode, String> {
        &self.state.trusts
    }

    /// The labs.
    pub fn labs(&self) -> &Labs {
        &self.state.labs
    }

    /// The waiting queue.
    pub fn queue(&self) -> &WaitQueue {
        &self.state.queue
    }

    /// One request.
    pub fn request(&self, id: &RequestId) -> Option<&Arc<Request>> {
        self.state.requests.get(id)
    }

    /// Every request, in no particular order.
    pub fn requests(&self) -> impl Iterator<Item = &Arc<Request>> {
        self.state.requests.values()
    }

    /// Number of requests held (live and retained).
    pub fn request_count(&self) -> usize {
        self.state.requests.len()
    }

    /// The last sequence number given to each organisation.
    pub fn sequences(&self) -> &FxHashMap<OdsCode, u64> {
        &self.state.sequences
    }

    /// When the next timer is due.
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.state.timers.first().map(|(t, _, _)| *t)
    }

    /// Applies one command at `now`. On error nothing changed.
    pub fn apply(
        &mut self,
        cmd: &Command,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        match cmd {
            Command::Submit { trust, id, request } => self.submit(trust, *id, request, now, out),
            Command::Cancel { trust, id, reason } => self.cancel(trust, id, reason, now, out),
            Command::Accept { lab, id } => self.accept(lab, id, now, out),
            Command::Decline { lab, id, reason } => self.decline(lab, id, reason, now, out),
            Command::Receive { lab, id } => self.receive(lab, id, now, out),
            Command::PostResults {
                lab,
                id,
                observations,
            } => self.post_results(lab, id, observations, now, out),
            Command::Fail {
                lab,
                id,
                reason,
                detail,
            } => self.fail(lab, id, *reason, detail, now, out),
            Command::SetCapacity {
                lab,
                test,
                capacity,
            } => self.set_capacity(lab, test, *capacity, now, out),
            Command::SetStatus { lab, status } => self.set_status(lab, *status, now, out),
            Command::Reassign { id, reason } => self.reassign(id, reason, now, out),
            Command::Tick => {
                self.tick(now, out);
                Ok(Reply::Ticked)
            }
        }
    }
}
