//! Operations: metrics after a walkthrough, health endpoints, and health during drain.

mod common;

use std::time::Duration;

use common::*;
use labaid::proto::{self, Priority};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Snapshots of `kind` handed to the writer so far.
fn snapshots(metrics: &str, kind: &str) -> f64 {
    sample(
        metrics,
        &format!("labaid_store_snapshots_total{{kind=\"{kind}\"}}"),
    )
}

/// Snapshots of `kind` made durable so far, and their bytes.
fn written(metrics: &str, kind: &str) -> f64 {
    sample(
        metrics,
        &format!("labaid_store_snapshot_write_seconds_count{{kind=\"{kind}\"}}"),
    )
}

fn written_bytes(metrics: &str, kind: &str) -> f64 {
    sample(
        metrics,
        &format!("labaid_store_snapshot_bytes_total{{kind=\"{kind}\"}}"),
    )
}

#[tokio::test]
async fn metrics_move_by_the_right_amount_after_a_walkthrough() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let r = submit(&trust, submission("M-1", Priority::Stat, broker.now())).await;
    let lab = broker.client(&r.lab).await;
    broker.advance(Duration::from_secs(30));
    accept_and_receive(&lab, &r.id).await;
    broker.advance(Duration::from_secs(60 * 60));
    lab.labs()
        .post_results(proto::PostResultsRequest {
            id: r.id.clone(),
            observations: vec![proto::Observation {
                test: "K".into(),
                value: "7.0".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    // Two routine requests wait: nothing has room for them.
    close_all_labs(&broker).await;
    for i in 0..2 {
        trust
            .requests()
            .submit_request(submission(
                &format!("M-Q{i}"),
                Priority::Routine,
                broker.now(),
            ))
            .await
            .unwrap();
    }
    let err = trust
        .requests()
        .get_request(proto::GetRequestRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    assert!(err.is_err());

    let (status, body) = http_get(broker.ops_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &body,
            r#"labaid_requests{priority="stat",state="resulted"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&body, r#"labaid_requests{priority="stat",state="offered"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &body,
            r#"labaid_requests{priority="routine",state="queued"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&body, r#"labaid_queue_depth{priority="routine"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &body,
            r#"labaid_time_to_offer_seconds_count{priority="stat"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            r#"labaid_time_to_accept_seconds_sum{priority="stat"}"#
        ),
        30.0
    );
    assert_eq!(
        sample(
            &body,
            r#"labaid_time_to_result_seconds_count{priority="stat"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            r#"labaid_time_to_result_seconds_sum{priority="stat"}"#
        ),
        3630.0
    );
    assert_eq!(
        sample(&body, r#"labaid_critical_results_total{priority="stat"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            r#"labaid_grpc_calls_total{code="OK",method="labaid.v1.RequestService/SubmitRequest"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &body,
            r#"labaid_grpc_calls_total{code="NOT_FOUND",method="labaid.v1.RequestService/GetRequest"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            &format!(r#"labaid_lab_capacity{{lab="{}",test="K"}}"#, r.lab)
        ),
        0.0
    );
    assert!(sample(&body, "labaid_store_batch_commands_count") >= 5.0);
    // One decision per command: three submissions, an accept, a receipt, results, and a status
    // change per lab; reads decide nothing.
    assert!(sample(&body, "labaid_decision_seconds_count") >= 6.0);
    assert!(sample(&body, "labaid_decision_seconds_sum") > 0.0);
    // The views are updated once per batch the syncer takes; the changes above made at least one.
    assert!(sample(&body, "labaid_view_update_seconds_count") >= 1.0);
    assert!(!body.contains("9434765919"), "no patient data in metrics");
    broker.shutdown().await;
}

#[tokio::test]
async fn metrics_count_snapshots_by_kind_time_the_copy_deciding_waits_for_and_the_writes() {
    let mut config = labaid::Config::demo().unwrap();
    config.store.snapshot_min_bytes = 1;
    // On either store: files or rows, due on the same trigger.
    let broker = TestBroker::spawn_with(config).await;
    let (_, before) = http_get(broker.ops_addr, "/metrics").await;
    assert_eq!(
        sample(&before, "labaid_store_snapshot_copy_seconds_count"),
        0.0
    );
    // Both kinds are exported from the start, at zero.
    for kind in ["full", "incremental"] {
        assert_eq!(snapshots(&before, kind), 0.0);
        assert_eq!(written(&before, kind), 0.0);
        assert_eq!(written_bytes(&before, kind), 0.0);
    }
    let trust = broker.client("RJ1").await;
    // With a trigger of one byte, the first snapshot after the start is incremental (the store
    // wrote a full one of the empty state), and a full one follows once the incremental ones
    // weigh half of it; each is taken at the sync after it is due.
    let mut after = String::new();
    for i in 0..200 {
        submit(
            &trust,
            submission(&format!("SNAP-{i}"), Priority::Urgent, broker.now()),
        )
        .await;
        after = http_get(broker.ops_addr, "/metrics").await.1;
        // Each is written on the writer's thread after it is handed over: the submissions go on
        // until one of each kind is durable.
        if ["full", "incremental"]
            .iter()
            .all(|k| written(&after, k) >= 1.0)
        {
            break;
        }
    }
    for kind in ["full", "incremental"] {
        assert!(written(&after, kind) >= 1.0, "no {kind} snapshot written");
        // Never counted as written before it is handed over; a header alone is tens of bytes.
        assert!(written(&after, kind) <= snapshots(&after, kind));
        assert!(written_bytes(&after, kind) >= 64.0 * written(&after, kind));
    }
    assert!(
        snapshots(&after, "full") >= 1.0,
        "no full snapshot after 200 submissions"
    );
    // The copy is taken, and timed, before the snapshot is handed over and counted.
    assert!(
        sample(&after, "labaid_store_snapshot_copy_seconds_count") >= snapshots(&after, "full")
    );
    assert!(
        snapshots(&after, "incremental") >= 1.0,
        "an incremental snapshot came first"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn healthz_and_readyz_answer_for_load_balancers() {
    let broker = TestBroker::spawn().await;
    assert_eq!(http_get(broker.ops_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(broker.ops_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(broker.ops_addr, "/nope").await.0, 404);
    broker.shutdown().await;
}

#[tokio::test]
async fn health_goes_not_serving_when_draining_begins() {
    // The health watch stream never ends by itself, so shutdown waits out the grace period.
    let mut config = labaid::Config::demo().unwrap();
    config.shutdown_grace = Duration::from_millis(200);
    let broker = TestBroker::spawn_with(config).await;
    let mut health = HealthClient::new(broker.client_with_token(None).await.channel());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(broker.shutdown());
    assert_eq!(
        next(&mut watch).await.status,
        ServingStatus::NotServing as i32
    );
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_submitted_during_shutdown_is_kept_or_refused_never_lost() {
    let data = tempfile::tempdir().unwrap();
    let mut config = labaid::Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    let broker = TestBroker::spawn_with(config.clone()).await;
    let trust = broker.client("RJZ").await;
    let now = broker.now();
    // Submitters run flat out; shutdown begins once a few have been acknowledged.
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = trust.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..400 {
                let order = format!("SD-{worker}-{i}");
                let result = client
                    .requests()
                    .submit_request(submission(&order, Priority::Urgent, now))
                    .await;
                let stop = result.is_err();
                outcomes.push((order, result.map(|r| r.into_inner().request.unwrap().id)));
                if stop {
                    break;
                }
            }
            outcomes
        }));
    }
    let mut events = watch_request_events(&trust).await;
    for _ in 0..20 {
        next(&mut events).await;
    }
    broker.shutdown().await;
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        for (order, result) in t.await.unwrap() {
            match result {
                Ok(id) => acknowledged.push((order, id)),
                Err(status) => {
                    // Refusals: UNAVAILABLE from the broker, or the connection going away under
                    // the call, which the client reports as a transport error of its own (a
                    // GOAWAY, a broken pipe): a status with a source was never a broker answer.
                    let transport = std::error::Error::source(&status).is_some();
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::Cancelled
                        ) || transport,
                        "{status:?}"
                    );
                    refused.push(order);
                }
            }
        }
    }
    assert!(acknowledged.len() >= 20);
    assert!(
        !refused.is_empty(),
        "shutdown happened while submitters were running"
    );

    // Restart on the same store: every acknowledged request is there; a refused one was either
    // never stored or is returned as the original when retried, never stored twice.
    let again = TestBroker::spawn_with(config).await;
    let trust = again.client("RJZ").await;
    for (order, id) in &acknowledged {
        let r = trust
            .requests()
            .get_request(proto::GetRequestRequest { id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {order} lost: {e:?}"))
            .into_inner();
        assert_eq!(&r.order_number, order);
    }
    for order in &refused {
        trust
            .requests()
            .submit_request(submission(order, Priority::Urgent, now))
            .await
            .unwrap();
    }
    let mut total = 0;
    let mut token = String::new();
    loop {
        let page = trust
            .requests()
            .list_requests(proto::ListRequestsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        total += page.requests.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(total, acknowledged.len() + refused.len());
    again.shutdown().await;
}
