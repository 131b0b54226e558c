//! The feed over a real engine (memory journal, manual clock): it follows nothing with no
//! viewer, a viewer who arrives later sees everything submitted before, viewers come and go
//! without the feed going wrong, and it stops when the last one leaves or the broker stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::domain::{Priority, RequestId, Timestamp};
use crate::engine::{ManualClock, Parts, Views};
use crate::routing::{Command, DefaultPolicy, Router, fixtures};
use crate::store::MemoryJournal;

const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);
/// The longest any wait here may take before the test fails (never reached when it passes).
const BOUND: Duration = Duration::from_secs(20);

struct Harness {
    engine: Engine,
    sequencer: Option<std::thread::JoinHandle<()>>,
    feed: Arc<Feed>,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    trusts: Vec<OdsCode>,
    stop: watch::Sender<bool>,
    /// Builds commands against the same catalogue as the engine's core.
    commands: Router,
    _audit: crate::audit::AuditWriter,
    _dir: tempfile::TempDir,
}

fn demo_router(config: &Config) -> Router {
    config.directory().router(Arc::new(DefaultPolicy))
}

impl Harness {
    fn start() -> Self {
        let config = Config::demo().expect("demo config");
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(T0));
        let router = demo_router(&config);
        let metrics = Arc::new(Metrics::new());
        let views = Arc::new(Views::new(&router, Vec::new(), 60_000, metrics.clone()));
        let (audit, writer) =
            AuditLog::open(dir.path(), Default::default(), clock.clone()).expect("audit");
        let (engine, sequencer) = Engine::start(Parts {
            router,
            journal: Box::new(MemoryJournal::default()),
            views,
            clock,
            metrics: metrics.clone(),
            audit,
            on_fatal: Arc::new(|f: &crate::engine::Fatal| panic!("fatal: {f}")),
        })
        .expect("engine");
        let trusts: Vec<OdsCode> = config.trusts.keys().cloned().collect();
        let labs = config.labs.iter().map(|l| l.ods.clone()).collect();
        let presence = Arc::new(Presence::default());
        let (stop, stopping) = watch::channel(false);
        let feed = Arc::new(Feed::new(
            engine.clone(),
            presence.clone(),
            metrics.clone(),
            trusts.clone(),
            labs,
            stopping,
        ));
        Self {
            engine,
            sequencer: Some(sequencer),
            feed,
            presence,
            metrics,
            trusts,
            stop,
            commands: demo_router(&config),
            _audit: writer,
            _dir: dir,
        }
    }

    /// Submits `n` stat requests for RJ1, each answered (durable, its events published) before
    /// the next, and returns their ids.
    async fn submit(&self, first: usize, n: usize) -> Vec<RequestId> {
        let mut ids = Vec::with_capacity(n);
        for order in first..first + n {
            let command = fixtures::submit(&self.commands, "RJ1", order, Priority::Stat, T0);
            let Command::Submit { id, .. } = &command else {
                unreachable!("fixtures::submit builds a submission")
            };
            ids.push(*id);
            self.engine.execute(command).await.expect("submitted");
        }
        ids
    }

    /// What a viewer arriving now would be shown: a tracker filled from the views this moment.
    fn fresh(&self) -> String {
        let views = self.engine.views();
        let now = self.engine.now();
        let tracker = Tracker::fill(views, &self.trusts, now);
        serde_json::to_string(&Snapshot::build(
            views,
            &self.metrics,
            &tracker,
            &self.presence,
            now,
        ))
        .expect("json")
    }

    async fn close(mut self) {
        self.engine.close();
        let sequencer = self.sequencer.take().expect("closed once");
        tokio::time::timeout(BOUND, tokio::task::spawn_blocking(move || sequencer.join()))
            .await
            .expect("the engine stopped")
            .expect("join")
            .expect("the engine did not panic");
    }
}

/// Waits (bounded) until the viewer's snapshot satisfies `check`, and returns it.
async fn until_shown(viewer: &mut Viewer, what: &str, check: impl Fn(&str) -> bool) -> Arc<str> {
    let seen = tokio::time::timeout(BOUND, async {
        loop {
            let json = viewer.snapshots().borrow_and_update().clone();
            if !json.is_empty() && check(&json) {
                return json;
            }
            viewer
                .snapshots()
                .changed()
                .await
                .expect("the feed ended while viewed");
        }
    })
    .await;
    seen.unwrap_or_else(|_| panic!("never shown: {what}"))
}

