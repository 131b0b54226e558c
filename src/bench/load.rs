//! The load: trust clients submitting with a fixed number of requests in flight (or at a fixed
//! rate), lab clients watching offers and accepting, receiving and resulting them, and one watch
//! per trust that sees results arrive; each phase timed from the start of its submission.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_stream::StreamExt as _;

use super::report::Samples;
use crate::client::{Client, ConnectOptions, TlsFiles};
use crate::proto;

/// How far each submission is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Submit only (labs do nothing).
    Submit,
    /// Submit, offer delivered to the lab, accept.
    Dispatch,
    /// Submit, offer, accept, receive, result, result delivered to the trust.
    Cycle,
}

/// How the bench's labs take and work offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabsUse {
    /// One Work stream per lab: offers, actions and their answers on one stream.
    Work,
    /// WatchOffers, and a call per action (AcceptJob, ReceiveSample, PostResults).
    Calls,
}

/// One organisation the load acts as.
#[derive(Debug, Clone)]
pub struct Org {
    /// ODS code.
    pub ods: String,
    /// Bearer token; `None` when it authenticates with its client certificate alone.
    pub token: Option<String>,
    /// Its client certificate and key (PEM), for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Org {
    /// An organisation of a demo-mode broker, with its demo token.
    pub fn demo(ods: &str) -> Self {
        Self {
            ods: ods.into(),
            token: Some(format!("demo:{ods}")),
            identity: None,
        }
    }

    /// How to connect as this organisation to `addr`; `ca` turns TLS on.
    pub fn connect_options(
        &self,
        addr: &str,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> ConnectOptions {
        let (cert, key) = self.identity.clone().unzip();
        ConnectOptions {
            addr: addr.to_string(),
            token: self.token.clone(),
            connect_timeout: Some(timeout),
            tls: ca.map(|ca| TlsFiles {
                ca: ca.to_path_buf(),
                cert,
                key,
            }),
        }
    }
}

/// What load to put on a server.
#[derive(Debug, Clone)]
pub struct Load {
    /// `http://host:port`.
    pub addr: String,
    /// The CA of the broker's TLS certificate; `None` for plaintext.
    pub ca: Option<PathBuf>,
    /// Trusts that submit.
    pub trusts: Vec<Org>,
    /// Labs that work offers (unused at `Stage::Submit`).
    pub labs: Vec<Org>,
    /// Connections the trusts submit over (spread over the trusts).
    pub connections: usize,
    /// Submissions in flight at once.
    pub in_flight: usize,
    /// Submissions per second in all, or as fast as acknowledgements come back.
    pub rate: Option<f64>,
    /// How the labs take and work offers.
    pub labs_use: LabsUse,
    /// How far each submission is taken.
    pub stage: Stage,
    /// Load before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Label for the progress line.
    pub label: String,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Submit acknowledged.
    pub submit: Samples,
    /// Offer delivered on the lab's stream.
    pub offer: Samples,
    /// Accept acknowledged.
    pub accept: Samples,
    /// Result delivered on the trust's stream.
    pub result: Samples,
    /// Calls that failed.
    pub errors: u64,
    /// Submissions acknowledged over the whole run.
    pub submitted: u64,
    /// Results delivered over the whole run.
    pub resulted: u64,
}

/// Realistic urgent test sets and their share of the load, by priority.
const TEST_SETS: [&[&str]; 8] = [
    &["FBC", "UE"],
    &["K", "UE"],
    &["TROP"],
    &["FBC", "CRP"],
    &["INR", "APTT"],
    &["GS"],
    &["LFT", "CRP", "UE"],
    &["GLU"],
];

/// stat 10 %, asap 20 %, urgent 30 %, routine 40 %.
fn priority(n: u64) -> proto::Priority {
    match n % 10 {
        0 => proto::Priority::Stat,
        1 | 2 => proto::Priority::Asap,
        3..=5 => proto::Priority::Urgent,
        _ => proto::Priority::Routine,
    }
}

/// The submission with number `n` (its order number ends in `-n`).
pub fn submission(run: &str, n: u64) -> proto::SubmitRequestRequest {
    let collected = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(20 * 60));
    proto::SubmitRequestRequest {
        order_number: format!("{run}-{n}"),
        patient: Some(proto::Patient {
            nhs_number: "9434765919".into(),
            family_name: "Benchpatient".into(),
            given_name: "Alex".into(),
            birth_date: "1970-01-01".into(),
        }),
        tests: TEST_SETS[(n % TEST_SETS.len() as u64) as usize]
            .iter()
            .map(|t| (*t).to_string())
            .collect(),
        priority: priority(n / TEST_SETS.len() as u64) as i32,
        collected_at: Some(prost_types::Timestamp {
            seconds: collected.as_secs() as i64,
            nanos: 0,
        }),
        clinical_note: "bench".into(),
    }
}

