//! Tests of the trail as files: chaining, reopening, torn tails, list entries, rotation and
//! verification across files, and admission (floor, budget).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::auth::Role;
use crate::domain::{OdsCode, Timestamp};
use crate::engine::ManualClock;

const T0: i64 = 1_700_000_000_000;

fn trust(org: &str) -> Principal {
    Principal {
        org: OdsCode::parse(org).unwrap(),
        role: Role::Trust,
        via: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn log_with(dir: &Path, options: AuditOptions, clock: Arc<ManualClock>, n: usize) {
    let (log, writer) = AuditLog::open(dir, options, clock).unwrap();
    let who = trust("RJ1");
    let rt = runtime();
    for _ in 0..n {
        rt.block_on(log.record(&who, Action::RequestGet, Some(&RequestId::generate())))
            .unwrap();
    }
    writer.close();
}

fn log_some(dir: &Path, n: usize) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    log_with(dir, AuditOptions::default(), clock, n);
}

fn intact(dir: &Path) -> (u64, usize) {
    match verify(dir).unwrap() {
        Verdict::Intact { entries, files, .. } => (entries, files),
        Verdict::Broken(b) => panic!("{b}"),
    }
}

fn broken(dir: &Path) -> Broken {
    match verify(dir).unwrap() {
        Verdict::Broken(b) => b,
        v => panic!("expected a break, got {v:?}"),
    }
}

fn entries_of(path: &Path) -> Vec<AuditEntry> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_reopened_log_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    log_some(dir.path(), 3);
    log_some(dir.path(), 2);
    assert_eq!(intact(dir.path()), (5, 1));
}

#[test]
fn lines_parse_back_as_entries_with_the_request_id_only_when_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    let (log, writer) = AuditLog::open(dir.path(), AuditOptions::default(), clock).unwrap();
    let who = Principal {
        org: OdsCode::parse("RJ1").unwrap(),
        role: Role::Lab,
        via: None,
    };
    let id = RequestId::generate();
    let rt = runtime();
    rt.block_on(log.record(&who, Action::JobAccept, Some(&id)))
        .unwrap();
    rt.block_on(log.record(&who, Action::OffersWatch, None))
        .unwrap();
    writer.close();
    let text = fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
    let entries = entries_of(&dir.path().join(AUDIT_FILE));
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].request_id, Some(id.to_string()));
    assert_eq!(
        (entries[0].org.as_str(), entries[0].role.as_str()),
        ("RJ1", "lab")
    );
    assert_eq!(entries[0].action, "job.accept");
    assert!(!text.lines().nth(1).unwrap().contains("request_id"));
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(entries[1].hash, entries[1].compute_hash());
}

#[test]
fn a_list_is_one_compact_entry_found_by_any_request_it_named() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    let (log, writer) = AuditLog::open(dir.path(), AuditOptions::default(), clock).unwrap();
    let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::generate()).collect();
    let rt = runtime();
    rt.block_on(log.record_list(&trust("RJ1"), Action::RequestList, ids.clone()))
        .unwrap();
    // An empty page read nothing, so it records nothing.
    rt.block_on(log.record_list(&trust("RJ1"), Action::RequestList, []))
        .unwrap();
    writer.close();
    let path = dir.path().join(AUDIT_FILE);
    let entries = entries_of(&path);
    assert_eq!(entries.len(), 1);
    let listed: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(entries[0].request_ids.as_deref(), Some(&listed[..]));
    assert_eq!(entries[0].request_id, None);
    assert_eq!(entries[0].hash, entries[0].compute_hash());
    // The charge made for it is no less than what it took.
    let bytes = fs::metadata(&path).unwrap().len();
    assert!(bytes <= entry_bytes(1000, None), "{bytes}");

    let mut out = Vec::new();
    let verdict = export(dir.path(), &mut out, Some(&listed[500])).unwrap();
    assert!(matches!(verdict, Verdict::Intact { entries: 1, .. }));
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    let mut out = Vec::new();
    export(
        dir.path(),
        &mut out,
        Some(&RequestId::generate().to_string()),
    )
    .unwrap();
    assert!(out.is_empty());
}

#[test]
fn a_line_written_before_list_entries_existed_still_verifies() {
    // Written by the broker before entries could name several requests.
    let old = r#"{"seq":1,"time_ms":1700000000000,"org":"RJ1","role":"trust","action":"request.list","request_id":"0190f0a2-7b3c-7d4e-8f00-112233445566","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","hash":"0712ff41ddca34d8188a4cb4759acf160b461992691001742613660555363341"}"#;
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(AUDIT_FILE), format!("{old}\n")).unwrap();
    assert_eq!(intact(dir.path()), (1, 1));
    log_some(dir.path(), 2);
    assert_eq!(intact(dir.path()), (3, 1));
    let mut out = Vec::new();
    export(
        dir.path(),
        &mut out,
        Some("0190f0a2-7b3c-7d4e-8f00-112233445566"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
}

#[test]
fn a_torn_tail_is_dropped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    log_some(dir.path(), 2);
    let path = dir.path().join(AUDIT_FILE);
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"seq\":3,\"ti").unwrap();
    drop(f);
    log_some(dir.path(), 1);
    assert_eq!(intact(dir.path()), (3, 1));
}

