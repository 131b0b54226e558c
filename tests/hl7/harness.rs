//! Harness for tests/hl7.rs: a real `labaid-edge` process, the Python `hl7` package as the trust's
//! integration engine (its MLLP client and parser) and as its results receiver (its asyncio MLLP
//! server), the fixtures, and raw MLLP for the inputs no HL7 library would send.
#![allow(unreachable_pub)] // a test helper module; pub for the test file that includes it

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hl7/hl7_peer.py");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hl7");

/// Fails the test unless python3 can import the `hl7` package: these tests are never skipped.
pub fn require_python_hl7() {
    let ok = Command::new("python3")
        .args(["-c", "import hl7, hl7.client, hl7.mllp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import the hl7 package, which these tests use as an independent HL7 stack: \
         pip install hl7 (.ci/run does)"
    );
}

/// An HL7 timestamp in UTC, `minutes` from now.
pub fn hl7_time(minutes: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(minutes);
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%d%H%M%S%z")
        .to_string()
}

/// A fixture with `{NOW}` filled in and `{COLLECTED}` set `collected_minutes_ago` before now.
pub fn fixture(name: &str, collected_minutes_ago: i64) -> Vec<u8> {
    let raw = std::fs::read(Path::new(FIXTURES).join(name)).expect("fixture");
    replace(
        &replace(&raw, b"{NOW}", hl7_time(0).as_bytes()),
        b"{COLLECTED}",
        hl7_time(-collected_minutes_ago).as_bytes(),
    )
}

/// A fixture with `{NOW}` filled in and `{COLLECTED}` replaced by `collected` as written.
pub fn fixture_collected(name: &str, collected: &str) -> Vec<u8> {
    let raw = std::fs::read(Path::new(FIXTURES).join(name)).expect("fixture");
    replace(
        &replace(&raw, b"{NOW}", hl7_time(0).as_bytes()),
        b"{COLLECTED}",
        collected.as_bytes(),
    )
}

/// `from` replaced by `to` throughout (bytes, as a fixture may be Latin-1).
pub fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The path of the fixtures' code map.
pub fn codes_toml() -> PathBuf {
    Path::new(FIXTURES).join("codes.toml")
}

fn python(args: &[&str], stdin: &[u8]) -> Value {
    let mut child = Command::new("python3")
        .arg(PEER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write to python");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "hl7_peer.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("hl7_peer.py prints JSON")
}

/// Sends `message` (segments one a line) with python-hl7's MLLP client; the ACK as it parsed it.
pub async fn send(edge: SocketAddr, message: Vec<u8>, encoding: &str) -> Value {
    send_with(edge, message, encoding, &[]).await
}

/// As [`send`], with more arguments for hl7_peer.py (e.g. `--tls-ca`).
pub async fn send_with(
    edge: SocketAddr,
    message: Vec<u8>,
    encoding: &str,
    extra: &[&str],
) -> Value {
    let mut args = vec![
        "send".to_string(),
        edge.ip().to_string(),
        edge.port().to_string(),
        "--encoding".into(),
        encoding.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python(&args, &message)
    })
    .await
    .expect("join")
}

/// True when python-hl7's client gets no ACK for `message` (its connection refused or closed).
pub async fn send_refused(edge: SocketAddr, message: Vec<u8>, extra: &[&str]) -> bool {
    let mut args = vec![
        PEER.to_string(),
        "send".into(),
        edge.ip().to_string(),
        edge.port().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        let _ = child.stdin.take().expect("stdin").write_all(&message);
        !child.wait_with_output().expect("python3").status.success()
    })
    .await
    .expect("join")
}

/// Parses a frame with python-hl7.
pub fn parse(frame: &[u8], encoding: &str) -> Value {
    python(&["parse", "--encoding", encoding], frame)
}

/// MSA-1 and MSA-2 of an answer.
pub fn msa(ack: &Value) -> (String, String) {
    let m = &ack["msa"];
    (
        m[0].as_str().unwrap_or_default().to_string(),
        m[1].as_str().unwrap_or_default().to_string(),
    )
}

