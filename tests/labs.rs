//! The lab's side and the life cycle: accept, receive, results, failure, capacity, status, and
//! the error codes of every illegal move.

mod common;

use common::*;
use labaid::proto::{self, JobEventKind, Priority, RequestEventKind, RequestState};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_request_goes_from_submission_to_result_and_the_trust_sees_it() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let mut events = trust
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let lab = broker.client("R1H").await;
    let mut offers = lab
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let r = submit(&trust, submission("LIFE-1", Priority::Stat, broker.now())).await;

    let offer = next_job_event(&mut offers, JobEventKind::Offered)
        .await
        .job
        .unwrap();
    assert_eq!(offer.id, r.id);
    assert!(
        offer.patient.is_none(),
        "an offer does not name the patient"
    );
    assert!(offer.lease_expires_at.is_some());

    let accepted = lab
        .labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, RequestState::Accepted as i32);
    assert_eq!(
        accepted.patient.unwrap().nhs_number,
        "9434765919",
        "accepted jobs name the patient"
    );

    let received = lab
        .labs()
        .receive_sample(proto::ReceiveSampleRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(received.state, RequestState::Received as i32);

    let resulted = lab
        .labs()
        .post_results(proto::PostResultsRequest {
            id: r.id.clone(),
            observations: vec![k_result("6.9")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resulted.state, RequestState::Resulted as i32);
    assert_eq!(
        resulted.results[0].flag,
        proto::ObservationFlag::CriticalHigh as i32
    );

    // The trust's stream: offered, accepted, received, resulted, then the critical-result alert.
    let mut kinds = Vec::new();
    let mut states = Vec::new();
    while kinds.last() != Some(&(RequestEventKind::CriticalResult as i32)) {
        let e = next(&mut events).await;
        kinds.push(e.kind);
        states.push(e.request.unwrap().state);
    }
    assert_eq!(
        states,
        [
            RequestState::Offered,
            RequestState::Accepted,
            RequestState::Received,
            RequestState::Resulted,
            RequestState::Resulted
        ]
        .map(|s| s as i32)
    );
    assert_eq!(kinds[3], RequestEventKind::Resulted as i32);
    let seen = get_request(&trust, &r.id).await;
    assert_eq!(seen.results[0].value, "6.9");

    let jobs = lab
        .labs()
        .list_jobs(proto::ListJobsRequest {
            states: vec![RequestState::Resulted as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jobs.jobs.len(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn illegal_moves_answer_failed_precondition_and_change_nothing() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    let r = submit(&trust, submission("ILL-1", Priority::Urgent, broker.now())).await;
    let id = r.id.clone();
    let err = lab
        .labs()
        .post_results(proto::PostResultsRequest {
            id: id.clone(),
            observations: vec![k_result("4.0")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = lab
        .labs()
        .receive_sample(proto::ReceiveSampleRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = lab
        .labs()
        .fail_job(proto::FailJobRequest {
            id: id.clone(),
            reason: proto::FailureReason::Haemolysed as i32,
            detail: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let job = lab
        .labs()
        .get_job(proto::GetJobRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, RequestState::Offered as i32);

    // Cancel, then every lab move is refused, and cancelling again too.
    trust
        .requests()
        .cancel_request(proto::CancelRequestRequest {
            id: id.clone(),
            reason: "discharged".into(),
        })
        .await
        .unwrap();
    let err = lab
        .labs()
        .accept_job(proto::AcceptJobRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("cancelled"), "{}", err.message());
    let err = trust
        .requests()
        .cancel_request(proto::CancelRequestRequest {
            id: id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_accepting_one_offer_one_wins_and_one_is_aborted() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let r = submit(&trust, submission("RACE-1", Priority::Stat, broker.now())).await;
    let (a, b) = (broker.client("R1H").await, broker.client("R1H").await);
    let (mut a, mut b) = (a.labs(), b.labs());
    let (ra, rb) = tokio::join!(
        a.accept_job(proto::AcceptJobRequest { id: r.id.clone() }),
        b.accept_job(proto::AcceptJobRequest { id: r.id.clone() }),
    );
    let codes = [
        ra.map(|_| Code::Ok).unwrap_or_else(|s| s.code()),
        rb.map(|_| Code::Ok).unwrap_or_else(|s| s.code()),
    ];
    assert!(
        codes.contains(&Code::Ok) && codes.contains(&Code::Aborted),
        "{codes:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn failing_a_job_tells_the_trust_to_recollect_and_frees_capacity() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    let r = submit(&trust, submission("FAIL-1", Priority::Asap, broker.now())).await;
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .unwrap();
    let before = lab
        .labs()
        .get_capacity(proto::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let k_before = before
        .tests
        .iter()
        .find(|t| t.test == "K")
        .unwrap()
        .in_flight;
    let err = lab
        .labs()
        .fail_job(proto::FailJobRequest {
            id: r.id.clone(),
            reason: proto::FailureReason::Other as i32,
            detail: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "other needs a detail");
    let failed = lab
        .labs()
        .fail_job(proto::FailJobRequest {
            id: r.id.clone(),
            reason: proto::FailureReason::Haemolysed as i32,
            detail: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, RequestState::Failed as i32);
    let seen = get_request(&trust, &r.id).await;
    assert_eq!(seen.failure_reason, proto::FailureReason::Haemolysed as i32);
    assert!(seen.status_detail.contains("recollect"));
    let after = lab
        .labs()
        .get_capacity(proto::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after
            .tests
            .iter()
            .find(|t| t.test == "K")
            .unwrap()
            .in_flight,
        k_before - 1
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn results_must_cover_every_requested_test() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab_code = submit(
        &trust,
        submission_of(
            "RES-1",
            Priority::Urgent,
            &["K", "UE"],
            broker.now().plus_minutes(-10),
        ),
    )
    .await;
    let lab = broker.client(&lab_code.lab).await;
    let id = lab_code.id.clone();
    accept_and_receive(&lab, &id).await;
    let err = lab
        .labs()
        .post_results(proto::PostResultsRequest {
            id: id.clone(),
            observations: vec![k_result("4.1")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut wrong = k_result("4.1");
    wrong.test = "FBC".into();
    let err = lab
        .labs()
        .post_results(proto::PostResultsRequest {
            id: id.clone(),
            observations: vec![k_result("4.1"), wrong],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["observations[1].test"]);
    let job = lab
        .labs()
        .get_job(proto::GetJobRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, RequestState::Received as i32);
    broker.shutdown().await;
}

#[tokio::test]
async fn capacity_and_status_are_read_and_set_by_the_lab() {
    let broker = TestBroker::spawn().await;
    let lab = broker.client("RJ6").await;
    let cap = lab
        .labs()
        .get_capacity(proto::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.lab, "RJ6");
    assert_eq!(cap.tests.len(), 6);
    let set = lab
        .labs()
        .set_capacity(proto::SetCapacityRequest {
            test: "K".into(),
            capacity: 12,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        set.tests.iter().find(|t| t.test == "K").unwrap().capacity,
        12
    );
    let err = lab
        .labs()
        .set_capacity(proto::SetCapacityRequest {
            test: "XM".into(),
            capacity: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "RJ6 does not perform crossmatch"
    );
    let err = lab
        .labs()
        .set_status(proto::SetStatusRequest { status: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let st = lab
        .labs()
        .set_status(proto::SetStatusRequest {
            status: proto::LabStatus::Draining as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.status, proto::LabStatus::Draining as i32);
    let dir = lab
        .directory()
        .list_labs(proto::ListLabsRequest {})
        .await
        .unwrap()
        .into_inner();
    let rj6 = dir.labs.iter().find(|l| l.ods == "RJ6").unwrap();
    assert_eq!(rj6.status, proto::LabStatus::Draining as i32);
    assert_eq!(dir.labs.len(), 6);
    let tests = lab
        .directory()
        .list_tests(proto::ListTestsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tests.tests.len(), 11);
    let k = tests.tests.iter().find(|t| t.code == "K").unwrap();
    assert_eq!(k.stability_minutes, 240);
    assert_eq!(k.critical_high, Some(6.5));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_draining_lab_gets_no_new_offers_but_keeps_its_work() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let first = submit(
        &trust,
        submission("DRAIN-1", Priority::Urgent, broker.now()),
    )
    .await;
    assert_eq!(first.lab, "R1H");
    let lab = broker.client("R1H").await;
    lab.labs()
        .set_status(proto::SetStatusRequest {
            status: proto::LabStatus::Draining as i32,
        })
        .await
        .unwrap();
    let job = lab
        .labs()
        .get_job(proto::GetJobRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        job.state,
        RequestState::Offered as i32,
        "draining keeps open offers"
    );
    lab.labs()
        .accept_job(proto::AcceptJobRequest {
            id: first.id.clone(),
        })
        .await
        .unwrap();
    let second = submit(
        &trust,
        submission("DRAIN-2", Priority::Urgent, broker.now()),
    )
    .await;
    assert_ne!(second.lab, "R1H");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_lab_silent_past_its_heartbeat_timeout_goes_offline_and_its_offers_move() {
    let mut config = labaid::Config::demo().unwrap();
    config.heartbeat_timeout = Some(std::time::Duration::from_secs(60));
    let broker = TestBroker::spawn_with(config).await;
    // RJ7 keeps a watch open; R1H (the nearest lab for RJ1) never calls.
    let rj7 = broker.client("RJ7").await;
    let mut rj7_offers = rj7
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let trust = broker.client("RJ1").await;
    let mut events = watch_request_events(&trust).await;
    let r = submit(&trust, submission("HB-1", Priority::Routine, broker.now())).await;
    assert_eq!(r.lab, "R1H");
    next(&mut events).await;

    // Past the timeout (the watchdog checks four times per timeout), R1H is marked offline and
    // the offer moves to a lab that is present.
    broker.advance(std::time::Duration::from_secs(61));
    broker.advance(std::time::Duration::from_secs(16));
    let moved = loop {
        let e = next(&mut events).await.request.unwrap();
        if e.state == RequestState::Offered as i32 && e.lab != "R1H" {
            break e;
        }
    };
    assert_ne!(moved.lab, "R1H");
    let labs = rj7
        .directory()
        .list_labs(proto::ListLabsRequest {})
        .await
        .unwrap()
        .into_inner();
    let status = |ods: &str| labs.labs.iter().find(|l| l.ods == ods).unwrap().status;
    assert_eq!(status("R1H"), proto::LabStatus::Offline as i32);
    assert_eq!(
        status("RJ7"),
        proto::LabStatus::Online as i32,
        "a lab with a watch open is present"
    );
    if moved.lab == "RJ7" {
        next_job_event(&mut rj7_offers, JobEventKind::Offered).await;
    }
    broker.shutdown().await;
}