fn shows_all(json: &str, ids: &[RequestId]) -> bool {
    ids.iter().all(|id| json.contains(&id.to_string()))
}

/// Waits (bounded) until `n` feed tasks follow the event logs.
async fn until_following(feed: &Feed, n: usize) {
    let mut following = feed.following();
    tokio::time::timeout(BOUND, following.wait_for(|f| *f == n))
        .await
        .unwrap_or_else(|_| panic!("never {n} feed tasks following"))
        .expect("the count's sender lives as long as the feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_events_only_while_someone_views_the_page() {
    let h = Harness::start();

    // Nobody is viewing: nothing follows the event logs, and submissions are not tracked.
    let mut ids = h.submit(0, 4).await;
    assert_eq!(*h.feed.following().borrow(), 0);
    assert_eq!(h.feed.events_taken(), 0);

    // The first viewer starts the feed and is shown every request submitted before it came.
    let mut first = h.feed.join();
    until_shown(&mut first, "the four earlier requests", |j| {
        shows_all(j, &ids)
    })
    .await;
    assert_eq!(*h.feed.following().borrow(), 1);
    ids.extend(h.submit(4, 3).await);
    until_shown(&mut first, "the three later requests", |j| {
        shows_all(j, &ids)
    })
    .await;
    assert!(h.feed.events_taken() > 0, "the viewed feed takes events in");

    // A second viewer shares the one running feed; the first leaving does not stop it.
    let mut second = h.feed.join();
    assert_eq!(*h.feed.following().borrow(), 1);
    let shown = second.current().await.expect("a snapshot");
    assert!(shows_all(&shown, &ids), "the second viewer misses some");
    drop(first);
    ids.extend(h.submit(7, 2).await);
    until_shown(&mut second, "what came after the first left", |j| {
        shows_all(j, &ids)
    })
    .await;
    assert_eq!(*h.feed.following().borrow(), 1);

    // The last viewer leaves: the feed stops following, and later events are not taken in.
    drop(second);
    until_following(&h.feed, 0).await;
    let taken = h.feed.events_taken();
    ids.extend(h.submit(9, 3).await);
    assert_eq!(h.feed.events_taken(), taken);
    assert_eq!(*h.feed.following().borrow(), 0);

    // A viewer after that starts it again, from the whole picture.
    let mut again = h.feed.join();
    let fresh = h.fresh();
    until_shown(&mut again, "all twelve requests", |j| {
        shows_all(j, &ids) && j == fresh
    })
    .await;
    drop(again);
    until_following(&h.feed, 0).await;
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_arriving_while_requests_come_in_misses_none() {
    let h = Arc::new(Harness::start());
    // Viewers arrive and leave while a trust submits: each time, once the submissions pause, the
    // followed picture is exactly what a fill from the views gives (no event fell between the
    // feed's subscription and its fill, none was counted twice). Twelve requests in all: every
    // one fits in the page's lists, so the comparison covers each.
    for round in 0..4 {
        let submitter = {
            let h = h.clone();
            tokio::spawn(async move { h.submit(round * 3, 3).await })
        };
        let mut viewer = h.feed.join();
        let ids = submitter.await.expect("submitter");
        let fresh = h.fresh();
        until_shown(&mut viewer, "the same picture as a fresh fill", |j| {
            shows_all(j, &ids) && j == fresh
        })
        .await;
        drop(viewer);
        until_following(&h.feed, 0).await;
    }
    let h = Arc::into_inner(h).expect("the submitters are done");
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_ends_when_the_broker_stops_even_while_viewed() {
    let h = Harness::start();
    let mut viewer = h.feed.join();
    viewer.current().await.expect("a first snapshot");
    until_following(&h.feed, 1).await;
    h.stop.send_replace(true);
    until_following(&h.feed, 0).await;
    // The snapshots' sender went with the task: the page's stream ends.
    let ended = tokio::time::timeout(BOUND, async {
        while viewer.snapshots().changed().await.is_ok() {}
    })
    .await;
    assert!(ended.is_ok(), "the viewer's snapshots never ended");
    drop(viewer);
    h.close().await;
}
