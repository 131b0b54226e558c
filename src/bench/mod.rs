//! labaid-bench: runs a broker (a child process serving this build's broker, or a given
//! `labaid-broker` executable) and a null gRPC service under the same load, and reports each
//! phase's throughput and latency as a ratio to plain gRPC on this machine.

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
use crate::client::{Client, ConnectOptions};
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

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// A running broker to use instead of starting one (demo tokens, demo directory).
    pub addr: Option<String>,
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
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
    };
    let url = format!("http://{addr}");
    let trusts = vec![Org {
        ods: "RJ1".into(),
        token: "demo:RJ1".into(),
    }];
    wait_ready(&url, &trusts[0], false).await?;
    let load = Load {
        addr: url,
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
    let (url, trusts, labs, server) = match &options.addr {
        Some(addr) => {
            let url = if addr.contains("://") {
                addr.clone()
            } else {
                format!("http://{addr}")
            };
            let demo = |c: &str| Org {
                ods: c.into(),
                token: format!("demo:{c}"),
            };
            let trusts = vec![demo("RJ1"), demo("RJZ")];
            let labs = ["RJ7", "R1H", "RJ2", "RJ6", "RAL", "RAX"]
                .map(demo)
                .to_vec();
            (url, trusts, labs, None)
        }
        None => {
            let (url, trusts, labs, server) = start_broker(options)?;
            (url, trusts, labs, Some(server))
        }
    };
    wait_ready(&url, &trusts[0], true).await?;
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
    let (config, trusts, labs) = generated_config(&dir.join("data"), addr, metrics, options)?;
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
    let _ = writeln!(out, "data_dir = {:?}", data_dir.display().to_string());
    let _ = writeln!(out, "allow_plaintext_loopback = true\n");
    let _ = writeln!(
        out,
        "[limits]\nrate_per_second = 10000000\nburst = 10000000\nwatches_per_org = 64\n\
         streams_per_connection = 4096\n"
    );
    let mut org = |code: &str, role: Role| -> anyhow::Result<Org> {
        let ods = OdsCode::parse(code).map_err(anyhow::Error::msg)?;
        let new = create_token(&ods, role)?;
        entries.push_str(&new.config_entry);
        entries.push('\n');
        Ok(Org {
            ods: code.to_string(),
            token: new.token,
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
/// answers a submission.
async fn wait_ready(url: &str, org: &Org, broker: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let options = ConnectOptions {
            addr: url.to_string(),
            token: Some(org.token.clone()),
            connect_timeout: Some(Duration::from_secs(2)),
            tls: None,
        };
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
