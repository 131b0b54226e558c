//! The PostgreSQL store across a database failover: a primary with a synchronous streaming
//! standby (`pg_basebackup`), brokers given both databases in one multi-host URL with
//! `target_session_attrs=read-write`. Under load the primary's processes are SIGKILLed, the
//! standby is promoted, and a broker on the promoted database takes over: every acknowledged
//! submission is there exactly once, and submissions acknowledged after the promotion are kept
//! too. Every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::acked::{Acked, load, verify};
use common::pg::{PgBroker, PgServer, leader_of};

/// Sets the submitters' stop flag and waits (bounded) for them to end.
async fn stop_load(stop: Arc<std::sync::Mutex<bool>>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    *stop.lock().unwrap() = true;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
}

/// Waits for a broker process to end on its own; panics with its log after `within`.
async fn wait_exit(broker: &mut PgBroker, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = broker.try_wait() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader still runs {within:?} after its database died: {}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_changes_survive_sigkill_of_the_primary_and_promotion_of_its_standby() {
    let primary = PgServer::start_primary();
    let standby = PgServer::start_standby_of(&primary);
    primary.wait_synchronous(Duration::from_secs(30));
    // What a deployment gives the brokers: every database, and only a writable one will do.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
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

    // The old leader cannot write to a dead database: it ends (a journal write that cannot be
    // made durable aborts it; a lease it cannot renew makes it step down).
    let mut old = brokers.remove(leader);
    let status = wait_exit(&mut old, Duration::from_secs(15)).await;
    assert!(
        !status.success(),
        "the old leader exited as if nothing happened"
    );
    let mut new = brokers.remove(0);
    assert!(
        new.wait_serving(Duration::from_secs(30)),
        "the standby broker did not take over on the promoted database: {}",
        new.log()
    );
    let took_over = killed_at.elapsed();
    let held = verify(&new, &acked).await;

    // Writes go on against the promoted database.
    let (stop, tasks) = load(&new, 1, &acked, 500).await;
    stop_load(stop, tasks).await;
    let after = acked.lock().unwrap().len() - before;
    assert!(after > 0, "nothing was acknowledged after the promotion");
    verify(&new, &acked).await;

    // And they are in the promoted database: a replacement broker reads them all back.
    new.kill();
    let mut replacement = PgBroker::start(&url);
    assert!(
        replacement.wait_serving(Duration::from_secs(30)),
        "no broker leads on the promoted database after a restart: {}",
        replacement.log()
    );
    let total = verify(&replacement, &acked).await;
    eprintln!(
        "{before} acknowledged before the primary's SIGKILL ({held} held after promotion; \
         old leader {status}); takeover (SIGKILL to a broker serving on the promoted database) \
         {took_over:?}; {after} acknowledged after; {total} held after a restart"
    );
}
