//! The engine driven directly, with a journal that records each batch and can be held or made to
//! fail, and a manual clock: group commit, replies only after durability and in decision order,
//! a drain at close, timers that fire with no command, and the fatal hook on a failed journal or
//! audit write.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::auth::Role;
use crate::config::Config;
use crate::domain::{OdsCode, Priority, RequestState};
use crate::routing::fixtures;
use crate::store::StoreError;

const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);
/// The longest any wait here may take before the test fails (never reached when it passes).
const BOUND: Duration = Duration::from_secs(10);

/// A journal that records each batch; appends may wait for permits, or fail.
#[derive(Debug, Clone, Default)]
struct Recorder {
    batches: Arc<Mutex<Vec<Vec<Entry>>>>,
    /// Appends begun, held or not.
    begun: Arc<AtomicUsize>,
    /// When held, each append waits for a permit.
    held: Arc<AtomicBool>,
    permits: Arc<(Mutex<usize>, Condvar)>,
    fail: Arc<AtomicBool>,
    /// Keeps the bytes handed with each batch, as the file journal does.
    carries: bool,
    carried: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn held() -> Self {
        let r = Self::default();
        r.held.store(true, Ordering::SeqCst);
        r
    }

    fn carrying() -> Self {
        Self {
            carries: true,
            ..Self::default()
        }
    }

    fn carried(&self) -> Vec<Vec<u8>> {
        self.carried.lock().unwrap().clone()
    }

    fn release(&self, n: usize) {
        let (permits, cv) = &*self.permits;
        *permits.lock().unwrap() += n;
        cv.notify_all();
    }

    fn batches(&self) -> Vec<Vec<Entry>> {
        self.batches.lock().unwrap().clone()
    }
}

impl Journal for Recorder {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.begun.fetch_add(1, Ordering::SeqCst);
        if self.held.load(Ordering::SeqCst) {
            let (permits, cv) = &*self.permits;
            let mut p = cv
                .wait_timeout_while(permits.lock().unwrap(), BOUND, |p| *p == 0)
                .unwrap()
                .0;
            assert!(*p > 0, "an append waited for a permit that never came");
            *p -= 1;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Io(std::io::Error::other("disk gone")));
        }
        self.batches.lock().unwrap().push(entries.to_vec());
        Ok(())
    }

    fn carrying_from(&self) -> Option<u64> {
        let entries = self
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum::<usize>();
        self.carries.then_some(entries as u64)
    }

    fn append_carrying(&mut self, entries: &[Entry], carried: &[u8]) -> Result<(), StoreError> {
        assert!(self.carries, "asked to carry by a journal that cannot");
        self.append(entries)?;
        self.carried.lock().unwrap().push(carried.to_vec());
        Ok(())
    }
}

struct Harness {
    engine: Engine,
    sequencer: Option<thread::JoinHandle<()>>,
    journal: Recorder,
    clock: Arc<ManualClock>,
    fatal: Arc<Mutex<Vec<String>>>,
    /// Builds commands against the same catalogue as the engine's core.
    commands: Router,
    _audit: crate::audit::AuditWriter,
    _dir: tempfile::TempDir,
}

fn demo_router() -> Router {
    Config::demo()
        .expect("demo config")
        .directory()
        .router(Arc::new(crate::routing::DefaultPolicy))
}

impl Harness {
    fn start(journal: Recorder) -> Self {
        Self::start_in(journal, tempfile::tempdir().expect("tempdir"))
    }

    fn start_in(journal: Recorder, dir: tempfile::TempDir) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let router = demo_router();
        let metrics = Arc::new(Metrics::new());
        let views = Arc::new(Views::new(&router, Vec::new(), 60_000, metrics.clone()));
        let (audit, writer) =
            AuditLog::open(dir.path(), Default::default(), clock.clone()).expect("audit");
        let fatal = Arc::new(Mutex::new(Vec::new()));
        let seen = fatal.clone();
        let (engine, sequencer) = Engine::start(Parts {
            router,
            journal: Box::new(journal.clone()),
            views,
            clock: clock.clone(),
            metrics,
            audit,
            on_fatal: Arc::new(move |f: &Fatal| seen.lock().unwrap().push(f.to_string())),
        })
        .expect("engine");
        Self {
            engine,
            sequencer: Some(sequencer),
            journal,
            clock,
            fatal,
            commands: demo_router(),
            _audit: writer,
            _dir: dir,
        }
    }

    fn submit(&self, order: usize) -> Command {
        fixtures::submit(&self.commands, "RJ1", order, Priority::Stat, T0)
    }

    /// Runs `command` in its own task.
    fn spawn(&self, command: Command) -> tokio::task::JoinHandle<Result<Reply, Error>> {
        let engine = self.engine.clone();
        tokio::spawn(async move { engine.execute(command).await })
    }

    /// Commands decided and not yet taken by the syncer.
    async fn undrained(&self) -> usize {
        self.engine.handle.0.decided.lock().await.entries.len()
    }

    /// The syncer has stopped (joined within the bound).
    async fn join(&mut self) {
        let sequencer = self.sequencer.take().expect("joined once");
        tokio::time::timeout(BOUND, tokio::task::spawn_blocking(move || sequencer.join()))
            .await
            .expect("the syncer stopped")
            .expect("join")
            .expect("the syncer did not panic");
    }
}

