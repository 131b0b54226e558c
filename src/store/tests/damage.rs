//! Damage from outside: a journal deleted, cut or with a flipped byte in an acknowledged record
//! is refused at a start, naming the file, the position and the changes missing, unless the
//! operator accepts the loss.

use super::*;
use crate::store::segment::SEGMENT_HEADER;

/// A store with a full snapshot and, after it, five acknowledged batches of one entry each in
/// the newest segment (closed without a final snapshot, as by a crash).
struct Damaged {
    dir: tempfile::TempDir,
    /// Entries the snapshot covers; the newest segment starts there.
    snapshot: u64,
    /// Where each record after the snapshot ends, from the segment's start.
    ends: Vec<u64>,
    /// The state after each of those batches (the first: at the snapshot).
    states: Vec<Fingerprint>,
}

impl Damaged {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Driver::open(dir.path());
        for order in 0..3 {
            d.submit_stat(order, T0);
        }
        d.snapshot();
        d.journal.wait_for_writer();
        let snapshot = d.journal.entries();
        let mut ends = Vec::new();
        let mut states = vec![fingerprint(&d.router, &d.events)];
        for order in 3..8 {
            d.submit_stat(order, T0);
            ends.push(d.journal.segment_end());
            states.push(fingerprint(&d.router, &d.events));
        }
        assert_eq!(d.journal.entries(), snapshot + 5);
        drop(d);
        Self {
            dir,
            snapshot,
            ends,
            states,
        }
    }

    fn segment(&self) -> std::path::PathBuf {
        self.dir.path().join(segment_name(self.snapshot))
    }

    fn cut(&self, len: u64) {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(self.segment())
            .expect("open");
        f.set_len(len).expect("cut");
    }

    fn flip(&self, at: u64) {
        let mut bytes = fs::read(self.segment()).expect("read");
        bytes[at as usize] ^= 0x10;
        fs::write(self.segment(), bytes).expect("write");
    }

    fn open(&self, accept_data_loss: bool) -> Result<Recovered, StoreError> {
        open(
            self.dir.path(),
            directory(),
            policy(),
            StoreOptions {
                accept_data_loss,
                ..StoreOptions::default()
            },
        )
    }

    /// The refusal's loss, checked against what its message says.
    fn refused(&self) -> DataLoss {
        let before = file_names(self.dir.path());
        let err = self.open(false).expect_err("refused");
        let StoreError::Lost(loss) = &err else {
            panic!("not refused for lost changes: {err}");
        };
        let message = err.to_string();
        for part in [
            loss.file.clone(),
            format!("at byte {}", loss.offset),
            format!("{} acknowledged change(s) are missing", loss.missing()),
            "--accept-data-loss".into(),
        ] {
            assert!(message.contains(&part), "{message:?} lacks {part:?}");
        }
        assert_eq!(
            file_names(self.dir.path()),
            before,
            "a refusal changes nothing"
        );
        loss.clone()
    }
}

#[test]
fn a_deleted_newest_segment_refuses_the_start_naming_it_and_the_changes_missing() {
    let s = Damaged::new();
    fs::remove_file(s.segment()).expect("delete");
    let loss = s.refused();
    assert_eq!(loss.file, segment_name(s.snapshot));
    assert_eq!((loss.offset, loss.from, loss.missing()), (0, s.snapshot, 5));
    assert!(loss.what.contains("missing"), "{}", loss.what);
}

#[test]
fn a_segment_cut_to_its_header_refuses_the_start() {
    let s = Damaged::new();
    s.cut(SEGMENT_HEADER as u64);
    let loss = s.refused();
    assert_eq!(loss.file, segment_name(s.snapshot));
    assert_eq!((loss.offset, loss.missing()), (SEGMENT_HEADER as u64, 5));
}

#[test]
fn a_segment_cut_in_the_middle_refuses_the_start_at_a_record_end_or_inside_one() {
    let s = Damaged::new();
    // At the end of the second record: nothing looks damaged, but the journal ends early.
    s.cut(s.ends[1]);
    let loss = s.refused();
    assert_eq!(
        (loss.offset, loss.from, loss.missing()),
        (s.ends[1], s.snapshot + 2, 3)
    );
    // Inside the third: a torn-looking record, but one that was synced and acknowledged.
    let s = Damaged::new();
    s.cut(s.ends[1] + 5);
    let loss = s.refused();
    assert_eq!(
        (loss.offset, loss.from, loss.missing()),
        (s.ends[1], s.snapshot + 2, 3)
    );
}

#[test]
fn a_flipped_byte_in_an_acknowledged_record_refuses_the_start() {
    // In the last record, which looks like a torn tail but was acknowledged.
    let s = Damaged::new();
    s.flip(s.ends[3] + 10);
    let loss = s.refused();
    assert_eq!((loss.offset, loss.missing()), (s.ends[3], 1));
    assert!(loss.what.contains("damaged"), "{}", loss.what);
    // In an older one, with valid records after it.
    let s = Damaged::new();
    s.flip(s.ends[0] + 10);
    let loss = s.refused();
    assert_eq!((loss.offset, loss.missing()), (s.ends[0], 4));
    assert!(
        loss.what.contains("valid records after it"),
        "{}",
        loss.what
    );
}

#[test]
fn a_torn_record_that_was_never_synced_is_still_dropped_quietly() {
    let s = Damaged::new();
    // Half a record past the last acknowledged one: the write a crash cut short.
    let mut frame = Vec::new();
    crate::store::record::frame(b"an append whose sync never returned", &mut frame);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(s.segment())
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, &frame[..frame.len() / 2], s.ends[4])
        .expect("write");
    drop(f);
    let r = s.open(false).expect("a torn tail is no loss");
    assert_eq!(r.lost, None);
    assert!(r.dropped_bytes > 0);
    assert_eq!(&fingerprint(&r.router, &r.events), &s.states[5]);
}

#[test]
fn accept_data_loss_starts_from_what_is_readable_and_says_what_was_dropped() {
    let s = Damaged::new();
    s.flip(s.ends[1] + 10);
    let refused = s.refused();
    let r = s.open(true).expect("accepted");
    assert_eq!(r.lost.as_ref(), Some(&refused), "it says what was dropped");
    assert_eq!(r.lost.as_ref().map(DataLoss::missing), Some(3));
    assert_eq!(&fingerprint(&r.router, &r.events), &s.states[2]);
    // The journal carries on after what was kept, and the next start needs no flag.
    let mut d = Driver::recovered(r);
    d.submit_stat(50, T0);
    let expected = fingerprint(&d.router, &d.events);
    drop(d);
    assert_eq!(recovered(s.dir.path()), expected);
}

#[test]
fn accept_data_loss_sets_later_segments_aside_instead_of_removing_them() {
    let s = Damaged::new();
    // A later segment after a gap: the one between was deleted.
    let later = s.snapshot + 7;
    fs::copy(s.segment(), s.dir.path().join(segment_name(later))).expect("copy");
    fs::remove_file(s.segment()).expect("delete");
    let loss = s.refused();
    assert_eq!(loss.file, segment_name(s.snapshot));
    assert_eq!(loss.missing(), 7);
    let r = s.open(true).expect("accepted");
    assert_eq!(&fingerprint(&r.router, &r.events), &s.states[0]);
    drop(r);
    assert!(
        s.dir
            .path()
            .join(format!("{}.lost", segment_name(later)))
            .exists(),
        "set aside for the operator"
    );
}
