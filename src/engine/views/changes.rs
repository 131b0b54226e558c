//! Change capture: what one decided batch changed, taken from the core before it moves on, and
//! what changed since the last snapshot, for the next incremental one.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::domain::{Request, RequestId};
use crate::routing::{Event, LabState, Outcome, Router, State};
use crate::store::Delta;

/// A lab as readers see it: everything but the set of its open jobs, which only the core needs
/// and which grows with the work in flight (copying it on every batch made each submission cost
/// time proportional to the offers already open).
pub(super) fn lab_view(lab: &LabState) -> LabState {
    LabState {
        config: lab.config.clone(),
        status: lab.status,
        slots: lab.slots.clone(),
        open: BTreeSet::new(),
        last_offer: lab.last_offer,
    }
}

/// What one batch changed, captured from the core right after it was decided: the core moves on
/// to later batches while this one waits for its journal sync, and readers must see this batch's
/// state, not a later one.
#[derive(Debug, Default)]
pub struct Changes {
    pub(super) requests: Vec<Arc<Request>>,
    pub(super) purged: Vec<RequestId>,
    pub(super) labs: Vec<LabState>,
    pub(super) events: Vec<Event>,
}

impl Changes {
    /// Takes what `outcome` names from `router`, leaving `outcome` empty for the next batch.
    pub fn capture(router: &Router, outcome: &mut Outcome) -> Self {
        // A batch names the same requests and labs many times; the last state is what counts.
        outcome.requests.sort_unstable();
        outcome.requests.dedup();
        outcome.labs.sort_unstable();
        outcome.labs.dedup();
        let changes = Self {
            requests: outcome
                .requests
                .iter()
                .filter_map(|id| router.request(id).cloned())
                .collect(),
            purged: std::mem::take(&mut outcome.purged),
            labs: outcome
                .labs
                .iter()
                .filter_map(|ods| router.labs().get(ods).map(lab_view))
                .collect(),
            events: std::mem::take(&mut outcome.events),
        };
        outcome.requests.clear();
        outcome.labs.clear();
        outcome.changed = false;
        changes
    }
}

/// What changed since the last snapshot (full or incremental): the syncer notes each batch's
/// changes here, and hands them to the journal as the next incremental snapshot.
#[derive(Debug, Default)]
pub struct SinceSnapshot {
    requests: FxHashMap<RequestId, Option<Arc<Request>>>,
    events: Vec<Event>,
}

impl SinceSnapshot {
    /// Notes a batch's changes, before the views take them.
    pub fn note(&mut self, changes: &Changes) {
        for r in &changes.requests {
            self.requests.insert(r.id, Some(r.clone()));
        }
        for id in &changes.purged {
            self.requests.insert(*id, None);
        }
        self.events.extend(changes.events.iter().cloned());
    }

    /// Everything noted, as an incremental snapshot beside `head`; starts again empty.
    pub fn take(&mut self, head: State) -> Delta {
        Delta {
            head,
            requests: self.requests.drain().collect(),
            events: std::mem::take(&mut self.events),
        }
    }

    /// Forgets everything noted: a full snapshot covers it.
    pub fn clear(&mut self) {
        self.requests.clear();
        self.events.clear();
    }
}
