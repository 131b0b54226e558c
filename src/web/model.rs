//! The snapshot the coordinator page shows, as JSON: built from the broker's read views (queues,
//! labs, open offers, the same figures as `GetOverview`) and the tracker (live requests, the last
//! hour). It names requests by id, trust and tests only: never an NHS number, name or birth date.

use serde::Serialize;

use super::tracker::{Tracker, WINDOW_MINUTES};
use crate::domain::{LabStatus, Priority, Request, RequestState, Timestamp};
use crate::engine::Views;
use crate::metrics::Metrics;
use crate::ops::Presence;

/// Rows each list on the page shows at most (the total is shown beside it): what a wall screen
/// can show at once.
const ROWS: usize = 12;

/// Turnaround target per priority, in minutes, from the targets NHS labs publish: emergency
/// department (stat) under an hour, asap two hours, wards (urgent) four hours, GP (routine) a day.
/// A priority whose oldest waiting request has waited past its target is highlighted.
pub const TURNAROUND_TARGET_MINUTES: [(Priority, i64); 4] = [
    (Priority::Stat, 60),
    (Priority::Asap, 120),
    (Priority::Urgent, 240),
    (Priority::Routine, 1440),
];

fn target_minutes(p: Priority) -> i64 {
    TURNAROUND_TARGET_MINUTES
        .iter()
        .find(|(q, _)| *q == p)
        .map_or(1440, |(_, m)| *m)
}

/// Everything on the page at one moment.
#[derive(Debug, Serialize)]
pub(crate) struct Snapshot {
    /// The broker's clock, milliseconds since the epoch; the page shows times relative to it.
    now_ms: i64,
    queues: Vec<Queue>,
    offers_open: i64,
    labs: Vec<Lab>,
    deadlines: Vec<Row>,
    expired: List,
    awaiting_sample: List,
    offers: List,
    charts: Charts,
}

#[derive(Debug, Serialize)]
struct Queue {
    priority: &'static str,
    waiting: usize,
    oldest_wait_s: f64,
    target_s: i64,
    breached: bool,
}

#[derive(Debug, Serialize)]
struct Lab {
    ods: String,
    name: String,
    status: &'static str,
    tests: Vec<Slot>,
    /// Jobs in flight over capacity, across its tests (0 to 1, more when capacity was lowered).
    utilisation: f64,
    /// When it last called or had a watch open; `None` when never heard from.
    last_seen_ms: Option<i64>,
    watching: bool,
}

#[derive(Debug, Serialize)]
struct Slot {
    test: String,
    capacity: u32,
    in_flight: u32,
}

