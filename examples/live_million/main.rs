//! Memory and restart time of the real broker holding 1,000,000 live requests.
//!
//! ```sh
//! cargo build --release --bin labaid-broker --example live_million
//! ./target/release/examples/live_million [COUNT [RUNS]] [--store postgres://…]   # 1000000, 3
//! ```
//!
//! It writes a config (10 trusts, 6 labs with modest capacity, the bundled catalogue, 24-hour
//! leases so that no offer lapses while it measures), fills a data directory with COUNT realistic
//! submissions through the core and the file journal in batches of 512, as the sequencer would
//! (mixed priorities, 1 to 4 tests, patient names, dates of birth and clinical notes; the labs'
//! room is soon full, so most requests wait and a few hundred are offered), then starts the real
//! `labaid-broker` (found next to this example's directory) on it and reports, RUNS times each:
//!
//! - restart: process start to `/readyz` answering 200, from the journal alone (the broker is
//!   killed with SIGKILL, so no snapshot is written), then from a snapshot (written by a clean
//!   stop with SIGTERM after the last journal run);
//! - VmRSS once ready, minus the VmRSS of the same broker ready on an empty data directory,
//!   divided by COUNT;
//!
//! and, after the fill, three times each: how long copying the state for a snapshot takes (the
//! pause to deciding that the broker reports as `labaid_store_snapshot_copy_seconds`), how long
//! the snapshot writer then takes to rebuild the indexes that copy leaves out (off the lock), and
//! how long a copy of the whole state takes, as earlier builds made it.
//!
//! `LIVE_MILLION_WORST=1` then leaves the data directory as the snapshot policy's worst case
//! for a restart after a crash (see `worst_case`): a full snapshot of the COUNT requests, then
//! incremental snapshots up to the point where the next would be full, then the journal written
//! meanwhile; the restarts "from the journal" then measure that.
//!
//! `--store postgres://USER@HOST:PORT/DB` measures the PostgreSQL store too, in the same run and
//! the same way, after the file store: a database of its own is made on that server (dropped
//! afterwards), filled through the PostgreSQL journal (its worst case: a snapshot row of the
//! COUNT requests, then incremental rows up to the point where the next would be full, then the
//! journal rows written meanwhile), and the broker started with `--store`. After each SIGKILL
//! the bench waits for the killed broker's lease to lapse, so that a restart measures recovery,
//! not a takeover. After the fill it first lets the server vacuum, analyse and checkpoint the rows
//! just written, which in service happens as they arrive (`LIVE_MILLION_UNSETTLED=1` skips that,
//! so the restarts share the cores with autovacuum and the checkpointer).
//!
//! `LABAID_BENCH_DIR` picks the disk (default: the current directory); a tmpfs would hide I/O.
//! `LIVE_MILLION_KEEP=1` keeps the work directory (config, data, broker log) for profiling;
//! `LIVE_MILLION_FILL_ONLY=1` keeps it right after the fill (journal only) and stops there.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The broker's allocator, so that copying the state costs here what it costs the broker.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use labaid::config::Config;
use labaid::domain::{NewRequest, OdsCode, RequestId, Timestamp};
use labaid::routing::{Command, Outcome};
use labaid::store::{self, Entry, Journal, StoreOptions};

/// Trusts submitting.
const TRUSTS: usize = 10;
/// Labs, each performing every test with `CAPACITY` per test.
const LABS: usize = 6;
const CAPACITY: u32 = 40;
/// The bundled catalogue's tests, most requested first.
const TESTS: [&str; 11] = [
    "FBC", "UE", "CRP", "LFT", "K", "INR", "TROP", "GLU", "APTT", "GS", "XM",
];
/// Commands per journal append: the sequencer's batch size.
const BATCH: usize = 512;

mod postgres;
mod workload;

use workload::{Rng, config_text, submission, trust_code};

