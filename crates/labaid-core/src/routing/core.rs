//! The state machine: every command applied at a given time, deterministically.
//!
//! A rejected command changes nothing: each handler checks everything before its first mutation.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rejection::Rejection;
use crate::domain::{
    BoundedText, Catalogue, Exclusion, ExclusionReason, FailureReason, LabStatus, MINUTE_MS,
    NewRequest, Observation, OdsCode, OrderNumber, Priority, Request, RequestId, RequestState,
    TestCode, TestSet, Timestamp, Violations,
};

use super::event::{Event, EventKind, JobEventKind, TrustEventKind};
use super::labs::{LabConfig, LabState, Labs};
use super::policy::{DefaultPolicy, Placement, RouteQuery, RoutingPolicy};
use super::queue::{GroupKey, QueueKey, WaitQueue};
use super::sharded::{ShardEntry, ShardedMap};
use rustc_hash::FxHashMap;

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

impl State {
    /// The requests, for the store: a snapshot writes them apart from the rest of the state,
    /// in chunks that decode in parallel, and fills them back in before the core is rebuilt.
    pub fn requests_mut(&mut self) -> &mut ShardedMap<RequestId, Arc<Request>> {
        &mut self.requests
    }

    /// A copy for a snapshot, without the indexes that the requests determine. Deciding waits
    /// while a snapshot copies the state, and at a million live requests those indexes are three
    /// quarters of the copy; the snapshot writer rebuilds them on its own thread.
    pub fn lean_copy(&self) -> SnapshotState {
        let mut state = self.head_copy();
        state.requests = self.requests.clone();
        SnapshotState {
            state,
            indexed: false,
        }
    }

    /// A copy of everything but the requests and their indexes: what an incremental snapshot
    /// holds beside the requests changed since the one before. It costs the same at any number
    /// of live requests.
    pub fn head_copy(&self) -> State {
        State {
            catalogue: self.catalogue.clone(),
            leases: self.leases,
            retention_ms: self.retention_ms,
            trusts: self.trusts.clone(),
            labs: self.labs.copy_without_open(),
            requests: ShardedMap::default(),
            orders: ShardedMap::default(),
            queue: WaitQueue::default(),
            timers: BTreeSet::new(),
            sequences: self.sequences.clone(),
            next_ordinal: self.next_ordinal,
            offers_made: self.offers_made,
        }
    }

    /// Brings the state forward by an incremental snapshot: `head` (a [`State::head_copy`])
    /// replaces everything but the requests, and each changed request replaces its old version
    /// (`None`: it was purged), its index entries with it. The result equals the state the
    /// snapshot was taken of, indexes included (the routing property tests check this).
    pub fn apply_delta(
        &mut self,
        head: State,
        changed: impl IntoIterator<Item = (RequestId, Option<Arc<Request>>)>,
    ) {
        let retention_changed = head.retention_ms != self.retention_ms;
        let mut open: FxHashMap<OdsCode, BTreeSet<RequestId>> = self
            .labs
            .iter_mut()
            .map(|lab| (lab.config.ods.clone(), std::mem::take(&mut lab.open)))
            .collect();
        self.catalogue = head.catalogue;
        self.leases = head.leases;
        self.retention_ms = head.retention_ms;
        self.trusts = head.trusts;
        self.labs = head.labs;
        self.sequences = head.sequences;
        self.next_ordinal = head.next_ordinal;
        self.offers_made = head.offers_made;
        for lab in self.labs.iter_mut() {
            if let Some(jobs) = open.remove(&lab.config.ods) {
                lab.open = jobs;
            }
        }
        if !retention_changed {
            self.replace_requests(changed.into_iter().collect());
        } else {
            // Every finished request's purge timer moved; rare enough to rebuild them all, so
            // the requests are only put in place.
            for (id, new) in changed {
                match new {
                    Some(r) => self.requests.insert(id, r),
                    None => self.requests.remove(&id),
                };
            }
            self.orders = ShardedMap::default();
            self.queue = WaitQueue::default();
            self.timers = BTreeSet::new();
            for lab in self.labs.iter_mut() {
                lab.open.clear();
            }
            self.rebuild_indexes();
        }
    }

