//! A real PostgreSQL for the tests: `initdb` and `pg_ctl` on a temporary directory and a free
//! loopback port, run as the `postgres` OS user when the tests run as root (PostgreSQL refuses
//! root), stopped when dropped. A test that needs it FAILS when it cannot start. And broker
//! processes on it ([`PgBroker`]).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use labaid::client::{Client, ConnectOptions};

/// Where Debian's PostgreSQL 15 keeps its programs (override with `LABAID_PG_BIN`).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL cluster.
pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("LABAID_PG_BIN").unwrap_or_else(|_| PG_BIN.to_string());
    Path::new(&dir).join(name)
}

/// Runs a PostgreSQL program, as `postgres` when root; panics with its output on failure.
fn run(program: &str, args: &[&str]) -> Output {
    let path = bin(program);
    assert!(
        path.exists(),
        "{} is missing: install PostgreSQL 15 (apt-get install -y postgresql) or set LABAID_PG_BIN",
        path.display()
    );
    let mut cmd = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A port free now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl PgServer {
    /// initdb and start a cluster; panics (failing the test) if PostgreSQL cannot start.
    pub fn start() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("labaid-pg-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().join("data");
        if as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(tmp.path())
                .status()
                .expect("chown")
                .success();
            assert!(
                ok,
                "cannot give {} to the postgres user",
                tmp.path().display()
            );
        }
        let d = dir.to_str().expect("utf-8 path");
        run(
            "initdb",
            &[
                "-D",
                d,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let server = Self {
            port: 0,
            dir,
            _tmp: tmp,
        };
        server.start_on(free_port())
    }

    fn start_on(mut self, port: u16) -> Self {
        self.port = port;
        let d = self.dir.to_str().expect("utf-8 path").to_string();
        let opts = format!(
            "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on"
        );
        let log = format!("{d}/server.log");
        run(
            "pg_ctl",
            &["-D", &d, "-o", &opts, "-l", &log, "-w", "-t", "30", "start"],
        );
        self
    }

    /// The store URL for the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL through psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let out = run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(d) = self.dir.to_str() {
            let path = bin("pg_ctl");
            let mut cmd = if as_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&path);
                c
            } else {
                Command::new(&path)
            };
            let _ = cmd
                .args(["-D", d, "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A broker process on the PostgreSQL store; killed when dropped.
pub struct PgBroker {
    child: Child,
    /// The gRPC listener.
    pub addr: SocketAddr,
    /// The metrics and health listener.
    pub ops: SocketAddr,
    serving: mpsc::Receiver<()>,
    served: bool,
    lines: Arc<Mutex<Vec<String>>>,
}

impl PgBroker {
    /// Starts a broker and waits until it has bound its listeners (it may be a standby).
    pub fn start(url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--web-listen", "off"])
            .args(["--log-format", "json", "--store", url])
            .env("RUST_LOG", "info")
            .env_remove("LABAID_DATA_DIR")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start labaid-broker");
        let stderr = child.stderr.take().expect("stderr");
        let (bound_tx, bound_rx) = mpsc::channel();
        let (serving_tx, serving) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "effective configuration" {
                        let f = &v;
                        let _ = bound_tx.send((
                            f["listen"].as_str().unwrap_or_default().to_string(),
                            f["metrics_listen"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                    if v["message"] == "broker serving" {
                        let _ = serving_tx.send(());
                    }
                }
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let Ok((addr, ops)) = bound_rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the broker did not start: {:#?}", lines.lock().unwrap());
        };
        Self {
            child,
            addr: addr.parse().expect("listen address"),
            ops: ops.parse().expect("metrics address"),
            serving,
            served: false,
            lines,
        }
    }

    /// True once the broker has said it serves (leads), waiting at most `within`.
    pub fn wait_serving(&mut self, within: Duration) -> bool {
        if !self.served {
            self.served = self.serving.recv_timeout(within).is_ok();
        }
        self.served
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Its exit status, if it has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    pub async fn client(&self, org: &str) -> Client {
        Client::connect(&ConnectOptions {
            addr: format!("http://{}", self.addr),
            token: Some(format!("demo:{org}")),
            connect_timeout: Some(Duration::from_secs(5)),
            tls: None,
        })
        .await
        .expect("connect")
    }
}

impl Drop for PgBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until one of `brokers` leads; returns its index.
pub fn leader_of(brokers: &mut [PgBroker], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for (i, b) in brokers.iter_mut().enumerate() {
            if b.wait_serving(Duration::from_millis(50)) {
                return i;
            }
        }
    }
    panic!("no broker took the lead within {within:?}");
}
