//! The routing policy: which eligible lab a request is offered to. A trait, so policies can be
//! compared in simulation; [`DefaultPolicy`] is the one the design describes.

use std::fmt;

use crate::domain::{Exclusion, LabStatus, OdsCode, TestSet, Timestamp};

use super::{LabState, Labs};

/// What the policy needs to know of a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteQuery<'a> {
    /// Requesting trust.
    pub trust: &'a OdsCode,
    /// Requested tests.
    pub tests: &'a TestSet,
    /// When the sample spoils.
    pub deadline: Timestamp,
    /// Longest turnaround among the tests, in minutes.
    pub turnaround_minutes: u32,
    /// Labs never to offer it to again.
    pub excluded: &'a [Exclusion],
}

impl RouteQuery<'_> {
    /// When `lab` would have a result if offered now.
    pub fn predicted_at(&self, lab: &LabState, now: Timestamp) -> Timestamp {
        now.plus_minutes(
            i64::from(lab.transport_from(self.trust)) + i64::from(self.turnaround_minutes),
        )
    }

    /// The design's eligibility rule: online, performs every test, agreement with the trust,
    /// room for every test, predicted completion before the deadline, and not excluded.
    pub fn is_eligible(&self, lab: &LabState, now: Timestamp) -> bool {
        lab.status == LabStatus::Online
            && lab.serves(self.trust)
            && lab.performs(self.tests)
            && lab.has_room_for(self.tests)
            && self.predicted_at(lab, now) < self.deadline
            && !self.excluded.iter().any(|e| e.lab == lab.config.ods)
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The lab to offer it to.
    pub lab: OdsCode,
    /// When that lab would have a result.
    pub predicted_at: Timestamp,
    /// Courier minutes from the trust to that lab.
    pub transport_minutes: u32,
}

/// Chooses a lab for a request.
pub trait RoutingPolicy: fmt::Debug + Send + Sync + 'static {
    /// The lab to offer `query` to at `now`, or `None` when no lab is eligible.
    fn choose(&self, query: &RouteQuery<'_>, labs: &Labs, now: Timestamp) -> Option<Placement>;
}

/// Earliest predicted result; ties to the lowest utilisation, then the lab offered least recently,
/// then the lowest ODS code (so the choice is deterministic).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl RoutingPolicy for DefaultPolicy {
    fn choose(&self, query: &RouteQuery<'_>, labs: &Labs, now: Timestamp) -> Option<Placement> {
        match labs.reach(query.trust, query.tests) {
            Some(reach) if reach.turnaround_minutes == query.turnaround_minutes => {
                let chosen = choose_nearest_first(query, labs, &reach.labs, now);
                // Unit and property tests check every choice against the plain scan.
                #[cfg(test)]
                assert_eq!(
                    chosen,
                    choose_by_scan(query, labs, now),
                    "the nearest-first walk chose differently from a scan of every lab"
                );
                chosen
            }
            _ => choose_by_scan(query, labs, now),
        }
    }
}

/// The best so far: the lab, its predicted result and its utilisation.
type Best<'a> = Option<(&'a LabState, Timestamp, (u64, u64))>;

/// True when `lab` beats `best`: earlier result, then lower utilisation, then offered less
/// recently, then the lower ODS code.
fn beats(lab: &LabState, predicted: Timestamp, util: (u64, u64), best: &Best<'_>) -> bool {
    match best {
        None => true,
        Some((b, bp, bu)) => {
            let util_cmp = (util.0 * bu.1).cmp(&(bu.0 * util.1));
            predicted
                .cmp(bp)
                .then(util_cmp)
                .then(lab.last_offer.cmp(&b.last_offer))
                .then(lab.config.ods.cmp(&b.config.ods))
                .is_lt()
        }
    }
}

fn placement(query: &RouteQuery<'_>, best: Best<'_>) -> Option<Placement> {
    best.map(|(lab, predicted_at, _)| Placement {
        lab: lab.config.ods.clone(),
        predicted_at,
        transport_minutes: lab.transport_from(query.trust),
    })
}

/// Walks the labs that serve the trust and perform the tests, nearest first, so it stops at the
/// first lab too far for the deadline or farther than the best found: with room nearby it looks
/// at a few labs, not all of them. Same choice as [`choose_by_scan`]: predicted results only grow
/// along the list, and labs at the same distance are all compared.
fn choose_nearest_first(
    query: &RouteQuery<'_>,
    labs: &Labs,
    reach: &[(u32, u32)],
    now: Timestamp,
) -> Option<Placement> {
    let mut best: Best<'_> = None;
    let turnaround = i64::from(query.turnaround_minutes);
    for &(index, transport) in reach {
        let predicted = now.plus_minutes(i64::from(transport) + turnaround);
        if predicted >= query.deadline || best.is_some_and(|(_, bp, _)| predicted > bp) {
            break;
        }
        let lab = labs.at(index);
        if lab.status != LabStatus::Online || query.excluded.iter().any(|e| e.lab == lab.config.ods)
        {
            continue;
        }
        let Some(util) = lab.room_and_utilisation(query.tests) else {
            continue;
        };
        if beats(lab, predicted, util, &best) {
            best = Some((lab, predicted, util));
        }
    }
    placement(query, best)
}

/// Looks at every lab that performs the tests (when no nearest-first list was prepared).
fn choose_by_scan(query: &RouteQuery<'_>, labs: &Labs, now: Timestamp) -> Option<Placement> {
    let mut best: Best<'_> = None;
    for lab in labs.performing(query.tests) {
        if !query.is_eligible(lab, now) {
            continue;
        }
        let predicted = query.predicted_at(lab, now);
        let util = lab.utilisation(query.tests);
        if beats(lab, predicted, util, &best) {
            best = Some((lab, predicted, util));
        }
    }
    placement(query, best)
}