    /// Puts each changed request in place of its old version (`None`: purged) and moves its
    /// index entries, arranged for a restart that applies hundreds of thousands at once: the
    /// order numbers (a table of their own) on a second core, and the trees' entries in sorted
    /// runs, which trees of millions take far faster than random inserts, the timers' beside
    /// the wait queue's.
    fn replace_requests(&mut self, changed: Vec<(RequestId, Option<Arc<Request>>)>) {
        let State {
            retention_ms,
            labs,
            requests,
            orders,
            queue,
            timers,
            ..
        } = self;
        let retention_ms = *retention_ms;
        let replaced = std::thread::scope(|scope| {
            let ordered = scope.spawn(|| {
                // Both versions of a request carry the same order number, so a new version's
                // entry is already there unless the request is new or the number was reused.
                let mut reused = Vec::new();
                for (id, new) in &changed {
                    let Some(r) = new else { continue };
                    match orders.entry((r.trust.clone(), r.submission.order_number.clone())) {
                        ShardEntry::Occupied(named) if named == id => {}
                        ShardEntry::Occupied(_) => reused.push(r),
                        ShardEntry::Vacant(entry) => entry.insert(*id),
                    }
                }
                for r in reused {
                    orders.insert((r.trust.clone(), r.submission.order_number.clone()), r.id);
                }
            });
            let replaced: Vec<_> = changed
                .iter()
                .map(|(id, new)| {
                    let old = match new {
                        Some(r) => requests.insert(*id, r.clone()),
                        None => requests.remove(id),
                    };
                    (old, new.as_ref())
                })
                .collect();
            let mut stale_timers = Vec::new();
            let mut armed = Vec::new();
            let mut stale_waiting: FxHashMap<(&OdsCode, &TestSet), Vec<QueueKey>> =
                FxHashMap::default();
            let mut waiting: FxHashMap<(&OdsCode, &TestSet), Vec<QueueKey>> = FxHashMap::default();
            for (old, new) in &replaced {
                for (r, timers, waiting, open) in [
                    (old.as_ref(), &mut stale_timers, &mut stale_waiting, false),
                    (*new, &mut armed, &mut waiting, true),
                ] {
                    let Some(r) = r else { continue };
                    timers.extend(Self::timers_of(r, retention_ms));
                    Self::place(r, waiting, labs, open);
                }
            }
            // Every stale entry goes before any new one, as if each pair were moved in turn: an
            // entry both versions share is removed and put back. The timers on a core of their
            // own, beside the wait queue's runs: by now the order numbers are mostly done.
            let timed = scope.spawn(move || {
                stale_timers.sort_unstable();
                for timer in &stale_timers {
                    timers.remove(timer);
                }
                armed.sort_unstable();
                timers.extend(armed);
            });
            for ((trust, tests), keys) in stale_waiting {
                queue.remove_many(&(trust.clone(), tests.clone()), keys);
            }
            for ((trust, tests), keys) in waiting {
                queue.insert_many((trust.clone(), tests.clone()), keys);
            }
            for done in [ordered, timed] {
                done.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            }
            replaced
        });
        // A purged request's order number goes too, unless it names a later request by now.
        for (old, new) in replaced {
            if let (Some(r), None) = (old, new) {
                let order = (r.trust.clone(), r.submission.order_number.clone());
                if orders.get(&order) == Some(&r.id) {
                    orders.remove(&order);
                }
            }
        }
    }

    /// Where a request stands in the indexes besides its timers: a waiting one's key is gathered
    /// under its group, for the wait queue to take in (or let go) in one run; an open job goes
    /// into its lab's set (`open`) or out of it.
    fn place<'r>(
        r: &'r Request,
        waiting: &mut FxHashMap<(&'r OdsCode, &'r TestSet), Vec<QueueKey>>,
        labs: &mut Labs,
        open: bool,
    ) {
        match r.state {
            RequestState::Queued => waiting
                .entry((&r.trust, &r.submission.tests))
                .or_default()
                .push(queue_key(r)),
            RequestState::Offered | RequestState::Accepted | RequestState::Received => {
                if let Some(lab) = r.lab.as_ref().and_then(|l| labs.get_mut(l)) {
                    if open {
                        lab.open.insert(r.id);
                    } else {
                        lab.open.remove(&r.id);
                    }
                }
            }
            _ => {}
        }
    }

    /// The timers a request arms: its expiry while it waits or is offered, its lease while
    /// offered, its purge once final.
    fn timers_of(
        r: &Request,
        retention_ms: i64,
    ) -> impl Iterator<Item = (Timestamp, TimerKind, RequestId)> {
        let expiry = r
            .state
            .can_expire()
            .then_some((r.expire_at, TimerKind::Expiry, r.id));
        let other = match r.state {
            RequestState::Queued | RequestState::Accepted | RequestState::Received => None,
            RequestState::Offered => r.lease_expires_at.map(|at| (at, TimerKind::Lease, r.id)),
            _ => Some(purge_timer(r, retention_ms)),
        };
        expiry.into_iter().chain(other)
    }

    /// Fills in, from the requests alone, the indexes a lean copy leaves out: order numbers, the
    /// wait queue, the labs' open jobs and the timers. Each holds exactly what the commands that
    /// built the state left in it (the routing property tests check this after every command).
    fn rebuild_indexes(&mut self) {
        let State {
            retention_ms,
            labs,
            requests,
            orders,
            queue,
            timers,
            ..
        } = self;
        let requests = &*requests;
        // The order numbers (a table of their own) on a second core: the snapshot writer that
        // rebuilds these is the journal's window of entries no snapshot covers yet.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                orders.reserve(requests.len());
                for r in requests.values() {
                    orders.insert((r.trust.clone(), r.submission.order_number.clone()), r.id);
                }
            });
            let mut armed = Vec::with_capacity(requests.len());
            let mut waiting: FxHashMap<(&OdsCode, &TestSet), Vec<QueueKey>> = FxHashMap::default();
            for r in requests.values() {
                armed.extend(Self::timers_of(r, *retention_ms));
                Self::place(r, &mut waiting, labs, true);
            }
            *queue = WaitQueue::from_groups(
                waiting
                    .into_iter()
                    .map(|((trust, tests), keys)| ((trust.clone(), tests.clone()), keys)),
            );
            // Collected whole: the tree is then sorted and built in one pass, not by inserts.
            *timers = armed.into_iter().collect();
        });
    }
}

/// The state a snapshot is taken of: usually a lean copy ([`State::lean_copy`]), whose indexes
/// [`SnapshotState::into_state`] rebuilds off the decision lock.
#[derive(Debug, Clone)]
pub struct SnapshotState {
    state: State,
    indexed: bool,
}

impl SnapshotState {
    /// A whole state, indexes included: for a snapshot that no decision waits for (a clean
    /// stop), where copying the indexes is quicker than rebuilding them.
    pub fn whole(state: State) -> Self {
        Self {
            state,
            indexed: true,
        }
    }

