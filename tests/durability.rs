//! Crash test: the real broker binary, SIGKILLed at random moments while several clients submit,
//! accept, result and cancel, restarted on the same data directory each time. After every restart,
//! everything acknowledged before the kill is there, nothing is duplicated, no lab holds more than
//! its capacity, and every watcher's sequence carries on with nothing missed and nothing twice.
//!
//! The seed is printed; `LABAID_CRASH_SEED=<seed>` reruns the same schedule (the broker's own
//! timing still varies). `LABAID_CRASH_CYCLES` changes the number of kills (default 24).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{all_requests, submission_of};
use labaid::client::{Client, ConnectOptions};
use labaid::domain::Timestamp;
use labaid::proto::{self, JobEventKind, Priority, RequestState};
use tokio::task::JoinSet;

const TRUSTS: [&str; 2] = ["RJ1", "RJZ"];
const LABS: [&str; 6] = ["RJ7", "R1H", "RJ2", "RJ6", "RAL", "RAX"];
const TESTS: [&[&str]; 4] = [&["K"], &["FBC"], &["FBC", "UE"], &["CRP"]];

/// A small, seedable generator (splitmix64), so a failing schedule can be rerun.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A change the broker acknowledged, and so must still show after any crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Accepted,
    Received,
    Resulted,
    Cancelled,
}

impl Claim {
    fn allows(self, state: RequestState) -> bool {
        use RequestState as S;
        match self {
            Claim::Accepted => matches!(
                state,
                S::Accepted | S::Received | S::Resulted | S::Failed | S::Cancelled
            ),
            Claim::Received => {
                matches!(state, S::Received | S::Resulted | S::Failed | S::Cancelled)
            }
            Claim::Resulted => state == S::Resulted,
            Claim::Cancelled => state == S::Cancelled,
        }
    }
}

/// What the clients know, across every crash.
#[derive(Debug, Default)]
struct Ledger {
    /// Order number -> (trust, submission, id once acknowledged).
    orders: BTreeMap<String, (String, proto::SubmitRequestRequest, Option<String>)>,
    /// Request id -> acknowledged changes.
    claims: HashMap<String, Vec<Claim>>,
    /// Organisation -> every event seen, as (sequence, request id, kind), in order.
    seen: HashMap<String, Vec<(u64, String, i32)>>,
    /// Broken promises, reported at the end.
    failures: Vec<String>,
    acks: u64,
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    fn last_seq(&self, org: &str) -> u64 {
        self.seen.get(org).and_then(|s| s.last()).map_or(0, |e| e.0)
    }

    /// Records an event a watcher saw; it must come right after the last one.
    fn saw(&mut self, org: &str, sequence: u64, id: String, kind: i32) {
        let last = self.last_seq(org);
        if sequence != last + 1 {
            self.failures.push(format!(
                "{org}: watcher got sequence {sequence} after {last}"
            ));
        }
        self.seen
            .entry(org.to_string())
            .or_default()
            .push((sequence, id, kind));
    }

    fn claim(&mut self, id: &str, claim: Claim) {
        self.acks += 1;
        self.claims.entry(id.to_string()).or_default().push(claim);
    }
}

/// The broker process; killed when dropped, so a failing test leaves nothing behind.
struct Broker {
    child: Child,
    addr: SocketAddr,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--web-listen",
                "off",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            // Small, so that snapshots (and kills during them) happen within the test.
            .args(["--snapshot-min-bytes", "32768"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start labaid-broker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let seen = warnings.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] == "broker serving" {
                    let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_string());
                }
                if v["level"] == "WARN" || v["level"] == "ERROR" {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let w = warnings.lock().unwrap_or_else(|e| e.into_inner());
                panic!("the broker did not start serving; its warnings and errors: {w:#?}");
            }
        };
        Self {
            child,
            addr,
            warnings,
        }
    }

    async fn client(&self, org: &str) -> Client {
        Client::connect(&ConnectOptions {
            addr: format!("http://{}", self.addr),
            token: Some(format!("demo:{org}")),
            connect_timeout: Some(Duration::from_secs(5)),
            tls: None,
        })
        .await
        .expect("connect")
    }

    fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "the broker did not stop cleanly: {exit}");
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn new_submission(rng: &mut Rng, order: &str) -> proto::SubmitRequestRequest {
    let priority = [
        Priority::Stat,
        Priority::Asap,
        Priority::Urgent,
        Priority::Routine,
    ][rng.below(4) as usize];
    let tests = TESTS[rng.below(TESTS.len() as u64) as usize];
    submission_of(order, priority, tests, Timestamp::now().plus_minutes(-20))
}

