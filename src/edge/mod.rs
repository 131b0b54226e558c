//! labaid-edge: adapters that let a trust's systems use labaid without new code, running inside
//! the trust's network as a gRPC client of the broker. This module holds what the adapters
//! share: the arguments, the broker connection, the metrics listener and the graceful stop;
//! `hl7` holds the HL7 v2 / MLLP adapter (which calls with the trust's own credential) and
//! `fhir` the FHIR R4 facade (which calls with each caller's). One process runs either or both.

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

/// A listener's address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

/// Parses `--mllp-listen` and `--fhir-listen`: an address, or `off`.
pub fn parse_listen(raw: &str) -> Result<Listen, String> {
    match raw {
        "off" => Ok(Listen(None)),
        addr => addr
            .parse()
            .map(|a| Listen(Some(a)))
            .map_err(|e| format!("{e} (expected e.g. 127.0.0.1:2575, or off)")),
    }
}

/// The FHIR facade's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FhirArgs {
    /// Where FHIR R4 clients call (REST, application/fhir+json)
    #[arg(long, env = "LABAID_FHIR_LISTEN", value_name = "ADDR|off", default_value = fhir::DEFAULT_LISTEN, value_parser = parse_listen)]
    pub fhir_listen: Listen,
    /// The base URL FHIR clients use, for links in answers [default: http(s)://<fhir-listen>]
    #[arg(long, env = "LABAID_FHIR_BASE_URL", value_name = "URL")]
    pub fhir_base_url: Option<String>,
    /// Certificate chain (PEM) for HTTPS on the FHIR listener; required off loopback
    #[arg(
        long,
        env = "LABAID_FHIR_TLS_CERT",
        value_name = "FILE",
        requires = "fhir_tls_key"
    )]
    pub fhir_tls_cert: Option<PathBuf>,
    /// Its private key (PEM)
    #[arg(
        long,
        env = "LABAID_FHIR_TLS_KEY",
        value_name = "FILE",
        requires = "fhir_tls_cert"
    )]
    pub fhir_tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates (URI SAN urn:ods:<ODS>) identify FHIR callers, as on
    /// the broker's gRPC API; needs HTTPS and the edge's own credential (--fhir-edge-token, or
    /// --fhir-edge-cert and --fhir-edge-key)
    #[arg(
        long,
        env = "LABAID_FHIR_CLIENT_CA",
        value_name = "FILE",
        requires = "fhir_tls_cert"
    )]
    pub fhir_client_ca: Option<PathBuf>,
    /// The edge's own token, as the broker's [[edge]] entry lists it, for calls on behalf of
    /// certificate callers [env: LABAID_FHIR_EDGE_TOKEN]; prefer the variable
    #[arg(long, value_name = "TOKEN", requires = "fhir_client_ca")]
    pub fhir_edge_token: Option<String>,
    /// The edge's own client certificate (PEM, URI SAN urn:labaid:edge:<id>) for the broker,
    /// for calls on behalf of certificate callers; needs --ca
    #[arg(
        long,
        env = "LABAID_FHIR_EDGE_CERT",
        value_name = "FILE",
        requires_all = ["fhir_edge_key", "fhir_client_ca"]
    )]
    pub fhir_edge_cert: Option<PathBuf>,
    /// Its private key (PEM)
    #[arg(
        long,
        env = "LABAID_FHIR_EDGE_KEY",
        value_name = "FILE",
        requires = "fhir_edge_cert"
    )]
    pub fhir_edge_key: Option<PathBuf>,
    /// The code system URI of the labaid catalogue's own test codes, read in ServiceRequest.code
    /// and written in answers; set it to one the deployment owns, the same on every edge
    #[arg(
        long,
        env = "LABAID_FHIR_CATALOGUE_SYSTEM",
        value_name = "URI",
        default_value = fhir::codes::DEFAULT_CATALOGUE_SYSTEM
    )]
    pub fhir_catalogue_system: String,
}

