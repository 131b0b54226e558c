//! What the coordinator page follows between snapshots: the live (not final) requests, indexed by
//! sample deadline, acceptance and offer lease; the requests that expired in the last hour; and
//! per-minute results and time-to-result per priority over the last hour. Fed from the events the
//! read views publish, reading each changed request back from the views.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::domain::{OdsCode, Priority, Request, RequestId, RequestState, Timestamp};
use crate::engine::Views;
use crate::routing::{Event, EventKind, TrustEventKind};

/// Minutes the charts and the expired list look back.
pub(crate) const WINDOW_MINUTES: i64 = 60;
const MINUTE_MS: i64 = 60_000;

/// Results in one minute for one priority.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Bin {
    pub(crate) results: u64,
    pub(crate) turnaround_ms_sum: i64,
}

/// The live requests and the last hour's figures.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    // Fx, as the read views: every event of every organisation passes through these.
    live: FxHashMap<RequestId, Arc<Request>>,
    /// Not yet at a lab (queued, offered, accepted), by sample deadline.
    by_deadline: BTreeSet<(Timestamp, RequestId)>,
    /// Accepted, the sample not yet received, by acceptance time.
    accepted: BTreeSet<(Timestamp, RequestId)>,
    /// Offered, by lease expiry.
    offered: BTreeSet<(Timestamp, RequestId)>,
    /// Expired in the window, by when.
    expired: BTreeMap<(Timestamp, RequestId), Arc<Request>>,
    /// Results per minute (minutes since the epoch) and priority (index of `Priority::ALL`).
    bins: BTreeMap<i64, [Bin; 4]>,
    /// Results counted when the tracker was filled, so their events are not counted again.
    counted_at_fill: FxHashSet<RequestId>,
}

fn priority_index(p: Priority) -> usize {
    Priority::ALL.iter().position(|q| *q == p).unwrap_or(0)
}

impl Tracker {
    /// Fills the tracker from the views: the trusts' requests that are live, expired in the
    /// window or resulted in it. Every request belongs to one trust, so this sees each once.
    pub(crate) fn fill(views: &Views, trusts: &[OdsCode], now: Timestamp) -> Self {
        let mut t = Self::default();
        t.reload(views, trusts, now, true);
        t
    }

    /// Forgets the live requests and reads them again (after the event feed fell behind); the
    /// charts are kept, and filled from the views only the first time.
    pub(crate) fn reload(
        &mut self,
        views: &Views,
        trusts: &[OdsCode],
        now: Timestamp,
        with_charts: bool,
    ) {
        self.live.clear();
        self.by_deadline.clear();
        self.accepted.clear();
        self.offered.clear();
        let since = now.plus_millis(-WINDOW_MINUTES * MINUTE_MS);
        for trust in trusts {
            let mut before = None;
            loop {
                let (page, next) = views.list(trust, before, usize::MAX, |r| {
                    !r.state.is_final() || r.updated_at >= since
                });
                for r in page {
                    match r.state {
                        RequestState::Resulted if with_charts => {
                            self.count_result(&r, r.updated_at);
                            self.counted_at_fill.insert(r.id);
                        }
                        RequestState::Expired => {
                            self.expired.insert((r.updated_at, r.id), r);
                        }
                        s if !s.is_final() => self.put(r),
                        _ => {}
                    }
                }
                match next {
                    Some(n) => before = Some(n),
                    None => break,
                }
            }
        }
        self.prune(now);
    }

    /// Takes in one event: the request is read back from the views (the latest durable state),
    /// and a trust's result or expiry event is counted.
    pub(crate) fn on_event(&mut self, views: &Views, event: &Event) {
        let id = event.request.id;
        match event.kind {
            EventKind::Trust(TrustEventKind::Resulted) if !self.counted_at_fill.remove(&id) => {
                self.count_result(&event.request, event.time);
            }
            EventKind::Trust(TrustEventKind::Expired) => {
                self.expired.insert((event.time, id), event.request.clone());
            }
            _ => {}
        }
        self.take(id);
        if let Some(r) = views.request(&id)
            && !r.state.is_final()
        {
            self.put(r);
        }
    }

