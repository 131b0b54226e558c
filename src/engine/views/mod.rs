//! Read views: requests, labs and event logs that Get, List and Watch read without the sequencer.
//!
//! Only the syncer writes here, after a batch is durable; readers never wait for it.

mod changes;
mod events;

use changes::lab_view;
pub use changes::{Changes, SinceSnapshot};
pub use events::EventLog;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use rustc_hash::{FxBuildHasher, FxHashMap};

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::domain::{Catalogue, OdsCode, Priority, Request, RequestId, RequestState, Timestamp};
use crate::metrics::Metrics;
use crate::routing::{Event, EventKind, JobEventKind, LabState, Router, TrustEventKind};

/// Shards of the requests' view: the syncer inserts under one shard's lock, and a shard that
/// grows rehashes under it, so more shards make each growth shorter (dashmap's default is four
/// per core, eight here).
const VIEW_SHARDS: usize = 64;

/// Most of an organisation's requests one listing call looks at (about a millisecond's work).
const LIST_SCAN: usize = 10_000;
/// Index entries copied out of the lock at a time while listing.
const LIST_RUN: usize = 1024;

/// Requests per organisation, by ordinal: a trust's own, or the jobs a lab holds.
type OrgLists = DashMap<OdsCode, BTreeMap<u64, RequestId>, FxBuildHasher>;
/// Waiting requests by priority and submission time.
type QueuedSet = BTreeSet<(Priority, Timestamp, RequestId)>;

/// Everything readers see.
#[derive(Debug)]
pub struct Views {
    catalogue: Arc<Catalogue>,
    // Keyed by what the broker or the directory chose, never by client text, so the fast hash
    // (SipHash was a tenth of rebuilding these views at a restart).
    requests: DashMap<RequestId, Arc<Request>, FxBuildHasher>,
    /// Requests per organisation, by ordinal: a trust's own, or the jobs a lab holds.
    by_org: OrgLists,
    labs: RwLock<Vec<LabState>>,
    events: DashMap<OdsCode, Arc<EventLog>, FxBuildHasher>,
    /// Waiting requests by priority and submission time, for the oldest-wait gauge.
    queued: Mutex<QueuedSet>,
    retention_ms: i64,
    metrics: Arc<Metrics>,
}

impl Views {
    /// Views of a core's current state and its retained `events` (from a snapshot or a replay,
    /// not published live). At a restart the core may hold a million requests, so the indexes
    /// are built in bulk (sorted, then packed into their trees) rather than one insertion at a
    /// time, on three threads.
    pub fn new(
        router: &Router,
        events: Vec<Event>,
        retention_ms: i64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let requests = DashMap::with_capacity_and_hasher_and_shard_amount(
            router.request_count(),
            FxBuildHasher,
            VIEW_SHARDS,
        );
        // Three threads that each take about a third of the work (a million requests' request
        // table alone on one, the lists by organisation on another, the event logs and then
        // the waiting set on a third), so that none is left finishing alone on one core.
        let (by_org, queued, logs) = std::thread::scope(|scope| {
            let lists = scope.spawn(|| Self::lists(router, &metrics));
            let logs_and_queued = scope.spawn(|| (Self::logs(events), Self::queued(router)));
            for r in router.requests() {
                requests.insert(r.id, r.clone());
            }
            let lists = lists
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            let (logs, queued) = logs_and_queued
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (lists, queued, logs)
        });
        Self {
            catalogue: router.catalogue().clone(),
            requests,
            by_org,
            labs: RwLock::new(router.labs().iter().map(lab_view).collect()),
            events: logs,
            queued: Mutex::new(queued),
            retention_ms,
            metrics,
        }
    }

    /// A core's waiting requests by priority and submission time, sorted first so that the
    /// tree is built in one pass.
    fn queued(router: &Router) -> QueuedSet {
        let mut queued = Vec::with_capacity(router.queue().len());
        queued.extend(
            router
                .requests()
                .filter(|r| r.state == RequestState::Queued)
                .map(|r| (r.submission.priority, r.submitted_at, r.id)),
        );
        queued.sort_unstable();
        queued.into_iter().collect()
    }

