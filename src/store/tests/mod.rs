//! The file store against its promises, by area; this module holds what they share: a driver
//! that makes a history through the real core, and the fingerprint recovery must rebuild.

mod damage;
mod incremental;
mod journal;
mod snapshots;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::segment::segment_name;
use super::*;
use crate::config::Config;
use crate::domain::{
    BoundedText, LabStatus, MINUTE_MS, Observation, ObservationFlag, OdsCode, Priority, Request,
    RequestId, TestCode,
};
use crate::routing::fixtures::submit;
use crate::routing::{
    DefaultPolicy, LabState, Outcome, QueueKey, Reply, Router, RoutingPolicy, State,
};

const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);

fn directory() -> Directory {
    Config::demo().expect("demo config").directory()
}

fn policy() -> Arc<dyn RoutingPolicy> {
    Arc::new(DefaultPolicy)
}

fn ods(code: &str) -> OdsCode {
    OdsCode::parse(code).expect("ods")
}

/// What recovery must rebuild exactly.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    requests: Vec<Request>,
    sequences: Vec<(OdsCode, u64)>,
    queue: Vec<QueueKey>,
    labs: Vec<LabState>,
    next_timer: Option<Timestamp>,
    events: Vec<(OdsCode, u64)>,
}

fn fingerprint(router: &Router, events: &[Event]) -> Fingerprint {
    let mut requests: Vec<Request> = router.requests().map(|r| (**r).clone()).collect();
    requests.sort_by_key(|r| r.ordinal);
    let mut sequences: Vec<_> = router
        .sequences()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    sequences.sort();
    let mut events: Vec<_> = events.iter().map(|e| (e.org.clone(), e.sequence)).collect();
    events.sort();
    Fingerprint {
        requests,
        sequences,
        queue: router.queue().in_order(),
        labs: router.labs().iter().cloned().collect(),
        next_timer: router.next_timer(),
        events,
    }
}

/// A core and a journal driven like the sequencer drives them, remembering the state after each
/// batch.
struct Driver {
    router: Router,
    journal: FileJournal,
    events: Vec<Event>,
    after_batch: Vec<Fingerprint>,
    /// Requests changed and events published since the last snapshot, full or incremental.
    changed: std::collections::BTreeSet<RequestId>,
    new_events: Vec<Event>,
}

impl Driver {
    fn open(dir: &Path) -> Self {
        Self::recovered(open(dir, directory(), policy(), StoreOptions::default()).expect("open"))
    }

    fn recovered(r: Recovered) -> Self {
        let mut d = Self {
            router: r.router,
            journal: r.journal,
            events: r.events,
            after_batch: Vec::new(),
            changed: Default::default(),
            new_events: Vec::new(),
        };
        d.after_batch.push(fingerprint(&d.router, &d.events));
        d
    }

    fn batch(&mut self, now: Timestamp, commands: Vec<Command>) -> Vec<Reply> {
        let mut entries = Vec::new();
        let mut replies = Vec::new();
        let mut outcome = Outcome::default();
        if self.router.next_timer().is_some_and(|t| t <= now) {
            self.router
                .apply(&Command::Tick, now, &mut outcome)
                .expect("tick");
            entries.push(Entry {
                time: now,
                command: Command::Tick,
            });
        }
        for command in commands {
            outcome.changed = false;
            if let Ok(reply) = self.router.apply(&command, now, &mut outcome) {
                replies.push(reply);
            }
            if outcome.changed {
                entries.push(Entry { time: now, command });
            }
        }
        self.journal.append(&entries).expect("append");
        self.changed
            .extend(outcome.requests.iter().chain(&outcome.purged).copied());
        self.new_events.extend(outcome.events.iter().cloned());
        self.events.append(&mut outcome.events);
        self.after_batch
            .push(fingerprint(&self.router, &self.events));
        replies
    }

    fn snapshot(&mut self) {
        self.journal
            .snapshot(Snapshot {
                state: self.router.state().lean_copy(),
                events: self.events.clone(),
            })
            .expect("snapshot");
        self.changed.clear();
        self.new_events.clear();
    }

    /// An incremental snapshot, as the syncer takes one.
    fn delta(&mut self) {
        let requests = std::mem::take(&mut self.changed)
            .into_iter()
            .map(|id| (id, self.router.request(&id).cloned()))
            .collect();
        self.journal
            .delta(Delta {
                head: self.router.state().head_copy(),
                requests,
                events: std::mem::take(&mut self.new_events),
            })
            .expect("delta");
    }
}

impl Driver {
    /// One STAT submission from RJ1, as a batch of its own.
    fn submit_stat(&mut self, order: usize, now: Timestamp) {
        let command = submit(&self.router, "RJ1", order, Priority::Stat, now);
        self.batch(now, vec![command]);
    }
}

