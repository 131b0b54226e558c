//! Dispatch: choosing a lab for a request through the policy and offering it, or queueing it;
//! routing waiting requests to a lab that has room; giving a lab's room back.

use std::cmp::Reverse;

use super::Router;
use super::command::{Outcome, TimerKind};
use crate::domain::{LabStatus, OdsCode, Request, RequestId, RequestState, Timestamp};
use crate::routing::event::{JobEventKind, TrustEventKind};
use crate::routing::labs::LabState;
use crate::routing::policy::{Placement, RouteQuery};
use crate::routing::queue::{GroupKey, QueueKey, WaitQueue};

impl Router {
    /// Offers the request to the policy's choice, or queues it (or expires it when no lab can ever
    /// finish in time). Returns true when it was offered.
    pub(super) fn route_or_queue(
        &mut self,
        id: &RequestId,
        now: Timestamp,
        out: &mut Outcome,
    ) -> bool {
        self.route_or_requeue(id, false, now, out)
    }

    /// [`Router::route_or_queue`] for a request that is in the queue when `waiting`: only then
    /// does an offer have to take it out (looking it up costs two hashes and two clones).
    fn route_or_requeue(
        &mut self,
        id: &RequestId,
        waiting: bool,
        now: Timestamp,
        out: &mut Outcome,
    ) -> bool {
        let placement = {
            let st = &mut self.state;
            let r = &st.requests[id];
            let reach = st
                .labs
                .prepare_reach(&r.trust, &r.submission.tests, &st.catalogue);
            let query = RouteQuery {
                trust: &r.trust,
                tests: &r.submission.tests,
                deadline: r.deadline,
                turnaround_minutes: reach.turnaround_minutes,
                excluded: &r.excluded,
            };
            self.policy.choose(&query, &st.labs, now)
        };
        match placement {
            Some(p) => {
                self.offer(id, p, waiting, now, out);
                true
            }
            None if self.state.requests[id].expire_at <= now => {
                self.expire(id, now, out);
                false
            }
            None => {
                self.enqueue(id, now, out);
                false
            }
        }
    }

    /// Offers the request to `p`; `waiting` says whether it is in the queue now.
    fn offer(
        &mut self,
        id: &RequestId,
        p: Placement,
        waiting: bool,
        now: Timestamp,
        out: &mut Outcome,
    ) {
        if waiting {
            self.dequeue(id);
        }
        self.state.offers_made += 1;
        let counter = self.state.offers_made;
        let st = &mut self.state;
        let r = &st.requests[id];
        let priority = r.submission.priority;
        if let Some(lab) = st.labs.get_mut(&p.lab) {
            for t in r.submission.tests.codes() {
                if let Some(slot) = lab.slots.get_mut(t) {
                    slot.in_flight += 1;
                }
            }
            lab.open.insert(*id);
            lab.last_offer = counter;
        }
        out.labs.push(p.lab.clone());
        let lease = now.plus_millis(self.state.leases.for_priority(priority));
        self.state.timers.insert((lease, TimerKind::Lease, *id));
        let lab = p.lab.clone();
        self.update(id, now, out, |r| {
            r.state = RequestState::Offered;
            r.lab = Some(p.lab);
            r.lease_expires_at = Some(lease);
            r.predicted_result_at = Some(p.predicted_at);
            r.transport_minutes = p.transport_minutes;
            r.offers += 1;
            // Plain pushes rather than format!: this runs for every offer.
            r.status_detail.clear();
            r.status_detail.push_str("offered to ");
            r.status_detail
                .push_str(r.lab.as_ref().map_or("", |l| l.as_str()));
        });
        self.emit_lab(&lab, id, JobEventKind::Offered, now, out);
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
    }

    fn enqueue(&mut self, id: &RequestId, now: Timestamp, out: &mut Outcome) {
        let r = &self.state.requests[id];
        let was = r.state;
        let (group, key) = queue_entry(r);
        self.state.queue.insert(group, key);
        if was != RequestState::Queued {
            self.update(id, now, out, |r| {
                r.state = RequestState::Queued;
                r.lab = None;
                r.predicted_result_at = None;
                r.transport_minutes = 0;
                r.status_detail = format!("{}; waiting for a lab with room", r.status_detail);
            });
            self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        }
    }

