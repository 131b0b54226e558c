//! The audit trail: every patient read and state change recorded in an intact chain, tampering
//! caught and named, a failed trail refusing changes before they are made, and no patient
//! identifier in the logs or the trail. Under volume and failure: a list call is one compact
//! entry, audit volume is limited per organisation, the trail rotates into files that verify
//! together, a broker below its free-space floor refuses new work, and every acknowledged call
//! survives a SIGKILL of the real broker process in an intact chain (a change's record completed
//! from the journal at the next start when the kill kept it from the trail's file).

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::BrokerProcess;
use common::{
    TestBroker, all_requests, http_get, k_result, log_capture, next, sample, submission, submit,
    watch_request_events,
};
use labaid::Config;
use labaid::audit::{AUDIT_FILE, AuditEntry, Verdict};
use labaid::client::Client;
use labaid::domain::Timestamp;
use labaid::proto::{self, Priority};
use tokio::task::JoinSet;
use tonic::Code;

/// Every entry of the trail in `dir`, across its files, once verified.
fn entries(dir: &Path) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    let verdict = labaid::audit::export(dir, &mut out, None).unwrap();
    assert!(matches!(verdict, Verdict::Intact { .. }), "{verdict:?}");
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Bytes in the trail's files.
fn trail_bytes(dir: &Path) -> u64 {
    labaid::audit::chain_files(dir)
        .unwrap()
        .iter()
        .map(|f| std::fs::metadata(&f.path).unwrap().len())
        .sum()
}

/// Runs `labaid-broker audit ARGS --data-dir DIR`: exit code, stdout and stderr.
fn audit_cli(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn submit_many(trust: &Client, prefix: &str, n: usize, now: Timestamp) -> Vec<String> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let trust = trust.clone();
        let sub = submission(&format!("{prefix}-{i}"), Priority::Routine, now);
        set.spawn(async move { submit(&trust, sub).await.id });
    }
    let mut ids = Vec::new();
    while let Some(id) = set.join_next().await {
        ids.push(id.unwrap());
    }
    ids
}

async fn list(trust: &Client, page_size: u32) -> Result<Vec<String>, tonic::Status> {
    let page = trust
        .requests()
        .list_requests(proto::ListRequestsRequest {
            page_size,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page.requests.into_iter().map(|r| r.id).collect())
}

#[tokio::test]
async fn a_list_of_a_thousand_requests_is_one_compact_audit_entry() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    let broker = TestBroker::spawn_with(config).await;
    let trust = broker.client("RJ1").await;
    let ids = submit_many(&trust, "BULK", 1000, broker.now()).await;
    let listed = list(&trust, 1000).await.unwrap();
    assert_eq!(listed.len(), 1000);
    broker.shutdown().await;
    let data_dir = data.path();
    // Its line, measured in the trail: the submissions' lines are written beside the calls.
    let trail = std::fs::read_to_string(data_dir.join(labaid::audit::AUDIT_FILE)).unwrap();
    let line = trail
        .lines()
        .find(|l| l.contains("\"request.list\""))
        .expect("the list call's entry");
    eprintln!(
        "audit bytes for one ListRequests(page_size=1000): {}",
        line.len() + 1
    );
    // One quoted id and a comma each, and one entry's fields and hashes.
    assert!(line.len() < 1000 * 39 + 400, "{} bytes", line.len());
    let all = entries(data_dir);
    let lists: Vec<&AuditEntry> = all.iter().filter(|e| e.action == "request.list").collect();
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].request_ids.as_deref(), Some(&listed[..]));
    assert_eq!(
        (lists[0].org.as_str(), lists[0].role.as_str()),
        ("RJ1", "trust")
    );
    // "Who saw request X" finds the list that showed it.
    let (code, out, err) = audit_cli(&["export", "--request", &ids[17].to_uppercase()], data_dir);
    assert_eq!(code, 0, "{err}");
    let found: Vec<AuditEntry> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = found.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["request.submit", "request.list"], "{out}");
}

