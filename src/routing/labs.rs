//! Partner labs: what each performs, for whom, how far away, and its capacity per test.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::domain::{LabStatus, OdsCode, RequestId, TestCode, TestSet};

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

/// Every lab, in ODS-code order, with an index from test to the labs that perform it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Labs {
    labs: Vec<LabState>,
    index: HashMap<OdsCode, usize>,
    by_test: HashMap<TestCode, Vec<usize>>,
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

    /// The lab with this code, to change it.
    pub fn get_mut(&mut self, ods: &OdsCode) -> Option<&mut LabState> {
        self.index.get(ods).map(|&i| &mut self.labs[i])
    }

    /// Every lab, in ODS-code order.
    pub fn iter(&self) -> impl Iterator<Item = &LabState> {
        self.labs.iter()
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

    /// Number of labs.
    pub fn len(&self) -> usize {
        self.labs.len()
    }

    /// True when there are no labs.
    pub fn is_empty(&self) -> bool {
        self.labs.is_empty()
    }
}
