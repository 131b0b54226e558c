//! Adopting a changed directory (catalogue, trusts, labs, leases, retention) into a recovered
//! core, refused when it would strand work.

use super::Router;
use super::command::Outcome;
use crate::domain::{OdsCode, RequestId, Timestamp};
use crate::routing::labs::{LabConfig, Labs};
use crate::routing::rejection::Rejection;

impl Router {
    /// Applies a changed directory (catalogue, trusts, labs, leases, retention) to a recovered
    /// state: new labs start ONLINE; kept labs keep their status, work and live capacities (a
    /// capacity the config file changed takes the new value); a new retention applies to every
    /// finished request, counted from when it finished; waiting requests are routed to
    /// whatever now has room. Refused, changing nothing, when the change would strand work: a
    /// removed lab that holds jobs, a removed test that is in flight or requested, a removed
    /// trust with live requests.
    ///
    /// `fresh` is a core built from the new directory; only its directory is taken.
    pub fn adopt_directory(
        &mut self,
        fresh: &Router,
        now: Timestamp,
        out: &mut Outcome,
    ) -> Result<(), Rejection> {
        let new = &fresh.state;
        let (catalogue, trusts) = (&new.catalogue, &new.trusts);
        let labs: Vec<LabConfig> = new.labs.iter().map(|l| l.config.clone()).collect();
        let refuse = |why: String| Err(Rejection::WrongState(why));
        for r in self.state.requests.values().filter(|r| !r.state.is_final()) {
            if !trusts.contains_key(&r.trust) {
                return refuse(format!("trust {} still has requests in progress", r.trust));
            }
            if let Some(t) = r
                .submission
                .tests
                .codes()
                .iter()
                .find(|t| catalogue.get(t).is_none())
            {
                return refuse(format!(
                    "test {t} is still requested by requests in progress"
                ));
            }
        }
        for old in self.state.labs.iter() {
            match labs.iter().find(|l| l.ods == old.config.ods) {
                None if !old.open.is_empty() => {
                    return refuse(format!(
                        "lab {} still holds {} jobs; drain it first",
                        old.config.ods,
                        old.open.len()
                    ));
                }
                Some(new) => {
                    if let Some((t, _)) = old
                        .slots
                        .iter()
                        .find(|(t, slot)| slot.in_flight > 0 && !new.capacity.contains_key(*t))
                    {
                        return refuse(format!(
                            "lab {} still has {t} work in flight",
                            old.config.ods
                        ));
                    }
                }
                None => {}
            }
        }
        let mut table = Labs::new(labs);
        for old in self.state.labs.iter() {
            let Some(lab) = table.get_mut(&old.config.ods) else {
                continue;
            };
            lab.status = old.status;
            lab.open = old.open.clone();
            lab.last_offer = old.last_offer;
            for (test, slot) in lab.slots.iter_mut() {
                let Some(live) = old.slots.get(test) else {
                    continue;
                };
                slot.in_flight = live.in_flight;
                if old.config.capacity.get(test) == lab.config.capacity.get(test) {
                    slot.capacity = live.capacity;
                }
            }
        }
        let codes: Vec<OdsCode> = table.iter().map(|l| l.config.ods.clone()).collect();
        self.state.catalogue = catalogue.clone();
        self.state.trusts = trusts.clone();
        self.state.labs = table;
        self.state.leases = new.leases;
        if self.state.retention_ms != new.retention_ms {
            self.state.retention_ms = new.retention_ms;
            self.rearm_purges();
        }
        out.changed = true;
        out.labs.extend(codes.iter().cloned());
        let live: Vec<RequestId> = self
            .state
            .requests
            .values()
            .filter(|r| r.state.can_expire())
            .map(|r| r.id)
            .collect();
        for id in &live {
            self.refresh_expiry(id);
        }
        for lab in &codes {
            self.route_waiting(lab, now, out);
        }
        Ok(())
    }
}
