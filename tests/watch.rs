//! Event streams: a watcher that disconnects and resumes from its last sequence misses nothing
//! and sees nothing twice.

mod common;

use common::*;
use labaid::proto::{self, Priority};

#[tokio::test]
async fn a_watcher_that_resumes_from_its_last_sequence_misses_nothing() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJZ").await;
    let mut stream = trust
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        trust
            .requests()
            .submit_request(submission(
                &format!("W-{i}"),
                Priority::Urgent,
                broker.now(),
            ))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut stream).await.sequence);
    }
    // Disconnect, and let more happen while nobody watches.
    drop(stream);
    for i in 5..10 {
        trust
            .requests()
            .submit_request(submission(
                &format!("W-{i}"),
                Priority::Urgent,
                broker.now(),
            ))
            .await
            .unwrap();
    }
    let last = *seen.last().unwrap();
    let mut resumed = trust
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest {
            after_sequence: last,
        })
        .await
        .unwrap()
        .into_inner();
    // One event per submission (each is offered at once): 10 in all.
    while seen.len() < 10 {
        seen.push(next(&mut resumed).await.sequence);
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
    // And live events keep coming on the resumed stream.
    trust
        .requests()
        .submit_request(submission("W-LIVE", Priority::Stat, broker.now()))
        .await
        .unwrap();
    assert_eq!(next(&mut resumed).await.sequence, 11);
    broker.shutdown().await;
}

#[tokio::test]
async fn each_organisation_sees_only_its_own_events() {
    let broker = TestBroker::spawn().await;
    let rj1 = broker.client("RJ1").await;
    let rjz = broker.client("RJZ").await;
    let mut rjz_stream = watch_request_events(&rjz).await;
    rj1.requests()
        .submit_request(submission("MINE-1", Priority::Urgent, broker.now()))
        .await
        .unwrap();
    let theirs = rjz
        .requests()
        .submit_request(submission("MINE-2", Priority::Urgent, broker.now()))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut rjz_stream).await;
    assert_eq!(first.sequence, 1);
    assert_eq!(first.request.unwrap().id, theirs.request.unwrap().id);
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable_so_clients_reconnect() {
    let broker = TestBroker::spawn().await;
    let lab = broker.client("RJ7").await;
    let mut stream = lab
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let stopping = tokio::spawn(broker.shutdown());
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("stream ended in time")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("after_sequence=0"),
        "{}",
        status.message()
    );
    stopping.await.unwrap();
}
