//! A restart on the PostgreSQL store with more journal rows than one page of catching up: the
//! pages after the first are fetched and decoded on threads of their own while the broker applies
//! the ones before, and every acknowledged submission is held once, in order, after a SIGKILL.
//! Bounded in time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::acked::{Acked, settle, submitters, verify};
use common::pg::{PgBroker, PgServer};

/// Rows a catch-up reads per query (`store::postgres::follow`'s page): the test needs more
/// than two pages of them.
const PAGE: i64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_catches_up_on_several_pages_of_journal_rows() {
    let pg = PgServer::start();
    let count = |sql: &str| -> i64 { pg.psql(sql).parse().expect("a number") };
    // No snapshot row while loading, so the restart replays every journal row.
    let never = ["--snapshot-min-bytes", "1073741824"];
    let broker = PgBroker::start_leading(&pg.url(), &never);
    let acked: Acked = Arc::default();
    let (_stop, tasks) = submitters(&broker.client("RJ1").await, "p", 48, &acked);
    let deadline = Instant::now() + Duration::from_secs(240);
    while count("SELECT count(*) FROM labaid_journal") <= 2 * PAGE + PAGE / 2 {
        assert!(
            Instant::now() < deadline,
            "fewer than {} journal rows after 240 s",
            2 * PAGE + PAGE / 2
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Killed mid-call: the calls in flight are never answered, and only the answered count.
    broker.kill();
    settle(tasks).await;
    let entries = count("SELECT max(lsn) + 1 FROM labaid_journal");
    let covered = count("SELECT coalesce(max(lsn), 0) FROM labaid_snapshot");

    let broker = PgBroker::start_leading(&pg.url(), &never);
    let took = broker
        .logged("took the lease; leading")
        .unwrap_or_else(|| panic!("no takeover line: {}", broker.log()));
    assert_eq!(took["entries"], entries, "{took}");
    assert_eq!(took["replayed"], entries - covered, "{took}");
    assert!(
        entries - covered > 2 * PAGE,
        "only {} rows to replay",
        entries - covered
    );
    let held = verify(&broker, &acked).await;
    let acked_count = acked.lock().unwrap().len();
    assert!(acked_count as i64 > 2 * PAGE, "{acked_count} acknowledged");
    eprintln!("{acked_count} acknowledged, {held} held; {entries} entries replayed after the kill");
}
