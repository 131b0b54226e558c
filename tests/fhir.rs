//! The FHIR R4 facade, end to end: a real broker, the real `labaid-edge` binary, and an
//! independent FHIR client (`tests/fhir/fhir_client.py`, built on the Python `fhir.resources`
//! R4B models) that builds every request and parses every answer. The lab's side is the real
//! `labctl`. Python with fhir.resources is required: without it these tests fail, never skip
//! (`.ci/run` installs it).

mod common;
#[path = "hl7/harness.rs"]
#[allow(dead_code)] // tests/hl7.rs uses the rest
mod harness;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::TestBroker;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Patient data in the fixtures, which must never reach a log line.
const PATIENT_DATA: &[&str] = &[
    "9434765919",
    "6541003238",
    "654 100 3238",
    "Testpatient",
    "1970-01-01",
    "1985-04-12",
];

fn require_fhir_resources() {
    let ok = Command::new("python3")
        .args(["-c", "import fhir.resources.R4B.bundle"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with fhir.resources is required for the FHIR tests: pip install fhir.resources"
    );
}

/// A running `labaid-edge`, its JSON log lines collected.
struct Edge {
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

impl Edge {
    fn spawn(broker: &str, extra: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        // The facade alone: no MLLP listener, and no token of the edge's own.
        let mut child = Command::new(env!("CARGO_BIN_EXE_labaid-edge"))
            .args(["--addr", broker, "--fhir-listen", "127.0.0.1:0"])
            .args(["--mllp-listen", "off", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "debug")
            .env_remove("LABAID_TOKEN")
            .env("LABAID_PROFILE", "")
            .env("XDG_CONFIG_HOME", data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start labaid-edge");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (listening, listen) = mpsc::channel();
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v.get("fhir.listen").and_then(|a| a.as_str())
                {
                    let tls = v.get("fhir.tls").and_then(serde_json::Value::as_bool) == Some(true);
                    let _ =
                        listening.send(format!("{}://{addr}", if tls { "https" } else { "http" }));
                }
                kept.lock().unwrap().push(line);
            }
        });
        let base = listen
            .recv_timeout(Duration::from_secs(60))
            .expect("labaid-edge did not start listening");
        Self {
            child,
            base,
            logs,
            _data: data,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let status = self.child.wait().expect("wait");
        // The reader thread ends with the pipe; give it a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let logs = self.logs.lock().unwrap().clone();
        (status, logs)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a scenario of the Python FHIR client; it must succeed. Returns its output.
async fn python(
    edge: &Edge,
    broker: &str,
    scenario: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let mut command = Command::new("python3");
    command
        .arg(format!("{ROOT}/tests/fhir/fhir_client.py"))
        .arg(scenario)
        .args(args)
        .env("FHIR_BASE", &edge.base)
        .env("FIXTURES", format!("{ROOT}/tests/fixtures/fhir"))
        .env("LABCTL", env!("CARGO_BIN_EXE_labctl"))
        .env("LABAID_ADDR", broker);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "FHIR client scenario {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_orders_over_fhir_and_follows_the_task_to_its_report() {
    require_fhir_resources();
    let broker = TestBroker::spawn().await;
    let edge = Edge::spawn(&broker.url(), &[]);
    let out = python(&edge, &broker.url(), "life_cycle", &[], &[]).await;
    let ids = out
        .lines()
        .find_map(|l| l.strip_prefix("ids "))
        .expect("the scenario prints the ids");
    let first = ids.split_whitespace().next().unwrap().to_string();
    assert!(out.contains("ok: critical high: HH"), "{out}");
    assert!(
        out.contains("ok: Task in-progress once the sample arrived"),
        "{out}"
    );

    // Need-to-know: another trust, a lab, no token and a bad token.
    python(&edge, &broker.url(), "need_to_know", &[&first], &[]).await;

    // Graceful stop, JSON logs, and no patient data in them (at debug level).
    let (status, logs) = edge.stop();
    assert!(status.success(), "labaid-edge exited with {status}");
    assert!(logs.iter().any(|l| l.contains("FHIR facade stopped")));
    for line in &logs {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for secret in PATIENT_DATA {
            assert!(!line.contains(secret), "patient data in a log line: {line}");
        }
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fhir_inputs_get_operation_outcomes_and_change_nothing() {
    require_fhir_resources();
    let broker = TestBroker::spawn().await;
    let edge = Edge::spawn(&broker.url(), &[]);
    let out = python(&edge, &broker.url(), "bad_inputs", &[], &[]).await;
    assert!(out.contains("ok: no bad input created a request"), "{out}");
    let (_, logs) = edge.stop();
    for line in &logs {
        for secret in PATIENT_DATA {
            assert!(!line.contains(secret), "patient data in a log line: {line}");
        }
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_answers_503_while_the_broker_is_down() {
    require_fhir_resources();
    let broker = TestBroker::spawn().await;
    let url = broker.url();
    let edge = Edge::spawn(&url, &[]);
    broker.shutdown().await;
    let id = uuid::Uuid::now_v7().to_string();
    python(&edge, &url, "unavailable", &[&id], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fhir_listener_serves_https_with_a_certificate() {
    require_fhir_resources();
    let dir = tempfile::tempdir().unwrap();
    let pki = labaid::auth::devpki::generate(dir.path(), []).expect("dev PKI");
    let broker = TestBroker::spawn().await;
    let cert = pki.server_cert.to_str().unwrap();
    let key = pki.server_key.to_str().unwrap();
    let edge = Edge::spawn(
        &broker.url(),
        &["--fhir-tls-cert", cert, "--fhir-tls-key", key],
    );
    assert!(edge.base.starts_with("https://"), "{}", edge.base);
    let ca = pki.ca.to_str().unwrap();
    python(&edge, &broker.url(), "metadata", &[], &[("FHIR_CA", ca)]).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_tokens_are_forwarded_to_a_broker_on_tls_and_an_edge_with_a_certificate_serves_its_organisation()
 {
    require_fhir_resources();
    use labaid::auth::{Role, TokenHash, create_token, token_digest};
    let dir = tempfile::tempdir().unwrap();
    let demo = labaid::Config::demo().unwrap();
    let orgs: Vec<_> = demo
        .trusts
        .keys()
        .cloned()
        .chain(demo.labs.iter().map(|l| l.ods.clone()))
        .collect();
    let pki = labaid::auth::devpki::generate(dir.path(), orgs).expect("dev PKI");
    let token = |org: &str| {
        let ods = labaid::domain::OdsCode::parse(org).unwrap();
        let token = create_token(&ods, Role::Trust).unwrap().token;
        let entry = TokenHash {
            org: ods,
            role: Role::Trust,
            sha256: token_digest(&token),
        };
        (token, entry)
    };
    let ((rj1, rj1_entry), (rjz, rjz_entry)) = (token("RJ1"), token("RJZ"));
    // The demo directory as a production broker: mutual TLS or configured tokens.
    let mut config = demo;
    config.demo = false;
    config.tls = Some(labaid::config::TlsPaths {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    config.tokens = vec![rj1_entry, rjz_entry];
    let broker = TestBroker::spawn_with(config).await;
    let ca = pki.ca.to_str().unwrap();
    let tokens = [
        ("FHIR_TOKEN_RJ1", rj1.as_str()),
        ("FHIR_TOKEN_RJZ", rjz.as_str()),
    ];

    let edge = Edge::spawn(&broker.url(), &["--ca", ca]);
    let out = python(&edge, &broker.url(), "tls_broker", &[], &tokens).await;
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("ids "))
        .expect("the scenario prints the id")
        .to_string();

    let (cert, key) = pki.client("RJ1");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let rj1_edge = Edge::spawn(&broker.url(), &["--ca", ca, "--cert", cert, "--key", key]);
    python(&rj1_edge, &broker.url(), "single_org", &[&id], &tokens).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_fhir_callers_and_the_broker_keeps_need_to_know() {
    require_fhir_resources();
    use labaid::auth::{EdgeGrant, EdgeId, Role, TokenHash, create_token, token_digest};
    use labaid::domain::OdsCode;
    let ods = |o: &str| OdsCode::parse(o).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = labaid::auth::devpki::generate(dir.path(), [ods("RJ1"), ods("RJZ"), ods("R1H")])
        .expect("dev PKI");
    let edge_id = EdgeId::parse("gstt-fhir").unwrap();
    let (edge_cert, edge_key) = labaid::auth::devpki::issue_edge(dir.path(), &edge_id).unwrap();
    let rj1 = create_token(&ods("RJ1"), Role::Trust).unwrap().token;
    // A production broker that lets this edge speak for both trusts, and for no lab. Its data
    // directory outlives it, for reading its audit trail once it has stopped.
    let mut config = labaid::Config::demo().unwrap();
    config.data_dir = dir.path().join("data");
    config.demo = false;
    config.tls = Some(labaid::config::TlsPaths {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    config.tokens = vec![TokenHash {
        org: ods("RJ1"),
        role: Role::Trust,
        sha256: token_digest(&rj1),
    }];
    config.edges = vec![EdgeGrant {
        id: edge_id,
        speaks_for: [ods("RJ1"), ods("RJZ")].into(),
        sha256: None,
    }];
    let broker = TestBroker::spawn_with(config).await;
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, system) = (path(&pki.ca), "urn:oid:2.999.7.1");
    let edge = Edge::spawn(
        &broker.url(),
        &[
            "--ca",
            &ca,
            "--fhir-tls-cert",
            &path(&pki.server_cert),
            "--fhir-tls-key",
            &path(&pki.server_key),
            "--fhir-client-ca",
            &ca,
            "--fhir-edge-cert",
            &path(&edge_cert),
            "--fhir-edge-key",
            &path(&edge_key),
            "--fhir-catalogue-system",
            system,
        ],
    );
    let pki_dir = path(dir.path());
    let env = [
        ("FHIR_CA", ca.as_str()),
        ("FHIR_PKI", pki_dir.as_str()),
        ("FHIR_TOKEN_RJ1", rj1.as_str()),
        ("FHIR_CATALOGUE_SYSTEM", system),
    ];
    let out = python(&edge, &broker.url(), "cert_callers", &[], &env).await;
    let ids: Vec<String> = out
        .lines()
        .find_map(|l| l.strip_prefix("ids "))
        .expect("the scenario prints the ids")
        .split_whitespace()
        .map(str::to_string)
        .collect();

    // The broker recorded the certificate callers' orders as RJ1's, naming the edge. Read once it
    // has stopped: a change's entry reaches the trail's file just after its call is answered.
    broker.shutdown().await;
    let trail =
        std::fs::read_to_string(dir.path().join("data").join(labaid::audit::AUDIT_FILE)).unwrap();
    let entries: Vec<labaid::audit::AuditEntry> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for id in &ids {
        let submits: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "request.submit" && e.request_id.as_deref() == Some(id))
            .map(|e| (e.org.as_str(), e.role.as_str(), e.via.as_deref()))
            .collect();
        assert_eq!(submits, [("RJ1", "trust", Some("gstt-fhir"))], "{id}");
    }
    assert!(
        entries.iter().all(|e| e.org == "RJ1"),
        "only RJ1's calls were recorded: {trail}"
    );
}

#[test]
fn plaintext_fhir_off_loopback_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_labaid-edge"))
        .args(["--fhir-listen", "0.0.0.0:0", "--mllp-listen", "off"])
        .env("LABAID_PROFILE", "")
        .output()
        .expect("run labaid-edge");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve FHIR in plaintext"),
        "{stderr}"
    );
}

#[test]
fn client_certificates_without_the_edges_own_credential_or_a_bad_catalogue_system_are_refused() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_labaid-edge"))
            .args(["--mllp-listen", "off", "--fhir-tls-cert", "c.pem"])
            .args(["--fhir-tls-key", "k.pem"])
            .args(extra)
            .env("LABAID_PROFILE", "")
            .env_remove("LABAID_FHIR_EDGE_TOKEN")
            .output()
            .expect("run labaid-edge");
        assert_eq!(out.status.code(), Some(2), "a usage error");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--fhir-client-ca", "ca.pem"]);
    assert!(err.contains("needs the edge's own credential"), "{err}");
    let err = run(&[
        "--fhir-client-ca",
        "ca.pem",
        "--fhir-edge-cert",
        "e.pem",
        "--fhir-edge-key",
        "e.key",
    ]);
    assert!(err.contains("needs TLS to the broker"), "{err}");
    let err = run(&["--fhir-catalogue-system", "labaid catalogue"]);
    assert!(err.contains("not a code system URI"), "{err}");
}

/// A GET with the caller's bearer token; the status and body.
async fn get_as(addr: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    let addr = addr.parse().expect("the FHIR listener's address");
    let (status, body) = common::http_get_as(addr, path, Some(token)).await;
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edge_takes_an_hl7_order_over_mllp_and_serves_it_as_a_fhir_task() {
    harness::require_python_hl7();
    let broker = TestBroker::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let mut edge = harness::Edge::start(
        &broker.url(),
        data.path(),
        &["--fhir-listen", "127.0.0.1:0"],
    );
    let listening: serde_json::Value =
        serde_json::from_str(&edge.wait_log("\"listening\"")).expect("JSON log line");
    let fhir = listening["fhir.addr"]
        .as_str()
        .expect("FHIR on")
        .to_string();

    let ack = harness::send(edge.mllp, harness::fixture("oml_o21_v251.hl7", 20), "utf-8").await;
    assert_eq!(harness::msa(&ack).0, "AA", "{ack}");
    let held = broker
        .client("RJ1")
        .await
        .request_by_order("RJ1-ORD-1001")
        .await
        .expect("list")
        .expect("the HL7 order is held");

    // The same process answers for it over FHIR, with the caller's own token.
    let (status, task) = get_as(&fhir, &format!("/Task/{}", held.id), "demo:RJ1").await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["resourceType"], "Task");
    assert_eq!(task["id"], held.id.as_str());
    // Another trust's caller is told it does not exist, as over gRPC.
    let (status, outcome) = get_as(&fhir, &format!("/Task/{}", held.id), "demo:RJZ").await;
    assert_eq!(status, 404, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(edge.terminate().success(), "a graceful stop exits 0");
}
