//! Routing through a real broker: priority, deadlines, declines, leases, capacity and lab status.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use labaid::proto::{self, JobEventKind, Priority, RequestState};

#[tokio::test]
async fn stat_request_is_offered_before_a_hundred_waiting_routine_ones() {
    let broker = TestBroker::spawn().await;
    close_all_labs(&broker).await;
    let trust = broker.client("RJ1").await;
    for i in 0..100 {
        let r = submit(
            &trust,
            submission(&format!("R-{i}"), Priority::Routine, broker.now()),
        )
        .await;
        assert_eq!(r.state, RequestState::Queued as i32);
    }
    let stat = submit(&trust, submission("STAT-1", Priority::Stat, broker.now())).await;
    assert_eq!(stat.state, RequestState::Queued as i32);

    let lab = broker.client("RJ7").await;
    let mut offers = lab
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    lab.labs()
        .set_capacity(proto::SetCapacityRequest {
            test: "K".into(),
            capacity: 1,
        })
        .await
        .unwrap();
    let offered = next_job_event(&mut offers, JobEventKind::Offered).await;
    assert_eq!(offered.job.unwrap().id, stat.id);
    broker.shutdown().await;
}

#[tokio::test]
async fn within_a_band_the_earliest_sample_deadline_goes_first() {
    let broker = TestBroker::spawn().await;
    close_all_labs(&broker).await;
    let trust = broker.client("RJ1").await;
    let now = broker.now();
    let later = submit(
        &trust,
        submission_of("LATE", Priority::Urgent, &["K"], now.plus_minutes(-10)),
    )
    .await;
    let sooner = submit(
        &trust,
        submission_of("SOON", Priority::Urgent, &["K"], now.plus_minutes(-60)),
    )
    .await;
    let lab = broker.client("R1H").await;
    let mut offers = lab
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    lab.labs()
        .set_capacity(proto::SetCapacityRequest {
            test: "K".into(),
            capacity: 1,
        })
        .await
        .unwrap();
    let first = next_job_event(&mut offers, JobEventKind::Offered)
        .await
        .job
        .unwrap();
    assert_eq!(first.id, sooner.id);
    assert_ne!(first.id, later.id);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_lab_that_cannot_finish_before_the_deadline_is_not_offered_the_request() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    // K is stable for 4 h. Collected 3 h 5 min ago: 55 min left. R1H needs 25 + 45 = 70 min,
    // so no lab can make it and the request expires at once rather than being offered.
    let r = submit(
        &trust,
        submission_of(
            "TIGHT",
            Priority::Stat,
            &["K"],
            broker.now().plus_minutes(-185),
        ),
    )
    .await;
    assert_eq!(r.state, RequestState::Expired as i32);
    assert!(r.lab.is_empty());

    // Collected 2 h 45 min ago: 75 min left. Only R1H (70 min) can make it; RJ7 (75) cannot.
    let r = submit(
        &trust,
        submission_of(
            "TIGHT-2",
            Priority::Stat,
            &["K"],
            broker.now().plus_minutes(-165),
        ),
    )
    .await;
    assert_eq!(r.state, RequestState::Offered as i32);
    assert_eq!(r.lab, "R1H");
    // R1H declines; RJ7 would finish too late, so the request is not offered there: it expires.
    let lab = broker.client("R1H").await;
    lab.labs()
        .decline_job(proto::DeclineJobRequest {
            id: r.id.clone(),
            reason: "analyser down".into(),
        })
        .await
        .unwrap();
    let after = get_request(&trust, &r.id).await;
    assert_eq!(
        after.state,
        RequestState::Expired as i32,
        "{}",
        after.status_detail
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn decline_routes_to_the_next_lab_and_never_back() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let r = submit(&trust, submission("DEC-1", Priority::Asap, broker.now())).await;
    let mut seen = HashSet::new();
    let mut lab_code = r.lab.clone();
    // RJ1's labs with K: R1H (25), RJ7 (30), RJ2 (30), RAL (35). Each declines in turn.
    while !lab_code.is_empty() {
        assert!(seen.insert(lab_code.clone()), "offered twice to {lab_code}");
        let lab = broker.client(&lab_code).await;
        lab.labs()
            .decline_job(proto::DeclineJobRequest {
                id: r.id.clone(),
                reason: "no staff".into(),
            })
            .await
            .unwrap();
        // The decliner no longer sees the job.
        let err = lab
            .labs()
            .get_job(proto::GetJobRequest { id: r.id.clone() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let now = get_request(&trust, &r.id).await;
        lab_code = now.lab.clone();
        if now.state == RequestState::Queued as i32 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        4,
        "every lab with an agreement and the test was tried: {seen:?}"
    );
    assert!(
        seen.contains("R1H")
            && seen.contains("RJ7")
            && seen.contains("RJ2")
            && seen.contains("RAL")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn offer_lease_expiry_routes_to_the_next_lab() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let first = broker.client("R1H").await;
    let mut first_offers = first
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let second = broker.client("RJ2").await;
    let mut second_offers = second
        .labs()
        .watch_offers(proto::WatchOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let r = submit(&trust, submission("LEASE-1", Priority::Stat, broker.now())).await;
    assert_eq!(r.lab, "R1H");
    next_job_event(&mut first_offers, JobEventKind::Offered).await;

    // STAT lease is 2 minutes.
    broker.advance(Duration::from_secs(121));
    let expired = next_job_event(&mut first_offers, JobEventKind::LeaseExpired).await;
    assert_eq!(expired.job.unwrap().id, r.id);
    let now = get_request(&trust, &r.id).await;
    assert_eq!(now.state, RequestState::Offered as i32);
    // RJ7 and RJ2 tie on 30 min; RJ2 (never offered, lower ODS after RJ7? no) — either way not R1H.
    assert_ne!(now.lab, "R1H");

    // Accepting after expiry says what happened.
    let err = first
        .labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("offer expired"), "{}", err.message());
    if now.lab == "RJ2" {
        next_job_event(&mut second_offers, JobEventKind::Offered).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_lab_going_offline_has_its_open_offers_routed_again() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let r = submit(&trust, submission("OFF-1", Priority::Urgent, broker.now())).await;
    assert_eq!(r.lab, "R1H");
    let lab = broker.client("R1H").await;
    let resp = lab
        .labs()
        .set_status(proto::SetStatusRequest {
            status: proto::LabStatus::Offline as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.offers_withdrawn, 1);
    let now = get_request(&trust, &r.id).await;
    assert_eq!(now.state, RequestState::Offered as i32);
    assert_ne!(now.lab, "R1H");
    // Back online, it gets new work again.
    lab.labs()
        .set_status(proto::SetStatusRequest {
            status: proto::LabStatus::Online as i32,
        })
        .await
        .unwrap();
    let r2 = submit(&trust, submission("OFF-2", Priority::Urgent, broker.now())).await;
    assert_eq!(r2.lab, "R1H");
    broker.shutdown().await;
}

#[tokio::test]
async fn waiting_requests_are_routed_when_capacity_frees() {
    let broker = TestBroker::spawn().await;
    close_all_labs(&broker).await;
    let lab = broker.client("RJ7").await;
    lab.labs()
        .set_capacity(proto::SetCapacityRequest {
            test: "K".into(),
            capacity: 1,
        })
        .await
        .unwrap();
    let trust = broker.client("RJ1").await;
    let a = submit(&trust, submission("CAP-A", Priority::Urgent, broker.now())).await;
    let b = submit(&trust, submission("CAP-B", Priority::Urgent, broker.now())).await;
    assert_eq!(a.state, RequestState::Offered as i32);
    assert_eq!(b.state, RequestState::Queued as i32);
    // Work A through to a result; B is offered as soon as A's capacity frees.
    accept_and_receive(&lab, &a.id).await;
    let b_now = get_request(&trust, &b.id).await;
    assert_eq!(b_now.state, RequestState::Queued as i32);
    lab.labs()
        .post_results(proto::PostResultsRequest {
            id: a.id.clone(),
            observations: vec![proto::Observation {
                test: "K".into(),
                value: "4.2".into(),
                unit: "mmol/L".into(),
                reference_range: "3.5-5.3".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let b_now = get_request(&trust, &b.id).await;
    assert_eq!(b_now.state, RequestState::Offered as i32);
    assert_eq!(b_now.lab, "RJ7");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_submissions_never_exceed_any_capacity() {
    let broker = TestBroker::spawn().await;
    // Five labs with K for RJZ: RJ7 20, R1H 30, RJ2 10, RJ6 8 (RAL has no agreement with RJZ,
    // RAX does not perform K).
    let trust = broker.client("RJZ").await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let client = trust.clone();
        let sub = submission(
            &format!("C-{i}"),
            [
                Priority::Routine,
                Priority::Urgent,
                Priority::Asap,
                Priority::Stat,
            ][i % 4],
            broker.now(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .requests()
                .submit_request(sub)
                .await
                .map(|r| r.into_inner().request.unwrap())
        }));
    }
    let mut by_lab: HashMap<String, u32> = HashMap::new();
    let (mut offered, mut queued) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        match RequestState::try_from(r.state).unwrap() {
            RequestState::Offered => offered += 1,
            RequestState::Queued => queued += 1,
            other => panic!("unexpected state {other:?}"),
        }
    }
    // Read the final state: every request offered or queued, and the offers within capacity.
    let mut token = String::new();
    let mut total = 0;
    loop {
        let page = trust
            .requests()
            .list_requests(proto::ListRequestsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for r in &page.requests {
            total += 1;
            if r.state == RequestState::Offered as i32 {
                *by_lab.entry(r.lab.clone()).or_default() += 1;
            } else {
                assert_eq!(r.state, RequestState::Queued as i32);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(total, 1000);
    let capacity: HashMap<&str, u32> = [("RJ7", 20), ("R1H", 30), ("RJ2", 10), ("RJ6", 8)].into();
    for (lab, n) in &by_lab {
        assert!(*n <= capacity[lab.as_str()], "{lab} holds {n} offers");
    }
    assert_eq!(offered, 68, "every lab filled to capacity");
    assert_eq!(queued, 932);
    let directory = trust
        .directory()
        .list_labs(proto::ListLabsRequest {})
        .await
        .unwrap()
        .into_inner();
    for lab in directory.labs {
        for t in lab.tests {
            assert!(
                t.in_flight <= t.capacity,
                "{} {} {}/{}",
                lab.ods,
                t.test,
                t.in_flight,
                t.capacity
            );
        }
    }
    broker.shutdown().await;
}