/// A full snapshot is due; after it is written and one more batch, an incremental one.
fn full_then_incremental(d: &mut Driver, order: usize, now: Timestamp) {
    assert_eq!(d.journal.snapshot_due(false), Some(SnapshotKind::Full));
    d.snapshot();
    d.journal.wait_for_writer();
    d.submit_stat(order, now);
    assert_eq!(
        d.journal.snapshot_due(false),
        Some(SnapshotKind::Incremental)
    );
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK" && n != super::loss::MARK_NAME)
        .collect();
    names.sort();
    names
}

/// History, then incremental snapshots between further batches; returns the state the journal
/// ends with and the entries the last incremental snapshot covers.
fn history_with_deltas(d: &mut Driver) -> (Fingerprint, u64) {
    history(d);
    d.snapshot();
    let later = T0.plus_millis(40 * MINUTE_MS);
    let replies = d.batch(
        later,
        (0..3)
            .map(|i| submit(&d.router, "RJZ", 100 + i, Priority::Urgent, later))
            .collect(),
    );
    d.delta();
    let (lab, id) = job(&replies[0]);
    d.batch(later.plus_millis(1_000), vec![Command::Accept { lab, id }]);
    // After the retention: finished requests are purged.
    let purge = later.plus_millis(directory().retention_ms + MINUTE_MS);
    let before = d.router.request_count();
    d.batch(
        purge,
        vec![submit(&d.router, "RJ1", 200, Priority::Stat, purge)],
    );
    assert!(
        d.router.request_count() < before + 1,
        "something was purged"
    );
    d.delta();
    let covered = d.journal.entries();
    // And one more submission after the last incremental snapshot.
    d.batch(
        purge,
        vec![submit(&d.router, "RJ1", 201, Priority::Stat, purge)],
    );
    (d.after_batch.pop().expect("state"), covered)
}

fn job(reply: &Reply) -> (OdsCode, RequestId) {
    match reply {
        Reply::Request { request, .. } => (request.lab.clone().expect("offered"), request.id),
        other => panic!("not a request: {other:?}"),
    }
}

/// A few batches that touch every kind of change: submissions, accept, receive, results, cancel,
/// capacity, status, and a lease running out.
fn history(d: &mut Driver) {
    let mut order = 0;
    let mut next = |d: &Driver, p| {
        order += 1;
        submit(
            &d.router,
            if order % 2 == 0 { "RJ1" } else { "RJZ" },
            order,
            p,
            T0,
        )
    };
    let first: Vec<Command> = (0..6)
        .map(|i| {
            next(
                d,
                [Priority::Stat, Priority::Routine, Priority::Urgent][i % 3],
            )
        })
        .collect();
    let replies = d.batch(T0, first);
    let (lab_a, id_a) = job(&replies[0]);
    let (lab_b, id_b) = job(&replies[1]);
    let (_, id_c) = job(&replies[2]);
    d.batch(
        T0.plus_millis(1_000),
        vec![
            Command::Accept {
                lab: lab_a.clone(),
                id: id_a,
            },
            Command::Accept {
                lab: lab_b.clone(),
                id: id_b,
            },
            Command::Cancel {
                trust: ods("RJ1"),
                id: id_c,
                reason: BoundedText::default(),
            },
            Command::SetCapacity {
                lab: ods("RJ7"),
                test: TestCode::parse("K").expect("K"),
                capacity: 1,
            },
        ],
    );
    let more: Vec<Command> = (0..4).map(|_| next(d, Priority::Asap)).collect();
    d.batch(T0.plus_millis(2_000), more);
    d.batch(
        T0.plus_millis(3_000),
        vec![
            Command::Receive {
                lab: lab_a.clone(),
                id: id_a,
            },
            Command::SetStatus {
                lab: ods("RAX"),
                status: LabStatus::Draining,
            },
        ],
    );
    d.batch(
        T0.plus_millis(4_000),
        vec![Command::PostResults {
            lab: lab_a,
            id: id_a,
            observations: vec![Observation {
                test: TestCode::parse("K").expect("K"),
                analyte: String::new(),
                value: "7.1".into(),
                unit: "mmol/L".into(),
                reference_range: "3.5-5.3".into(),
                flag: ObservationFlag::High,
            }],
        }],
    );
    // Every open offer's lease (30 minutes at most) has run out.
    d.batch(
        T0.plus_millis(31 * MINUTE_MS),
        vec![next(d, Priority::Routine)],
    );
}

fn recovered(dir: &Path) -> Fingerprint {
    let r = open(dir, directory(), policy(), StoreOptions::default()).expect("recover");
    fingerprint(&r.router, &r.events)
}

fn copy_dir(from: &Path, to: &Path) {
    for item in fs::read_dir(from).expect("read_dir") {
        let item = item.expect("entry");
        if item.file_name() != "LOCK" {
            fs::copy(item.path(), to.join(item.file_name())).expect("copy");
        }
    }
}
