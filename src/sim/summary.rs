//! The figures an incident team reads first, computed from a run: per priority (outcomes,
//! turnaround percentiles against the target, share resulted before the sample deadline) and per
//! lab (load, time at capacity, peaks), and their plain-text table for the terminal.

use std::fmt::Write as _;

use crate::domain::RequestState;

use super::calendar::format_datetime;
use super::run::Run;
use super::scenario::{REPORT_ORDER, priority_index};
use crate::domain::Timestamp;

/// Outcomes of one priority.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrioritySummary {
    /// Submitted to labaid.
    pub submitted: u64,
    /// Resulted.
    pub resulted: u64,
    /// Expired: no lab could finish before the sample spoiled (recollect).
    pub expired: u64,
    /// Failed at the lab: sample unusable (recollect).
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Not final when the run stopped.
    pub in_progress: u64,
    /// Offers declined.
    pub declined: u64,
    /// Offers whose lease ran out.
    pub lapsed: u64,
    /// Not sent: a test was suspended.
    pub suppressed: u64,
    /// Collection-to-result minutes: 50th, 90th and 99th percentiles.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Mean minutes from submission to the first offer (the wait for a lab).
    pub mean_wait: Option<f64>,
    /// Target, in minutes.
    pub target: f64,
    /// Share of resulted requests within the target.
    pub within_target: Option<f64>,
    /// Share of submitted requests resulted before their sample deadline.
    pub before_deadline: Option<f64>,
}

/// One lab's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct LabSummary {
    /// ODS code.
    pub ods: String,
    /// Offers made to it.
    pub offers: u64,
    /// Results it posted.
    pub resulted: u64,
    /// Samples it failed.
    pub failed: u64,
    /// Mean share of its slots in use over the samples.
    pub mean_utilisation: f64,
    /// Highest share.
    pub peak_utilisation: f64,
    /// Hours during which some test was full.
    pub hours_at_capacity: f64,
    /// Hours offline.
    pub hours_offline: f64,
    /// Peak waiting requests it could take.
    pub peak_queue: u32,
    /// Per test: (code, peak in flight, capacity).
    pub peak_in_flight: Vec<(String, u32, u32)>,
}

/// The summary of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Per priority index.
    pub priorities: [PrioritySummary; 4],
    /// Per lab, in directory order.
    pub labs: Vec<LabSummary>,
    /// All requests submitted.
    pub submitted: u64,
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Computes the summary of a run.
pub fn summarise(run: &Run) -> Summary {
    let mut priorities: [PrioritySummary; 4] = Default::default();
    let mut turnarounds: [Vec<f64>; 4] = Default::default();
    let mut waits: [(f64, u64); 4] = [(0.0, 0); 4];
    let mut within = [0u64; 4];
    let mut before = [0u64; 4];
    for life in &run.lives {
        let i = priority_index(life.priority);
        let p = &mut priorities[i];
        p.submitted += 1;
        p.declined += u64::from(life.declines);
        p.lapsed += u64::from(life.lease_expiries);
        match life.state {
            RequestState::Resulted => p.resulted += 1,
            RequestState::Expired => p.expired += 1,
            RequestState::Failed => p.failed += 1,
            RequestState::Cancelled => p.cancelled += 1,
            _ => p.in_progress += 1,
        }
        if let Some(t) = life.turnaround_minutes() {
            turnarounds[i].push(t);
            if t * 60_000.0 <= run.scenario.targets_ms[i] as f64 {
                within[i] += 1;
            }
            if life.finished_at.is_some_and(|f| f <= life.deadline) {
                before[i] += 1;
            }
        }
        if let Some(o) = life.first_offer_at {
            waits[i].0 += (o - life.submitted_at) as f64 / 60_000.0;
            waits[i].1 += 1;
        }
    }
    for (i, p) in priorities.iter_mut().enumerate() {
        let t = &mut turnarounds[i];
        t.sort_by(f64::total_cmp);
        p.p50 = quantile(t, 0.5);
        p.p90 = quantile(t, 0.9);
        p.p99 = quantile(t, 0.99);
        p.target = run.scenario.targets_ms[i] as f64 / 60_000.0;
        p.suppressed = run.suppressed[i];
        p.within_target = (p.resulted > 0).then(|| within[i] as f64 / p.resulted as f64);
        p.before_deadline = (p.submitted > 0).then(|| before[i] as f64 / p.submitted as f64);
        p.mean_wait = (waits[i].1 > 0).then(|| waits[i].0 / waits[i].1 as f64);
    }
    let labs = run
        .scenario
        .labs
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let utils: Vec<f64> = run.samples.iter().map(|s| s.utilisation(i)).collect();
            let t = &run.labs[i];
            LabSummary {
                ods: l.ods.to_string(),
                offers: t.offers,
                resulted: t.resulted,
                failed: t.failed,
                mean_utilisation: if utils.is_empty() {
                    0.0
                } else {
                    utils.iter().sum::<f64>() / utils.len() as f64
                },
                peak_utilisation: utils.iter().copied().fold(0.0, f64::max),
                hours_at_capacity: t.at_capacity_ms as f64 / 3_600_000.0,
                hours_offline: t.offline_ms as f64 / 3_600_000.0,
                peak_queue: t.peak_queue,
                peak_in_flight: t.peak_in_flight.clone(),
            }
        })
        .collect();
    Summary {
        submitted: run.lives.len() as u64,
        priorities,
        labs,
    }
}

