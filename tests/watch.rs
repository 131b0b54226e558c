//! Event streams: a watcher that disconnects and resumes from its last sequence misses nothing
//! and sees nothing twice; a watcher that asks for some kinds of event gets exactly those.

mod common;

use common::*;
use labaid::proto::{self, JobEventKind, Priority, RequestEventKind};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_watcher_that_resumes_from_its_last_sequence_misses_nothing() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJZ").await;
    let mut stream = trust
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest::default())
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
            ..Default::default()
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

/// Accepts, receives and results `id` with one potassium value.
async fn work(lab: &labaid::client::Client, id: &str, value: &str) {
    accept_and_receive(lab, id).await;
    lab.labs()
        .post_results(proto::PostResultsRequest {
            id: id.to_string(),
            observations: vec![k_result(value)],
        })
        .await
        .expect("post results");
}

#[tokio::test]
async fn a_watcher_asking_for_some_kinds_gets_exactly_those_and_resumes_by_sequence() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    let outcomes = vec![
        RequestEventKind::Resulted as i32,
        RequestEventKind::CriticalResult as i32,
    ];
    let mut filtered = trust
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest {
            after_sequence: 0,
            kinds: outcomes.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut offers_only = lab
        .labs()
        .watch_offers(proto::WatchOffersRequest {
            after_sequence: 0,
            kinds: vec![JobEventKind::Offered as i32],
        })
        .await
        .unwrap()
        .into_inner();
    let normal = submit(&trust, submission("KIND-1", Priority::Stat, broker.now())).await;
    let critical = submit(&trust, submission("KIND-2", Priority::Stat, broker.now())).await;
    work(&lab, &normal.id, "4.2").await;
    work(&lab, &critical.id, "6.9").await;
    let third = submit(&trust, submission("KIND-3", Priority::Stat, broker.now())).await;

    // The lab's accepts, receipts and results are not echoed back: three offers in a row.
    let offered: Vec<String> = [
        next(&mut offers_only).await,
        next(&mut offers_only).await,
        next(&mut offers_only).await,
    ]
    .into_iter()
    .map(|e| {
        assert_eq!(e.kind, JobEventKind::Offered as i32);
        e.job.unwrap().id
    })
    .collect();
    assert_eq!(offered, [normal.id.clone(), critical.id.clone(), third.id]);

    // The trust's outcomes are exactly its whole stream's outcomes, with the same sequences.
    let mut everything = watch_request_events(&trust).await;
    let mut expected = Vec::new();
    while expected.len() < 3 {
        let e = next(&mut everything).await;
        if outcomes.contains(&e.kind) {
            expected.push((e.sequence, e.kind, e.request.unwrap().id));
        }
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = next(&mut filtered).await;
        got.push((e.sequence, e.kind, e.request.unwrap().id));
    }
    assert_eq!(got, expected);
    assert_eq!(
        got.iter().map(|g| g.2.as_str()).collect::<Vec<_>>(),
        [normal.id.as_str(), &critical.id, &critical.id]
    );
    assert!(got[0].0 > 1, "offers and other changes came first: {got:?}");

    // Resuming after the first outcome skips what was left out before it and sends the rest.
    let mut resumed = trust
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest {
            after_sequence: got[0].0,
            kinds: outcomes,
        })
        .await
        .unwrap()
        .into_inner();
    for want in &got[1..] {
        let e = next(&mut resumed).await;
        assert_eq!((e.sequence, e.kind), (want.0, want.1));
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn asking_for_an_unknown_event_kind_is_an_invalid_argument() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    for kinds in [
        vec![0],
        vec![RequestEventKind::Resulted as i32, 42],
        vec![-1],
    ] {
        let err = trust
            .requests()
            .watch_request_events(proto::WatchRequestEventsRequest {
                after_sequence: 0,
                kinds: kinds.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kinds:?}: {err}");
        let violations = err.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "kinds");
        let err = lab
            .labs()
            .watch_offers(proto::WatchOffersRequest {
                after_sequence: 0,
                kinds: kinds.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kinds:?}: {err}");
    }
    // A kind of the other stream's enum is refused too: the lab's enum has no value 10.
    let err = lab
        .labs()
        .watch_offers(proto::WatchOffersRequest {
            after_sequence: 0,
            kinds: vec![10],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    broker.shutdown().await;
}
