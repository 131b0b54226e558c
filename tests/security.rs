//! Security: TLS and mutual TLS, tokens, need-to-know access and limits. The audit trail, and no
//! patient data in logs, are tests/audit.rs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use labaid::Config;
use labaid::auth::{Role, TokenHash, devpki, token_digest};
use labaid::client::{Client, ConnectOptions, TlsFiles};
use labaid::config::TlsPaths;
use labaid::domain::OdsCode;
use labaid::proto::{self, Priority};
use tonic::Code;

// ---------- helpers ----------

fn ods(code: &str) -> OdsCode {
    OdsCode::parse(code).unwrap()
}

/// A development PKI for every demo organisation and the coordinator.
fn pki(dir: &Path) -> devpki::DevPki {
    let demo = Config::demo().unwrap();
    let orgs = demo
        .trusts
        .keys()
        .cloned()
        .chain(demo.labs.iter().map(|l| l.ods.clone()))
        .chain([ods("X24")]);
    devpki::generate(dir, orgs).unwrap()
}

/// The demo directory as a production broker: not demo mode, mutual TLS from `pki`.
fn tls_config(pki: &devpki::DevPki, tokens: Vec<TokenHash>) -> Config {
    let mut c = Config::demo().unwrap();
    c.demo = false;
    c.tls = Some(TlsPaths {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    c.tokens = tokens;
    c
}

async fn connect(
    broker: &TestBroker,
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
    token: Option<&str>,
) -> Result<Client, labaid::client::ClientError> {
    let (cert, key) = identity.unzip();
    Client::connect(&ConnectOptions {
        addr: broker.url(),
        token: token.map(str::to_string),
        connect_timeout: Some(Duration::from_secs(5)),
        tls: Some(TlsFiles {
            ca: ca.to_path_buf(),
            cert,
            key,
        }),
    })
    .await
}

async fn list_tests(c: &Client) -> Result<(), tonic::Status> {
    c.directory()
        .list_tests(proto::ListTestsRequest {})
        .await
        .map(|_| ())
}

/// A connection that the broker must refuse: either the handshake fails, or (TLS 1.3 sends the
/// client's certificate after the client thinks it is connected) the first call does.
async fn assert_refused(result: Result<Client, labaid::client::ClientError>, what: &str) {
    if let Ok(client) = result {
        let err = list_tests(&client)
            .await
            .expect_err(&format!("{what}: the broker answered"));
        assert_ne!(err.code(), Code::Ok, "{what}");
    }
}

fn token_entry(token: &str, org: &str, role: Role) -> TokenHash {
    TokenHash {
        org: ods(org),
        role,
        sha256: token_digest(token),
    }
}

async fn submit_stat(c: &Client, order: &str, now: labaid::domain::Timestamp) -> proto::Request {
    submit(c, submission(order, Priority::Stat, now)).await
}

// ---------- transport ----------

#[tokio::test]
async fn plaintext_is_refused_off_loopback_and_on_loopback_without_consent() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::demo().unwrap();
    config.data_dir = data.path().to_path_buf();
    config.web_listen = None;
    let mut config = common::on_test_store(config).await;
    // Off loopback, even the demo will not serve plaintext.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = labaid::serve(listener, config.clone(), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("plaintext"), "{err}");
    // On loopback, a config file (not the demo) must say allow_plaintext_loopback.
    config.demo = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = labaid::serve(listener, config.clone(), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("allow_plaintext_loopback"), "{err}");
    config.allow_plaintext_loopback = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    labaid::serve(listener, config, async {}).await.unwrap();
}

#[test]
fn the_config_file_takes_tls_tokens_limits_and_the_plaintext_switch() {
    let digest = hex::encode(token_digest("labaid_abc"));
    let text = format!(
        r#"
allow_plaintext_loopback = true
[tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
[limits]
rate_per_second = 5
burst = 10
watches_per_org = 2
[[token]]
org = "RJ7"
role = "lab"
sha256 = "{digest}"
[[trust]]
ods = "RJ1"
name = "A"
[[lab]]
ods = "RJ7"
name = "B"
tests = ["K"]
capacity = {{ K = 1 }}
transport_minutes = {{ RJ1 = 10 }}
agreements = ["RJ1"]
"#
    );
    let c = Config::from_toml(&text, Path::new("x.toml")).unwrap();
    assert!(c.allow_plaintext_loopback);
    assert_eq!(c.tls.unwrap().client_ca, Some(PathBuf::from("ca.pem")));
    assert_eq!((c.limits.rate_per_second, c.limits.burst), (5, 10));
    assert_eq!(c.tokens.len(), 1);
    assert_eq!(c.tokens[0].role, Role::Lab);
    // A token whose role does not match the directory is refused.
    let wrong = text.replace("role = \"lab\"", "role = \"trust\"");
    let err = Config::from_toml(&wrong, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("token RJ7"), "{err}");
}

#[test]
fn an_edge_entry_must_name_itself_once_and_speak_for_trusts_or_labs_of_the_directory() {
    let directory = r#"
coordinators = ["X24"]
[[token]]
org = "RJ7"
role = "lab"
sha256 = "TOKEN"
[[trust]]
ods = "RJ1"
name = "A"
[[lab]]
ods = "RJ7"
name = "B"
tests = ["K"]
capacity = { K = 1 }
transport_minutes = { RJ1 = 10 }
agreements = ["RJ1"]
"#;
    let token = hex::encode(token_digest("labaid_lab"));
    let edge_hash = hex::encode(token_digest("labaid_edge"));
    let load = |edges: &str| {
        let text = format!("{}{edges}", directory.replace("TOKEN", &token));
        Config::from_toml(&text, Path::new("x.toml")).map_err(|e| e.to_string())
    };
    let good = format!(
        "[[edge]]\nid = \"gstt-fhir\"\nspeaks_for = [\"rj1\", \"RJ7\"]\nsha256 = \"{edge_hash}\"\n\
         [[edge]]\nid = \"by-cert\"\nspeaks_for = [\"RJ1\"]\n"
    );
    let c = load(&good).unwrap();
    assert_eq!(c.edges.len(), 2);
    assert_eq!(c.edges[0].speaks_for, [ods("RJ1"), ods("RJ7")].into());
    assert!(c.edges[1].sha256.is_none());
    for (edges, says) in [
        ("[[edge]]\nid = \"e\"\nspeaks_for = []\n", "at least one"),
        (
            "[[edge]]\nid = \"e\"\nspeaks_for = [\"X24\"]\n",
            "not a trust or lab",
        ),
        (
            "[[edge]]\nid = \"e\"\nspeaks_for = [\"RXX\"]\n",
            "not a trust or lab",
        ),
        (
            "[[edge]]\nid = \"Bad Id\"\nspeaks_for = [\"RJ1\"]\n",
            "lower-case",
        ),
        (
            "[[edge]]\nid = \"e\"\nspeaks_for = [\"RJ1\"]\n[[edge]]\nid = \"e\"\nspeaks_for = [\"RJ1\"]\n",
            "listed twice",
        ),
    ] {
        let err = load(edges).unwrap_err();
        assert!(err.contains(says), "{edges}: {err}");
    }
    let reused = format!("[[edge]]\nid = \"e\"\nspeaks_for = [\"RJ1\"]\nsha256 = \"{token}\"\n");
    assert!(load(&reused).unwrap_err().contains("already another token"));
}

#[tokio::test]
async fn mutual_tls_maps_each_certificate_to_its_organisation_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let broker = TestBroker::spawn_with(tls_config(&pki, vec![])).await;
    let trust = connect(&broker, &pki.ca, Some(pki.client("RJ1")), None)
        .await
        .unwrap();
    let r = submit_stat(&trust, "TLS-1", broker.now()).await;
    assert_eq!(r.trust, "RJ1");
    let lab = connect(&broker, &pki.ca, Some(pki.client("RJ7")), None)
        .await
        .unwrap();
    let cap = lab
        .labs()
        .get_capacity(proto::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.lab, "RJ7");
    // The coordinator's certificate reads the directory but is no trust.
    let coordinator = connect(&broker, &pki.ca, Some(pki.client("X24")), None)
        .await
        .unwrap();
    list_tests(&coordinator).await.unwrap();
    let err = coordinator
        .requests()
        .submit_request(submission("TLS-2", Priority::Stat, broker.now()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Demo tokens are not honoured outside demo mode.
    let demo = connect(&broker, &pki.ca, Some(pki.client("RJ7")), Some("demo:RJ1"))
        .await
        .unwrap();
    assert_eq!(
        list_tests(&demo).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    broker.shutdown().await;
}

/// Audit entries of the broker's trail.
fn audit_entries(broker: &TestBroker) -> Vec<labaid::audit::AuditEntry> {
    std::fs::read_to_string(broker.data_dir.join(labaid::audit::AUDIT_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn an_edge_speaks_only_for_its_granted_organisations_and_the_header_lifts_nobody_else() {
    use labaid::auth::{EdgeGrant, EdgeId};
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let edge_id = |id: &str| EdgeId::parse(id).unwrap();
    let (edge_cert, rogue_cert) = (
        devpki::issue_edge(dir.path(), &edge_id("kch-fhir")).unwrap(),
        devpki::issue_edge(dir.path(), &edge_id("rogue")).unwrap(),
    );
    let mut config = tls_config(&pki, vec![token_entry("rj1-token", "RJ1", Role::Trust)]);
    config.edges = vec![
        EdgeGrant {
            id: edge_id("gstt-fhir"),
            speaks_for: [ods("RJ1")].into(),
            sha256: Some(token_digest("edge-token")),
        },
        EdgeGrant {
            id: edge_id("kch-fhir"),
            speaks_for: [ods("RJZ")].into(),
            sha256: None,
        },
    ];
    let broker = TestBroker::spawn_with(config).await;
    let ca = &pki.ca;
    let rj1 = connect(&broker, ca, None, Some("rj1-token")).await.unwrap();
    let rj1_cert = connect(&broker, ca, Some(pki.client("RJ1")), None)
        .await
        .unwrap();
    let gstt = connect(&broker, ca, None, Some("edge-token"))
        .await
        .unwrap();
    let kch = connect(&broker, ca, Some(edge_cert), None).await.unwrap();

    // The token edge orders and reads for RJ1, as RJ1.
    let mine = submit_stat(&gstt.on_behalf_of(&ods("RJ1")), "EDGE-1", broker.now()).await;
    assert_eq!(mine.trust, "RJ1");
    get_request(&rj1, &mine.id).await;

    // Refused, each PERMISSION_DENIED: an organisation's own credential with the header (even
    // naming itself), an edge alone, an edge for an organisation it is not granted.
    let refused = [
        (rj1.on_behalf_of(&ods("RJZ")), "RJ1's token for RJZ"),
        (rj1.on_behalf_of(&ods("RJ1")), "RJ1's token for itself"),
        (
            rj1_cert.on_behalf_of(&ods("RJZ")),
            "RJ1's certificate for RJZ",
        ),
        (gstt.clone(), "an edge for nobody"),
        (gstt.on_behalf_of(&ods("RJZ")), "an edge for RJZ"),
        (kch.on_behalf_of(&ods("RJ1")), "a certificate edge for RJ1"),
    ];
    for (client, what) in &refused {
        let err = client
            .requests()
            .submit_request(submission("EDGE-BAD", Priority::Stat, broker.now()))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
    }
    // A certificate naming an edge the broker does not list is nobody.
    let rogue = connect(&broker, ca, Some(rogue_cert), None).await.unwrap();
    let err = list_tests(&rogue.on_behalf_of(&ods("RJ1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Need-to-know holds through an edge: RJZ's edge cannot see RJ1's request.
    let kch_rjz = kch.on_behalf_of(&ods("RJZ"));
    let err = kch_rjz
        .requests()
        .get_request(proto::GetRequestRequest {
            id: mine.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Nothing refused changed anything: RJ1 holds only the edge's order, RJZ none.
    let ids = |rs: Vec<proto::Request>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(all_requests(&rj1).await),
        std::slice::from_ref(&mine.id)
    );
    assert!(all_requests(&kch_rjz).await.is_empty());

    // The trail records the edge's calls as RJ1's, naming the edge; RJ1's own read names none.
    let entries = audit_entries(&broker);
    let of = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.request_id.as_deref() == Some(mine.id.as_str()))
            .map(|e| (e.org.as_str(), e.role.as_str(), e.via.as_deref()))
            .collect::<Vec<_>>()
    };
    assert_eq!(of("request.submit"), [("RJ1", "trust", Some("gstt-fhir"))]);
    assert_eq!(of("request.get"), [("RJ1", "trust", None)]);
    assert!(
        entries
            .iter()
            .all(|e| e.org != "RJZ" || e.action != "request.submit"),
        "no refused call was recorded as a submission"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn no_certificate_an_unknown_ca_an_expired_one_and_plaintext_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let other = tempfile::tempdir().unwrap();
    let rogue = devpki::generate(other.path(), [ods("RJ1")]).unwrap();
    let expired = devpki::issue_client(
        dir.path(),
        "RJ1-expired",
        &ods("RJ1"),
        devpki::Validity {
            from_days: -30,
            until_days: -1,
        },
    )
    .unwrap();
    let stranger =
        devpki::issue_client(dir.path(), "RXX", &ods("RXX"), devpki::Validity::DEFAULT).unwrap();
    let broker = TestBroker::spawn_with(tls_config(&pki, vec![])).await;

    assert_refused(
        connect(&broker, &pki.ca, None, None).await,
        "no certificate",
    )
    .await;
    assert_refused(
        connect(&broker, &pki.ca, Some(rogue.client("RJ1")), None).await,
        "a certificate from an unknown CA",
    )
    .await;
    assert_refused(
        connect(&broker, &pki.ca, Some(expired), None).await,
        "an expired certificate",
    )
    .await;
    // A plaintext client cannot talk to a TLS broker.
    assert_refused(
        Client::connect(&ConnectOptions {
            addr: broker.url(),
            token: Some("demo:RJ1".into()),
            connect_timeout: Some(Duration::from_secs(5)),
            tls: None,
        })
        .await,
        "plaintext",
    )
    .await;
    // A valid certificate for an organisation outside the directory identifies nobody.
    let c = connect(&broker, &pki.ca, Some(stranger), None)
        .await
        .unwrap();
    assert_eq!(
        list_tests(&c).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // And the right one works.
    let ok = connect(&broker, &pki.ca, Some(pki.client("RJ1")), None)
        .await
        .unwrap();
    list_tests(&ok).await.unwrap();
    broker.shutdown().await;
}

// ---------- tokens ----------

#[tokio::test]
async fn tokens_are_bound_to_one_organisation_and_role_and_a_wrong_one_is_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let lab_token = labaid::auth::create_token(&ods("RJ7"), Role::Lab)
        .unwrap()
        .token;
    let tokens = vec![token_entry(&lab_token, "RJ7", Role::Lab)];
    let broker = TestBroker::spawn_with(tls_config(&pki, tokens)).await;
    // Over server-authenticated TLS without a client certificate.
    let lab = connect(&broker, &pki.ca, None, Some(&lab_token))
        .await
        .unwrap();
    let cap = lab
        .labs()
        .get_capacity(proto::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.lab, "RJ7");
    let err = lab
        .requests()
        .list_requests(proto::ListRequestsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // No credential at all, a wrong token, and a revoked (never configured) one.
    let revoked = labaid::auth::create_token(&ods("RJ7"), Role::Lab)
        .unwrap()
        .token;
    for token in [None, Some("labaid_00"), Some(revoked.as_str())] {
        let c = connect(&broker, &pki.ca, None, token).await.unwrap();
        let err = list_tests(&c).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        if let Some(t) = token {
            assert!(!err.message().contains(t), "the token is not echoed");
        }
    }
    // A token that names someone else than the certificate is refused.
    let mixed = connect(&broker, &pki.ca, Some(pki.client("RJ1")), Some(&lab_token))
        .await
        .unwrap();
    assert_eq!(
        list_tests(&mixed).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    broker.shutdown().await;
}

// ---------- need-to-know ----------

#[tokio::test]
async fn every_rpc_on_another_organisations_request_is_not_found_and_patients_appear_only_after_accept()
 {
    let broker = TestBroker::spawn().await;
    let rj1 = broker.client("RJ1").await;
    let r = submit_stat(&rj1, "NTK-1", broker.now()).await;
    assert_eq!(r.state, proto::RequestState::Offered as i32);
    let holder = broker.client(&r.lab).await;
    let other_lab_code = ["RJ7", "R1H", "RJ2", "RJ6", "RAL", "RAX"]
        .into_iter()
        .find(|l| *l != r.lab)
        .unwrap();
    let other_lab = broker.client(other_lab_code).await;
    let rjz = broker.client("RJZ").await;
    let id = r.id.clone();

    let trust_calls = [
        rjz.requests()
            .get_request(proto::GetRequestRequest { id: id.clone() })
            .await
            .map(|_| ()),
        rjz.requests()
            .cancel_request(proto::CancelRequestRequest {
                id: id.clone(),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
    ];
    let labs = other_lab.labs();
    let lab_calls = [
        labs.clone()
            .get_job(proto::GetJobRequest { id: id.clone() })
            .await
            .map(|_| ()),
        labs.clone()
            .accept_job(proto::AcceptJobRequest { id: id.clone() })
            .await
            .map(|_| ()),
        labs.clone()
            .decline_job(proto::DeclineJobRequest {
                id: id.clone(),
                reason: "busy".into(),
            })
            .await
            .map(|_| ()),
        labs.clone()
            .receive_sample(proto::ReceiveSampleRequest { id: id.clone() })
            .await
            .map(|_| ()),
        labs.clone()
            .post_results(proto::PostResultsRequest {
                id: id.clone(),
                observations: vec![],
            })
            .await
            .map(|_| ()),
        labs.clone()
            .fail_job(proto::FailJobRequest {
                id: id.clone(),
                reason: 1,
                detail: String::new(),
            })
            .await
            .map(|_| ()),
    ];
    let unknown = rjz
        .requests()
        .get_request(proto::GetRequestRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    for (i, result) in trust_calls.into_iter().chain(lab_calls).enumerate() {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "call #{i}");
        assert!(!err.message().contains("RJ1"), "call #{i} names no owner");
    }
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        rjz.requests()
            .list_requests(proto::ListRequestsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .requests
            .is_empty()
    );
    assert!(
        labs.clone()
            .list_jobs(proto::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty()
    );

    // The lab holding the offer sees the job but not the patient until it accepts.
    let offered = holder
        .labs()
        .get_job(proto::GetJobRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(offered.patient.is_none());
    let accepted = holder
        .labs()
        .accept_job(proto::AcceptJobRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        accepted.patient.unwrap().nhs_number,
        "9434765919",
        "identifiers once accepted"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn the_coordinator_role_calling_trust_and_lab_rpcs_is_permission_denied() {
    let broker = TestBroker::spawn().await;
    let c = broker.client("coordinator").await;
    let id = uuid::Uuid::new_v4().to_string();
    let results = [
        c.requests()
            .submit_request(submission("C-1", Priority::Stat, broker.now()))
            .await
            .map(|_| ()),
        c.requests()
            .get_request(proto::GetRequestRequest { id: id.clone() })
            .await
            .map(|_| ()),
        c.requests()
            .list_requests(proto::ListRequestsRequest::default())
            .await
            .map(|_| ()),
        c.requests()
            .cancel_request(proto::CancelRequestRequest {
                id: id.clone(),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
        c.requests()
            .watch_request_events(proto::WatchRequestEventsRequest::default())
            .await
            .map(|_| ()),
        c.labs()
            .watch_offers(proto::WatchOffersRequest::default())
            .await
            .map(|_| ()),
        c.labs()
            .list_jobs(proto::ListJobsRequest::default())
            .await
            .map(|_| ()),
        c.labs()
            .get_job(proto::GetJobRequest { id: id.clone() })
            .await
            .map(|_| ()),
        c.labs()
            .accept_job(proto::AcceptJobRequest { id: id.clone() })
            .await
            .map(|_| ()),
        c.labs()
            .receive_sample(proto::ReceiveSampleRequest { id: id.clone() })
            .await
            .map(|_| ()),
        c.labs()
            .set_capacity(proto::SetCapacityRequest {
                test: "K".into(),
                capacity: 1,
            })
            .await
            .map(|_| ()),
        c.labs()
            .set_status(proto::SetStatusRequest { status: 1 })
            .await
            .map(|_| ()),
    ];
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied, "rpc #{i}");
    }
    // The directory is readable by every authenticated role.
    list_tests(&c).await.unwrap();
    broker.shutdown().await;
}

// ---------- limits ----------

#[tokio::test]
async fn an_oversized_message_is_refused_before_it_is_decoded() {
    let broker = TestBroker::spawn().await;
    let trust = broker.client("RJ1").await;
    let mut sub = submission("BIG-1", Priority::Stat, broker.now());
    sub.clinical_note = "x".repeat(70 * 1024);
    let err = trust.requests().submit_request(sub).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(!err.message().contains("9434765919"));
    broker.shutdown().await;
}

#[tokio::test]
async fn the_rate_limit_is_per_organisation_so_a_noisy_one_cannot_starve_the_others() {
    let mut config = Config::demo().unwrap();
    config.limits.rate_per_second = 1;
    config.limits.burst = 3;
    let broker = TestBroker::spawn_with(config).await;
    let noisy = broker.client("RJ1").await;
    let quiet = broker.client("RJZ").await;
    // The noisy trust floods: three calls go through, the rest are turned away.
    let flood = (0..40).map(|_| {
        let c = noisy.clone();
        async move { list_tests(&c).await }
    });
    let results = futures_join_all(flood).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::ResourceExhausted);
    }
    // Meanwhile the other trust is served.
    for _ in 0..3 {
        list_tests(&quiet).await.unwrap();
    }
    // The bucket refills with time.
    broker.advance(Duration::from_secs(1));
    list_tests(&noisy).await.unwrap();
    assert_eq!(
        list_tests(&noisy).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    broker.shutdown().await;
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn open_watches_are_capped_per_organisation() {
    let mut config = Config::demo().unwrap();
    config.limits.watches_per_org = 2;
    let broker = TestBroker::spawn_with(config).await;
    let rj1 = broker.client("RJ1").await;
    let watch = || {
        let c = rj1.clone();
        async move {
            c.requests()
                .watch_request_events(proto::WatchRequestEventsRequest::default())
                .await
        }
    };
    let first = watch().await.unwrap();
    let _second = watch().await.unwrap();
    assert_eq!(watch().await.unwrap_err().code(), Code::ResourceExhausted);
    // Other organisations are unaffected.
    let rjz = broker.client("RJZ").await;
    rjz.requests()
        .watch_request_events(proto::WatchRequestEventsRequest::default())
        .await
        .unwrap();
    // Closing a watch frees its slot (once the broker notices the stream is gone).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match watch().await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    broker.shutdown().await;
}

// ---------- audit ----------
