//! Snapshot mechanics: lean and head copies of the state, bringing a state forward by an
//! incremental snapshot, and rebuilding the indexes that the requests determine.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::State;
use super::command::TimerKind;
use super::dispatch::queue_key;
use super::timers::purge_timer;
use crate::domain::{OdsCode, Request, RequestId, RequestState, TestSet, Timestamp};
use crate::routing::labs::Labs;
use crate::routing::queue::{QueueKey, WaitQueue};
use crate::routing::sharded::{ShardEntry, ShardedMap};

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
