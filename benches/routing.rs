//! Routing micro-benchmark: the pure core's cost to route one request (into a core whose live
//! requests pile up, all at one instant; and into a core holding 1,000 to 1,000,000 live requests
//! with the clock moving), and to route the next waiting request when capacity frees, with 10,
//! 100 and 1,000 labs and 1,000, 100,000 and 1,000,000 waiting requests.
//! `cargo bench --bench routing`.

mod fixture;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fixture::{NOW, TESTS, arrival, code, ods, router, submit, submit_at};
use labaid::routing::{Command, DefaultPolicy, Outcome, Router};

fn apply(router: &mut Router, command: &Command) {
    let mut out = Outcome::default();
    apply_into(router, command, &mut out);
}

/// Exactly one `Router::apply`: the caller makes and drops the outcome, outside the timed part.
fn apply_into(router: &mut Router, command: &Command, out: &mut Outcome) {
    router.apply(command, NOW, out).expect("command applies");
}

/// Routing one request with capacity free. Only `apply` is timed: the command and the outcome are
/// made before and dropped after (iter_batched drops what the routine returns untimed). The router
/// keeps every request it routed, so the run ends with hundreds of thousands live and its timings
/// include the tables' growth; and every request is routed at the same instant, the worst case
/// for the timer tree, whose entries then differ only by request id, so that each insert walks
/// to a random leaf.
fn route_one(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_one");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for labs in [10usize, 100, 1000] {
        let mut r = router(labs, u32::MAX / 2);
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(labs), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let cmd = submit(n, &TESTS[(n % 3) as usize..(n % 3) as usize + 2]);
                    (cmd, Outcome::default())
                },
                |(cmd, mut out)| {
                    apply_into(&mut r, &cmd, &mut out);
                    (cmd, out)
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// Routing one request into a core that already holds 1,000, 100,000 or 1,000,000 live requests,
/// with the clock moving as submissions arrive at 20,000 a second. Each sample starts from a
/// copy of the same filled core (made, warmed up and dropped outside the timed part), so that
/// every sample routes into the same state however many iterations it runs.
fn route_one_live(c: &mut Criterion) {
    const WARM: u64 = 2_000;
    let mut group = c.benchmark_group("route_one_live");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    // A million live only at 100 labs: every sample copies the whole core, 0.35 s at that size
    // (1.5 s the first time), longer than the sample itself.
    let cases = [
        (10usize, 1_000u64),
        (10, 100_000),
        (100, 1_000),
        (100, 100_000),
        (100, 1_000_000),
        (1000, 1_000),
        (1000, 100_000),
    ];
    for (labs, live) in cases {
        let mut filled = router(labs, u32::MAX / 2);
        let next = |n: u64| {
            let k = (n % 3) as usize;
            let now = arrival(n);
            (submit_at(n, &TESTS[k..k + 2], now), now)
        };
        for n in 0..live {
            let (cmd, now) = next(n);
            filled
                .apply(&cmd, now, &mut Outcome::default())
                .expect("command applies");
        }
        group.bench_function(BenchmarkId::new(format!("{labs}_labs"), live), |b| {
            b.iter_custom(|iters| {
                let mut r = Router::from_state(filled.state().clone(), Arc::new(DefaultPolicy));
                // Warm the copy up first: its first few hundred routes pay for caches that the
                // copy emptied, which a short sample would otherwise count as routing.
                for n in live..live + WARM {
                    let (cmd, now) = next(n);
                    r.apply(&cmd, now, &mut Outcome::default())
                        .expect("command applies");
                }
                let from = live + WARM;
                let work: Vec<_> = (from..from + iters).map(next).collect();
                let mut outs: Vec<Outcome> = (0..iters).map(|_| Outcome::default()).collect();
                let started = Instant::now();
                for ((cmd, now), out) in work.iter().zip(outs.iter_mut()) {
                    r.apply(cmd, *now, out).expect("command applies");
                }
                started.elapsed()
            });
        });
    }
    group.finish();
}

/// Freeing capacity (a capacity rise of one) routes the next of `waiting` queued requests; the
/// queue is topped up outside the timed part so that it stays at `waiting`, and only the one
/// `apply` of the rise is timed (its outcome is dropped after the clock stops).
fn free_capacity(c: &mut Criterion) {
    let mut group = c.benchmark_group("free_capacity_routes_next");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for labs in [10usize, 100, 1000] {
        for waiting in [1_000u64, 100_000, 1_000_000] {
            // Filling costs one failed route per request, over every lab that performs the test
            // (each is full): 1,000 labs with a million waiting take ~30 s to build.
            let mut r = router(labs, 0);
            for n in 0..waiting {
                apply(&mut r, &submit(n, &["FBC"]));
            }
            let lab = ods("L0000");
            let mut capacity = 0u32;
            let mut n = waiting;
            group.bench_function(BenchmarkId::new(format!("{labs}_labs"), waiting), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        capacity += 1;
                        let raise = Command::SetCapacity {
                            lab: lab.clone(),
                            test: code("FBC"),
                            capacity,
                        };
                        let mut out = Outcome::default();
                        let started = Instant::now();
                        apply_into(&mut r, &raise, &mut out);
                        spent += started.elapsed();
                        drop(out);
                        n += 1;
                        apply(&mut r, &submit(n, &["FBC"]));
                    }
                    spent
                });
            });
            assert_eq!(r.queue().len() as u64, waiting, "the queue stays full");
        }
    }
    group.finish();
}

criterion_group!(benches, route_one, route_one_live, free_capacity);
criterion_main!(benches);
