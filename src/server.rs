//! The broker server: wires the store, the engine and the gRPC services onto a bound listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::api::{Context, DirectoryApi, LabApi, RequestApi};
use crate::audit::AuditLog;
use crate::auth::{Authenticator, RateLimiter, WatchLimiter};
use crate::config::{Config, Limits, TlsPaths};
use crate::engine::{Engine, Views};
use crate::error::Error;
use crate::proto;
use crate::proto::directory_service_server::DirectoryServiceServer;
use crate::proto::lab_service_server::LabServiceServer;
use crate::proto::request_service_server::RequestServiceServer;
use crate::routing::Router;
use crate::store::MemoryJournal;

/// Largest message the broker accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Serves the broker on `listener` until `shutdown` resolves, then stops taking calls, ends watch
/// streams with UNAVAILABLE (so clients reconnect), and returns once in-flight calls are done.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener has no address: {e}")))?;
    let demo_tokens = config.demo && addr.ip().is_loopback();
    let tls = transport_security(addr, &config, demo_tokens)?;
    if demo_tokens {
        tracing::warn!(listen = %addr, "demo mode: demo tokens accepted on loopback");
    }
    let router = Router::new(
        config.catalogue.clone(),
        config.trusts.clone(),
        config.labs.clone(),
        config.leases,
        config.retention_ms,
    );
    let views = Arc::new(Views::new(&router, config.retention_ms));
    let (engine, sequencer) = Engine::start(
        router,
        Box::new(MemoryJournal::default()),
        views,
        config.clock.clone(),
    )?;
    let auth = authenticator(&config, demo_tokens);
    let (audit, audit_writer) = AuditLog::open(&config.data_dir, config.clock.clone())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Context {
        engine: engine.clone(),
        auth,
        shutdown: stop_rx,
        audit,
        watches: WatchLimiter::new(config.limits.watches_per_org),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        "",
        "labaid.v1.RequestService",
        "labaid.v1.LabService",
        "labaid.v1.DirectoryService",
    ] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    tracing::info!(listen = %addr, labs = config.labs.len(), trusts = config.trusts.len(), "broker serving");
    let stopping_engine = engine.clone();
    let stopping_health = health.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down");
        stopping_engine.stop_accepting();
        for name in [
            "",
            "labaid.v1.RequestService",
            "labaid.v1.LabService",
            "labaid.v1.DirectoryService",
        ] {
            stopping_health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let _ = stop_tx.send(true);
    };
    let mut builder = limited(Server::builder(), &config.limits);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::FailedPrecondition(format!("tls: {e}")))?;
    }
    let result = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            RequestServiceServer::new(RequestApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            LabServiceServer::new(LabApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            DirectoryServiceServer::new(DirectoryApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), graceful)
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")));
    drop(ctx);
    drop(engine);
    // The sequencer ends once every engine handle is gone; wait so the journal is complete.
    let _ = tokio::task::spawn_blocking(move || sequencer.join()).await;
    let _ = tokio::task::spawn_blocking(move || audit_writer.close()).await;
    tracing::info!("broker stopped");
    result
}

// --- Transport security, authentication and limits. ---

/// The TLS the listener needs, or the reason the broker will not start: plaintext is served only
/// on loopback, and there only for the demo or a config that says `allow_plaintext_loopback`.
fn transport_security(
    addr: SocketAddr,
    config: &Config,
    demo_tokens: bool,
) -> Result<Option<ServerTlsConfig>, Error> {
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

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::FailedPrecondition(format!(
            "tls: cannot read the {what} {}: {e}",
            path.display()
        ))
    })
}

fn tls_config(paths: &TlsPaths, client_cert_optional: bool) -> Result<ServerTlsConfig, Error> {
    let identity = Identity::from_pem(
        read_pem(&paths.cert, "certificate")?,
        read_pem(&paths.key, "key")?,
    );
    // A bounded handshake, so half-open TLS connections cannot pile up.
    let mut tls = ServerTlsConfig::new()
        .identity(identity)
        .timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = &paths.client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read_pem(ca, "client CA")?))
            .client_auth_optional(client_cert_optional);
    }
    Ok(tls)
}

fn authenticator(config: &Config, demo_tokens: bool) -> Authenticator {
    Authenticator::new(
        config.trusts.keys().cloned(),
        config.labs.iter().map(|l| l.ods.clone()),
        demo_tokens,
    )
    .with_coordinators(config.coordinators.iter().cloned())
    .with_tokens(config.tokens.iter().cloned())
    .with_rate_limit(RateLimiter::new(
        config.limits.rate_per_second,
        config.limits.burst,
        config.clock.clone(),
    ))
}

/// Per-connection limits; per-organisation ones are in the authenticator and the watch limiter.
fn limited(builder: Server, limits: &Limits) -> Server {
    builder
        .concurrency_limit_per_connection(limits.streams_per_connection as usize)
        .max_concurrent_streams(limits.streams_per_connection)
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(limits.keepalive))
        .tcp_keepalive(Some(limits.keepalive))
}
