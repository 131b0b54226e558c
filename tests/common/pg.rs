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
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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

/// The name the standby streams under, which the primary waits for.
const STANDBY_NAME: &str = "labaid_standby";

/// A temporary directory the `postgres` user owns, and the data directory path inside it.
fn new_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("labaid-pg-")
        .tempdir()
        .expect("tempdir");
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
    let dir = tmp.path().join("data");
    (tmp, dir)
}

/// Appends to a configuration file (as root, the file keeps its owner).
fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name: the state first,
/// then the parent's pid.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A process's state letter, or `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    stat_fields(&pid.to_string())?.first()?.chars().next()
}

/// The processes whose parent is `pid` (from `/proc`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Ok(child) = name.parse::<u32>() else {
            continue;
        };
        let ppid = stat_fields(&name).and_then(|f| f.get(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

impl PgServer {
    /// initdb and start a cluster; panics (failing the test) if PostgreSQL cannot start.
    pub fn start() -> Self {
        Self::init().start_on(free_port(), "")
    }

    /// A cluster for the suites that share one (`pg_shared`): many small databases and the
    /// connections of many brokers, none of which needs to survive a crash of the machine, so
    /// nothing is flushed to disk (the crash tests use [`PgServer::start`]).
    pub fn start_for_suites() -> Self {
        Self::init().start_on(
            free_port(),
            "-c fsync=off -c full_page_writes=off -c max_connections=500",
        )
    }

    /// Leaves the cluster running until this process has ended, however it ends, then stops it
    /// and removes its directory and `also_remove`: a `sh` in a process group of its own (an
    /// interrupt of the tests leaves it alone) reads a pipe that only this process holds open,
    /// and the pipe's end (this process's exit) starts the stop. For a cluster held in a static,
    /// which is never dropped.
    pub fn stop_after_this_process(self, also_remove: &Path) {
        use std::os::unix::process::CommandExt;
        let pg_ctl = bin("pg_ctl");
        let mut stop: Vec<&std::ffi::OsStr> = Vec::new();
        if as_root() {
            stop.extend(["runuser", "-u", "postgres", "--"].map(std::ffi::OsStr::new));
        }
        stop.extend([pg_ctl.as_os_str(), "-D".as_ref(), self.dir.as_os_str()]);
        stop.extend(["-m", "immediate", "-w", "stop"].map(std::ffi::OsStr::new));
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; "$@"; rm -f -- "$LABAID_PG_ALSO"; rm -rf -- "$LABAID_PG_TMP""#)
            .arg("sh")
            .args(&stop)
            .env("LABAID_PG_TMP", self._tmp.path())
            .env("LABAID_PG_ALSO", also_remove)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog");
        // Its stdin's write end stays open (close-on-exec, so no other child holds it) until
        // exit, and it ends after this process, so it is never waited for.
        std::mem::forget(watchdog);
        // The watchdog stops the cluster and removes its directory instead of `Drop`.
        std::mem::forget(self);
    }

    /// A cluster that streams its WAL to a synchronous standby named `labaid_standby` (see
    /// [`PgServer::start_standby_of`]): every commit waits until the standby has flushed it.
    /// The setting is given on the command line, not in a file, so that a base backup of this
    /// cluster does not carry it to the standby, which would otherwise wait forever for a
    /// standby of its own once promoted.
    pub fn start_primary() -> Self {
        let server = Self::init();
        append(
            &server.dir.join("pg_hba.conf"),
            "host replication postgres 127.0.0.1/32 trust\n",
        );
        server.start_on(
            free_port(),
            &format!(
                "-c wal_level=replica -c max_wal_senders=4 -c wal_sender_timeout=5s \
                 -c synchronous_standby_names={STANDBY_NAME}"
            ),
        )
    }

    /// A hot standby of `primary` from `pg_basebackup`, streaming as `labaid_standby` on a port
    /// of its own. Use [`PgServer::wait_synchronous`] on the primary before relying on it.
    pub fn start_standby_of(primary: &PgServer) -> Self {
        let (tmp, dir) = new_dir();
        let d = dir.to_str().expect("utf-8 path");
        let port = primary.port.to_string();
        run(
            "pg_basebackup",
            &[
                "-D",
                d,
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        // `-R` wrote standby.signal and a primary_conninfo; this later line names the standby
        // so that the primary's synchronous_standby_names matches it.
        append(
            &dir.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres \
                 application_name={STANDBY_NAME}'\n"
            ),
        );
        Self {
            port: 0,
            dir,
            _tmp: tmp,
        }
        .start_on(free_port(), "-c hot_standby=on")
    }

    /// Waits until this primary's standby streams synchronously; panics after `within`.
    pub fn wait_synchronous(&self, within: Duration) {
        let sql = format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
        );
        self.wait_for(&sql, "sync", within, "the standby is not synchronous");
    }

    /// SIGKILLs the postmaster and every process it started at once, as a lost host would:
    /// no shutdown checkpoint, no goodbye to the standby or the clients.
    pub fn kill9(&self) {
        let pid = self.postmaster_pid();
        let mut pids = children_of(pid);
        pids.push(pid);
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        // Its status is not checked: a backend may end by itself between the listing and the
        // signal. The postmaster's end is.
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_state(pid).is_some_and(|s| s != 'Z') {
            assert!(
                Instant::now() < deadline,
                "postmaster {pid} still runs 10 s after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOPs the postmaster, then every process it started, as a hung database host looks to
    /// its clients: the kernel still accepts connections and acknowledges what is sent, and
    /// nothing answers. The postmaster first, so that it starts nothing unseen. Undone by
    /// [`PgServer::resume`], and before the cluster is stopped on drop.
    pub fn pause(&self) {
        let pid = self.postmaster_pid();
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot SIGSTOP postmaster {pid}");
        let mut pids = children_of(pid);
        signal_each(&pids, "-STOP");
        pids.push(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in pids {
            // 'T': stopped. A backend may end by itself between the listing and the signal.
            while process_state(p).is_some_and(|s| s != 'T' && s != 'Z') {
                assert!(
                    Instant::now() < deadline,
                    "process {p} not stopped 10 s after SIGSTOP"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// SIGCONTs what [`PgServer::pause`] stopped.
    pub fn resume(&self) {
        self.resume_quietly();
    }

    /// [`PgServer::resume`] for `Drop`: nothing to do once the postmaster is gone.
    fn resume_quietly(&self) {
        let Some(pid) = std::fs::read_to_string(self.dir.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        else {
            return;
        };
        let mut pids = children_of(pid);
        pids.push(pid);
        signal_each(&pids, "-CONT");
    }

    /// Promotes a standby and waits until it accepts writes; panics after `within`.
    pub fn promote(&self, within: Duration) {
        let d = self.dir.to_str().expect("utf-8 path");
        let secs = within.as_secs().max(1).to_string();
        run("pg_ctl", &["-D", d, "-w", "-t", &secs, "promote"]);
        self.wait_for(
            "SELECT pg_is_in_recovery()",
            "f",
            within,
            "still in recovery after promotion",
        );
    }

    /// Runs `sql` until it answers `want`; panics after `within` with `what`, the last answer
    /// and the server's log.
    fn wait_for(&self, sql: &str, want: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.psql(sql);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} after {within:?} ({sql} answers {got:?}): {}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid in `postmaster.pid`'s first line.
    fn postmaster_pid(&self) -> u32 {
        let path = self.dir.join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} holds no pid: {text:?}", path.display()))
    }

    /// The end of the server's log, for panic messages.
    fn server_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// A new data directory from initdb.
    fn init() -> Self {
        let (tmp, dir) = new_dir();
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
        Self {
            port: 0,
            dir,
            _tmp: tmp,
        }
    }

    fn start_on(mut self, port: u16, extra: &str) -> Self {
        self.port = port;
        let d = self.dir.to_str().expect("utf-8 path").to_string();
        let opts = format!(
            "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on {extra}"
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

/// Sends `sig` to each of `pids`; one that has ended meanwhile is no failure.
fn signal_each(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A paused cluster would never act on the stop below.
        self.resume_quietly();
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
    /// Terms as leader seen so far ("broker serving" lines read).
    terms: usize,
    lines: Arc<Mutex<Vec<String>>>,
    /// Its data directory, when the test did not give one.
    _data: Option<tempfile::TempDir>,
}

impl PgBroker {
    /// Starts a broker and waits until it has bound its listeners (it may be a standby).
    pub fn start(url: &str) -> Self {
        Self::start_with(url, &[])
    }

    /// [`PgBroker::start_with`], then waits until it leads (it must: the test gave it the lease).
    pub fn start_leading(url: &str, args: &[&str]) -> Self {
        let mut broker = Self::start_with(url, args);
        assert!(
            broker.wait_serving(Duration::from_secs(30)),
            "no lead: {}",
            broker.log()
        );
        broker
    }

    /// The fields of its first JSON log line saying `message`, if it has logged one.
    pub fn logged(&self, message: &str) -> Option<serde_json::Value> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message)
    }

    /// [`PgBroker::start`] with more command-line arguments. Without a `--data-dir` among them,
    /// the broker gets a data directory of its own (a broker locks its own).
    pub fn start_with(url: &str, args: &[&str]) -> Self {
        let data =
            (!args.contains(&"--data-dir")).then(|| tempfile::tempdir().expect("a data directory"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_labaid-broker"));
        if let Some(data) = &data {
            command.arg("--data-dir").arg(data.path());
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--web-listen", "off"])
            .args(["--log-format", "json", "--store", url])
            .args(args)
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
            terms: 0,
            lines,
            _data: data,
        }
    }

    /// True once the broker has said it serves (leads), waiting at most `within`.
    pub fn wait_serving(&mut self, within: Duration) -> bool {
        self.wait_terms(1, within)
    }

    /// Terms as leader it has begun so far.
    pub fn terms(&mut self) -> usize {
        while self.serving.try_recv().is_ok() {
            self.terms += 1;
        }
        self.terms
    }

    /// True once the broker has begun its `n`th term as leader (it stepped down and took the
    /// lease again in between), waiting at most `within`.
    pub fn wait_terms(&mut self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.terms < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.serving.recv_timeout(left).is_err() {
                return false;
            }
            self.terms += 1;
        }
        true
    }

    /// Its gRPC health (the whole broker), as `ServingStatus` numbers it.
    pub async fn health(&self) -> i32 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health")
            .into_inner()
            .status
    }

    /// Waits until it answers health NOT_SERVING (a leader stepping down says so once its
    /// term's drain has begun); panics if it never does.
    pub async fn wait_not_serving(&self) {
        for _ in 0..150 {
            if self.health().await == ServingStatus::NotServing as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the broker never answered NOT_SERVING: {}", self.log());
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

    /// Fails the test, saying `what` happened and showing the log, if the broker has ended.
    pub fn assert_running(&mut self, what: &str) {
        assert!(self.try_wait().is_none(), "{what}: {}", self.log());
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

/// Waits until exactly one of `brokers` answers health SERVING, and returns its index: on a
/// loaded machine the first to lead can miss a renewal and step down, so having said it serves
/// is not enough.
pub async fn leading_now(brokers: &mut [PgBroker], within: Duration) -> usize {
    leader_of(brokers, within);
    let deadline = Instant::now() + within;
    loop {
        let mut serving = Vec::new();
        for (i, b) in brokers.iter().enumerate() {
            if b.health().await == ServingStatus::Serving as i32 {
                serving.push(i);
            }
        }
        if let [one] = serving[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no single leader within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
