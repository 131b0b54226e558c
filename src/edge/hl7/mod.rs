//! The HL7 v2 adapter: OML^O21 and ORM^O01 orders in over MLLP, acknowledged only once the broker
//! holds them; ORU^R01 results out to the trust's MLLP endpoint from a durable outbox.

pub mod ack;
pub mod inbound;
pub mod message;
pub mod mllp;
pub mod orders;
pub mod oru;
pub mod outbox;
pub mod profile;
pub mod results;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::broker::Broker;
use super::tls::{self, ClientTls};
use super::{EdgeError, Metrics};

/// The HL7 adapter's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Hl7Args {
    /// Where the trust's integration engine sends orders (MLLP)
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:2575", value_parser = super::parse_listen)]
    pub mllp_listen: super::Listen,
    /// TLS certificate for the MLLP listener, PEM; turns on TLS
    #[arg(long, value_name = "FILE", requires = "mllp_tls_key")]
    pub mllp_tls_cert: Option<PathBuf>,
    /// Private key of the MLLP listener's certificate, PEM
    #[arg(long, value_name = "FILE", requires = "mllp_tls_cert")]
    pub mllp_tls_key: Option<PathBuf>,
    /// CA whose client certificates the MLLP listener requires (mutual TLS), PEM
    #[arg(long, value_name = "FILE", requires = "mllp_tls_cert")]
    pub mllp_tls_client_ca: Option<PathBuf>,
    /// The trust's inbound MLLP endpoint for results, HOST:PORT; without it results are not sent
    #[arg(long, value_name = "HOST:PORT")]
    pub results_to: Option<String>,
    /// CA that issued the results endpoint's certificate, PEM; turns on TLS to it
    #[arg(long, value_name = "FILE")]
    pub results_tls_ca: Option<PathBuf>,
    /// Client certificate for the results endpoint (mutual TLS), PEM
    #[arg(long, value_name = "FILE", requires = "results_tls_ca")]
    pub results_tls_cert: Option<PathBuf>,
    /// Private key of the results client certificate, PEM
    #[arg(long, value_name = "FILE", requires = "results_tls_ca")]
    pub results_tls_key: Option<PathBuf>,
    /// Name the results endpoint's certificate must carry [default: the host of --results-to]
    #[arg(long, value_name = "NAME", requires = "results_tls_ca")]
    pub results_tls_name: Option<String>,
    /// First wait before a failed result delivery is tried again, in milliseconds; doubles up
    /// to --results-retry-max-ms
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub results_retry_initial_ms: u64,
    /// Longest wait between delivery attempts, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub results_retry_max_ms: u64,
    /// How long to wait for the results endpoint's ACK, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub results_ack_timeout: u64,
    /// Largest HL7 message taken, in bytes; a larger one is answered AR
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Longest one MLLP frame may take to arrive, in seconds; a slower sender is cut off
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub frame_timeout: u64,
    /// Longest an MLLP connection may sit idle, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub idle_timeout: u64,
    /// Most MLLP connections served at once
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections: usize,
}

/// Where results go and how.
#[derive(Debug, Clone)]
pub struct ResultsConfig {
    /// `HOST:PORT`.
    pub to: String,
    /// TLS, when asked for.
    pub tls: Option<ClientTls>,
    /// First retry wait.
    pub retry_initial: Duration,
    /// Longest retry wait.
    pub retry_max: Duration,
    /// Wait for an ACK.
    pub ack_timeout: Duration,
}

/// The validated HL7 configuration.
pub struct Hl7Config {
    /// The MLLP listener's address; `None` (`--mllp-listen off`) turns the HL7 adapter off.
    pub listen: Option<SocketAddr>,
    /// TLS on the listener.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Framing limits.
    pub limits: mllp::Limits,
    /// Most connections at once.
    pub max_connections: usize,
    /// Results delivery, when `--results-to` is given.
    pub results: Option<ResultsConfig>,
    /// The trust's profile.
    pub profile: profile::Profile,
}

impl std::fmt::Debug for Hl7Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hl7Config")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .field("max_connections", &self.max_connections)
            .field("results", &self.results)
            .field("profile", &self.profile)
            .finish()
    }
}

impl Hl7Args {
    /// Checks the arguments and reads the TLS files.
    pub fn validate(&self, profile: profile::Profile) -> Result<Hl7Config, String> {
        let tls = match (&self.mllp_tls_cert, &self.mllp_tls_key) {
            (Some(c), Some(k)) => Some(tls::acceptor(c, k, self.mllp_tls_client_ca.as_deref())?),
            _ => None,
        };
        let results = match &self.results_to {
            None => None,
            Some(to) => {
                let host = to
                    .rsplit_once(':')
                    .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                    .ok_or_else(|| format!("--results-to {to:?} must be HOST:PORT"))?;
                let tls = match &self.results_tls_ca {
                    Some(ca) => Some(ClientTls::new(
                        ca,
                        self.results_tls_cert.as_deref(),
                        self.results_tls_key.as_deref(),
                        self.results_tls_name.as_deref().unwrap_or(&host),
                    )?),
                    None => None,
                };
                if self.results_retry_initial_ms == 0
                    || self.results_retry_max_ms < self.results_retry_initial_ms
                {
                    return Err("--results-retry-initial-ms must be positive and at most --results-retry-max-ms".into());
                }
                Some(ResultsConfig {
                    to: to.clone(),
                    tls,
                    retry_initial: Duration::from_millis(self.results_retry_initial_ms),
                    retry_max: Duration::from_millis(self.results_retry_max_ms),
                    ack_timeout: Duration::from_secs(self.results_ack_timeout.max(1)),
                })
            }
        };
        if self.max_message_bytes < 1024 {
            return Err("--max-message-bytes must be at least 1024".into());
        }
        Ok(Hl7Config {
            listen: self.mllp_listen.0,
            tls,
            limits: mllp::Limits {
                max_frame: self.max_message_bytes,
                frame_timeout: Duration::from_secs(self.frame_timeout.max(1)),
                idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
            },
            max_connections: self.max_connections.max(1),
            results,
            profile,
        })
    }
}

/// Serves orders on `listener` and, with `--results-to`, delivers results, until `stop`.
pub async fn serve(
    listener: TcpListener,
    config: Hl7Config,
    data_dir: &Path,
    broker: Broker,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<(), EdgeError> {
    let profile = std::sync::Arc::new(config.profile);
    let results = match config.results {
        Some(results_config) => {
            let outbox = outbox::Outbox::open(data_dir)?;
            tracing::info!(
                outbox.depth = outbox.depth(),
                results.cursor = outbox.cursor(),
                results.to = %results_config.to,
                "results: following the broker's events"
            );
            Some(tokio::spawn(results::run(
                outbox,
                results_config,
                broker.clone(),
                profile.clone(),
                metrics.clone(),
                stop.clone(),
            )))
        }
        None => {
            tracing::warn!("no --results-to: results are not sent back over MLLP");
            None
        }
    };
    let inbound = inbound::Inbound::new(broker, profile);
    metrics.set_ready(true);
    tracing::info!("serving HL7 orders");
    inbound::listen(
        listener,
        config.tls,
        config.limits,
        config.max_connections,
        inbound,
        metrics,
        stop,
    )
    .await;
    match results {
        Some(task) => task
            .await
            .map_err(|e| EdgeError::Setup(format!("the results task failed: {e}")))?
            .map_err(EdgeError::from),
        None => Ok(()),
    }
}
