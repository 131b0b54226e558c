//! Lab presence: a lab that neither calls nor keeps a watch open for the heartbeat timeout is
//! marked OFFLINE, so its open offers go to labs that are there. Off unless configured.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::domain::Clock;
use crate::domain::{LabStatus, OdsCode, Timestamp};
use crate::engine::Engine;
use crate::routing::Command;

/// When each lab was last heard from, and how many watch streams it holds open.
#[derive(Debug, Default)]
pub struct Presence {
    seen: DashMap<OdsCode, (Timestamp, usize)>,
}

/// An open watch stream: the lab counts as present while it lives.
#[derive(Debug)]
pub struct Watching {
    presence: Arc<Presence>,
    lab: OdsCode,
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(mut entry) = self.presence.seen.get_mut(&self.lab) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

impl Presence {
    /// Records a call from `lab` at `now`.
    pub fn touch(&self, lab: &OdsCode, now: Timestamp) {
        self.seen.entry(lab.clone()).or_insert((now, 0)).0 = now;
    }

    /// Records a watch stream opened by `lab`; it is present until the returned guard drops.
    pub fn watching(self: &Arc<Self>, lab: &OdsCode, now: Timestamp) -> Watching {
        let mut entry = self.seen.entry(lab.clone()).or_insert((now, 0));
        entry.0 = now;
        entry.1 += 1;
        Watching {
            presence: self.clone(),
            lab: lab.clone(),
        }
    }

    /// When `lab` was last heard from, and whether it holds a watch open now (the coordinator
    /// page's heartbeat column).
    pub fn last_seen(&self, lab: &OdsCode) -> Option<(Timestamp, bool)> {
        self.seen.get(lab).map(|entry| (entry.0, entry.1 > 0))
    }

    /// True when `lab` holds a watch open or was heard from after `since`.
    fn present(&self, lab: &OdsCode, since: Timestamp) -> bool {
        self.seen
            .get(lab)
            .is_some_and(|entry| entry.1 > 0 || entry.0 > since)
    }
}

/// Marks ONLINE labs that have been silent for `timeout` OFFLINE, checking a few times per
/// timeout on the engine's clock, until the engine stops.
pub async fn watch_heartbeats(
    engine: Engine,
    presence: Arc<Presence>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
) {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let started = clock.now();
    let mut next = started.plus_millis(timeout_ms / 4);
    loop {
        clock.sleep_until(next).await;
        if engine.is_stopping() {
            return;
        }
        let now = clock.now();
        next = now.plus_millis((timeout_ms / 4).max(1));
        // A broker that has just started gives every lab a full timeout to show up.
        let since = now.plus_millis(-timeout_ms);
        if since < started {
            continue;
        }
        for lab in engine.views().labs() {
            let ods = lab.config.ods;
            if lab.status != LabStatus::Online || presence.present(&ods, since) {
                continue;
            }
            tracing::warn!(lab = %ods, silent_secs = timeout.as_secs(), "lab silent past its heartbeat timeout; marking it offline");
            let command = Command::SetStatus {
                lab: ods.clone(),
                status: LabStatus::Offline,
            };
            if let Err(err) = engine.execute(command).await {
                tracing::warn!(lab = %ods, error = %err, "could not mark a silent lab offline");
            }
        }
    }
}
