//! The Work stream: a lab takes offers and works its jobs over one stream. Each action is
//! answered by its tag; a failed action is answered with its code and the stream goes on; actions
//! get the same checks, audit entries and rate limit as the calls they stand for.

mod common;

use std::collections::HashMap;

use common::*;
use labaid::audit::AUDIT_FILE;
use labaid::client::Client;
use labaid::config::Config;
use labaid::proto::work_request::Action;
use labaid::proto::work_response::Item;
use labaid::proto::{self, JobEventKind, Priority, RequestState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// A lab's open Work stream.
struct Work {
    actions: mpsc::Sender<proto::WorkRequest>,
    replies: Streaming<proto::WorkResponse>,
}

impl Work {
    /// Opens a stream whose first message does `first`.
    async fn open_with(lab: &Client, first: Option<Action>) -> Result<Self, tonic::Status> {
        let (actions, outbound) = mpsc::channel(16);
        actions
            .send(proto::WorkRequest {
                tag: 0,
                action: first,
            })
            .await
            .unwrap();
        let replies = lab
            .labs()
            .work(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        Ok(Self { actions, replies })
    }

    /// Opens a stream of the lab's offers only.
    async fn offers(lab: &Client) -> Self {
        let watch = proto::WatchOffersRequest {
            after_sequence: 0,
            kinds: vec![JobEventKind::Offered as i32],
        };
        Self::open_with(lab, Some(Action::Watch(watch)))
            .await
            .expect("open a Work stream")
    }

    async fn send(&self, tag: u64, action: Option<Action>) {
        self.actions
            .send(proto::WorkRequest { tag, action })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Item {
        next(&mut self.replies).await.item.expect("an item")
    }

    async fn event(&mut self) -> proto::JobEvent {
        match self.next().await {
            Item::Event(e) => e,
            Item::Result(r) => panic!("expected an event, got the answer {r:?}"),
        }
    }

    /// The answers to the next `n` actions, by tag (actions run concurrently).
    async fn answers(&mut self, n: usize) -> HashMap<u64, proto::WorkResult> {
        let mut answers = HashMap::new();
        while answers.len() < n {
            match self.next().await {
                Item::Result(r) => {
                    assert!(answers.insert(r.tag, r).is_none(), "one answer per tag");
                }
                Item::Event(e) => panic!("expected answers, got the event {e:?}"),
            }
        }
        answers
    }

    async fn answer(&mut self) -> proto::WorkResult {
        self.answers(1).await.into_values().next().unwrap()
    }
}

fn accept(id: &str) -> Option<Action> {
    Some(Action::Accept(proto::AcceptJobRequest { id: id.into() }))
}

fn code(r: &proto::WorkResult) -> Code {
    Code::from_i32(r.error.as_ref().map_or(0, |e| e.code))
}

#[tokio::test]
async fn a_lab_takes_an_offer_and_works_the_job_over_one_stream() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    let broker = TestBroker::spawn_with(config).await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    let mut work = Work::offers(&lab).await;
    let r = submit(&trust, submission("WORK-1", Priority::Stat, broker.now())).await;

    let offer = work.event().await;
    assert_eq!(offer.kind, JobEventKind::Offered as i32);
    assert_eq!(offer.job.unwrap().id, r.id);

    work.send(1, accept(&r.id)).await;
    let accepted = work.answer().await;
    assert_eq!((accepted.tag, code(&accepted)), (1, Code::Ok));
    let job = accepted.job.unwrap();
    assert_eq!(job.state, RequestState::Accepted as i32);
    assert_eq!(job.patient.unwrap().nhs_number, "9434765919");

    let receive = proto::ReceiveSampleRequest { id: r.id.clone() };
    work.send(2, Some(Action::Receive(receive))).await;
    let received = work.answer().await;
    assert_eq!(received.tag, 2);
    assert_eq!(received.job.unwrap().state, RequestState::Received as i32);

    let results = proto::PostResultsRequest {
        id: r.id.clone(),
        observations: vec![k_result("6.9")],
    };
    work.send(3, Some(Action::PostResults(results))).await;
    let resulted = work.answer().await;
    assert_eq!(resulted.tag, 3);
    let job = resulted.job.unwrap();
    assert_eq!(job.state, RequestState::Resulted as i32);
    assert_eq!(
        job.results[0].flag,
        proto::ObservationFlag::CriticalHigh as i32
    );
    assert_eq!(
        get_request(&trust, &r.id).await.state,
        RequestState::Resulted as i32
    );
    drop(work);
    broker.shutdown().await;

    let audit = std::fs::read_to_string(data.path().join(AUDIT_FILE)).unwrap();
    let entries: Vec<labaid::audit::AuditEntry> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &labaid::audit::AuditEntry| e.org == "R1H")
        .collect();
    let actions: Vec<(&str, Option<&str>)> = entries
        .iter()
        .map(|e| (e.action.as_str(), e.request_id.as_deref()))
        .collect();
    let id = Some(r.id.as_str());
    assert_eq!(
        actions,
        [
            ("offers.watch", None),
            ("job.accept", id),
            ("job.receive", id),
            ("job.results", id)
        ]
    );
}

#[tokio::test]
async fn a_failed_action_is_answered_with_its_code_and_the_stream_goes_on() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    let mut work = Work::offers(&lab).await;
    let r = submit(&trust, submission("WORK-2", Priority::Urgent, broker.now())).await;
    assert_eq!(work.event().await.job.unwrap().id, r.id);

    let unknown = "7f8c0d6e-0000-4000-8000-000000000000";
    work.send(10, accept(unknown)).await;
    work.send(11, accept("not-an-id")).await;
    work.send(12, None).await;
    let watch_again = proto::WatchOffersRequest::default();
    work.send(13, Some(Action::Watch(watch_again))).await;
    let early = proto::ReceiveSampleRequest { id: r.id.clone() };
    work.send(14, Some(Action::Receive(early))).await;
    let decline = proto::DeclineJobRequest {
        id: r.id.clone(),
        reason: String::new(),
    };
    work.send(15, Some(Action::Decline(decline))).await;
    let answers = work.answers(6).await;
    let codes: Vec<(u64, Code)> = (10..=15).map(|t| (t, code(&answers[&t]))).collect();
    assert_eq!(
        codes,
        [
            (10, Code::NotFound),
            (11, Code::InvalidArgument),
            (12, Code::InvalidArgument),
            (13, Code::InvalidArgument),
            (14, Code::FailedPrecondition),
            (15, Code::InvalidArgument),
        ]
    );
    let field = |t: u64| {
        answers[&t].error.as_ref().unwrap().field_violations[0]
            .field
            .clone()
    };
    assert_eq!(
        [field(11), field(12), field(13), field(15)],
        ["id", "action", "action", "reason"]
    );
    assert!(answers.values().all(|a| a.job.is_none()));
    // Nothing changed: the offer is still open, and the same stream accepts it.
    let job = lab
        .labs()
        .get_job(proto::GetJobRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, RequestState::Offered as i32);
    work.send(16, accept(&r.id)).await;
    let accepted = work.answer().await;
    assert_eq!((accepted.tag, code(&accepted)), (16, Code::Ok));
    // A decline on the stream hands the offer on: answered without a job.
    let second = submit(&trust, submission("WORK-3", Priority::Urgent, broker.now())).await;
    assert_eq!(work.event().await.job.unwrap().id, second.id);
    let decline = proto::DeclineJobRequest {
        id: second.id.clone(),
        reason: "analyser down".into(),
    };
    work.send(17, Some(Action::Decline(decline))).await;
    let declined = work.answer().await;
    assert_eq!((declined.tag, code(&declined)), (17, Code::Ok));
    assert!(declined.job.is_none());
    assert_ne!(get_request(&trust, &second.id).await.lab, "R1H");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_work_stream_opens_with_watch_and_only_for_a_lab() {
    let broker = TestBroker::spawn().await;
    let lab = broker.client("R1H").await;
    let unknown = "7f8c0d6e-0000-4000-8000-000000000000";
    for first in [accept(unknown), None] {
        let err = Work::open_with(&lab, first).await.err().expect("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    // A client that closes its side before sending anything.
    let (actions, outbound) = mpsc::channel::<proto::WorkRequest>(1);
    drop(actions);
    let err = lab
        .labs()
        .work(ReceiverStream::new(outbound))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let trust = broker.client("RJ1").await;
    let watch = Some(Action::Watch(proto::WatchOffersRequest::default()));
    let err = Work::open_with(&trust, watch).await.err().expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    let kinds = proto::WatchOffersRequest {
        after_sequence: 0,
        kinds: vec![0],
    };
    let err = Work::open_with(&lab, Some(Action::Watch(kinds)))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    broker.shutdown().await;
}

#[tokio::test]
async fn each_action_is_charged_to_the_rate_limit_as_a_call() {
    let mut config = Config::demo().unwrap();
    config.limits.rate_per_second = 1;
    config.limits.burst = 3;
    let broker = TestBroker::spawn_with(config).await;
    let lab = broker.client("R1H").await;
    // Opening costs one call; two actions fit in the rest of the burst, the third does not.
    let mut work = Work::offers(&lab).await;
    let unknown = "7f8c0d6e-0000-4000-8000-000000000000";
    for tag in 1..=3 {
        work.send(tag, accept(unknown)).await;
    }
    let answers = work.answers(3).await;
    let mut codes: Vec<Code> = answers.values().map(code).collect();
    codes.sort_by_key(|c| *c as i32);
    assert_eq!(
        codes,
        [Code::NotFound, Code::NotFound, Code::ResourceExhausted]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_a_work_stream_with_unavailable_naming_where_to_resume() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    let mut work = Work::offers(&lab).await;
    submit(&trust, submission("WORK-4", Priority::Stat, broker.now())).await;
    let offer = work.event().await;
    let stopping = tokio::spawn(broker.shutdown());
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), work.replies.message())
        .await
        .expect("the stream ended in time")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let resume = format!("after_sequence={}", offer.sequence);
    assert!(status.message().contains(&resume), "{status}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn more_actions_than_run_at_once_are_all_answered_once() {
    let broker = TestBroker::spawn().await;
    let lab = broker.client("R1H").await;
    let mut work = Work::offers(&lab).await;
    let unknown = "7f8c0d6e-0000-4000-8000-000000000000";
    // More than the 256 a stream runs at once, all sent before any answer is read.
    let sent = 700u64;
    for tag in 1..=sent {
        work.send(tag, accept(unknown)).await;
    }
    let answers = work.answers(sent as usize).await;
    let mut tags: Vec<u64> = answers.keys().copied().collect();
    tags.sort_unstable();
    assert_eq!(tags, (1..=sent).collect::<Vec<_>>());
    for answer in answers.values() {
        let code = code(answer);
        // The demo's rate limit may refuse some; every one is answered either way.
        assert!(
            matches!(code, Code::NotFound | Code::ResourceExhausted),
            "{code:?}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn the_typed_client_works_a_job_and_events_go_on_after_its_sender_is_dropped() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;
    let watch = proto::WatchOffersRequest {
        after_sequence: 0,
        kinds: vec![JobEventKind::Offered as i32],
    };
    let (actions, mut replies) = lab.work(watch, 4).await.expect("open a Work stream");
    let first = submit(&trust, submission("WORK-5", Priority::Stat, broker.now())).await;
    let offered = |item: Option<Item>| match item {
        Some(Item::Event(e)) => e.job.expect("a job").id,
        other => panic!("expected an offer, got {other:?}"),
    };
    assert_eq!(offered(next(&mut replies).await.item), first.id);
    assert!(actions.send(7, accept(&first.id).unwrap()).await);
    match next(&mut replies).await.item {
        Some(Item::Result(r)) => {
            assert_eq!((r.tag, code(&r)), (7, Code::Ok));
            assert_eq!(r.job.unwrap().state, RequestState::Accepted as i32);
        }
        other => panic!("expected the answer, got {other:?}"),
    }
    // The lab closes its side: no more actions, but its offers still arrive.
    drop(actions);
    let second = submit(&trust, submission("WORK-6", Priority::Stat, broker.now())).await;
    assert_eq!(offered(next(&mut replies).await.item), second.id);
    broker.shutdown().await;
}
