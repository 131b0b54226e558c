//! Who may call what: credentials, roles, other organisations' ids, and validation errors.

mod common;

use common::*;
use labaid::proto::{self, Priority};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn no_or_bad_credential_is_unauthenticated() {
    let broker = TestBroker::spawn().await;
    let anon = broker.client_with_token(None).await;
    let err = anon
        .directory()
        .list_tests(proto::ListTestsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let bad = broker.client_with_token(Some("not-a-token")).await;
    let err = bad
        .requests()
        .list_requests(proto::ListRequestsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let stranger = broker.client("RXX").await;
    let err = stranger
        .directory()
        .list_labs(proto::ListLabsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_trust_calling_lab_rpcs_and_a_lab_calling_trust_rpcs_are_denied() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("RJ7").await;
    let id = uuid::Uuid::new_v4().to_string();
    let trust_calls = [
        trust
            .labs()
            .watch_offers(proto::WatchOffersRequest::default())
            .await
            .map(|_| ()),
        trust
            .labs()
            .list_jobs(proto::ListJobsRequest::default())
            .await
            .map(|_| ()),
        trust
            .labs()
            .get_job(proto::GetJobRequest { id: id.clone() })
            .await
            .map(|_| ()),
        trust
            .labs()
            .accept_job(proto::AcceptJobRequest { id: id.clone() })
            .await
            .map(|_| ()),
        trust
            .labs()
            .decline_job(proto::DeclineJobRequest {
                id: id.clone(),
                reason: "x".into(),
            })
            .await
            .map(|_| ()),
        trust
            .labs()
            .receive_sample(proto::ReceiveSampleRequest { id: id.clone() })
            .await
            .map(|_| ()),
        trust
            .labs()
            .post_results(proto::PostResultsRequest {
                id: id.clone(),
                observations: vec![],
            })
            .await
            .map(|_| ()),
        trust
            .labs()
            .fail_job(proto::FailJobRequest {
                id: id.clone(),
                reason: 1,
                detail: String::new(),
            })
            .await
            .map(|_| ()),
        trust
            .labs()
            .get_capacity(proto::GetCapacityRequest {})
            .await
            .map(|_| ()),
        trust
            .labs()
            .set_capacity(proto::SetCapacityRequest {
                test: "K".into(),
                capacity: 1,
            })
            .await
            .map(|_| ()),
        trust
            .labs()
            .set_status(proto::SetStatusRequest { status: 1 })
            .await
            .map(|_| ()),
    ];
    for (i, r) in trust_calls.into_iter().enumerate() {
        assert_eq!(
            r.unwrap_err().code(),
            Code::PermissionDenied,
            "lab rpc #{i}"
        );
    }
    let lab_calls = [
        lab.requests()
            .submit_request(submission("X", Priority::Stat, broker.now()))
            .await
            .map(|_| ()),
        lab.requests()
            .get_request(proto::GetRequestRequest { id: id.clone() })
            .await
            .map(|_| ()),
        lab.requests()
            .list_requests(proto::ListRequestsRequest::default())
            .await
            .map(|_| ()),
        lab.requests()
            .cancel_request(proto::CancelRequestRequest {
                id: id.clone(),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
        lab.requests()
            .watch_request_events(proto::WatchRequestEventsRequest::default())
            .await
            .map(|_| ()),
    ];
    for (i, r) in lab_calls.into_iter().enumerate() {
        assert_eq!(
            r.unwrap_err().code(),
            Code::PermissionDenied,
            "trust rpc #{i}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn another_organisations_id_is_not_found_exactly_like_an_unknown_one() {
    let broker = TestBroker::spawn().await;
    let rj1 = broker.client("RJ1").await;
    let r = submit(&rj1, submission("OWN-1", Priority::Stat, broker.now())).await;
    let rjz = broker.client("RJZ").await;
    let theirs = rjz
        .requests()
        .get_request(proto::GetRequestRequest { id: r.id.clone() })
        .await
        .unwrap_err();
    let unknown = rjz
        .requests()
        .get_request(proto::GetRequestRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(unknown.code(), Code::NotFound);
    let err = rjz
        .requests()
        .cancel_request(proto::CancelRequestRequest {
            id: r.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A lab that was not offered the request cannot see or act on it.
    let other_lab = broker.client("RAX").await;
    for err in [
        other_lab
            .labs()
            .get_job(proto::GetJobRequest { id: r.id.clone() })
            .await
            .unwrap_err(),
        other_lab
            .labs()
            .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
            .await
            .unwrap_err(),
        other_lab
            .labs()
            .post_results(proto::PostResultsRequest {
                id: r.id.clone(),
                observations: vec![],
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::NotFound);
    }
    let jobs = other_lab
        .labs()
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty());
    // And the request is untouched.
    let still = get_request(&rj1, &r.id).await;
    assert_eq!(still.state, proto::RequestState::Offered as i32);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_bad_submission_names_every_bad_field_and_changes_nothing() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let mut sub = submission("BAD-1", Priority::Stat, broker.now());
    sub.patient.as_mut().unwrap().nhs_number = "9434765918".into();
    sub.tests = vec!["K".into(), "K".into()];
    sub.collected_at = Some(ts(broker.now().plus_minutes(60)));
    sub.clinical_note = "x".repeat(501);
    let err = trust.requests().submit_request(sub).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        !err.message().contains("9434765918"),
        "the NHS number is not echoed"
    );
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "patient.nhs_number",
            "tests",
            "collected_at",
            "clinical_note"
        ]
    );

    for (mutate, field) in [
        (
            Box::new(|s: &mut proto::SubmitRequestRequest| s.tests.clear())
                as Box<dyn Fn(&mut proto::SubmitRequestRequest)>,
            "tests",
        ),
        (Box::new(|s| s.tests = vec!["NOPE".into()]), "tests"),
        (Box::new(|s| s.priority = 0), "priority"),
        (Box::new(|s| s.order_number = String::new()), "order_number"),
        (Box::new(|s| s.collected_at = None), "collected_at"),
        (Box::new(|s| s.patient = None), "patient.nhs_number"),
    ] {
        let mut sub = submission("BAD-2", Priority::Stat, broker.now());
        mutate(&mut sub);
        let err = trust.requests().submit_request(sub).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let got = err.get_details_bad_request().unwrap().field_violations[0]
            .field
            .clone();
        assert_eq!(got, field);
    }
    let list = trust
        .requests()
        .list_requests(proto::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.requests.is_empty(),
        "no rejected call left a request behind"
    );
    let err = trust
        .requests()
        .get_request(proto::GetRequestRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    broker.shutdown().await;
}

#[tokio::test]
async fn list_filters_by_state_and_priority_and_pages() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    for i in 0..7 {
        let p = if i % 2 == 0 {
            Priority::Stat
        } else {
            Priority::Routine
        };
        trust
            .requests()
            .submit_request(submission(&format!("L-{i}"), p, broker.now()))
            .await
            .unwrap();
    }
    let stat = trust
        .requests()
        .list_requests(proto::ListRequestsRequest {
            priorities: vec![Priority::Stat as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stat.requests.len(), 4);
    let mut token = String::new();
    let mut orders = Vec::new();
    loop {
        let page = trust
            .requests()
            .list_requests(proto::ListRequestsRequest {
                page_size: 3,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        orders.extend(page.requests.into_iter().map(|r| r.order_number));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        orders,
        ["L-6", "L-5", "L-4", "L-3", "L-2", "L-1", "L-0"],
        "newest first, each once"
    );
    let err = trust
        .requests()
        .list_requests(proto::ListRequestsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    broker.shutdown().await;
}
