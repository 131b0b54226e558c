//! The file store against its promises: what was appended comes back, a torn or damaged tail is
//! dropped and never misread, damage in the middle stops the start, snapshots bound the replay.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::file::segment_name;
use super::*;
use crate::config::Config;
use crate::domain::{
    BoundedText, LabStatus, MINUTE_MS, Observation, ObservationFlag, OdsCode, Priority, Request,
    RequestId, TestCode,
};
use crate::routing::fixtures::submit;
use crate::routing::{LabState, Outcome, QueueKey, Reply, Router, State};

const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);

fn directory() -> Directory {
    Directory::from(&Config::demo().expect("demo config"))
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
        Self::recovered(open(dir, directory(), StoreOptions::default()).expect("open"))
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
        .filter(|n| n != "LOCK")
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
    let r = open(dir, directory(), StoreOptions::default()).expect("recover");
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

#[test]
fn a_restart_rebuilds_every_request_sequence_queue_lab_and_timer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    let expected = d.after_batch.pop().expect("state");
    assert!(expected.requests.len() >= 10);
    drop(d);
    assert_eq!(recovered(dir.path()), expected);
    // And again, after a restart that changed nothing.
    assert_eq!(recovered(dir.path()), expected);
}

#[test]
fn records_go_into_reserved_space_and_a_restart_carries_on_where_they_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = dir.path().join(segment_name(0));
    let mut d = Driver::open(dir.path());
    history(&mut d);
    let end = d.journal.segment_end();
    let len = fs::metadata(&segment).expect("segment").len();
    assert!(len > end, "zeros reserved past the records ({len} > {end})");
    drop(d);
    let r = open(dir.path(), directory(), StoreOptions::default()).expect("recover");
    assert_eq!(r.dropped_bytes, 0, "reserved space is not a torn tail");
    assert_eq!(r.journal.segment_end(), end);
    drop(r);
    // Appending after the restart overwrites the reserved zeros, and a third start reads both.
    let mut d = Driver::open(dir.path());
    let now = T0.plus_millis(40 * MINUTE_MS);
    d.batch(
        now,
        vec![submit(&d.router, "RJ1", 77, Priority::Urgent, now)],
    );
    let expected = d.after_batch.pop().expect("state");
    assert!(d.journal.segment_end() > end);
    let end = d.journal.segment_end();
    assert_eq!(
        fs::metadata(&segment).expect("segment").len(),
        len,
        "no new space needed"
    );
    drop(d);
    assert_eq!(recovered(dir.path()), expected);
    // A clean stop gives the reserved zeros back: the segment ends at its last record, as
    // earlier builds expect.
    let mut d = Driver::open(dir.path());
    d.journal.close().expect("close");
    assert_eq!(fs::metadata(&segment).expect("segment").len(), end);
    drop(d);
    assert_eq!(recovered(dir.path()), expected);
}

/// Drops the zeros the journal reserved past its last record, so that the tests that damage a
/// copy of the segment byte by byte do not copy megabytes of zeros each time.
fn drop_reserved(segment: &Path, end: u64) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .expect("open");
    f.set_len(end).expect("truncate");
}

