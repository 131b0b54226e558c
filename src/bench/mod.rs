//! labaid-bench: runs a broker (a child process serving this build's broker, or a given
//! `labaid-broker` executable) and a null gRPC service under the same load, and reports each
//! phase's throughput and latency as a ratio to plain gRPC on this machine.

pub mod database;
pub mod journal;
pub mod load;

pub use load::LabsUse;
pub mod null;
pub mod procstat;
pub mod report;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::auth::{Role, create_token};
use crate::client::Client;
use crate::domain::OdsCode;
use crate::proto;
use load::{Load, Org, Stage};
use report::{Phase, Report, Scenario};

/// The tests of the bundled catalogue; every generated lab performs all of them.
const TESTS: [&str; 11] = [
    "FBC", "UE", "K", "CRP", "LFT", "TROP", "INR", "APTT", "GS", "XM", "GLU",
];
/// Capacity per test of a generated lab: large, so that throughput runs measure the broker and
/// not a queue of work waiting for capacity.
const BENCH_CAPACITY: u32 = 1_000_000;

/// What the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The null gRPC service: plain tonic unary calls with the same messages.
    Baseline,
    /// Acknowledged, durable submissions.
    Submit,
    /// Submit, offer delivered, accept.
    Dispatch,
    /// The whole cycle to the result delivered to the trust.
    Cycle,
    /// Submit to offer delivered, paced at half the measured peak submit rate.
    OfferLatency,
}

impl Kind {
    /// Every kind, in the order they run.
    pub const ALL: [Kind; 5] = [
        Kind::Baseline,
        Kind::Submit,
        Kind::Dispatch,
        Kind::Cycle,
        Kind::OfferLatency,
    ];

    /// The scenario's name, as `--scenario` spells it.
    fn name(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::Submit => "submit",
            Kind::Dispatch => "dispatch",
            Kind::Cycle => "cycle",
            Kind::OfferLatency => "offer-latency",
        }
    }
}

/// A running broker to measure instead of one the bench starts (`--addr`).
#[derive(Debug, Clone)]
pub struct Remote {
    /// Its address: `host:port` or a URL.
    pub addr: String,
    /// The CA of its TLS certificate; `None` for plaintext.
    pub ca: Option<PathBuf>,
    /// Who the load acts as there.
    pub orgs: Orgs,
}

impl Remote {
    /// A running broker at `addr`, acted on as the organisations of the orgs file at `orgs` (the
    /// demo organisations without one); `ca` turns TLS on, which client certificates need.
    pub fn new(addr: String, ca: Option<PathBuf>, orgs: Option<&Path>) -> anyhow::Result<Self> {
        let orgs = match orgs {
            Some(path) => Orgs::load(path).context("--orgs")?,
            None => Orgs::demo(),
        };
        if ca.is_none()
            && let Some(org) = orgs
                .trusts
                .iter()
                .chain(&orgs.labs)
                .find(|o| o.identity.is_some())
        {
            bail!(
                "--orgs gives {} a client certificate, which needs TLS: add --ca",
                org.ods
            );
        }
        Ok(Self { addr, ca, orgs })
    }
}

/// The organisations the load acts as on a running broker.
#[derive(Debug, Clone)]
pub struct Orgs {
    /// Trusts that submit.
    pub trusts: Vec<Org>,
    /// Labs that work the offers.
    pub labs: Vec<Org>,
}

/// An organisation in an orgs file: a `[[trust]]` or `[[lab]]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgEntry {
    ods: String,
    token: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgsFile {
    #[serde(default, rename = "trust")]
    trusts: Vec<OrgEntry>,
    #[serde(default, rename = "lab")]
    labs: Vec<OrgEntry>,
}

impl Orgs {
    /// The demo directory's trusts and labs, with demo tokens: a broker in demo mode.
    pub fn demo() -> Self {
        Self {
            trusts: ["RJ1", "RJZ"].map(Org::demo).to_vec(),
            labs: ["RJ7", "R1H", "RJ2", "RJ6", "RAL", "RAX"]
                .map(Org::demo)
                .to_vec(),
        }
    }