    /// Drops what has left the window.
    pub(crate) fn prune(&mut self, now: Timestamp) {
        let since = now.plus_millis(-WINDOW_MINUTES * MINUTE_MS);
        let first_minute = since.millis().div_euclid(MINUTE_MS);
        self.bins = self.bins.split_off(&first_minute);
        self.expired = self
            .expired
            .split_off(&(since, RequestId(uuid::Uuid::nil())));
    }

    fn count_result(&mut self, r: &Request, at: Timestamp) {
        let bin = &mut self
            .bins
            .entry(at.millis().div_euclid(MINUTE_MS))
            .or_default()[priority_index(r.submission.priority)];
        bin.results += 1;
        bin.turnaround_ms_sum += at.millis_since(r.submitted_at).max(0);
    }

    fn put(&mut self, r: Arc<Request>) {
        match r.state {
            RequestState::Received => {}
            RequestState::Accepted => {
                self.by_deadline.insert((r.deadline, r.id));
                self.accepted
                    .insert((r.accepted_at.unwrap_or(r.updated_at), r.id));
            }
            RequestState::Offered => {
                self.by_deadline.insert((r.deadline, r.id));
                self.offered
                    .insert((r.lease_expires_at.unwrap_or(r.updated_at), r.id));
            }
            _ => {
                self.by_deadline.insert((r.deadline, r.id));
            }
        }
        self.live.insert(r.id, r);
    }

    fn take(&mut self, id: RequestId) {
        if let Some(r) = self.live.remove(&id) {
            self.by_deadline.remove(&(r.deadline, id));
            self.accepted
                .remove(&(r.accepted_at.unwrap_or(r.updated_at), id));
            self.offered
                .remove(&(r.lease_expires_at.unwrap_or(r.updated_at), id));
        }
    }

    /// Up to `n` live requests not yet at a lab, nearest their sample deadline first.
    pub(crate) fn nearest_deadlines(&self, n: usize) -> Vec<&Arc<Request>> {
        self.by_deadline
            .iter()
            .filter_map(|(_, id)| self.live.get(id))
            .take(n)
            .collect()
    }

    /// Accepted jobs whose sample has not arrived, longest waiting first, and how many there are.
    pub(crate) fn awaiting_samples(&self, n: usize) -> (Vec<&Arc<Request>>, usize) {
        let list = self
            .accepted
            .iter()
            .filter_map(|(_, id)| self.live.get(id))
            .take(n)
            .collect();
        (list, self.accepted.len())
    }

    /// Open offers, the nearest lease expiry first, and how many there are.
    pub(crate) fn open_offers(&self, n: usize) -> (Vec<&Arc<Request>>, usize) {
        let list = self
            .offered
            .iter()
            .filter_map(|(_, id)| self.live.get(id))
            .take(n)
            .collect();
        (list, self.offered.len())
    }

    /// Requests that expired in the window, the latest first, and how many there are.
    pub(crate) fn expired(&self, n: usize) -> (Vec<&Arc<Request>>, usize) {
        (
            self.expired.values().rev().take(n).collect(),
            self.expired.len(),
        )
    }

    /// The window's bins, one per minute ending with the minute of `now` (oldest first).
    pub(crate) fn minutes(&self, now: Timestamp) -> Vec<(i64, [Bin; 4])> {
        let last = now.millis().div_euclid(MINUTE_MS);
        (last - WINDOW_MINUTES + 1..=last)
            .map(|m| (m, self.bins.get(&m).copied().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_leave_the_window_after_an_hour() {
        let mut t = Tracker::default();
        let now = Timestamp::from_millis(10 * 3_600_000);
        t.bins
            .insert(now.millis() / MINUTE_MS - 61, [Bin::default(); 4]);
        t.bins
            .insert(now.millis() / MINUTE_MS - 5, [Bin::default(); 4]);
        t.prune(now);
        assert_eq!(t.bins.len(), 1);
        let minutes = t.minutes(now);
        assert_eq!(minutes.len(), 60);
        assert_eq!(minutes.last().map(|m| m.0), Some(now.millis() / MINUTE_MS));
    }
}
