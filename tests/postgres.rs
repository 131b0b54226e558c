//! The PostgreSQL store against a real PostgreSQL started by the test (see `common::pg`), with
//! real broker processes: acknowledged submissions survive SIGKILL and restart; with two brokers
//! on one database exactly one leads, a standby says so (health NOT_SERVING, `/readyz` 503,
//! UNAVAILABLE naming the leader) and takes over when the leader is killed, with every
//! acknowledged change present and nothing twice; a leader paused past its lease (SIGSTOP)
//! acknowledges nothing once resumed and steps down to standby in-process, then leads again with
//! current state when the new leader dies; a caller whose batch was fenced hears UNAVAILABLE
//! naming the new leader; a broker that refuses to lead releases the lease at once; a restart
//! reads the incremental snapshot rows and replays only the journal rows after them. Every loop
//! is bounded in count and time.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::acked::{Acked, load, settle, submit_acked, verify};
use common::pg::{PgBroker, PgServer, leader_of};
use common::{all_requests, http_get, submission};
use labaid::client::{Client, ConnectOptions};
use labaid::domain::Timestamp;
use labaid::proto::{self, Priority};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_submissions_survive_sigkill_on_postgres() {
    let pg = PgServer::start();
    let acked: Acked = Arc::default();
    for cycle in 0..3 {
        let broker = PgBroker::start_leading(&pg.url(), &[]);
        verify(&broker, &acked).await;
        let (_stop, tasks) = load(&broker, cycle, &acked, 400).await;
        // Killed while the submitters are mid-call: some calls are never answered.
        broker.kill();
        settle(tasks).await;
    }
    let broker = PgBroker::start_leading(&pg.url(), &[]);
    let held = verify(&broker, &acked).await;
    let acked_count = acked.lock().unwrap().len();
    assert!(acked_count > 0, "nothing was acknowledged");
    let rows: i64 = pg
        .psql("SELECT count(*) FROM labaid_journal")
        .parse()
        .expect("count");
    eprintln!("{acked_count} acknowledged, {held} held after 3 kills; {rows} journal rows");
}

