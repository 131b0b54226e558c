//! State carried across a restart of a broker on the same data directory, with a manual clock:
//! an open offer keeps its lease and is routed again once it ran out; a lab added to the
//! directory takes the work that was waiting.

mod common;

use std::path::Path;
use std::sync::Arc;

use labaid::domain::Timestamp;
use labaid::proto::{self, JobEventKind, Priority, RequestState};

/// A demo config on `dir`.
fn config_in(dir: &Path) -> labaid::Config {
    let mut config = labaid::Config::demo().expect("demo config");
    config.data_dir = dir.to_path_buf();
    config.metrics_listen = None;
    config.web_listen = None;
    config
}

async fn get_job(broker: &common::TestBroker, lab: &str, id: &str) -> proto::Job {
    broker
        .client(lab)
        .await
        .labs()
        .get_job(proto::GetJobRequest { id: id.to_string() })
        .await
        .expect("job")
        .into_inner()
}

#[tokio::test]
async fn an_open_offer_keeps_its_lease_across_a_restart_and_is_routed_again_once_it_ran_out() {
    use common::TestBroker;
    use labaid::domain::Clock;
    use labaid::engine::ManualClock;

    let data = tempfile::tempdir().expect("data dir");
    let t0 = Timestamp::now();
    let broker =
        TestBroker::spawn_with_clock(config_in(data.path()), Arc::new(ManualClock::new(t0))).await;
    let trust = broker.client("RJ1").await;
    let offered = trust
        .requests()
        .submit_request(common::submission("ORD-LEASE", Priority::Stat, t0))
        .await
        .expect("submit")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(offered.state, RequestState::Offered as i32);
    let lab = offered.lab.clone();
    let lease = get_job(&broker, &lab, &offered.id)
        .await
        .lease_expires_at
        .expect("lease");
    broker.shutdown().await;

    // One minute later: the same offer, the same lease end.
    let clock = Arc::new(ManualClock::new(t0.plus_minutes(1)));
    let broker = TestBroker::spawn_with_clock(config_in(data.path()), clock).await;
    let again = get_job(&broker, &lab, &offered.id).await;
    assert_eq!(again.state, RequestState::Offered as i32);
    assert_eq!(again.lease_expires_at, Some(lease));
    broker.shutdown().await;

    // Three minutes later the two-minute STAT lease has run out while the broker was down: the
    // first tick takes the offer back and routes the request to the next lab at once.
    let clock = Arc::new(ManualClock::new(t0.plus_minutes(3)));
    let broker = TestBroker::spawn_with_clock(config_in(data.path()), clock.clone()).await;
    let mut events = broker
        .client(&lab)
        .await
        .labs()
        .watch_offers(proto::WatchOffersRequest {
            after_sequence: 1,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let expired = common::next_job_event(&mut events, JobEventKind::LeaseExpired).await;
    assert_eq!(
        expired.sequence, 2,
        "the lab's sequence carries on from before the restart"
    );
    let trust = broker.client("RJ1").await;
    let rerouted = common::get_request(&trust, &offered.id).await;
    assert_eq!(rerouted.state, RequestState::Offered as i32);
    assert_ne!(rerouted.lab, lab);
    assert_eq!(clock.now(), t0.plus_minutes(3));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_lab_added_to_the_directory_takes_waiting_work_after_a_restart() {
    let data = tempfile::tempdir().expect("data dir");
    let mut config = config_in(data.path());
    // Only RJ7 remains, with no potassium capacity: RJ1's potassium waits.
    config.labs.retain(|l| l.ods.as_str() == "RJ7");
    for lab in &mut config.labs {
        for (test, capacity) in lab.capacity.iter_mut() {
            if test.as_str() == "K" {
                *capacity = 0;
            }
        }
    }
    let broker = common::TestBroker::spawn_with(config.clone()).await;
    let trust = broker.client("RJ1").await;
    let waiting = trust
        .requests()
        .submit_request(common::submission(
            "ADD-1",
            proto::Priority::Urgent,
            broker.now(),
        ))
        .await
        .expect("submit")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(
        waiting.state,
        RequestState::Queued as i32,
        "{}",
        waiting.status_detail
    );
    broker.shutdown().await;

    // The full directory adds R1H (the nearest) and gives RJ7 potassium capacity again: the
    // waiting request is routed at start.
    let full = config_in(data.path());
    let broker = common::TestBroker::spawn_with(full.clone()).await;
    let trust = broker.client("RJ1").await;
    let now = common::get_request(&trust, &waiting.id).await;
    assert_eq!(
        now.state,
        RequestState::Offered as i32,
        "{}",
        now.status_detail
    );
    assert_eq!(now.lab, "R1H");
    let lab = broker.client("R1H").await;
    lab.labs()
        .accept_job(proto::AcceptJobRequest {
            id: waiting.id.clone(),
        })
        .await
        .expect("accept");
    broker.shutdown().await;

    // Removing the lab that holds the job is refused, naming it; the store is left as it was.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = labaid::serve(
        listener,
        common::on_test_store(config.clone()).await,
        std::future::pending(),
    )
    .await
    .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("R1H") && message.contains("holds"),
        "{message}"
    );
    let broker = common::TestBroker::spawn_with(full).await;
    let job = get_job(&broker, "R1H", &waiting.id).await;
    assert_eq!(job.state, RequestState::Accepted as i32);
    broker.shutdown().await;
}
