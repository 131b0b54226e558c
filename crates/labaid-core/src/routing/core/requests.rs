//! The handlers of commands on a request as a whole: a trust submits or cancels it, a
//! coordinator reassigns an accepted job whose sample has not arrived.

use std::sync::Arc;

use super::Router;
use super::command::{Outcome, Reply};
use super::record::not_found;
use crate::domain::{
    BoundedText, Exclusion, ExclusionReason, NewRequest, OdsCode, Request, RequestId, RequestState,
    Timestamp,
};
use crate::routing::event::{JobEventKind, TrustEventKind};
use crate::routing::rejection::Rejection;
use crate::routing::sharded::ShardEntry;

impl Router {
    pub(super) fn submit(
        &mut self,
        trust: &OdsCode,
        id: RequestId,
        new: &NewRequest,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        if !self.state.trusts.contains_key(trust) {
            return Err(Rejection::NotPermitted(format!(
                "{trust} is not a trust in the directory"
            )));
        }
        let order_key = (trust.clone(), new.order_number.clone());
        // One hash of the order key for both the lookup and the insert.
        let order = match self.state.orders.entry(order_key) {
            ShardEntry::Vacant(order) => order,
            ShardEntry::Occupied(existing) => {
                let original = &self.state.requests[existing];
                return if &original.submission == new {
                    Ok(Reply::Request {
                        request: original.clone(),
                        replayed: true,
                    })
                } else {
                    Err(Rejection::Conflict(format!(
                        "order number {} was already used for a different request ({})",
                        new.order_number.as_str(),
                        original.id
                    )))
                };
            }
        };
        if self.state.requests.contains_key(&id) {
            return Err(Rejection::Inconsistent(format!(
                "request id {id} generated twice"
            )));
        }
        let deadline = new.deadline(&self.state.catalogue);
        let request = Request {
            id,
            ordinal: self.state.next_ordinal,
            trust: trust.clone(),
            submission: new.clone(),
            deadline,
            expire_at: deadline,
            state: RequestState::Queued,
            lab: None,
            submitted_at: now,
            updated_at: now,
            lease_expires_at: None,
            predicted_result_at: None,
            transport_minutes: 0,
            results: Vec::new(),
            failure: None,
            status_detail: String::new(),
            excluded: Vec::new(),
            accepted_at: None,
            offers: 0,
        };
        self.state.next_ordinal += 1;
        order.insert(id);
        self.state.requests.insert(id, Arc::new(request));
        out.changed = true;
        out.requests.push(id);
        // A new request has no expiry timer to take out: skip that search of the timer tree.
        self.arm_expiry(&id, false);
        if !self.route_or_queue(&id, now, out) {
            let state = self.state.requests[&id].state;
            if state == RequestState::Queued {
                self.update(&id, now, out, |r| {
                    r.status_detail = "waiting for a lab with room".into();
                });
                self.emit_trust(&id, TrustEventKind::StateChanged, now, out);
            }
        }
        Ok(Reply::Request {
            request: self.state.requests[&id].clone(),
            replayed: false,
        })
    }

    pub(super) fn cancel(
        &mut self,
        trust: &OdsCode,
        id: &RequestId,
        reason: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self
            .state
            .requests
            .get(id)
            .filter(|r| &r.trust == trust)
            .ok_or_else(|| not_found("request", id))?;
        if r.state.is_final() {
            return Err(Rejection::WrongState(format!(
                "request {id} is already {}",
                r.state.as_str()
            )));
        }
        let (state, lab) = (r.state, r.lab.clone());
        out.changed = true;
        let detail = if reason.is_empty() {
            "cancelled by the trust".to_string()
        } else {
            format!("cancelled by the trust: {}", reason.as_str())
        };
        match state {
            RequestState::Queued => self.dequeue(id),
            _ => {
                if let Some(lab) = &lab {
                    self.release(id, lab, out);
                }
            }
        }
        self.clear_timers(id);
        self.update(id, now, out, |r| {
            r.state = RequestState::Cancelled;
            r.lease_expires_at = None;
            r.status_detail = detail;
        });
        self.finish(id, now);
        if let Some(lab) = &lab {
            let kind = if state == RequestState::Offered {
                JobEventKind::Withdrawn
            } else {
                JobEventKind::Cancelled
            };
            self.emit_lab(lab, id, kind, now, out);
        }
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        if let Some(lab) = &lab {
            self.route_waiting(lab, now, out);
        }
        Ok(self.reply(id))
    }

    pub(super) fn reassign(
        &mut self,
        id: &RequestId,
        reason: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self
            .state
            .requests
            .get(id)
            .ok_or_else(|| not_found("request", id))?;
        let lab = match (r.state, &r.lab) {
            (RequestState::Accepted, Some(lab)) => lab.clone(),
            (RequestState::Received, _) => {
                return Err(Rejection::WrongState(format!(
                    "the sample of {id} is already at its lab; it cannot be reassigned"
                )));
            }
            (state, _) => {
                return Err(Rejection::WrongState(format!(
                    "request {id} is {}: only an accepted job can be reassigned",
                    state.as_str()
                )));
            }
        };
        out.changed = true;
        self.release(id, &lab, out);
        self.update(id, now, out, |r| {
            r.excluded.push(Exclusion {
                lab: lab.clone(),
                reason: ExclusionReason::Reassigned,
                at: now,
            });
            r.accepted_at = None;
            r.lab = None;
            r.status_detail = format!(
                "a coordinator took the job from {lab}: {}; routing again",
                reason.as_str()
            );
        });
        // Sets the expiry the routing below goes by; no timer yet, as the job is still accepted.
        self.refresh_expiry(id);
        self.emit_lab(&lab, id, JobEventKind::Withdrawn, now, out);
        self.route_or_queue(id, now, out);
        // Arms the expiry timer now that the request waits or is offered again: accepting had
        // disarmed it, and without it a reassigned request would never expire.
        self.refresh_expiry(id);
        self.route_waiting(&lab, now, out);
        Ok(self.reply(id))
    }
}
