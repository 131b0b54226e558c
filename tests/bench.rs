//! The real `labaid-bench` binary: the broker it starts by default is this build's, served by the
//! bench's own executable (so `cargo run --bin labaid-bench` works on a clean checkout), and
//! `--broker` measures a given `labaid-broker` instead, and `--addr` drives a running broker over
//! TLS as the organisations of an orgs file.

mod common;

use std::process::{Command, Output};

use common::TestBroker;
use labaid::Config;
use labaid::auth::{Role, TokenHash, create_token, devpki, token_digest};
use labaid::domain::OdsCode;
use serde_json::Value;

fn bench(extra: &[&str]) -> (Output, tempfile::TempDir) {
    let work = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labaid-bench"));
    cmd.args(["--duration", "1s", "--json", "--work-dir"])
        .arg(work.path());
    if !extra.contains(&"--warmup") {
        cmd.args(["--warmup", "200ms"]);
    }
    let output = cmd.args(extra).output().expect("labaid-bench runs");
    (output, work)
}

fn report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "labaid-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

fn scenario<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} scenario in {report}"))
}

/// Checks that a broker scenario made durable submissions and that its figures come from a real
/// broker: the journal synced, and the broker holds the requests it acknowledged.
fn assert_durable_submissions(submit: &Value) {
    let phase = &submit["phases"][0];
    assert_eq!(phase["name"], "submit acknowledged");
    let count = phase["count"].as_u64().expect("count");
    assert!(count > 0, "no submissions acknowledged: {submit}");
    assert_eq!(submit["errors"], 0, "{submit}");
    let live = submit["live_requests"].as_u64().expect("live requests");
    assert!(live >= count, "{live} live after {count} acknowledged");
    let syncs = submit["journal"]["syncs_per_second"]
        .as_f64()
        .expect("journal figures");
    assert!(syncs > 0.0, "the journal never synced: {submit}");
    assert!(submit["server_rss_bytes"].as_u64().expect("rss") > 0);
}

