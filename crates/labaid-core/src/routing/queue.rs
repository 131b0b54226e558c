//! The waiting queue, in order of service: priority band first, then the earliest sample deadline.
//!
//! Requests are grouped by (trust, tests), because every request in a group is eligible at the same
//! labs. The groups' heads are kept in order of service too, so a lab that frees capacity looks at
//! groups in that order and stops at the first whose head comes after the best request found;
//! inside a group a lab seeks each band to the first deadline it can still meet. The cost grows
//! with the log of the queue and the groups passed over, not with the queue's length.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{OdsCode, Priority, RequestId, TestSet, Timestamp};
use rustc_hash::FxHashMap;

/// Position in the order of service; smaller is served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
#[serde(from = "Stored")]
pub struct WaitQueue {
    groups: FxHashMap<GroupKey, BTreeSet<QueueKey>>,
    by_priority: [usize; 4],
    len: usize,
    /// Each group's first request, in order of service; derived from `groups`, so snapshots leave
    /// it out and loading rebuilds it.
    #[serde(skip)]
    heads: BTreeMap<QueueKey, GroupKey>,
}

/// The queue as snapshots hold it (the fields [`WaitQueue`] serialises, in the same order).
#[derive(Deserialize)]
struct Stored {
    #[serde(deserialize_with = "crate::routing::bulk::map_of_packed_sets")]
    groups: FxHashMap<GroupKey, BTreeSet<QueueKey>>,
    by_priority: [usize; 4],
    len: usize,
}

impl From<Stored> for WaitQueue {
    fn from(s: Stored) -> Self {
        let heads = s
            .groups
            .iter()
            .filter_map(|(g, set)| Some((*set.first()?, g.clone())))
            .collect();
        Self {
            groups: s.groups,
            by_priority: s.by_priority,
            len: s.len,
            heads,
        }
    }
}

fn band(p: Priority) -> usize {
    p as usize
}

/// Bands in order of service.
const BANDS: [Priority; 4] = [
    Priority::Stat,
    Priority::Asap,
    Priority::Urgent,
    Priority::Routine,
];

