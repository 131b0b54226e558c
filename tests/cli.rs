//! labctl, black-box: the real binary against a real broker on an ephemeral port. Every wait is
//! bounded; watches are synchronised on what labctl prints, not on sleeps.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use labaid::proto::{self, Priority};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::AbortHandle;

/// Longest a one-shot labctl may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest to wait for a line from a watch.
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

/// labctl with a clean environment: no profile, no colour, the broker at `addr`.
fn labctl_command(addr: &str, token: Option<&str>, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
    cmd.args(args)
        .env_remove("LABAID_TOKEN")
        .env_remove("LABAID_PROFILE")
        .env_remove("LABAID_CA")
        .env_remove("LABAID_CERT")
        .env_remove("LABAID_KEY")
        .env("LABAID_ADDR", addr)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("NO_COLOR", "1");
    if let Some(token) = token {
        cmd.env("LABAID_TOKEN", token);
    }
    cmd
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Asserts the exit code, and that the error (if any) is one `labctl: ` line.
    #[track_caller]
    fn expect(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        if code != 0 {
            let lines: Vec<&str> = self.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "one line of error: {:?}", self.stderr);
            assert!(lines[0].starts_with("labctl: "), "{:?}", self.stderr);
        }
        self
    }
}

/// One labctl environment: a broker address and a home folder without a profile.
struct Cli {
    addr: String,
    home: tempfile::TempDir,
}