fn number(order: &str) -> Option<u64> {
    order.rsplit('-').next()?.parse().ok()
}

struct Shared {
    starts: DashMap<u64, Instant>,
    /// Cycles that may begin (cycle scenario only): one taken per submission, one given back
    /// when its result arrives or it fails on the way.
    open: Option<tokio::sync::Semaphore>,
    from: Instant,
    until: Instant,
    offer: Mutex<Samples>,
    accept: Mutex<Samples>,
    result: Mutex<Samples>,
    errors: AtomicU64,
    submitted: AtomicU64,
    resulted: AtomicU64,
    next: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    /// Submission `n` is done with (resulted, or failed on the way): forgets its start, and lets
    /// another cycle begin. Its start, if it was tracked.
    fn finish(&self, n: u64) -> Option<Instant> {
        let start = self.starts.remove(&n).map(|(_, start)| start);
        if let (Some(_), Some(open)) = (start, &self.open) {
            open.add_permits(1);
        }
        start
    }

    /// An offer of one of this run's tracked submissions, timed as delivered: its submission
    /// number, start and job. `None` for other events and other runs' jobs.
    fn offered(&self, event: proto::JobEvent) -> Option<(u64, Instant, proto::Job)> {
        if event.kind != proto::JobEventKind::Offered as i32 {
            return None;
        }
        let job = event.job?;
        let n = number(&job.order_number)?;
        let start = *self.starts.get(&n)?;
        self.record(&self.offer, start);
        Some((n, start, job))
    }

    fn record(&self, samples: &Mutex<Samples>, start: Instant) {
        let now = Instant::now();
        if now >= self.from && now <= self.until {
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(now - start);
        }
    }
}

async fn connect(load: &Load, org: &Org) -> anyhow::Result<Client> {
    let options = org.connect_options(&load.addr, load.ca.as_deref(), Duration::from_secs(10));
    Ok(Client::connect(&options).await?)
}

/// Runs the load and returns what it measured over `[from, from + duration]`, where `from` is
/// `start + warmup`.
pub async fn run(load: &Load, start: Instant) -> anyhow::Result<Measured> {
    let run_id = format!(
        "B{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            % 1_000_000_000
    );
    let from = start + load.warmup;
    let until = from + load.duration;
    let shared = Arc::new(Shared {
        starts: DashMap::new(),
        open: (load.stage == Stage::Cycle)
            .then(|| tokio::sync::Semaphore::new(open_cycles(load.labs.len()))),
        from,
        until,
        offer: Mutex::default(),
        accept: Mutex::default(),
        result: Mutex::default(),
        errors: AtomicU64::new(0),
        submitted: AtomicU64::new(0),
        resulted: AtomicU64::new(0),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    // Watchers first, so no offer or result is missed.
    let mut watchers = Vec::new();
    if load.stage >= Stage::Dispatch {
        for lab in &load.labs {
            let client = connect(load, lab).await?;
            watchers.push(match load.labs_use {
                LabsUse::Work => tokio::spawn(work_stream(client, shared.clone(), load.stage)),
                LabsUse::Calls => tokio::spawn(work_offers(client, shared.clone(), load.stage)),
            });
        }
    }
    if load.stage == Stage::Cycle {
        for trust in &load.trusts {
            let client = connect(load, trust).await?;
            watchers.push(tokio::spawn(watch_results(client, shared.clone())));
        }
    }
    let mut connections = Vec::new();
    for c in 0..load.connections.max(1) {
        connections.push(connect(load, &load.trusts[c % load.trusts.len()]).await?);
    }
    let progress = (std::io::stderr().is_terminal()).then(|| {
        let label = load.label.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = Instant::now();
                let phase = if now < shared.from {
                    "warm-up"
                } else {
                    "measuring"
                };
                let left = shared.until.saturating_duration_since(now).as_secs();
                eprint!(
                    "\r{label}: {phase}, {left:>3} s left, {} submitted    ",
                    shared.submitted.load(Ordering::Relaxed)
                );
            }
        })
    });

    let mut submitters = Vec::new();
    match load.rate {
        // Open loop: submissions start on schedule whatever the latency, so a slow broker shows
        // up as latency at the asked rate rather than as a lower rate.
        Some(rate) => {
            let clients: Vec<_> = connections.iter().map(Client::requests).collect();
            let shared = shared.clone();
            let run_id = run_id.clone();
            let track = load.stage >= Stage::Dispatch;
            let step = Duration::from_secs_f64(1.0 / rate.max(1.0));
            submitters.push(tokio::spawn(async move {
                let samples = Arc::new(Mutex::new(Samples::default()));
                let outstanding = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_MAX));
                let mut due = tokio::time::Instant::from_std(start);
                let mut k = 0usize;
                while Instant::now() < shared.until {
                    tokio::time::sleep_until(due).await;
                    due += step;
                    let Ok(permit) = outstanding.clone().acquire_owned().await else {
                        break;
                    };
                    let client = clients[k % clients.len()].clone();
                    k += 1;
                    let (shared, run_id, samples) =
                        (shared.clone(), run_id.clone(), samples.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let mut client = client;
                        if let Some(took) = submit_one(&mut client, &shared, &run_id, track).await {
                            samples.lock().unwrap_or_else(|e| e.into_inner()).push(took);
                        }
                    });
                }
                // Wait for the last submissions to be answered.
                let _ = outstanding.acquire_many(OPEN_LOOP_MAX as u32).await;
                std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()))
            }));
        }
        None => {
            for i in 0..load.in_flight.max(1) {
                let client = connections[i % connections.len()].requests();
                let shared = shared.clone();
                let run_id = run_id.clone();
                let track = load.stage >= Stage::Dispatch;
                submitters.push(tokio::spawn(async move {
                    let mut client = client;
                    let mut local = Samples::default();
                    while Instant::now() < shared.until {
                        if let Some(open) = &shared.open {
                            let until = tokio::time::Instant::from_std(shared.until);
                            match tokio::time::timeout_at(until, open.acquire()).await {
                                Ok(Ok(permit)) => permit.forget(),
                                _ => break,
                            }
                        }
                        if let Some(took) = submit_one(&mut client, &shared, &run_id, track).await {
                            local.push(took);
                        }
                    }
                    local
                }));
            }
        }
    }
    let mut measured = Measured::default();
    for s in submitters {
        measured.submit.extend(s.await?);
    }
    // Let the last offers, accepts and results arrive.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle && !shared.starts.is_empty() && load.stage >= Stage::Dispatch {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for w in watchers {
        w.abort();
    }
    if let Some(p) = progress {
        p.abort();
        eprint!("\r{:80}\r", "");
    }
    let take =
        |m: &Mutex<Samples>| std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()));
    measured.offer = take(&shared.offer);
    measured.accept = take(&shared.accept);
    measured.result = take(&shared.result);
    measured.errors = shared.errors.load(Ordering::Relaxed);
    measured.submitted = shared.submitted.load(Ordering::Relaxed);
    measured.resulted = shared.resulted.load(Ordering::Relaxed);
    Ok(measured)
}

