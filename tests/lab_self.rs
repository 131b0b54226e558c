//! A lab knows who it is: WhoAmI returns the calling lab's organisation, role, status, capacity
//! and jobs in flight per test, and `labctl status` and `labctl capacity show` use it.

mod common;

use std::process::Command;

use common::*;
use labaid::proto::{self, Priority};
use serde_json::Value;
use tonic::Code;

/// Runs labctl with `token` against `broker` (on a blocking thread: the broker shares this
/// runtime); returns (exit code, stdout, stderr).
async fn labctl(broker: &TestBroker, token: &str, args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
    cmd.args(args)
        .env_remove("LABAID_PROFILE")
        .env_remove("LABAID_CA")
        .env_remove("LABAID_CERT")
        .env_remove("LABAID_KEY")
        .env("LABAID_TOKEN", token)
        .env("LABAID_ADDR", broker.url())
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .env("NO_COLOR", "1");
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run labctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn who_am_i_answers_the_calling_lab_with_its_work_in_flight_per_test() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    // A stat potassium goes to R1H first (see the README's walk-through).
    let r = submit(&trust, submission("SELF-1", Priority::Stat, broker.now())).await;
    assert_eq!(r.lab, "R1H");
    let lab = broker.client("R1H").await;
    let me = lab
        .labs()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("who am i")
        .into_inner();
    assert_eq!(me.organisation, "R1H");
    assert_eq!(me.role, "lab");
    assert!(!me.name.is_empty());
    assert_eq!(me.status, proto::LabStatus::Online as i32);
    let k = me.tests.iter().find(|t| t.test == "K").expect("R1H runs K");
    assert_eq!(k.in_flight, 1);
    // The same figures GetCapacity gives.
    let capacity = lab
        .labs()
        .get_capacity(proto::GetCapacityRequest {})
        .await
        .expect("capacity")
        .into_inner();
    assert_eq!(capacity.tests, me.tests);

    // Draining shows.
    lab.labs()
        .set_status(proto::SetStatusRequest {
            status: proto::LabStatus::Draining as i32,
        })
        .await
        .expect("drain");
    let me = lab
        .labs()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("who am i")
        .into_inner();
    assert_eq!(me.status, proto::LabStatus::Draining as i32);

    // A trust is no lab.
    let err = trust
        .labs()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect_err("a trust");
    assert_eq!(err.code(), Code::PermissionDenied);
    broker.shutdown().await;
}

#[tokio::test]
async fn labctl_status_and_capacity_show_name_the_lab_from_who_am_i() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    submit(&trust, submission("SELF-2", Priority::Stat, broker.now())).await;

    let (code, out, err) = labctl(&broker, "demo:R1H", &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("R1H ("), "{out}");
    assert!(out.trim_end().ends_with(") is online"), "{out}");
    let (code, out, err) = labctl(&broker, "demo:R1H", &["status", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (doc["lab"].as_str(), doc["role"].as_str()),
        (Some("R1H"), Some("lab"))
    );
    assert_eq!(doc["status"], "online");

    let (code, out, err) = labctl(&broker, "demo:R1H", &["capacity", "show", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["lab"], "R1H");
    assert_eq!(doc["status"], "online");
    let k = doc["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .find(|t| t["test"] == "K")
        .expect("K");
    assert_eq!(k["in_flight"], 1);
    let (code, out, _) = labctl(&broker, "demo:R1H", &["capacity", "show"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("Capacity of R1H ("), "{out}");
    assert!(
        out.lines().next().unwrap_or("").ends_with(", online)"),
        "{out}"
    );

    // A trust's token: not permitted (exit 6), one line.
    let (code, _, err) = labctl(&broker, "demo:RJ1", &["status"]).await;
    assert_eq!(code, 6, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    broker.shutdown().await;
}