impl FhirArgs {
    /// The facade's listener and settings, or `None` when it is off. Plain HTTP is refused off
    /// loopback: the facade carries patient data.
    fn validate(
        &self,
        broker: &ConnectOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<FhirListen>, String> {
        let Some(addr) = self.fhir_listen.0 else {
            return Ok(None);
        };
        let catalogue_system = fhir::codes::parse_system(&self.fhir_catalogue_system)
            .map_err(|e| format!("--fhir-catalogue-system: {e}"))?;
        let edge = self.edge_credential(broker, env)?;
        let tls = match (&self.fhir_tls_cert, &self.fhir_tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ if !addr.ip().is_loopback() => {
                return Err(format!(
                    "refusing to serve FHIR in plaintext on {addr}: patient data needs TLS; give --fhir-tls-cert and --fhir-tls-key"
                ));
            }
            _ => None,
        };
        Ok(Some(FhirListen {
            addr,
            config: fhir::FhirConfig {
                // Every FHIR call carries its own caller's token, never the edge's.
                broker: ConnectOptions {
                    token: None,
                    ..broker.clone()
                },
                tls,
                base_url: self.fhir_base_url.clone(),
                client_ca: self.fhir_client_ca.clone(),
                edge,
                catalogue_system,
            },
        }))
    }

    /// The edge's own connection for calls on behalf of certificate callers: its token or its
    /// certificate (one of them), and only with --fhir-client-ca. It never presents the trust's
    /// --cert, which would make the broker see two callers.
    fn edge_credential(
        &self,
        broker: &ConnectOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ConnectOptions>, String> {
        let token = self
            .fhir_edge_token
            .clone()
            .or_else(|| env("LABAID_FHIR_EDGE_TOKEN"))
            .filter(|t| !t.trim().is_empty());
        if self.fhir_client_ca.is_none() {
            if token.is_some() {
                return Err(
                    "--fhir-edge-token (LABAID_FHIR_EDGE_TOKEN) is used only with --fhir-client-ca"
                        .into(),
                );
            }
            return Ok(None);
        }
        let tls = match (&self.fhir_edge_cert, &self.fhir_edge_key, &token) {
            (Some(_), _, Some(_)) => {
                return Err(
                    "give the edge one credential: --fhir-edge-token or --fhir-edge-cert, not both"
                        .into(),
                );
            }
            (Some(cert), Some(key), None) => match &broker.tls {
                Some(files) => Some(TlsFiles {
                    ca: files.ca.clone(),
                    cert: Some(cert.clone()),
                    key: Some(key.clone()),
                }),
                None => return Err("--fhir-edge-cert needs TLS to the broker: give --ca".into()),
            },
            (None, None, Some(_)) => broker.tls.as_ref().map(|files| TlsFiles {
                cert: None,
                key: None,
                ..files.clone()
            }),
            _ => {
                return Err(
                    "--fhir-client-ca needs the edge's own credential for the broker: \
                     --fhir-edge-token (LABAID_FHIR_EDGE_TOKEN), or --fhir-edge-cert and --fhir-edge-key"
                        .into(),
                );
            }
        };
        Ok(Some(ConnectOptions {
            token,
            tls,
            ..broker.clone()
        }))
    }
}

/// The FHIR facade, when it is on.
#[derive(Debug)]
pub struct FhirListen {
    /// Its listener's address.
    pub addr: SocketAddr,
    /// Its settings.
    pub config: fhir::FhirConfig,
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
    about = "Connects a trust's systems to labaid: HL7 v2 orders in and results out over MLLP, and a FHIR R4 facade"
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
    /// The FHIR facade.
    #[command(flatten)]
    pub fhir: FhirArgs,
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
    /// The FHIR facade, when it is on.
    pub fhir: Option<FhirListen>,
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
        let hl7 = self.hl7.validate(profile)?;
        let fhir = self.fhir.validate(&broker, env)?;
        if hl7.listen.is_none() && fhir.is_none() {
            return Err("--mllp-listen and --fhir-listen are both off: nothing to serve".into());
        }
        Ok(Config {
            broker,
            data_dir: self.data_dir.clone(),
            metrics_listen: self.metrics_listen,
            hl7,
            fhir,
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
    /// The FHIR facade could not start.
    #[error("FHIR: {0}")]
    Fhir(#[from] fhir::EdgeError),
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
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("stopping: finishing the messages in hand");
            let _ = stop_tx.send(true);
        });
    }
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
    let mllp = match config.hl7.listen {
        Some(addr) => Some(bind(addr, "MLLP").await?),
        None => None,
    };
    let fhir = match config.fhir {
        Some(f) => Some((bind(f.addr, "FHIR").await?, f.config)),
        None => None,
    };
    let shown = |l: Option<&TcpListener>| {
        l.and_then(|l| l.local_addr().ok())
            .map_or_else(|| "off".to_string(), |a| a.to_string())
    };
    tracing::info!(
        metrics.addr = %ops_addr,
        mllp.addr = %shown(mllp.as_ref()),
        fhir.addr = %shown(fhir.as_ref().map(|(l, _)| l)),
        "listening"
    );

    let fhir_task =
        fhir.map(|(listener, f)| tokio::spawn(fhir::serve(listener, f, stopped(stop.clone()))));
    let result = match mllp {
        Some(mllp) => {
            match broker::Broker::connect(&config.broker, Duration::from_secs(2), stop.clone())
                .await
            {
                Some(broker) => {
                    hl7::serve(
                        mllp,
                        config.hl7,
                        &config.data_dir,
                        broker,
                        metrics.clone(),
                        stop.clone(),
                    )
                    .await
                }
                None => Ok(()),
            }
        }
        None => {
            // The facade connects on its first call and answers 503 while the broker is away.
            metrics.set_ready(true);
            stopped(stop.clone()).await;
            Ok(())
        }
    };
    metrics.set_ready(false);
    // The HL7 side may have stopped on an error: the facade stops with it.
    let _ = stop_tx.send(true);
    let fhir_result = match fhir_task {
        Some(task) => task
            .await
            .map_err(|e| EdgeError::Setup(format!("the FHIR task failed: {e}")))?
            .map_err(EdgeError::from),
        None => Ok(()),
    };
    let _ = ops_task.await;
    drop(lock);
    tracing::info!("stopped");
    result.and(fhir_result)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, EdgeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| EdgeError::Setup(format!("cannot listen on {addr} for {what}: {e}")))
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