#[tokio::test]
async fn an_organisation_over_its_audit_volume_is_refused_while_another_is_served() {
    let mut config = Config::demo().unwrap();
    config.limits.audit_bytes_per_second = 1;
    config.limits.audit_burst_bytes = 64 * 1024;
    let broker = TestBroker::spawn_with(config).await;
    let (rj1, rjz) = (broker.client("RJ1").await, broker.client("RJZ").await);
    submit_many(&rj1, "A", 100, broker.now()).await;
    submit_many(&rjz, "B", 100, broker.now()).await;
    // 100 submissions and then pages of 100 ids: the burst is spent within a few dozen calls.
    let mut served = 0;
    let refused = loop {
        match list(&rj1, 100).await {
            Ok(_) => served += 1,
            Err(status) => break status,
        }
        assert!(served < 100, "never refused");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("audit volume"),
        "{}",
        refused.message()
    );
    let before = trail_bytes(&broker.data_dir);
    assert_eq!(
        list(&rj1, 100).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert_eq!(
        trail_bytes(&broker.data_dir),
        before,
        "a refused read was recorded"
    );
    assert_eq!(list(&rjz, 100).await.unwrap().len(), 100);
    // The budget refills with the broker's clock.
    broker.advance(Duration::from_secs(10_000));
    assert_eq!(list(&rj1, 100).await.unwrap().len(), 100);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_small_rotation_size_makes_several_files_that_verify_together() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    config.audit.rotate_bytes = 4096;
    let broker = TestBroker::spawn_with(config.clone()).await;
    let trust = broker.client("RJ1").await;
    let ids = submit_many(&trust, "ROT", 40, broker.now()).await;
    for id in &ids {
        common::get_request(&trust, id).await;
    }
    broker.shutdown().await;
    // A restart finds the chain's end in the newest file and carries on.
    let broker = TestBroker::spawn_with(config).await;
    let trust = broker.client("RJ1").await;
    assert_eq!(list(&trust, 1000).await.unwrap().len(), 40);
    broker.shutdown().await;

    let files = labaid::audit::chain_files(data.path()).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    let (code, _, said) = audit_cli(&["verify"], data.path());
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!("81 entries in {} files", files.len())),
        "{said}"
    );
    // Removing a middle file is caught and the file after the gap named.
    std::fs::remove_file(&files[1].path).unwrap();
    let (code, _, said) = audit_cli(&["verify"], data.path());
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(&files[2].name()) && said.contains("missing"),
        "{said}"
    );
}

#[tokio::test]
async fn below_the_free_space_floor_new_work_is_refused_and_nothing_changes() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    // No disk has this much free: the floor is crossed without filling the real one.
    config.min_free_bytes = u64::MAX;
    let broker = TestBroker::spawn_with(config.clone()).await;
    let trust = broker.client("RJ1").await;
    let err = trust
        .requests()
        .submit_request(submission("FLOOR-1", Priority::Stat, broker.now()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("the broker's disk is below its free-space floor"),
        "{}",
        err.message()
    );
    // An empty list reads nothing and writes nothing, so it is served.
    assert!(list(&trust, 10).await.unwrap().is_empty());
    let (_, metrics) = http_get(broker.ops_addr, "/metrics").await;
    assert_eq!(
        sample(&metrics, "labaid_data_dir_free_floor_bytes"),
        i64::MAX as f64
    );
    assert!(sample(&metrics, "labaid_data_dir_free_bytes") > 0.0);
    broker.shutdown().await;
    assert_eq!(trail_bytes(data.path()), 0, "a refused call was audited");

    config.min_free_bytes = 1;
    let broker = TestBroker::spawn_with(config).await;
    let trust = broker.client("RJ1").await;
    assert!(
        list(&trust, 10).await.unwrap().is_empty(),
        "a refused submission was kept"
    );
    submit(&trust, submission("FLOOR-1", Priority::Stat, broker.now())).await;
    broker.shutdown().await;
}

