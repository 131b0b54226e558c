//! The live feed behind the page: one task follows every organisation's event log into the
//! tracker and publishes a fresh snapshot (as JSON) on a watch channel whenever something changed,
//! and at least once a second (waits, time left and heartbeats move on their own). Every open
//! page shares that one snapshot, so ten wall screens cost what one does.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::model::Snapshot;
use super::tracker::Tracker;
use crate::domain::OdsCode;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::ops::Presence;

/// How often the feed looks for changes to publish.
const STEP: Duration = Duration::from_millis(100);
/// The longest a published snapshot stands unchanged.
const REFRESH: Duration = Duration::from_secs(1);

/// Follows the broker until `stopping` turns true, publishing snapshots on `out`.
pub(crate) async fn run(
    engine: Engine,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    trusts: Vec<OdsCode>,
    labs: Vec<OdsCode>,
    out: watch::Sender<Arc<str>>,
    mut stopping: watch::Receiver<bool>,
) {
    let views = engine.views().clone();
    // Subscribe before reading the views, so that nothing falls between the two.
    let mut streams = tokio_stream::StreamMap::new();
    for org in trusts.iter().chain(&labs) {
        let (_, rx): (_, broadcast::Receiver<_>) = views.log(org).subscribe(u64::MAX, 0);
        streams.insert(org.clone(), BroadcastStream::new(rx));
    }
    let mut tracker = {
        let views = views.clone();
        let trusts = trusts.clone();
        let now = engine.now();
        match tokio::task::spawn_blocking(move || Tracker::fill(&views, &trusts, now)).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the coordinator page's feed could not start");
                return;
            }
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
                    dirty = true;
                }
                Some((_, Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    tracing::debug!(missed, "coordinator page feed fell behind; reloading");
                    tracker.reload(&views, &trusts, engine.now(), false);
                    dirty = true;
                }
                None => {}
            },
            _ = tick.tick() => {
                if dirty || last.elapsed() >= REFRESH {
                    let now = engine.now();
                    tracker.prune(now);
                    let snapshot = Snapshot::build(&views, &metrics, &tracker, &presence, now);
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
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
