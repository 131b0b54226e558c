//! `labctl coordinator`, black-box: the real binary against a real broker on an ephemeral port,
//! with the exit codes of `labctl --help` and `--output json`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use labaid::proto::{self, Priority};
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code; stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        if code != 0 {
            let lines: Vec<&str> = self.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "one line of error: {:?}", self.stderr);
            assert!(lines[0].starts_with("labctl: "), "{:?}", self.stderr);
        }
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs labctl with a clean environment and `token`, against `broker`.
async fn labctl(broker: &TestBroker, home: &Path, token: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
    cmd.args(args)
        .env_remove("LABAID_PROFILE")
        .env_remove("LABAID_CA")
        .env_remove("LABAID_CERT")
        .env_remove("LABAID_KEY")
        .env("LABAID_ADDR", broker.url())
        .env("LABAID_TOKEN", token)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("NO_COLOR", "1");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("labctl timed out")
    .expect("join")
    .expect("run labctl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

const COORD: &str = "demo:coordinator";

#[tokio::test]
async fn a_coordinator_sees_the_network_and_takes_a_stranded_job_from_a_dark_lab() {
    let broker = TestBroker::spawn().await;
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let trust = broker.client("RJ1").await;
    let r = submit(
        &trust,
        submission("CLI-COORD-1", Priority::Stat, broker.now()),
    )
    .await;

    // The overview counts the open offer; labs lists every lab and test.
    let o = labctl(
        &broker,
        home,
        COORD,
        &["coordinator", "overview", "-o", "json"],
    )
    .await;
    let o = o.expect(0).json();
    assert_eq!(o["offers_open"], 1);
    assert_eq!(o["queues"][0]["priority"], "stat");
    assert_eq!(o["labs"].as_array().unwrap().len(), 6);
    let table = labctl(&broker, home, COORD, &["coordinator", "overview"]).await;
    assert!(
        table.expect(0).stdout.contains("Open offers: 1"),
        "{}",
        table.stdout
    );
    let labs = labctl(&broker, home, COORD, &["coordinator", "labs", "-o", "json"]).await;
    let labs = labs.expect(0).json();
    let held = labs["labs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ods"] == r.lab.as_str())
        .expect("the lab holding the offer");
    let k = held["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["test"] == "K")
        .unwrap();
    assert_eq!(k["in_flight"], 1);

    // The lab accepts, then stops answering: the coordinator marks it offline, with a reason.
    let lab = broker.client(&r.lab).await;
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .unwrap();
    let set = labctl(
        &broker,
        home,
        COORD,
        &[
            "coordinator",
            "set-status",
            &r.lab,
            "offline",
            "--reason",
            "no answer since 04:00",
            "-o",
            "json",
        ],
    )
    .await;
    let set = set.expect(0).json();
    assert_eq!(set["lab"], r.lab.as_str());
    assert_eq!(set["status"], "offline");
    let o = labctl(
        &broker,
        home,
        COORD,
        &["coordinator", "overview", "-o", "json"],
    )
    .await;
    let o = o.expect(0).json();
    assert_eq!(o["stranded"][0]["id"], r.id.as_str());

    // The stranded job is reassigned: offered to another lab.
    let moved = labctl(
        &broker,
        home,
        COORD,
        &[
            "coordinator",
            "reassign",
            &r.id,
            "--reason",
            "lab offline before the sample arrived",
        ],
    )
    .await;
    assert!(
        moved
            .expect(0)
            .stdout
            .contains("reassigned: now offered to"),
        "{}",
        moved.stdout
    );
    let now = get_request(&trust, &r.id).await;
    assert_ne!(now.lab, r.lab);
    assert_eq!(now.state, proto::RequestState::Offered as i32);

    // Both decisions are in the audit trail with their reasons.
    let audit = std::fs::read_to_string(broker.data_dir.join("audit.log")).unwrap_or_default();
    let mut waited = 0;
    let mut audit = audit;
    while !audit.contains("lab offline before the sample arrived") && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
        audit = std::fs::read_to_string(broker.data_dir.join("audit.log")).unwrap_or_default();
    }
    assert!(
        audit.contains("\"action\":\"coordinator.lab_status\""),
        "{audit}"
    );
    assert!(audit.contains("no answer since 04:00"), "{audit}");
    assert!(
        audit.contains("lab offline before the sample arrived"),
        "{audit}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn coordinator_commands_fail_with_the_documented_exit_codes() {
    let broker = TestBroker::spawn().await;
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let args = |lab: &'static str| {
        [
            "coordinator",
            "set-status",
            lab,
            "draining",
            "--reason",
            "test",
        ]
    };

    // Usage (2): no reason (clap's own message), a blank one, a malformed id, an unknown status;
    // nothing is sent.
    let missing = labctl(
        &broker,
        home,
        COORD,
        &["coordinator", "set-status", "RJ7", "offline"],
    )
    .await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("--reason"), "{}", missing.stderr);
    labctl(
        &broker,
        home,
        COORD,
        &[
            "coordinator",
            "set-status",
            "RJ7",
            "offline",
            "--reason",
            " ",
        ],
    )
    .await
    .expect(2);
    labctl(
        &broker,
        home,
        COORD,
        &["coordinator", "reassign", "not-an-id", "--reason", "x"],
    )
    .await
    .expect(2);
    let status = labctl(
        &broker,
        home,
        COORD,
        &[
            "coordinator",
            "set-status",
            "RJ7",
            "sleeping",
            "--reason",
            "x",
        ],
    )
    .await;
    assert_eq!(status.code, 2, "{}", status.stderr);
    // Not found (3): an unknown lab, an unknown job.
    labctl(&broker, home, COORD, &args("RXX")).await.expect(3);
    labctl(
        &broker,
        home,
        COORD,
        &[
            "coordinator",
            "reassign",
            "0190f3a2-7c1e-7b3a-9d2f-3a4b5c6d7e8f",
            "--reason",
            "x",
        ],
    )
    .await
    .expect(3);
    // Conflict (4): only an accepted job can be reassigned.
    let trust = broker.client("RJ1").await;
    let r = submit(
        &trust,
        submission("CLI-COORD-2", Priority::Stat, broker.now()),
    )
    .await;
    labctl(
        &broker,
        home,
        COORD,
        &["coordinator", "reassign", &r.id, "--reason", "x"],
    )
    .await
    .expect(4);
    // Denied (6): a trust's or a lab's token, or none that the broker knows.
    labctl(&broker, home, "demo:RJ1", &args("RJ7"))
        .await
        .expect(6);
    labctl(&broker, home, "demo:RJ7", &["coordinator", "overview"])
        .await
        .expect(6);
    labctl(&broker, home, "nonsense", &["coordinator", "labs"])
        .await
        .expect(6);
    // Nothing changed: every lab is still online.
    let labs = labctl(&broker, home, COORD, &["coordinator", "labs", "-o", "json"]).await;
    let labs = labs.expect(0).json();
    assert!(
        labs["labs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["status"] == "online")
    );
    // Unavailable (5): no broker there.
    let gone = broker.url();
    broker.shutdown().await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
    let out = cmd
        .args(["coordinator", "overview"])
        .env("LABAID_ADDR", gone)
        .env("LABAID_TOKEN", COORD)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("LABAID_PROFILE")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