#[test]
fn a_torn_tail_longer_than_a_read_block_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    log_some(dir.path(), 2);
    let path = dir.path().join(AUDIT_FILE);
    let whole = fs::metadata(&path).unwrap().len();
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&vec![b'x'; 200_000]).unwrap();
    drop(f);
    writer::drop_torn_tail(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    log_some(dir.path(), 1);
    assert_eq!(intact(dir.path()), (3, 1));
}

#[test]
fn the_last_entry_is_read_from_the_end_whatever_the_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(AUDIT_FILE);
    assert_eq!(chain::last_entry(&path).unwrap(), None);
    log_some(dir.path(), 5);
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let last: AuditEntry = serde_json::from_str(lines[4]).unwrap();
    assert_eq!(last.seq, 5);
    let n = lines[4].len();
    // Blocks smaller than a line, about a line, and larger than the whole log.
    let blocks = [1, 7, n - 1, n, n + 1, n + 2, 4096, 1 << 20];
    let found = |path: &Path| blocks.map(|block| chain::last_entry_by_blocks(path, block).unwrap());
    assert_eq!(found(&path), blocks.map(|_| Some(last.clone())));

    // Lines that are not entries after it (a write cut short, damage) are passed over.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"seq\":6,\"ti\nnot an entry\n\n{\"seq\":7")
        .unwrap();
    drop(f);
    assert_eq!(found(&path), blocks.map(|_| Some(last.clone())));

    // The first line is found with no newline before it, and without one after it.
    let first: AuditEntry = serde_json::from_str(lines[0]).unwrap();
    fs::write(&path, lines[0]).unwrap();
    assert_eq!(found(&path), blocks.map(|_| Some(first.clone())));
    fs::write(&path, "not an entry\n").unwrap();
    assert_eq!(found(&path), blocks.map(|_| None));
}

/// Rotation after about three entries a file.
fn small_files() -> AuditOptions {
    AuditOptions {
        rotate_bytes: 3 * 250,
        rotate_daily: false,
    }
}

#[test]
fn rotation_by_size_continues_the_chain_into_the_next_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    log_with(dir.path(), small_files(), clock.clone(), 10);
    // Reopened, it finds the chain's end and carries on rotating.
    log_with(dir.path(), small_files(), clock, 10);
    let files = chain_files(dir.path()).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(intact(dir.path()), (20, files.len()));
    let mut prev: Option<AuditEntry> = None;
    for file in &files {
        let entries = entries_of(&file.path);
        let first = &entries[0];
        if let Some(named) = file.named_seq {
            assert_eq!(file.name(), rotated_name(named));
            assert_eq!(first.seq, named, "{}", file.name());
            assert!(fs::metadata(&file.path).unwrap().len() >= small_files().rotate_bytes);
        }
        match &prev {
            Some(p) => assert_eq!(
                (first.seq, &first.prev_hash),
                (p.seq + 1, &p.hash),
                "{}",
                file.name()
            ),
            None => assert_eq!(first.prev_hash, GENESIS),
        }
        prev = entries.last().cloned();
    }
}

#[test]
fn a_new_day_starts_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    let daily = AuditOptions {
        rotate_bytes: 0,
        rotate_daily: true,
    };
    log_with(dir.path(), daily, clock.clone(), 3);
    clock.advance(Duration::from_secs(60));
    log_with(dir.path(), daily, clock.clone(), 1);
    assert_eq!(intact(dir.path()), (4, 1));
    clock.advance(Duration::from_secs(24 * 3600));
    log_with(dir.path(), daily, clock, 2);
    assert_eq!(intact(dir.path()), (6, 2));
    let files = chain_files(dir.path()).unwrap();
    assert_eq!(files[0].name(), rotated_name(1));
    assert_eq!(entries_of(&files[1].path).len(), 2);
}

#[test]
fn the_chain_is_found_in_the_rotated_file_after_a_crash_mid_rotation() {
    let dir = tempfile::tempdir().unwrap();
    log_some(dir.path(), 3);
    // Renamed, and the new audit.log not yet made: what a crash between the two steps leaves.
    fs::rename(
        dir.path().join(AUDIT_FILE),
        dir.path().join(rotated_name(1)),
    )
    .unwrap();
    log_some(dir.path(), 2);
    assert_eq!(intact(dir.path()), (5, 2));
    assert_eq!(entries_of(&dir.path().join(AUDIT_FILE))[0].seq, 4);
}

#[test]
fn a_missing_middle_file_is_caught_and_the_gap_named() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    log_with(dir.path(), small_files(), clock, 12);
    let files = chain_files(dir.path()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    let second = files[1].named_seq.unwrap();
    let third = &files[2];
    fs::remove_file(&files[1].path).unwrap();
    let b = broken(dir.path());
    assert_eq!((b.file.as_str(), b.line), (third.name().as_str(), 1), "{b}");
    assert!(
        b.reason.contains(&format!("entries {second} to")) && b.reason.contains("missing"),
        "{b}"
    );
}