#[test]
fn a_cut_at_every_byte_of_the_last_record_drops_exactly_that_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    let segment = dir.path().join(segment_name(0));
    let before_last = d.journal.segment_end();
    d.batch(
        T0.plus_millis(32 * MINUTE_MS),
        vec![submit(
            &d.router,
            "RJ1",
            99,
            Priority::Stat,
            T0.plus_millis(32 * MINUTE_MS),
        )],
    );
    let whole = d.journal.segment_end();
    let with_last = d.after_batch.pop().expect("state");
    let without_last = d.after_batch.pop().expect("state");
    drop(d);
    drop_reserved(&segment, whole);
    for cut in before_last..=whole {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), copy.path());
        let f = fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join(segment_name(0)))
            .expect("open");
        f.set_len(cut).expect("cut");
        drop(f);
        let r = open(copy.path(), directory(), StoreOptions::default()).expect("recover");
        let expected = if cut == whole {
            &with_last
        } else {
            &without_last
        };
        assert_eq!(
            &fingerprint(&r.router, &r.events),
            expected,
            "cut at {cut} of {whole}"
        );
        assert_eq!(
            r.dropped_bytes,
            if cut == whole { 0 } else { cut - before_last },
            "cut at {cut}"
        );
        // The torn bytes are gone from the file, so the journal carries on after the last good record.
        drop(r);
        assert_eq!(
            &recovered(copy.path()),
            expected,
            "second start after a cut at {cut}"
        );
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_drops_it_and_a_flipped_bit_earlier_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    let segment = dir.path().join(segment_name(0));
    let before_last = d.journal.segment_end();
    let now = T0.plus_millis(32 * MINUTE_MS);
    d.batch(now, vec![submit(&d.router, "RJ1", 99, Priority::Stat, now)]);
    let whole = d.journal.segment_end();
    d.after_batch.pop();
    let without_last = d.after_batch.pop().expect("state");
    drop(d);
    drop_reserved(&segment, whole);
    let original = fs::read(&segment).expect("read");
    let flipped = |byte: u64| {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), copy.path());
        let mut bytes = original.clone();
        bytes[byte as usize] ^= 1 << (byte % 8);
        fs::write(copy.path().join(segment_name(0)), bytes).expect("write");
        copy
    };
    for byte in before_last..whole {
        let copy = flipped(byte);
        let r = open(copy.path(), directory(), StoreOptions::default()).expect("recover");
        assert_eq!(
            fingerprint(&r.router, &r.events),
            without_last,
            "flipped byte {byte}"
        );
        assert!(r.dropped_bytes > 0, "flipped byte {byte}");
    }
    // Past the 20-byte segment header, in the first record: valid records follow it.
    for byte in [20, 24, 30, 100, before_last - 1] {
        let copy = flipped(byte);
        let err = open(copy.path(), directory(), StoreOptions::default())
            .expect_err("damage in the middle");
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("valid records after it")),
            "flipped byte {byte}: {err}"
        );
    }
}

#[test]
fn after_a_snapshot_the_start_reads_it_and_replays_only_what_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    d.snapshot();
    let at_snapshot = d.journal.entries();
    let now = T0.plus_millis(40 * MINUTE_MS);
    d.batch(
        now,
        vec![submit(&d.router, "RJZ", 77, Priority::Urgent, now)],
    );
    let expected = d.after_batch.pop().expect("state");
    let entries = d.journal.entries();
    d.journal.close().expect("close");
    drop(d);
    let r = open(dir.path(), directory(), StoreOptions::default()).expect("recover");
    assert_eq!(r.snapshot_entries, at_snapshot);
    assert_eq!(r.replayed, entries - at_snapshot);
    assert_eq!(fingerprint(&r.router, &r.events), expected);
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        3,
        "the old segment and snapshot are removed: {names:?}"
    );
}

#[test]
fn a_changed_directory_is_applied_and_pinned_by_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Driver::open(dir.path()));
    let mut other = directory();
    other.retention_ms += 1;
    let recovered = open(dir.path(), other.clone(), StoreOptions::default()).expect("applied");
    drop(recovered);
    let newest = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .max()
        .expect("a snapshot");
    let snapshot = super::file::read_snapshot(&newest).expect("snapshot");
    assert!(snapshot.directory.differences(&other).is_empty());
}

#[test]
fn a_new_retention_applies_to_requests_already_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    let replies = d.batch(T0, vec![submit(&d.router, "RJ1", 1, Priority::Urgent, T0)]);
    let (_, id) = job(&replies[0]);
    let cancelled_at = T0.plus_millis(1_000);
    d.batch(
        cancelled_at,
        vec![Command::Cancel {
            trust: ods("RJ1"),
            id,
            reason: BoundedText::default(),
        }],
    );
    drop(d);
    let mut shorter = directory();
    shorter.retention_ms = 60_000;
    let recovered = open(dir.path(), shorter, StoreOptions::default()).expect("applied");
    assert_eq!(
        recovered.router.next_timer(),
        Some(cancelled_at.plus_millis(60_000)),
        "the purge moved to the new retention"
    );
    // The timers still follow from the requests alone, as a snapshot's rebuild assumes.
    let state = recovered.router.state();
    assert!(state.lean_copy().into_state() == *state);
}

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Driver::open(dir.path());
    let err = open(dir.path(), directory(), StoreOptions::default()).expect_err("refused");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn one_sync_per_entry_reads_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = open(
        dir.path(),
        directory(),
        StoreOptions {
            sync: SyncMode::PerEntry,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let mut d = Driver::recovered(r);
    history(&mut d);
    let expected = d.after_batch.pop().expect("state");
    drop(d);
    assert_eq!(recovered(dir.path()), expected);
}

/// Each event in full, and which earlier event (if any) holds the very same request allocation,
/// and whether it is the allocation the core holds: the sharing a restart must keep.
fn events_and_sharing(router: &Router, events: &[Event]) -> Vec<(Event, Option<usize>, bool)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let first = events[..i]
                .iter()
                .position(|o| Arc::ptr_eq(&o.request, &e.request));
            let current = router
                .request(&e.request.id)
                .is_some_and(|r| Arc::ptr_eq(r, &e.request));
            (e.clone(), first, current)
        })
        .collect()
}