/// One request, without patient identifiers.
#[derive(Debug, Serialize)]
struct Row {
    id: String,
    trust: String,
    priority: &'static str,
    state: &'static str,
    tests: Vec<String>,
    lab: Option<String>,
    lab_status: Option<&'static str>,
    deadline_ms: i64,
    /// When it entered its current state (accepted, offered) or last changed.
    since_ms: i64,
    lease_expires_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
struct List {
    total: usize,
    rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Charts {
    /// The first minute shown, milliseconds since the epoch.
    start_ms: i64,
    minutes: i64,
    series: Vec<Series>,
}

#[derive(Debug, Serialize)]
struct Series {
    priority: &'static str,
    target_s: i64,
    /// Results per minute.
    results: Vec<u64>,
    /// Mean time from submission to result of that minute's results, seconds; `None` without one.
    turnaround_s: Vec<Option<f64>>,
}

impl Snapshot {
    /// The page's state at `now`.
    pub(crate) fn build(
        views: &Views,
        metrics: &Metrics,
        tracker: &Tracker,
        presence: &Presence,
        now: Timestamp,
    ) -> Self {
        let waits = views.oldest_waits(now);
        let queues = views
            .waiting()
            .into_iter()
            .rev()
            .map(|(p, waiting)| {
                let oldest = waits.iter().find(|(q, _)| *q == p).map_or(0.0, |(_, w)| *w);
                let target_s = target_minutes(p) * 60;
                Queue {
                    priority: p.as_str(),
                    waiting,
                    oldest_wait_s: oldest,
                    target_s,
                    breached: waiting > 0 && oldest >= target_s as f64,
                }
            })
            .collect();
        let offers_open = Priority::ALL
            .iter()
            .map(|p| {
                metrics
                    .requests
                    .with_label_values(&[RequestState::Offered.as_str(), p.as_str()])
                    .get()
            })
            .sum::<i64>()
            .max(0);
        let labs_now = views.labs();
        let lab_status = |r: &Request| {
            r.lab.as_ref().and_then(|l| {
                labs_now
                    .iter()
                    .find(|x| &x.config.ods == l)
                    .map(|x| x.status.as_str())
            })
        };
        let row = |r: &Request| Row {
            id: r.id.to_string(),
            trust: r.trust.to_string(),
            priority: r.submission.priority.as_str(),
            state: r.state.as_str(),
            tests: r
                .submission
                .tests
                .codes()
                .iter()
                .map(ToString::to_string)
                .collect(),
            lab: r.lab.as_ref().map(ToString::to_string),
            lab_status: lab_status(r),
            deadline_ms: r.deadline.millis(),
            since_ms: match r.state {
                RequestState::Accepted => r.accepted_at.unwrap_or(r.updated_at).millis(),
                _ => r.updated_at.millis(),
            },
            lease_expires_ms: r
                .lease_expires_at
                .filter(|_| r.state == RequestState::Offered)
                .map(Timestamp::millis),
        };
        let list = |(rows, total): (Vec<&std::sync::Arc<Request>>, usize)| List {
            total,
            rows: rows.into_iter().map(|r| row(r)).collect(),
        };
        let labs = labs_now
            .iter()
            .map(|l| {
                let (cap, used) = l.slots.values().fold((0u64, 0u64), |(c, u), s| {
                    (c + u64::from(s.capacity), u + u64::from(s.in_flight))
                });
                let seen = presence.last_seen(&l.config.ods);
                Lab {
                    ods: l.config.ods.to_string(),
                    name: l.config.name.clone(),
                    status: l.status.as_str(),
                    tests: l
                        .slots
                        .iter()
                        .map(|(t, s)| Slot {
                            test: t.to_string(),
                            capacity: s.capacity,
                            in_flight: s.in_flight,
                        })
                        .collect(),
                    utilisation: if cap == 0 {
                        if used > 0 { 1.0 } else { 0.0 }
                    } else {
                        used as f64 / cap as f64
                    },
                    last_seen_ms: seen.map(|(t, _)| t.millis()),
                    watching: seen.is_some_and(|(_, w)| w) && l.status != LabStatus::Offline,
                }
            })
            .collect();
        let minutes = tracker.minutes(now);
        let series = Priority::ALL
            .iter()
            .enumerate()
            .rev()
            .map(|(i, p)| Series {
                priority: p.as_str(),
                target_s: target_minutes(*p) * 60,
                results: minutes.iter().map(|(_, b)| b[i].results).collect(),
                turnaround_s: minutes
                    .iter()
                    .map(|(_, b)| {
                        (b[i].results > 0)
                            .then(|| b[i].turnaround_ms_sum as f64 / b[i].results as f64 / 1000.0)
                    })
                    .collect(),
            })
            .collect();
        Self {
            now_ms: now.millis(),
            queues,
            offers_open,
            labs,
            deadlines: tracker
                .nearest_deadlines(ROWS)
                .into_iter()
                .map(|r| row(r))
                .collect(),
            expired: list(tracker.expired(ROWS)),
            awaiting_sample: list(tracker.awaiting_samples(ROWS)),
            offers: list(tracker.open_offers(ROWS)),
            charts: Charts {
                start_ms: minutes.first().map_or(0, |(m, _)| m * 60_000),
                minutes: WINDOW_MINUTES,
                series,
            },
        }
    }
}
