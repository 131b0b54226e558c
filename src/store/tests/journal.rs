//! The journal against its promises: what was appended comes back, a torn tail is dropped and
//! never misread, damage in the middle stops the start, a changed directory is pinned.

use super::*;

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
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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

/// Puts the high-water mark back to `entries`, as a crash during the last append's sync leaves
/// it: that batch was never acknowledged, so a start may drop it if it is torn.
fn never_synced_after(dir: &Path, entries: u64) {
    drop(super::loss::Mark::create(dir, entries).expect("mark"));
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
    let synced = d.journal.entries();
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
    never_synced_after(dir.path(), synced);
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
        let r = open(copy.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
    let synced = d.journal.entries();
    let now = T0.plus_millis(32 * MINUTE_MS);
    d.batch(now, vec![submit(&d.router, "RJ1", 99, Priority::Stat, now)]);
    let whole = d.journal.segment_end();
    d.after_batch.pop();
    let without_last = d.after_batch.pop().expect("state");
    drop(d);
    never_synced_after(dir.path(), synced);
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
        let r = open(copy.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
        let err = open(copy.path(), directory(), policy(), StoreOptions::default())
            .expect_err("damage in the middle");
        assert!(
            matches!(&err, StoreError::Lost(l) if l.what.contains("valid records after it")),
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
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
        4,
        "the old segment and snapshot are removed (LOCK and synced.mark stay): {names:?}"
    );
}

#[test]
fn a_changed_directory_is_applied_and_pinned_by_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Driver::open(dir.path()));
    let mut other = directory();
    other.retention_ms += 1;
    let recovered =
        open(dir.path(), other.clone(), policy(), StoreOptions::default()).expect("applied");
    drop(recovered);
    let newest = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .max()
        .expect("a snapshot");
    let snapshot = super::codec::read_snapshot(&newest, policy()).expect("snapshot");
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
    let recovered = open(dir.path(), shorter, policy(), StoreOptions::default()).expect("applied");
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
    let err =
        open(dir.path(), directory(), policy(), StoreOptions::default()).expect_err("refused");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn one_sync_per_entry_reads_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = open(
        dir.path(),
        directory(),
        policy(),
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

/// A policy that never offers: every submission waits.
#[derive(Debug)]
struct NeverOffers;

impl crate::routing::RoutingPolicy for NeverOffers {
    fn choose(
        &self,
        _: &crate::routing::RouteQuery<'_>,
        _: &crate::routing::Labs,
        _: Timestamp,
    ) -> Option<crate::routing::Placement> {
        None
    }
}

#[test]
fn recovery_routes_with_the_policy_it_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    d.submit_stat(1, T0);
    assert!(
        d.router.queue().in_order().is_empty(),
        "the default offers it"
    );
    d.snapshot();
    d.journal.close().expect("close");
    drop(d);
    let r = open(
        dir.path(),
        directory(),
        Arc::new(NeverOffers),
        StoreOptions::default(),
    )
    .expect("recover");
    let mut d = Driver::recovered(r);
    d.submit_stat(2, T0);
    assert_eq!(
        d.router.queue().in_order().len(),
        1,
        "the recovered core routes with the policy it was given, which offers nothing"
    );
}

#[test]
fn a_final_snapshot_that_cannot_be_written_stops_cleanly_with_the_journal_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    for order in 0..5 {
        d.submit_stat(order, T0);
    }
    let expected = fingerprint(&d.router, &d.events);
    assert_eq!(d.journal.snapshot_due(true), Some(SnapshotKind::Full));
    // A directory where the snapshot's temporary file must go: creating it fails with a real
    // I/O error, as a write on a full disk would, and no hook in the store is needed.
    let blocker = dir.path().join(format!(
        "{}.tmp",
        super::segment::snapshot_name(d.journal.entries())
    ));
    fs::create_dir(&blocker).expect("blocker");
    d.snapshot();
    d.journal
        .close()
        .expect("a failed final snapshot still closes cleanly");
    drop(d);
    assert!(
        !file_names(dir.path())
            .iter()
            .any(|n| n.ends_with(".snap") && n != "snapshot-00000000000000000000.snap"),
        "no snapshot was written"
    );
    fs::remove_dir(&blocker).expect("free the space");
    assert_eq!(
        recovered(dir.path()),
        expected,
        "the journal held every entry"
    );
}

#[test]
fn bytes_carried_with_a_batch_come_back_in_order_and_batches_without_carry_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    let first = d.journal.carrying_from().expect("the file journal carries");
    assert_eq!(first, d.journal.entries());
    let now = T0.plus_millis(MINUTE_MS);
    let entries: Vec<Entry> = (0..3)
        .map(|i| {
            let command = submit(&d.router, "RJ1", 90 + i, Priority::Urgent, now);
            let mut outcome = Outcome::default();
            d.router
                .apply(&command, now, &mut outcome)
                .expect("applies");
            d.events.append(&mut outcome.events);
            Entry { time: now, command }
        })
        .collect();
    d.journal
        .append_carrying(&entries[..2], b"first batch's records")
        .expect("append");
    d.journal.append(&entries[2..]).expect("append");
    assert_eq!(d.journal.carrying_from(), Some(first + 3));
    d.journal
        .append_carrying(&[], b"a batch of no entries")
        .expect("append");
    let expected = fingerprint(&d.router, &d.events);
    drop(d);
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
    assert_eq!(
        r.carried,
        [&b"first batch's records"[..], &b"a batch of no entries"[..]]
    );
    assert_eq!(fingerprint(&r.router, &r.events), expected);
}
