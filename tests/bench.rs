//! The real `labaid-bench` binary: the broker it starts by default is this build's, served by the
//! bench's own executable (so `cargo run --bin labaid-bench` works on a clean checkout), and
//! `--broker` measures a given `labaid-broker` instead.

use std::process::{Command, Output};

use serde_json::Value;

fn bench(extra: &[&str]) -> (Output, tempfile::TempDir) {
    let work = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_labaid-bench"))
        .args([
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--json",
            "--work-dir",
        ])
        .arg(work.path())
        .args(extra)
        .output()
        .expect("labaid-bench runs");
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
