//! Connections to the gRPC listener: one that sends nothing, half the HTTP/2 preface, or (over
//! TLS) nothing after its handshake is closed once the handshake deadline passes; connections
//! beyond the per-address cap are closed as they arrive; real clients are served throughout.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use labaid::Config;
use labaid::auth::devpki;
use labaid::client::{Client, ConnectOptions, TlsFiles};
use labaid::config::TlsPaths;
use labaid::domain::OdsCode;
use labaid::edge::tls::ClientTls;
use labaid::proto;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Longest any test waits for the broker to close a connection: well past the deadline under
/// test (1 s), and short of the fixed 10 s TLS handshake limit the broker once had alone.
const BOUND: Duration = Duration::from_secs(8);

/// The demo directory with a one-second handshake deadline.
fn quick_deadline() -> Config {
    let mut c = Config::demo().unwrap();
    c.limits.handshake_timeout = Duration::from_secs(1);
    c
}

/// Reads (and drops whatever the broker sends, such as its SETTINGS) until the broker closes the
/// connection; panics if it is still open after [`BOUND`].
async fn closed_by_broker(mut io: impl AsyncRead + Unpin, what: &str) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the broker kept the connection open"
    );
}

async fn list_tests(c: &Client) -> Result<(), tonic::Status> {
    c.directory()
        .list_tests(proto::ListTestsRequest {})
        .await
        .map(|_| ())
}

async fn metrics(broker: &TestBroker) -> String {
    http_get(broker.ops_addr, "/metrics").await.1
}

#[tokio::test]
async fn a_silent_connection_and_half_a_preface_are_closed_while_clients_are_served() {
    let broker = TestBroker::spawn_with(quick_deadline()).await;
    // A client that connects, then waits past the deadline before its first call, is not cut
    // off: it sent its preface and settings on connecting.
    let early = broker.client("RJ1").await;

    let silent = TcpStream::connect(broker.addr).await.unwrap();
    closed_by_broker(silent, "nothing sent").await;

    let mut half = TcpStream::connect(broker.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_by_broker(half, "half a preface").await;

    // A preface without the frame that must follow it is not enough either.
    let mut preface = TcpStream::connect(broker.addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    closed_by_broker(preface, "a preface alone").await;

    list_tests(&early)
        .await
        .expect("the early client's first call");
    list_tests(&broker.client("RJ2").await)
        .await
        .expect("a new client");
    let text = metrics(&broker).await;
    assert_eq!(
        sample(
            &text,
            r#"labaid_grpc_connections_closed_total{reason="handshake_timeout"}"#
        ),
        3.0,
        "only the three idle connections were closed"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_and_the_earlier_ones_kept() {
    let mut config = Config::demo().unwrap();
    config.limits.connections_per_peer = 3;
    let broker = TestBroker::spawn_with(config).await;
    let mut clients = Vec::new();
    for org in ["RJ1", "RJ2", "RJZ"] {
        let c = broker.client(org).await;
        list_tests(&c).await.expect("within the cap");
        clients.push(c);
    }
    let extra = TcpStream::connect(broker.addr).await.unwrap();
    closed_by_broker(extra, "the fourth connection").await;
    for c in &clients {
        list_tests(c)
            .await
            .expect("the earlier connections stay usable");
    }
    assert_eq!(
        sample(
            &metrics(&broker).await,
            r#"labaid_grpc_connections_closed_total{reason="peer_limit"}"#
        ),
        1.0
    );
    // A closed connection gives its place back (once the broker has seen it close).
    drop(clients.pop());
    let again = tokio::time::timeout(BOUND, async {
        loop {
            if let Ok(c) = Client::connect(&ConnectOptions {
                addr: broker.url(),
                token: Some("demo:RJZ".into()),
                connect_timeout: Some(BOUND),
                tls: None,
            })
            .await
                && list_tests(&c).await.is_ok()
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(again.is_ok(), "a freed place was not given back");
    broker.shutdown().await;
}

fn tls_broker_config(pki: &devpki::DevPki) -> Config {
    let mut c = quick_deadline();
    c.demo = false;
    c.tls = Some(TlsPaths {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    c
}

fn dev_pki(dir: &Path) -> devpki::DevPki {
    devpki::generate(dir, [OdsCode::parse("RJ1").unwrap()]).unwrap()
}

#[tokio::test]
async fn over_tls_a_silent_connection_and_one_silent_after_its_handshake_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(dir.path());
    let broker = TestBroker::spawn_with(tls_broker_config(&pki)).await;
    let (cert, key) = pki.client("RJ1");

    let silent = TcpStream::connect(broker.addr).await.unwrap();
    closed_by_broker(silent, "nothing sent over TLS").await;

    // A completed handshake does not buy an idle connection: the preface must follow.
    let tls = ClientTls::new(&pki.ca, Some(&cert), Some(&key), "localhost").unwrap();
    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    let handshaken = tls.connect(tcp).await.expect("the TLS handshake");
    closed_by_broker(handshaken, "nothing sent after the handshake").await;

    // A real client over mutual TLS is served, and its certificate still names it.
    let client = Client::connect(&ConnectOptions {
        addr: broker.url(),
        token: None,
        connect_timeout: Some(BOUND),
        tls: Some(TlsFiles {
            ca: pki.ca.clone(),
            cert: Some(cert),
            key: Some(key),
        }),
    })
    .await
    .expect("connect over mutual TLS");
    let r = submit(
        &client,
        submission("TLS-1", proto::Priority::Stat, broker.now()),
    )
    .await;
    assert_eq!(r.trust, "RJ1");
    broker.shutdown().await;
}

#[test]
fn the_limits_section_takes_the_connection_cap_and_deadline_and_refuses_zero() {
    let text = |limits: &str| {
        format!(
            r#"
[limits]
{limits}
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
        )
    };
    let c = Config::from_toml(
        &text("connections_per_peer = 5\nhandshake_timeout_seconds = 2"),
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(c.limits.connections_per_peer, 5);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
    let d = Config::from_toml(&text("burst = 5"), Path::new("x.toml")).unwrap();
    assert_eq!(d.limits.connections_per_peer, 64);
    assert_eq!(d.limits.handshake_timeout, Duration::from_secs(10));
    for zero in ["connections_per_peer = 0", "handshake_timeout_seconds = 0"] {
        let err = Config::from_toml(&text(zero), Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits"), "{zero}: {err}");
    }
}