/// Submits (a retry of every unacknowledged order first), and now and then cancels.
async fn trust_worker(
    broker_client: Client,
    trust: &'static str,
    worker: usize,
    cycle: usize,
    mut rng: Rng,
    ledger: Shared,
) {
    let requests = broker_client.requests();
    let retries: Vec<(String, proto::SubmitRequestRequest)> = {
        let l = lock(&ledger);
        l.orders
            .iter()
            .filter(|(_, (t, _, id))| *t == trust && id.is_none())
            .filter(|(order, _)| order.ends_with(&format!("-w{worker}")))
            .map(|(o, (_, s, _))| (o.clone(), s.clone()))
            .collect()
    };
    // A retry after a crash: the original if it was durable, a new request if not; never two.
    for (order, sub) in retries {
        if let Ok(resp) = requests.clone().submit_request(sub).await {
            let id = resp.into_inner().request.map(|r| r.id).unwrap_or_default();
            let mut l = lock(&ledger);
            l.acks += 1;
            if let Some(entry) = l.orders.get_mut(&order) {
                entry.2 = Some(id);
            }
        }
    }
    // A retry of an acknowledged order returns the original.
    let acked: Vec<(String, proto::SubmitRequestRequest)> = {
        let l = lock(&ledger);
        l.orders
            .values()
            .filter(|(t, _, id)| *t == trust && id.is_some())
            .map(|(_, s, id)| (id.clone().unwrap_or_default(), s.clone()))
            .collect()
    };
    if !acked.is_empty() {
        let (id, sub) = &acked[rng.below(acked.len() as u64) as usize];
        if let Ok(resp) = requests.clone().submit_request(sub.clone()).await {
            let resp = resp.into_inner();
            let got = resp.request.map(|r| r.id).unwrap_or_default();
            if !resp.replayed || &got != id {
                lock(&ledger).failures.push(format!(
                    "order {} resubmitted after a restart gave {got} (replayed {}), not {id}",
                    sub.order_number, resp.replayed
                ));
            }
        }
    }
    for n in 0.. {
        let order = format!("{trust}-c{cycle}-n{n}-w{worker}");
        let sub = new_submission(&mut rng, &order);
        lock(&ledger)
            .orders
            .insert(order.clone(), (trust.to_string(), sub.clone(), None));
        let Ok(resp) = requests.clone().submit_request(sub).await else {
            return;
        };
        let request = resp.into_inner().request.unwrap_or_default();
        {
            let mut l = lock(&ledger);
            l.acks += 1;
            if let Some(entry) = l.orders.get_mut(&order) {
                entry.2 = Some(request.id.clone());
            }
        }
        if rng.below(6) == 0 {
            let cancel = proto::CancelRequestRequest {
                id: request.id.clone(),
                reason: "crash test".into(),
            };
            let cancelled = requests.clone().cancel_request(cancel).await;
            if cancelled.is_ok_and(|r| r.into_inner().state == RequestState::Cancelled as i32) {
                lock(&ledger).claim(&request.id, Claim::Cancelled);
            }
        }
    }
}