    pub(super) fn dequeue(&mut self, id: &RequestId) {
        let (group, key) = queue_entry(&self.state.requests[id]);
        self.state.queue.remove(&group, &key);
    }

    /// Routes waiting requests that `lab` could now take, in order of service, while it has room.
    pub(super) fn route_waiting(&mut self, lab: &OdsCode, now: Timestamp, out: &mut Outcome) {
        loop {
            let Some(state) = self.state.labs.get(lab) else {
                return;
            };
            if state.status != LabStatus::Online {
                return;
            }
            let next = self.next_waiting_for(state, now);
            #[cfg(test)]
            assert_eq!(
                next,
                self.next_waiting_by_scan(state, now),
                "the head index found a different next request from a scan of every group"
            );
            let Some(next) = next else {
                return;
            };
            if !self.route_or_requeue(&next.id, true, now, out) {
                return;
            }
        }
    }

    /// The first waiting request in order of service that `lab` could take now: groups in order of
    /// their heads, stopping at the first head after the best found (no later group can beat it).
    fn next_waiting_for(&self, lab: &LabState, now: Timestamp) -> Option<QueueKey> {
        let mut best: Option<QueueKey> = None;
        for (head, group) in self.state.queue.groups_by_head() {
            if best.is_some_and(|b| b < *head) {
                break;
            }
            if let Some(k) = self.first_for(lab, group, now)
                && best.is_none_or(|b| k < b)
            {
                best = Some(k);
            }
        }
        best
    }

    /// The first request of one group that `lab` could take now, if it serves the group at all.
    fn first_for(&self, lab: &LabState, group: &GroupKey, now: Timestamp) -> Option<QueueKey> {
        let (trust, tests) = group;
        if !lab.serves(trust) || !lab.performs(tests) || !lab.has_room_for(tests) {
            return None;
        }
        let lead = i64::from(lab.transport_from(trust))
            + i64::from(tests.turnaround_minutes(&self.state.catalogue));
        let too_soon = now.plus_minutes(lead);
        let set = self.state.queue.group(group)?;
        WaitQueue::first_after(set, too_soon, |k| {
            self.state.requests[&k.id].excludes(&lab.config.ods)
        })
        .copied()
    }

    /// [`Router::next_waiting_for`] by a scan of every group and request, to check it against.
    #[cfg(test)]
    fn next_waiting_by_scan(&self, state: &LabState, now: Timestamp) -> Option<QueueKey> {
        let mut best: Option<QueueKey> = None;
        for ((trust, tests), set) in self.state.queue.groups() {
            if !state.serves(trust) || !state.performs(tests) || !state.has_room_for(tests) {
                continue;
            }
            let lead = i64::from(state.transport_from(trust))
                + i64::from(tests.turnaround_minutes(&self.state.catalogue));
            let too_soon = now.plus_minutes(lead);
            let first = set.iter().find(|k| {
                k.deadline > too_soon && !self.state.requests[&k.id].excludes(&state.config.ods)
            });
            if let Some(k) = first
                && best.as_ref().is_none_or(|b| k < b)
            {
                best = Some(*k);
            }
        }
        best
    }

    pub(super) fn release(&mut self, id: &RequestId, lab: &OdsCode, out: &mut Outcome) {
        let Some(r) = self.state.requests.get(id) else {
            return;
        };
        if let Some(state) = self.state.labs.get_mut(lab)
            && state.open.remove(id)
        {
            for t in r.submission.tests.codes() {
                if let Some(slot) = state.slots.get_mut(t) {
                    slot.in_flight = slot.in_flight.saturating_sub(1);
                }
            }
            out.labs.push(lab.clone());
        }
    }
}

fn queue_entry(r: &Request) -> (GroupKey, QueueKey) {
    ((r.trust.clone(), r.submission.tests.clone()), queue_key(r))
}

pub(super) fn queue_key(r: &Request) -> QueueKey {
    QueueKey {
        priority: Reverse(r.submission.priority),
        deadline: r.deadline,
        ordinal: r.ordinal,
        id: r.id,
    }
}