/// A call the broker answered OK: what the trail must hold for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Acked {
    One(&'static str, &'static str, String),
    List(&'static str, Vec<String>),
}

/// Submits, reads back and now and then lists, recording every OK answer, until a call fails
/// (the broker was killed).
async fn worker(client: Client, org: &'static str, tag: String, acked: Arc<Mutex<Vec<Acked>>>) {
    for n in 0.. {
        let sub = submission(&format!("{tag}-{n}"), Priority::Routine, Timestamp::now());
        let Ok(reply) = client.requests().submit_request(sub).await else {
            return;
        };
        let id = reply.into_inner().request.expect("request").id;
        acked
            .lock()
            .unwrap()
            .push(Acked::One(org, "request.submit", id.clone()));
        let get = proto::GetRequestRequest { id: id.clone() };
        if client.requests().get_request(get).await.is_err() {
            return;
        }
        acked
            .lock()
            .unwrap()
            .push(Acked::One(org, "request.get", id));
        if n % 4 == 3 {
            let Ok(ids) = list(&client, 25).await else {
                return;
            };
            acked.lock().unwrap().push(Acked::List(org, ids));
        }
    }
}

#[tokio::test]
async fn every_acknowledged_call_is_in_the_trail_after_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    for cycle in 0..3 {
        let broker = BrokerProcess::start(data.path(), &[]);
        let mut workers = JoinSet::new();
        for (w, org) in ["RJ1", "RJZ", "RJ1", "RJZ"].into_iter().enumerate() {
            let client = broker.client(org).await;
            workers.spawn(worker(
                client,
                org,
                format!("KILL{cycle}-{w}"),
                acked.clone(),
            ));
        }
        // Kill right after a reply: once this cycle's calls pass a count that varies by cycle.
        let target = acked.lock().unwrap().len() + 150 + 70 * cycle;
        let mut waited = 0;
        while acked.lock().unwrap().len() < target {
            assert!(waited < 30_000, "the workers stalled before the kill");
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
        drop(broker);
        while workers.join_next().await.is_some() {}
    }
    // A start completes the trail from the journal before it serves: a change's record the kill
    // kept from the file is in the journal with the change.
    drop(BrokerProcess::start(data.path(), &[]));

    let trail = entries(data.path());
    let ones: HashSet<(&str, &str, &str)> = trail
        .iter()
        .filter_map(|e| Some((e.org.as_str(), e.action.as_str(), e.request_id.as_deref()?)))
        .collect();
    let lists: HashSet<(&str, &[String])> = trail
        .iter()
        .filter(|e| e.action == "request.list")
        .filter_map(|e| Some((e.org.as_str(), e.request_ids.as_deref()?)))
        .collect();
    let acked = acked.lock().unwrap();
    for call in acked.iter() {
        let held = match call {
            Acked::One(org, action, id) => ones.contains(&(*org, *action, id.as_str())),
            Acked::List(_, ids) if ids.is_empty() => true,
            Acked::List(org, ids) => lists.contains(&(*org, &ids[..])),
        };
        assert!(held, "acknowledged but not in the audit trail: {call:?}");
    }
    let (code, _, said) = audit_cli(&["verify"], data.path());
    assert_eq!(code, 0, "{said}");
    eprintln!(
        "{} acknowledged calls over 3 kills, all audited; {said}",
        acked.len()
    );
}

/// Distinctive patient identifiers, searched for in logs and the audit trail.
const NHS: &str = "6541003238";
const FAMILY: &str = "Quillfeather";
const GIVEN: &str = "Ottoline";
const BIRTH: &str = "1961-07-23";

