//! A retried `labctl requests submit`, through the real labctl binary against a real broker: a
//! relative `--collected-at` that moved with the clock answers the original request (exit 0,
//! "already submitted"); anything else that differs is refused (exit 4), naming the flags.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs labctl as trust RJ1 against `broker`; returns (exit code, stdout, stderr).
async fn labctl(broker: &TestBroker, args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
    cmd.args(args)
        .env_remove("LABAID_PROFILE")
        .env_remove("LABAID_CA")
        .env_remove("LABAID_CERT")
        .env_remove("LABAID_KEY")
        .env("LABAID_TOKEN", "demo:RJ1")
        .env("LABAID_ADDR", broker.url())
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .env("NO_COLOR", "1");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("labctl timed out")
    .expect("join")
    .expect("run labctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn submit_args<'a>(order: &'a str, tests: &'a str, collected: &'a str) -> Vec<&'a str> {
    vec![
        "requests",
        "submit",
        "--order-number",
        order,
        "--nhs-number",
        "9434765919",
        "--tests",
        tests,
        "--priority",
        "stat",
        "--collected-at",
        collected,
    ]
}

async fn requests_with_order(broker: &TestBroker, order: &str) -> usize {
    let trust = broker.client("RJ1").await;
    trust
        .list_requests(&[], &[], 1000)
        .await
        .expect("list")
        .iter()
        .filter(|r| r.order_number == order)
        .count()
}

#[tokio::test]
async fn a_retry_whose_relative_collection_time_moved_answers_the_original() {
    let broker = TestBroker::spawn().await;
    let (code, first, err) = labctl(&broker, &submit_args("RETRY-1", "K,UE", "-20m")).await;
    assert_eq!(code, 0, "{err}");
    let id = first.trim().to_string();
    // The retry runs later, so its -20m is a later time than the first one's: the broker alone
    // would refuse it as a different request.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (code, again, err) = labctl(&broker, &submit_args("RETRY-1", "UE,K", "-20m")).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(again.trim(), id, "the original request's id");
    assert!(err.contains("already submitted RETRY-1"), "{err}");

    let mut args = submit_args("RETRY-1", "K,UE", "-20m");
    args.extend(["-o", "json"]);
    let (code, json, err) = labctl(&broker, &args).await;
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(doc["replayed"], true);
    assert_eq!(doc["request"]["id"], id.as_str());
    assert_eq!(requests_with_order(&broker, "RETRY-1").await, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_retry_that_differs_in_anything_else_is_refused_naming_the_flags() {
    let broker = TestBroker::spawn().await;
    let (code, first, err) = labctl(&broker, &submit_args("RETRY-2", "K,UE", "-20m")).await;
    assert_eq!(code, 0, "{err}");
    let id = first.trim();

    // Other tests and another priority.
    let mut args = submit_args("RETRY-2", "K", "-20m");
    args[9] = "urgent";
    let (code, out, err) = labctl(&broker, &args).await;
    assert_eq!((code, out.as_str()), (4, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("labctl: order number RETRY-2"), "{err}");
    assert!(err.contains(id), "names the original: {err}");
    assert!(err.contains("differs in --tests, --priority;"), "{err}");

    // A relative time that moved back (-30m for -20m) is not what a later run computes.
    let (code, _, err) = labctl(&broker, &submit_args("RETRY-2", "K,UE", "-30m")).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("differs in --collected-at;"), "{err}");
    assert_eq!(requests_with_order(&broker, "RETRY-2").await, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn an_absolute_collection_time_must_match_exactly() {
    let broker = TestBroker::spawn().await;
    let at = |minutes: i64| {
        let t = broker.now().plus_minutes(-minutes).millis() / 1000;
        // RFC 3339 in UTC from the Unix time, as labctl reads it.
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (y, m, d) = civil(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    };
    let (first_at, later_at) = (at(20), at(19));
    let (code, _, err) = labctl(&broker, &submit_args("RETRY-3", "K", &first_at)).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = labctl(&broker, &submit_args("RETRY-3", "K", &first_at)).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already submitted"), "{err}");
    let (code, _, err) = labctl(&broker, &submit_args("RETRY-3", "K", &later_at)).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("differs in --collected-at;"), "{err}");
    broker.shutdown().await;
}

/// Days since 1970-01-01 as (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