/// Most submissions outstanding at once in open-loop (paced) mode.
const OPEN_LOOP_MAX: usize = 20_000;

type RequestsClient =
    crate::proto::request_service_client::RequestServiceClient<crate::client::Authed>;

/// Submits the next submission; returns its latency when it was acknowledged inside the
/// measured window.
async fn submit_one(
    client: &mut RequestsClient,
    shared: &Shared,
    run_id: &str,
    track: bool,
) -> Option<Duration> {
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    let message = submission(run_id, n);
    let began = Instant::now();
    if track {
        shared.starts.insert(n, began);
    }
    match client.submit_request(message).await {
        Ok(_) => {
            shared.submitted.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            (now >= shared.from && now <= shared.until).then(|| now - began)
        }
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            shared.finish(n);
            None
        }
    }
}

/// Most jobs one lab works at once.
const LAB_CONCURRENCY: usize = 256;

/// Most requests between submission and result at once in the cycle scenario: what the labs'
/// workers hold. Unbounded, the trusts submit faster than the labs finish, and the broker's time
/// goes on routing requests that then wait seconds for a worker, not on whole cycles.
pub(crate) fn open_cycles(labs: usize) -> usize {
    LAB_CONCURRENCY * labs.max(1)
}

async fn work_offers(client: Client, shared: Arc<Shared>, stage: Stage) {
    let mut offers = match client
        .labs()
        .watch_offers(proto::WatchOffersRequest {
            after_sequence: 0,
            // What a system that only takes work asks for: the echoes of its own accepts and
            // results would cost both sides a message each.
            kinds: vec![proto::JobEventKind::Offered as i32],
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(LAB_CONCURRENCY));
    while let Some(event) = offers.next().await {
        let Ok(event) = event else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some((n, start, job)) = shared.offered(event) else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut labs = client.labs();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let id = job.id.clone();
            if labs
                .accept_job(proto::AcceptJobRequest { id: id.clone() })
                .await
                .is_err()
            {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.finish(n);
                return;
            }
            shared.record(&shared.accept, start);
            if stage < Stage::Cycle {
                shared.finish(n);
                return;
            }
            let received = labs
                .receive_sample(proto::ReceiveSampleRequest { id: id.clone() })
                .await;
            let observations = observations(&job);
            let posted = match received {
                Ok(_) => labs
                    .post_results(proto::PostResultsRequest { id, observations })
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if posted.is_err() {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.finish(n);
            }
        });
    }
}