/// Moves one job forward as far as it goes: accept (or now and then decline), receive, result.
async fn work_job(
    labs: &mut proto::lab_service_client::LabServiceClient<labaid::client::Authed>,
    job: &proto::Job,
    rng: &mut Rng,
    ledger: &Shared,
) {
    let id = job.id.clone();
    let mut state = RequestState::try_from(job.state).unwrap_or(RequestState::Unspecified);
    if state == RequestState::Offered {
        if rng.below(10) == 0 {
            let _ = labs
                .decline_job(proto::DeclineJobRequest {
                    id,
                    reason: "busy".into(),
                })
                .await;
            return;
        }
        if labs
            .accept_job(proto::AcceptJobRequest { id: id.clone() })
            .await
            .is_err()
        {
            return;
        }
        lock(ledger).claim(&id, Claim::Accepted);
        state = RequestState::Accepted;
    }
    if state == RequestState::Accepted {
        if labs
            .receive_sample(proto::ReceiveSampleRequest { id: id.clone() })
            .await
            .is_err()
        {
            return;
        }
        lock(ledger).claim(&id, Claim::Received);
        state = RequestState::Received;
    }
    if state == RequestState::Received {
        let observations = job
            .tests
            .iter()
            .map(|t| proto::Observation {
                test: t.clone(),
                value: "4.2".into(),
                ..Default::default()
            })
            .collect();
        if labs
            .post_results(proto::PostResultsRequest {
                id: id.clone(),
                observations,
            })
            .await
            .is_ok()
        {
            lock(ledger).claim(&id, Claim::Resulted);
        }
    }
}

/// Drives the lab's open jobs, then follows its offers from the last sequence it saw.
async fn lab_worker(client: Client, lab: &'static str, mut rng: Rng, ledger: Shared) {
    let mut labs = client.labs();
    let after = lock(&ledger).last_seq(lab);
    let Ok(stream) = labs
        .watch_offers(proto::WatchOffersRequest {
            after_sequence: after,
            ..Default::default()
        })
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    let open = labs
        .list_jobs(proto::ListJobsRequest {
            states: vec![
                RequestState::Offered as i32,
                RequestState::Accepted as i32,
                RequestState::Received as i32,
            ],
            page_size: 1000,
            ..Default::default()
        })
        .await;
    if let Ok(open) = open {
        for job in open.into_inner().jobs {
            work_job(&mut labs, &job, &mut rng, &ledger).await;
        }
    }
    while let Ok(Some(event)) = stream.message().await {
        let job = event.job.unwrap_or_default();
        lock(&ledger).saw(lab, event.sequence, job.id.clone(), event.kind);
        if event.kind == JobEventKind::Offered as i32 && job.state == RequestState::Offered as i32 {
            work_job(&mut labs, &job, &mut rng, &ledger).await;
        }
    }
}

/// Follows the trust's events from the last sequence it saw.
async fn trust_watcher(client: Client, trust: &'static str, ledger: Shared) {
    let after = lock(&ledger).last_seq(trust);
    let Ok(stream) = client
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest {
            after_sequence: after,
            ..Default::default()
        })
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(event)) = stream.message().await {
        let id = event.request.map(|r| r.id).unwrap_or_default();
        lock(&ledger).saw(trust, event.sequence, id, event.kind);
    }
}

