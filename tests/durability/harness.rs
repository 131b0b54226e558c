//! Harness for tests/durability.rs's crash tests: the clients (trusts submitting and cancelling,
//! labs accepting, receiving and resulting, watchers following events), the ledger of what the
//! broker acknowledged, and the checks that every acknowledged change survived a kill. Clients
//! reach the broker through an address list, so the same load and checks run against one broker
//! restarted on its data directory or against brokers sharing a PostgreSQL store.
#![allow(unreachable_pub)] // a test helper module; pub for the test file that includes it

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, all_requests, submission_of};
use labaid::client::{Client, ConnectOptions};
use labaid::domain::Timestamp;
use labaid::proto::{self, JobEventKind, Priority, RequestState};
use tokio::task::JoinSet;

pub const TRUSTS: [&str; 2] = ["RJ1", "RJZ"];
pub const LABS: [&str; 6] = ["RJ7", "R1H", "RJ2", "RJ6", "RAL", "RAX"];
const TESTS: [&[&str]; 4] = [&["K"], &["FBC"], &["FBC", "UE"], &["CRP"]];

/// The seed (from `LABAID_CRASH_SEED`, else the clock) and the number of kills (from
/// `LABAID_CRASH_CYCLES`, else `default_cycles`).
pub fn seed_and_cycles(default_cycles: usize) -> (u64, usize) {
    let seed = std::env::var("LABAID_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Timestamp::now().millis() as u64);
    let cycles = std::env::var("LABAID_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cycles);
    (seed, cycles)
}

/// A client of the broker that leads among `addrs` (comma-separated, as `Client::connect` takes).
pub async fn connect(addrs: &str, org: &str) -> Client {
    Client::connect(&ConnectOptions {
        addr: addrs.to_string(),
        token: Some(format!("demo:{org}")),
        connect_timeout: Some(Duration::from_secs(5)),
        tls: None,
    })
    .await
    .expect("connect")
}

/// A small, seedable generator (splitmix64), so a failing schedule can be rerun.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
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
pub struct Ledger {
    /// Order number -> (trust, submission, id once acknowledged).
    orders: BTreeMap<String, (String, proto::SubmitRequestRequest, Option<String>)>,
    /// Request id -> acknowledged changes.
    claims: HashMap<String, Vec<Claim>>,
    /// Organisation -> every event seen, as (sequence, request id, kind), in order.
    pub seen: HashMap<String, Vec<(u64, String, i32)>>,
    /// Broken promises, reported at the end.
    pub failures: Vec<String>,
    pub acks: u64,
}

pub type Shared = Arc<Mutex<Ledger>>;

pub fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
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

pub fn new_submission(rng: &mut Rng, order: &str) -> proto::SubmitRequestRequest {
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

/// Starts the load on the broker that leads among `addrs`: two submitting workers and a watcher
/// per trust, a worker per lab.
pub async fn spawn_load(addrs: &str, cycle: usize, rng: &mut Rng, ledger: &Shared) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for trust in TRUSTS {
        for worker in 0..2 {
            let c = connect(addrs, trust).await;
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
            connect(addrs, trust).await,
            trust,
            ledger.clone(),
        ));
    }
    for lab in LABS {
        tasks.spawn(lab_worker(
            connect(addrs, lab).await,
            lab,
            Rng(rng.next()),
            ledger.clone(),
        ));
    }
    tasks
}

/// The lab's offered, accepted and received jobs.
async fn open_jobs(client: &Client) -> Vec<proto::Job> {
    client
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
        .jobs
}

/// The requests that two labs hold at once, in two reads of every lab's open jobs: a request
/// moved between labs by a timer during one read shows in both labs then, but not in the next.
async fn held_by_two_labs(addrs: &str) -> Vec<String> {
    let mut twice: Option<HashSet<String>> = None;
    for _ in 0..2 {
        let mut holders: HashMap<String, Vec<&str>> = HashMap::new();
        for lab in LABS {
            for job in open_jobs(&connect(addrs, lab).await).await {
                holders.entry(job.id).or_default().push(lab);
            }
        }
        let now: HashSet<String> = holders
            .into_iter()
            .filter(|(_, labs)| labs.len() > 1)
            .map(|(id, labs)| format!("{id} is open at {labs:?}"))
            .collect();
        twice = Some(match twice {
            None => now,
            Some(before) => before.intersection(&now).cloned().collect(),
        });
    }
    let mut out: Vec<String> = twice.unwrap_or_default().into_iter().collect();
    out.sort();
    out
}

/// Checks every promise against the broker that leads among `addrs` after a restart or takeover
/// (`after` names it in failures); returns the requests it holds.
pub async fn verify(addrs: &str, ledger: &Shared, after: &str) -> usize {
    let mut by_id: HashMap<String, proto::Request> = HashMap::new();
    let mut problems = Vec::new();
    for trust in TRUSTS {
        let client = connect(addrs, trust).await;
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
        let client = connect(addrs, lab).await;
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
        let jobs = open_jobs(&client).await;
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
    // No offer is made twice at once: a request is open at one lab at most.
    problems.extend(held_by_two_labs(addrs).await);
    assert!(problems.is_empty(), "after {after}: {problems:#?}");
    by_id.len()
}

/// A watcher from sequence 0 after the last restart or takeover sees exactly what the watchers saw
/// across all of them.
pub async fn verify_history(addrs: &str, ledger: &Shared) {
    let seen = lock(ledger).seen.clone();
    for (org, events) in seen {
        let client = connect(addrs, &org).await;
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
            "{org}: the history after the last restart or takeover differs from what watchers saw"
        );
    }
}
