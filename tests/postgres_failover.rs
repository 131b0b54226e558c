//! The PostgreSQL store across a database failover: a primary with a synchronous streaming
//! standby (`pg_basebackup`), brokers given both databases in one multi-host URL with
//! `target_session_attrs=read-write`. Under load the primary's processes are SIGKILLed, the
//! standby is promoted, the old leader steps down without exiting, and a broker on the promoted
//! database takes over: every acknowledged submission is there exactly once, and submissions
//! acknowledged after the promotion are kept too. A leader with no write in flight steps down
//! too, rather than renew its lease on the promoted standby. Every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::acked::{Acked, load, settle, submit_acked, verify};
use common::pg::{PgBroker, PgServer, leader_of};
use tonic_health::pb::health_check_response::ServingStatus;

/// Sets the submitters' stop flag and waits (bounded) for them to end.
async fn stop_load(stop: Arc<std::sync::Mutex<bool>>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    *stop.lock().unwrap() = true;
    settle(tasks).await;
}

/// Waits until one of the brokers begins a term after the old leader's: the old leader's second
/// (it stepped down and took the lease again) or the other's first. Returns its index.
fn next_leader(old: &mut PgBroker, other: &mut PgBroker, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if old.wait_terms(2, Duration::from_millis(50)) {
            return 0;
        }
        if other.wait_serving(Duration::from_millis(50)) {
            return 1;
        }
    }
    panic!(
        "no broker took over on the promoted database within {within:?}: {}\n{}",
        old.log(),
        other.log()
    );
}

/// A primary with a synchronous streaming standby, and the URL a deployment gives the brokers:
/// both databases, of which only a writable one will do.
fn synchronous_pair() -> (PgServer, PgServer, String) {
    let primary = PgServer::start_primary();
    let standby = PgServer::start_standby_of(&primary);
    primary.wait_synchronous(Duration::from_secs(30));
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    (primary, standby, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_changes_survive_sigkill_of_the_primary_and_promotion_of_its_standby() {
    let (primary, standby, url) = synchronous_pair();
    let acked: Acked = Arc::default();
    let mut brokers = vec![PgBroker::start(&url), PgBroker::start(&url)];
    let leader = leader_of(&mut brokers, Duration::from_secs(30));

    let (stop, tasks) = load(&brokers[leader], 0, &acked, 1_000).await;
    // Killed while the submitters are mid-call: some calls are never answered.
    primary.kill9();
    let killed_at = Instant::now();
    stop_load(stop, tasks).await;
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "nothing was acknowledged before the kill");
    standby.promote(Duration::from_secs(30));

    // The old leader cannot write to a dead database: it steps down (a journal write whose
    // outcome is unknown, or a lease it cannot renew) and waits as a standby, still running.
    // It may already lead again on the promoted database: a new term witnesses the step-down too.
    let mut old = brokers.remove(leader);
    let other = brokers.remove(0);
    let term = old.terms();
    let stepped_down_by = Instant::now() + Duration::from_secs(15);
    while old.terms() == term && old.health().await != ServingStatus::NotServing as i32 {
        assert!(
            Instant::now() < stepped_down_by,
            "the old leader never stepped down: {}",
            old.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pair = [old, other];
    pair[0].assert_running("the old leader exited instead of stepping down");
    let index = {
        let [old, other] = &mut pair;
        next_leader(old, other, Duration::from_secs(30))
    };
    let new = &pair[index];
    let took_over = killed_at.elapsed();
    let held = verify(new, &acked).await;

    // Writes go on against the promoted database.
    let (stop, tasks) = load(new, 1, &acked, 500).await;
    stop_load(stop, tasks).await;
    let after = acked.lock().unwrap().len() - before;
    assert!(after > 0, "nothing was acknowledged after the promotion");
    verify(new, &acked).await;

    // And they are in the promoted database: a replacement broker reads them all back.
    drop(pair);
    let mut replacement = PgBroker::start(&url);
    assert!(
        replacement.wait_serving(Duration::from_secs(30)),
        "no broker leads on the promoted database after a restart: {}",
        replacement.log()
    );
    let total = verify(&replacement, &acked).await;
    eprintln!(
        "{before} acknowledged before the primary's SIGKILL ({held} held after promotion; \
         {} took over); takeover (SIGKILL to a broker serving on the promoted database) \
         {took_over:?}; {after} acknowledged after; {total} held after a restart",
        if index == 0 {
            "the old leader"
        } else {
            "the other broker"
        }
    );
}

/// What CI once met: no write is in flight when the primary is SIGKILLed, so only the lease
/// renewer notices. The standby, promoted at once, holds the lease row at the same epoch, and the
/// multi-host URL leads any new session there: a renewal on such a session would carry the term
/// onto a database it never led, its journal session still on the dead one, and it would serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_leader_steps_down_when_its_primary_is_killed_and_its_standby_promoted() {
    let (primary, standby, url) = synchronous_pair();
    let mut broker = PgBroker::start_leading(&url, &[]);
    let acked: Acked = Arc::default();
    submit_acked(&broker.client("RJ1").await, "before-kill", &acked).await;
    let epoch = primary.psql("SELECT epoch FROM labaid_lease");
    // Once renewed, the renewer holds a session on the primary, as it did in CI.
    let expires = primary.psql("SELECT expires FROM labaid_lease");
    let renewed_by = Instant::now() + Duration::from_secs(10);
    while primary.psql("SELECT expires FROM labaid_lease") == expires {
        assert!(
            Instant::now() < renewed_by,
            "the lease was not renewed: {}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    primary.kill9();
    standby.promote(Duration::from_secs(30));
    // A second term means the first ended (it may already have, and the broker taken the lease
    // again, before the promotion is seen here: health is no witness).
    assert!(
        broker.wait_terms(2, Duration::from_secs(30)),
        "the broker did not step down and lead again on the promoted database: {}",
        broker.log()
    );
    broker.assert_running("the broker exited instead of stepping down");
    let now: i64 = standby
        .psql("SELECT epoch FROM labaid_lease")
        .parse()
        .unwrap();
    assert!(
        now > epoch.parse::<i64>().unwrap(),
        "the lease on the promoted database is still at epoch {epoch}"
    );
    verify(&broker, &acked).await;
}
