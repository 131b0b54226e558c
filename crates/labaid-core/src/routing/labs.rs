//! Partner labs: what each performs, for whom, how far away, and its capacity per test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{Catalogue, LabStatus, OdsCode, RequestId, TestCode, TestSet};
use rustc_hash::FxHashMap;

/// Capacity of one lab for one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Most jobs in flight the lab takes.
    pub capacity: u32,
    /// Jobs in flight now (offered or accepted, not finished). May exceed a lowered capacity.
    pub in_flight: u32,
}

impl Slot {
    /// True when one more job fits.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.capacity
    }
}

/// A lab as the directory configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabConfig {
    /// ODS code.
    pub ods: OdsCode,
    /// Name.
    pub name: String,
    /// Capacity per test performed.
    pub capacity: BTreeMap<TestCode, u32>,
    /// Courier minutes from each trust it serves.
    pub transport_minutes: BTreeMap<OdsCode, u32>,
    /// Trusts it has agreements with.
    pub agreements: BTreeSet<OdsCode>,
}

/// A lab's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// The directory entry.
    pub config: LabConfig,
    /// Whether it takes new work.
    pub status: LabStatus,
    /// Capacity and work in flight per test performed.
    pub slots: BTreeMap<TestCode, Slot>,
    /// Requests it holds that are not final (offered, accepted or received).
    pub open: BTreeSet<RequestId>,
    /// Counter value of the last offer it was made (0 if none): least recently offered wins ties.
    pub last_offer: u64,
}

impl LabState {
    /// True when the lab performs every test in `tests`.
    pub fn performs(&self, tests: &TestSet) -> bool {
        tests.codes().iter().all(|t| self.slots.contains_key(t))
    }

    /// True when the lab serves `trust` at all (agreement and a transport time).
    pub fn serves(&self, trust: &OdsCode) -> bool {
        self.config.agreements.contains(trust) && self.config.transport_minutes.contains_key(trust)
    }

    /// Courier minutes from `trust`.
    pub fn transport_from(&self, trust: &OdsCode) -> u32 {
        self.config
            .transport_minutes
            .get(trust)
            .copied()
            .unwrap_or(u32::MAX / 2)
    }

    /// True when every test has room for one more job.
    pub fn has_room_for(&self, tests: &TestSet) -> bool {
        tests
            .codes()
            .iter()
            .all(|t| self.slots.get(t).is_some_and(Slot::has_room))
    }

    /// [`LabState::utilisation`] when every test has room for one more job, else `None`: both
    /// from one lookup per test (the policy asks both of every lab it compares).
    pub fn room_and_utilisation(&self, tests: &TestSet) -> Option<(u64, u64)> {
        let mut busiest = (0, 1);
        for t in tests.codes() {
            let slot = self.slots.get(t).filter(|s| s.has_room())?;
            let util = (u64::from(slot.in_flight), u64::from(slot.capacity.max(1)));
            if util.0 * busiest.1 > busiest.0 * util.1 {
                busiest = util;
            }
        }
        Some(busiest)
    }

    /// Utilisation for these tests as a fraction (numerator, denominator): the busiest test counts.
    pub fn utilisation(&self, tests: &TestSet) -> (u64, u64) {
        tests
            .codes()
            .iter()
            .filter_map(|t| self.slots.get(t))
            .map(|s| (u64::from(s.in_flight), u64::from(s.capacity.max(1))))
            .max_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)))
            .unwrap_or((0, 1))
    }
}

/// The labs that can ever take requests of one trust and test set, nearest first: they serve the
/// trust and perform every test. Depends only on the directory and the catalogue, never on status
/// or capacity, so it stays valid until the directory changes (which builds a new [`Labs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Longest turnaround among the tests, in minutes.
    pub turnaround_minutes: u32,
    /// (index into the table, courier minutes from the trust), by courier minutes then ODS code.
    pub labs: Vec<(u32, u32)>,
}

/// Most (trust, test set) pairs whose [`Reach`] is kept; past it the cache starts again, so that
/// unusual test combinations cannot grow it without bound.
const REACH_CACHE_MAX: usize = 4096;

/// Derived, not state: skipped by snapshots, rebuilt on demand, and equal whatever it holds, so
/// that comparing two states compares what they mean.
#[derive(Debug, Clone, Default)]
struct ReachCache {
    // Nested by trust so a lookup borrows the request's fields instead of cloning a key.
    by_trust: FxHashMap<OdsCode, FxHashMap<TestSet, Arc<Reach>>>,
    len: usize,
}

impl PartialEq for ReachCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Every lab, in ODS-code order, with an index from test to the labs that perform it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Labs {
    labs: Vec<LabState>,
    index: FxHashMap<OdsCode, usize>,
    by_test: FxHashMap<TestCode, Vec<usize>>,
    #[serde(skip)]
    reach: ReachCache,
}