/// Waits (bounded) until `check` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn submitted_id(command: &Command) -> RequestId {
    match command {
        Command::Submit { id, .. } => *id,
        other => panic!("not a submission: {other:?}"),
    }
}

fn entry_ids(batch: &[Entry]) -> Vec<RequestId> {
    batch.iter().map(|e| submitted_id(&e.command)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_decided_during_a_sync_is_the_next_batch_and_answered_only_once_durable() {
    let h = Harness::start(Recorder::held());
    let first = h.submit(0);
    let first_id = submitted_id(&first);
    let first_call = h.spawn(first);
    until("the first batch's append began", || async {
        h.journal.begun.load(Ordering::SeqCst) == 1
    })
    .await;

    // Twenty more, decided one after another while the first sync is held.
    let mut calls = Vec::new();
    let mut ids = Vec::new();
    for order in 1..=20 {
        let command = h.submit(order);
        ids.push(submitted_id(&command));
        calls.push(h.spawn(command));
        until("the command was decided", || async {
            h.undrained().await == order
        })
        .await;
    }
    assert!(
        !first_call.is_finished() && calls.iter().all(|c| !c.is_finished()),
        "a caller was answered before its batch was durable"
    );

    h.journal.release(1);
    let reply = first_call.await.expect("join").expect("first submitted");
    assert!(
        matches!(&reply, Reply::Request { request, .. } if request.id == first_id),
        "{reply:?}"
    );
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "the second batch was answered before its sync"
    );

    h.journal.release(1);
    for (call, id) in calls.into_iter().zip(&ids) {
        match call.await.expect("join").expect("submitted") {
            Reply::Request { request, .. } => assert_eq!(request.id, *id, "a reply went astray"),
            other => panic!("{other:?}"),
        }
    }
    let batches = h.journal.batches();
    assert_eq!(
        batches.len(),
        2,
        "one sync for the first, one for the twenty"
    );
    assert_eq!(entry_ids(&batches[0]), [first_id]);
    assert_eq!(
        entry_ids(&batches[1]),
        ids,
        "journaled in the order decided"
    );
    assert!(h.fatal.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_makes_what_was_decided_durable_and_answers_it_then_refuses_more() {
    let mut h = Harness::start(Recorder::held());
    let first = h.spawn(h.submit(0));
    until("the first batch's append began", || async {
        h.journal.begun.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = h.spawn(h.submit(1));
    let third = h.spawn(h.submit(2));
    until("both were decided", || async { h.undrained().await == 2 }).await;

    h.engine.close();
    let refused = h.engine.execute(h.submit(3)).await;
    assert!(
        matches!(refused, Err(Error::Unavailable(_))),
        "decided after close: {refused:?}"
    );
    h.journal.release(2);
    for call in [first, second, third] {
        call.await
            .expect("join")
            .expect("decided before close, so answered OK");
    }
    h.join().await;
    let journaled: usize = h.journal.batches().iter().map(Vec::len).sum();
    assert_eq!(
        journaled, 3,
        "the three decided before close, and nothing after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_with_no_command_once_the_clock_passes_them() {
    let h = Harness::start(Recorder::default());
    let command = h.submit(0);
    let id = submitted_id(&command);
    h.engine.execute(command).await.expect("submitted");
    assert_ne!(
        h.engine.views().request(&id).map(|r| r.state),
        Some(RequestState::Expired)
    );

    // Past any sample's stability: the timer thread expires it with nobody calling.
    h.clock.advance(Duration::from_secs(48 * 3600));
    until("the request expired", || async {
        h.engine.views().request(&id).map(|r| r.state) == Some(RequestState::Expired)
    })
    .await;
    let batches = h.journal.batches();
    let last = batches.last().and_then(|b| b.last()).expect("journaled");
    assert!(
        matches!(last.command, Command::Tick),
        "the expiry was journaled as a tick: {:?}",
        last.command
    );
    assert!(
        last.time >= T0.plus_millis(48 * 3_600_000),
        "at the clock's time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_append_calls_the_hook_answers_unavailable_and_decides_nothing_more() {
    let mut h = Harness::start(Recorder::default());
    h.engine
        .execute(h.submit(0))
        .await
        .expect("before the failure");
    h.journal.fail.store(true, Ordering::SeqCst);

    let command = h.submit(1);
    let id = submitted_id(&command);
    let answer = h.engine.execute(command).await;
    assert!(
        matches!(answer, Err(Error::Unavailable(_))),
        "a batch that is not durable is not answered OK: {answer:?}"
    );
    let fatal = h.fatal.lock().unwrap().clone();
    assert_eq!(fatal.len(), 1, "{fatal:?}");
    assert!(fatal[0].starts_with("journal append failed"), "{fatal:?}");
    assert!(
        h.engine.views().request(&id).is_none(),
        "readers never see an undurable change"
    );
    let after = h.engine.execute(h.submit(2)).await;
    assert!(matches!(after, Err(Error::Unavailable(_))), "{after:?}");
    h.join().await;
    assert_eq!(
        h.journal.batches().len(),
        1,
        "only the batch before the failure"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_audit_entries_cannot_be_written_is_never_journaled() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every write to the trail fails as on a full disk.
    std::os::unix::fs::symlink("/dev/full", dir.path().join(crate::audit::AUDIT_FILE))
        .expect("symlink");
    let mut h = Harness::start_in(Recorder::default(), dir);
    let trust = Principal {
        org: OdsCode::parse("RJ1").expect("ods"),
        role: Role::Trust,
        via: None,
    };
    let answer = h
        .engine
        .execute_as(
            Asked {
                who: &trust,
                action: Action::RequestSubmit,
                request: None,
                reason: None,
            },
            h.submit(0),
        )
        .await;
    assert!(matches!(answer, Err(Error::Unavailable(_))), "{answer:?}");
    let fatal = h.fatal.lock().unwrap().clone();
    assert_eq!(fatal.len(), 1, "{fatal:?}");
    assert!(fatal[0].starts_with("audit write failed"), "{fatal:?}");
    h.join().await;
    assert!(
        h.journal.batches().is_empty(),
        "a change was journaled unaudited"
    );
}

fn trust() -> Principal {
    Principal {
        org: OdsCode::parse("RJ1").expect("ods"),
        role: Role::Trust,
        via: None,
    }
}

async fn submit_as(h: &Harness, who: &Principal, order: usize) -> Result<Reply, Error> {
    let asked = Asked {
        who,
        action: Action::RequestSubmit,
        request: None,
        reason: None,
    };
    h.engine.execute_as(asked, h.submit(order)).await
}

fn request_id(reply: &Reply) -> String {
    match reply {
        Reply::Request { request, .. } => request.id.to_string(),
        other => panic!("not a request: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_carries_the_audit_records_makes_both_durable_with_one_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = dir.path().to_path_buf();
    let mut h = Harness::start_in(Recorder::carrying(), dir);
    let who = trust();
    let first = submit_as(&h, &who, 0).await.expect("submitted");
    let second = submit_as(&h, &who, 1).await.expect("submitted");

    // Each answered change's record travelled in its batch's append, naming the batch.
    let carried = h.journal.carried();
    let records: Vec<_> = carried
        .iter()
        .flat_map(|c| crate::audit::journaled::decode(c).expect("decodes"))
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(carried.len(), h.journal.batches().len());
    let mut lsn = 0;
    for (bytes, batch) in carried.iter().zip(h.journal.batches()) {
        let text = format!("{:?}", crate::audit::journaled::decode(bytes).unwrap());
        assert!(text.contains(&format!("lsn: Some({lsn})")), "{text}");
        lsn += batch.len() as u64;
    }

    // And reached the trail without a sync of its own being waited for.
    h.engine.close();
    h.join().await;
    let Harness { _audit: writer, .. } = h;
    tokio::task::spawn_blocking(move || writer.close())
        .await
        .unwrap();
    let lines = std::fs::read_to_string(trail.join(crate::audit::AUDIT_FILE)).unwrap();
    for id in [request_id(&first), request_id(&second)] {
        assert!(
            lines
                .lines()
                .any(|l| l.contains(&id) && l.contains("\"lsn\":")),
            "{id} not in the trail: {lines}"
        );
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_that_fails_after_a_carried_append_refuses_what_follows_and_the_record_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/dev/full", dir.path().join(crate::audit::AUDIT_FILE))
        .expect("symlink");
    let mut h = Harness::start_in(Recorder::carrying(), dir);
    let who = trust();
    // The record is durable with the change in the journal, so the change is answered OK.
    let reply = submit_as(&h, &who, 0)
        .await
        .expect("durable with its record");
    let carried = h.journal.carried();
    assert_eq!(carried.len(), 1);
    let text = format!(
        "{:?}",
        crate::audit::journaled::decode(&carried[0]).unwrap()
    );
    assert!(text.contains(&request_id(&reply)), "{text}");
    // Once the trail has failed, nothing more is decided.
    until("the trail refuses", || {
        let engine = h.engine.clone();
        let who = who.clone();
        async move {
            let asked = Asked {
                who: &who,
                action: Action::RequestSubmit,
                request: None,
                reason: None,
            };
            let command = fixtures::submit(&demo_router(), "RJ1", 9, Priority::Stat, T0);
            matches!(
                engine.execute_as(asked, command).await,
                Err(Error::Unavailable(_))
            )
        }
    })
    .await;
    // Calls decided before the writer failed were journaled with their records; none after.
    let journaled = h.journal.batches().len();
    let refused = submit_as(&h, &who, 10).await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    h.engine.close();
    h.join().await;
    assert_eq!(
        h.journal.batches().len(),
        journaled,
        "nothing decided once refused"
    );
    assert_eq!(
        h.journal.carried().len(),
        journaled,
        "every journaled change carries its record"
    );
}
