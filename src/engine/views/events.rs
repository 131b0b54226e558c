//! One organisation's event log: the retained history that a watch catches up from, and the
//! live channel it then follows.

use std::sync::RwLock;

use tokio::sync::broadcast;

use crate::domain::Timestamp;
use crate::engine::chunked::ChunkedQueue;
use crate::routing::Event;

/// Capacity of each organisation's live event channel; a watcher that falls further behind
/// catches up from the retained log instead.
const LIVE_EVENTS: usize = 1024;

/// One organisation's events: the retained log and the live channel.
#[derive(Debug)]
pub struct EventLog {
    pub(super) history: RwLock<ChunkedQueue<Event>>,
    live: broadcast::Sender<Event>,
}

impl EventLog {
    pub(super) fn new() -> Self {
        Self {
            history: RwLock::new(ChunkedQueue::default()),
            live: broadcast::channel(LIVE_EVENTS).0,
        }
    }

    pub(super) fn publish(&self, event: Event) {
        let mut history = self.history.write().unwrap_or_else(|e| e.into_inner());
        // Send under the lock so that a subscriber sees each event exactly once: either in the
        // history it copies or on the channel it joined.
        let _ = self.live.send(event.clone());
        history.push_back(event);
    }

    /// At most `limit` retained events after `after`, and a receiver for every later event.
    pub fn subscribe(&self, after: u64, limit: usize) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history.read().unwrap_or_else(|e| e.into_inner());
        let rx = self.live.subscribe();
        (Self::after(&history, after, limit), rx)
    }

    /// At most `limit` retained events after `after`: a watcher reads its backlog a part at a
    /// time, so that the syncer, which publishes under this lock, never waits for a copy of a
    /// whole history (a million events for a large trust).
    pub fn since(&self, after: u64, limit: usize) -> Vec<Event> {
        let history = self.history.read().unwrap_or_else(|e| e.into_inner());
        Self::after(&history, after, limit)
    }

    pub(super) fn after(history: &ChunkedQueue<Event>, after: u64, limit: usize) -> Vec<Event> {
        history
            .iter_from(|e| e.sequence <= after)
            .take(limit)
            .cloned()
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.history.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Appends every retained event to `out` (for snapshots).
    pub(super) fn copy_into(&self, out: &mut Vec<Event>) {
        let history = self.history.read().unwrap_or_else(|e| e.into_inner());
        out.extend(history.iter().cloned());
    }

    pub(super) fn prune_before(&self, cutoff: Timestamp) {
        let mut history = self.history.write().unwrap_or_else(|e| e.into_inner());
        while history.front().is_some_and(|e| e.time < cutoff) {
            history.pop_front();
        }
    }
}

#[cfg(test)]
impl EventLog {
    /// An empty log, for tests of its readers.
    pub(crate) fn empty() -> Self {
        Self::new()
    }

    /// Publishes `event` as the syncer would.
    pub(crate) fn publish_for_tests(&self, event: Event) {
        self.publish(event);
    }

    /// Events the live channel holds before a receiver lags.
    pub(crate) const LIVE_CAPACITY: usize = LIVE_EVENTS;
}
