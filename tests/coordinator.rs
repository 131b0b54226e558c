//! The coordinator's side: the overview, setting a lab's status, and reassigning work stranded at
//! a lab that went offline before the sample arrived.

mod common;

use common::*;
use labaid::proto::{self, JobEventKind, Priority, RequestEventKind, RequestState};
use tonic::Code;

#[tokio::test]
async fn a_job_stranded_at_an_offline_lab_is_seen_and_reassigned_by_the_coordinator() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let mut trust_events = watch_request_events(&trust).await;
    let r = submit(&trust, submission("STRAND-1", Priority::Stat, broker.now())).await;
    let lab = broker.client(&r.lab).await;
    let mut lab_events = lab
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .unwrap();

    let coordinator = broker.client("coordinator").await;
    let mut coord = coordinator.coordinator();
    coord
        .set_lab_status(proto::SetLabStatusRequest {
            lab: r.lab.clone(),
            status: proto::LabStatus::Offline as i32,
            reason: String::new(),
        })
        .await
        .unwrap();
    // The trust is told its accepted request's lab went offline.
    loop {
        let e = next(&mut trust_events).await;
        if e.kind == RequestEventKind::LabOffline as i32 {
            break;
        }
    }
    let overview = coord
        .get_overview(proto::GetOverviewRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overview.stranded.len(), 1);
    assert_eq!(overview.stranded[0].id, r.id);
    assert_eq!(
        overview
            .labs
            .iter()
            .find(|l| l.ods == r.lab)
            .unwrap()
            .status,
        proto::LabStatus::Offline as i32
    );

    let moved = coord
        .reassign_job(proto::ReassignJobRequest {
            id: r.id.clone(),
            reason: "lab offline".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.state, RequestState::Offered as i32);
    assert_ne!(moved.lab, r.lab);
    next_job_event(&mut lab_events, JobEventKind::Withdrawn).await;
    let err = lab
        .labs()
        .receive_sample(proto::ReceiveSampleRequest { id: r.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("reassigned"), "{}", err.message());
    let now = get_request(&trust, &r.id).await;
    assert_eq!(now.lab, moved.lab);
    let overview = coord
        .get_overview(proto::GetOverviewRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(overview.stranded.is_empty());
    assert_eq!(overview.offers_open, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_reassigned_job_that_no_lab_can_take_still_expires_at_its_deadline() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let mut trust_events = watch_request_events(&trust).await;
    // Potassium keeps 4 h; collected 20 minutes ago.
    let r = submit(
        &trust,
        submission("REASSIGN-EXP-1", Priority::Stat, broker.now()),
    )
    .await;
    let lab = broker.client(&r.lab).await;
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .unwrap();
    close_all_labs(&broker).await;
    let moved = broker
        .client("coordinator")
        .await
        .coordinator()
        .reassign_job(proto::ReassignJobRequest {
            id: r.id.clone(),
            reason: "courier lost the box".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.state, RequestState::Queued as i32);

    // Past the sample's deadline the trust must hear that it expired, so that it recollects.
    broker.advance(std::time::Duration::from_secs(4 * 3600));
    loop {
        let e = next(&mut trust_events).await;
        if e.kind == RequestEventKind::Expired as i32 {
            assert_eq!(e.request.map(|r| r.id), Some(r.id.clone()));
            break;
        }
    }
    let after = get_request(&trust, &r.id).await;
    assert_eq!(after.state, RequestState::Expired as i32);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_overview_counts_waiting_requests_per_priority() {
    let broker = TestBroker::spawn().await;
    close_all_labs(&broker).await;
    let trust = broker.client("RJZ").await;
    for (i, p) in [Priority::Stat, Priority::Routine, Priority::Routine]
        .into_iter()
        .enumerate()
    {
        trust
            .requests()
            .submit_request(submission(&format!("OV-{i}"), p, broker.now()))
            .await
            .unwrap();
    }
    let coordinator = broker.client("coordinator").await;
    let overview = coordinator
        .coordinator()
        .get_overview(proto::GetOverviewRequest {})
        .await
        .unwrap()
        .into_inner();
    let waiting: Vec<(i32, u32)> = overview
        .queues
        .iter()
        .map(|q| (q.priority, q.waiting))
        .collect();
    assert_eq!(
        waiting,
        [
            (Priority::Stat as i32, 1),
            (Priority::Asap as i32, 0),
            (Priority::Urgent as i32, 0),
            (Priority::Routine as i32, 2)
        ]
    );
    assert_eq!(overview.labs.len(), 6);
    broker.shutdown().await;
}

#[tokio::test]
async fn coordinator_calls_need_the_coordinator_role_and_check_state() {
    let broker = TestBroker::spawn().await;
    for org in ["RJ1", "RJ7"] {
        let c = broker.client(org).await;
        let err = c
            .coordinator()
            .get_overview(proto::GetOverviewRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = c
            .coordinator()
            .set_lab_status(proto::SetLabStatusRequest {
                lab: "RJ7".into(),
                status: 3,
                reason: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let coordinator = broker.client("coordinator").await;
    let err = coordinator
        .requests()
        .list_requests(proto::ListRequestsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a coordinator sees no patient data"
    );
    let mut coord = coordinator.coordinator();
    let err = coord
        .set_lab_status(proto::SetLabStatusRequest {
            lab: "RXX".into(),
            status: 3,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = coord
        .reassign_job(proto::ReassignJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An offer (not accepted) cannot be reassigned; neither can a sample that has arrived.
    let trust = broker.client("RJ1").await;
    let r = submit(&trust, submission("CO-1", Priority::Urgent, broker.now())).await;
    let err = coord
        .reassign_job(proto::ReassignJobRequest {
            id: r.id.clone(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let lab = broker.client(&r.lab).await;
    accept_and_receive(&lab, &r.id).await;
    let err = coord
        .reassign_job(proto::ReassignJobRequest {
            id: r.id.clone(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    broker.shutdown().await;
}
