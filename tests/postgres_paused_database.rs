//! A leader whose database stops answering: every PostgreSQL process SIGSTOPped under load, so
//! that each session the broker holds, and each new one, hangs instead of failing (as a hung
//! database host looks to its clients: its kernel still accepts and acknowledges). The leader
//! steps down within its lease's lifetime wherever its threads are blocked, and leads again once
//! the database answers, with every acknowledged submission kept. Every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::acked::{Acked, load, settle, verify};
use common::pg::{PgBroker, PgServer};
use labaid::store::postgres::LeaseTiming;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_database_stops_answering_steps_down_within_its_lease() {
    let lifetime = LeaseTiming::default().lifetime;
    let pg = PgServer::start();
    let mut broker = PgBroker::start_leading(&pg.url(), &[]);
    let acked: Acked = Arc::default();
    // Paused while the submitters are mid-call: the journal's insert hangs too.
    let (stop, tasks) = load(&broker, 0, &acked, 300).await;
    pg.pause();
    let paused_at = Instant::now();

    let mut stepped_down = None;
    while paused_at.elapsed() < Duration::from_secs(10) {
        if broker.health().await == ServingStatus::NotServing as i32 {
            stepped_down = Some(paused_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(stepped_down) = stepped_down else {
        pg.resume();
        panic!(
            "the leader still served 10 s after its database stopped answering: {}",
            broker.log()
        );
    };
    // The lease may lapse a lifetime after the last renewal, which was before the pause; the
    // allowance is for this test's polling on a loaded machine, not for the broker.
    let allowance = Duration::from_millis(300);
    assert!(
        stepped_down < lifetime + allowance,
        "the leader stepped down {stepped_down:?} after its database stopped answering; its \
         lease lasts {lifetime:?}: {}",
        broker.log()
    );
    // It stays down while the database does not answer, past the lease's lapse (when its own
    // release, still waiting for the database, gives up), and does not exit.
    while paused_at.elapsed() < lifetime + Duration::from_millis(500) {
        assert_eq!(
            broker.health().await,
            ServingStatus::NotServing as i32,
            "the leader served again while its database did not answer: {}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.assert_running("the leader exited instead of stepping down");

    pg.resume();
    *stop.lock().unwrap() = true;
    settle(tasks).await;
    assert!(
        broker.wait_terms(2, Duration::from_secs(20)),
        "the broker did not lead again once its database answered: {}",
        broker.log()
    );
    let held = verify(&broker, &acked).await;
    eprintln!(
        "stepped down {stepped_down:?} after the pause (lease lifetime {lifetime:?}); {} \
         acknowledged, {held} held after leading again",
        acked.lock().unwrap().len()
    );
}
