//! labaid-bench: load generator for a broker it starts itself (or one given by --addr), with a
//! null gRPC service under the same load as the baseline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use labaid::bench::{self, Kind, LabsUse, Options};

// The same allocator as the broker, so that the null service (the baseline) and the load
// generator are not handicapped against it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measures the broker per phase (submit acknowledged, offer delivered, accepted, result
/// delivered) as a ratio to plain gRPC on this machine.
///
/// Without --addr it starts a broker on a generated directory in a temporary data directory, one
/// fresh broker per scenario: this build's broker, served by a child process of this executable,
/// or the `labaid-broker` given by --broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A running broker to measure instead, as the demo organisations (a demo-mode broker) or as
    /// those of --orgs.
    #[arg(long)]
    addr: Option<String>,
    /// With --addr: the CA of the broker's TLS certificate (PEM); turns TLS on.
    #[arg(long, requires = "addr", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With --addr: who to act as, a TOML file of `[[trust]]` and `[[lab]]` tables, each with
    /// `ods` and a `token`, or a client `cert` and `key` [default: the demo organisations].
    #[arg(long, requires = "addr", value_name = "FILE")]
    orgs: Option<PathBuf>,
    /// Measured time per scenario, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Load before measuring starts.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// Connections the trusts submit over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Trusts in the generated directory (not with --addr: see --orgs).
    #[arg(long, default_value_t = 2, conflicts_with = "addr")]
    trusts: usize,
    /// Labs in the generated directory, each performing every test with large capacity (not with
    /// --addr: see --orgs).
    #[arg(long, default_value_t = 4, conflicts_with = "addr")]
    labs: usize,
    /// Submissions per second for the offer-latency scenario [default: half the submit peak].
    #[arg(long)]
    rate: Option<f64>,
    /// How the labs take and work offers: one Work stream each (offers in, actions and their
    /// answers on the same stream), or WatchOffers and a call per action.
    #[arg(long, value_enum, default_value_t = LabsUse::Work)]
    labs_use: LabsUse,
    /// Scenarios to run [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Where temporary data directories go: a real disk, since a tmpfs makes every sync free.
    #[arg(long, env = "LABAID_BENCH_DIR")]
    work_dir: Option<PathBuf>,
    /// A `labaid-broker` executable to measure instead of this build's broker, e.g. to compare
    /// two builds in one window of the machine's load.
    #[arg(long, conflicts_with = "addr")]
    broker: Option<PathBuf>,
    /// Measure the PostgreSQL store: a server URL (postgres://user@host:port/db); each
    /// scenario's broker gets a database of its own there, dropped afterwards.
    #[arg(long, value_name = "URL", conflicts_with = "addr")]
    store: Option<String>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Serve the null service on ADDR (used by the bench itself).
    #[arg(long, hide = true)]
    serve_null: Option<SocketAddr>,
    /// Serve a broker with the config file CONFIG, as `labaid-broker --config` does (used by the
    /// bench itself).
    #[arg(long, hide = true, value_name = "CONFIG")]
    serve_broker: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    Baseline,
    Submit,
    Dispatch,
    Cycle,
    OfferLatency,
}

fn duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, scale) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = raw.strip_suffix('m') {
        (n, 60.0)
    } else {
        (raw, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{raw:?}: {e}"))
}

fn main() -> ExitCode {
    // As the broker does, for itself and the null service (a child of this process).
    if let Err(e) = labaid::memory::disable_transparent_huge_pages() {
        eprintln!("labaid-bench: cannot turn transparent huge pages off: {e}");
    }
    let args = Args::parse();
    if args.serve_broker.is_some() {
        // The broker's log goes where `labaid-broker`'s would: stderr, the run's `broker.log`.
        labaid::telemetry::init(labaid::telemetry::LogFormat::Text);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("labaid-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.serve_null {
        return match runtime.block_on(bench::serve_null(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("labaid-bench: null service: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(config) = &args.serve_broker {
        return match runtime.block_on(bench::serve_broker(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("labaid-bench: broker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(path) = &args.broker
        && !path.is_file()
    {
        eprintln!("labaid-bench: --broker {}: no such file", path.display());
        return ExitCode::from(2);
    }
    let remote = match args.addr {
        None => None,
        Some(addr) => match bench::Remote::new(addr, args.ca, args.orgs.as_deref()) {
            Ok(remote) => Some(remote),
            Err(e) => {
                eprintln!("labaid-bench: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    let kinds = if args.scenario.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.scenario
            .iter()
            .map(|s| match s {
                Scenario::Baseline => Kind::Baseline,
                Scenario::Submit => Kind::Submit,
                Scenario::Dispatch => Kind::Dispatch,
                Scenario::Cycle => Kind::Cycle,
                Scenario::OfferLatency => Kind::OfferLatency,
            })
            .collect()
    };
    let options = Options {
        remote,
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        in_flight: args.in_flight,
        trusts: args.trusts,
        labs: args.labs,
        rate: args.rate,
        labs_use: args.labs_use,
        kinds,
        work_dir: args.work_dir.unwrap_or_else(std::env::temp_dir),
        broker: args.broker,
        store: args.store,
    };
    if let Err(e) = options.check() {
        eprintln!("labaid-bench: {e:#}");
        return ExitCode::from(2);
    }
    match runtime.block_on(bench::run(&options)) {
        Ok(report) if args.json => match serde_json::to_string_pretty(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("labaid-bench: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(report) => {
            print!("{}", report.table());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("labaid-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
