//! A real PostgreSQL for the tests: `initdb` and `pg_ctl` on a temporary directory and a free
//! loopback port, run as the `postgres` OS user when the tests run as root (PostgreSQL refuses
//! root), stopped when dropped. A test that needs it FAILS when it cannot start.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
