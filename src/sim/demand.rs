//! Synthetic demand: each trust's requests as a Poisson process whose rate follows the hour of the
//! day and the weekday, with a test mix and a collection-to-submission delay, all from one seed.

use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp};
use rand_pcg::Pcg64;

use crate::domain::{Priority, Timestamp};

use super::calendar::{hour_of_day, weekday};
use super::scenario::{Demand, Scenario};

const HOUR_MS: i64 = 3_600_000;

/// One request a trust will submit, if its provider is down and its tests are not suspended.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// When the trust submits it.
    pub at: Timestamp,
    /// Index of the demand (trust) in the scenario.
    pub demand: u16,
    /// Clinical priority.
    pub priority: Priority,
    /// Index into that demand's test mix.
    pub mix: u16,
    /// Milliseconds from collection to submission.
    pub collection_ms: i64,
}

/// A random stream of its own for each purpose, so that changing one part of a scenario (a lab's
/// behaviour, say) leaves the demand the same.
pub fn stream(seed: u64, purpose: u64) -> Pcg64 {
    Pcg64::seed_from_u64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Every arrival of the scenario, in time order (ties in demand, then draw order).
pub fn generate(scenario: &Scenario) -> Vec<Arrival> {
    let mut all = Vec::new();
    for (i, d) in scenario.demand.iter().enumerate() {
        let mut rng = stream(scenario.seed, 1000 + i as u64);
        generate_one(scenario, i as u16, d, &mut rng, &mut all);
    }
    // Stable: equal instants keep demand order, then draw order.
    all.sort_by_key(|a| a.at);
    all
}

fn generate_one(
    scenario: &Scenario,
    index: u16,
    d: &Demand,
    rng: &mut Pcg64,
    out: &mut Vec<Arrival>,
) {
    let end = scenario.start.plus_millis(scenario.duration_ms);
    let longest_stability = d
        .mix
        .iter()
        .map(|(t, _)| t.stability_minutes(&scenario.catalogue))
        .collect::<Vec<_>>();
    for p in Priority::ALL {
        let per_day = d.per_day[super::scenario::priority_index(p)];
        if per_day <= 0.0 {
            continue;
        }
        // Piecewise constant rate, hour by hour: a Poisson process restarted at each hour boundary
        // is still Poisson (memoryless), so each hour draws its own gaps.
        let mut hour_start = scenario.start;
        while hour_start < end {
            let hour_end =
                Timestamp::from_millis((hour_start.millis().div_euclid(HOUR_MS) + 1) * HOUR_MS)
                    .min(end);
            let weekend = weekday(hour_start) >= 5;
            let rate_per_hour = per_day / 24.0
                * d.hourly[hour_of_day(hour_start) as usize]
                * if weekend { d.weekend_factor } else { 1.0 };
            if rate_per_hour > 0.0 {
                let gap = Exp::new(rate_per_hour / HOUR_MS as f64).expect("a positive rate");
                let mut t = hour_start.millis() as f64;
                loop {
                    t += gap.sample(rng);
                    if t >= hour_end.millis() as f64 {
                        break;
                    }
                    let mix = pick(rng, &d.mix);
                    // A sample older than its stability would be refused at submission; the
                    // delay is held below half of it (the tail of the exponential, rare).
                    let cap = i64::from(longest_stability[mix]) * 60_000 / 2;
                    let delay = if d.collection_minutes > 0.0 {
                        let e =
                            Exp::new(1.0 / (d.collection_minutes * 60_000.0)).expect("positive");
                        (e.sample(rng) as i64).min(cap)
                    } else {
                        0
                    };
                    out.push(Arrival {
                        at: Timestamp::from_millis(t as i64),
                        demand: index,
                        priority: p,
                        mix: mix as u16,
                        collection_ms: delay,
                    });
                }
            }
            hour_start = hour_end;
        }
    }
}

fn pick<T>(rng: &mut Pcg64, weighted: &[(T, f64)]) -> usize {
    let mut u: f64 = rng.random();
    for (i, (_, w)) in weighted.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weighted.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::parse;
    use std::path::Path;

    fn scenario(per_day: f64, curve: &str) -> Scenario {
        let text = format!(
            r#"
start = "2024-06-03T00:00"
duration_hours = 168
seed = 7
[[demand]]
trust = "RJ1"
per_day = {{ urgent = {per_day} }}
curve = "{curve}"
weekend_factor = 0.5
[[demand.mix]]
tests = ["FBC"]
weight = 1
"#
        );
        parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn arrivals_follow_the_daily_rate_and_the_weekend_factor() {
        let s = scenario(1000.0, "flat");
        let a = generate(&s);
        // Five weekdays at 1000 and two weekend days at 500: 6000 expected, sd about 77.
        assert!((a.len() as f64 - 6000.0).abs() < 300.0, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|x| x.collection_ms >= 0));
    }

    #[test]
    fn a_morning_curve_puts_most_requests_in_the_morning() {
        let s = scenario(2000.0, "gp-morning");
        let a = generate(&s);
        let morning = a
            .iter()
            .filter(|x| (8..12).contains(&hour_of_day(x.at)))
            .count();
        assert!(morning * 2 > a.len(), "{morning} of {}", a.len());
    }

    #[test]
    fn the_same_seed_gives_the_same_arrivals() {
        let s = scenario(500.0, "hospital");
        assert_eq!(generate(&s), generate(&s));
    }
}
