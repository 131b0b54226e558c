//! labaid-edge: the adapter that lets trust systems order from labaid in their own standards
//! (here FHIR R4 over HTTP). Parses flags, sets up logging and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use labaid::client::{ConnectOptions, TlsFiles};
use labaid::edge::fhir::{self, FhirConfig};
use labaid::telemetry::{self, LogFormat};

/// labaid-edge: FHIR R4 ordering and results over the labaid broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    // ---- the broker (as labctl: flags over LABAID_* variables) ----
    /// Broker address.
    #[arg(long, env = "LABAID_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// CA that issued the broker's certificate (PEM): turns on TLS to the broker.
    #[arg(long, env = "LABAID_CA")]
    ca: Option<PathBuf>,
    /// This edge's client certificate (PEM) for a broker that requires mutual TLS. The broker
    /// then takes only callers' tokens naming the same organisation, so such an edge serves one
    /// organisation.
    #[arg(long, env = "LABAID_CERT", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "LABAID_KEY", requires = "cert")]
    key: Option<PathBuf>,

    // ---- FHIR ----
    /// Address of the FHIR R4 listener.
    #[arg(long, env = "LABAID_FHIR_LISTEN", default_value = fhir::DEFAULT_LISTEN)]
    fhir_listen: SocketAddr,
    /// The base URL clients use, for links in answers [default: http(s)://<fhir-listen>].
    #[arg(long, env = "LABAID_FHIR_BASE_URL")]
    fhir_base_url: Option<String>,
    /// Certificate chain (PEM) for HTTPS on the FHIR listener; required off loopback.
    #[arg(long, env = "LABAID_EDGE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "LABAID_EDGE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    // ---- logging ----
    /// Log format.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "LABAID_LOG_FORMAT")]
    log_format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(match args.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    });
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("labaid-edge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ if !args.fhir_listen.ip().is_loopback() => anyhow::bail!(
            "refusing to serve FHIR in plaintext on {}: patient data needs TLS; give --tls-cert and --tls-key",
            args.fhir_listen
        ),
        _ => None,
    };
    let config = FhirConfig {
        broker: ConnectOptions {
            addr: args.addr,
            token: None,
            connect_timeout: None,
            tls: args.ca.map(|ca| TlsFiles {
                ca,
                cert: args.cert,
                key: args.key,
            }),
        },
        tls,
        base_url: args.fhir_base_url,
    };
    let listener = tokio::net::TcpListener::bind(args.fhir_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.fhir_listen))?;
    fhir::serve(listener, config, labaid::shutdown_signal()).await?;
    Ok(())
}