#[test]
fn the_bench_serves_its_own_build_of_the_broker_and_compares_it_to_the_baseline() {
    let (output, work) = bench(&["--scenario", "baseline,submit"]);
    let report = report(&output);
    let baseline = scenario(&report, "baseline");
    assert!(baseline["phases"][0]["count"].as_u64().expect("count") > 0);
    let submit = scenario(&report, "submit");
    assert_durable_submissions(submit);
    let ratio = submit["phases"][0]["ratio_to_baseline"]
        .as_f64()
        .expect("a ratio to the baseline");
    assert!(ratio > 0.0, "{ratio}");
    // Each broker's temporary data directory is removed when its scenario ends.
    let left: Vec<_> = std::fs::read_dir(work.path()).expect("work dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_bench_measures_a_given_broker_executable() {
    let (output, _work) = bench(&[
        "--scenario",
        "submit",
        "--broker",
        env!("CARGO_BIN_EXE_labaid-broker"),
    ]);
    assert_durable_submissions(scenario(&report(&output), "submit"));
}

#[test]
fn a_missing_broker_executable_is_a_usage_error_before_any_load() {
    let (output, _work) = bench(&["--broker", "/nonexistent/labaid-broker"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/labaid-broker"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// A production-style broker: the demo directory without demo tokens, TLS with client
/// certificates, one trust token, and limits that let a load through.
async fn tls_broker(dir: &std::path::Path, trust_token: &str) -> (TestBroker, devpki::DevPki) {
    let ods = |c: &str| OdsCode::parse(c).expect("ods");
    let pki = devpki::generate(dir, [ods("RJ1"), ods("RJ7")]).expect("dev pki");
    let mut config = Config::demo().expect("demo config");
    config.demo = false;
    config.tls = Some(labaid::config::TlsPaths {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    config.tokens = vec![TokenHash {
        org: ods("RJ1"),
        role: Role::Trust,
        sha256: token_digest(trust_token),
    }];
    config.limits.rate_per_second = 1_000_000;
    config.limits.burst = 1_000_000;
    // RJ7 alone, so that every offer goes to the lab the bench acts as.
    config.labs.retain(|lab| lab.ods == ods("RJ7"));
    (TestBroker::spawn_with(config).await, pki)
}

/// Runs the bench with `--addr` against `broker`, off the test's runtime (which serves the broker).
async fn bench_against(broker: &TestBroker, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let mut args = vec!["--addr".to_string(), broker.addr.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args)
    })
    .await
    .expect("bench thread")
}

#[tokio::test(flavor = "multi_thread")]
async fn with_addr_the_bench_drives_a_tls_broker_as_the_organisations_of_an_orgs_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = create_token(&OdsCode::parse("RJ1").expect("ods"), Role::Trust)
        .expect("token")
        .token;
    let (broker, pki) = tls_broker(dir.path(), &token).await;
    // The trust by its token over server-authenticated TLS; the lab by its client certificate,
    // named relative to the orgs file.
    let orgs = dir.path().join("orgs.toml");
    std::fs::write(
        &orgs,
        format!(
            "[[trust]]\nods = \"RJ1\"\ntoken = \"{token}\"\n\n\
             [[lab]]\nods = \"RJ7\"\ncert = \"RJ7.pem\"\nkey = \"RJ7.key\"\n"
        ),
    )
    .expect("orgs file");
    let (ca, orgs) = (pki.ca.display().to_string(), orgs.display().to_string());
    // RJ7's few places are offered at once: count them from the start.
    let (output, _work) = bench_against(
        &broker,
        &[
            "--ca",
            &ca,
            "--orgs",
            &orgs,
            "--scenario",
            "dispatch",
            "--warmup",
            "0s",
        ],
    )
    .await;
    let report = report(&output);
    let dispatch = scenario(&report, "dispatch");
    assert!(dispatch["phases"][0]["count"].as_u64().expect("count") > 0);
    assert_eq!(dispatch["errors"], 0, "{dispatch}");
    // Until its capacity is taken, RJ7 is offered what it performs, on its Work stream.
    let offered = &dispatch["phases"][1];
    assert_eq!(offered["name"], "offer delivered to the lab");
    assert!(offered["count"].as_u64().expect("count") > 0, "{dispatch}");
    // The work is the broker's: RJ7 holds jobs in flight there.
    let (status, metrics) = common::http_get(broker.ops_addr, "/metrics").await;
    assert_eq!(status, 200);
    let in_flight: f64 = common::scrape(&metrics)
        .samples
        .iter()
        .filter(|s| s.metric == "labaid_lab_in_flight" && s.labels.get("lab") == Some("RJ7"))
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .sum();
    assert!(in_flight > 0.0, "RJ7 holds no jobs: {metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_addr_refused_credentials_stop_the_bench_at_once_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, pki) = tls_broker(dir.path(), "labaid_the_real_token").await;
    let orgs = dir.path().join("orgs.toml");
    std::fs::write(
        &orgs,
        "[[trust]]\nods = \"RJ1\"\ntoken = \"labaid_wrong\"\n",
    )
    .expect("write");
    let (ca, orgs) = (pki.ca.display().to_string(), orgs.display().to_string());
    let started = std::time::Instant::now();
    let (output, _work) = bench_against(
        &broker,
        &["--ca", &ca, "--orgs", &orgs, "--scenario", "submit"],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refused RJ1's credentials"), "{stderr}");
    // Not the 60 s wait for a broker that is still starting.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn lab_scenarios_against_a_broker_need_a_lab_in_the_orgs_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orgs = dir.path().join("orgs.toml");
    std::fs::write(&orgs, "[[trust]]\nods = \"RJ1\"\ntoken = \"t\"\n").expect("write");
    let orgs = orgs.display().to_string();
    let (output, _work) = bench(&[
        "--addr",
        "127.0.0.1:1",
        "--orgs",
        &orgs,
        "--scenario",
        "submit,cycle",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("the cycle scenario needs"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_addr_alone_the_bench_acts_as_the_demo_organisations_of_a_demo_broker() {
    let broker = TestBroker::spawn().await;
    let (output, _work) = bench_against(&broker, &["--scenario", "submit"]).await;
    // The demo's limits (2,000 calls a second per organisation) answer the rest with
    // RESOURCE_EXHAUSTED, which the bench counts as errors: only acceptance is checked here.
    let report = report(&output);
    let submit = scenario(&report, "submit");
    assert!(
        submit["phases"][0]["count"].as_u64().expect("count") > 0,
        "{submit}"
    );
}

#[test]
fn a_client_certificate_without_ca_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orgs = dir.path().join("orgs.toml");
    std::fs::write(
        &orgs,
        "[[trust]]\nods = \"RJ1\"\ncert = \"RJ1.pem\"\nkey = \"RJ1.key\"\n",
    )
    .expect("write");
    let orgs = orgs.display().to_string();
    let (output, _work) = bench(&["--addr", "127.0.0.1:1", "--orgs", &orgs]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs TLS: add --ca"), "{stderr}");
}

#[test]
fn the_generated_directory_sizes_are_refused_with_addr() {
    for flag in ["--trusts", "--labs"] {
        let (output, _work) = bench(&["--addr", "127.0.0.1:1", flag, "3"]);
        assert_eq!(output.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot be used with"), "{flag}: {stderr}");
    }
    // Their defaults do not count against --addr: the tests above use --addr without them.
}