    /// The per-organisation lists of a core's requests, and their counts in the metrics.
    fn lists(router: &Router, metrics: &Metrics) -> OrgLists {
        let mut lists: FxHashMap<&OdsCode, Vec<(u64, RequestId)>> = FxHashMap::default();
        let mut counts: FxHashMap<(RequestState, Priority, Option<&OdsCode>), i64> =
            FxHashMap::default();
        for r in router.requests() {
            lists.entry(&r.trust).or_default().push((r.ordinal, r.id));
            if let Some(lab) = &r.lab {
                lists.entry(lab).or_default().push((r.ordinal, r.id));
            }
            let lab = r.lab.as_ref().filter(|_| r.state == RequestState::Offered);
            *counts
                .entry((r.state, r.submission.priority, lab))
                .or_default() += 1;
        }
        for ((state, priority, lab), n) in counts {
            metrics.count_requests(state, priority, lab, n);
        }
        let by_org = DashMap::with_capacity_and_hasher(lists.len(), FxBuildHasher);
        for (org, mut list) in lists {
            list.sort_unstable();
            by_org.insert(org.clone(), list.into_iter().collect());
        }
        by_org
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &Arc<Catalogue> {
        &self.catalogue
    }

    /// Applies what a durable batch changed, then publishes its events.
    pub fn apply(&self, changes: Changes) {
        for r in changes.requests {
            self.put(r);
        }
        for id in &changes.purged {
            self.remove(id);
        }
        if !changes.labs.is_empty() {
            let mut labs = self.labs.write().unwrap_or_else(|e| e.into_inner());
            for lab in changes.labs {
                if let Some(slot) = labs.iter_mut().find(|l| l.config.ods == lab.config.ods) {
                    *slot = lab;
                }
            }
        }
        let latest = changes.events.last().map(|e| e.time);
        for event in changes.events {
            self.observe(&event);
            self.log(&event.org).publish(event);
        }
        if !changes.purged.is_empty()
            && let Some(latest) = latest
        {
            let cutoff = latest.plus_millis(-self.retention_ms);
            for log in self.events.iter() {
                log.prune_before(cutoff);
            }
        }
    }

    /// Each organisation's log of `events`, grouped first so that each is made once.
    fn logs(events: Vec<Event>) -> DashMap<OdsCode, Arc<EventLog>, FxBuildHasher> {
        let mut by_org: FxHashMap<OdsCode, Vec<Event>> = FxHashMap::default();
        for event in events {
            by_org.entry(event.org.clone()).or_default().push(event);
        }
        let logs = DashMap::with_capacity_and_hasher(by_org.len(), FxBuildHasher);
        for (org, events) in by_org {
            let log = EventLog::new();
            log.history
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(events);
            logs.insert(org, Arc::new(log));
        }
        logs
    }

    fn observe(&self, e: &Event) {
        let r = &e.request;
        let p = r.submission.priority.as_str();
        let since = |t: Timestamp| t.millis_since(r.submitted_at).max(0) as f64 / 1000.0;
        let m = &self.metrics;
        match e.kind {
            EventKind::Lab(JobEventKind::Offered) if r.offers == 1 => {
                m.time_to_offer
                    .with_label_values(&[p])
                    .observe(since(e.time));
            }
            EventKind::Lab(JobEventKind::Accepted) => {
                m.time_to_accept
                    .with_label_values(&[p])
                    .observe(since(e.time));
            }
            EventKind::Lab(JobEventKind::Declined) => {
                m.reroutes.with_label_values(&["declined"]).inc();
            }
            EventKind::Lab(JobEventKind::LeaseExpired) => {
                m.reroutes.with_label_values(&["lease_expired"]).inc();
            }
            EventKind::Lab(JobEventKind::Withdrawn) if !r.state.is_final() => {
                m.reroutes.with_label_values(&["lab_offline"]).inc();
            }
            EventKind::Trust(TrustEventKind::Resulted) => {
                m.time_to_result
                    .with_label_values(&[p])
                    .observe(since(e.time));
            }
            EventKind::Trust(TrustEventKind::CriticalResult) => {
                m.critical_results.with_label_values(&[p]).inc();
            }
            EventKind::Trust(TrustEventKind::Expired) => {
                m.expired.with_label_values(&[p]).inc();
            }
            _ => {}
        }
    }

    fn track_queue(&self, old: Option<&Request>, new: Option<&Request>) {
        let key = |r: &Request| (r.submission.priority, r.submitted_at, r.id);
        let was = old.filter(|r| r.state == RequestState::Queued);
        let is = new.filter(|r| r.state == RequestState::Queued);
        if was.is_some() == is.is_some() {
            return;
        }
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = was {
            queued.remove(&key(r));
        }
        if let Some(r) = is {
            queued.insert(key(r));
        }
    }

    /// Seconds the oldest waiting request of each priority has waited at `now`.
    pub fn oldest_waits(&self, now: Timestamp) -> Vec<(Priority, f64)> {
        let queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        Priority::ALL
            .into_iter()
            .filter_map(|p| {
                queued
                    .range((p, Timestamp(i64::MIN), RequestId(uuid::Uuid::nil()))..)
                    .next()
                    .filter(|(q, _, _)| *q == p)
                    .map(|(_, t, _)| (p, now.millis_since(*t).max(0) as f64 / 1000.0))
            })
            .collect()
    }

    /// How many requests of each priority wait for a lab: read from the request gauges, which
    /// change with the table, rather than counted in the waiting set, a walk of every waiting
    /// request (a million and more in a long outage) under the lock the syncer takes for each
    /// batch.
    pub fn waiting(&self) -> Vec<(Priority, usize)> {
        Priority::ALL
            .into_iter()
            .map(|p| {
                let gauge = self
                    .metrics
                    .requests
                    .with_label_values(&[RequestState::Queued.as_str(), p.as_str()]);
                (p, usize::try_from(gauge.get()).unwrap_or(0))
            })
            .collect()
    }

    fn put(&self, r: Arc<Request>) {
        let old = self.requests.insert(r.id, r.clone());
        if let Some(o) = &old {
            self.metrics.count_request(o, -1);
        }
        self.metrics.count_request(&r, 1);
        self.track_queue(old.as_deref(), Some(&r));
        let old_lab = old.as_ref().and_then(|o| o.lab.clone());
        if old.is_none() {
            self.by_org
                .entry(r.trust.clone())
                .or_default()
                .insert(r.ordinal, r.id);
        }
        if old_lab != r.lab {
            if let Some(lab) = &old_lab
                && let Some(mut jobs) = self.by_org.get_mut(lab)
            {
                jobs.remove(&r.ordinal);
            }
            if let Some(lab) = &r.lab {
                self.by_org
                    .entry(lab.clone())
                    .or_default()
                    .insert(r.ordinal, r.id);
            }
        }
    }

    fn remove(&self, id: &RequestId) {
        if let Some((_, r)) = self.requests.remove(id) {
            self.metrics.count_request(&r, -1);
            self.track_queue(Some(&r), None);
            for org in std::iter::once(&r.trust).chain(r.lab.as_ref()) {
                if let Some(mut list) = self.by_org.get_mut(org) {
                    list.remove(&r.ordinal);
                }
            }
        }
    }

    /// One request, whoever it belongs to (callers check ownership).
    pub fn request(&self, id: &RequestId) -> Option<Arc<Request>> {
        self.requests.get(id).map(|r| r.clone())
    }

    /// An organisation's requests (a trust's own, or a lab's jobs), newest first, starting below
    /// ordinal `before` (exclusive), that pass `keep`, at most `limit` of them. Also returns the
    /// ordinal to continue from when more may follow. Looks at no more than `LIST_SCAN` of the
    /// organisation's requests per call, so a page may come back short, even empty, with more to
    /// follow: a filter that matches few of a million requests costs each call a bounded time.
    pub fn list(
        &self,
        org: &OdsCode,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&Request) -> bool,
    ) -> (Vec<Arc<Request>>, Option<u64>) {
        self.list_scanning(org, before, limit, (LIST_SCAN, LIST_RUN), keep)
    }

