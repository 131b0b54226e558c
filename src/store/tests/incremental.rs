//! Incremental snapshots: the chain restores the state exactly, its trigger, and damage refused.

use super::*;

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
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
        let err =
            open(dir.path(), directory(), policy(), StoreOptions::default()).expect_err("refused");
        assert!(
            matches!(&err, StoreError::Corrupt(why) if why.contains(&deltas[0])),
            "a flip at byte {at}: {err}"
        );
    }
    fs::remove_file(&first).expect("remove");
    let err =
        open(dir.path(), directory(), policy(), StoreOptions::default()).expect_err("refused");
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
    let r = open(dir.path(), other.clone(), policy(), StoreOptions::default()).expect("applied");
    assert_eq!(r.incremental, 2);
    assert_eq!(
        fingerprint(&r.router, &r.events).requests,
        expected.requests
    );
    drop(r);
    let names = file_names(dir.path());
    assert!(names.iter().all(|n| !n.starts_with("delta-")), "{names:?}");
    let r = open(dir.path(), other, policy(), StoreOptions::default()).expect("reopen");
    assert_eq!((r.incremental, r.replayed), (0, 0));
}

#[test]
fn the_trigger_takes_incremental_snapshots_until_they_add_up_to_half_the_full_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        snapshot_min_bytes: 1,
        ..StoreOptions::default()
    };
    let r = open(dir.path(), directory(), policy(), options).expect("open");
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
    let mut d = Driver::recovered(open(dir.path(), directory(), policy(), options).expect("open"));
    history(&mut d);
    d.delta();
    d.journal.wait_for_writer();
    let now = T0.plus_millis(40 * MINUTE_MS);
    d.submit_stat(300, now);
    drop(d);
    // The entries after the incremental snapshot are replayed, not noted by the new caller: only
    // a full snapshot covers them.
    let mut d =
        Driver::recovered(open(dir.path(), directory(), policy(), options).expect("reopen"));
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
        .adopt_directory(&shorter.router(policy()), later, &mut outcome)
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