/// (segment, field, code) of each ERR of an answer.
pub fn errs(ack: &Value) -> Vec<(String, String, String)> {
    ack["err"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                    (s("segment"), s("field"), s("code"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes raw bytes to the MLLP listener and reads one framed answer (empty if the edge closed
/// the connection first).
pub async fn raw_exchange(edge: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(edge).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_frame(&mut s).await
}

/// Reads until FS CR or the end of the stream, within 10 s.
pub async fn read_frame(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.ends_with(&[0x1c, 0x0d]) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
            Err(_) => panic!("no answer from the edge within 10 s"),
        }
    }
    got
}

/// Frames a message (line ends become carriage returns).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let body: Vec<u8> = message
        .iter()
        .map(|b| if *b == b'\n' { b'\r' } else { *b })
        .collect();
    let mut out = vec![0x0b];
    out.extend_from_slice(&body);
    out.extend_from_slice(&[0x1c, 0x0d]);
    out
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running labaid-edge.
pub struct Edge {
    child: Child,
    /// The MLLP listener.
    pub mllp: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Edge {
    /// Starts labaid-edge as RJ1 against `broker` with `extra` arguments, and waits until it
    /// serves orders.
    pub fn start(broker: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_labaid-edge"))
            .args([
                "--addr",
                broker,
                "--mllp-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(codes_toml())
            .args(extra)
            .env("LABAID_TOKEN", "demo:RJ1")
            // The FHIR facade only where a test asks for it (`--fhir-listen` in `extra`).
            .env("LABAID_FHIR_LISTEN", "off")
            .env("LABAID_PROFILE", "")
            .env("XDG_CONFIG_HOME", data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start labaid-edge");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut edge = Self {
            child,
            mllp: "127.0.0.1:0".parse().unwrap(),
            metrics: "127.0.0.1:0".parse().unwrap(),
            log,
        };
        let listening = edge.wait_log("\"listening\"");
        let line: Value = serde_json::from_str(&listening).expect("JSON log line");
        edge.mllp = line["mllp.addr"].as_str().unwrap().parse().unwrap();
        edge.metrics = line["metrics.addr"].as_str().unwrap().parse().unwrap();
        edge.wait_log("serving HL7 orders");
        edge
    }

    /// The first log line containing `needle`, waiting up to 20 s for it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.wait_log_count(needle, 1)
    }

    /// The `n`th log line containing `needle`, waiting up to 20 s for it.
    pub fn wait_log_count(&mut self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .nth(n - 1)
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "labaid-edge exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line {needle:?} in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A metric's value (the sum over its label sets that contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (status, body) = super::common::http_get(self.metrics, "/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, and the exit status once it has stopped.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// python-hl7's MLLP server as the trust's results endpoint.
pub struct Receiver {
    child: Child,
    /// Its port.
    pub port: u16,
    messages: mpsc::Receiver<Value>,
}

impl Receiver {
    /// Listens on `port` (0 for any), answering with `replies` in turn (the last repeating).
    pub fn start(port: u16, replies: &[&str], extra: &[&str]) -> Self {
        let mut args = vec![
            PEER.to_string(),
            "receive".into(),
            "--port".into(),
            port.to_string(),
        ];
        for r in replies {
            args.push("--reply".into());
            args.push((*r).into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new("python3")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the python receiver");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read");
        let port = first
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("the receiver did not start: {first:?}"))
            .parse()
            .expect("port");
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Self {
            child,
            port,
            messages,
        }
    }

    /// `HOST:PORT` for `--results-to`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The next message received, as python-hl7 parsed it, within 20 s.
    pub async fn next(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.messages.try_recv() {
                Ok(v) => return v,
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("no result message within 20 s ({e})"),
            }
        }
    }

    /// Messages received and not yet read.
    pub fn pending(&self) -> Vec<Value> {
        self.messages.try_iter().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