    /// Reads an orgs file: `[[trust]]` and `[[lab]]` tables, each with `ods` and a `token`, or a
    /// client `cert` and `key` (PEM; relative to the file), or both. A file rather than flags,
    /// because tokens on a command line are visible to every user of the machine.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: OrgsFile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                e.message().lines().next().unwrap_or("invalid TOML")
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let org = |entry: OrgEntry| -> anyhow::Result<Org> {
            let ods = OdsCode::parse(&entry.ods)
                .map_err(|e| anyhow::anyhow!("{}: ods {:?}: {e}", path.display(), entry.ods))?;
            let identity = match (entry.cert, entry.key) {
                (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
                (None, None) => None,
                _ => bail!("{}: {ods} needs both cert and key", path.display()),
            };
            if entry.token.is_none() && identity.is_none() {
                bail!(
                    "{}: {ods} has neither a token nor a cert and key",
                    path.display()
                );
            }
            Ok(Org {
                ods: ods.to_string(),
                token: entry.token,
                identity,
            })
        };
        let trusts = file
            .trusts
            .into_iter()
            .map(org)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let labs = file
            .labs
            .into_iter()
            .map(org)
            .collect::<anyhow::Result<Vec<_>>>()?;
        if trusts.is_empty() {
            bail!("{}: names no [[trust]] to submit as", path.display());
        }
        Ok(Self { trusts, labs })
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// A running broker to use instead of starting one.
    pub remote: Option<Remote>,
    /// Measured time per scenario.
    pub duration: Duration,
    /// Load before measuring.
    pub warmup: Duration,
    /// Connections the trusts submit over.
    pub connections: usize,
    /// Submissions in flight.
    pub in_flight: usize,
    /// Trusts in the generated directory.
    pub trusts: usize,
    /// Labs in the generated directory.
    pub labs: usize,
    /// Submissions per second for the offer-latency scenario (default: half the submit peak).
    pub rate: Option<f64>,
    /// How the labs take and work offers.
    pub labs_use: LabsUse,
    /// Scenarios to run, in order.
    pub kinds: Vec<Kind>,
    /// Where temporary data directories go (must be the disk to measure; not a tmpfs).
    pub work_dir: PathBuf,
    /// A `labaid-broker` executable to measure instead of this build's broker (to compare
    /// builds); `None` serves the broker from the bench's own executable.
    pub broker: Option<PathBuf>,
    /// A PostgreSQL server (`postgres://user@host:port/db`) to measure the PostgreSQL store on:
    /// each scenario's broker gets a database of its own there, dropped afterwards. `None`
    /// measures the file store.
    pub store: Option<String>,
}

impl Options {
    /// Checks, before any load, that the scenarios can run: those with labs need a lab to act as.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(remote) = &self.remote
            && remote.orgs.labs.is_empty()
            && let Some(kind) = self
                .kinds
                .iter()
                .find(|k| !matches!(k, Kind::Baseline | Kind::Submit))
        {
            bail!(
                "--orgs names no [[lab]], which the {} scenario needs",
                kind.name()
            );
        }
        Ok(())
    }
}

/// Runs the scenarios and returns the report.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let mut scenarios = Vec::new();
    let mut peak_submit: Option<f64> = None;
    for &kind in &options.kinds {
        let scenario = match kind {
            Kind::Baseline => baseline(options).await?,
            _ => {
                let rate = (kind == Kind::OfferLatency).then(|| {
                    options
                        .rate
                        .or(peak_submit.map(|p| p / 2.0))
                        .unwrap_or(5_000.0)
                });
                broker_scenario(options, kind, rate).await?
            }
        };
        if kind == Kind::Submit {
            peak_submit = scenario.phases.first().map(|p| p.per_second);
        }
        scenarios.push(scenario);
    }
    let mut report = Report {
        machine: report::machine(),
        settings: format!(
            "{} connections, {} in flight, {} s measured after {} s warm-up, {} trusts, {} labs \
             ({})",
            options.connections,
            options.in_flight,
            options.duration.as_secs_f64(),
            options.warmup.as_secs_f64(),
            options.trusts,
            options.labs,
            match options.labs_use {
                LabsUse::Work => "a Work stream each",
                LabsUse::Calls => "WatchOffers and a call per action",
            }
        ),
        scenarios,
    };
    report.compare_to_baseline();
    Ok(report)
}