    fn list_scanning(
        &self,
        org: &OdsCode,
        before: Option<u64>,
        limit: usize,
        (scan, run_len): (usize, usize),
        keep: impl Fn(&Request) -> bool,
    ) -> (Vec<Arc<Request>>, Option<u64>) {
        let mut page = Vec::new();
        let mut below = before.unwrap_or(u64::MAX);
        let mut looked_at = 0;
        loop {
            // Copied out a run at a time, so that the index is not locked while requests are
            // looked up and filtered: the syncer waits on that lock to add this organisation's
            // next request. One more than the bound allows shows whether more follow.
            let run: Vec<(u64, RequestId)> = match self.by_org.get(org) {
                Some(index) => index
                    .range(..below)
                    .rev()
                    .take(run_len.min(scan.saturating_sub(looked_at).saturating_add(1)))
                    .map(|(&ordinal, &id)| (ordinal, id))
                    .collect(),
                None => Vec::new(),
            };
            if run.is_empty() {
                return (page, None);
            }
            for (ordinal, id) in run {
                if page.len() == limit || looked_at == scan {
                    return (page, Some(ordinal + 1));
                }
                looked_at += 1;
                below = ordinal;
                if let Some(r) = self.requests.get(&id)
                    && keep(&r)
                {
                    page.push(r.clone());
                }
            }
        }
    }