impl Labs {
    /// Builds the table from the directory; every lab starts ONLINE with nothing in flight.
    pub fn new(configs: impl IntoIterator<Item = LabConfig>) -> Self {
        let mut labs: Vec<LabState> = configs
            .into_iter()
            .map(|config| LabState {
                slots: config
                    .capacity
                    .iter()
                    .map(|(t, c)| {
                        (
                            t.clone(),
                            Slot {
                                capacity: *c,
                                in_flight: 0,
                            },
                        )
                    })
                    .collect(),
                config,
                status: LabStatus::Online,
                open: BTreeSet::new(),
                last_offer: 0,
            })
            .collect();
        labs.sort_by(|a, b| a.config.ods.cmp(&b.config.ods));
        let mut table = Self {
            labs,
            ..Self::default()
        };
        table.reindex();
        table
    }

    fn reindex(&mut self) {
        self.index = self
            .labs
            .iter()
            .enumerate()
            .map(|(i, l)| (l.config.ods.clone(), i))
            .collect();
        self.by_test.clear();
        for (i, lab) in self.labs.iter().enumerate() {
            for test in lab.slots.keys() {
                self.by_test.entry(test.clone()).or_default().push(i);
            }
        }
    }

    /// The lab with this code.
    pub fn get(&self, ods: &OdsCode) -> Option<&LabState> {
        self.index.get(ods).map(|&i| &self.labs[i])
    }

    /// The lab with this code, to change its status, capacity or work; its directory entry and
    /// the tests it performs must stay as they are (the indexes are built from them).
    pub fn get_mut(&mut self, ods: &OdsCode) -> Option<&mut LabState> {
        self.index.get(ods).map(|&i| &mut self.labs[i])
    }

    /// Every lab, in ODS-code order.
    pub fn iter(&self) -> impl Iterator<Item = &LabState> {
        self.labs.iter()
    }

    /// Every lab, to restore the jobs they hold (the only field changed through this).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut LabState> {
        self.labs.iter_mut()
    }

    /// Labs that perform every test of `tests` (any status, any capacity).
    pub fn performing<'a>(&'a self, tests: &'a TestSet) -> impl Iterator<Item = &'a LabState> + 'a {
        // Walk the rarest test's labs and check the others: cost grows with the labs that
        // perform the tests, not with all labs.
        let rarest = tests
            .codes()
            .iter()
            .map(|t| self.by_test.get(t).map_or(&[][..], Vec::as_slice))
            .min_by_key(|labs| labs.len())
            .unwrap_or(&[]);
        rarest
            .iter()
            .map(|&i| &self.labs[i])
            .filter(move |lab| lab.performs(tests))
    }

    /// The lab at `index` of a [`Reach`] list.
    pub fn at(&self, index: u32) -> &LabState {
        &self.labs[index as usize]
    }

    /// The labs that can ever take requests of `trust` for `tests`, if [`Labs::prepare_reach`]
    /// has computed them since the directory was loaded.
    pub fn reach(&self, trust: &OdsCode, tests: &TestSet) -> Option<&Arc<Reach>> {
        self.reach.by_trust.get(trust)?.get(tests)
    }

    /// Computes (once per directory) the labs that can ever take requests of `trust` for
    /// `tests`, nearest first.
    pub fn prepare_reach(
        &mut self,
        trust: &OdsCode,
        tests: &TestSet,
        catalogue: &Catalogue,
    ) -> Arc<Reach> {
        if let Some(r) = self.reach(trust, tests) {
            return r.clone();
        }
        let mut labs: Vec<(u32, u32)> = self
            .performing(tests)
            .filter(|l| l.serves(trust))
            .map(|l| {
                let i = self.index[&l.config.ods];
                (i as u32, l.transport_from(trust))
            })
            .collect();
        // Table order is ODS order, so equal courier minutes stay in ODS order.
        labs.sort_by_key(|&(i, transport)| (transport, i));
        let reach = Arc::new(Reach {
            turnaround_minutes: tests.turnaround_minutes(catalogue),
            labs,
        });
        if self.reach.len >= REACH_CACHE_MAX {
            self.reach = ReachCache::default();
        }
        self.reach
            .by_trust
            .entry(trust.clone())
            .or_default()
            .insert(tests.clone(), reach.clone());
        self.reach.len += 1;
        reach
    }

    /// A copy without the labs' open jobs, which the requests determine (see
    /// [`crate::routing::SnapshotState`]); the reach cache starts empty.
    pub(crate) fn copy_without_open(&self) -> Self {
        Self {
            labs: self
                .labs
                .iter()
                .map(|lab| LabState {
                    config: lab.config.clone(),
                    status: lab.status,
                    slots: lab.slots.clone(),
                    open: BTreeSet::new(),
                    last_offer: lab.last_offer,
                })
                .collect(),
            index: self.index.clone(),
            by_test: self.by_test.clone(),
            reach: ReachCache::default(),
        }
    }

    /// Number of labs.
    pub fn len(&self) -> usize {
        self.labs.len()
    }

    /// True when there are no labs.
    pub fn is_empty(&self) -> bool {
        self.labs.is_empty()
    }
}
