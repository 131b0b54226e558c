//! What a run records: each request's life, the time series sampled at fixed steps, and per-lab
//! tallies kept as the run goes. Plain data, in vectors indexed by request and lab, so that every
//! output is written in the same order from the same seed.

use crate::domain::{LabStatus, Priority, RequestState};

/// One request's life, in milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Life {
    /// Index of the demand (trust) in the scenario.
    pub demand: u16,
    /// Index into the demand's test mix.
    pub mix: u16,
    /// Priority.
    pub priority: Priority,
    /// Sample collected.
    pub collected_at: i64,
    /// Submitted to labaid.
    pub submitted_at: i64,
    /// Sample deadline (collection plus the shortest stability).
    pub deadline: i64,
    /// First offered to a lab.
    pub first_offer_at: Option<i64>,
    /// Accepted by the lab that kept it.
    pub accepted_at: Option<i64>,
    /// Sample received.
    pub received_at: Option<i64>,
    /// Reached its final state.
    pub finished_at: Option<i64>,
    /// The state it is in.
    pub state: RequestState,
    /// Index of the lab it is offered to or held by (or last was).
    pub lab: Option<u16>,
    /// Offers made.
    pub offers: u16,
    /// Offers declined.
    pub declines: u16,
    /// Offers whose lease ran out.
    pub lease_expiries: u16,
    /// Times a coordinator took it from an offline lab.
    pub reassigned: u16,
    /// Bumped at each offer and withdrawal, so that a lab's answer to an old offer is dropped.
    pub epoch: u32,
}

impl Life {
    /// Minutes from collection to result, for resulted requests.
    pub fn turnaround_minutes(&self) -> Option<f64> {
        (self.state == RequestState::Resulted)
            .then(|| {
                self.finished_at
                    .map(|f| (f - self.collected_at) as f64 / 60_000.0)
            })
            .flatten()
    }
}

/// The system at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When, in milliseconds since the epoch.
    pub at: i64,
    /// Requests waiting for a lab, per priority index.
    pub waiting: [u32; 4],
    /// Per lab: jobs in flight, summed over its tests.
    pub in_flight: Vec<u32>,
    /// Per lab: capacity, summed over its tests.
    pub capacity: Vec<u32>,
    /// Per lab: share of its busiest test's capacity in use (the test that stops new offers).
    pub busiest: Vec<f64>,
    /// Per lab: waiting requests it could take (serves the trust, performs the tests).
    pub queue: Vec<u32>,
    /// Per lab: status.
    pub status: Vec<LabStatus>,
    /// Requests expired so far.
    pub expired: u32,
    /// Requests resulted so far.
    pub resulted: u32,
}

impl Sample {
    /// Utilisation of lab `i`: the share of its busiest test's capacity in use, as the router
    /// sees it (a lab whose potassium slots are full takes no potassium, however idle the rest).
    pub fn utilisation(&self, i: usize) -> f64 {
        self.busiest[i]
    }
}

/// Tallies for one lab.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabTally {
    /// Offers made to it.
    pub offers: u64,
    /// Offers it declined.
    pub declined: u64,
    /// Offers it let lapse.
    pub lapsed: u64,
    /// Jobs it resulted.
    pub resulted: u64,
    /// Samples it could not use.
    pub failed: u64,
    /// Peak jobs in flight per test, in test-code order of its slots.
    pub peak_in_flight: Vec<(String, u32, u32)>,
    /// Milliseconds during which some test was full while the lab was online.
    pub at_capacity_ms: i64,
    /// Milliseconds offline.
    pub offline_ms: i64,
    /// Peak waiting requests it could take.
    pub peak_queue: u32,
}

/// A line of the run's timeline: a scenario event or a lab opening or closing.
#[derive(Debug, Clone, PartialEq)]
pub struct Happening {
    /// When.
    pub at: i64,
    /// What, in words.
    pub what: String,
}
