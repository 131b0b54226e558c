//! The handlers of a lab's commands: accept, decline, receive, post results and fail a job, set
//! a test's capacity or the lab's status; and the refusal a lab gets for a job it does not hold.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Router;
use super::command::{Outcome, Reply, TimerKind};
use super::record::{human_duration, not_found};
use crate::domain::{
    BoundedText, Exclusion, ExclusionReason, FailureReason, LabStatus, Observation, OdsCode,
    Request, RequestId, RequestState, TestCode, Timestamp, Violations,
};
use crate::routing::event::{JobEventKind, TrustEventKind};
use crate::routing::labs::LabState;
use crate::routing::rejection::Rejection;

impl Router {
    pub(super) fn accept(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Offered => {}
            RequestState::Accepted | RequestState::Received => {
                // Two operators of one lab racing for an offer look the same as one operator
                // retrying: both are told the job is already theirs.
                return Err(Rejection::LostRace(format!(
                    "job {id} is already accepted by {lab} (another operator, or an earlier try \
                     of this one): see it with GetJob"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.clear_timers(id);
        self.update(id, now, out, |r| {
            r.state = RequestState::Accepted;
            r.accepted_at = Some(now);
            r.lease_expires_at = None;
            r.status_detail = format!("accepted by {lab}");
        });
        self.emit_lab(lab, id, JobEventKind::Accepted, now, out);
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        Ok(self.reply(id))
    }

    pub(super) fn decline(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        reason: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Offered => {}
            RequestState::Accepted | RequestState::Received => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is already accepted; to give it up, fail it with a reason"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.release(id, lab, out);
        self.remove_timer(id, TimerKind::Lease);
        self.update(id, now, out, |r| {
            r.excluded.push(Exclusion {
                lab: lab.clone(),
                reason: ExclusionReason::Declined,
                at: now,
            });
            r.lease_expires_at = None;
            r.lab = None;
            r.status_detail = format!("{lab} declined: {}", reason.as_str());
        });
        self.refresh_expiry(id);
        self.emit_lab(lab, id, JobEventKind::Declined, now, out);
        self.route_or_queue(id, now, out);
        self.route_waiting(lab, now, out);
        Ok(Reply::Declined(*id))
    }

    pub(super) fn receive(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Accepted => {}
            RequestState::Offered => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is still an offer: accept it before recording the sample"
                )));
            }
            RequestState::Received => {
                return Err(Rejection::WrongState(format!(
                    "the sample of job {id} is already recorded as received"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.update(id, now, out, |r| {
            r.state = RequestState::Received;
            r.status_detail = format!("sample received by {lab}");
        });
        self.emit_lab(lab, id, JobEventKind::Received, now, out);
        self.emit_trust(id, TrustEventKind::StateChanged, now, out);
        Ok(self.reply(id))
    }

    pub(super) fn post_results(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        observations: &[Observation],
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Received => {}
            RequestState::Offered | RequestState::Accepted => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is {}: record the sample's receipt before posting results",
                    r.state.as_str()
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        let mut v = Violations::default();
        for test in r.submission.tests.codes() {
            if !observations.iter().any(|o| &o.test == test) {
                v.add(
                    "observations",
                    format!("no result for requested test {test}"),
                );
            }
        }
        for (i, o) in observations.iter().enumerate() {
            if !r.submission.tests.contains(&o.test) {
                v.add(
                    format!("observations[{i}].test"),
                    format!("{} is not one of the job's tests", o.test),
                );
            }
        }
        if !v.is_empty() {
            return Err(Rejection::Invalid(v));
        }
        let critical = observations.iter().any(|o| o.flag.is_critical());
        out.changed = true;
        self.release(id, lab, out);
        self.update(id, now, out, |r| {
            r.state = RequestState::Resulted;
            r.results = observations.to_vec();
            r.status_detail = if critical {
                format!("resulted by {lab}; critical result: phone the clinician")
            } else {
                format!("resulted by {lab}")
            };
        });
        self.finish(id, now);
        self.emit_lab(lab, id, JobEventKind::Resulted, now, out);
        self.emit_trust(id, TrustEventKind::Resulted, now, out);
        if critical {
            self.emit_trust(id, TrustEventKind::CriticalResult, now, out);
        }
        self.route_waiting(lab, now, out);
        Ok(self.reply(id))
    }

    pub(super) fn fail(
        &mut self,
        lab: &OdsCode,
        id: &RequestId,
        reason: FailureReason,
        detail: &BoundedText,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let r = self.job_of(lab, id, now)?;
        match r.state {
            RequestState::Accepted | RequestState::Received => {}
            RequestState::Offered => {
                return Err(Rejection::WrongState(format!(
                    "job {id} is still an offer: decline it instead"
                )));
            }
            other => return Err(final_state_error(id, other)),
        }
        out.changed = true;
        self.release(id, lab, out);
        self.update(id, now, out, |r| {
            r.state = RequestState::Failed;
            r.failure = Some(reason);
            r.status_detail = if detail.is_empty() {
                format!(
                    "{lab} could not use the sample ({}): recollect",
                    reason.as_str()
                )
            } else {
                format!(
                    "{lab} could not use the sample ({}: {}): recollect",
                    reason.as_str(),
                    detail.as_str()
                )
            };
        });
        self.finish(id, now);
        self.emit_lab(lab, id, JobEventKind::Failed, now, out);
        self.emit_trust(id, TrustEventKind::Failed, now, out);
        self.route_waiting(lab, now, out);
        Ok(self.reply(id))
    }

    pub(super) fn set_capacity(
        &mut self,
        lab: &OdsCode,
        test: &TestCode,
        capacity: u32,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let state = self.state.labs.get_mut(lab).ok_or_else(|| {
            Rejection::NotPermitted(format!("{lab} is not a lab in the directory"))
        })?;
        let slot = state
            .slots
            .get_mut(test)
            .ok_or_else(|| Rejection::invalid("test", format!("{lab} does not perform {test}")))?;
        let raised = capacity > slot.capacity;
        if slot.capacity != capacity {
            slot.capacity = capacity;
            out.changed = true;
            out.labs.push(lab.clone());
        }
        if raised {
            self.route_waiting(lab, now, out);
        }
        let state = self
            .state
            .labs
            .get(lab)
            .ok_or_else(|| Rejection::Inconsistent("lab vanished".into()))?;
        // Without the open jobs: the reply shows capacity, and copying every job the lab holds
        // made each capacity change cost O(jobs held).
        Ok(Reply::Capacity(LabState {
            config: state.config.clone(),
            status: state.status,
            slots: state.slots.clone(),
            open: BTreeSet::new(),
            last_offer: state.last_offer,
        }))
    }

    pub(super) fn set_status(
        &mut self,
        lab: &OdsCode,
        status: LabStatus,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<Reply, Rejection> {
        let state = self.state.labs.get_mut(lab).ok_or_else(|| {
            Rejection::NotPermitted(format!("{lab} is not a lab in the directory"))
        })?;
        let old = state.status;
        if old == status {
            return Ok(Reply::Status {
                status,
                withdrawn: 0,
            });
        }
        state.status = status;
        let open: Vec<RequestId> = state.open.iter().copied().collect();
        out.changed = true;
        out.labs.push(lab.clone());
        let mut withdrawn = 0;
        if status == LabStatus::Offline {
            for id in &open {
                match self.state.requests[id].state {
                    RequestState::Offered => {
                        withdrawn += 1;
                        self.release(id, lab, out);
                        self.remove_timer(id, TimerKind::Lease);
                        self.update(id, now, out, |r| {
                            r.lease_expires_at = None;
                            r.lab = None;
                            r.status_detail = format!("{lab} went offline; routing again");
                        });
                        self.emit_lab(lab, id, JobEventKind::Withdrawn, now, out);
                        self.route_or_queue(id, now, out);
                    }
                    RequestState::Accepted => {
                        self.update(id, now, out, |r| {
                            r.status_detail = format!(
                                "{lab} went offline before the sample arrived; a coordinator will decide"
                            );
                        });
                        self.emit_trust(id, TrustEventKind::LabOffline, now, out);
                    }
                    _ => {}
                }
            }
        }
        if status == LabStatus::Online {
            self.route_waiting(lab, now, out);
        }
        Ok(Reply::Status { status, withdrawn })
    }

    /// The request as a job of `lab`, or the error a lab that does not hold it gets: an offer it
    /// lost is explained, anything else is NOT_FOUND.
    fn job_of(
        &self,
        lab: &OdsCode,
        id: &RequestId,
        now: Timestamp,
    ) -> Result<&Arc<Request>, Rejection> {
        let r = self
            .state
            .requests
            .get(id)
            .ok_or_else(|| not_found("job", id))?;
        if r.is_job_of(lab) {
            return Ok(r);
        }
        let Some(ex) = r.excluded.iter().rev().find(|e| &e.lab == lab) else {
            return Err(not_found("job", id));
        };
        let ago = human_duration(now.millis_since(ex.at));
        Err(Rejection::WrongState(match ex.reason {
            ExclusionReason::Declined => format!("{lab} declined this offer {ago} ago"),
            ExclusionReason::Reassigned => {
                format!("a coordinator reassigned this job {ago} ago, while {lab} was offline")
            }
            ExclusionReason::LeaseExpired => {
                let since = match r.state {
                    RequestState::Queued => "is waiting for another lab",
                    RequestState::Expired => "the request has since expired",
                    RequestState::Cancelled => "the request has since been cancelled",
                    _ => "went to another lab",
                };
                format!("offer expired {ago} ago and {since}")
            }
        }))
    }
}

fn final_state_error(id: &RequestId, state: RequestState) -> Rejection {
    Rejection::WrongState(match state {
        RequestState::Cancelled => format!("request {id} was cancelled by the trust"),
        RequestState::Expired => {
            format!("request {id} expired: the sample deadline can no longer be met")
        }
        other => format!("job {id} is already {}", other.as_str()),
    })
}