    /// One lab's current state (its `open` set is left empty in the views).
    pub fn lab(&self, ods: &OdsCode) -> Option<LabState> {
        let labs = self.labs.read().unwrap_or_else(|e| e.into_inner());
        labs.iter().find(|l| &l.config.ods == ods).cloned()
    }

    /// Every lab, in ODS-code order.
    pub fn labs(&self) -> Vec<LabState> {
        self.labs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An organisation's event log.
    pub fn log(&self, org: &OdsCode) -> Arc<EventLog> {
        self.events
            .entry(org.clone())
            .or_insert_with(|| Arc::new(EventLog::new()))
            .clone()
    }

    /// Every retained event of every organisation (for snapshots), in one vector sized once: only
    /// the syncer changes the logs, and it is the caller.
    pub fn retained_events(&self) -> Vec<Event> {
        let logs: Vec<Arc<EventLog>> = self.events.iter().map(|e| e.value().clone()).collect();
        let mut events = Vec::with_capacity(logs.iter().map(|log| log.len()).sum());
        for log in &logs {
            log.copy_into(&mut events);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::Outcome;
    use crate::routing::{Command, fixtures};

    const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);

    /// Views of 40 requests from RJ1, every fifth one STAT, the rest ROUTINE.
    fn views_of_forty() -> Views {
        let mut router = Config::demo()
            .expect("demo config")
            .directory()
            .router(std::sync::Arc::new(crate::routing::DefaultPolicy));
        for i in 0..40 {
            let priority = if i % 5 == 0 {
                Priority::Stat
            } else {
                Priority::Routine
            };
            let submit = fixtures::submit(&router, "RJ1", i, priority, T0);
            router
                .apply(&submit, T0, &mut Outcome::default())
                .expect("submitted");
        }
        Views::new(&router, Vec::new(), 60_000, Arc::new(Metrics::new()))
    }

    /// The waiting set built in bulk at a restart holds what the syncer's batches left in it:
    /// the same counts and oldest waits per priority.
    #[test]
    fn the_waiting_set_built_at_a_restart_matches_the_one_kept_batch_by_batch() {
        let mut router = Config::demo()
            .expect("demo config")
            .directory()
            .router(std::sync::Arc::new(crate::routing::DefaultPolicy));
        let live = Views::new(&router, Vec::new(), 60_000, Arc::new(Metrics::new()));
        let trust = OdsCode::parse("RJ1").expect("ods");
        let mut ids = Vec::new();
        // More potassium tests than the labs that serve RJ1 have room for, a second apart and
        // in every priority, so that some are offered and the rest wait.
        for i in 0..200 {
            let now = T0.plus_millis(1_000 * i as i64);
            let submit = fixtures::submit(&router, "RJ1", i, Priority::ALL[i % 4], now);
            if let Command::Submit { id, .. } = &submit {
                ids.push(*id);
            }
            let mut outcome = Outcome::default();
            router.apply(&submit, now, &mut outcome).expect("submitted");
            live.apply(Changes::capture(&router, &mut outcome));
        }
        // Cancel the first ten, offered or waiting: each leaves the set if it was in it.
        let now = T0.plus_millis(300_000);
        for id in &ids[..10] {
            let cancel = Command::Cancel {
                trust: trust.clone(),
                id: *id,
                reason: Default::default(),
            };
            let mut outcome = Outcome::default();
            router.apply(&cancel, now, &mut outcome).expect("cancelled");
            live.apply(Changes::capture(&router, &mut outcome));
        }
        let rebuilt = Views::new(&router, Vec::new(), 60_000, Arc::new(Metrics::new()));

        // What the requests themselves say, per priority: how many wait, and since when.
        let waiting_since = |p: Priority| {
            let waiting: Vec<&Arc<Request>> = router
                .requests()
                .filter(|r| r.state == RequestState::Queued && r.submission.priority == p)
                .collect();
            (waiting.len(), waiting.iter().map(|r| r.submitted_at).min())
        };
        let waiting: Vec<(Priority, usize)> = Priority::ALL
            .into_iter()
            .map(|p| (p, waiting_since(p).0))
            .collect();
        assert!(waiting.iter().all(|&(_, n)| n > 0), "{waiting:?}");
        assert!(router.requests().any(|r| r.state == RequestState::Offered));
        assert_eq!(rebuilt.waiting(), waiting);
        assert_eq!(live.waiting(), waiting);
        let oldest: Vec<(Priority, f64)> = Priority::ALL
            .into_iter()
            .filter_map(|p| {
                let first = waiting_since(p).1?;
                Some((p, now.millis_since(first) as f64 / 1000.0))
            })
            .collect();
        assert_eq!(oldest.len(), 4);
        assert_eq!(rebuilt.oldest_waits(now), oldest);
        assert_eq!(live.oldest_waits(now), oldest);
    }

    /// Every page of a listing, following its tokens.
    fn pages(
        views: &Views,
        limit: usize,
        bounds: (usize, usize),
        keep: impl Fn(&Request) -> bool,
    ) -> Vec<Vec<String>> {
        let org = OdsCode::parse("RJ1").expect("ods");
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let (page, next) = views.list_scanning(&org, before, limit, bounds, &keep);
            pages.push(
                page.iter()
                    .map(|r| r.submission.order_number.as_str().to_string())
                    .collect(),
            );
            match next {
                Some(n) => before = Some(n),
                None => return pages,
            }
        }
    }

    #[test]
    fn a_filtered_listing_looks_at_a_bounded_number_per_call_and_misses_nothing() {
        let views = views_of_forty();
        let stat = |r: &Request| r.submission.priority == Priority::Stat;
        let all_at_once = pages(&views, 100, (1_000, 1_000), stat);
        let expected: Vec<String> = (0..40)
            .rev()
            .filter(|i| i % 5 == 0)
            .map(|i| format!("ORD-{i}"))
            .collect();
        assert_eq!(all_at_once, vec![expected.clone()]);
        // Copied out of the index two entries at a time: the same.
        assert_eq!(pages(&views, 100, (1_000, 2), stat), all_at_once);

        // Looking at 3 per call: 14 calls, most pages short or empty, the same requests in order.
        for run in [1, 2, 3, 1_000] {
            let bounded = pages(&views, 100, (3, run), stat);
            assert_eq!(bounded.len(), 14, "runs of {run}");
            assert!(bounded.iter().any(Vec::is_empty));
            assert_eq!(bounded.concat(), expected, "runs of {run}");
        }

        // A page fills before the bound: the next call carries on after its last request.
        for run in [1, 3, 1_000] {
            let small = pages(&views, 2, (1_000, run), stat);
            assert_eq!(small.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2, 2]);
            assert_eq!(small.concat(), expected, "runs of {run}");
        }
        // Unfiltered, a page of 3 from a run of 2: the pages are whole.
        let all = pages(&views, 3, (1_000, 2), |_| true);
        assert_eq!(all.len(), 14);
        assert_eq!(all.concat().len(), 40);
    }
}