impl Cli {
    fn new(addr: String) -> Self {
        Self {
            addr,
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn run(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = labctl_command(&self.addr, token, self.home.path(), args);
        let output = tokio::time::timeout(
            RUN_TIMEOUT,
            tokio::task::spawn_blocking(move || cmd.output()),
        )
        .await
        .unwrap_or_else(|_| panic!("labctl {args:?} timed out"))
        .expect("join")
        .expect("run labctl");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn watch(&self, token: &str, args: &[&str]) -> Watch {
        let mut child = labctl_command(&self.addr, Some(token), self.home.path(), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn labctl");
        let stdout = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        Watch {
            child: Some(child),
            stdout,
            stderr,
        }
    }
}

/// The lines a pipe produces, as a channel (a thread reads the blocking pipe).
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> UnboundedReceiver<String> {
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `labctl ... watch`.
struct Watch {
    child: Option<Child>,
    stdout: UnboundedReceiver<String>,
    stderr: UnboundedReceiver<String>,
}

impl Watch {
    /// The next JSON event on stdout.
    async fn next_event(&mut self) -> Value {
        let line = tokio::time::timeout(LINE_TIMEOUT, self.stdout.recv())
            .await
            .expect("timed out waiting for an event from labctl")
            .expect("labctl closed its stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Reads stderr until a line containing `needle`.
    async fn stderr_until(&mut self, needle: &str) -> String {
        loop {
            let line = tokio::time::timeout(LINE_TIMEOUT, self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {needle:?} on stderr"))
                .expect("labctl closed its stderr");
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Sends Ctrl-C (SIGINT) and returns the exit code.
    async fn interrupt(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(status.success());
        tokio::time::timeout(
            LINE_TIMEOUT,
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .expect("labctl did not stop on Ctrl-C")
        .expect("join")
        .expect("wait")
        .code()
        .unwrap_or(-1)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP proxy between labctl and the broker whose connections the test can cut.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    task: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let (up2, connections2) = (up.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections2.lock().unwrap().push(relay.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            up,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every open connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Accepts connections again.
    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

const SUBMIT: &[&str] = &[
    "requests",
    "submit",
    "--nhs-number",
    "9434765919",
    "--tests",
    "K",
    "--priority",
    "stat",
    "--collected-at",
    "-20m",
];

/// Submits a stat potassium request as RJ1 with labctl; returns its id. R1H is offered it first.
async fn submit(cli: &Cli, order: &str) -> String {
    let mut args = SUBMIT.to_vec();
    args.extend(["--order-number", order]);
    let run = cli.run(Some("demo:RJ1"), &args).await;
    run.expect(0);
    let id = run.stdout.trim().to_string();
    assert_eq!(id.len(), 36, "stdout is the id: {:?}", run.stdout);
    id
}

fn sequences(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["sequence"].as_u64().expect("sequence"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_goes_from_submit_to_result_and_the_trust_sees_the_result() {
    let broker = TestBroker::spawn().await;
    let cli = Cli::new(broker.url());
    let mut offers = cli.watch("demo:R1H", &["offers", "watch", "--output", "json"]);
    let mut outcomes = cli.watch(
        "demo:RJ1",
        &["requests", "watch", "--kind", "resulted", "-o", "json"],
    );

    let id = submit(&cli, "ORD-1").await;
    let offered = offers.next_event().await;
    assert_eq!(offered["kind"], "offered");
    assert_eq!(offered["job"]["id"], id.as_str());
    assert_eq!(offered["job"]["priority"], "stat");
    assert_eq!(offered["job"]["tests"], serde_json::json!(["K"]));
    assert!(offered["job"]["lease_expires_at"].is_string());
    assert!(
        offered["job"]["patient"].is_null(),
        "no patient data before acceptance"
    );

    let lab = Some("demo:R1H");
    let accepted = cli.run(lab, &["jobs", "accept", &id]).await;
    accepted.expect(0);
    assert!(accepted.stdout.contains("accepted"), "{}", accepted.stdout);
    cli.run(lab, &["jobs", "receive", &id]).await.expect(0);
    cli.run(lab, &["jobs", "result", &id, "--obs", "K=5.1mmol/L"])
        .await
        .expect(0);

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            offers.next_event().await["kind"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, ["accepted", "received", "resulted"]);
    // The trust asked for results only: the offer, accept and receipt before it were left out.
    let outcome = outcomes.next_event().await;
    assert_eq!(outcome["kind"], "resulted");
    assert_eq!(outcome["request"]["id"], id.as_str());
    assert!(outcome["sequence"].as_u64().unwrap() > 1, "{outcome}");
    assert_eq!(outcomes.interrupt().await, 0);

    let shown = cli
        .run(Some("demo:RJ1"), &["requests", "show", &id, "-o", "json"])
        .await;
    shown.expect(0);
    let r = shown.json();
    assert_eq!(r["state"], "resulted");
    assert_eq!(r["lab"], "R1H");
    assert_eq!(r["results"][0]["test"], "K");
    assert_eq!(r["results"][0]["value"], "5.1");
    assert_eq!(r["results"][0]["unit"], "mmol/L");
    let table = cli.run(Some("demo:RJ1"), &["requests", "show", &id]).await;
    table.expect(0);
    assert!(table.stdout.contains("K 5.1 mmol/L"), "{}", table.stdout);

    assert_eq!(offers.interrupt().await, 0, "Ctrl-C ends a watch cleanly");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_offer_goes_to_another_lab() {
    let broker = TestBroker::spawn().await;
    let cli = Cli::new(broker.url());
    let id = submit(&cli, "ORD-DECLINE").await;
    let first = cli
        .run(Some("demo:RJ1"), &["requests", "show", &id, "-o", "json"])
        .await;
    assert_eq!(first.json()["lab"], "R1H");

    cli.run(
        Some("demo:R1H"),
        &["jobs", "decline", &id, "--reason", "analyser down"],
    )
    .await
    .expect(0);

    let now = cli
        .run(Some("demo:RJ1"), &["requests", "show", &id, "-o", "json"])
        .await;
    let r = now.json();
    assert_eq!(r["state"], "offered");
    assert!(
        !r["lab"].is_null() && r["lab"] != "R1H",
        "routed elsewhere: {r}"
    );
    let other = r["lab"].as_str().unwrap().to_string();
    let jobs = cli
        .run(
            Some(&format!("demo:{other}")),
            &["jobs", "list", "-o", "json"],
        )
        .await;
    assert_eq!(jobs.json()["jobs"][0]["id"], id.as_str());

    // The lab that declined cannot take it back, and is told why.
    let again = cli.run(Some("demo:R1H"), &["jobs", "accept", &id]).await;
    again.expect(4);
    assert!(again.stderr.contains("declined"), "{}", again.stderr);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_has_its_documented_exit_code_and_one_line() {
    let broker = TestBroker::spawn().await;
    let cli = Cli::new(broker.url());
    let lab = Some("demo:R1H");
    let trust = Some("demo:RJ1");
    let unknown = "00000000-0000-4000-8000-000000000000";

    // 2: usage (clap), local validation (nothing sent), and the broker's INVALID_ARGUMENT.
    assert_eq!(cli.run(lab, &["jobs", "accept"]).await.code, 2);
    let mut bad = SUBMIT.to_vec();
    bad[3] = "9434765918";
    bad.extend(["--order-number", "ORD-BAD"]);
    let invalid = cli.run(trust, &bad).await;
    invalid.expect(2);
    assert!(
        invalid.stderr.contains("--nhs-number"),
        "{}",
        invalid.stderr
    );
    assert!(
        !invalid.stderr.contains("9434765918"),
        "no patient data in errors"
    );
    let listed = cli.run(trust, &["requests", "list", "-o", "json"]).await;
    assert_eq!(
        listed.json()["requests"],
        serde_json::json!([]),
        "nothing was sent"
    );
    let too_big = cli.run(lab, &["capacity", "set", "K", "200000"]).await;
    too_big.expect(2);
    assert!(too_big.stderr.contains("100000"), "{}", too_big.stderr);

    // 3: not found.
    let missing = cli.run(lab, &["jobs", "show", unknown]).await;
    missing.expect(3);
    assert!(
        missing.stderr.contains("labctl jobs list"),
        "{}",
        missing.stderr
    );
    cli.run(trust, &["requests", "show", unknown])
        .await
        .expect(3);

    // 4: not allowed in the current state, or lost to another operator.
    let id = submit(&cli, "ORD-STATE").await;
    let early = cli.run(lab, &["jobs", "receive", &id]).await;
    early.expect(4);
    assert!(early.stderr.contains("accept it"), "{}", early.stderr);
    cli.run(lab, &["jobs", "accept", &id]).await.expect(0);
    cli.run(lab, &["jobs", "accept", &id]).await.expect(4);

    // 5: broker unreachable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let nowhere = Cli::new(format!("http://{closed}"));
    let down = nowhere.run(lab, &["capacity", "show"]).await;
    down.expect(5);
    assert!(
        down.stderr.contains("cannot reach the broker"),
        "{}",
        down.stderr
    );

    // 6: not authenticated, or not permitted.
    let anonymous = cli.run(None, &["jobs", "list"]).await;
    anonymous.expect(6);
    assert!(
        anonymous.stderr.contains("LABAID_TOKEN"),
        "{}",
        anonymous.stderr
    );
    let wrong_role = cli.run(trust, &["jobs", "list"]).await;
    wrong_role.expect(6);
    assert!(wrong_role.stderr.contains("trust"), "{}", wrong_role.stderr);

    // 1: anything else, e.g. a results file that cannot be read.
    let unreadable = cli
        .run(
            lab,
            &["jobs", "result", &id, "--file", "/nonexistent/results.csv"],
        )
        .await;
    unreadable.expect(1);

    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_output_parses_and_carries_what_the_tables_show() {
    let broker = TestBroker::spawn().await;
    let cli = Cli::new(broker.url());
    let lab = Some("demo:R1H");
    let trust = Some("demo:RJ1");
    let id = submit(&cli, "ORD-JSON").await;

    let table = cli.run(lab, &["jobs", "list"]).await;
    table.expect(0);
    let header = table.stdout.lines().next().unwrap();
    for column in [
        "ID",
        "PRIORITY",
        "STATE",
        "TESTS",
        "TRUST",
        "ORDER",
        "SAMPLE DEADLINE",
        "LEASE LEFT",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(table.stdout.contains(&id));
    let jobs = cli.run(lab, &["jobs", "list", "-o", "json"]).await.json();
    let job = &jobs["jobs"][0];
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["priority"], "stat");
    assert_eq!(job["state"], "offered");
    assert_eq!(job["trust"], "RJ1");
    assert_eq!(job["order_number"], "ORD-JSON");
    assert!(job["sample_deadline"].is_string() && job["lease_expires_at"].is_string());

    let filtered = cli
        .run(lab, &["jobs", "list", "--status", "resulted", "-o", "json"])
        .await
        .json();
    assert_eq!(filtered["jobs"], serde_json::json!([]));

    let requests = cli
        .run(trust, &["requests", "list", "-o", "json"])
        .await
        .json();
    let r = &requests["requests"][0];
    assert_eq!(
        (r["id"].as_str(), r["order_number"].as_str()),
        (Some(id.as_str()), Some("ORD-JSON"))
    );
    assert_eq!(
        (r["state"].as_str(), r["lab"].as_str()),
        (Some("offered"), Some("R1H"))
    );
    assert!(r["updated_at"].is_string() && r["sample_deadline"].is_string());

    let capacity = cli
        .run(lab, &["capacity", "show", "-o", "json"])
        .await
        .json();
    let k = capacity["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["test"] == "K")
        .expect("K row");
    assert_eq!(
        (
            k["capacity"].as_u64(),
            k["in_flight"].as_u64(),
            k["free"].as_u64()
        ),
        (Some(30), Some(1), Some(29))
    );
    let set = cli
        .run(lab, &["capacity", "set", "K", "5", "-o", "json"])
        .await
        .json();
    assert!(
        set["tests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["test"] == "K" && t["capacity"] == 5)
    );

    let catalogue = cli.run(trust, &["catalogue", "-o", "json"]).await.json();
    let k = catalogue["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["code"] == "K")
        .unwrap();
    assert_eq!(k["stability_minutes"], 240);
    assert_eq!(
        (k["loinc"].as_str(), k["snomed"].as_str()),
        (Some("2823-3"), Some("59573005"))
    );

    let status = cli
        .run(lab, &["status", "draining", "-o", "json"])
        .await
        .json();
    assert_eq!(
        (status["lab"].as_str(), status["status"].as_str()),
        (Some("R1H"), Some("draining"))
    );

    let config = cli.run(trust, &["config", "show", "-o", "json"]).await;
    config.expect(0);
    assert!(
        !config.stdout.contains("demo:RJ1"),
        "the token is masked: {}",
        config.stdout
    );
    let config = config.json();
    assert_eq!(config["addr"]["source"], "env LABAID_ADDR");
    assert_eq!(config["token"]["source"], "env LABAID_TOKEN");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_ends_with_exit_0_once_its_reader_goes_away() {
    let broker = TestBroker::spawn().await;
    let cli = Cli::new(broker.url());
    submit(&cli, "ORD-1").await;
    let mut child = labctl_command(
        &cli.addr,
        Some("demo:RJ1"),
        cli.home.path(),
        &["requests", "watch", "-o", "json"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn labctl");
    // As `labctl requests watch | head -1`: read one event, then close the pipe.
    let stdout = child.stdout.take().expect("stdout");
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read an event");
    assert!(first.contains("\"sequence\""), "{first}");
    // The next event finds no reader, and the watch ends instead of following for no one.
    submit(&cli, "ORD-2").await;
    let pid = child.id().to_string();
    let waited = tokio::time::timeout(
        LINE_TIMEOUT,
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await;
    let Ok(status) = waited else {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        panic!("labctl went on watching with no reader");
    };
    assert_eq!(status.expect("join").expect("wait").code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_watch_whose_connection_drops_reconnects_and_misses_no_event() {
    let broker = TestBroker::spawn().await;
    let proxy = Proxy::start(broker.addr).await;
    let direct = Cli::new(broker.url());
    let via_proxy = Cli::new(proxy.url());
    let mut watch = via_proxy.watch("demo:RJ1", &["requests", "watch", "-o", "json"]);

    let first = submit(&direct, "ORD-W1").await;
    let mut events = vec![watch.next_event().await];
    assert_eq!(events[0]["request"]["id"], first.as_str());

    proxy.cut();
    watch.stderr_until("lost the connection").await;
    // Events while the link is down: a decline and re-offer, and two new requests.
    let lab = broker.client("R1H").await;
    lab.labs()
        .decline_job(proto::DeclineJobRequest {
            id: first.clone(),
            reason: "analyser down".into(),
        })
        .await
        .expect("decline");
    let trust = broker.client("RJ1").await;
    trust
        .requests()
        .submit_request(submission("ORD-W2", Priority::Urgent, broker.now()))
        .await
        .expect("submit");
    let last = trust
        .requests()
        .submit_request(submission("ORD-W3", Priority::Stat, broker.now()))
        .await
        .expect("submit")
        .into_inner()
        .request
        .expect("request")
        .id;

    proxy.restore();
    watch.stderr_until("reconnected").await;
    loop {
        let e = watch.next_event().await;
        let done = e["request"]["id"] == last.as_str() && e["request"]["state"] == "offered";
        events.push(e);
        if done {
            break;
        }
    }
    let seen = sequences(&events);
    let expected: Vec<u64> = (1..=*seen.last().unwrap()).collect();
    assert_eq!(seen, expected, "every event once, in order");
    assert!(
        seen.len() >= 4,
        "the events while down were delivered: {seen:?}"
    );
    assert_eq!(watch.interrupt().await, 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offers_watch_whose_connection_drops_reconnects_and_misses_no_offer() {
    let broker = TestBroker::spawn().await;
    let proxy = Proxy::start(broker.addr).await;
    let direct = Cli::new(broker.url());
    let via_proxy = Cli::new(proxy.url());
    let mut watch = via_proxy.watch("demo:R1H", &["offers", "watch", "-o", "json"]);

    let first = submit(&direct, "ORD-O1").await;
    let e = watch.next_event().await;
    assert_eq!(
        (e["kind"].as_str(), e["job"]["id"].as_str()),
        (Some("offered"), Some(first.as_str()))
    );

    proxy.cut();
    watch.stderr_until("lost the connection").await;
    let second = submit(&direct, "ORD-O2").await;
    let third = submit(&direct, "ORD-O3").await;
    proxy.restore();
    watch.stderr_until("reconnected").await;

    let (e2, e3) = (watch.next_event().await, watch.next_event().await);
    assert_eq!(e2["job"]["id"], second.as_str());
    assert_eq!(e3["job"]["id"], third.as_str());
    assert_eq!(sequences(&[e, e2, e3]), [1, 2, 3]);
    assert_eq!(watch.interrupt().await, 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn help_documents_exit_codes_and_completions_are_generated() {
    let cli = Cli::new("http://127.0.0.1:1".into());
    let help = cli.run(None, &["--help"]).await;
    help.expect(0);
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);
    for shell in ["bash", "zsh", "fish"] {
        let script = cli.run(None, &["completions", shell]).await;
        script.expect(0);
        assert!(script.stdout.contains("labctl"), "{shell}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_file_supplies_settings_below_flags_and_environment() {
    let broker = TestBroker::spawn().await;
    let cli = Cli::new("http://127.0.0.1:1".into());
    let profile: PathBuf = cli.home.path().join("labaid").join("labctl.toml");
    std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
    std::fs::write(
        &profile,
        format!("addr = \"{}\"\ntoken = \"demo:R1H\"\n", broker.url()),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // LABAID_ADDR (a dead port) beats the profile; --addr beats both.
    cli.run(None, &["capacity", "show"]).await.expect(5);
    let run = cli
        .run(
            None,
            &["--addr", &broker.url(), "capacity", "show", "-o", "json"],
        )
        .await;
    run.expect(0);
    assert_eq!(run.json()["lab"], "R1H", "the token came from the profile");
    broker.shutdown().await;
}