/// Kills a child process when dropped, so that an error never leaves a server behind.
struct Server {
    child: Child,
    dir: Option<PathBuf>,
    /// The broker's metrics endpoint, for its journal figures.
    metrics: Option<SocketAddr>,
    /// The scenario's own PostgreSQL database, dropped with the server.
    database: Option<database::Database>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(db) = self.database.take() {
            db.drop_it();
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Serves a broker with the config file at `config` until SIGTERM or Ctrl-C: what `labaid-broker
/// --config` does, run by the bench's own executable in a child process, so that the broker it
/// measures is always the same build as the bench (`cargo run --bin labaid-bench` builds no
/// other binary, and a stale `labaid-broker` beside it would be measured without a word).
pub async fn serve_broker(config: &Path) -> anyhow::Result<()> {
    let config = crate::Config::load(config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    crate::serve(listener, config, crate::shutdown_signal()).await?;
    Ok(())
}

async fn baseline(options: &Options) -> anyhow::Result<Scenario> {
    let addr = free_port()?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--serve-null")
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the null service")?;
    let server = Server {
        child,
        dir: None,
        metrics: None,
        database: None,
    };
    let url = format!("http://{addr}");
    let trusts = vec![Org::demo("RJ1")];
    wait_ready(&url, None, &trusts[0], false).await?;
    let load = Load {
        addr: url,
        ca: None,
        trusts,
        labs: Vec::new(),
        connections: options.connections,
        in_flight: options.in_flight,
        rate: None,
        labs_use: options.labs_use,
        stage: Stage::Submit,
        warmup: options.warmup,
        duration: options.duration,
        label: "baseline".into(),
    };
    measure(
        Kind::Baseline,
        "null gRPC service, SubmitRequest answered at once".into(),
        &load,
        Some(server.child.id()),
        None,
    )
    .await
}

async fn broker_scenario(
    options: &Options,
    kind: Kind,
    rate: Option<f64>,
) -> anyhow::Result<Scenario> {
    let stage = match kind {
        Kind::Submit => Stage::Submit,
        Kind::Dispatch | Kind::OfferLatency => Stage::Dispatch,
        _ => Stage::Cycle,
    };
    let (url, ca, trusts, labs, server) = match &options.remote {
        Some(remote) => {
            let url = if remote.addr.contains("://") {
                remote.addr.clone()
            } else {
                format!("http://{}", remote.addr)
            };
            let Orgs { trusts, labs } = remote.orgs.clone();
            (url, remote.ca.clone(), trusts, labs, None)
        }
        None => {
            let (url, trusts, labs, server) = start_broker(options)?;
            (url, None, trusts, labs, Some(server))
        }
    };
    wait_ready(&url, ca.as_deref(), &trusts[0], true).await?;
    let description = match (kind, rate) {
        (Kind::Submit, _) => "durable submissions; labs idle".to_string(),
        (Kind::Dispatch, _) => "submit, offer to the lab, accept".to_string(),
        (Kind::Cycle, _) => format!(
            "submit, offer, accept, receive, result, result delivered to the trust; \
             at most {} requests open",
            load::open_cycles(labs.len())
        ),
        (_, Some(r)) => format!("dispatch paced at {r:.0} submissions/s"),
        _ => String::new(),
    };
    let load = Load {
        addr: url,
        ca,
        trusts,
        labs,
        connections: options.connections,
        in_flight: options.in_flight,
        rate,
        labs_use: options.labs_use,
        stage,
        warmup: options.warmup,
        duration: options.duration,
        label: kind.name().into(),
    };
    let pid = server.as_ref().map(|s| s.child.id());
    let metrics = server.as_ref().and_then(|s| s.metrics);
    let scenario = measure(kind, description, &load, pid, metrics).await;
    drop(server);
    scenario
}

/// Writes a config for a generated directory, starts a broker on it (this build's, or
/// `options.broker`), and returns its address, the organisations with their tokens, and the child.
fn start_broker(options: &Options) -> anyhow::Result<(String, Vec<Org>, Vec<Org>, Server)> {
    let (broker, serve_flag) = match &options.broker {
        Some(path) => (path.clone(), "--config"),
        None => (
            std::env::current_exe().context("cannot find the bench's own executable")?,
            "--serve-broker",
        ),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let dir = options
        .work_dir
        .join(format!("labaid-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let addr = free_port()?;
    let metrics = free_port()?;
    let (mut config, trusts, labs) = generated_config(&dir.join("data"), addr, metrics, options)?;
    let database = match &options.store {
        Some(admin) => {
            let db = database::Database::create(admin)?;
            // A top-level key: before the config's first table.
            config.insert_str(0, &format!("store_url = {:?}\n", db.url()));
            Some(db)
        }
        None => None,
    };
    let config_path = dir.join("labaid.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join("broker.log"))?;
    let child = Command::new(&broker)
        .arg(serve_flag)
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", broker.display()))?;
    Ok((
        format!("http://{addr}"),
        trusts,
        labs,
        Server {
            child,
            dir: Some(dir),
            metrics: Some(metrics),
            database,
        },
    ))
}

/// A directory of `options.trusts` trusts and `options.labs` labs that perform every test with
/// large capacity and agree with every trust, high limits, and a token per organisation.
fn generated_config(
    data_dir: &Path,
    addr: SocketAddr,
    metrics: SocketAddr,
    options: &Options,
) -> anyhow::Result<(String, Vec<Org>, Vec<Org>)> {
    let mut out = String::new();
    let mut entries = String::new();
    let _ = writeln!(out, "listen = \"{addr}\"");
    let _ = writeln!(out, "metrics_listen = \"{metrics}\"");
    let _ = writeln!(out, "web_listen = \"off\"");
    let _ = writeln!(out, "data_dir = {:?}", data_dir.display().to_string());
    let _ = writeln!(out, "allow_plaintext_loopback = true\n");
    // Every connection comes from this host: a watcher per lab and per trust, the submitting
    // connections, and room for the probes and the CLI besides.
    let per_peer = options.labs + options.trusts + options.connections + 64;
    // The audit volume budget is raised with the call rate: the bench measures the broker's
    // capacity, not the limits that keep one organisation from filling the disk.
    let _ = writeln!(
        out,
        "[limits]\nrate_per_second = 10000000\nburst = 10000000\nwatches_per_org = 64\n\
         streams_per_connection = 4096\nconnections_per_peer = {per_peer}\n\
         audit_bytes_per_second = 100000000000\naudit_burst_bytes = 100000000000\n"
    );
    let mut org = |code: &str, role: Role| -> anyhow::Result<Org> {
        let ods = OdsCode::parse(code).map_err(anyhow::Error::msg)?;
        let new = create_token(&ods, role)?;
        entries.push_str(&new.config_entry);
        entries.push('\n');
        Ok(Org {
            ods: code.to_string(),
            token: Some(new.token),
            identity: None,
        })
    };
    let trusts: Vec<Org> = (1..=options.trusts.max(1))
        .map(|i| org(&format!("BT{i:03}"), Role::Trust))
        .collect::<anyhow::Result<_>>()?;
    let labs: Vec<Org> = (1..=options.labs.max(1))
        .map(|i| org(&format!("BL{i:03}"), Role::Lab))
        .collect::<anyhow::Result<_>>()?;
    for t in &trusts {
        let _ = writeln!(
            out,
            "[[trust]]\nods = \"{}\"\nname = \"Bench trust {}\"\n",
            t.ods, t.ods
        );
    }
    let tests: Vec<String> = TESTS.iter().map(|t| format!("\"{t}\"")).collect();
    let capacity: Vec<String> = TESTS
        .iter()
        .map(|t| format!("{t} = {BENCH_CAPACITY}"))
        .collect();
    let agreements: Vec<String> = trusts.iter().map(|t| format!("\"{}\"", t.ods)).collect();
    for (i, l) in labs.iter().enumerate() {
        let transport: Vec<String> = trusts
            .iter()
            .map(|t| format!("{} = {}", t.ods, 20 + (i % 5) * 5))
            .collect();
        let _ = writeln!(
            out,
            "[[lab]]\nods = \"{}\"\nname = \"Bench lab {}\"\ntests = [{}]\ncapacity = {{ {} }}\n\
             transport_minutes = {{ {} }}\nagreements = [{}]\n",
            l.ods,
            l.ods,
            tests.join(", "),
            capacity.join(", "),
            transport.join(", "),
            agreements.join(", ")
        );
    }
    out.push_str(&entries);
    Ok((out, trusts, labs))
}

/// Waits until the server answers: a broker lists its labs once recovered; the null service
/// answers a submission. Credentials the broker refuses end the wait at once.
async fn wait_ready(url: &str, ca: Option<&Path>, org: &Org, broker: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let options = org.connect_options(url, ca, Duration::from_secs(2));
        match Client::connect(&options).await {
            Ok(client) => {
                let answered = if broker {
                    client
                        .directory()
                        .list_labs(proto::ListLabsRequest::default())
                        .await
                        .map(|_| ())
                } else {
                    client
                        .requests()
                        .submit_request(load::submission("READY", 0))
                        .await
                        .map(|_| ())
                };
                match answered {
                    Ok(()) => return Ok(()),
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                        ) =>
                    {
                        bail!(
                            "the server at {url} refused {}'s credentials: {}",
                            org.ods,
                            status.message()
                        )
                    }
                    Err(status) => last = status.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server at {url} did not become ready in 60 s: {last}")
}

async fn measure(
    kind: Kind,
    description: String,
    load: &Load,
    pid: Option<u32>,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<Scenario> {
    let start = Instant::now();
    let from = start + load.warmup;
    let until = from + load.duration;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
        let before = (
            pid.and_then(|p| procstat::read(Some(p))),
            procstat::read(None),
        );
        let journal_before = match metrics {
            Some(addr) => journal::read(addr).await,
            None => None,
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        let after = (
            pid.and_then(|p| procstat::read(Some(p))),
            procstat::read(None),
        );
        let journal_after = match metrics {
            Some(addr) => journal::read(addr).await,
            None => None,
        };
        (before, after, journal_before.zip(journal_after))
    });
    let measured = load::run(load, start).await?;
    let ((server0, client0), (server1, client1), journal_readings) = sampler.await?;
    let window = load.duration;
    let secs = window.as_secs_f64().max(1e-9);
    let journal = journal_readings.map(|(a, b)| journal::between(&a, &b, secs));
    let cpu = |a: Option<procstat::ProcStat>, b: Option<procstat::ProcStat>| match (a, b) {
        (Some(a), Some(b)) => b.cpu_seconds - a.cpu_seconds,
        _ => 0.0,
    };
    let mut phases: Vec<Phase> = vec![measured.submit.summarise("submit acknowledged", window)];
    if load.stage >= Stage::Dispatch {
        phases.push(
            measured
                .offer
                .summarise("offer delivered to the lab", window),
        );
        phases.push(measured.accept.summarise("accept acknowledged", window));
    }
    if load.stage == Stage::Cycle {
        phases.push(
            measured
                .result
                .summarise("result delivered to the trust", window),
        );
    }
    let items = phases.last().map_or(0, |p| p.count).max(1);
    let server_cpu = cpu(server0, server1);
    Ok(Scenario {
        name: kind.name().into(),
        description,
        phases,
        server_rss_bytes: server1.map_or(0, |s| s.rss_bytes),
        server_cpu_us_per_item: server_cpu * 1e6 / items as f64,
        server_cores: server_cpu / secs,
        client_cores: cpu(Some(client0.unwrap_or_default()), client1) / secs,
        errors: measured.errors,
        journal,
        live_requests: if kind == Kind::Baseline {
            0
        } else {
            measured.submitted.saturating_sub(measured.resulted)
        },
    })
}

/// Serves the null service (the hidden `--serve-null ADDR` of `labaid-bench`).
pub async fn serve_null(addr: SocketAddr) -> anyhow::Result<()> {
    null::serve(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orgs_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orgs.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    fn error(text: &str) -> String {
        let (_dir, path) = orgs_file(text);
        format!("{:#}", Orgs::load(&path).expect_err("refused"))
    }

    #[test]
    fn an_orgs_file_names_trusts_and_labs_with_tokens_or_certificates_beside_it() {
        let (dir, path) = orgs_file(
            "[[trust]]\nods = \"rj1\"\ntoken = \"labaid_t\"\n\n\
             [[lab]]\nods = \"RJ7\"\ncert = \"certs/RJ7.pem\"\nkey = \"/abs/RJ7.key\"\n",
        );
        let orgs = Orgs::load(&path).expect("loads");
        assert_eq!(orgs.trusts.len(), 1);
        assert_eq!(orgs.trusts[0].ods, "RJ1");
        assert_eq!(orgs.trusts[0].token.as_deref(), Some("labaid_t"));
        assert_eq!(orgs.trusts[0].identity, None);
        let lab = &orgs.labs[0];
        assert_eq!(lab.token, None);
        assert_eq!(
            lab.identity,
            Some((
                dir.path().join("certs/RJ7.pem"),
                PathBuf::from("/abs/RJ7.key")
            ))
        );
    }

    #[test]
    fn an_orgs_file_that_cannot_be_used_says_why_in_one_line() {
        for (text, why) in [
            (
                "[[lab]]\nods = \"RJ7\"\ntoken = \"t\"\n",
                "names no [[trust]]",
            ),
            (
                "[[trust]]\nods = \"RJ1\"\n",
                "neither a token nor a cert and key",
            ),
            (
                "[[trust]]\nods = \"RJ1\"\ncert = \"RJ1.pem\"\n",
                "needs both cert and key",
            ),
            ("[[trust]]\nods = \"R!\"\ntoken = \"t\"\n", "ods \"R!\""),
            (
                "[[trust]]\nods = \"RJ1\"\ntokn = \"t\"\n",
                "unknown field `tokn`",
            ),
        ] {
            let message = error(text);
            assert!(message.contains(why), "{text:?}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let missing = Orgs::load(Path::new("/nonexistent/orgs.toml")).expect_err("refused");
        assert!(format!("{missing:#}").contains("cannot read /nonexistent/orgs.toml"));
    }
}
