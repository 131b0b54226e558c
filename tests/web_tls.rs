//! The coordinator page under the broker's TLS settings, over real TLS connections: sign-in with a
//! coordinator's client certificate or token gives a `Secure`, `HttpOnly`, `SameSite=Strict`
//! cookie; a trust's certificate gets nothing; the snapshot carries no patient identifiers.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use labaid::Config;
use labaid::auth::{Role, TokenHash, devpki, token_digest};
use labaid::config::TlsPaths;
use labaid::domain::OdsCode;
use labaid::proto::Priority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

const TOKEN: &str = "web-tls-coordinator-token-0123456789abcdef";

fn ods(code: &str) -> OdsCode {
    OdsCode::parse(code).unwrap()
}

async fn broker(dir: &Path) -> TestBroker {
    let demo = Config::demo().unwrap();
    let orgs = demo
        .trusts
        .keys()
        .cloned()
        .chain(demo.labs.iter().map(|l| l.ods.clone()))
        .chain([ods("X24")]);
    let pki = devpki::generate(dir, orgs).unwrap();
    let mut config = demo;
    config.demo = false;
    config.tls = Some(TlsPaths {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    config.coordinators = [ods("X24")].into();
    config.tokens = vec![TokenHash {
        org: ods("X24"),
        role: Role::Coordinator,
        sha256: token_digest(TOKEN),
    }];
    TestBroker::spawn_with_web(config).await
}

/// One HTTP/1.1 exchange over TLS, as `identity` (an organisation's dev certificate) if given:
/// the status, the raw head and the body.
async fn https(
    broker: &TestBroker,
    pki: &Path,
    identity: Option<&str>,
    request: &str,
) -> (u16, String, String) {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some(org) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(pki.join(format!("{org}.pem")))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(pki.join(format!("{org}.key"))).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(broker.web_addr.unwrap())
        .await
        .unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the page");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn post_signin(token: &str) -> String {
    let body = format!("token={token}");
    format!(
        "POST /signin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn cookie_of(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .or_else(|| head.lines().find_map(|l| l.strip_prefix("Set-Cookie: ")))
}

#[tokio::test]
async fn under_tls_a_coordinator_certificate_or_token_signs_in_with_a_secure_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let pki = dir.path();

    // The coordinator's certificate, no token.
    let (status, head, _) = https(&broker, pki, Some("X24"), &post_signin("")).await;
    assert_eq!(status, 303, "{head}");
    let cookie = cookie_of(&head).expect("a session cookie");
    for part in ["labaid_session=", "HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(part), "{part} missing: {cookie}");
    }
    // A token, no certificate (allowed: the broker takes tokens beside mutual TLS).
    let (status, head, _) = https(&broker, pki, None, &post_signin(TOKEN)).await;
    assert_eq!(status, 303, "{head}");
    let cookie = cookie_of(&head).expect("a session cookie").to_string();
    assert!(cookie.contains("Secure"), "{cookie}");

    // A trust's certificate is refused, and gets no cookie; so does an unknown token.
    let (status, head, body) = https(&broker, pki, Some("RJ1"), &post_signin("")).await;
    assert_eq!(status, 403, "{head}");
    assert!(cookie_of(&head).is_none(), "{head}");
    assert!(body.contains("coordinators only"), "{body}");
    let (status, head, _) = https(&broker, pki, None, &post_signin("wrong")).await;
    assert_eq!(status, 401, "{head}");
    assert!(cookie_of(&head).is_none(), "{head}");

    // The snapshot names requests by id, trust and tests: never the patient.
    let trust = {
        let ca = pki.join("ca.pem");
        labaid::client::Client::connect(&labaid::client::ConnectOptions {
            addr: format!("https://localhost:{}", broker.addr.port()),
            token: None,
            connect_timeout: None,
            tls: Some(labaid::client::TlsFiles {
                ca,
                cert: Some(pki.join("RJ1.pem")),
                key: Some(pki.join("RJ1.key")),
            }),
        })
        .await
        .expect("trust client")
    };
    let r = submit(
        &trust,
        submission("TLS-WEB-1", Priority::Stat, broker.now()),
    )
    .await;
    let session = cookie.split(';').next().unwrap();
    let get = format!(
        "GET /api/snapshot HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {session}\r\n\r\n"
    );
    let mut body = String::new();
    for _ in 0..50 {
        let (status, head, b) = https(&broker, pki, None, &get).await;
        assert_eq!(status, 200, "{head}");
        if b.contains(&r.id) {
            body = b;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        body.contains(&r.id),
        "the request never reached the snapshot"
    );
    for secret in ["9434765919", "Testpatient", "Alex", "1970-01-01"] {
        assert!(!body.contains(secret), "the snapshot shows {secret}");
    }
    // Without the cookie: 401.
    let (status, _, _) = https(
        &broker,
        pki,
        None,
        "GET /api/snapshot HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
    broker.shutdown().await;
}
