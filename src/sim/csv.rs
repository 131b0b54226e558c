//! CSV files of a run: every request's life, the time series, and the per-lab figures. Written
//! by hand (every field is a number, a code or a fixed word, so none needs quoting).

use std::fmt::Write as _;

use crate::domain::Timestamp;

use super::calendar::format_datetime;
use super::run::Run;
use super::scenario::REPORT_ORDER;
use super::summary::Summary;

fn minutes_after(at: Option<i64>, since: i64) -> String {
    at.map_or(String::new(), |t| {
        format!("{:.2}", (t - since) as f64 / 60_000.0)
    })
}

/// `requests.csv`: one row per submitted request, times in minutes after collection.
pub fn requests(run: &Run) -> String {
    let mut o = String::from(
        "request,trust,priority,tests,collected_at,submitted_min,first_offer_min,accepted_min,\
         received_min,finished_min,state,lab,offers,declines,lease_expiries,reassigned,\
         deadline_min,turnaround_min,within_target,before_deadline\n",
    );
    let sc = &run.scenario;
    for (i, life) in run.lives.iter().enumerate() {
        let d = &sc.demand[life.demand as usize];
        let tests: Vec<&str> = d.mix[life.mix as usize]
            .0
            .codes()
            .iter()
            .map(|t| t.as_str())
            .collect();
        let lab = life.lab.map_or("", |l| sc.labs[l as usize].ods.as_str());
        let c = life.collected_at;
        let turnaround = life.turnaround_minutes();
        let pi = super::scenario::priority_index(life.priority);
        let within = turnaround.map_or(String::new(), |t| {
            u8::from(t * 60_000.0 <= sc.targets_ms[pi] as f64).to_string()
        });
        let before = turnaround.map_or(String::new(), |_| {
            u8::from(life.finished_at.is_some_and(|f| f <= life.deadline)).to_string()
        });
        let _ = writeln!(
            o,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            i + 1,
            d.trust,
            life.priority.as_str(),
            tests.join("+"),
            format_datetime(Timestamp::from_millis(c)),
            minutes_after(Some(life.submitted_at), c),
            minutes_after(life.first_offer_at, c),
            minutes_after(life.accepted_at, c),
            minutes_after(life.received_at, c),
            minutes_after(life.finished_at, c),
            life.state.as_str(),
            lab,
            life.offers,
            life.declines,
            life.lease_expiries,
            life.reassigned,
            minutes_after(Some(life.deadline), c),
            turnaround.map_or(String::new(), |t| format!("{t:.2}")),
            within,
            before,
        );
    }
    o
}

/// `timeseries.csv`: the sampled system, one row per sample.
pub fn timeseries(run: &Run) -> String {
    let sc = &run.scenario;
    let mut o = String::from("time,hours");
    for p in REPORT_ORDER {
        let _ = write!(o, ",waiting_{}", p.as_str());
    }
    o.push_str(",expired_total,resulted_total");
    for l in &sc.labs {
        let ods = l.ods.as_str();
        let _ = write!(
            o,
            ",{ods}_in_flight,{ods}_capacity,{ods}_utilisation,{ods}_queue,{ods}_status"
        );
    }
    o.push('\n');
    for s in &run.samples {
        let _ = write!(
            o,
            "{},{:.2}",
            format_datetime(Timestamp::from_millis(s.at)),
            (s.at - sc.start.millis()) as f64 / 3_600_000.0
        );
        for p in REPORT_ORDER {
            let _ = write!(o, ",{}", s.waiting[super::scenario::priority_index(p)]);
        }
        let _ = write!(o, ",{},{}", s.expired, s.resulted);
        for i in 0..sc.labs.len() {
            let _ = write!(
                o,
                ",{},{},{:.4},{},{}",
                s.in_flight[i],
                s.capacity[i],
                s.utilisation(i),
                s.queue[i],
                s.status[i].as_str()
            );
        }
        o.push('\n');
    }
    o
}

/// `labs.csv`: the per-lab summary, one row per lab and test.
pub fn labs(summary: &Summary) -> String {
    let mut o = String::from(
        "lab,offers,resulted,failed,mean_utilisation,peak_utilisation,hours_at_capacity,\
         hours_offline,peak_queue,test,peak_in_flight,capacity\n",
    );
    for l in &summary.labs {
        for (test, peak, cap) in &l.peak_in_flight {
            let _ = writeln!(
                o,
                "{},{},{},{},{:.4},{:.4},{:.2},{:.2},{},{},{},{}",
                l.ods,
                l.offers,
                l.resulted,
                l.failed,
                l.mean_utilisation,
                l.peak_utilisation,
                l.hours_at_capacity,
                l.hours_offline,
                l.peak_queue,
                test,
                peak,
                cap
            );
        }
    }
    o
}

/// `priorities.csv`: the per-priority summary.
pub fn priorities(summary: &Summary) -> String {
    let mut o = String::from(
        "priority,submitted,resulted,expired,failed,cancelled,in_progress,declined,lapsed,\
         suspended,p50_min,p90_min,p99_min,target_min,within_target,before_deadline,mean_wait_min\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.2}"));
    for p in REPORT_ORDER {
        let x = &summary.priorities[super::scenario::priority_index(p)];
        let _ = writeln!(
            o,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.0},{},{},{}",
            p.as_str(),
            x.submitted,
            x.resulted,
            x.expired,
            x.failed,
            x.cancelled,
            x.in_progress,
            x.declined,
            x.lapsed,
            x.suppressed,
            f(x.p50),
            f(x.p90),
            f(x.p99),
            x.target,
            x.within_target.map_or(String::new(), |v| format!("{v:.4}")),
            x.before_deadline
                .map_or(String::new(), |v| format!("{v:.4}")),
            f(x.mean_wait),
        );
    }
    o
}
