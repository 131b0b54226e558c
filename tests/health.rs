//! `labaid-broker health`, the real binary against a real broker: exit 0 and "serving" when the
//! broker serves, 1 when it answers that it does not know the service, 2 when nothing answers
//! or TLS cannot be set up; each failure one line. Over mutual TLS with the labctl options.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use labaid::Config;
use labaid::auth::devpki;
use labaid::config::TlsPaths;
use labaid::domain::OdsCode;

/// Runs `labaid-broker health ARGS` with the environment cleared of labctl settings.
async fn health(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labaid-broker"));
    cmd.arg("health")
        .args(args)
        .env_remove("LABAID_ADDR")
        .env_remove("LABAID_CA")
        .env_remove("LABAID_CERT")
        .env_remove("LABAID_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run labaid-broker health");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[track_caller]
fn one_line(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("labaid-broker health: "), "{stderr:?}");
}

#[tokio::test]
async fn health_is_0_while_serving_1_for_an_unknown_service_and_2_once_stopped() {
    let broker = TestBroker::spawn().await;
    let url = broker.url();
    let (code, out, err) = health(&["--addr", &url], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{url} is serving"));
    let (code, _, err) = health(&["--addr", &url, "--service", "labaid.v1.LabService"], &[]).await;
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = health(&["--addr", &url, "--service", "labaid.v1.Nothing"], &[]).await;
    assert_eq!(code, 1);
    one_line(&err);
    assert!(err.contains("no service \"labaid.v1.Nothing\""), "{err}");

    broker.shutdown().await;
    let (code, _, err) = health(&["--addr", &url, "--timeout", "2"], &[]).await;
    assert_eq!(code, 2);
    one_line(&err);
    assert!(err.contains(&format!("cannot ask {url}")), "{err}");
}

#[tokio::test]
async fn health_takes_labctls_tls_and_client_certificate_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = devpki::generate(dir.path(), [OdsCode::parse("RJ7").expect("ods")]).expect("pki");
    let mut config = Config::demo().expect("demo");
    config.demo = false;
    config.tls = Some(TlsPaths {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    let broker = TestBroker::spawn_with(config).await;
    let url = format!("https://localhost:{}", broker.addr.port());
    let (cert, key) = pki.client("RJ7");

    // Flags.
    let args = [
        "--addr",
        url.as_str(),
        "--ca",
        path(&pki.ca),
        "--cert",
        path(&cert),
        "--key",
        path(&key),
    ];
    let (code, out, err) = health(&args, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is serving"), "{out}");

    // labctl's variables.
    let addr = Path::new(&url);
    let env = [
        ("LABAID_ADDR", addr),
        ("LABAID_CA", pki.ca.as_path()),
        ("LABAID_CERT", cert.as_path()),
        ("LABAID_KEY", key.as_path()),
    ];
    let (code, _, err) = health(&[], &env).await;
    assert_eq!(code, 0, "{err}");

    // Without a client certificate the broker refuses the handshake: not serving for us.
    let (code, _, err) = health(&["--addr", &url, "--ca", path(&pki.ca)], &[]).await;
    assert_eq!(code, 2, "{err}");
    one_line(&err);
    // https without a CA cannot verify anything.
    let (code, _, err) = health(&["--addr", &url], &[]).await;
    assert_eq!(code, 2);
    one_line(&err);
    assert!(err.contains("needs --ca"), "{err}");
    broker.shutdown().await;
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
