//! labaid-broker: the labaid gRPC server.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use labaid::Config;
use labaid::telemetry::{self, LogFormat};

/// The labaid broker: routes urgent blood-test requests from trusts to partner NHS labs.
///
/// With no config file it runs the bundled south-east London demo on loopback.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on [default: 127.0.0.1:50051, or the config file's `listen`].
    #[arg(long, env = "LABAID_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Address of the metrics and health HTTP listener (`/metrics`, `/healthz`, `/readyz`)
    /// [default: 127.0.0.1:9464, or the config file's `metrics_listen`].
    #[arg(long, env = "LABAID_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Config file (TOML); without one the bundled demo directory is used.
    #[arg(long, env = "LABAID_CONFIG")]
    config: Option<PathBuf>,
    /// Directory the store keeps its journal and snapshots in [default: ./labaid-data, or the
    /// config file's `data_dir`].
    #[arg(long, env = "LABAID_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Journal bytes after which a snapshot is taken (at least; it grows with the snapshot's size).
    #[arg(long, env = "LABAID_SNAPSHOT_MIN_BYTES", default_value_t = labaid::store::DEFAULT_SNAPSHOT_MIN_BYTES)]
    snapshot_min_bytes: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "LABAID_LOG_FORMAT")]
    log_format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(match args.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    });
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::demo()?,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.store.snapshot_min_bytes = args.snapshot_min_bytes;
    if let Some(metrics) = args.metrics_listen {
        config.metrics_listen = Some(metrics);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    labaid::serve(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
