//! The event loop: the broker's own routing core driven in virtual time. Scenario events, arrivals
//! and the labs' simulated answers wait in one queue ordered by (time, insertion number); the
//! core's own timers (offer leases, sample deadlines) fire through `Command::Tick` at their exact
//! instants, before any other event of the same instant, as the broker's sequencer fires them
//! before the command that finds them due.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use rand::RngExt;
use rand_distr::{Distribution, Exp, LogNormal};
use rand_pcg::Pcg64;
use uuid::Uuid;

use crate::domain::{
    BoundedText, FailureReason, LabStatus, NewRequest, NhsNumber, Observation, ObservationFlag,
    OdsCode, OrderNumber, Patient, RequestId, RequestState, TestCode, Timestamp,
};
use crate::routing::{
    Command, EventKind as CoreEvent, JobEventKind, Outcome, Router, TrustEventKind,
};

mod observe;

use super::SimError;
use super::calendar::{format_datetime, minute_of_day};
use super::demand::{self, Arrival};
use super::record::{Happening, LabTally, Life, Sample};
use super::scenario::{EventKind, Scenario, Service, priority_index};

/// Finished requests stay in the core a minute: the simulator keeps its own record of each life,
/// so the core need not hold a week of them.
const RETENTION_MS: i64 = 60_000;

/// Everything a run produced.
#[derive(Debug)]
pub struct Run {
    /// The scenario it ran.
    pub scenario: Scenario,
    /// Each submitted request's life, in submission order.
    pub lives: Vec<Life>,
    /// Requests not sent because a test was suspended, per priority index.
    pub suppressed: [u64; 4],
    /// The system sampled every `sample_minutes`.
    pub samples: Vec<Sample>,
    /// Per lab, in directory order.
    pub labs: Vec<LabTally>,
    /// Scenario events and opening hours, as they happened.
    pub timeline: Vec<Happening>,
    /// Commands applied to the core (ticks included).
    pub commands: u64,
    /// When the last event was handled.
    pub ended_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Sample,
    Scenario(u32),
    Open(u16),
    Close(u16),
    LabBack(u16),
    Resume(u16),
    Arrive(u32),
    Answer { req: u32, epoch: u32, accept: bool },
    SampleArrives { req: u32, epoch: u32 },
    AnalysisDone { req: u32, epoch: u32, fail: bool },
    Reassign { req: u32, epoch: u32 },
}

struct LabLive {
    ods: OdsCode,
    offline_by_event: bool,
    closed: bool,
    /// Samples that reached the lab while it was offline, and analyses finished while it was:
    /// both wait for it to come back.
    held: Vec<(u32, u32)>,
    results_held: Vec<(u32, u32, bool)>,
    full_since: Option<i64>,
    offline_since: Option<i64>,
}

/// Runs a scenario to its end (and the drain after it). `progress` hears the virtual time now
/// and then, for a progress bar.
pub fn run(scenario: Scenario, progress: &mut dyn FnMut(i64)) -> Result<Run, SimError> {
    Sim::new(scenario)?.go(progress)
}

struct Sim {
    s: Scenario,
    router: Router,
    arrivals: Vec<Arrival>,
    heap: BinaryHeap<Reverse<(i64, u64, Ev)>>,
    seq: u64,
    rng: Pcg64,
    lives: Vec<Life>,
    id_of_life: Vec<RequestId>,
    lab_index: BTreeMap<OdsCode, u16>,
    labs: Vec<LabLive>,
    tally: Vec<LabTally>,
    active: Vec<bool>,
    suspended: BTreeSet<TestCode>,
    suppressed: [u64; 4],
    queued: BTreeSet<u32>,
    /// Per (demand, mix): a bit per lab that serves the trust and performs every test.
    can_take: Vec<Vec<u64>>,
    observations: Vec<Vec<Vec<Observation>>>,
    samples: Vec<Sample>,
    timeline: Vec<Happening>,
    expired: u32,
    resulted: u32,
    live: u64,
    commands: u64,
    patient: Patient,
    note: BoundedText,
    out: Outcome,
}