    /// The whole state, its indexes rebuilt from the requests if the copy left them out.
    pub fn into_state(self) -> State {
        let mut state = self.state;
        if !self.indexed {
            state.rebuild_indexes();
        }
        state
    }
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

    /// Applies a changed directory (catalogue, trusts, labs, leases, retention) to a recovered
    /// state: new labs start ONLINE; kept labs keep their status, work and live capacities (a
    /// capacity the config file changed takes the new value); a new retention applies to every
    /// finished request, counted from when it finished; waiting requests are routed to
    /// whatever now has room. Refused, changing nothing, when the change would strand work: a
    /// removed lab that holds jobs, a removed test that is in flight or requested, a removed
    /// trust with live requests.
    ///
    /// `fresh` is a core built from the new directory; only its directory is taken.
    pub fn adopt_directory(
        &mut self,
        fresh: &Router,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<(), Rejection> {
        let new = &fresh.state;
        let (catalogue, trusts) = (&new.catalogue, &new.trusts);
        let labs: Vec<LabConfig> = new.labs.iter().map(|l| l.config.clone()).collect();
        let refuse = |why: String| Err(Rejection::WrongState(why));
        for r in self.state.requests.values().filter(|r| !r.state.is_final()) {
            if !trusts.contains_key(&r.trust) {
                return refuse(format!("trust {} still has requests in progress", r.trust));
            }
            if let Some(t) = r
                .submission
                .tests
                .codes()
                .iter()
                .find(|t| catalogue.get(t).is_none())
            {
                return refuse(format!(
                    "test {t} is still requested by requests in progress"
                ));
            }
        }
        for old in self.state.labs.iter() {
            match labs.iter().find(|l| l.ods == old.config.ods) {
                None if !old.open.is_empty() => {
                    return refuse(format!(
                        "lab {} still holds {} jobs; drain it first",
                        old.config.ods,
                        old.open.len()
                    ));
                }
                Some(new) => {
                    if let Some((t, _)) = old
                        .slots
                        .iter()
                        .find(|(t, slot)| slot.in_flight > 0 && !new.capacity.contains_key(*t))
                    {
                        return refuse(format!(
                            "lab {} still has {t} work in flight",
                            old.config.ods
                        ));
                    }
                }
                None => {}
            }
        }
        let mut table = Labs::new(labs);
        for old in self.state.labs.iter() {
            let Some(lab) = table.get_mut(&old.config.ods) else {
                continue;
            };
            lab.status = old.status;
            lab.open = old.open.clone();
            lab.last_offer = old.last_offer;
            for (test, slot) in lab.slots.iter_mut() {
                let Some(live) = old.slots.get(test) else {
                    continue;
                };
                slot.in_flight = live.in_flight;
                if old.config.capacity.get(test) == lab.config.capacity.get(test) {
                    slot.capacity = live.capacity;
                }
            }
        }
        let codes: Vec<OdsCode> = table.iter().map(|l| l.config.ods.clone()).collect();
        self.state.catalogue = catalogue.clone();
        self.state.trusts = trusts.clone();
        self.state.labs = table;
        self.state.leases = new.leases;
        if self.state.retention_ms != new.retention_ms {
            self.state.retention_ms = new.retention_ms;
            self.rearm_purges();
        }
        out.changed = true;
        out.labs.extend(codes.iter().cloned());
        let live: Vec<RequestId> = self
            .state
            .requests
            .values()
            .filter(|r| r.state.can_expire())
            .map(|r| r.id)
            .collect();
        for id in &live {
            self.refresh_expiry(id);
        }
        for lab in &codes {
            self.route_waiting(lab, now, out);
        }
        Ok(())
    }

    // ----- commands -----

    fn submit(
        &mut self,
        trust: &OdsCode,
        id: RequestId,
        new: &NewRequest,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        if !self.state.trusts.contains_key(trust) {
            return Err(Rejection::NotPermitted(format!(
                "{trust} is not a trust in the directory"
            )));
        }
        let order_key = (trust.clone(), new.order_number.clone());
        // One hash of the order key for both the lookup and the insert.
        let order = match self.state.orders.entry(order_key) {
            ShardEntry::Vacant(order) => order,
            ShardEntry::Occupied(existing) => {
                let original = &self.state.requests[existing];
                return if &original.submission == new {
                    Ok(Reply::Request {
                        request: original.clone(),
                        replayed: true,
                    })
                } else {
                    Err(Rejection::Conflict(format!(
                        "order number {} was already used for a different request ({})",
                        new.order_number.as_str(),
                        original.id
                    )))
                };
            }
        };
        if self.state.requests.contains_key(&id) {
            return Err(Rejection::Inconsistent(format!(
                "request id {id} generated twice"
            )));
        }
        let deadline = new.deadline(&self.state.catalogue);
        let request = Request {
            id,
            ordinal: self.state.next_ordinal,
            trust: trust.clone(),
            submission: new.clone(),
            deadline,
            expire_at: deadline,
            state: RequestState::Queued,
            lab: None,
            submitted_at: now,
            updated_at: now,
            lease_expires_at: None,
            predicted_result_at: None,
            transport_minutes: 0,
            results: Vec::new(),
            failure: None,
            status_detail: String::new(),
            excluded: Vec::new(),
            accepted_at: None,
            offers: 0,
        };
        self.state.next_ordinal += 1;
        order.insert(id);
        self.state.requests.insert(id, Arc::new(request));
        out.changed = true;
        out.requests.push(id);
        // A new request has no expiry timer to take out: skip that search of the timer tree.
        self.arm_expiry(&id, false);
        if !self.route_or_queue(&id, now, out) {
            let state = self.state.requests[&id].state;
            if state == RequestState::Queued {
                self.update(&id, now, out, |r| {
                    r.status_detail = "waiting for a lab with room".into();
                });
                self.emit_trust(&id, TrustEventKind::StateChanged, now, out);
            }
        }
        Ok(Reply::Request {
            request: self.state.requests[&id].clone(),
            replayed: false,
        })
    }

    fn cancel(
        &mut self,
        trust: &OdsCode,
        id: &RequestId,
        reason: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self
            .state
            .requests
            .get(id)
            .filter(|r| &r.trust == trust)
            .ok_or_else(|| not_found("request", id))?;
        if r.state.is_final() {
            return Err(Rejection::WrongState(format!(
                "request {id} is already {}",
                r.state.as_str()
            )));
        }
        let (state, lab) = (r.state, r.lab.clone());
        out.changed = true;
        let detail = if reason.is_empty() {
            "cancelled by the trust".to_string()
        } else {
            format!("cancelled by the trust: {}", reason.as_str())
        };
        match state {
            RequestState::Queued => self.dequeue(id),
            _ => {
                if let Some(lab) = &lab {
                    self.release(id, lab, out);
                }
            }
        }
        self.clear_timers(id);
        self.update(id, now, out, |r| {
            r.state = RequestState::Cancelled;
            r.lease_expires_at = None;
            r.status_detail = detail;
        });
        self.finish(id, now);
        if let Some(lab) = &lab {
            let kind = if state == RequestState::Offered {
                JobEventKind::Withdrawn
            } else {
                JobEventKind::Cancelled
            };
            self.emit_lab(lab, id, kind, now, out);
        }
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        if let Some(lab) = &lab {
            self.route_waiting(lab, now, out);
        }
        Ok(self.reply(id))
    }

    fn accept(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Offered => {}
            RequestState::Accepted | RequestState::Received => {
                // Two operators of one lab racing for an offer look the same as one operator
                // retrying: both are told the job is already theirs.
                return Err(Rejection::LostRace(format!(
                    "job {id} is already accepted by {lab} (another operator, or an earlier try \
                     of this one): see it with GetJob"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.clear_timers(id);
        self.update(id, now, out, |r| {
            r.state = RequestState::Accepted;
            r.accepted_at = Some(now);
            r.lease_expires_at = None;
            r.status_detail = format!("accepted by {lab}");
        });
        self.emit_lab(lab, id, JobEventKind::Accepted, now, out);
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        Ok(self.reply(id))
    }

    fn decline(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        reason: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Offered => {}
            RequestState::Accepted | RequestState::Received => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is already accepted; to give it up, fail it with a reason"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.release(id, lab, out);
        self.remove_timer(id, TimerKind::Lease);
        self.update(id, now, out, |r| {
            r.excluded.push(Exclusion {
                lab: lab.clone(),
                reason: ExclusionReason::Declined,
                at: now,
            });
            r.lease_expires_at = None;
            r.lab = None;
            r.status_detail = format!("{lab} declined: {}", reason.as_str());
        });
        self.refresh_expiry(id);
        self.emit_lab(lab, id, JobEventKind::Declined, now, out);
        self.route_or_queue(id, now, out);
        self.route_waiting(lab, now, out);
        Ok(Reply::Declined(*id))
    }

    fn receive(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Accepted => {}
            RequestState::Offered => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is still an offer: accept it before recording the sample"
                )));
            }
            RequestState::Received => {
                return Err(Rejection::WrongState(format!(
                    "the sample of job {id} is already recorded as received"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.update(id, now, out, |r| {
            r.state = RequestState::Received;
            r.status_detail = format!("sample received by {lab}");
        });
        self.emit_lab(lab, id, JobEventKind::Received, now, out);
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        Ok(self.reply(id))
    }

    fn post_results(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        observations: &[Observation],
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Received => {}
            RequestState::Offered | RequestState::Accepted => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is {}: record the sample's receipt before posting results",
                    r.state.as_str()
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        let mut v = Violations::default();
        for test in r.submission.tests.codes() {
            if !observations.iter().any(|o| &o.test == test) {
                v.add(
                    "observations",
                    format!("no result for requested test {test}"),
                );
            }
        }
        for (i, o) in observations.iter().enumerate() {
            if !r.submission.tests.contains(&o.test) {
                v.add(
                    format!("observations[{i}].test"),
                    format!("{} is not one of the job's tests", o.test),
                );
            }
        }
        if !v.is_empty() {
            return Err(Rejection::Invalid(v));
        }
        let critical = observations.iter().any(|o| o.flag.is_critical());
        out.changed = true;
        self.release(id, lab, out);
        self.update(id, now, out, |r| {
            r.state = RequestState::Resulted;
            r.results = observations.to_vec();
            r.status_detail = if critical {
                format!("resulted by {lab}; critical result: phone the clinician")
            } else {
                format!("resulted by {lab}")
            };
        });
        self.finish(id, now);
        self.emit_lab(lab, id, JobEventKind::Resulted, now, out);
        self.emit_trust(id, TrustEventKind::Resulted, now, out);
        if critical {
            self.emit_trust(id, TrustEventKind::CriticalResult, now, out);
        }
        self.route_waiting(lab, now, out);
        Ok(self.reply(id))
    }

    fn fail(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        reason: FailureReason,
        detail: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Accepted | RequestState::Received => {}
            RequestState::Offered => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is still an offer: decline it instead"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.release(id, lab, out);
        self.update(id, now, out, |r| {
            r.state = RequestState::Failed;
            r.failure = Some(reason);
            r.status_detail = if detail.is_empty() {
                format!(
                    "{lab} could not use the sample ({}): recollect",
                    reason.as_str()
                )
            } else {
                format!(
                    "{lab} could not use the sample ({}: {}): recollect",
                    reason.as_str(),
                    detail.as_str()
                )
            };
        });
        self.finish(id, now);
        self.emit_lab(lab, id, JobEventKind::Failed, now, out);
        self.emit_trust(id, TrustEventKind::Failed, now, out);
        self.route_waiting(lab, now, out);
        Ok(self.reply(id))
    }

    fn set_capacity(
        &mut self,
        lab: &OdsCode,
        test: &TestCode,
        capacity: u32,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let state = self.state.labs.get_mut(lab).ok_or_else(|| {
            Rejection::NotPermitted(format!("{lab} is not a lab in the directory"))
        })?;
        let slot = state
            .slots
            .get_mut(test)
            .ok_or_else(|| Rejection::invalid("test", format!("{lab} does not perform {test}")))?;
        let raised = capacity > slot.capacity;
        if slot.capacity != capacity {
            slot.capacity = capacity;
            out.changed = true;
            out.labs.push(lab.clone());
        }
        if raised {
            self.route_waiting(lab, now, out);
        }
        let state = self
            .state
            .labs
            .get(lab)
            .ok_or_else(|| Rejection::Inconsistent("lab vanished".into()))?;
        // Without the open jobs: the reply shows capacity, and copying every job the lab holds
        // made each capacity change cost O(jobs held).
        Ok(Reply::Capacity(LabState {
            config: state.config.clone(),
            status: state.status,
            slots: state.slots.clone(),
            open: BTreeSet::new(),
            last_offer: state.last_offer,
        }))
    }

    fn set_status(
        &mut self,
        lab: &OdsCode,
        status: LabStatus,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let state = self.state.labs.get_mut(lab).ok_or_else(|| {
            Rejection::NotPermitted(format!("{lab} is not a lab in the directory"))
        })?;
        let old = state.status;
        if old == status {
            return Ok(Reply::Status {
                status,
                withdrawn: 0,
            });
        }
        state.status = status;
        let open: Vec<RequestId> = state.open.iter().copied().collect();
        out.changed = true;
        out.labs.push(lab.clone());
        let mut withdrawn = 0;
        if status == LabStatus::Offline {
            for id in &open {
                match self.state.requests[id].state {
                    RequestState::Offered => {
                        withdrawn += 1;
                        self.release(id, lab, out);
                        self.remove_timer(id, TimerKind::Lease);
                        self.update(id, now, out, |r| {
                            r.lease_expires_at = None;
                            r.lab = None;
                            r.status_detail = format!("{lab} went offline; routing again");
                        });
                        self.emit_lab(lab, id, JobEventKind::Withdrawn, now, out);
                        self.route_or_queue(id, now, out);
                    }
                    RequestState::Accepted => {
                        self.update(id, now, out, |r| {
                            r.status_detail = format!(
                                "{lab} went offline before the sample arrived; a coordinator will decide"
                            );
                        });
                        self.emit_trust(id, TrustEventKind::LabOffline, now, out);
                    }
                    _ => {}
                }
            }
        }
        if status == LabStatus::Online {
            self.route_waiting(lab, now, out);
        }
        Ok(Reply::Status { status, withdrawn })
    }

    fn reassign(
        &mut self,
        id: &RequestId,
        reason: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self
            .state
            .requests
            .get(id)
            .ok_or_else(|| not_found("request", id))?;
        let lab = match (r.state, &r.lab) {
            (RequestState::Accepted, Some(lab)) => lab.clone(),
            (RequestState::Received, _) => {
                return Err(Rejection::WrongState(format!(
                    "the sample of {id} is already at its lab; it cannot be reassigned"
                )));
            }
            (state, _) => {
                return Err(Rejection::WrongState(format!(
                    "request {id} is {}: only an accepted job can be reassigned",
                    state.as_str()
                )));
            }
        };
        out.changed = true;
        self.release(id, &lab, out);
        self.update(id, now, out, |r| {
            r.excluded.push(Exclusion {
                lab: lab.clone(),
                reason: ExclusionReason::Reassigned,
                at: now,
            });
            r.accepted_at = None;
            r.lab = None;
            r.status_detail = format!(
                "a coordinator took the job from {lab}: {}; routing again",
                reason.as_str()
            );
        });
        // Sets the expiry the routing below goes by; no timer yet, as the job is still accepted.
        self.refresh_expiry(id);
        self.emit_lab(&lab, id, JobEventKind::Withdrawn, now, out);
        self.route_or_queue(id, now, out);
        // Arms the expiry timer now that the request waits or is offered again: accepting had
        // disarmed it, and without it a reassigned request would never expire.
        self.refresh_expiry(id);
        self.route_waiting(&lab, now, out);
        Ok(self.reply(id))
    }

    fn tick(&mut self, now: Timestamp, out: &mut Outcome) {
        while let Some(&(at, kind, id)) = self.state.timers.first() {
            if at > now {
                break;
            }
            self.state.timers.remove(&(at, kind, id));
            out.changed = true;
            let Some(r) = self.state.requests.get(&id) else {
                continue;
            };
            match kind {
                TimerKind::Lease if r.state == RequestState::Offered => {
                    self.lease_expired(&id, now, out)
                }
                TimerKind::Expiry if r.state.can_expire() => self.expire(&id, now, out),
                TimerKind::Purge if r.state.is_final() => self.purge(&id, out),
                _ => {}
            }
        }
    }

    // ----- transitions shared by commands and timers -----

    fn lease_expired(&mut self, id: &RequestId, now: Timestamp, out: &mut Outcome) {
        let Some(lab) = self.state.requests[id].lab.clone() else {
            return;
        };
        self.release(id, &lab, out);
        self.update(id, now, out, |r| {
            r.excluded.push(Exclusion {
                lab: lab.clone(),
                reason: ExclusionReason::LeaseExpired,
                at: now,
            });
            r.lease_expires_at = None;
            r.lab = None;
            r.status_detail = format!("{lab} did not answer the offer in time");
        });
        self.refresh_expiry(id);
        self.emit_lab(&lab, id, JobEventKind::LeaseExpired, now, out);
        self.route_or_queue(id, now, out);
        self.route_waiting(&lab, now, out);
    }

    fn expire(&mut self, id: &RequestId, now: Timestamp, out: &mut Outcome) {
        let r = &self.state.requests[id];
        let offered_to = (r.state == RequestState::Offered)
            .then(|| r.lab.clone())
            .flatten();
        if r.state == RequestState::Queued {
            self.dequeue(id);
        }
        if let Some(lab) = &offered_to {
            self.release(id, lab, out);
        }
        self.clear_timers(id);
        self.update(id, now, out, |r| {
            r.state = RequestState::Expired;
            r.lease_expires_at = None;
            r.status_detail =
                "no partner lab can finish before the sample deadline: recollect".into();
        });
        self.finish(id, now);
        if let Some(lab) = &offered_to {
            self.emit_lab(lab, id, JobEventKind::Withdrawn, now, out);
        }
        self.emit_trust(id, TrustEventKind::Expired, now, out);
        if let Some(lab) = &offered_to {
            self.route_waiting(lab, now, out);
        }
    }

    fn purge(&mut self, id: &RequestId, out: &mut Outcome) {
        if let Some(r) = self.state.requests.remove(id) {
            self.state
                .orders
                .remove(&(r.trust.clone(), r.submission.order_number.clone()));
            out.purged.push(*id);
        }
    }

    /// Offers the request to the policy's choice, or queues it (or expires it when no lab can ever
    /// finish in time). Returns true when it was offered.
    fn route_or_queue(&mut self, id: &RequestId, now: Timestamp, out: &mut Outcome) -> bool {
        self.route_or_requeue(id, false, now, out)
    }

    /// [`Router::route_or_queue`] for a request that is in the queue when `waiting`: only then
    /// does an offer have to take it out (looking it up costs two hashes and two clones).
    fn route_or_requeue(
        &mut self,
        id: &RequestId,
        waiting: bool,
        now: Timestamp,
        out: &mut Outcome,
    ) -> bool {
        let placement = {
            let st = &mut self.state;
            let r = &st.requests[id];
            let reach = st
                .labs
                .prepare_reach(&r.trust, &r.submission.tests, &st.catalogue);
            let query = RouteQuery {
                trust: &r.trust,
                tests: &r.submission.tests,
                deadline: r.deadline,
                turnaround_minutes: reach.turnaround_minutes,
                excluded: &r.excluded,
            };
            self.policy.choose(&query, &st.labs, now)
        };
        match placement {
            Some(p) => {
                self.offer(id, p, waiting, now, out);
                true
            }
            None if self.state.requests[id].expire_at <= now => {
                self.expire(id, now, out);
                false
            }
            None => {
                self.enqueue(id, now, out);
                false
            }
        }
    }

    /// Offers the request to `p`; `waiting` says whether it is in the queue now.
    fn offer(
        &mut self,
        id: &RequestId,
        p: Placement,
        waiting: bool,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        if waiting {
            self.dequeue(id);
        }
        self.state.offers_made += 1;
        let counter = self.state.offers_made;
        let st = &mut self.state;
        let r = &st.requests[id];
        let priority = r.submission.priority;
        if let Some(lab) = st.labs.get_mut(&p.lab) {
            for t in r.submission.tests.codes() {
                if let Some(slot) = lab.slots.get_mut(t) {
                    slot.in_flight += 1;
                }
            }
            lab.open.insert(*id);
            lab.last_offer = counter;
        }
        out.labs.push(p.lab.clone());
        let lease = now.plus_millis(self.state.leases.for_priority(priority));
        self.state.timers.insert((lease, TimerKind::Lease, *id));
        let lab = p.lab.clone();
        self.update(id, now, out, |r| {
            r.state = RequestState::Offered;
            r.lab = Some(p.lab);
            r.lease_expires_at = Some(lease);
            r.predicted_result_at = Some(p.predicted_at);
            r.transport_minutes = p.transport_minutes;
            r.offers += 1;
            // Plain pushes rather than format!: this runs for every offer.
            r.status_detail.clear();
            r.status_detail.push_str("offered to ");
            r.status_detail
                .push_str(r.lab.as_ref().map_or("", |l| l.as_str()));
        });
        self.emit_lab(&lab, id, JobEventKind::Offered, now, out);
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
    }

    fn enqueue(&mut self, id: &RequestId, now: Timestamp, out: &mut Outcome) {
        let r = &self.state.requests[id];
        let was = r.state;
        let (group, key) = queue_entry(r);
        self.state.queue.insert(group, key);
        if was != RequestState::Queued {
            self.update(id, now, out, |r| {
                r.state = RequestState::Queued;
                r.lab = None;
                r.predicted_result_at = None;
                r.transport_minutes = 0;
                r.status_detail = format!("{}; waiting for a lab with room", r.status_detail);
            });
            self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        }
    }

    fn dequeue(&mut self, id: &RequestId) {
        let (group, key) = queue_entry(&self.state.requests[id]);
        self.state.queue.remove(&group, &key);
    }

    /// Routes waiting requests that `lab` could now take, in order of service, while it has room.
    fn route_waiting(&mut self, lab: &OdsCode, now: Timestamp, out: &mut Outcome) {
        loop {
            let Some(state) = self.state.labs.get(lab) else {
                return;
            };
            if state.status != LabStatus::Online {
                return;
            }
            let next = self.next_waiting_for(state, now);
            #[cfg(test)]
            assert_eq!(
                next,
                self.next_waiting_by_scan(state, now),
                "the head index found a different next request from a scan of every group"
            );
            let Some(next) = next else {
                return;
            };
            if !self.route_or_requeue(&next.id, true, now, out) {
                return;
            }
        }
    }

    /// The first waiting request in order of service that `lab` could take now: groups in order of
    /// their heads, stopping at the first head after the best found (no later group can beat it).
    fn next_waiting_for(&self, lab: &LabState, now: Timestamp) -> Option<QueueKey> {
        let mut best: Option<QueueKey> = None;
        for (head, group) in self.state.queue.groups_by_head() {
            if best.is_some_and(|b| b < *head) {
                break;
            }
            if let Some(k) = self.first_for(lab, group, now)
                && best.is_none_or(|b| k < b)
            {
                best = Some(k);
            }
        }
        best
    }

    /// The first request of one group that `lab` could take now, if it serves the group at all.
    fn first_for(&self, lab: &LabState, group: &GroupKey, now: Timestamp) -> Option<QueueKey> {
        let (trust, tests) = group;
        if !lab.serves(trust) || !lab.performs(tests) || !lab.has_room_for(tests) {
            return None;
        }
        let lead = i64::from(lab.transport_from(trust))
            + i64::from(tests.turnaround_minutes(&self.state.catalogue));
        let too_soon = now.plus_minutes(lead);
        let set = self.state.queue.group(group)?;
        WaitQueue::first_after(set, too_soon, |k| {
            self.state.requests[&k.id].excludes(&lab.config.ods)
        })
        .copied()
    }

    /// [`Router::next_waiting_for`] by a scan of every group and request, to check it against.
    #[cfg(test)]
    fn next_waiting_by_scan(&self, state: &LabState, now: Timestamp) -> Option<QueueKey> {
        let mut best: Option<QueueKey> = None;
        for ((trust, tests), set) in self.state.queue.groups() {
            if !state.serves(trust) || !state.performs(tests) || !state.has_room_for(tests) {
                continue;
            }
            let lead = i64::from(state.transport_from(trust))
                + i64::from(tests.turnaround_minutes(&self.state.catalogue));
            let too_soon = now.plus_minutes(lead);
            let first = set.iter().find(|k| {
                k.deadline > too_soon && !self.state.requests[&k.id].excludes(&state.config.ods)
            });
            if let Some(k) = first
                && best.as_ref().is_none_or(|b| k < b)
            {
                best = Some(*k);
            }
        }
        best
    }

    fn release(&mut self, id: &RequestId, lab: &OdsCode, out: &mut Outcome) {
        let Some(r) = self.state.requests.get(id) else {
            return;
        };
        if let Some(state) = self.state.labs.get_mut(lab)
            && state.open.remove(id)
        {
            for t in r.submission.tests.codes() {
                if let Some(slot) = state.slots.get_mut(t) {
                    slot.in_flight = slot.in_flight.saturating_sub(1);
                }
            }
            out.labs.push(lab.clone());
        }
    }

    /// Recomputes the last moment any lab that is not excluded could still finish in time, and
    /// re-arms the expiry timer.
    fn refresh_expiry(&mut self, id: &RequestId) {
        self.arm_expiry(id, true);
    }

    /// [`Router::refresh_expiry`]; `armed` says whether an expiry timer may be set already.
    fn arm_expiry(&mut self, id: &RequestId, armed: bool) {
        let st = &mut self.state;
        let r = &st.requests[id];
        let reach = st
            .labs
            .prepare_reach(&r.trust, &r.submission.tests, &st.catalogue);
        // Nearest first, so the first lab not excluded has the shortest lead.
        let min_lead = reach
            .labs
            .iter()
            .find(|&&(i, _)| !r.excludes(&st.labs.at(i).config.ods))
            .map(|&(_, transport)| i64::from(transport) + i64::from(reach.turnaround_minutes));
        let expire_at = match min_lead {
            Some(lead) => r.deadline.plus_minutes(-lead),
            None => r.submitted_at,
        };
        let old = r.expire_at;
        let live = r.state.can_expire();
        if armed {
            self.state.timers.remove(&(old, TimerKind::Expiry, *id));
        }
        // Unchanged is common (a submission's first lab is rarely excluded); make_mut would copy
        // a request that the read views still share.
        if expire_at != old
            && let Some(r) = self.state.requests.get_mut(id)
        {
            Arc::make_mut(r).expire_at = expire_at;
        }
        if live {
            self.state
                .timers
                .insert((expire_at, TimerKind::Expiry, *id));
        }
    }

    /// Arms the purge of a request that just became final (its `updated_at` is `now`).
    fn finish(&mut self, id: &RequestId, now: Timestamp) {
        let r = &self.state.requests[id];
        debug_assert_eq!(r.updated_at, now);
        self.state
            .timers
            .insert(purge_timer(r, self.state.retention_ms));
    }

    /// Moves every purge to a retention after its request finished, after the retention changed.
    fn rearm_purges(&mut self) {
        let retention = self.state.retention_ms;
        self.state
            .timers
            .retain(|(_, kind, _)| *kind != TimerKind::Purge);
        let purges: Vec<_> = self
            .state
            .requests
            .values()
            .filter(|r| r.state.is_final())
            .map(|r| purge_timer(r, retention))
            .collect();
        self.state.timers.extend(purges);
    }

    fn remove_timer(&mut self, id: &RequestId, kind: TimerKind) {
        let r = &self.state.requests[id];
        let at = match kind {
            TimerKind::Lease => r.lease_expires_at,
            TimerKind::Expiry => Some(r.expire_at),
            TimerKind::Purge => None,
        };
        if let Some(at) = at {
            self.state.timers.remove(&(at, kind, *id));
        }
    }

    fn clear_timers(&mut self, id: &RequestId) {
        self.remove_timer(id, TimerKind::Lease);
        self.remove_timer(id, TimerKind::Expiry);
    }

    fn update(
        &mut self,
        id: &RequestId,
        now: Timestamp,
        out: &mut Outcome,
        f: impl FnOnce(&mut Request),
    ) {
        if let Some(r) = self.state.requests.get_mut(id) {
            let r = Arc::make_mut(r);
            f(r);
            r.updated_at = now;
            out.requests.push(*id);
        }
    }

    fn emit(
        &mut self,
        org: &OdsCode,
        id: &RequestId,
        kind: EventKind,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        let request = self.state.requests[id].clone();
        let sequence = next_sequence(&mut self.state.sequences, org);
        out.events.push(Event {
            org: org.clone(),
            sequence,
            time: now,
            kind,
            request,
        });
    }

    fn emit_trust(
        &mut self,
        id: &RequestId,
        kind: TrustEventKind,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        let request = self.state.requests[id].clone();
        let sequence = next_sequence(&mut self.state.sequences, &request.trust);
        out.events.push(Event {
            org: request.trust.clone(),
            sequence,
            time: now,
            kind: EventKind::Trust(kind),
            request,
        });
    }

    fn emit_lab(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        kind: JobEventKind,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        self.emit(lab, id, EventKind::Lab(kind), now, out);
    }

    fn reply(&self, id: &RequestId) -> Reply {
        Reply::Request {
            request: self.state.requests[id].clone(),
            replayed: false,
        }
    }

    /// The request as a job of `lab`, or the error a lab that does not hold it gets: an offer it
    /// lost is explained, anything else is NOT_FOUND.
    fn job_of(
        &self,
        lab: &OdsCode,
        id: &RequestId,
        now: Timestamp,
    ) -> Result<&Arc<Request>, Rejection> {
        let r = self
            .state
            .requests
            .get(id)
            .ok_or_else(|| not_found("job", id))?;
        if r.is_job_of(lab) {
            return Ok(r);
        }
        let Some(ex) = r.excluded.iter().rev().find(|e| &e.lab == lab) else {
            return Err(not_found("job", id));
        };
        let ago = human_duration(now.millis_since(ex.at));
        Err(Rejection::WrongState(match ex.reason {
            ExclusionReason::Declined => format!("{lab} declined this offer {ago} ago"),
            ExclusionReason::Reassigned => {
                format!("a coordinator reassigned this job {ago} ago, while {lab} was offline")
            }
            ExclusionReason::LeaseExpired => {
                let since = match r.state {
                    RequestState::Queued => "is waiting for another lab",
                    RequestState::Expired => "the request has since expired",
                    RequestState::Cancelled => "the request has since been cancelled",
                    _ => "went to another lab",
                };
                format!("offer expired {ago} ago and {since}")
            }
        }))
    }
}

/// The next number in `org`'s event sequence. Looks up before inserting: `entry` would clone the
/// code for every event.
fn next_sequence(sequences: &mut FxHashMap<OdsCode, u64>, org: &OdsCode) -> u64 {
    match sequences.get_mut(org) {
        Some(seq) => {
            *seq += 1;
            *seq
        }
        None => {
            sequences.insert(org.clone(), 1);
            1
        }
    }
}

/// The purge timer of a final request: a retention after it finished, which was its last change.
fn purge_timer(r: &Request, retention_ms: i64) -> (Timestamp, TimerKind, RequestId) {
    (
        r.updated_at.plus_millis(retention_ms),
        TimerKind::Purge,
        r.id,
    )
}

fn queue_entry(r: &Request) -> (GroupKey, QueueKey) {
    ((r.trust.clone(), r.submission.tests.clone()), queue_key(r))
}

fn queue_key(r: &Request) -> QueueKey {
    QueueKey {
        priority: Reverse(r.submission.priority),
        deadline: r.deadline,
        ordinal: r.ordinal,
        id: r.id,
    }
}

fn not_found(what: &str, id: &RequestId) -> Rejection {
    Rejection::NotFound(format!("{what} {id} not found"))
}

fn final_state_error(id: &RequestId, state: RequestState) -> Rejection {
    Rejection::WrongState(match state {
        RequestState::Cancelled => format!("request {id} was cancelled by the trust"),
        RequestState::Expired => {
            format!("request {id} expired: the sample deadline can no longer be met")
        }
        other => format!("job {id} is already {}", other.as_str()),
    })
}

/// A short duration for messages, e.g. `40 s` or `3 min`.
pub fn human_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}
