//! Routing micro-benchmark: the pure core's cost to route one request, and to route the next
//! waiting request when capacity frees, with 10, 100 and 1,000 labs and 1,000, 100,000 and
//! 1,000,000 waiting requests. `cargo bench --bench routing`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use labaid::Config;
use labaid::domain::{
    BoundedText, NewRequest, NhsNumber, OdsCode, OrderNumber, Patient, Priority, RequestId,
    TestCode, TestSet, Timestamp,
};
use labaid::routing::{Command, LabConfig, Leases, Outcome, Router};

const TRUSTS: [&str; 2] = ["RJ1", "RJZ"];
const TESTS: [&str; 6] = ["FBC", "UE", "K", "CRP", "TROP", "INR"];
const NOW: Timestamp = Timestamp(1_800_000_000_000);

fn ods(s: &str) -> OdsCode {
    OdsCode::parse(s).expect("valid ODS code")
}

fn code(s: &str) -> TestCode {
    TestCode::parse(s).expect("valid test code")
}

/// `labs` labs that perform every test in `TESTS` for both trusts, each with `capacity` per test.
fn router(labs: usize, capacity: u32) -> Router {
    let catalogue = Config::demo().expect("demo config").catalogue;
    let labs = (0..labs)
        .map(|i| LabConfig {
            ods: ods(&format!("L{i:04}")),
            name: format!("lab {i}"),
            capacity: TESTS.iter().map(|t| (code(t), capacity)).collect(),
            transport_minutes: TRUSTS
                .iter()
                .map(|t| (ods(t), 20 + (i % 40) as u32))
                .collect(),
            agreements: TRUSTS.iter().map(|t| ods(t)).collect::<BTreeSet<_>>(),
        })
        .collect();
    let trusts: BTreeMap<OdsCode, String> =
        TRUSTS.iter().map(|t| (ods(t), t.to_string())).collect();
    Router::new(
        catalogue,
        trusts,
        labs,
        Leases::default(),
        30 * 24 * 60 * 60_000,
    )
}

/// Submission number `n`: a mix of priorities and test sets.
fn submit(n: u64, tests: &[&str]) -> Command {
    Command::Submit {
        trust: ods(TRUSTS[(n % 2) as usize]),
        id: RequestId::new_random(),
        request: NewRequest {
            order_number: OrderNumber::parse(&format!("O{n}")).expect("order number"),
            patient: Patient {
                nhs_number: NhsNumber::parse("9434765919").expect("NHS number"),
                family_name: BoundedText::default(),
                given_name: BoundedText::default(),
                birth_date: String::new(),
            },
            tests: TestSet::from_codes(tests.iter().map(|t| code(t)).collect()),
            priority: Priority::ALL[(n % 4) as usize],
            collected_at: NOW.plus_minutes(-20 - (n % 60) as i64),
            clinical_note: BoundedText::default(),
        },
    }
}

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
/// keeps every request it routed, as a broker would while they are live.
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

criterion_group!(benches, route_one, free_capacity);
criterion_main!(benches);
