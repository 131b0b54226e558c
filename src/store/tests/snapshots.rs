//! Full snapshots: every format still read, events sharing their requests, damage refused.

use super::*;

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
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
    let file = super::codec::framed(b"LABAIDS1", &payload);
    fs::write(dir.path().join(super::segment::snapshot_name(lsn)), file).expect("write");
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
    super::codec::write_snapshot(snap_dir.path(), lsn, &directory(), state, &d.events)
        .expect("write");
    let snap = super::codec::read_snapshot(
        &snap_dir.path().join(super::segment::snapshot_name(lsn)),
        policy(),
    )
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
    super::codec::write_snapshot_v2(dir.path(), lsn, &directory(), &d.router, &d.events)
        .expect("write");
    drop(d);
    let head = fs::read(dir.path().join(super::segment::snapshot_name(lsn))).expect("read");
    assert_eq!(&head[..8], b"LABAIDS2");
    let r = open(dir.path(), directory(), policy(), StoreOptions::default()).expect("recover");
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
    let path = dir.path().join(super::segment::snapshot_name(lsn));
    let mut file = fs::read(&path).expect("read");
    file[7] = b'9';
    fs::write(&path, file).expect("write");
    let err =
        open(dir.path(), directory(), policy(), StoreOptions::default()).expect_err("refused");
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
    let path = dir.path().join(super::segment::snapshot_name(lsn));
    let good = fs::read(&path).expect("read");
    assert_eq!(&good[..8], b"LABAIDS3");
    // The length, the table, the head, the events and the requests: every byte is covered.
    for at in (8..good.len()).step_by(good.len() / 97 + 1) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        fs::write(&path, &bad).expect("write");
        let err = super::codec::read_snapshot(&path, policy()).expect_err("refused");
        assert!(
            matches!(err, StoreError::Corrupt(_)),
            "a flip at byte {at}: {err}"
        );
    }
}

#[test]
fn many_tiny_request_sections_reserve_room_only_for_the_requests_they_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Driver::open(dir.path());
    history(&mut d);
    d.snapshot();
    d.journal.close().expect("close");
    let lsn = d.journal.entries();
    let held = d.router.request_count();
    drop(d);
    let path = dir.path().join(super::segment::snapshot_name(lsn));
    let good = fs::read(&path).expect("read");
    // 64 more sections, each an empty chunk of requests (one byte), with a valid checksum: the
    // reader used to reserve a full chunk's room (4,096 requests) for each (seen while fixing
    // what the snapshot_read fuzz target found).
    let count = u32::from_le_bytes(good[20..24].try_into().expect("count")) as usize;
    let (table, sections) = good[24..].split_at(count * 8);
    let extra = 64;
    let mut payload = ((count + extra) as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(table);
    payload.extend(std::iter::repeat_n(1u64.to_le_bytes(), extra).flatten());
    payload.extend_from_slice(sections);
    payload.extend(std::iter::repeat_n(0u8, extra));
    let magic: [u8; 8] = good[..8].try_into().expect("magic");
    let file = super::codec::framed(&magic, &payload);
    fs::write(&path, &file).expect("write");
    let header: [u8; 20] = file[..20].try_into().expect("header");
    let parts = super::codec::read_parts::<super::codec::Head, _>(
        &fs::File::open(&path).expect("open"),
        &header,
    )
    .unwrap_or_else(|_| panic!("the file reads"));
    assert_eq!(parts.requests.len(), held);
    assert!(
        parts.requests.capacity() < held + 4096,
        "room for {} requests",
        parts.requests.capacity()
    );
}