fn minutes(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(m) if m >= 600.0 => format!("{:.1}h", m / 60.0),
        Some(m) => format!("{m:.0}m"),
    }
}

fn share(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
}

/// The plain-text summary printed to the terminal and written to `summary.txt`.
pub fn render(run: &Run, s: &Summary) -> String {
    let sc = &run.scenario;
    let mut o = String::new();
    let _ = writeln!(o, "{}", sc.name);
    let _ = writeln!(
        o,
        "{} to {} (+ drain to {}), seed {}",
        format_datetime(sc.start),
        format_datetime(sc.start.plus_millis(sc.duration_ms)),
        format_datetime(Timestamp::from_millis(run.ended_at)),
        sc.seed
    );
    let _ = writeln!(
        o,
        "{} requests submitted, {} commands applied to the routing core",
        s.submitted, run.commands
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<8} {:>8} {:>8} {:>7} {:>6} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>7} {:>8} {:>9}",
        "priority",
        "submit",
        "result",
        "expire",
        "fail",
        "declined",
        "lapsed",
        "suspend",
        "p50",
        "p90",
        "p99",
        "target",
        "in tgt",
        "by dline"
    );
    for p in REPORT_ORDER {
        let x = &s.priorities[priority_index(p)];
        let _ = writeln!(
            o,
            "{:<8} {:>8} {:>8} {:>7} {:>6} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>7} {:>8} {:>9}",
            p.as_str(),
            x.submitted,
            x.resulted,
            x.expired,
            x.failed,
            x.declined,
            x.lapsed,
            x.suppressed,
            minutes(x.p50),
            minutes(x.p90),
            minutes(x.p99),
            minutes(Some(x.target)),
            share(x.within_target),
            share(x.before_deadline)
        );
    }
    let open: u64 = s.priorities.iter().map(|p| p.in_progress).sum();
    if open > 0 {
        let _ = writeln!(
            o,
            "{open} requests were still in progress when the run stopped"
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<6} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>8} {:>10}  peak in flight / capacity",
        "lab",
        "offers",
        "result",
        "fail",
        "mean use",
        "peak use",
        "h at cap",
        "h off",
        "peak queue"
    );
    for l in &s.labs {
        let peaks: Vec<String> = l
            .peak_in_flight
            .iter()
            .map(|(t, p, c)| format!("{t} {p}/{c}"))
            .collect();
        let _ = writeln!(
            o,
            "{:<6} {:>7} {:>7} {:>6} {:>8.0}% {:>8.0}% {:>9.1} {:>8.1} {:>10}  {}",
            l.ods,
            l.offers,
            l.resulted,
            l.failed,
            l.mean_utilisation * 100.0,
            l.peak_utilisation * 100.0,
            l.hours_at_capacity,
            l.hours_offline,
            l.peak_queue,
            peaks.join(", ")
        );
    }
    if !run.timeline.is_empty() {
        let _ = writeln!(o);
        for h in &run.timeline {
            let _ = writeln!(
                o,
                "{}  {}",
                format_datetime(Timestamp::from_millis(h.at)),
                h.what
            );
        }
    }
    o
}

/// A two-column comparison of the priorities of two runs.
pub fn render_comparison(a: (&Run, &Summary), b: (&Run, &Summary)) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "A: {}", a.0.scenario.name);
    let _ = writeln!(o, "B: {}", b.0.scenario.name);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<8} {:<14} {:>10} {:>10}",
        "priority", "measure", "A", "B"
    );
    for p in REPORT_ORDER {
        let (x, y) = (
            &a.1.priorities[priority_index(p)],
            &b.1.priorities[priority_index(p)],
        );
        let rows: [(&str, String, String); 6] = [
            (
                "submitted",
                x.submitted.to_string(),
                y.submitted.to_string(),
            ),
            ("resulted", x.resulted.to_string(), y.resulted.to_string()),
            ("expired", x.expired.to_string(), y.expired.to_string()),
            ("p90", minutes(x.p90), minutes(y.p90)),
            (
                "within target",
                share(x.within_target),
                share(y.within_target),
            ),
            (
                "by deadline",
                share(x.before_deadline),
                share(y.before_deadline),
            ),
        ];
        for (name, va, vb) in rows {
            let _ = writeln!(o, "{:<8} {:<14} {:>10} {:>10}", p.as_str(), name, va, vb);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.9), Some(90.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
    }
}