#[test]
fn a_renamed_or_reordered_file_is_caught_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    log_with(dir.path(), small_files(), clock, 12);
    let files = chain_files(dir.path()).unwrap();
    let (a, b) = (&files[0].path, &files[1].path);
    // Swap the first two files' names.
    let tmp = dir.path().join("swap");
    fs::rename(a, &tmp).unwrap();
    fs::rename(b, a).unwrap();
    fs::rename(&tmp, b).unwrap();
    let found = broken(dir.path());
    assert_eq!(found.file, files[0].name(), "{found}");
    assert!(found.reason.contains("named for entry 1"), "{found}");
    assert!(found.to_string().contains(&files[0].name()), "{found}");
}

#[test]
fn an_edit_in_a_rotated_file_is_caught_there() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    log_with(dir.path(), small_files(), clock, 12);
    let files = chain_files(dir.path()).unwrap();
    let text = fs::read_to_string(&files[1].path).unwrap();
    fs::write(&files[1].path, text.replacen("\"RJ1\"", "\"RJZ\"", 1)).unwrap();
    let b = broken(dir.path());
    assert_eq!((b.file, b.line), (files[1].name(), 1));
    assert!(b.reason.contains("edited"), "{}", b.reason);
}

#[test]
fn an_organisation_over_its_audit_budget_is_refused_while_another_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    let limiter = RateLimiter::new(1000, 1000, clock.clone()).with_audit_budget(40_000, 80_000);
    let (log, writer) = AuditLog::open(dir.path(), AuditOptions::default(), clock.clone()).unwrap();
    let log = log.with_budget(limiter);
    let page = || (0..1000).map(|_| RequestId::generate()).collect::<Vec<_>>();
    let rt = runtime();
    let (rj1, rjz) = (trust("RJ1"), trust("RJZ"));
    for _ in 0..2 {
        rt.block_on(log.record_list(&rj1, Action::RequestList, page()))
            .unwrap();
    }
    let err = rt
        .block_on(log.record_list(&rj1, Action::RequestList, page()))
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    assert!(err.to_string().contains("audit"), "{err}");
    rt.block_on(log.record_list(&rjz, Action::RequestList, page()))
        .unwrap();
    // The budget refills with time.
    clock.advance(Duration::from_secs(1));
    rt.block_on(log.record_list(&rj1, Action::RequestList, page()))
        .unwrap();
    writer.close();
    // The refused read wrote nothing.
    assert_eq!(intact(dir.path()), (4, 1));
}

#[test]
fn below_the_free_space_floor_audited_calls_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
    let free = Arc::new(std::sync::atomic::AtomicU64::new(10_000));
    let probe_free = free.clone();
    let floor = DiskFloor::with_probe(
        dir.path(),
        5_000,
        Box::new(move |_| Ok(probe_free.load(Ordering::Relaxed))),
        None,
    );
    floor.refresh();
    let (log, writer) = AuditLog::open(dir.path(), AuditOptions::default(), clock).unwrap();
    let log = log.with_floor(floor.clone());
    let rt = runtime();
    let who = trust("RJ1");
    rt.block_on(log.record(&who, Action::RequestGet, Some(&RequestId::generate())))
        .unwrap();
    free.store(4_999, Ordering::Relaxed);
    floor.refresh();
    let err = rt
        .block_on(log.record(&who, Action::RequestGet, Some(&RequestId::generate())))
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("free-space floor"), "{err}");
    free.store(6_000, Ordering::Relaxed);
    floor.refresh();
    rt.block_on(log.record(&who, Action::RequestGet, Some(&RequestId::generate())))
        .unwrap();
    writer.close();
    assert_eq!(intact(dir.path()), (2, 1));
}

#[test]
fn every_action_reads_back_from_its_name_and_its_journal_code() {
    // Exhaustive: a new action fails to compile here until it is placed in `Action::ALL`.
    fn place(a: Action) -> usize {
        match a {
            Action::RequestSubmit => 0,
            Action::RequestGet => 1,
            Action::RequestList => 2,
            Action::RequestCancel => 3,
            Action::RequestWatch => 4,
            Action::OffersWatch => 5,
            Action::JobList => 6,
            Action::JobGet => 7,
            Action::JobAccept => 8,
            Action::JobDecline => 9,
            Action::JobReceive => 10,
            Action::JobResults => 11,
            Action::JobFail => 12,
            Action::LabCapacity => 13,
            Action::LabStatus => 14,
            Action::CoordinatorOverview => 15,
            Action::CoordinatorLabStatus => 16,
            Action::CoordinatorReassign => 17,
        }
    }
    let mut codes = std::collections::BTreeSet::new();
    for (i, a) in Action::ALL.into_iter().enumerate() {
        assert_eq!(place(a), i);
        assert_eq!(Action::parse(a.as_str()), Some(a));
        assert_eq!(Action::from_code(a.code()), Some(a));
        assert!(codes.insert(a.code()), "{a:?} shares its code");
    }
    assert_eq!(Action::parse("request.delete"), None);
    assert_eq!(Action::from_code(0), None);
}