/// Checks every promise against the restarted broker; returns the requests it holds.
async fn verify(broker: &Broker, ledger: &Shared, cycle: usize) -> usize {
    let mut by_id: HashMap<String, proto::Request> = HashMap::new();
    let mut problems = Vec::new();
    for trust in TRUSTS {
        let client = broker.client(trust).await;
        let mut orders = HashSet::new();
        for r in all_requests(&client).await {
            if !orders.insert(r.order_number.clone()) {
                problems.push(format!("order {} of {trust} is held twice", r.order_number));
            }
            by_id.insert(r.id.clone(), r);
        }
    }
    {
        let l = lock(ledger);
        for (order, (_, _, id)) in &l.orders {
            if let Some(id) = id {
                match by_id.get(id) {
                    None => problems.push(format!(
                        "acknowledged request {id} (order {order}) is missing"
                    )),
                    Some(r) if &r.order_number != order => problems.push(format!(
                        "request {id} has order {}, not {order}",
                        r.order_number
                    )),
                    Some(_) => {}
                }
            }
        }
        for (id, claims) in &l.claims {
            let state = by_id
                .get(id)
                .and_then(|r| RequestState::try_from(r.state).ok())
                .unwrap_or(RequestState::Unspecified);
            for claim in claims {
                if !claim.allows(state) {
                    problems.push(format!(
                        "request {id}: acknowledged {claim:?}, but it is {state:?}"
                    ));
                }
            }
        }
    }
    for lab in LABS {
        let client = broker.client(lab).await;
        let capacity = |c: Client| async move {
            c.labs()
                .get_capacity(proto::GetCapacityRequest {})
                .await
                .expect("capacity")
                .into_inner()
                .tests
                .into_iter()
                .map(|t| (t.test, (t.capacity, t.in_flight)))
                .collect::<BTreeMap<_, _>>()
        };
        let before = capacity(client.clone()).await;
        let jobs = client
            .labs()
            .list_jobs(proto::ListJobsRequest {
                states: vec![
                    RequestState::Offered as i32,
                    RequestState::Accepted as i32,
                    RequestState::Received as i32,
                ],
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("jobs")
            .into_inner()
            .jobs;
        let after = capacity(client).await;
        for (test, (cap, in_flight)) in &after {
            if in_flight > cap {
                problems.push(format!(
                    "{lab} holds {in_flight} {test} jobs with capacity {cap}"
                ));
            }
        }
        // Unless a timer fired between the reads, the lab's counters match the jobs it holds.
        if before == after {
            let mut held: BTreeMap<String, u32> = BTreeMap::new();
            for job in &jobs {
                for t in &job.tests {
                    *held.entry(t.clone()).or_default() += 1;
                }
            }
            for (test, (_, in_flight)) in &after {
                let jobs = held.get(test).copied().unwrap_or(0);
                if jobs != *in_flight {
                    problems.push(format!(
                        "{lab} counts {in_flight} {test} jobs in flight but holds {jobs}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "after restart {cycle}: {problems:#?}");
    by_id.len()
}

/// A watcher from sequence 0 after the last restart sees exactly what the watchers saw across all
/// of them.
async fn verify_history(broker: &Broker, ledger: &Shared) {
    let seen = lock(ledger).seen.clone();
    for (org, events) in seen {
        let client = broker.client(&org).await;
        let mut fresh = Vec::new();
        let want = events.len();
        if TRUSTS.contains(&org.as_str()) {
            let mut s = client
                .requests()
                .watch_request_events(proto::WatchRequestEventsRequest::default())
                .await
                .expect("watch")
                .into_inner();
            while fresh.len() < want {
                let e = common::next(&mut s).await;
                fresh.push((
                    e.sequence,
                    e.request.map(|r| r.id).unwrap_or_default(),
                    e.kind,
                ));
            }
        } else {
            let mut s = client
                .labs()
                .watch_offers(proto::WatchOffersRequest::default())
                .await
                .expect("watch")
                .into_inner();
            while fresh.len() < want {
                let e = common::next(&mut s).await;
                fresh.push((e.sequence, e.job.map(|j| j.id).unwrap_or_default(), e.kind));
            }
        }
        assert_eq!(
            fresh, events,
            "{org}: the history after the last restart differs from what watchers saw"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_at_random_moments() {
    let seed = std::env::var("LABAID_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Timestamp::now().millis() as u64);
    let cycles: usize = std::env::var("LABAID_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    eprintln!("crash test seed {seed} ({cycles} kills); rerun with LABAID_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let data = tempfile::tempdir().expect("data dir");
    let ledger: Shared = Arc::default();
    let started = Instant::now();
    let mut dropped_tails = 0;
    let mut held = 0;
    let mut snapshots = HashSet::new();
    let mut deltas = HashSet::new();
    for cycle in 0..cycles {
        let broker = Broker::start(data.path());
        if cycle > 0 {
            held = verify(&broker, &ledger, cycle).await;
        }
        let mut tasks = JoinSet::new();
        for trust in TRUSTS {
            for worker in 0..2 {
                let c = broker.client(trust).await;
                tasks.spawn(trust_worker(
                    c,
                    trust,
                    worker,
                    cycle,
                    Rng(rng.next()),
                    ledger.clone(),
                ));
            }
            tasks.spawn(trust_watcher(
                broker.client(trust).await,
                trust,
                ledger.clone(),
            ));
        }
        for lab in LABS {
            tasks.spawn(lab_worker(
                broker.client(lab).await,
                lab,
                Rng(rng.next()),
                ledger.clone(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1300))).await;
        let warnings = broker.kill();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        dropped_tails += warnings.iter().filter(|w| w.contains("dropping")).count();
        snapshots.insert(latest_snapshot(data.path(), "snapshot-"));
        deltas.insert(latest_snapshot(data.path(), "delta-"));
        assert!(
            !warnings.iter().any(|w| w.contains("\"ERROR\"")),
            "cycle {cycle}: the broker logged errors: {warnings:#?}"
        );
    }
    // A clean stop writes a snapshot; the start after it replays nothing and still keeps every
    // promise.
    let broker = Broker::start(data.path());
    held = held.max(verify(&broker, &ledger, cycles).await);
    verify_history(&broker, &ledger).await;
    broker.stop();
    let broker = Broker::start(data.path());
    verify(&broker, &ledger, cycles + 1).await;
    verify_history(&broker, &ledger).await;
    drop(broker);

    let l = lock(&ledger);
    assert!(l.failures.is_empty(), "{:#?}", l.failures);
    let events: usize = l.seen.values().map(Vec::len).sum();
    eprintln!(
        "crash test seed {seed}: {cycles} kills in {:.1} s, {} acknowledged changes, {held} requests, \
         {events} events watched, {} distinct snapshots and {} incremental ones seen after kills, \
         {dropped_tails} torn tails dropped",
        started.elapsed().as_secs_f64(),
        l.acks,
        snapshots.len(),
        deltas.len(),
    );
    // Snapshots were taken between kills, so recovery from a snapshot plus a journal was tested,
    // and from incremental snapshots after it.
    assert!(
        snapshots.len() >= 2,
        "no snapshot was taken between kills: {snapshots:?}"
    );
    assert!(
        deltas.len() >= 2,
        "no incremental snapshot was taken between kills: {deltas:?}"
    );
    assert!(
        l.acks > 100 * cycles as u64 / 10,
        "too little work was done to prove anything"
    );
}

/// The entry number of the newest snapshot in `dir` whose name starts with `prefix`
/// (`snapshot-`, or `delta-` for an incremental one); 0 if none.
fn latest_snapshot(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix(prefix)?
                .strip_suffix(".snap")?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_that_cannot_write_its_final_snapshot_stops_cleanly_with_the_journal_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let client = broker.client("RJ1").await;
    let mut rng = Rng(7);
    let mut ids = Vec::new();
    for i in 0..5 {
        let reply = client
            .requests()
            .submit_request(new_submission(&mut rng, &format!("FULL-{i}")))
            .await
            .expect("submit")
            .into_inner();
        ids.push(reply.request.expect("request").id);
    }
    // Every name the final snapshot could be written under (the journal holds a few entries)
    // is a directory: writing it fails with a real I/O error, as it would on a full disk.
    let blockers: Vec<_> = (0..=100u64)
        .map(|n| dir.path().join(format!("snapshot-{n:020}.snap.tmp")))
        .collect();
    for b in &blockers {
        std::fs::create_dir(b).expect("blocker");
    }
    // `stop` asserts a clean exit: before, this ended in an abort.
    let warnings = broker.stop();
    let said: Vec<_> = warnings
        .iter()
        .filter(|w| w.contains("the final snapshot could not be written"))
        .collect();
    assert_eq!(said.len(), 1, "one line says so: {warnings:#?}");
    assert!(said[0].contains("journal intact"), "{}", said[0]);
    for b in &blockers {
        std::fs::remove_dir(b).expect("free the space");
    }
    let broker = Broker::start(dir.path());
    let held: HashSet<String> = all_requests(&broker.client("RJ1").await)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    for id in &ids {
        assert!(held.contains(id), "{id} survived in the journal");
    }
    broker.stop();
}
