//! Routing core cost in instructions, for before/after comparisons on a noisy machine: the same
//! set-up as `benches/routing.rs`, then a fixed number of timed-part operations, each one
//! `Router::apply` inside `measured_apply`, which callgrind counts alone:
//!
//! ```sh
//! cargo build --release --example routing_counts
//! valgrind --tool=callgrind --toggle-collect='*measured_apply*' --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/routing_counts route_one 100 0 200
//! callgrind_annotate /tmp/cg.out | head   # total Ir / 200 = instructions per routed request
//! ```
//!
//! Arguments: `route_one|route_one_clock_moving|free_capacity LABS WAITING ITERATIONS` (for the
//! route_one scenarios, WAITING is the number of requests routed before the count; the second
//! moves the clock on as submissions arrive at 20,000 a second, as the criterion bench's
//! `route_one_live` does). Without valgrind it prints the
//! set-up time, the mean wall time per operation and, for route_one, the mean on-CPU time (wall
//! time less time spent waiting for a core on a shared machine).

#[path = "../benches/fixture/mod.rs"]
mod fixture;

use std::time::{Duration, Instant};

use fixture::{NOW, TESTS, arrival, code, ods, router, submit, submit_at};
use labaid::domain::Timestamp;
use labaid::routing::{Command, Outcome, Router};

fn apply(router: &mut Router, command: &Command, now: Timestamp) {
    let mut out = Outcome::default();
    router
        .apply(command, now, &mut out)
        .expect("command applies");
}

/// The only code callgrind counts (`--toggle-collect='*measured_apply*'`).
#[inline(never)]
fn measured_apply(router: &mut Router, command: &Command, now: Timestamp, out: &mut Outcome) {
    router.apply(command, now, out).expect("command applies");
}

/// Nanoseconds this thread has spent on a CPU (Linux `schedstat`), to tell the cost of the code
/// from time spent waiting for a core on a shared machine.
fn on_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map_or("route_one", String::as_str);
    let num = |i: usize, default: u64| {
        args.get(i)
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (labs, waiting, iters) = (num(1, 100) as usize, num(2, 0), num(3, 200));
    let started = Instant::now();
    let mut spent = Duration::ZERO;
    match scenario {
        "route_one" | "route_one_clock_moving" => {
            let moving = scenario == "route_one_clock_moving";
            let mut r = router(labs, u32::MAX / 2);
            // Live requests before the count (WAITING, default 1,000): criterion's run leaves the
            // router holding every request it routed, hundreds of thousands by its end.
            let mut n = 0u64;
            let next = |n: &mut u64| {
                *n += 1;
                let k = (*n % 3) as usize;
                let now = if moving { arrival(*n) } else { NOW };
                (submit_at(*n, &TESTS[k..k + 2], now), now)
            };
            for _ in 0..waiting.max(1000) {
                let (cmd, now) = next(&mut n);
                apply(&mut r, &cmd, now);
            }
            let setup = started.elapsed();
            // Commands made and outcomes dropped outside the loop, so that the thread's on-CPU
            // time over the loop is the applies' alone.
            let cmds: Vec<(Command, Timestamp)> = (0..iters).map(|_| next(&mut n)).collect();
            let mut outs: Vec<Outcome> = (0..iters).map(|_| Outcome::default()).collect();
            let cpu = on_cpu_ns();
            let t = Instant::now();
            for ((cmd, now), out) in cmds.iter().zip(outs.iter_mut()) {
                measured_apply(&mut r, cmd, *now, out);
            }
            spent = t.elapsed();
            if let (Some(before), Some(after)) = (cpu, on_cpu_ns()) {
                println!(
                    "on-CPU {:.2} µs per operation (wall time less waits for a core)",
                    (after - before) as f64 / iters.max(1) as f64 / 1000.0
                );
            }
            println!("set-up {setup:?}");
        }
        "free_capacity" => {
            let mut r = router(labs, 0);
            for n in 0..waiting {
                apply(&mut r, &submit(n, &["FBC"]), NOW);
            }
            let setup = started.elapsed();
            let lab = ods("L0000");
            let mut n = waiting;
            for capacity in 1..=iters as u32 {
                let raise = Command::SetCapacity {
                    lab: lab.clone(),
                    test: code("FBC"),
                    capacity,
                };
                let mut out = Outcome::default();
                let t = Instant::now();
                measured_apply(&mut r, &raise, NOW, &mut out);
                spent += t.elapsed();
                drop(out);
                n += 1;
                apply(&mut r, &submit(n, &["FBC"]), NOW);
            }
            assert_eq!(r.queue().len() as u64, waiting, "the queue stays full");
            println!("set-up {setup:?}");
        }
        other => {
            panic!("unknown scenario {other}: route_one, route_one_clock_moving or free_capacity")
        }
    }
    println!(
        "{scenario} labs={labs} waiting={waiting}: {:?} per operation over {iters}",
        spent / iters.max(1) as u32
    );
}