#[test]
fn a_snapshot_restores_events_sharing_their_requests_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    let expected = events_and_sharing(&d.router, &d.events);
    assert!(
        expected.iter().any(|(_, _, current)| !current),
        "the history leaves some events with older versions of their requests"
    );
    d.snapshot();
    d.journal.close().expect("close");
    drop(d);
    let r = open(dir.path(), directory(), StoreOptions::default()).expect("recover");
    assert_eq!(r.replayed, 0);
    assert_eq!(events_and_sharing(&r.router, &r.events), expected);
}

#[test]
fn a_format_1_snapshot_from_an_earlier_build_is_still_read() {
    #[derive(serde::Serialize)]
    struct V1<'a> {
        lsn: u64,
        directory: &'a Directory,
        state: &'a State,
        events: &'a [Event],
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    d.snapshot();
    d.journal.close().expect("close");
    let lsn = d.journal.entries();
    let payload = postcard::to_stdvec(&V1 {
        lsn,
        directory: &directory(),
        state: d.router.state(),
        events: &d.events,
    })
    .expect("encode");
    let expected = d.after_batch.pop().expect("state");
    let events: Vec<Event> = d.events.clone();
    drop(d);
    let len = (payload.len() as u64).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&payload);
    let mut file = b"LABAIDS1".to_vec();
    file.extend_from_slice(&len);
    file.extend_from_slice(&crc.finalize().to_le_bytes());
    file.extend_from_slice(&payload);
    fs::write(dir.path().join(super::file::snapshot_name(lsn)), file).expect("write");
    let r = open(dir.path(), directory(), StoreOptions::default()).expect("recover");
    assert_eq!(r.snapshot_entries, lsn);
    assert_eq!(fingerprint(&r.router, &r.events), expected);
    assert_eq!(r.events, events);
}

#[test]
fn a_format_3_snapshot_round_trips_every_request_across_many_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    d.journal.close().expect("close");
    let lsn = d.journal.entries();
    // Enough requests for several chunks, so that the parallel decode and the order of the
    // chunks are exercised; the rest of the state need not agree with them to round-trip.
    let mut state = d.router.state().clone();
    let template = d.router.requests().next().expect("a request").clone();
    let requests = state.requests_mut();
    for i in 0..10_000u64 {
        let mut r = (*template).clone();
        r.id = RequestId::generate();
        r.ordinal = 1_000_000 + i;
        requests.insert(r.id, Arc::new(r));
    }
    let mut expected: Vec<Request> = requests.values().map(|r| (**r).clone()).collect();
    expected.sort_by_key(|r| r.ordinal);
    let snap_dir = tempfile::tempdir().expect("tempdir");
    super::file::write_snapshot(snap_dir.path(), lsn, &directory(), state, &d.events)
        .expect("write");
    let snap = super::file::read_snapshot(&snap_dir.path().join(super::file::snapshot_name(lsn)))
        .expect("read");
    assert_eq!(snap.lsn, lsn);
    let mut got: Vec<Request> = snap.router.requests().map(|r| (**r).clone()).collect();
    got.sort_by_key(|r| r.ordinal);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "every request comes back as written");
    assert_eq!(
        events_and_sharing(&snap.router, &snap.events),
        events_and_sharing(&d.router, &d.events)
    );
}

