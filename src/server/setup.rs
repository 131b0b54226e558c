//! What a broker is configured with, checked once at start: the effective configuration's log
//! line, transport security, authentication, rate limits and per-connection limits.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;

use crate::auth::{Authenticator, RateLimiter};
use crate::config::{Config, Limits, TlsPaths};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store;

/// Logs the configuration in effect; it holds no secrets but the log masks nothing by accident
/// because only these fields are printed.
pub(super) fn log_effective_config(
    config: &Config,
    grpc: SocketAddr,
    ops: Option<SocketAddr>,
    web: Option<SocketAddr>,
) {
    tracing::info!(
        listen = %grpc,
        metrics_listen = %ops.map_or_else(|| "off".to_string(), |a| a.to_string()),
        web_listen = %web.map_or_else(|| "off".to_string(), |a| a.to_string()),
        data_dir = %config.data_dir.display(),
        snapshot_min_bytes = config.store.snapshot_min_bytes,
        demo = config.demo,
        trusts = %config.trusts.keys().map(ToString::to_string).collect::<Vec<_>>().join(","),
        labs = %config.labs.iter().map(|l| l.ods.to_string()).collect::<Vec<_>>().join(","),
        tests = config.catalogue.len(),
        lease_stat_s = config.leases.stat_ms / 1000,
        lease_asap_s = config.leases.asap_ms / 1000,
        lease_urgent_s = config.leases.urgent_ms / 1000,
        lease_routine_s = config.leases.routine_ms / 1000,
        retention_days = config.retention_ms / 86_400_000,
        shutdown_grace_s = config.shutdown_grace.as_secs(),
        heartbeat_timeout_s = config.heartbeat_timeout.map_or(0, |t| t.as_secs()),
        "effective configuration"
    );
}

// --- Transport security, authentication and limits. ---

/// The TLS the listener needs, or the reason the broker will not start: plaintext is served only
/// on loopback, and there only for the demo or a config that says `allow_plaintext_loopback`.
pub(super) fn transport_security(
    addr: SocketAddr,
    config: &Config,
    demo_tokens: bool,
) -> Result<Option<TlsAcceptor>, Error> {
    let refuse = |why: String| Err(Error::FailedPrecondition(why));
    match &config.tls {
        Some(paths) => {
            // Sites without a PKI may still call with a token over server-authenticated TLS.
            let tokens_allowed = demo_tokens || !config.tokens.is_empty();
            tracing::info!(
                listen = %addr,
                mutual = paths.client_ca.is_some(),
                client_cert_optional = tokens_allowed,
                "TLS enabled"
            );
            tls_config(paths, tokens_allowed).map(Some)
        }
        None if !addr.ip().is_loopback() => refuse(format!(
            "refusing to serve plaintext on {addr}: patient data needs TLS; set --tls-cert and \
             --tls-key (and --client-ca for mutual TLS), or listen on loopback"
        )),
        None if config.demo || config.allow_plaintext_loopback => {
            tracing::warn!(listen = %addr, "serving PLAINTEXT on loopback: for demos and local tests only");
            Ok(None)
        }
        None => refuse(format!(
            "refusing to serve plaintext on {addr}: configure [tls], or set \
             allow_plaintext_loopback = true in the config file for local use"
        )),
    }
}

fn tls_config(paths: &TlsPaths, client_cert_optional: bool) -> Result<TlsAcceptor, Error> {
    let mut config = crate::web::tls::server_config(paths, client_cert_optional, "tls")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Times and weighs each snapshot once the writer has made it durable.
pub(super) fn snapshot_metrics(metrics: Arc<Metrics>) -> store::SnapshotObserver {
    Box::new(move |kind, bytes, took| {
        let kind = kind.name();
        metrics
            .store_snapshot_write
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
        metrics
            .store_snapshot_bytes
            .with_label_values(&[kind])
            .inc_by(bytes);
    })
}

/// One limiter for every way in (gRPC and the coordinator page): an organisation's calls and
/// audit volume are counted once, wherever they come from.
pub(super) fn rate_limiter(config: &Config) -> RateLimiter {
    RateLimiter::new(
        config.limits.rate_per_second,
        config.limits.burst,
        config.clock.clone(),
    )
    .with_audit_budget(
        config.limits.audit_bytes_per_second,
        config.limits.audit_burst_bytes,
    )
}

pub(super) fn authenticator(
    config: &Config,
    demo_tokens: bool,
    limiter: RateLimiter,
) -> Authenticator {
    Authenticator::new(
        config.trusts.keys().cloned(),
        config.labs.iter().map(|l| l.ods.clone()),
        demo_tokens,
    )
    .with_coordinators(config.coordinators.iter().cloned())
    .with_tokens(config.tokens.iter().cloned())
    .with_edges(config.edges.iter().cloned())
    .with_rate_limit(limiter)
}

/// Per-connection limits; per-organisation ones are in the authenticator and the watch limiter.
/// HTTP/2's stream limit bounds the calls running on a connection: a call runs only while its
/// stream is open, so a per-connection concurrency layer as well would take a semaphore permit
/// per call, a measurable cost, and never wait.
pub(super) fn limited(builder: Server, limits: &Limits) -> Server {
    builder
        .max_concurrent_streams(limits.streams_per_connection)
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(limits.keepalive))
}