/// A request's whole life, plus a cancellation and some refused calls; returns the request ids.
async fn walkthrough(broker: &TestBroker) -> Vec<String> {
    let trust = broker.client("RJ1").await;
    let mut events = watch_request_events(&trust).await;
    let mut sub = submission("WALK-1", Priority::Stat, broker.now());
    sub.patient = Some(proto::Patient {
        nhs_number: NHS.into(),
        family_name: FAMILY.into(),
        given_name: GIVEN.into(),
        birth_date: BIRTH.into(),
    });
    let r = submit(&trust, sub.clone()).await;
    let lab = broker.client(&r.lab).await;
    lab.labs()
        .get_job(proto::GetJobRequest { id: r.id.clone() })
        .await
        .unwrap();
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .unwrap();
    lab.labs()
        .get_job(proto::GetJobRequest { id: r.id.clone() })
        .await
        .unwrap();
    lab.labs()
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap();
    lab.labs()
        .receive_sample(proto::ReceiveSampleRequest { id: r.id.clone() })
        .await
        .unwrap();
    lab.labs()
        .post_results(proto::PostResultsRequest {
            id: r.id.clone(),
            observations: vec![k_result("4.1")],
        })
        .await
        .unwrap();
    let _ = next(&mut events).await;
    trust
        .requests()
        .get_request(proto::GetRequestRequest { id: r.id.clone() })
        .await
        .unwrap();
    trust
        .requests()
        .list_requests(proto::ListRequestsRequest::default())
        .await
        .unwrap();
    let mut second = sub.clone();
    second.order_number = "WALK-2".into();
    let r2 = submit(&trust, second).await;
    trust
        .requests()
        .cancel_request(proto::CancelRequestRequest {
            id: r2.id.clone(),
            reason: "duplicate".into(),
        })
        .await
        .unwrap();
    // Refused calls: their errors must not echo the patient either.
    let mut bad = sub.clone();
    bad.order_number = "WALK-3".into();
    bad.patient.as_mut().unwrap().nhs_number = "6541003239".into();
    bad.patient.as_mut().unwrap().birth_date = "2999-99-99".into();
    let err = trust.requests().submit_request(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut same_order = sub.clone();
    same_order.tests = vec!["FBC".into()];
    let err = trust
        .requests()
        .submit_request(same_order)
        .await
        .unwrap_err();
    for text in [err.message().to_string(), format!("{err:?}")] {
        for secret in [NHS, "6541003239", FAMILY, GIVEN, BIRTH, "2999-99-99"] {
            assert!(!text.contains(secret), "error text holds {secret}: {text}");
        }
    }
    vec![r.id, r2.id]
}

#[tokio::test]
async fn no_patient_identifier_reaches_the_logs_at_debug_level_or_the_audit_trail() {
    let logs = log_capture();
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    let broker = TestBroker::spawn_with(config).await;
    let ids = walkthrough(&broker).await;
    broker.shutdown().await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        text.contains("request submitted") && text.contains(&ids[0]),
        "the capture saw the walkthrough"
    );
    assert!(text.contains("DEBUG"), "debug level was on");
    let audit = std::fs::read_to_string(data.path().join(AUDIT_FILE)).unwrap();
    for secret in [NHS, "6541003239", FAMILY, GIVEN, BIRTH, "2999-99-99"] {
        assert!(!text.contains(secret), "the logs hold {secret}");
        assert!(!audit.contains(secret), "the audit log holds {secret}");
    }
}

#[tokio::test]
async fn every_patient_read_and_state_change_is_audited_in_an_intact_chain() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    let broker = TestBroker::spawn_with(config).await;
    let ids = walkthrough(&broker).await;
    broker.shutdown().await;
    let path = data.path().join(AUDIT_FILE);
    let entries: Vec<labaid::audit::AuditEntry> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, Option<&str>)> = entries
        .iter()
        .map(|e| (e.action.as_str(), e.request_id.as_deref()))
        .collect();
    let first = Some(ids[0].as_str());
    for expected in [
        ("request.watch", None),
        ("request.submit", first),
        ("job.accept", first),
        ("job.get", first),
        ("job.receive", first),
        ("job.results", first),
        ("request.get", first),
        ("request.cancel", Some(ids[1].as_str())),
    ] {
        assert!(
            actions.contains(&expected),
            "{expected:?} missing from {actions:?}"
        );
    }
    // A list call is one entry naming every request it returned.
    for list in ["job.list", "request.list"] {
        assert!(
            entries
                .iter()
                .any(|e| e.action == list && e.request_id.is_none() && e.concerns(&ids[0])),
            "no {list} entry naming {}",
            ids[0]
        );
    }
    // Only one job.get: the read before acceptance showed no patient, so it is not audited.
    assert_eq!(actions.iter().filter(|a| a.0 == "job.get").count(), 1);
    let accept = entries.iter().find(|e| e.action == "job.accept").unwrap();
    assert_eq!(accept.role, "lab");
    assert!(matches!(
        labaid::audit::verify(data.path()).unwrap(),
        Verdict::Intact { entries: n, .. } if n == entries.len() as u64
    ));
}

