//! The simulator's bookkeeping beside its event loop: following each request's state, the labs'
//! load over time, the time series samples, and the conservation checks every run ends with.

use super::*;

impl Sim {
    /// Follows a request's state, keeping the waiting set and the final tallies; a request that
    /// reaches a final state twice, or leaves one, breaks conservation.
    pub(super) fn observe_state(
        &mut self,
        req: u32,
        state: RequestState,
        now: i64,
    ) -> Result<(), SimError> {
        let life = &mut self.lives[req as usize];
        if life.state == state {
            return Ok(());
        }
        if life.state.is_final() {
            return Err(SimError::Conservation(format!(
                "request {req} left its final state {} for {}",
                life.state.as_str(),
                state.as_str()
            )));
        }
        if life.state == RequestState::Queued {
            self.queued.remove(&req);
        }
        if state == RequestState::Queued {
            self.queued.insert(req);
        }
        life.state = state;
        if state.is_final() {
            life.finished_at = Some(now);
            self.live -= 1;
            match state {
                RequestState::Expired => self.expired += 1,
                RequestState::Resulted => self.resulted += 1,
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn lab_event(
        &mut self,
        req: u32,
        l: u16,
        kind: JobEventKind,
        r: &crate::domain::Request,
        now: i64,
    ) {
        let ods = self.labs[l as usize].ods.clone();
        let b = &self.s.behaviour[&ods];
        let (accept_minutes, decline, fail_chance, service, factor, extra) = (
            b.accept_minutes,
            b.decline_chance,
            b.fail_chance,
            b.service,
            b.turnaround_factor,
            b.courier_extra_minutes,
        );
        let tally = &mut self.tally[l as usize];
        let life = &mut self.lives[req as usize];
        match kind {
            JobEventKind::Offered => {
                tally.offers += 1;
                life.epoch += 1;
                life.offers += 1;
                life.lab = Some(l);
                life.first_offer_at.get_or_insert(now);
                let epoch = life.epoch;
                let delay = exp_ms(&mut self.rng, accept_minutes);
                let accept = self.rng.random::<f64>() >= decline;
                self.push(now + delay, Ev::Answer { req, epoch, accept });
            }
            JobEventKind::Declined => {
                tally.declined += 1;
                life.declines += 1;
                life.epoch += 1;
            }
            JobEventKind::LeaseExpired => {
                tally.lapsed += 1;
                life.lease_expiries += 1;
                life.epoch += 1;
            }
            JobEventKind::Withdrawn | JobEventKind::Cancelled => life.epoch += 1,
            JobEventKind::Accepted => {
                life.accepted_at = Some(now);
                let epoch = life.epoch;
                let courier =
                    i64::from(r.transport_minutes) * 60_000 + exp_ms(&mut self.rng, extra);
                self.push(now + courier, Ev::SampleArrives { req, epoch });
            }
            JobEventKind::Received => {
                life.received_at = Some(now);
                let epoch = life.epoch;
                let mean =
                    f64::from(r.submission.tests.turnaround_minutes(&self.s.catalogue)) * factor;
                let minutes = match service {
                    Service::Fixed => mean,
                    Service::Exponential => {
                        if mean > 0.0 {
                            Exp::new(1.0 / mean).map_or(mean, |e| e.sample(&mut self.rng))
                        } else {
                            0.0
                        }
                    }
                    Service::LogNormal(cv) => lognormal(&mut self.rng, mean, cv),
                };
                let fail = self.rng.random::<f64>() < fail_chance;
                self.push(
                    now + (minutes * 60_000.0).round() as i64,
                    Ev::AnalysisDone { req, epoch, fail },
                );
            }
            JobEventKind::Resulted => tally.resulted += 1,
            JobEventKind::Failed => tally.failed += 1,
        }
    }

    /// After a command touched lab `l`: the capacity check, peaks, and time at capacity.
    pub(super) fn lab_changed(&mut self, l: u16, offered: bool, now: i64) -> Result<(), SimError> {
        let ods = &self.labs[l as usize].ods;
        let Some(state) = self.router.labs().get(ods) else {
            return Ok(());
        };
        let tally = &mut self.tally[l as usize];
        let mut full = false;
        for (test, slot) in &state.slots {
            if offered && slot.in_flight > slot.capacity {
                return Err(SimError::Conservation(format!(
                    "lab {ods} was offered work beyond its {test} capacity ({} in flight, capacity {}) at {}",
                    slot.in_flight,
                    slot.capacity,
                    format_datetime(Timestamp::from_millis(now))
                )));
            }
            if let Some(p) = tally
                .peak_in_flight
                .iter_mut()
                .find(|p| p.0 == test.as_str())
            {
                p.1 = p.1.max(slot.in_flight);
            }
            full |= slot.capacity > 0 && slot.in_flight >= slot.capacity;
        }
        full &= state.status == LabStatus::Online;
        let live = &mut self.labs[l as usize];
        match (full, live.full_since) {
            (true, None) => live.full_since = Some(now),
            (false, Some(since)) => {
                tally.at_capacity_ms += now - since;
                live.full_since = None;
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn sample(&mut self, now: i64) {
        let n = self.labs.len();
        let mut waiting = [0u32; 4];
        let mut queue = vec![0u32; n];
        for &req in &self.queued {
            let life = &self.lives[req as usize];
            waiting[priority_index(life.priority)] += 1;
            let bits = self.can_take[life.demand as usize][life.mix as usize];
            for (i, q) in queue.iter_mut().enumerate() {
                if bits & (1 << i) != 0 {
                    *q += 1;
                }
            }
        }
        let mut in_flight = vec![0u32; n];
        let mut capacity = vec![0u32; n];
        let mut status = vec![LabStatus::Online; n];
        let mut busiest = vec![0.0; n];
        for (i, live) in self.labs.iter().enumerate() {
            if let Some(state) = self.router.labs().get(&live.ods) {
                in_flight[i] = state.slots.values().map(|s| s.in_flight).sum();
                capacity[i] = state.slots.values().map(|s| s.capacity).sum();
                status[i] = state.status;
                busiest[i] = state
                    .slots
                    .values()
                    .filter(|s| s.capacity > 0)
                    .map(|s| f64::from(s.in_flight) / f64::from(s.capacity))
                    .fold(0.0, f64::max);
            }
            self.tally[i].peak_queue = self.tally[i].peak_queue.max(queue[i]);
        }
        self.samples.push(Sample {
            at: now,
            waiting,
            in_flight,
            capacity,
            queue,
            status,
            busiest,
            expired: self.expired,
            resulted: self.resulted,
        });
    }

    pub(super) fn close_tallies(&mut self, now: i64) {
        for (i, live) in self.labs.iter_mut().enumerate() {
            if let Some(since) = live.full_since.take() {
                self.tally[i].at_capacity_ms += now - since;
            }
            if let Some(since) = live.offline_since.take() {
                self.tally[i].offline_ms += now - since;
            }
        }
    }

    /// Every request is in exactly one state; those not final are still open at a lab or in the
    /// queue; each lab's work in flight per test equals the open jobs the records hold there.
    pub(super) fn check_conservation(&self) -> Result<(), SimError> {
        let mut open: BTreeMap<(u16, TestCode), u32> = BTreeMap::new();
        let mut unfinished = 0u64;
        for life in &self.lives {
            if !life.state.is_final() {
                unfinished += 1;
            }
            if matches!(
                life.state,
                RequestState::Offered | RequestState::Accepted | RequestState::Received
            ) {
                let l = life.lab.unwrap_or(0);
                for t in self.s.demand[life.demand as usize].mix[life.mix as usize]
                    .0
                    .codes()
                {
                    *open.entry((l, t.clone())).or_default() += 1;
                }
            }
        }
        if unfinished != self.live {
            return Err(SimError::Conservation(format!(
                "{unfinished} requests are not final but {} were counted live",
                self.live
            )));
        }
        if self.queued.len() != self.router.queue().len() {
            return Err(SimError::Conservation(format!(
                "{} requests recorded as waiting, the core's queue holds {}",
                self.queued.len(),
                self.router.queue().len()
            )));
        }
        for (i, live) in self.labs.iter().enumerate() {
            let Some(state) = self.router.labs().get(&live.ods) else {
                continue;
            };
            for (test, slot) in &state.slots {
                let mine = open.get(&(i as u16, test.clone())).copied().unwrap_or(0);
                if mine != slot.in_flight {
                    return Err(SimError::Conservation(format!(
                        "lab {} has {} {test} jobs in flight, the records hold {mine}",
                        live.ods, slot.in_flight
                    )));
                }
            }
        }
        Ok(())
    }
}