/// The fields of the broker's first log line saying `message`, which it must have logged.
fn line(broker: &PgBroker, message: &str) -> serde_json::Value {
    broker
        .logged(message)
        .unwrap_or_else(|| panic!("no {message:?} line: {}", broker.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_reads_the_incremental_rows_and_replays_only_the_journal_after_them() {
    let pg = PgServer::start();
    let acked: Acked = Arc::default();
    // Snapshot rows every few kilobytes of journal: several incremental rows, and full ones.
    // One data directory throughout, as one host's broker has: it keeps copies of the rows.
    let data = tempfile::tempdir().expect("data directory");
    let dir = data.path().to_str().expect("utf-8 path");
    let small = ["--snapshot-min-bytes", "65536", "--data-dir", dir];
    let mut broker = PgBroker::start_leading(&pg.url(), &small);
    let count = |sql: &str| -> i64 { pg.psql(sql).parse().expect("a number") };
    // Under load until an incremental row follows the newest full one, then killed mid-call
    // with no closing snapshot. A full row written between the last look and the kill starts
    // another round from there.
    let mut round = 0;
    let (entries, full, covered) = loop {
        round += 1;
        assert!(
            round <= 5,
            "no round ended with an incremental row after the full one"
        );
        let (_stop, tasks) = load(&broker, round, &acked, 500).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while count("SELECT count(*) FROM labaid_snapshot s JOIN labaid_delta d ON d.after = s.lsn")
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "no incremental row after a full one"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        broker.kill();
        settle(tasks).await;
        let entries = count("SELECT coalesce(max(lsn) + 1, 0) FROM labaid_journal");
        let full = count("SELECT max(lsn) FROM labaid_snapshot");
        let covered = count(&format!(
            "SELECT coalesce(max(lsn), {full}) FROM labaid_delta WHERE lsn > {full}"
        ));
        if covered > full {
            break (entries, full, covered);
        }
        broker = PgBroker::start_leading(&pg.url(), &small);
    };
    assert_eq!(
        count("SELECT count(*) FROM labaid_snapshot"),
        1,
        "older full rows are dropped"
    );
    let deltas = count(&format!(
        "SELECT count(*) FROM labaid_delta WHERE lsn > {full}"
    ));

    let broker = PgBroker::start_leading(&pg.url(), &small);
    let took = line(&broker, "took the lease; leading");
    assert_eq!(took["entries"], entries, "{took}");
    // The rows were all written on this host: their copies are read instead of fetching them.
    let read = line(&broker, "snapshot rows read");
    assert_eq!(read["local"], true, "{read}");
    assert_eq!(read["local_incremental"], deltas, "{read}");
    assert_eq!(
        took["replayed"],
        entries - covered,
        "replayed more than the rows after the last incremental one: {took}"
    );
    let held = verify(&broker, &acked).await;
    let acked_count = acked.lock().unwrap().len();
    assert!(acked_count > 0, "nothing was acknowledged");
    eprintln!(
        "{acked_count} acknowledged, {held} held; {deltas} incremental rows to entry {covered}, \
         then {} of {entries} entries replayed",
        entries - covered
    );
}

/// Stops `broker` with SIGTERM (a clean stop writes a full snapshot row) and waits for it.
fn stop_cleanly(mut broker: PgBroker) {
    broker.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.try_wait().is_none() {
        assert!(Instant::now() < deadline, "no clean stop: {}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_reads_its_local_copy_of_the_full_row_and_a_damaged_copy_falls_back_to_the_row() {
    let pg = PgServer::start();
    let data = tempfile::tempdir().expect("data directory");
    let args = ["--data-dir", data.path().to_str().expect("utf-8 path")];
    let acked: Acked = Arc::default();
    let broker = PgBroker::start_leading(&pg.url(), &args);
    let (stop, tasks) = load(&broker, 0, &acked, 300).await;
    *stop.lock().unwrap() = true;
    settle(tasks).await;
    stop_cleanly(broker);
    let copies = data.path().join("pg-snapshot");
    let copy = || -> std::path::PathBuf {
        let mut files: Vec<_> = std::fs::read_dir(&copies)
            .expect("the copy's directory")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(
            files.len(),
            1,
            "one copy, of the newest full row: {files:?}"
        );
        files.pop().expect("a copy")
    };
    let newest: i64 = pg
        .psql("SELECT max(lsn) FROM labaid_snapshot")
        .parse()
        .expect("lsn");
    assert!(
        copy()
            .to_string_lossy()
            .ends_with(&format!("{newest:020}.snap")),
        "{:?} is not the copy of the row after {newest} entries",
        copy()
    );

    // The same host: the copy is read, not the row, and holds everything.
    let broker = PgBroker::start_leading(&pg.url(), &args);
    let read = line(&broker, "snapshot rows read");
    assert_eq!(read["local"], true, "{read}");
    assert_eq!(read["store.snapshot_entries"], newest, "{read}");
    let held = verify(&broker, &acked).await;
    stop_cleanly(broker);

    // A copy that does not match its checksum is not used: the row is fetched.
    let path = copy();
    let mut bytes = std::fs::read(&path).expect("the copy");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).expect("damaged");
    let broker = PgBroker::start_leading(&pg.url(), &args);
    let read = line(&broker, "snapshot rows read");
    assert_eq!(read["local"], false, "{read}");
    assert!(
        broker
            .log()
            .contains("the local copy of the snapshot row is damaged"),
        "{}",
        broker.log()
    );
    assert_eq!(verify(&broker, &acked).await, held);
    assert!(held > 0, "nothing was acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let pg = PgServer::start();
    let data = tempfile::tempdir().expect("data directory");
    let args = ["--data-dir", data.path().to_str().expect("utf-8 path")];
    let mut first = PgBroker::start_leading(&pg.url(), &args);
    // The directory holds the first broker's audit trail, whose chain one writer continues.
    let mut second = PgBroker::start_with(&pg.url(), &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the second broker ran on: {}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{}", second.log());
    assert!(
        second
            .log()
            .contains("it is in use by another broker; give each broker its own"),
        "{}",
        second.log()
    );
    first.assert_running("the first broker stopped");
    assert_eq!(first.health().await, ServingStatus::Serving as i32);
}

/// Health, readiness and calls on a broker that does not lead.
async fn assert_standby(standby: &PgBroker, leader: &PgBroker) {
    assert_eq!(
        http_get(leader.ops, "/readyz").await.0,
        200,
        "the leader's /readyz"
    );
    assert_refers_to(standby, &leader.addr.to_string()).await;
}

/// A broker that does not lead answers health NOT_SERVING, `/readyz` 503, and a submission
/// UNAVAILABLE naming `leader` in its ErrorInfo details.
async fn assert_refers_to(standby: &PgBroker, leader: &str) {
    assert_eq!(
        standby.health().await,
        ServingStatus::NotServing as i32,
        "a standby's gRPC health"
    );
    assert_eq!(
        http_get(standby.ops, "/readyz").await.0,
        503,
        "a standby's /readyz"
    );
    let client = standby.client("RJ1").await;
    // A standby names the leader once it has read the lease (it polls every 100 ms).
    let mut found = None;
    for _ in 0..100 {
        let err = client
            .requests()
            .submit_request(submission("to-standby", Priority::Urgent, Timestamp::now()))
            .await
            .expect_err("a standby must refuse");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        if let Some(info) = leader_named(&err) {
            found = Some(info);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = found.expect("the standby never named the leader in ErrorInfo details");
    assert_eq!(info.reason, labaid::ops::NOT_LEADER);
    assert_eq!(
        info.metadata.get("leader").map(String::as_str),
        Some(leader)
    );
}

/// The ErrorInfo of an UNAVAILABLE that names the leader, if it has one.
fn leader_named(err: &tonic::Status) -> Option<tonic_types::ErrorInfo> {
    use tonic_types::StatusExt;
    err.get_error_details().error_info().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_when_the_leader_is_killed_and_loses_nothing() {
    let pg = PgServer::start();
    let url = pg.url();
    let acked: Acked = Arc::default();
    let mut brokers = vec![PgBroker::start(&url), PgBroker::start(&url)];
    let cycles = 4;
    let mut takeovers = Vec::new();
    for cycle in 0..cycles {
        let leader = leader_of(&mut brokers, Duration::from_secs(30));
        // Give the standby time to read the lease before it is checked.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_standby(&brokers[1 - leader], &brokers[leader]).await;
        verify(&brokers[leader], &acked).await;
        let (_stop, tasks) = load(&brokers[leader], cycle, &acked, 300).await;
        let killed_at = Instant::now();
        brokers.remove(leader).kill();
        settle(tasks).await;
        let standby = &mut brokers[0];
        assert!(
            standby.wait_serving(Duration::from_secs(30)),
            "the standby did not take over: {}",
            standby.log()
        );
        // From the kill to the first acknowledged submission on the new leader.
        let client = standby.client("RJ1").await;
        let order = format!("after-kill-{cycle}");
        let r = client
            .requests()
            .submit_request(submission(&order, Priority::Urgent, Timestamp::now()))
            .await
            .expect("submit on the new leader")
            .into_inner();
        takeovers.push(killed_at.elapsed());
        acked
            .lock()
            .unwrap()
            .insert(order, r.request.expect("request").id);
        verify(&brokers[0], &acked).await;
        // A new standby in place of the killed leader.
        brokers.push(PgBroker::start(&url));
    }
    let leader = leader_of(&mut brokers, Duration::from_secs(30));
    let held = verify(&brokers[leader], &acked).await;
    eprintln!(
        "{cycles} leader kills: {} acknowledged, {held} held; takeover (kill to first acknowledged submission) {:?}",
        acked.lock().unwrap().len(),
        takeovers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_acknowledges_nothing_once_resumed_and_steps_down() {
    let pg = PgServer::start();
    let url = pg.url();
    let mut brokers = vec![PgBroker::start(&url), PgBroker::start(&url)];
    let leader = leader_of(&mut brokers, Duration::from_secs(30));
    let mut standby = brokers.remove(1 - leader);
    let mut old = brokers.remove(0);
    let acked: Acked = Arc::default();
    let old_client = old.client("RJ1").await;
    submit_acked(&old_client, "before-pause", &acked).await;

    old.signal("-STOP");
    assert!(
        standby.wait_serving(Duration::from_secs(30)),
        "the standby did not take over from a paused leader: {}",
        standby.log()
    );
    submit_acked(&standby.client("RJ1").await, "after-takeover", &acked).await;

    // A call that reaches the paused leader, which is resumed only after the takeover.
    let late = tokio::spawn(async move {
        let mut requests = old_client.requests();
        let call =
            requests.submit_request(submission("to-paused", Priority::Urgent, Timestamp::now()));
        tokio::time::timeout(Duration::from_secs(20), call).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("-CONT");
    let answer = late.await.expect("task").expect("no answer within 20 s");
    let err = answer.expect_err("the resumed old leader acknowledged a call after the takeover");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // It steps down in-process: a standby again on the same listeners, naming the new leader.
    old.wait_not_serving().await;
    old.assert_running("the old leader exited instead of stepping down");
    assert_standby(&old, &standby).await;
    let held = all_requests(&standby.client("RJ1").await).await;
    assert!(
        held.iter().all(|r| r.order_number != "to-paused"),
        "the paused leader's late call was committed"
    );
    verify(&standby, &acked).await;

    // It followed the journal as a standby: when the new leader dies it leads again, holding
    // what the new leader acknowledged.
    standby.kill();
    assert!(
        old.wait_terms(2, Duration::from_secs(30)),
        "the old leader did not take over again: {}",
        old.log()
    );
    verify(&old, &acked).await;
    submit_acked(&old.client("RJ1").await, "after-return", &acked).await;
    verify(&old, &acked).await;
    let epochs = pg.psql("SELECT epoch FROM labaid_lease");
    assert_eq!(
        epochs, "3",
        "three terms: the first, the takeover, the return"
    );
    eprintln!(
        "the paused leader stepped down because: {}",
        step_down_reason(&old)
    );
}

/// A session of the test's own on the store's database, in a thread (the `postgres` client blocks).
fn hold_lease_uncommitted(
    port: u16,
    fake_leader: &str,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<()>();
    let fake_leader = fake_leader.to_string();
    let thread = std::thread::spawn(move || {
        let mut db = postgres::Client::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
            postgres::NoTls,
        )
        .expect("connect to the test database");
        let mut tx = db.transaction().expect("begin");
        // As a standby taking over would, but held open: the leader's next append waits on it.
        let taken = tx
            .execute(
                "UPDATE labaid_lease SET epoch = epoch + 1, holder = 'test', address = $1, \
                 expires = clock_timestamp() + interval '1 hour' WHERE id = 1",
                &[&fake_leader],
            )
            .expect("take the lease");
        assert_eq!(taken, 1, "no lease row");
        held_tx.send(()).expect("held");
        commit_rx.recv().expect("told to commit");
        tx.commit().expect("commit");
    });
    held_rx.recv().expect("the lease was not taken");
    (commit_tx, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_whose_batch_was_fenced_hears_unavailable_naming_the_new_leader() {
    let pg = PgServer::start();
    let mut broker = PgBroker::start_leading(&pg.url(), &[]);
    let acked: Acked = Arc::default();
    let client = broker.client("RJ1").await;
    submit_acked(&client, "before-fence", &acked).await;

    // Another "broker" takes the lease in a transaction left open.
    let fake_leader = "127.0.0.1:9";
    let (commit, holder) = hold_lease_uncommitted(pg.port, fake_leader);
    let call = tokio::spawn(async move {
        let mut requests = client.requests();
        let call =
            requests.submit_request(submission("fenced", Priority::Urgent, Timestamp::now()));
        tokio::time::timeout(Duration::from_secs(20), call).await
    });
    // The call is decided and its append waits on the lease row: it is in flight.
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND query LIKE 'INSERT INTO labaid_journal%'";
    let mut in_flight = false;
    for _ in 0..200 {
        if pg.psql(waiting) == "1" {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        in_flight,
        "the submission's append never waited on the lease: {}",
        broker.log()
    );
    commit.send(()).expect("commit");
    holder.join().expect("the test's transaction");

    let err = call
        .await
        .expect("task")
        .expect("no answer within 20 s")
        .expect_err("a batch whose append was fenced was acknowledged");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let info = leader_named(&err).expect("the fenced caller was not told where the leader is");
    assert_eq!(info.reason, labaid::ops::NOT_LEADER);
    assert_eq!(
        info.metadata.get("leader").map(String::as_str),
        Some(fake_leader)
    );

    // A standby again, in the same process.
    broker.wait_not_serving().await;
    broker.assert_running("the broker exited");
    assert_refers_to(&broker, fake_leader).await;

    // Once the lease is free it leads again, from what the database holds.
    pg.psql("UPDATE labaid_lease SET expires = '-infinity' WHERE id = 1");
    assert!(
        broker.wait_terms(2, Duration::from_secs(30)),
        "the broker did not lead again: {}",
        broker.log()
    );
    let client = broker.client("RJ1").await;
    let held = all_requests(&client).await;
    assert!(
        held.iter().all(|r| r.order_number != "fenced"),
        "the fenced submission was committed"
    );
    submit_acked(&client, "after-return", &acked).await;
    verify(&broker, &acked).await;
    let rows = pg.psql(
        "SELECT string_agg(DISTINCT epoch::text, ',' ORDER BY epoch::text) FROM labaid_journal",
    );
    assert_eq!(rows, "1,3", "journal rows only from the broker's two terms");
    eprintln!("stepped down because: {}", step_down_reason(&broker));
}

/// Why the broker said it stepped down (the first time), for the test's output.
fn step_down_reason(broker: &PgBroker) -> String {
    broker
        .logged("leadership lost; stepping down to standby")
        .map(|v| v["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// `labctl requests list -o json` as RJ1 against `addrs`.
fn labctl_list(addrs: &str) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(["requests", "list", "-o", "json"])
        .env("LABAID_ADDR", addrs)
        .env("LABAID_TOKEN", "demo:RJ1")
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run labctl");
    assert!(
        out.status.success(),
        "labctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("labctl json");
    match v {
        serde_json::Value::Array(items) => items,
        other => other["requests"].as_array().cloned().unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_given_every_address_follow_the_leader_across_a_kill() {
    let pg = PgServer::start();
    let url = pg.url();
    let mut brokers = vec![PgBroker::start(&url), PgBroker::start(&url)];
    let leader = leader_of(&mut brokers, Duration::from_secs(30));
    // The standby first, so that a client that took the first address would fail.
    let addrs = format!(
        "http://{},http://{}",
        brokers[1 - leader].addr,
        brokers[leader].addr
    );
    let connect = || async {
        Client::connect(&ConnectOptions {
            addr: addrs.clone(),
            token: Some("demo:RJ1".into()),
            connect_timeout: Some(Duration::from_secs(5)),
            tls: None,
        })
        .await
        .expect("connect to the leader")
    };
    let first = common::submit(
        &connect().await,
        submission("before-kill", Priority::Urgent, Timestamp::now()),
    )
    .await;
    // The last event a watcher saw on the old leader.
    let mut events = common::watch_request_events(&connect().await).await;
    let mut last = 0;
    for _ in 0..100 {
        let e = common::next(&mut events).await;
        last = e.sequence;
        if e.request.as_ref().is_some_and(|r| r.id == first.id) {
            break;
        }
    }
    assert!(last > 0, "no event for the first submission");
    brokers.remove(leader).kill();
    // Connecting again finds the new leader once it has taken over.
    let client = connect().await;
    let mut resumed = client
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest {
            after_sequence: last,
            ..Default::default()
        })
        .await
        .expect("watch on the new leader")
        .into_inner();
    let second = common::submit(
        &client,
        submission("after-kill", Priority::Urgent, Timestamp::now()),
    )
    .await;
    // The sequence carries on across the takeover: nothing missed, nothing twice.
    let next = common::next(&mut resumed).await;
    assert_eq!(
        next.sequence,
        last + 1,
        "the watch resumed at the wrong sequence"
    );
    let addrs_for_labctl = addrs.clone();
    let listed = tokio::task::spawn_blocking(move || labctl_list(&addrs_for_labctl))
        .await
        .expect("labctl");
    let ids: HashSet<String> = listed
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    assert!(
        ids.contains(&first.id) && ids.contains(&second.id),
        "labctl with both addresses lists {ids:?}, not both acknowledged requests"
    );
}

/// A broker that refuses to lead, here because its directory would strand an accepted job at a
/// lab it removes, lets the lease go as it stops: the next broker need not wait for it to lapse.
#[tokio::test]
async fn a_broker_that_refuses_to_lead_releases_the_lease() {
    let pg = PgServer::start();
    let data = tempfile::tempdir().expect("data dir");
    let mut config = labaid::Config::demo().expect("demo config");
    config.data_dir = data.path().to_path_buf();
    config.store_url = Some(pg.url());
    let broker = common::TestBroker::spawn_with(config.clone()).await;
    let trust = broker.client("RJ1").await;
    let r = common::submit(&trust, submission("REFUSE-1", Priority::Stat, broker.now())).await;
    let lab = broker.client(&r.lab).await;
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .expect("accept");
    broker.shutdown().await;

    let mut without = config.clone();
    without.labs.retain(|l| l.ods.as_str() != r.lab);
    without.metrics_listen = None;
    without.web_listen = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = labaid::serve(listener, without, std::future::pending())
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains(&r.lab) && message.contains("holds"),
        "{message}"
    );
    // It took the lease (epoch 2, after the first broker's 1) and released it.
    assert_eq!(
        pg.psql("SELECT epoch, expires = '-infinity' FROM labaid_lease"),
        "2|t"
    );
    let broker = common::TestBroker::spawn_with(config).await;
    let job = common::get_request(&broker.client("RJ1").await, &r.id).await;
    assert_eq!(job.state, proto::RequestState::Accepted as i32);
    broker.shutdown().await;
}