/// Where a job worked on a Work stream has got to: the action whose answer it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Accept,
    Receive,
    Post,
}

/// A job taken on a Work stream.
#[derive(Debug)]
struct Taken {
    n: u64,
    start: Instant,
    job: proto::Job,
    step: Step,
}

/// The observations that result `job`.
fn observations(job: &proto::Job) -> Vec<proto::Observation> {
    job.tests
        .iter()
        .map(|t| proto::Observation {
            test: t.clone(),
            analyte: String::new(),
            value: "4.2".into(),
            unit: "mmol/L".into(),
            reference_range: String::new(),
            flag: proto::ObservationFlag::Normal as i32,
        })
        .collect()
}

/// The action that takes `taken` a step further.
fn action(taken: &Taken) -> proto::work_request::Action {
    use proto::work_request::Action;
    let id = taken.job.id.clone();
    match taken.step {
        Step::Accept => Action::Accept(proto::AcceptJobRequest { id }),
        Step::Receive => Action::Receive(proto::ReceiveSampleRequest { id }),
        Step::Post => Action::PostResults(proto::PostResultsRequest {
            id,
            observations: observations(&taken.job),
        }),
    }
}

/// A lab on one Work stream: each offer is accepted (and in cycles received and resulted) by
/// actions on the same stream, at most `LAB_CONCURRENCY` jobs at once; later offers wait here,
/// so that reading the stream, which brings the answers that free a place, never stops.
async fn work_stream(client: Client, shared: Arc<Shared>, stage: Stage) {
    use proto::work_response::Item;
    let watch = proto::WatchOffersRequest {
        after_sequence: 0,
        kinds: vec![proto::JobEventKind::Offered as i32],
    };
    // At most one action per job in progress is outstanding, so sending never waits.
    let Ok((actions, mut replies)) = client.work(watch, LAB_CONCURRENCY).await else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Jobs in progress by submission number, which also tags their actions: a job has one
    // action outstanding at a time.
    let mut working: std::collections::HashMap<u64, Taken> = std::collections::HashMap::new();
    let mut waiting = std::collections::VecDeque::new();
    let send = |taken: Taken, working: &mut std::collections::HashMap<u64, Taken>| {
        if !actions.try_send(taken.n, action(&taken)) {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            shared.finish(taken.n);
            return;
        }
        working.insert(taken.n, taken);
    };
    while let Some(reply) = replies.next().await {
        let Ok(reply) = reply else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match reply.item {
            Some(Item::Event(event)) => {
                let Some((n, start, job)) = shared.offered(event) else {
                    continue;
                };
                let taken = Taken {
                    n,
                    start,
                    job,
                    step: Step::Accept,
                };
                if working.len() < LAB_CONCURRENCY {
                    send(taken, &mut working);
                } else {
                    waiting.push_back(taken);
                }
            }
            Some(Item::Result(result)) => {
                let Some(mut taken) = working.remove(&result.tag) else {
                    continue;
                };
                let next_step = match (result.error.is_some(), taken.step) {
                    (true, _) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    (false, Step::Accept) => {
                        shared.record(&shared.accept, taken.start);
                        (stage == Stage::Cycle).then_some(Step::Receive)
                    }
                    (false, Step::Receive) => Some(Step::Post),
                    // The trust's watch records the result and finishes the submission.
                    (false, Step::Post) => None,
                };
                match next_step {
                    Some(step) => {
                        taken.step = step;
                        send(taken, &mut working);
                    }
                    None => {
                        // Done with it here: a dispatch ends at the accept, a failure anywhere.
                        if result.error.is_some() || taken.step == Step::Accept {
                            shared.finish(taken.n);
                        }
                        if let Some(next) = waiting.pop_front() {
                            send(next, &mut working);
                        }
                    }
                }
            }
            None => {}
        }
    }
}

async fn watch_results(client: Client, shared: Arc<Shared>) {
    let mut events = match client
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest {
            after_sequence: 0,
            kinds: vec![proto::RequestEventKind::Resulted as i32],
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if event.kind != proto::RequestEventKind::Resulted as i32 {
            continue;
        }
        let Some(n) = event.request.as_ref().and_then(|r| number(&r.order_number)) else {
            continue;
        };
        if let Some(start) = shared.finish(n) {
            shared.resulted.fetch_add(1, Ordering::Relaxed);
            shared.record(&shared.result, start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_numbers_carry_the_submission_number() {
        let s = submission("B42", 1234);
        assert_eq!(number(&s.order_number), Some(1234));
        assert!(!s.tests.is_empty());
    }
}
