//! The live feed behind the page, run only while someone is looking: the first viewer starts one
//! task that follows every organisation's event log into the tracker and publishes a fresh
//! snapshot (as JSON) on a watch channel whenever something changed, and at least once a second
//! (waits, time left and heartbeats move on their own); the last viewer to leave stops it. Every
//! open page shares that one snapshot, so ten wall screens cost what one does, and none costs
//! nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::model::Snapshot;
use super::tracker::Tracker;
use crate::domain::OdsCode;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::ops::Presence;

#[cfg(test)]
mod tests;

/// How often the feed looks for changes to publish.
const STEP: Duration = Duration::from_millis(100);
/// The longest a published snapshot stands unchanged.
const REFRESH: Duration = Duration::from_secs(1);

/// The page's feed: started by the first viewer, stopped when the last one leaves.
#[derive(Debug)]
pub(crate) struct Feed {
    follow: Arc<Follow>,
    state: Mutex<State>,
}

/// What a running feed reads, and what it reports about itself.
#[derive(Debug)]
struct Follow {
    engine: Engine,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    /// The directory's organisations, whose events the page follows.
    trusts: Vec<OdsCode>,
    labs: Vec<OdsCode>,
    /// True once the broker begins to stop: the feed ends then, viewers or not.
    stopping: watch::Receiver<bool>,
    /// How many feed tasks are subscribed to the event logs: 0 with no viewer, 1 while viewed
    /// (2 for a moment when a viewer arrives as a stopping task winds down).
    following: watch::Sender<usize>,
    /// Events taken into a tracker, over every run.
    events: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    viewers: usize,
    run: Option<Run>,
}

/// The running task's snapshots, and the handle that stops it when dropped.
#[derive(Debug)]
struct Run {
    snapshots: watch::Receiver<Arc<str>>,
    _stop: oneshot::Sender<()>,
}

/// One viewer of the feed: the snapshots, for as long as it lives.
#[derive(Debug)]
pub(crate) struct Viewer {
    feed: Arc<Feed>,
    snapshots: watch::Receiver<Arc<str>>,
}

impl Feed {
    /// A feed over the broker's organisations, not yet running.
    pub(crate) fn new(
        engine: Engine,
        presence: Arc<Presence>,
        metrics: Arc<Metrics>,
        trusts: Vec<OdsCode>,
        labs: Vec<OdsCode>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            follow: Arc::new(Follow {
                engine,
                presence,
                metrics,
                trusts,
                labs,
                stopping,
                following: watch::channel(0).0,
                events: AtomicU64::new(0),
            }),
            state: Mutex::new(State::default()),
        }
    }

    /// Joins the feed, starting it if nobody was viewing (or the task ended on its own).
    pub(crate) fn join(self: &Arc<Self>) -> Viewer {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.viewers += 1;
        let live = state
            .run
            .as_ref()
            .filter(|r| r.snapshots.has_changed().is_ok())
            .map(|r| r.snapshots.clone());
        let snapshots = live.unwrap_or_else(|| {
            let (out, snapshots) = watch::channel::<Arc<str>>(Arc::from(""));
            let (stop_tx, stop) = oneshot::channel();
            tokio::spawn(run(self.follow.clone(), out, stop));
            state.run = Some(Run {
                snapshots: snapshots.clone(),
                _stop: stop_tx,
            });
            snapshots
        });
        Viewer {
            feed: self.clone(),
            snapshots,
        }
    }

    fn leave(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.viewers = state.viewers.saturating_sub(1);
        if state.viewers == 0 {
            // Dropping the handle tells the task to stop.
            state.run = None;
        }
    }

    /// How many feed tasks follow the event logs now, as a channel to wait on.
    #[cfg(test)]
    fn following(&self) -> watch::Receiver<usize> {
        self.follow.following.subscribe()
    }

    /// Events taken into a tracker so far.
    #[cfg(test)]
    fn events_taken(&self) -> u64 {
        self.follow.events.load(Ordering::Relaxed)
    }
}

impl Viewer {
    /// The snapshots as they are published; the first is an empty string until the feed has
    /// built one. The sender is gone when the feed ended (the broker is stopping).
    pub(crate) fn snapshots(&mut self) -> &mut watch::Receiver<Arc<str>> {
        &mut self.snapshots
    }

    /// The first snapshot there is, waiting for the feed to build it; `None` when the feed ended
    /// first.
    pub(crate) async fn current(&mut self) -> Option<Arc<str>> {
        self.snapshots
            .wait_for(|s| !s.is_empty())
            .await
            .ok()
            .map(|s| s.clone())
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.feed.leave();
    }
}

/// Counts a task as following from its start until it ends, however it ends.
struct Following(Arc<Follow>);

impl Following {
    fn start(follow: Arc<Follow>) -> Self {
        follow.following.send_modify(|n| *n += 1);
        Self(follow)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.following.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Follows the broker until `stop` is dropped or the broker stops, publishing snapshots on `out`.
async fn run(follow: Arc<Follow>, out: watch::Sender<Arc<str>>, mut stop: oneshot::Receiver<()>) {
    let counted = Following::start(follow.clone());
    let Follow {
        engine,
        presence,
        metrics,
        trusts,
        labs,
        ..
    } = &*counted.0;
    let mut stopping = follow.stopping.clone();
    let views = engine.views().clone();
    // Subscribe before reading the views, so that nothing falls between the two: an event
    // published before the fill reads its request is both seen by the fill and applied after it,
    // and the tracker takes the same event twice without counting it twice.
    let mut streams = tokio_stream::StreamMap::new();
    for org in trusts.iter().chain(labs) {
        let (_, rx): (_, broadcast::Receiver<_>) = views.log(org).subscribe(u64::MAX, 0);
        streams.insert(org.clone(), BroadcastStream::new(rx));
    }
    let mut tracker = {
        let views = views.clone();
        let trusts = trusts.clone();
        let now = engine.now();
        let fill = tokio::task::spawn_blocking(move || Tracker::fill(&views, &trusts, now));
        tokio::select! {
            filled = fill => match filled {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "the coordinator page's feed could not start");
                    return;
                }
            },
            _ = &mut stop => return,
            _ = stopping.wait_for(|s| *s) => return,
        }
    };
    let mut dirty = true;
    let mut last = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = streams.next(), if !streams.is_empty() => match item {
                Some((_, Ok(event))) => {
                    tracker.on_event(&views, &event);
                    follow.events.fetch_add(1, Ordering::Relaxed);
                    dirty = true;
                }
                Some((_, Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    tracing::debug!(missed, "coordinator page feed fell behind; reloading");
                    tracker.reload(&views, trusts, engine.now(), false);
                    dirty = true;
                }
                None => {}
            },
            _ = tick.tick() => {
                if dirty || last.elapsed() >= REFRESH {
                    let now = engine.now();
                    tracker.prune(now);
                    let snapshot = Snapshot::build(&views, metrics, &tracker, presence, now);
                    match serde_json::to_string(&snapshot) {
                        Ok(json) => {
                            out.send_replace(Arc::from(json));
                        }
                        Err(e) => tracing::error!(error = %e, "cannot encode the page snapshot"),
                    }
                    dirty = false;
                    last = tokio::time::Instant::now();
                }
            }
            _ = &mut stop => return,
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
