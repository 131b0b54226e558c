//! Store figures: acknowledged submissions per second with group commit against one sync per
//! change (a real broker in this process, gRPC clients, a data directory on disk), and the restart
//! time of a data directory holding 100,000 live requests, from the journal alone and from a
//! snapshot.
//!
//! `cargo run --release --example store_bench [-- SECONDS CLIENTS REQUESTS]`
//! (defaults 5 s, 64 clients, 100000 requests). `LABAID_BENCH_DIR` picks the disk (default: the
//! current directory), since a tmpfs would make every sync free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use labaid::client::{Client, ConnectOptions};
use labaid::config::Config;
use labaid::domain::{NewRequest, OdsCode, Priority, RawSubmission, RequestId, Timestamp};
use labaid::engine::Views;
use labaid::proto;
use labaid::routing::{Command, Outcome};
use labaid::store::{self, Entry, Journal, Snapshot, StoreOptions, SyncMode};

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(5);
    let clients = args.get(1).copied().unwrap_or(64) as usize;
    let requests = args.get(2).copied().unwrap_or(100_000) as usize;
    let base =
        std::env::var_os("LABAID_BENCH_DIR").map_or_else(|| ".".into(), std::path::PathBuf::from);
    let rt = tokio::runtime::Runtime::new()?;
    for sync in [SyncMode::PerBatch, SyncMode::PerEntry] {
        let dir = tempfile::tempdir_in(&base)?;
        let rate = rt.block_on(submissions_per_second(dir.path(), sync, seconds, clients))?;
        println!("{sync:?}: {rate:.0} acknowledged submissions/s ({clients} clients, {seconds} s)");
    }
    let dir = tempfile::tempdir_in(&base)?;
    restart_time(dir.path(), requests)?;
    Ok(())
}

async fn submissions_per_second(
    dir: &std::path::Path,
    sync: SyncMode,
    seconds: u64,
    clients: usize,
) -> anyhow::Result<f64> {
    let mut config = Config::demo()?;
    config.data_dir = dir.to_path_buf();
    config.store.sync = sync;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(labaid::serve(listener, config, async {
        let _ = stopped.await;
    }));
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let trust = if c % 2 == 0 { "RJ1" } else { "RJZ" };
        let client = connect(&addr.to_string(), trust).await?;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sub = submission(&format!("B{c}-{n}"));
                if client.requests().submit_request(sub).await.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await?;
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    server.await??;
    Ok(rate)
}

async fn connect(addr: &str, org: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(&ConnectOptions {
        addr: format!("http://{addr}"),
        token: Some(format!("demo:{org}")),
        connect_timeout: None,
        tls: None,
    })
    .await?)
}

fn submission(order: &str) -> proto::SubmitRequestRequest {
    let collected = Timestamp::now().plus_minutes(-20);
    proto::SubmitRequestRequest {
        order_number: order.to_string(),
        patient: Some(proto::Patient {
            nhs_number: "9434765919".into(),
            family_name: "Benchpatient".into(),
            given_name: "Alex".into(),
            birth_date: "1970-01-01".into(),
        }),
        tests: vec!["FBC".into()],
        priority: proto::Priority::Routine as i32,
        collected_at: Some(prost_types::Timestamp {
            seconds: collected.millis() / 1000,
            nanos: 0,
        }),
        clinical_note: String::new(),
    }
}

/// Fills a data directory with `count` live requests through the core and the store, as the
/// sequencer would, then times a restart from the journal and from a snapshot.
fn restart_time(dir: &std::path::Path, count: usize) -> anyhow::Result<()> {
    let config = Config::demo()?;
    let directory = config.directory();
    let options = StoreOptions::default();
    let recovered = store::open(dir, directory.clone(), config.policy.clone(), options)?;
    let (mut router, mut journal) = (recovered.router, recovered.journal);
    let mut events = Vec::new();
    let now = Timestamp::now();
    let trusts = [OdsCode::parse("RJ1"), OdsCode::parse("RJZ")];
    let fill = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(512) {
        let mut entries = Vec::with_capacity(chunk.len());
        let mut outcome = Outcome::default();
        for &i in chunk {
            let raw = RawSubmission {
                order_number: format!("FILL-{i}"),
                nhs_number: "9434765919".into(),
                family_name: "Benchpatient".into(),
                given_name: "Alex".into(),
                birth_date: "1970-01-01".into(),
                tests: vec!["FBC".into()],
                priority: Some(Priority::Routine),
                collected_at: Some(now.plus_minutes(-20)),
                clinical_note: String::new(),
            };
            let trust = trusts[i % 2].clone().map_err(anyhow::Error::msg)?;
            let request = NewRequest::validate(&raw, router.catalogue(), now)
                .map_err(|v| anyhow::anyhow!("{v}"))?;
            let command = Command::Submit {
                trust,
                id: RequestId::generate(),
                request,
            };
            outcome.changed = false;
            router.apply(&command, now, &mut outcome)?;
            entries.push(Entry { time: now, command });
        }
        journal.append(&entries)?;
        events.append(&mut outcome.events);
    }
    let journal_bytes = dir_bytes(dir)?;
    println!(
        "filled {count} live requests ({} queued) in {:.1} s; journal {:.1} MiB",
        router.queue().len(),
        fill.elapsed().as_secs_f64(),
        journal_bytes as f64 / 1048576.0
    );
    drop(journal);

    let started = Instant::now();
    let r = store::open(dir, directory.clone(), config.policy.clone(), options)?;
    let views = Views::new(
        &r.router,
        r.events.clone(),
        config.retention_ms,
        Default::default(),
    );
    println!(
        "restart from the journal alone: {:.2} s ({} entries replayed, {} requests)",
        started.elapsed().as_secs_f64(),
        r.replayed,
        r.router.request_count()
    );

    let capture = Instant::now();
    let snapshot = Snapshot {
        state: r.router.state().lean_copy(),
        events: views.retained_events(),
    };
    let pause = capture.elapsed();
    let mut journal = r.journal;
    let written = Instant::now();
    journal.snapshot(snapshot)?;
    journal.close()?;
    println!(
        "snapshot: sequencer pause {:.1} ms to copy the state, {:.2} s to encode and write in the \
         background; data directory now {:.1} MiB",
        pause.as_secs_f64() * 1000.0,
        written.elapsed().as_secs_f64(),
        dir_bytes(dir)? as f64 / 1048576.0
    );
    drop(journal);
    drop(views);

    let started = Instant::now();
    let r = store::open(dir, directory, config.policy.clone(), options)?;
    let _views = Views::new(&r.router, r.events, config.retention_ms, Default::default());
    println!(
        "restart from the snapshot: {:.2} s ({} entries replayed, {} requests)",
        started.elapsed().as_secs_f64(),
        r.replayed,
        r.router.request_count()
    );
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for item in std::fs::read_dir(dir)? {
        total += item?.metadata()?.len();
    }
    Ok(total)
}
