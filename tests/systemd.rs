//! systemd readiness, with the real broker binary and a real unix datagram socket as its
//! NOTIFY_SOCKET: READY=1 only once the broker serves (a health check passes at once), WATCHDOG=1
//! at half of WATCHDOG_USEC, STOPPING=1 when SIGTERM starts the drain; and the unit file asks
//! for all three.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest to wait for one notification.
const WAIT: Duration = Duration::from_secs(60);

/// The next notification, as its lines.
fn next(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_string)
        .collect()
}

/// A port free now (the broker binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn the_broker_notifies_ready_once_serving_pings_the_watchdog_and_notifies_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut broker = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
        .args([
            "--listen",
            &addr,
            "--metrics-listen",
            "127.0.0.1:0",
            "--web-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env_remove("LABAID_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the broker");

    let ready = next(&socket);
    assert!(ready.contains(&"READY=1".to_string()), "{ready:?}");
    assert!(
        ready.contains(&format!("STATUS=serving gRPC on {addr}")),
        "{ready:?}"
    );
    // Ready means serving: a health check passes at once.
    let health = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
        .args(["health", "--addr", &format!("http://{addr}")])
        .env_remove("LABAID_CA")
        .env_remove("LABAID_CERT")
        .env_remove("LABAID_KEY")
        .output()
        .expect("health");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // Pings at half the interval: two of them within a couple of intervals (bounded generously
    // for a loaded machine; the figure itself is not asserted).
    let start = Instant::now();
    for _ in 0..2 {
        assert_eq!(next(&socket), ["WATCHDOG=1"]);
    }
    eprintln!("two watchdog pings in {:?}", start.elapsed());

    let term = Command::new("kill")
        .args(["-TERM", &broker.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    // Pings may still come while it drains; STOPPING=1 must.
    loop {
        let got = next(&socket);
        if got == ["WATCHDOG=1"] {
            continue;
        }
        assert_eq!(got, ["STOPPING=1"]);
        break;
    }
    let status = broker.wait().expect("wait");
    assert!(status.success(), "a clean stop: {status:?}");
}

#[test]
fn the_unit_file_is_type_notify_with_a_watchdog() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/labaid-broker.service"
    ))
    .expect("unit file");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(settings.contains(&"Type=notify"), "Type=notify");
    assert!(
        settings.iter().any(|l| l.starts_with("WatchdogSec=")),
        "WatchdogSec="
    );
    assert!(settings.contains(&"NotifyAccess=main"), "NotifyAccess=main");
}