fn life_of(id: &RequestId) -> u32 {
    (id.0.as_u128() - 1) as u32
}

impl Sim {
    fn new(s: Scenario) -> Result<Self, SimError> {
        let router = Router::new(
            Arc::new(s.catalogue.clone()),
            s.trusts.clone(),
            s.labs.clone(),
            s.leases,
            RETENTION_MS,
        );
        let lab_index: BTreeMap<OdsCode, u16> = s
            .labs
            .iter()
            .enumerate()
            .map(|(i, l)| (l.ods.clone(), i as u16))
            .collect();
        let labs = s
            .labs
            .iter()
            .map(|l| LabLive {
                ods: l.ods.clone(),
                offline_by_event: s.behaviour[&l.ods].status == LabStatus::Offline,
                closed: false,
                held: Vec::new(),
                results_held: Vec::new(),
                full_since: None,
                offline_since: None,
            })
            .collect();
        let tally = s
            .labs
            .iter()
            .map(|l| LabTally {
                peak_in_flight: l
                    .capacity
                    .iter()
                    .map(|(t, c)| (t.to_string(), 0, *c))
                    .collect(),
                ..LabTally::default()
            })
            .collect();
        // Trusts whose provider goes down in the scenario send nothing before it does.
        let waits_for_outage: BTreeSet<&OdsCode> = s
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ProviderDown(t) => Some(t.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let active = s
            .demand
            .iter()
            .map(|d| !waits_for_outage.contains(&d.trust))
            .collect();
        let can_take = s
            .demand
            .iter()
            .map(|d| {
                d.mix
                    .iter()
                    .map(|(tests, _)| {
                        s.labs.iter().enumerate().fold(0u64, |bits, (i, l)| {
                            let serves = l.agreements.contains(&d.trust)
                                && l.transport_minutes.contains_key(&d.trust)
                                && tests.codes().iter().all(|t| l.capacity.contains_key(t));
                            if serves { bits | (1 << i) } else { bits }
                        })
                    })
                    .collect()
            })
            .collect();
        let observations = s
            .demand
            .iter()
            .map(|d| {
                d.mix
                    .iter()
                    .map(|(tests, _)| {
                        tests
                            .codes()
                            .iter()
                            .map(|t| Observation {
                                test: t.clone(),
                                analyte: t.to_string(),
                                value: "normal".into(),
                                unit: String::new(),
                                reference_range: String::new(),
                                flag: ObservationFlag::Normal,
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        if s.labs.len() > 64 {
            return Err(SimError::Unsupported("more than 64 labs".into()));
        }
        let arrivals = demand::generate(&s);
        let rng = demand::stream(s.seed, 1);
        // A synthetic patient: a valid test NHS number, never written to any output.
        let patient = Patient {
            nhs_number: NhsNumber::parse("9434765919").map_err(SimError::Unsupported)?,
            family_name: BoundedText::parse("Simulated", 100).map_err(SimError::Unsupported)?,
            given_name: BoundedText::parse("Patient", 100).map_err(SimError::Unsupported)?,
            birth_date: "1970-01-01".into(),
        };
        let note = BoundedText::parse("", 500).map_err(SimError::Unsupported)?;
        Ok(Self {
            router,
            arrivals,
            heap: BinaryHeap::new(),
            seq: 0,
            rng,
            lives: Vec::new(),
            id_of_life: Vec::new(),
            lab_index,
            labs,
            tally,
            active,
            suspended: BTreeSet::new(),
            suppressed: [0; 4],
            queued: BTreeSet::new(),
            can_take,
            observations,
            samples: Vec::new(),
            timeline: Vec::new(),
            expired: 0,
            resulted: 0,
            live: 0,
            commands: 0,
            patient,
            note,
            out: Outcome::default(),
            s,
        })
    }

    fn push(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn go(mut self, progress: &mut dyn FnMut(i64)) -> Result<Run, SimError> {
        let start = self.s.start.millis();
        let end = start + self.s.duration_ms;
        let horizon = end + self.s.drain_ms;
        self.schedule_start(start, end, horizon)?;
        let mut now = start;
        let mut steps = 0u64;
        loop {
            let next_ev = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = self.router.next_timer().map(Timestamp::millis);
            let (t, is_timer) = match (next_ev, next_timer) {
                (None, None) => break,
                (Some(e), Some(tm)) if tm <= e => (tm, true),
                (None, Some(tm)) => (tm, true),
                (Some(e), _) => (e, false),
            };
            // Arrivals all fall before the end: past it, with nothing live, the run is over.
            if t > horizon || (t >= end && self.live == 0) {
                break;
            }
            now = t;
            if is_timer {
                self.apply(&Command::Tick, t)?;
            } else {
                let Some(Reverse((_, _, ev))) = self.heap.pop() else {
                    break;
                };
                self.handle(ev, t)?;
            }
            steps += 1;
            if steps.is_multiple_of(4096) {
                progress(now - start);
            }
        }
        progress(horizon - start);
        self.close_tallies(now);
        self.check_conservation()?;
        Ok(Run {
            lives: self.lives,
            suppressed: self.suppressed,
            samples: self.samples,
            labs: self.tally,
            timeline: self.timeline,
            commands: self.commands,
            ended_at: now,
            scenario: self.s,
        })
    }

    fn schedule_start(&mut self, start: i64, end: i64, horizon: i64) -> Result<(), SimError> {
        let arrivals: Vec<i64> = self.arrivals.iter().map(|a| a.at.millis()).collect();
        for (i, at) in arrivals.into_iter().enumerate() {
            self.push(at, Ev::Arrive(i as u32));
        }
        let events: Vec<i64> = self.s.events.iter().map(|e| e.at.millis()).collect();
        for (i, at) in events.into_iter().enumerate() {
            self.push(at, Ev::Scenario(i as u32));
        }
        let step = i64::from(self.s.sample_minutes) * 60_000;
        let mut t = start;
        while t <= horizon {
            self.push(t, Ev::Sample);
            t += step;
        }
        let hours: Vec<Option<(u32, u32)>> = self
            .s
            .labs
            .iter()
            .map(|l| self.s.behaviour[&l.ods].hours)
            .collect();
        for (i, hours) in hours.into_iter().enumerate() {
            let Some((open, close)) = hours else {
                continue;
            };
            let day0 = start - i64::from(minute_of_day(self.s.start)) * 60_000;
            let mut day = day0;
            while day <= end.max(horizon) {
                for (minute, ev) in [(open, Ev::Open(i as u16)), (close, Ev::Close(i as u16))] {
                    let at = day + i64::from(minute) * 60_000;
                    if (start..=horizon).contains(&at) {
                        self.push(at, ev);
                    }
                }
                day += 86_400_000;
            }
            // Closed at the start when the start falls outside the opening hours.
            let m = minute_of_day(self.s.start);
            if m < open || m >= close {
                self.labs[i].closed = true;
            }
        }
        for i in 0..self.labs.len() {
            self.settle_status(i as u16, start)?;
        }
        Ok(())
    }

    fn handle(&mut self, ev: Ev, now: i64) -> Result<(), SimError> {
        match ev {
            Ev::Sample => self.sample(now),
            Ev::Scenario(i) => self.scenario_event(i as usize, now)?,
            Ev::Open(l) => {
                self.labs[l as usize].closed = false;
                self.settle_status(l, now)?;
            }
            Ev::Close(l) => {
                self.labs[l as usize].closed = true;
                self.settle_status(l, now)?;
            }
            Ev::LabBack(l) => {
                self.labs[l as usize].offline_by_event = false;
                self.note(now, format!("{} back online", self.labs[l as usize].ods));
                self.settle_status(l, now)?;
            }
            Ev::Resume(i) => {
                if let EventKind::SuspendTest { test, .. } = &self.s.events[i as usize].kind {
                    let test = test.clone();
                    self.suspended.remove(&test);
                    self.note(now, format!("{test} no longer suspended"));
                }
            }
            Ev::Arrive(i) => self.arrive(i as usize, now)?,
            Ev::Answer { req, epoch, accept } => {
                if !self.current(req, epoch, RequestState::Offered) {
                    return Ok(());
                }
                let lab = self.lab_ods(req);
                let id = self.id_of_life[req as usize];
                let cmd = if accept {
                    Command::Accept { lab, id }
                } else {
                    Command::Decline {
                        lab,
                        id,
                        reason: BoundedText::parse("no staff for it (simulated)", 500)
                            .map_err(SimError::Unsupported)?,
                    }
                };
                self.apply(&cmd, now)?;
            }
            Ev::SampleArrives { req, epoch } => {
                if !self.current(req, epoch, RequestState::Accepted) {
                    return Ok(());
                }
                let l = self.lives[req as usize].lab.unwrap_or(0);
                if self.labs[l as usize].offline_by_event {
                    self.labs[l as usize].held.push((req, epoch));
                    return Ok(());
                }
                let cmd = Command::Receive {
                    lab: self.lab_ods(req),
                    id: self.id_of_life[req as usize],
                };
                self.apply(&cmd, now)?;
            }
            Ev::AnalysisDone { req, epoch, fail } => {
                if !self.current(req, epoch, RequestState::Received) {
                    return Ok(());
                }
                let l = self.lives[req as usize].lab.unwrap_or(0);
                if self.labs[l as usize].offline_by_event {
                    self.labs[l as usize].results_held.push((req, epoch, fail));
                    return Ok(());
                }
                let (lab, id) = (self.lab_ods(req), self.id_of_life[req as usize]);
                let cmd = if fail {
                    Command::Fail {
                        lab,
                        id,
                        reason: if self.rng.random::<bool>() {
                            FailureReason::Haemolysed
                        } else {
                            FailureReason::Insufficient
                        },
                        detail: self.note.clone(),
                    }
                } else {
                    let life = &self.lives[req as usize];
                    Command::PostResults {
                        lab,
                        id,
                        observations: self.observations[life.demand as usize][life.mix as usize]
                            .clone(),
                    }
                };
                self.apply(&cmd, now)?;
            }
            Ev::Reassign { req, epoch } => {
                let l = self.lives[req as usize].lab.unwrap_or(0);
                if !self.current(req, epoch, RequestState::Accepted)
                    || !self.labs[l as usize].offline_by_event
                {
                    return Ok(());
                }
                let cmd = Command::Reassign {
                    id: self.id_of_life[req as usize],
                    reason: BoundedText::parse("lab offline; courier redirected (simulated)", 500)
                        .map_err(SimError::Unsupported)?,
                };
                self.lives[req as usize].reassigned += 1;
                self.apply(&cmd, now)?;
            }
        }
        Ok(())
    }

    fn current(&self, req: u32, epoch: u32, state: RequestState) -> bool {
        let life = &self.lives[req as usize];
        life.epoch == epoch && life.state == state
    }

    fn lab_ods(&self, req: u32) -> OdsCode {
        self.labs[self.lives[req as usize].lab.unwrap_or(0) as usize]
            .ods
            .clone()
    }

    fn note(&mut self, at: i64, what: String) {
        self.timeline.push(Happening { at, what });
    }

    fn arrive(&mut self, i: usize, now: i64) -> Result<(), SimError> {
        let a = self.arrivals[i].clone();
        if !self.active[a.demand as usize] {
            return Ok(());
        }
        let d = &self.s.demand[a.demand as usize];
        let tests = d.mix[a.mix as usize].0.clone();
        if tests.codes().iter().any(|t| self.suspended.contains(t)) {
            self.suppressed[priority_index(a.priority)] += 1;
            return Ok(());
        }
        let trust = d.trust.clone();
        let n = self.lives.len() as u32;
        let id = RequestId(Uuid::from_u128(u128::from(n) + 1));
        let request = NewRequest {
            order_number: OrderNumber::parse(&format!("SIM-{n}")).map_err(SimError::Unsupported)?,
            patient: self.patient.clone(),
            tests,
            priority: a.priority,
            collected_at: Timestamp::from_millis(now - a.collection_ms),
            clinical_note: self.note.clone(),
        };
        let deadline = request.deadline(&self.s.catalogue).millis();
        self.lives.push(Life {
            demand: a.demand,
            mix: a.mix,
            priority: a.priority,
            collected_at: now - a.collection_ms,
            submitted_at: now,
            deadline,
            first_offer_at: None,
            accepted_at: None,
            received_at: None,
            finished_at: None,
            // A new request starts in the queue as far as the records go: the core's first event
            // moves it on, or leaves it there.
            state: RequestState::Queued,
            lab: None,
            offers: 0,
            declines: 0,
            lease_expiries: 0,
            reassigned: 0,
            epoch: 0,
        });
        self.id_of_life.push(id);
        self.queued.insert(n);
        self.live += 1;
        self.apply(&Command::Submit { trust, id, request }, now)
    }

    fn scenario_event(&mut self, i: usize, now: i64) -> Result<(), SimError> {
        let kind = self.s.events[i].kind.clone();
        match kind {
            EventKind::ProviderDown(trusts) | EventKind::ProviderRestored(trusts) => {
                let down = matches!(self.s.events[i].kind, EventKind::ProviderDown(_));
                for (d, demand) in self.s.demand.iter().enumerate() {
                    if trusts.contains(&demand.trust) {
                        self.active[d] = down;
                    }
                }
                let names: Vec<&str> = trusts.iter().map(OdsCode::as_str).collect();
                let what = if down {
                    format!(
                        "provider of {} down: they submit to labaid",
                        names.join(", ")
                    )
                } else {
                    format!("provider of {} restored", names.join(", "))
                };
                self.note(now, what);
            }
            EventKind::LabOffline { lab, hours } => {
                let l = self.lab_index[&lab];
                self.labs[l as usize].offline_by_event = true;
                self.note(
                    now,
                    match hours {
                        Some(h) => format!("{lab} offline for {h} h"),
                        None => format!("{lab} offline"),
                    },
                );
                if let Some(h) = hours {
                    self.push(now + (h * 3_600_000.0).round() as i64, Ev::LabBack(l));
                }
                self.settle_status(l, now)?;
            }
            EventKind::LabOnline(lab) => {
                let l = self.lab_index[&lab];
                self.push(now, Ev::LabBack(l));
            }
            EventKind::Capacity { lab, capacity } => {
                let summary: Vec<String> =
                    capacity.iter().map(|(t, c)| format!("{t}={c}")).collect();
                self.note(now, format!("{lab} capacity {}", summary.join(" ")));
                let l = self.lab_index[&lab] as usize;
                for (test, cap) in capacity {
                    if let Some(p) = self.tally[l]
                        .peak_in_flight
                        .iter_mut()
                        .find(|p| p.0 == test.as_str())
                    {
                        p.2 = p.2.max(cap);
                    }
                    self.apply(
                        &Command::SetCapacity {
                            lab: lab.clone(),
                            test,
                            capacity: cap,
                        },
                        now,
                    )?;
                }
            }
            EventKind::SuspendTest { test, hours } => {
                self.suspended.insert(test.clone());
                self.note(
                    now,
                    match hours {
                        Some(h) => format!("{test} suspended for {h} h"),
                        None => format!("{test} suspended"),
                    },
                );
                if let Some(h) = hours {
                    self.push(now + (h * 3_600_000.0).round() as i64, Ev::Resume(i as u16));
                }
            }
            EventKind::ResumeTest(test) => {
                self.suspended.remove(&test);
                self.note(now, format!("{test} no longer suspended"));
            }
        }
        Ok(())
    }

    /// Puts the lab in the status its outage and opening hours call for: offline during an
    /// outage; draining (no new offers, work kept) outside its hours; online otherwise.
    fn settle_status(&mut self, l: u16, now: i64) -> Result<(), SimError> {
        let live = &self.labs[l as usize];
        let want = if live.offline_by_event {
            LabStatus::Offline
        } else if live.closed {
            LabStatus::Draining
        } else {
            LabStatus::Online
        };
        let ods = live.ods.clone();
        let have = self.router.labs().get(&ods).map(|s| s.status);
        if have == Some(want) {
            return Ok(());
        }
        self.apply(
            &Command::SetStatus {
                lab: ods,
                status: want,
            },
            now,
        )?;
        let live = &mut self.labs[l as usize];
        match (want, live.offline_since) {
            (LabStatus::Offline, None) => live.offline_since = Some(now),
            (LabStatus::Offline, Some(_)) => {}
            (_, Some(since)) => {
                self.tally[l as usize].offline_ms += now - since;
                live.offline_since = None;
            }
            (_, None) => {}
        }
        if want != LabStatus::Offline {
            let held = std::mem::take(&mut self.labs[l as usize].held);
            for (req, epoch) in held {
                self.push(now, Ev::SampleArrives { req, epoch });
            }
            let done = std::mem::take(&mut self.labs[l as usize].results_held);
            for (req, epoch, fail) in done {
                self.push(now, Ev::AnalysisDone { req, epoch, fail });
            }
        }
        Ok(())
    }

    fn apply(&mut self, cmd: &Command, now: i64) -> Result<(), SimError> {
        self.commands += 1;
        let mut out = std::mem::take(&mut self.out);
        let result = self
            .router
            .apply(cmd, Timestamp::from_millis(now), &mut out);
        if let Err(e) = result {
            // Every command is sent only in a state that allows it; a refusal is a bug here.
            return Err(SimError::Conservation(format!(
                "the core refused a simulated command at {}: {e}",
                format_datetime(Timestamp::from_millis(now))
            )));
        }
        let mut offered_labs: u64 = 0;
        for event in &out.events {
            let req = life_of(&event.request.id);
            let state = event.request.state;
            self.observe_state(req, state, now)?;
            match event.kind {
                CoreEvent::Lab(kind) => {
                    let l = self.lab_index[&event.org];
                    self.lab_event(req, l, kind, &event.request, now);
                    if kind == JobEventKind::Offered {
                        offered_labs |= 1 << l;
                    }
                }
                CoreEvent::Trust(TrustEventKind::LabOffline) => {
                    let epoch = self.lives[req as usize].epoch;
                    let at = now + (self.s.reassign_minutes * 60_000.0).round() as i64;
                    self.push(at, Ev::Reassign { req, epoch });
                }
                CoreEvent::Trust(_) => {}
            }
        }
        let touched: BTreeSet<OdsCode> = out.labs.iter().cloned().collect();
        for ods in touched {
            let l = self.lab_index[&ods];
            self.lab_changed(l, offered_labs & (1 << l) != 0, now)?;
        }
        out.events.clear();
        out.requests.clear();
        out.purged.clear();
        out.labs.clear();
        out.changed = false;
        self.out = out;
        Ok(())
    }
}

fn exp_ms(rng: &mut Pcg64, mean_minutes: f64) -> i64 {
    if mean_minutes <= 0.0 {
        return 0;
    }
    Exp::new(1.0 / (mean_minutes * 60_000.0)).map_or(0, |e| e.sample(rng).round() as i64)
}

/// A log-normal draw with this mean and coefficient of variation.
fn lognormal(rng: &mut Pcg64, mean: f64, cv: f64) -> f64 {
    if mean <= 0.0 || cv <= 0.0 {
        return mean.max(0.0);
    }
    let sigma2 = (1.0 + cv * cv).ln();
    let mu = mean.ln() - sigma2 / 2.0;
    LogNormal::new(mu, sigma2.sqrt()).map_or(mean, |d| d.sample(rng))
}