#[test]
fn a_format_2_snapshot_from_an_earlier_build_is_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    d.snapshot();
    d.journal.close().expect("close");
    let lsn = d.journal.entries();
    let expected = d.after_batch.pop().expect("state");
    let sharing = events_and_sharing(&d.router, &d.events);
    super::file::write_snapshot_v2(dir.path(), lsn, &directory(), &d.router, &d.events)
        .expect("write");
    drop(d);
    let head = fs::read(dir.path().join(super::file::snapshot_name(lsn))).expect("read");
    assert_eq!(&head[..8], b"LABAIDS2");
    let r = open(dir.path(), directory(), StoreOptions::default()).expect("recover");
    assert_eq!(r.snapshot_entries, lsn);
    assert_eq!(r.replayed, 0);
    assert_eq!(fingerprint(&r.router, &r.events), expected);
    assert_eq!(events_and_sharing(&r.router, &r.events), sharing);
}

#[test]
fn a_snapshot_in_an_unknown_format_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    d.snapshot();
    d.journal.close().expect("close");
    let lsn = d.journal.entries();
    drop(d);
    let path = dir.path().join(super::file::snapshot_name(lsn));
    let mut file = fs::read(&path).expect("read");
    file[7] = b'9';
    fs::write(&path, file).expect("write");
    let err = open(dir.path(), directory(), StoreOptions::default()).expect_err("refused");
    assert!(err.to_string().contains("format '9'"), "{err}");
}

#[test]
fn a_flipped_bit_in_any_section_of_a_format_3_snapshot_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    d.snapshot();
    d.journal.close().expect("close");
    let lsn = d.journal.entries();
    drop(d);
    let path = dir.path().join(super::file::snapshot_name(lsn));
    let good = fs::read(&path).expect("read");
    assert_eq!(&good[..8], b"LABAIDS3");
    // The length, the table, the head, the events and the requests: every byte is covered.
    for at in (8..good.len()).step_by(good.len() / 97 + 1) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        fs::write(&path, &bad).expect("write");
        let err = super::file::read_snapshot(&path).expect_err("refused");
        assert!(
            matches!(err, StoreError::Corrupt(_)),
            "a flip at byte {at}: {err}"
        );
    }
}

#[test]
fn incremental_snapshots_restore_the_state_exactly_and_replay_only_what_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    let (expected, covered) = history_with_deltas(&mut d);
    let entries = d.journal.entries();
    let state = d.router.state().clone();
    d.journal.close().expect("close");
    drop(d);
    let names = file_names(dir.path());
    assert_eq!(
        names.iter().filter(|n| n.starts_with("delta-")).count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.starts_with("journal-")).count(),
        1,
        "segments before the last incremental snapshot are removed: {names:?}"
    );
    let r = open(dir.path(), directory(), StoreOptions::default()).expect("recover");
    assert_eq!(r.incremental, 2);
    assert_eq!(r.snapshot_entries, covered);
    assert_eq!(r.replayed, entries - covered);
    assert_eq!(fingerprint(&r.router, &r.events), expected);
    assert!(*r.router.state() == state, "indexes included");
}

#[test]
fn a_full_snapshot_removes_the_incremental_ones_it_covers_and_a_leftover_one_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history_with_deltas(&mut d);
    let leftover = file_names(dir.path())
        .into_iter()
        .find(|n| n.starts_with("delta-"))
        .expect("a delta");
    let kept = fs::read(dir.path().join(&leftover)).expect("read");
    d.snapshot();
    let expected = fingerprint(&d.router, &d.events);
    d.journal.close().expect("close");
    drop(d);
    assert!(
        file_names(dir.path())
            .iter()
            .all(|n| !n.starts_with("delta-")),
        "{:?}",
        file_names(dir.path())
    );
    // As if the stop came before the full snapshot's clean-up.
    fs::write(dir.path().join(&leftover), kept).expect("write");
    let r = open(dir.path(), directory(), StoreOptions::default()).expect("recover");
    assert_eq!((r.incremental, r.replayed), (0, 0));
    assert_eq!(fingerprint(&r.router, &r.events), expected);
    drop(r);
    assert!(!dir.path().join(&leftover).exists());
}