/// Runs `labaid-broker audit verify --data-dir DIR`; returns the exit code and stderr.
fn audit_verify_cli(dir: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn rewrite(dir: &Path, original: &[String], edit: impl FnOnce(&mut Vec<String>)) {
    let mut lines = original.to_vec();
    edit(&mut lines);
    let mut f = std::fs::File::create(dir.join(AUDIT_FILE)).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

#[tokio::test]
async fn an_edited_deleted_or_reordered_audit_entry_is_caught_and_named() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    let broker = TestBroker::spawn_with(config).await;
    walkthrough(&broker).await;
    broker.shutdown().await;
    let original: Vec<String> = std::fs::read_to_string(data.path().join(AUDIT_FILE))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(original.len() >= 6);
    let (code, said) = audit_verify_cli(data.path());
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("intact"), "{said}");

    // Edit: the third entry claims another organisation.
    rewrite(data.path(), &original, |l| {
        l[2] = l[2].replacen("\"org\":\"", "\"org\":\"X", 1);
    });
    let (code, said) = audit_verify_cli(data.path());
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("line 3") && said.contains("edited"), "{said}");

    // Delete the third entry.
    rewrite(data.path(), &original, |l| {
        l.remove(2);
    });
    let (code, said) = audit_verify_cli(data.path());
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("line 3"), "{said}");

    // Swap the fourth and fifth.
    rewrite(data.path(), &original, |l| l.swap(3, 4));
    let (code, said) = audit_verify_cli(data.path());
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("line 4"), "{said}");

    // Rewriting an entry and recomputing its own hash still breaks the next link.
    rewrite(data.path(), &original, |l| {
        let mut e: labaid::audit::AuditEntry = serde_json::from_str(&l[1]).unwrap();
        e.org = "RJZ".into();
        e.hash = e.compute_hash();
        l[1] = serde_json::to_string(&e).unwrap();
    });
    let (code, said) = audit_verify_cli(data.path());
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("line 3"), "{said}");

    // Export writes the verified entries as JSON lines.
    rewrite(data.path(), &original, |_| {});
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
        .args(["audit", "export", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        original.len()
    );
}

/// The audit trail cannot be written (its file is /dev/full, so every write fails with ENOSPC):
/// audited calls answer UNAVAILABLE, a submission is refused before it is decided, and a restart
/// with a writable trail shows that nothing was made durable.
#[tokio::test]
async fn a_failed_audit_trail_refuses_changes_before_they_are_made() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join(AUDIT_FILE)).unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let broker = TestBroker::spawn_with(config.clone()).await;
    let mut coord = broker.client("coordinator").await.coordinator();
    let read = coord.get_overview(proto::GetOverviewRequest {}).await;
    assert_eq!(read.unwrap_err().code(), Code::Unavailable);

    let trust = broker.client("RJ1").await;
    let err = trust
        .requests()
        .submit_request(submission("ORD-UNAUDITED", Priority::Stat, broker.now()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("audit"), "{}", err.message());
    broker.shutdown().await;

    std::fs::remove_file(dir.path().join(AUDIT_FILE)).unwrap();
    let broker = TestBroker::spawn_with(config).await;
    let trust = broker.client("RJ1").await;
    assert!(
        all_requests(&trust).await.is_empty(),
        "a refused submission was made durable"
    );
    broker.shutdown().await;
}
