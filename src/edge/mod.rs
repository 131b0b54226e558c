//! labaid-edge: adapters that let a trust's systems use labaid without new code, running inside
//! the trust's network as a gRPC client with the trust's own credential. This module holds what
//! the adapters share: the arguments, the broker connection, the metrics listener and the
//! graceful stop; `hl7` holds the HL7 v2 / MLLP adapter and `fhir` the FHIR R4 facade.

pub mod broker;
pub mod fhir;
pub mod hl7;
pub mod metrics;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::GlobalOpts;
use crate::client::{ConnectOptions, TlsFiles};
use crate::telemetry::LogFormat;

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

/// The broker connection, as labctl takes it: flags over `LABAID_*` variables over labctl's
/// profile file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker address [env: LABAID_ADDR] [default: http://127.0.0.1:50051]
    #[arg(long, value_name = "URL")]
    pub addr: Option<String>,
    /// Bearer token naming the trust [env: LABAID_TOKEN]; prefer the variable, as a command
    /// line is visible to other users of the machine
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// CA that issued the broker's TLS certificate, PEM [env: LABAID_CA]; turns on TLS
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The trust's client certificate for mutual TLS, PEM [env: LABAID_CERT]
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key of the client certificate, PEM [env: LABAID_KEY]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// labctl's profile file [env: LABAID_PROFILE] [default: ~/.config/labaid/labctl.toml]
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
}

impl BrokerArgs {
    /// The validated connection options, with labctl's rules and messages.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnectOptions, String> {
        let flags = GlobalOpts {
            addr: self.addr.clone(),
            token: self.token.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            profile: self.profile.clone(),
            ..GlobalOpts::default()
        };
        let s = crate::cli::config::resolve(&flags, env).map_err(|e| e.to_string())?;
        let tls = match (&s.ca, &s.cert, &s.key) {
            (Some(ca), cert, key) if cert.is_some() == key.is_some() => Some(TlsFiles {
                ca: ca.value.clone(),
                cert: cert.as_ref().map(|c| c.value.clone()),
                key: key.as_ref().map(|k| k.value.clone()),
            }),
            (Some(_), _, _) => {
                return Err("--cert and --key go together (LABAID_CERT and LABAID_KEY)".into());
            }
            (None, None, None) if s.addr.value.starts_with("https://") => {
                return Err("an https:// address needs --ca (or LABAID_CA)".into());
            }
            (None, None, None) => None,
            (None, _, _) => return Err("--cert and --key need --ca (or LABAID_CA)".into()),
        };
        Ok(ConnectOptions {
            addr: s.addr.value,
            token: s.token.map(|t| t.value),
            connect_timeout: Some(Duration::from_secs(5)),
            tls,
        })
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogArg {
    /// One JSON object per line.
    Json,
    /// For people at a terminal.
    Text,
}

/// Everything labaid-edge takes.
#[derive(Debug, clap::Parser)]
#[command(
    name = "labaid-edge",
    version,
    about = "Connects a trust's integration engine to labaid: HL7 v2 orders in and results out over MLLP"
)]
pub struct Args {
    /// The broker connection.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Where the edge keeps its state (the results outbox and the event cursor)
    #[arg(
        long,
        env = "LABAID_EDGE_DATA_DIR",
        value_name = "DIR",
        default_value = "labaid-edge-data"
    )]
    pub data_dir: PathBuf,
    /// The trust's config file: code map, priority map, time zone (see the README)
    #[arg(long, env = "LABAID_EDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Prometheus metrics, /healthz and /readyz
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_listen: SocketAddr,
    /// Log format
    #[arg(long, value_enum, default_value_t = LogArg::Json)]
    pub log_format: LogArg,
    /// The HL7 v2 adapter.
    #[command(flatten)]
    pub hl7: hl7::Hl7Args,
}

// ---------------------------------------------------------------------------------------------
// Validated config
// ---------------------------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The broker connection.
    pub broker: ConnectOptions,
    /// The state directory.
    pub data_dir: PathBuf,
    /// The metrics listener.
    pub metrics_listen: SocketAddr,
    /// The HL7 adapter.
    pub hl7: hl7::Hl7Config,
}

impl Args {
    /// The log format asked for.
    pub fn log_format(&self) -> LogFormat {
        match self.log_format {
            LogArg::Json => LogFormat::Json,
            LogArg::Text => LogFormat::Text,
        }
    }

    /// Checks everything, reading the config file and the TLS files.
    pub fn validate(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let broker = self.broker.resolve(env)?;
        let profile = match &self.config {
            Some(path) => hl7::profile::Profile::load(path)?,
            None => hl7::profile::Profile::default(),
        };
        Ok(Config {
            broker,
            data_dir: self.data_dir.clone(),
            metrics_listen: self.metrics_listen,
            hl7: self.hl7.validate(profile)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// Why the edge stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A listener could not be bound, or the data directory is unusable.
    #[error("{0}")]
    Setup(String),
    /// The results outbox failed; nothing is acknowledged past a failed write.
    #[error(transparent)]
    Outbox(#[from] hl7::outbox::OutboxError),
}

/// Runs the edge until `shutdown` resolves: binds its listeners, connects to the broker (until
/// then `/readyz` answers 503), serves, and on shutdown finishes the messages in hand.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        EdgeError::Setup(format!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let lock = lock_data_dir(&config.data_dir)?;
    let metrics = metrics::EdgeMetrics::new();
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping: finishing the messages in hand");
        let _ = stop_tx.send(true);
    });
    let ops = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|e| {
            EdgeError::Setup(format!(
                "cannot listen on {} for metrics: {e}",
                config.metrics_listen
            ))
        })?;
    let ops_addr = ops
        .local_addr()
        .map_err(|e| EdgeError::Setup(e.to_string()))?;
    let ops_task = tokio::spawn(metrics::serve(ops, metrics.clone(), stopped(stop.clone())));
    let mllp = TcpListener::bind(config.hl7.listen).await.map_err(|e| {
        EdgeError::Setup(format!(
            "cannot listen on {} for MLLP: {e}",
            config.hl7.listen
        ))
    })?;
    let mllp_addr = mllp
        .local_addr()
        .map_err(|e| EdgeError::Setup(e.to_string()))?;
    tracing::info!(metrics.addr = %ops_addr, mllp.addr = %mllp_addr, "listening");

    let Some(broker) =
        broker::Broker::connect(&config.broker, Duration::from_secs(2), stop.clone()).await
    else {
        let _ = ops_task.await;
        return Ok(());
    };
    let result = hl7::serve(
        mllp,
        config.hl7,
        &config.data_dir,
        broker,
        metrics.clone(),
        stop.clone(),
    )
    .await;
    metrics.set_ready(false);
    let _ = ops_task.await;
    drop(lock);
    tracing::info!("stopped");
    result
}

/// Resolves once the stop flag is set.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One edge per data directory: a second would deliver every result twice.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, EdgeError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EdgeError::Setup(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock().map_err(|_| {
        EdgeError::Setup(format!(
            "another labaid-edge is using the data directory {}",
            dir.display()
        ))
    })?;
    Ok(file)
}

/// Shared handles for the adapters.
pub type Metrics = Arc<metrics::EdgeMetrics>;
