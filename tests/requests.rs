//! The trust's side: submit, get, list, cancel, idempotency and validation.

mod common;

use common::*;
use labaid::proto::{self, Priority, RequestState};
use tonic::Code;

#[tokio::test]
async fn a_submitted_request_is_offered_to_the_earliest_lab_and_readable_by_its_trust() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let resp = trust
        .requests()
        .submit_request(submission("ORD-1", Priority::Stat, broker.now()))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.replayed);
    let r = resp.request.unwrap();
    assert_eq!(r.state, RequestState::Offered as i32);
    // K at RJ1: R1H is 25 min away (the nearest), turnaround 45 min.
    assert_eq!(r.lab, "R1H");
    let got = get_request(&trust, &r.id).await;
    assert_eq!(got.id, r.id);
    assert_eq!(got.patient.unwrap().nhs_number, "9434765919");
    broker.shutdown().await;
}

#[tokio::test]
async fn the_same_order_number_twice_gives_one_request() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let sub = submission("ORD-DUP", Priority::Urgent, broker.now());
    let first = trust
        .requests()
        .submit_request(sub.clone())
        .await
        .unwrap()
        .into_inner();
    let second = trust
        .requests()
        .submit_request(sub.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(second.replayed);
    assert_eq!(first.request.unwrap().id, second.request.unwrap().id);
    let list = trust
        .requests()
        .list_requests(proto::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.requests.len(), 1);

    let mut different = sub;
    different.tests = vec!["UE".into()];
    let err = trust
        .requests()
        .submit_request(different)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_collection_time_with_invalid_nanos_is_refused_naming_the_field() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    for nanos in [-1, 1_000_000_000, i32::MAX] {
        let mut sub = submission(&format!("ORD-NANOS-{nanos}"), Priority::Stat, broker.now());
        sub.collected_at.as_mut().unwrap().nanos = nanos;
        let err = trust.requests().submit_request(sub).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "nanos {nanos}");
        assert!(
            err.message().contains("collected_at.nanos"),
            "{}",
            err.message()
        );
    }
    let list = trust
        .requests()
        .list_requests(proto::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.requests.is_empty(),
        "a refused submission changed state"
    );
    broker.shutdown().await;
}