/// Where a measurement keeps the requests.
enum Store {
    /// The file store, in the work directory.
    File,
    /// A database of its own on the PostgreSQL server given with `--store`.
    Postgres(postgres::PgStore),
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::File => "file store",
            Store::Postgres(_) => "PostgreSQL",
        }
    }

    fn url(&self) -> Option<&str> {
        match self {
            Store::File => None,
            Store::Postgres(pg) => Some(pg.url()),
        }
    }
}

/// What the run measures, the same for each store.
struct Plan<'a> {
    count: usize,
    runs: usize,
    worst: bool,
    broker: &'a Path,
    config_path: &'a Path,
    config: &'a Config,
    ops: SocketAddr,
    work: &'a Path,
}

/// One store's figures: requests held, the empty broker's VmRSS, and per kind of restart the
/// median time to ready and VmRSS.
struct Summary {
    store: &'static str,
    held: usize,
    base_rss: u64,
    restarts: Vec<(&'static str, f64, u64)>,
}

fn main() -> anyhow::Result<()> {
    // As the broker does, so that filling and copying the state cost here what they cost there.
    labaid::memory::disable_transparent_huge_pages()?;
    let mut numbers = Vec::new();
    let mut store_url = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--store" {
            store_url = Some(args.next().context("--store needs a postgres:// URL")?);
        } else if let Some(url) = arg.strip_prefix("--store=") {
            store_url = Some(url.to_string());
        } else {
            numbers.push(
                arg.parse::<usize>()
                    .with_context(|| format!("{arg:?} is not COUNT, RUNS or --store URL"))?,
            );
        }
    }
    let count = numbers.first().copied().unwrap_or(1_000_000);
    let runs = numbers.get(1).copied().unwrap_or(3).max(1);
    let broker = broker_path()?;
    let base =
        std::env::var_os("LABAID_BENCH_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let work = tempfile::Builder::new()
        .prefix("live-million-")
        .tempdir_in(&base)?;
    let (grpc, ops) = (free_port()?, free_port()?);
    let config_path = work.path().join("labaid.toml");
    std::fs::write(&config_path, config_text(grpc, ops))?;
    let config = Config::load(&config_path)?;

    println!(
        "machine: {}, {} cores",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let plan = Plan {
        count,
        runs,
        worst: std::env::var_os("LIVE_MILLION_WORST").is_some(),
        broker: &broker,
        config_path: &config_path,
        config: &config,
        ops,
        work: work.path(),
    };
    let mut summaries = vec![measure(&plan, Store::File)?];
    if let Some(url) = store_url {
        summaries.push(measure(
            &plan,
            Store::Postgres(postgres::PgStore::create(&url)?),
        )?);
    }
    if std::env::var_os("LIVE_MILLION_KEEP").is_some()
        || std::env::var_os("LIVE_MILLION_FILL_ONLY").is_some()
    {
        println!("kept {}", work.keep().display());
    }
    for s in summaries {
        println!(
            "\n{}: {} live requests, median of {runs} runs:",
            s.store, s.held
        );
        println!(
            "  broker VmRSS on an empty store: {:.1} MiB",
            mib(s.base_rss)
        );
        for (what, ready, rss) in s.restarts {
            let per = rss.saturating_sub(s.base_rss) as f64 / s.held as f64;
            println!(
                "  from the {what}: ready in {ready:.2} s ({:.2} s per 1,000,000, {:.2} µs per \
                 live request); VmRSS {:.1} MiB, {per:.0} bytes ({:.2} KiB) per live request",
                ready * 1e6 / s.held as f64,
                ready * 1e6 / s.held as f64,
                mib(rss),
                per / 1024.0
            );
        }
    }
    Ok(())
}

/// Measures one store: the broker on an empty store, the fill, then the restarts.
fn measure(plan: &Plan<'_>, store: Store) -> anyhow::Result<Summary> {
    let dir = plan.work.join(match store {
        Store::File => "file",
        Store::Postgres(_) => "postgres",
    });
    std::fs::create_dir_all(&dir)?;
    println!("\n{}:", store.name());
    // On PostgreSQL this broker also makes the schema the fill then writes into.
    let empty = dir.join("empty");
    let mut base_rss = Vec::new();
    for run in 0..plan.runs {
        let mut m = start(plan, store.url(), &empty)?;
        m.stop(Stop::Term)?;
        println!(
            "empty store, run {}: ready in {:.3} s, VmRSS {:.1} MiB",
            run + 1,
            m.ready.as_secs_f64(),
            mib(m.rss)
        );
        base_rss.push(m.rss);
    }
    let base_rss = median_u64(&mut base_rss);

    let data = dir.join("data");
    // The requests the store holds (more than COUNT in the worst case).
    let held = match &store {
        Store::File => fill_file(&data, plan.config, plan.count, plan.worst)?,
        Store::Postgres(pg) => fill_postgres(pg, plan.config, &data, plan.count, plan.worst)?,
    };
    let keep = std::env::var_os("LIVE_MILLION_KEEP").is_some();
    if std::env::var_os("LIVE_MILLION_FILL_ONLY").is_some() {
        if let Store::Postgres(pg) = store {
            pg.drop_it(true);
        }
        return Ok(Summary {
            store: "filled only",
            held,
            base_rss,
            restarts: Vec::new(),
        });
    }

    let mut restarts = Vec::new();
    let after_crash = if plan.worst {
        "worst case after a crash"
    } else {
        "journal"
    };
    for (what, stop) in [(after_crash, Stop::Kill), ("snapshot", Stop::Term)] {
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for run in 0..plan.runs {
            let mut m = start(plan, store.url(), &data)?;
            // The last journal run stops cleanly, which writes the snapshot the next runs read.
            let stop = if what == after_crash && run + 1 == plan.runs {
                Stop::Term
            } else {
                stop
            };
            let recovered = m.recovered_line();
            let stopped = m.stop(stop)?;
            if let (Stop::Kill, Store::Postgres(pg)) = (stop, &store) {
                // A killed leader's lease lasts its lifetime: the next broker would wait it out
                // as a standby, which is a takeover's cost, not recovery's.
                pg.wait_for_lease()?;
            }
            println!(
                "restart from the {what}, run {}: ready in {:.2} s, VmRSS {:.1} MiB (peak {:.1}), \
                 stopped ({stop:?}) in {:.2} s\n    {recovered}",
                run + 1,
                m.ready.as_secs_f64(),
                mib(m.rss),
                mib(m.peak),
                stopped.as_secs_f64(),
            );
            times.push(m.ready.as_secs_f64());
            rss.push(m.rss);
        }
        restarts.push((what, median_f64(&mut times), median_u64(&mut rss)));
    }
    let name = store.name();
    if let Store::Postgres(pg) = store {
        pg.drop_it(keep);
    }
    Ok(Summary {
        store: name,
        held,
        base_rss,
        restarts,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn median_f64(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    v[v.len() / 2]
}

fn broker_path() -> anyhow::Result<PathBuf> {
    // Examples are built into target/<profile>/examples/, binaries into target/<profile>/.
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("labaid-broker"))
        .context("cannot find the build directory")?;
    if !path.exists() {
        bail!(
            "{} is missing: cargo build --release --bin labaid-broker",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// What the fill needs of a store beside its journal: whether a snapshot is being written, and
/// the bytes it holds as (full snapshots, incremental snapshots, journal).
struct Medium<'a, J> {
    journal: J,
    writing: fn(&J) -> bool,
    bytes: Box<dyn Fn() -> anyhow::Result<(u64, u64, u64)> + 'a>,
}

/// Fills the file store in `dir` with `count` submissions (see [`fill`]), then times the copies
/// of the state a snapshot makes.
fn fill_file(dir: &Path, config: &Config, count: usize, worst: bool) -> anyhow::Result<usize> {
    let recovered = store::open(
        dir,
        config.directory(),
        config.policy.clone(),
        StoreOptions::default(),
    )?;
    let size_of = move |prefix: &str| -> anyhow::Result<u64> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum())
    };
    let mut medium = Medium {
        journal: recovered.journal,
        writing: store::FileJournal::writing_snapshot,
        bytes: Box::new(move || {
            Ok((
                size_of("snapshot-")?,
                size_of("delta-")?,
                size_of("journal-")?,
            ))
        }),
    };
    let router = fill(recovered.router, &mut medium, count, worst)?;
    if worst {
        // A crash: the journal is left as it is, without the snapshot of a clean stop.
        drop(medium.journal);
    } else {
        medium.journal.close()?;
    }
    copy_times(&router);
    Ok(router.request_count())
}

/// Fills the PostgreSQL store `pg` with `count` submissions (see [`fill`]), as a broker whose
/// data directory is `data` would.
fn fill_postgres(
    pg: &postgres::PgStore,
    config: &Config,
    data: &Path,
    count: usize,
    worst: bool,
) -> anyhow::Result<usize> {
    let recovered = pg.open(config, data)?;
    let mut medium = Medium {
        journal: recovered.journal,
        writing: labaid::store::postgres::PgJournal::writing_snapshot,
        bytes: Box::new(|| pg.bytes()),
    };
    let router = fill(recovered.router, &mut medium, count, worst)?;
    // No snapshot is pending (the worst case never hands over the one due), so closing only
    // releases the lease: the rows are as a crash would leave them.
    medium.journal.close()?;
    if std::env::var_os("LIVE_MILLION_UNSETTLED").is_none() {
        let took = pg.settle()?;
        println!(
            "database settled (VACUUM ANALYZE, CHECKPOINT) in {:.1} s",
            took.as_secs_f64()
        );
    }
    Ok(router.request_count())
}

/// Fills a store with `count` submissions through the core and the journal, in sequencer
/// batches. With `worst`, then leaves it as the snapshot policy's worst case for a restart (see
/// `worst_case`).
fn fill<J: Journal>(
    mut router: labaid::routing::Router,
    medium: &mut Medium<'_, J>,
    count: usize,
    worst: bool,
) -> anyhow::Result<labaid::routing::Router> {
    let trusts: Vec<OdsCode> = (0..TRUSTS)
        .map(|i| OdsCode::parse(&trust_code(i)).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let now = Timestamp::now();
    let started = Instant::now();
    let mut entries = Vec::with_capacity(BATCH);
    let mut events = Vec::new();
    let mut i = 0;
    while i < count {
        entries.clear();
        let mut outcome = Outcome::default();
        for _ in 0..BATCH.min(count - i) {
            let command = submit_command(&mut rng, &router, &trusts, i, now)?;
            outcome.changed = false;
            router.apply(&command, now, &mut outcome)?;
            entries.push(Entry { time: now, command });
            i += 1;
        }
        medium.journal.append(&entries)?;
        if worst {
            events.append(&mut outcome.events);
        }
    }
    if worst {
        worst_case(medium, &mut router, events, &trusts, &mut rng, now)?;
    }
    let (snapshots, deltas, journal) = (medium.bytes)()?;
    let next_timer = router
        .next_timer()
        .map_or(0.0, |t| t.millis_since(now) as f64 / 3_600_000.0);
    println!(
        "filled {} live requests ({} waiting, {} offered) in {:.1} s; store {:.1} MiB; \
         first timer due in {next_timer:.1} h",
        router.request_count(),
        router.queue().len(),
        router.request_count() - router.queue().len(),
        started.elapsed().as_secs_f64(),
        mib(snapshots + deltas + journal)
    );
    Ok(router)
}

/// The copy the broker's syncer makes of this state, under the decision lock, whenever a
/// snapshot is due (its `labaid_store_snapshot_copy_seconds`), with the broker's allocator; then
/// the snapshot writer's rebuild of the indexes the copy leaves out, off the lock; and, for
/// comparison in the same run, a copy of the whole state as earlier builds made it.
fn copy_times(router: &labaid::routing::Router) {
    let secs = |d: std::time::Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let (mut lean, mut rebuilt, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let started = Instant::now();
        let copy = router.state().lean_copy();
        lean.push(secs(started.elapsed()));
        let started = Instant::now();
        let state = copy.into_state();
        rebuilt.push(secs(started.elapsed()));
        drop(state);
        let started = Instant::now();
        let copy = router.state().clone();
        whole.push(secs(started.elapsed()));
        drop(copy);
    }
    println!(
        "copying the state for a snapshot (deciding waits meanwhile): {}; rebuilding its \
         indexes on the snapshot writer: {}; copying the whole state (earlier builds): {}",
        lean.join(", "),
        rebuilt.join(", "),
        whole.join(", ")
    );
}

fn submit_command(
    rng: &mut Rng,
    router: &labaid::routing::Router,
    trusts: &[OdsCode],
    i: usize,
    now: Timestamp,
) -> anyhow::Result<Command> {
    let raw = submission(rng, i, now);
    let request = NewRequest::validate(&raw, router.catalogue(), now)
        .map_err(|v| anyhow::anyhow!("generated an invalid submission: {v}"))?;
    Ok(Command::Submit {
        trust: trusts[rng.below(TRUSTS)].clone(),
        id: RequestId::generate(),
        request,
    })
}

/// Durable submissions a second through the broker here (`labaid-bench`): how fast the journal
/// grows while a full snapshot is written.
const SUBMIT_RATE: f64 = 25_000.0;

/// Leaves the store as the snapshot policy's worst case for a restart after a crash: a full
/// snapshot of the filled state; then, as the broker's syncer would, more submissions and
/// cancellations (one in four) with an incremental snapshot each time one is due, until the next
/// due is a full one; then the journal the broker would write at `SUBMIT_RATE` while that full
/// snapshot is written (as long as the first one took), before it is durable.
fn worst_case<J: Journal>(
    medium: &mut Medium<'_, J>,
    router: &mut labaid::routing::Router,
    events: Vec<labaid::routing::Event>,
    trusts: &[OdsCode],
    rng: &mut Rng,
    now: Timestamp,
) -> anyhow::Result<()> {
    use labaid::engine::{Changes, SinceSnapshot};
    use labaid::store::{Snapshot, SnapshotKind};
    let started = Instant::now();
    let writing = medium.writing;
    let wait = |journal: &J| {
        while writing(journal) {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let journal = &mut medium.journal;
    journal.snapshot(Snapshot {
        state: router.state().lean_copy(),
        events,
    })?;
    wait(journal);
    let full_write = started.elapsed();
    let (full, _, _) = (medium.bytes)()?;
    let earlier: Vec<(OdsCode, RequestId)> =
        router.requests().map(|r| (r.trust.clone(), r.id)).collect();
    let mut since = SinceSnapshot::default();
    let (mut i, mut deltas, mut cancelled) = (router.request_count(), 0, 0);
    let mut batch = |router: &mut labaid::routing::Router,
                     journal: &mut J,
                     since: &mut SinceSnapshot|
     -> anyhow::Result<()> {
        let mut entries = Vec::with_capacity(BATCH);
        let mut outcome = Outcome::default();
        for _ in 0..BATCH {
            let command = if rng.below(4) == 0 {
                // A trust cancels an earlier request (the core refuses a second time).
                let (trust, id) = earlier[rng.below(earlier.len())].clone();
                Command::Cancel {
                    trust,
                    id,
                    reason: Default::default(),
                }
            } else {
                i += 1;
                submit_command(rng, router, trusts, i, now)?
            };
            outcome.changed = false;
            if router.apply(&command, now, &mut outcome).is_ok() && outcome.changed {
                cancelled += usize::from(matches!(command, Command::Cancel { .. }));
                entries.push(Entry { time: now, command });
            }
        }
        journal.append(&entries)?;
        since.note(&Changes::capture(router, &mut outcome));
        Ok(())
    };
    loop {
        batch(router, journal, &mut since)?;
        match journal.snapshot_due(false) {
            Some(SnapshotKind::Incremental) => {
                journal.delta(since.take(router.state().head_copy()))?;
                deltas += 1;
                wait(journal);
            }
            Some(SnapshotKind::Full) => break,
            None => {}
        }
    }
    let during = (SUBMIT_RATE * full_write.as_secs_f64()) as usize / BATCH;
    for _ in 0..during {
        batch(router, journal, &mut since)?;
    }
    let (_, incremental, segments) = (medium.bytes)()?;
    println!(
        "worst case for a crash: a full snapshot of {:.1} MiB (written in {:.1} s), {deltas} \
         incremental ones after it of {:.1} MiB in all, then {:.1} MiB of journal ({during} \
         batches of it while the next full one would be written); {} requests held, {} waiting, \
         {cancelled} cancelled ({:.1} s to make)",
        mib(full),
        full_write.as_secs_f64(),
        mib(incremental),
        mib(segments),
        router.request_count(),
        router.queue().len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How a measured broker is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL: nothing more is written (the journal stays the only record).
    Kill,
    /// SIGTERM: a clean stop, which snapshots a journal that has grown since the last snapshot.
    Term,
}

/// A broker started and measured once ready.
struct Measured {
    child: Child,
    log: PathBuf,
    ready: Duration,
    rss: u64,
    peak: u64,
}

impl Measured {
    /// The broker's own "store recovered" log line (entries replayed, milliseconds), or on
    /// PostgreSQL its "snapshot rows read" and "took the lease" lines.
    fn recovered_line(&self) -> String {
        const LINES: [&str; 3] = [
            "store recovered",
            "snapshot rows read",
            "took the lease; leading",
        ];
        let found: Vec<String> = std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                LINES
                    .iter()
                    .find_map(|m| l.split_once(m))
                    .map(|(_, rest)| rest.trim().to_string())
            })
            .collect();
        if found.is_empty() {
            return "(no store recovered line)".into();
        }
        found.join("\n    ")
    }

    fn stop(&mut self, how: Stop) -> anyhow::Result<Duration> {
        let started = Instant::now();
        match how {
            Stop::Kill => self.child.kill()?,
            Stop::Term => {
                let status = Process::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status()?;
                if !status.success() {
                    bail!("kill -TERM failed");
                }
            }
        }
        self.child.wait()?;
        Ok(started.elapsed())
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        // Never leave a broker behind on an error path; after `stop` this is a no-op.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the broker on `data` (and the PostgreSQL store at `url`, if given), waits for
/// `/readyz`, and reads its memory.
fn start(plan: &Plan<'_>, url: Option<&str>, data: &Path) -> anyhow::Result<Measured> {
    let (broker, ops) = (plan.broker, plan.ops);
    let log = plan.work.join("broker.log");
    let out = std::fs::File::create(&log)?;
    let mut command = Process::new(broker);
    command
        .arg("--config")
        .arg(plan.config_path)
        .arg("--data-dir")
        .arg(data);
    if let Some(url) = url {
        command.arg("--store").arg(url);
    }
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {}", broker.display()))?;
    let mut m = Measured {
        child,
        log,
        ready: Duration::ZERO,
        rss: 0,
        peak: 0,
    };
    loop {
        if readyz(ops) {
            break;
        }
        if let Some(status) = m.child.try_wait()? {
            bail!(
                "the broker exited ({status}) before it was ready; see {}",
                m.log.display()
            );
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the broker was not ready after 600 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    m.ready = started.elapsed();
    // Let anything started at readiness (tasks, buffers) settle before reading memory.
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.child.id()))?;
    m.rss = status_kib(&status, "VmRSS:") * 1024;
    m.peak = status_kib(&status, "VmHWM:") * 1024;
    Ok(m)
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// True when the operations listener answers `/readyz` with 200.
fn readyz(ops: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&ops, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.split_whitespace().nth(1) == Some("200")
}
