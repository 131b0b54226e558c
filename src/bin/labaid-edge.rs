//! labaid-edge: connects a trust's systems to labaid in their own standards. By default it is
//! the HL7 v2 edge (orders and results over MLLP); `labaid-edge fhir …` serves the FHIR R4 facade.
//! Parses arguments, sets up logging and runs the library until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use labaid::client::{ConnectOptions, TlsFiles};
use labaid::edge::fhir::{self, FhirConfig};
use labaid::telemetry::{self, LogFormat};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("fhir") {
        return fhir_main();
    }
    let args = labaid::edge::Args::parse();
    labaid::telemetry::init(args.log_format());
    let config = match args.validate(&|name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("labaid-edge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("labaid-edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(labaid::edge::run(config, labaid::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "labaid-edge stopped");
            eprintln!("labaid-edge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// labaid-edge: FHIR R4 ordering and results over the labaid broker.
#[derive(Debug, Parser)]
#[command(name = "labaid-edge fhir", version, about)]
struct FhirArgs {
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

fn fhir_main() -> ExitCode {
    let args = FhirArgs::parse_from(std::env::args().skip(1));
    telemetry::init(match args.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    });
    match run_fhir(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("labaid-edge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run_fhir(args: FhirArgs) -> anyhow::Result<()> {
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