impl WaitQueue {
    /// A queue of these groups' requests, each group sorted once rather than built by inserts
    /// (a snapshot writer rebuilds a queue of a million this way).
    pub(crate) fn from_groups(groups: impl IntoIterator<Item = (GroupKey, Vec<QueueKey>)>) -> Self {
        let mut by_priority = [0; 4];
        let mut len = 0;
        let groups = groups
            .into_iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(group, keys)| {
                for key in &keys {
                    by_priority[band(key.priority.0)] += 1;
                }
                len += keys.len();
                (group, keys.into_iter().collect())
            })
            .collect();
        Stored {
            groups,
            by_priority,
            len,
        }
        .into()
    }

    /// Adds a request; adding one twice has no effect.
    pub fn insert(&mut self, group: GroupKey, key: QueueKey) {
        match self.groups.get_mut(&group) {
            Some(set) => {
                let leads = set.first().is_none_or(|h| key < *h);
                if !set.insert(key) {
                    return;
                }
                if leads {
                    // The new key leads its group: it replaces the old head in the index.
                    if let Some(old) = set.iter().nth(1) {
                        self.heads.remove(old);
                    }
                    self.heads.insert(key, group);
                }
            }
            None => {
                self.heads.insert(key, group.clone());
                self.groups.insert(group, BTreeSet::from([key]));
            }
        }
        self.len += 1;
        self.by_priority[band(key.priority.0)] += 1;
    }

    /// Removes a request; returns whether it was there.
    pub fn remove(&mut self, group: &GroupKey, key: &QueueKey) -> bool {
        let Some(set) = self.groups.get_mut(group) else {
            return false;
        };
        let was_head = set.first() == Some(key);
        let removed = set.remove(key);
        if was_head && removed {
            let g = self.heads.remove(key);
            if let (Some(next), Some(g)) = (set.first(), g) {
                self.heads.insert(*next, g);
            }
        }
        if set.is_empty() {
            self.groups.remove(group);
        }
        if removed {
            self.len -= 1;
            self.by_priority[band(key.priority.0)] -= 1;
        }
        removed
    }

    /// Adds many requests of one group: sorted, so the inserts walk its tree in order, and its
    /// head settled once. The same as [`WaitQueue::insert`] for each.
    pub(crate) fn insert_many(&mut self, group: GroupKey, mut keys: Vec<QueueKey>) {
        if keys.is_empty() {
            return;
        }
        keys.sort_unstable();
        let set = self.groups.entry(group.clone()).or_default();
        let old_head = set.first().copied();
        for key in keys {
            if set.insert(key) {
                self.len += 1;
                self.by_priority[band(key.priority.0)] += 1;
            }
        }
        let new_head = set.first().copied();
        Self::settle_head(&mut self.heads, old_head, new_head, || group);
    }

    /// Removes many requests of one group, sorted, its head settled once. The same as
    /// [`WaitQueue::remove`] for each.
    pub(crate) fn remove_many(&mut self, group: &GroupKey, mut keys: Vec<QueueKey>) {
        let Some(set) = self.groups.get_mut(group) else {
            return;
        };
        keys.sort_unstable();
        let old_head = set.first().copied();
        for key in keys {
            if set.remove(&key) {
                self.len -= 1;
                self.by_priority[band(key.priority.0)] -= 1;
            }
        }
        let new_head = set.first().copied();
        if set.is_empty() {
            self.groups.remove(group);
        }
        Self::settle_head(&mut self.heads, old_head, new_head, || group.clone());
    }

    /// Moves a group's entry in the head index from its old first request to its new one.
    fn settle_head(
        heads: &mut BTreeMap<QueueKey, GroupKey>,
        old: Option<QueueKey>,
        new: Option<QueueKey>,
        group: impl FnOnce() -> GroupKey,
    ) {
        if new == old {
            return;
        }
        if let Some(old) = old {
            heads.remove(&old);
        }
        if let Some(new) = new {
            heads.insert(new, group());
        }
    }

    /// The groups and their waiting requests in order of service.
    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &BTreeSet<QueueKey>)> {
        self.groups.iter()
    }

    /// The groups, by their first request in order of service.
    pub fn groups_by_head(&self) -> impl Iterator<Item = (&QueueKey, &GroupKey)> {
        self.heads.iter()
    }

    /// The requests of one group.
    pub fn group(&self, group: &GroupKey) -> Option<&BTreeSet<QueueKey>> {
        self.groups.get(group)
    }

    /// The first request of `set` in order of service whose deadline is after `after` and that
    /// `skip` does not reject: a seek per band, so a lab that cannot meet the earliest deadlines
    /// does not walk past them one by one (only the ones `skip` rejects are walked).
    pub fn first_after(
        set: &BTreeSet<QueueKey>,
        after: Timestamp,
        mut skip: impl FnMut(&QueueKey) -> bool,
    ) -> Option<&QueueKey> {
        BANDS.into_iter().find_map(|p| {
            let from = QueueKey {
                priority: Reverse(p),
                deadline: Timestamp(after.0.saturating_add(1)),
                ordinal: 0,
                id: RequestId(Uuid::nil()),
            };
            set.range(from..)
                .take_while(|k| k.priority.0 == p)
                .find(|k| !skip(k))
        })
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
        self.heads.keys().next()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::TestCode;

    fn group(trust: &str, tests: &[&str]) -> GroupKey {
        (
            OdsCode::parse(trust).unwrap(),
            TestSet::from_codes(tests.iter().map(|t| TestCode::parse(t).unwrap()).collect()),
        )
    }

    fn key(n: u64, priority: Priority, deadline: i64) -> QueueKey {
        QueueKey {
            priority: Reverse(priority),
            deadline: Timestamp(deadline),
            ordinal: n,
            id: RequestId(Uuid::from_u128(u128::from(n))),
        }
    }

    /// The head index rebuilt from scratch, to compare the maintained one with.
    fn heads_by_scan(q: &WaitQueue) -> Vec<(QueueKey, GroupKey)> {
        let mut heads: Vec<_> = q
            .groups()
            .map(|(g, set)| (*set.first().unwrap(), g.clone()))
            .collect();
        heads.sort();
        heads
    }

    fn filled() -> (WaitQueue, Vec<(GroupKey, QueueKey)>) {
        let groups = [
            group("RJ1", &["FBC"]),
            group("RJZ", &["FBC"]),
            group("RJ1", &["K", "UE"]),
        ];
        let mut q = WaitQueue::default();
        let mut all = Vec::new();
        for n in 0..60u64 {
            let g = groups[(n * 7 % 3) as usize].clone();
            let k = key(
                n,
                Priority::ALL[(n * 5 % 4) as usize],
                1000 - (n as i64 * 13 % 97),
            );
            q.insert(g.clone(), k);
            all.push((g, k));
        }
        (q, all)
    }

    #[test]
    fn group_heads_follow_every_insert_and_removal() {
        let (mut q, all) = filled();
        assert_eq!(
            q.groups_by_head()
                .map(|(k, g)| (*k, g.clone()))
                .collect::<Vec<_>>(),
            heads_by_scan(&q)
        );
        assert_eq!(q.head(), q.in_order().first());
        // Remove in an order unrelated to the order of service, checking after each removal.
        for (g, k) in all.iter().step_by(3).chain(all.iter()) {
            q.remove(g, k);
            assert_eq!(
                q.groups_by_head()
                    .map(|(k, g)| (*k, g.clone()))
                    .collect::<Vec<_>>(),
                heads_by_scan(&q)
            );
            assert_eq!(q.head(), q.in_order().first());
        }
        assert!(q.is_empty());
        assert_eq!(q.groups_by_head().count(), 0);
    }

    #[test]
    fn runs_of_one_group_equal_their_keys_one_by_one() {
        let (mut one_by_one, all) = filled();
        let mut runs = one_by_one.clone();
        // Runs in an order unrelated to the order of service: some keys twice, some absent, some
        // that lead their group, and runs that empty a group and fill it again.
        let mut by_group: HashMap<GroupKey, Vec<QueueKey>> = HashMap::new();
        for (g, k) in all.iter().step_by(2) {
            by_group.entry(g.clone()).or_default().push(*k);
        }
        for (g, keys) in &by_group {
            let mut run = keys.clone();
            run.push(key(1000, Priority::Stat, 1));
            for k in &run {
                one_by_one.remove(g, k);
            }
            runs.remove_many(g, run);
            assert_eq!(runs, one_by_one);
        }
        for (n, (g, keys)) in by_group.iter().enumerate() {
            let whole: Vec<QueueKey> = all
                .iter()
                .filter(|(h, _)| h == g)
                .map(|(_, k)| *k)
                .collect();
            for k in &whole {
                one_by_one.remove(g, k);
            }
            runs.remove_many(g, whole);
            assert!(runs.group(g).is_none());
            assert_eq!(runs, one_by_one);
            let mut run = keys.clone();
            run.extend(keys.iter().take(2));
            run.push(key(2000 + n as u64, Priority::Stat, 1));
            for k in &run {
                one_by_one.insert(g.clone(), *k);
            }
            runs.insert_many(g.clone(), run);
            assert_eq!(runs, one_by_one);
            assert_eq!(runs.head(), runs.in_order().first());
        }
        assert_eq!(
            runs.groups_by_head()
                .map(|(k, g)| (*k, g.clone()))
                .collect::<Vec<_>>(),
            heads_by_scan(&runs)
        );
        // An empty run makes no group.
        let empty = group("RJZ", &["K"]);
        runs.insert_many(empty.clone(), Vec::new());
        assert!(runs.group(&empty).is_none());
        assert_eq!(runs, one_by_one);
    }

    #[test]
    fn first_after_skips_deadlines_too_soon_and_rejected_requests_band_by_band() {
        let (q, _) = filled();
        for (_, set) in q.groups() {
            for after in [0, 910, 950, 990, 2000] {
                let reject = |k: &QueueKey| k.ordinal % 4 == 1;
                let expected = set.iter().find(|k| k.deadline.0 > after && !reject(k));
                assert_eq!(
                    WaitQueue::first_after(set, Timestamp(after), reject),
                    expected
                );
            }
        }
    }

    /// The fields a snapshot held before the head index existed.
    #[derive(Serialize)]
    struct Before {
        groups: HashMap<GroupKey, BTreeSet<QueueKey>>,
        by_priority: [usize; 4],
        len: usize,
    }

    #[test]
    fn snapshots_keep_their_format_and_loading_rebuilds_the_head_index() {
        let (q, _) = filled();
        let before = Before {
            groups: q.groups().map(|(g, s)| (g.clone(), s.clone())).collect(),
            by_priority: q.by_priority,
            len: q.len,
        };
        let old = postcard::to_stdvec(&before).unwrap();
        let loaded: WaitQueue = postcard::from_bytes(&old).unwrap();
        assert_eq!(loaded, q);
        let again: WaitQueue = postcard::from_bytes(&postcard::to_stdvec(&q).unwrap()).unwrap();
        assert_eq!(again, q);
        assert_eq!(again.head(), q.in_order().first());
    }
}