#[test]
fn a_missing_or_damaged_incremental_snapshot_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history_with_deltas(&mut d);
    d.journal.close().expect("close");
    drop(d);
    let deltas: Vec<String> = file_names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with("delta-"))
        .collect();
    let first = dir.path().join(&deltas[0]);
    let good = fs::read(&first).expect("read");
    assert_eq!(&good[..8], b"LABAIDD1");
    for at in (8..good.len()).step_by(good.len() / 31 + 1) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        fs::write(&first, &bad).expect("write");
        let err = open(dir.path(), directory(), StoreOptions::default()).expect_err("refused");
        assert!(
            matches!(&err, StoreError::Corrupt(why) if why.contains(&deltas[0])),
            "a flip at byte {at}: {err}"
        );
    }
    fs::remove_file(&first).expect("remove");
    let err = open(dir.path(), directory(), StoreOptions::default()).expect_err("refused");
    assert!(
        matches!(&err, StoreError::Corrupt(why) if why.contains(&deltas[1])),
        "{err}"
    );
}

#[test]
fn a_changed_directory_after_incremental_snapshots_is_pinned_by_a_full_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    let (expected, _) = history_with_deltas(&mut d);
    d.journal.close().expect("close");
    drop(d);
    let mut other = directory();
    other.retention_ms += MINUTE_MS;
    let r = open(dir.path(), other.clone(), StoreOptions::default()).expect("applied");
    assert_eq!(r.incremental, 2);
    assert_eq!(
        fingerprint(&r.router, &r.events).requests,
        expected.requests
    );
    drop(r);
    let names = file_names(dir.path());
    assert!(names.iter().all(|n| !n.starts_with("delta-")), "{names:?}");
    let r = open(dir.path(), other, StoreOptions::default()).expect("reopen");
    assert_eq!((r.incremental, r.replayed), (0, 0));
}

#[test]
fn the_trigger_takes_incremental_snapshots_until_they_add_up_to_half_the_full_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        snapshot_min_bytes: 1,
        ..StoreOptions::default()
    };
    let r = open(dir.path(), directory(), options).expect("open");
    let mut d = Driver::recovered(r);
    assert_eq!(d.journal.snapshot_due(false), None, "nothing journaled yet");
    assert_eq!(
        d.journal.snapshot_due(true),
        None,
        "nothing to write at a stop"
    );
    history(&mut d);
    // The empty state's snapshot is tiny: the first incremental one outweighs it.
    assert_eq!(
        d.journal.snapshot_due(false),
        Some(SnapshotKind::Incremental)
    );
    d.delta();
    d.journal.wait_for_writer();
    assert_eq!(d.journal.snapshot_due(false), None, "nothing since");
    assert_eq!(
        d.journal.snapshot_due(true),
        Some(SnapshotKind::Full),
        "a stop folds the incremental ones into a full one"
    );
    let now = T0.plus_millis(40 * MINUTE_MS);
    d.submit_stat(300, now);
    full_then_incremental(&mut d, 301, now);
}

#[test]
fn after_a_restart_that_replayed_entries_the_next_snapshot_is_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        snapshot_min_bytes: 1,
        ..StoreOptions::default()
    };
    let mut d = Driver::recovered(open(dir.path(), directory(), options).expect("open"));
    history(&mut d);
    d.delta();
    d.journal.wait_for_writer();
    let now = T0.plus_millis(40 * MINUTE_MS);
    d.submit_stat(300, now);
    drop(d);
    // The entries after the incremental snapshot are replayed, not noted by the new caller: only
    // a full snapshot covers them.
    let mut d = Driver::recovered(open(dir.path(), directory(), options).expect("reopen"));
    d.submit_stat(301, now);
    full_then_incremental(&mut d, 302, now);
}

#[test]
fn an_incremental_snapshot_across_a_new_retention_brings_the_state_forward_exactly() {
    // The store pins a changed directory with a full snapshot, so a chain never crosses one;
    // the core still brings a state forward across it, rebuilding every purge timer.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    let mut base = d.router.state().clone();
    let mut shorter = directory();
    shorter.retention_ms = 60_000;
    let later = T0.plus_millis(40 * MINUTE_MS);
    let mut outcome = Outcome::default();
    d.router
        .adopt_directory(&shorter.router(), later, &mut outcome)
        .expect("adopted");
    d.changed
        .extend(outcome.requests.iter().chain(&outcome.purged).copied());
    d.batch(
        later,
        vec![submit(&d.router, "RJ1", 300, Priority::Stat, later)],
    );
    let changed: Vec<_> = std::mem::take(&mut d.changed)
        .into_iter()
        .map(|id| (id, d.router.request(&id).cloned()))
        .collect();
    assert!(!changed.is_empty());
    base.apply_delta(d.router.state().head_copy(), changed);
    assert!(base == *d.router.state(), "indexes included");
}
