//! The waiting queue, in order of service: priority band first, then the earliest sample deadline.
//!
//! Requests are grouped by (trust, tests), because every request in a group is eligible at the same
//! labs; when a lab frees capacity only the groups it can serve are looked at, so the cost grows
//! with the number of groups and the log of the queue, not with its length.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::domain::{OdsCode, Priority, RequestId, TestSet, Timestamp};

/// Position in the order of service; smaller is served first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueKey {
    /// Higher priority first.
    pub priority: Reverse<Priority>,
    /// Earlier deadline first.
    pub deadline: Timestamp,
    /// Earlier submission first.
    pub ordinal: u64,
    /// The request.
    pub id: RequestId,
}

/// Requests that share a trust and a test set.
pub type GroupKey = (OdsCode, TestSet);

/// Waiting requests, grouped by where they could go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaitQueue {
    #[serde(deserialize_with = "crate::store::bulk::map_of_packed_sets")]
    groups: HashMap<GroupKey, BTreeSet<QueueKey>>,
    by_priority: [usize; 4],
    len: usize,
}

fn band(p: Priority) -> usize {
    p as usize
}

impl WaitQueue {
    /// Adds a request; adding one twice has no effect.
    pub fn insert(&mut self, group: GroupKey, key: QueueKey) {
        let priority = key.priority.0;
        if self.groups.entry(group).or_default().insert(key) {
            self.len += 1;
            self.by_priority[band(priority)] += 1;
        }
    }

    /// Removes a request; returns whether it was there.
    pub fn remove(&mut self, group: &GroupKey, key: &QueueKey) -> bool {
        let Some(set) = self.groups.get_mut(group) else {
            return false;
        };
        let removed = set.remove(key);
        if set.is_empty() {
            self.groups.remove(group);
        }
        if removed {
            self.len -= 1;
            self.by_priority[band(key.priority.0)] -= 1;
        }
        removed
    }

    /// The groups and their waiting requests in order of service.
    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &BTreeSet<QueueKey>)> {
        self.groups.iter()
    }

    /// Waiting requests of one priority.
    pub fn len_of(&self, priority: Priority) -> usize {
        self.by_priority[band(priority)]
    }

    /// Every waiting request.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every waiting request in order of service (for inspection and tests; not on hot paths).
    pub fn in_order(&self) -> Vec<QueueKey> {
        let mut all: Vec<QueueKey> = self.groups.values().flatten().cloned().collect();
        all.sort();
        all
    }

    /// The first request in the whole order of service.
    pub fn head(&self) -> Option<&QueueKey> {
        self.groups.values().filter_map(|s| s.first()).min()
    }
}
