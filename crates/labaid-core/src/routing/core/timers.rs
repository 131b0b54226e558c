//! Timers: offer leases, sample deadlines (expiry) and retention (purge), how each is armed and
//! disarmed, and what `Tick` does when they fall due.

use std::sync::Arc;

use super::Router;
use super::command::{Outcome, TimerKind};
use crate::domain::{Exclusion, ExclusionReason, Request, RequestId, RequestState, Timestamp};
use crate::routing::event::{JobEventKind, TrustEventKind};

impl Router {
    pub(super) fn tick(&mut self, now: Timestamp, out: &mut Outcome) {
        while let Some(&(at, kind, id)) = self.state.timers.first() {
            if at > now {
                break;
            }
            self.state.timers.remove(&(at, kind, id));
            out.changed = true;
            let Some(r) = self.state.requests.get(&id) else {
                continue;
            };
            match kind {
                TimerKind::Lease if r.state == RequestState::Offered => {
                    self.lease_expired(&id, now, out)
                }
                TimerKind::Expiry if r.state.can_expire() => self.expire(&id, now, out),
                TimerKind::Purge if r.state.is_final() => self.purge(&id, out),
                _ => {}
            }
        }
    }

    fn lease_expired(&mut self, id: &RequestId, now: Timestamp, out: &mut Outcome) {
        let Some(lab) = self.state.requests[id].lab.clone() else {
            return;
        };
        self.release(id, &lab, out);
        self.update(id, now, out, |r| {
            r.excluded.push(Exclusion {
                lab: lab.clone(),
                reason: ExclusionReason::LeaseExpired,
                at: now,
            });
            r.lease_expires_at = None;
            r.lab = None;
            r.status_detail = format!("{lab} did not answer the offer in time");
        });
        self.refresh_expiry(id);
        self.emit_lab(&lab, id, JobEventKind::LeaseExpired, now, out);
        self.route_or_queue(id, now, out);
        self.route_waiting(&lab, now, out);
    }

    pub(super) fn expire(&mut self, id: &RequestId, now: Timestamp, out: &mut Outcome) {
        let r = &self.state.requests[id];
        let offered_to = (r.state == RequestState::Offered)
            .then(|| r.lab.clone())
            .flatten();
        if r.state == RequestState::Queued {
            self.dequeue(id);
        }
        if let Some(lab) = &offered_to {
            self.release(id, lab, out);
        }
        self.clear_timers(id);
        self.update(id, now, out, |r| {
            r.state = RequestState::Expired;
            r.lease_expires_at = None;
            r.status_detail =
                "no partner lab can finish before the sample deadline: recollect".into();
        });
        self.finish(id, now);
        if let Some(lab) = &offered_to {
            self.emit_lab(lab, id, JobEventKind::Withdrawn, now, out);
        }
        self.emit_trust(id, TrustEventKind::Expired, now, out);
        if let Some(lab) = &offered_to {
            self.route_waiting(lab, now, out);
        }
    }

    fn purge(&mut self, id: &RequestId, out: &mut Outcome) {
        if let Some(r) = self.state.requests.remove(id) {
            self.state
                .orders
                .remove(&(r.trust.clone(), r.submission.order_number.clone()));
            out.purged.push(*id);
        }
    }

    /// Recomputes the last moment any lab that is not excluded could still finish in time, and
    /// re-arms the expiry timer.
    pub(super) fn refresh_expiry(&mut self, id: &RequestId) {
        self.arm_expiry(id, true);
    }

    /// [`Router::refresh_expiry`]; `armed` says whether an expiry timer may be set already.
    pub(super) fn arm_expiry(&mut self, id: &RequestId, armed: bool) {
        let st = &mut self.state;
        let r = &st.requests[id];
        let reach = st
            .labs
            .prepare_reach(&r.trust, &r.submission.tests, &st.catalogue);
        // Nearest first, so the first lab not excluded has the shortest lead.
        let min_lead = reach
            .labs
            .iter()
            .find(|&&(i, _)| !r.excludes(&st.labs.at(i).config.ods))
            .map(|&(_, transport)| i64::from(transport) + i64::from(reach.turnaround_minutes));
        let expire_at = match min_lead {
            Some(lead) => r.deadline.plus_minutes(-lead),
            None => r.submitted_at,
        };
        let old = r.expire_at;
        let live = r.state.can_expire();
        if armed {
            self.state.timers.remove(&(old, TimerKind::Expiry, *id));
        }
        // Unchanged is common (a submission's first lab is rarely excluded); make_mut would copy
        // a request that the read views still share.
        if expire_at != old
            && let Some(r) = self.state.requests.get_mut(id)
        {
            Arc::make_mut(r).expire_at = expire_at;
        }
        if live {
            self.state
                .timers
                .insert((expire_at, TimerKind::Expiry, *id));
        }
    }

    /// Arms the purge of a request that just became final (its `updated_at` is `now`).
    pub(super) fn finish(&mut self, id: &RequestId, now: Timestamp) {
        let r = &self.state.requests[id];
        debug_assert_eq!(r.updated_at, now);
        self.state
            .timers
            .insert(purge_timer(r, self.state.retention_ms));
    }

    /// Moves every purge to a retention after its request finished, after the retention changed.
    pub(super) fn rearm_purges(&mut self) {
        let retention = self.state.retention_ms;
        self.state
            .timers
            .retain(|(_, kind, _)| *kind != TimerKind::Purge);
        let purges: Vec<_> = self
            .state
            .requests
            .values()
            .filter(|r| r.state.is_final())
            .map(|r| purge_timer(r, retention))
            .collect();
        self.state.timers.extend(purges);
    }

    pub(super) fn remove_timer(&mut self, id: &RequestId, kind: TimerKind) {
        let r = &self.state.requests[id];
        let at = match kind {
            TimerKind::Lease => r.lease_expires_at,
            TimerKind::Expiry => Some(r.expire_at),
            TimerKind::Purge => None,
        };
        if let Some(at) = at {
            self.state.timers.remove(&(at, kind, *id));
        }
    }

    pub(super) fn clear_timers(&mut self, id: &RequestId) {
        self.remove_timer(id, TimerKind::Lease);
        self.remove_timer(id, TimerKind::Expiry);
    }
}

/// The purge timer of a final request: a retention after it finished, which was its last change.
pub(super) fn purge_timer(r: &Request, retention_ms: i64) -> (Timestamp, TimerKind, RequestId) {
    (
        r.updated_at.plus_millis(retention_ms),
        TimerKind::Purge,
        r.id,
    )
}
