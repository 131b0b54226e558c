//! Crash tests: brokers SIGKILLed at random moments while several clients submit, accept, result
//! and cancel. On the file store the real broker binary is restarted on the same data directory
//! each time; on PostgreSQL two brokers share one database and the standby takes over from each
//! killed leader. After every restart or takeover, everything acknowledged before the kill is
//! there, nothing is duplicated, no request is open at two labs, no lab holds more than its
//! capacity, and every watcher's sequence carries on with nothing missed and nothing twice.
//!
//! The seed is printed; `LABAID_CRASH_SEED=<seed>` reruns the same schedule (the brokers' own
//! timing still varies). `LABAID_CRASH_CYCLES` changes the number of kills (default 24 on the
//! file store, 10 on PostgreSQL).

mod common;
#[path = "durability/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::all_requests;
use common::pg::{PgBroker, PgServer, leader_of};
use common::process::BrokerProcess;
use harness::{
    Rng, Shared, lock, new_submission, seed_and_cycles, spawn_load, verify, verify_history,
};

/// Small, so that snapshots (and kills during them) happen within the test.
const SNAPSHOT_EVERY: [&str; 2] = ["--snapshot-min-bytes", "32768"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_at_random_moments() {
    let (seed, cycles) = seed_and_cycles(24);
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
        let broker = BrokerProcess::start(data.path(), &SNAPSHOT_EVERY);
        if cycle > 0 {
            held = verify(&broker.addrs(), &ledger, &format!("restart {cycle}")).await;
        }
        let mut tasks = spawn_load(&broker.addrs(), cycle, &mut rng, &ledger).await;
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
    let broker = BrokerProcess::start(data.path(), &SNAPSHOT_EVERY);
    held = held.max(verify(&broker.addrs(), &ledger, &format!("restart {cycles}")).await);
    verify_history(&broker.addrs(), &ledger).await;
    broker.stop();
    let broker = BrokerProcess::start(data.path(), &SNAPSHOT_EVERY);
    let after = format!("restart {}", cycles + 1);
    verify(&broker.addrs(), &ledger, &after).await;
    verify_history(&broker.addrs(), &ledger).await;
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

/// Every broker's address, as clients that follow the leader are given them.
fn addrs_of(brokers: &[PgBroker]) -> String {
    brokers
        .iter()
        .map(|b| format!("http://{}", b.addr))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_leader_sigkills_on_postgres() {
    let (seed, cycles) = seed_and_cycles(10);
    eprintln!(
        "PostgreSQL crash test seed {seed} ({cycles} leader kills); rerun with LABAID_CRASH_SEED={seed}"
    );
    let mut rng = Rng(seed);
    let pg = PgServer::start();
    let url = pg.url();
    let ledger: Shared = Arc::default();
    let started = Instant::now();
    let mut brokers = vec![PgBroker::start(&url), PgBroker::start(&url)];
    let mut takeovers = Vec::new();
    let mut held = 0;
    for cycle in 0..cycles {
        // Clients are given both addresses, the leader's first or second (from the seed), and
        // find it.
        if rng.below(2) == 0 {
            brokers.reverse();
        }
        let leader = leader_of(&mut brokers, Duration::from_secs(30));
        let addrs = addrs_of(&brokers);
        if cycle > 0 {
            held = verify(&addrs, &ledger, &format!("takeover {cycle}")).await;
        }
        let mut tasks = spawn_load(&addrs, cycle, &mut rng, &ledger).await;
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1300))).await;
        let killed = brokers.remove(leader);
        let log = killed.log();
        killed.kill();
        let killed_at = Instant::now();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        assert!(
            !log.lines().any(|l| l.contains("\"ERROR\"")),
            "cycle {cycle}: the leader logged errors: {log}"
        );
        let standby = &mut brokers[0];
        assert!(
            standby.wait_serving(Duration::from_secs(30)),
            "cycle {cycle}: the standby did not take over: {}",
            standby.log()
        );
        takeovers.push(killed_at.elapsed());
        // A fresh standby in the killed leader's place.
        brokers.push(PgBroker::start(&url));
    }
    leader_of(&mut brokers, Duration::from_secs(30));
    let addrs = addrs_of(&brokers);
    held = held.max(verify(&addrs, &ledger, &format!("takeover {cycles}")).await);
    verify_history(&addrs, &ledger).await;
    for b in &brokers {
        let log = b.log();
        assert!(
            !log.lines().any(|l| l.contains("\"ERROR\"")),
            "a broker logged errors: {log}"
        );
    }
    drop(brokers);

    let l = lock(&ledger);
    assert!(l.failures.is_empty(), "{:#?}", l.failures);
    let events: usize = l.seen.values().map(Vec::len).sum();
    takeovers.sort();
    eprintln!(
        "PostgreSQL crash test seed {seed}: {cycles} leader kills in {:.1} s, {} acknowledged \
         changes, {held} requests, {events} events watched; takeover (kill to the standby \
         serving) median {:?}, longest {:?}",
        started.elapsed().as_secs_f64(),
        l.acks,
        takeovers
            .get(takeovers.len() / 2)
            .copied()
            .unwrap_or_default(),
        takeovers.last().copied().unwrap_or_default(),
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
    let broker = BrokerProcess::start(dir.path(), &SNAPSHOT_EVERY);
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
    let broker = BrokerProcess::start(dir.path(), &SNAPSHOT_EVERY);
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
