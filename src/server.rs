//! The broker server: recovers the store (answering health NOT_SERVING meanwhile), wires the engine
//! and the gRPC services onto bound listeners with the operations HTTP listener beside them, and
//! shuts down without losing a call.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::accept::{AcceptOptions, SharedIncoming};
use crate::api::{Context, CoordinatorApi, DirectoryApi, LabApi, RequestApi};
use crate::audit::{AuditLog, DiskFloor};
use crate::auth::{Authenticator, Gate, RateLimiter, Role, WatchLimiter};
use crate::config::{Config, Limits, TlsPaths};
use crate::engine::{Engine, Views};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::ops::{LeaderHint, Presence, Readiness, RpcLayer, StartingLayer};
use crate::proto;
use crate::proto::coordinator_service_server::CoordinatorServiceServer;
use crate::proto::directory_service_server::DirectoryServiceServer;
use crate::proto::lab_service_server::LabServiceServer;
use crate::proto::request_service_server::RequestServiceServer;
use crate::routing::{Event, Router};
use crate::store::{self, Journal};
use crate::wire::frames::FramingLayer;

/// Largest message the broker accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The services gRPC health reports on ("" is the whole broker).
const HEALTH_SERVICES: [&str; 5] = [
    "",
    "labaid.v1.RequestService",
    "labaid.v1.LabService",
    "labaid.v1.DirectoryService",
    "labaid.v1.CoordinatorService",
];

/// The sockets a broker serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Metrics and health over HTTP; `None` for none.
    pub ops: Option<TcpListener>,
    /// The coordinator page; `None` for none.
    pub web: Option<TcpListener>,
    /// Told once the broker serves calls (after recovery).
    pub on_ready: Option<oneshot::Sender<()>>,
}

/// Resolves on Ctrl-C or SIGTERM: the shutdown of a broker run as a process (`labaid-broker`, and
/// the one `labaid-bench` starts).
pub async fn shutdown_signal() {
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

/// Serves the broker on `listener` (and the operations listener at `config.metrics_listen` and the
/// coordinator page at `config.web_listen`, if any) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let ops =
        match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                Error::Internal(format!("cannot listen for metrics on {addr}: {e}"))
            })?),
            None => None,
        };
    let web = match config.web_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            Error::Internal(format!(
                "cannot listen for the coordinator page on {addr}: {e}"
            ))
        })?),
        None => None,
    };
    serve_on(
        Listeners {
            grpc: listener,
            ops,
            web,
            on_ready: None,
        },
        config,
        shutdown,
    )
    .await
}

/// Serves the broker on already bound listeners until `shutdown` resolves; then stops taking
/// calls (UNAVAILABLE, health NOT_SERVING), ends watch streams with UNAVAILABLE so clients
/// reconnect, gives in-flight calls `config.shutdown_grace` to finish, and returns once the
/// sequencer has made its last batch durable.
pub async fn serve_on(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listeners
        .grpc
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener has no address: {e}")))?;
    // Shutdown is watched from the start: a standby may wait to lead for as long as it runs.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let shutdown = {
        let mut shutdown_rx = shutdown_rx.clone();
        async move {
            let _ = shutdown_rx.wait_for(|s| *s).await;
        }
    };
    let ops_addr = listeners.ops.as_ref().and_then(|l| l.local_addr().ok());
    let web_addr = listeners.web.as_ref().and_then(|l| l.local_addr().ok());
    log_effective_config(&config, addr, ops_addr, web_addr);
    let demo_tokens = config.demo && addr.ip().is_loopback();
    let tls = transport_security(addr, &config, demo_tokens)?;
    let web_tls = match (web_addr, &config.tls) {
        (Some(_), Some(paths)) => Some(crate::web::WebTls::from_paths(paths)?),
        (Some(web), None) if !web.ip().is_loopback() => {
            return Err(Error::FailedPrecondition(format!(
                "refusing to serve the coordinator page in plaintext on {web}: set --tls-cert and \
                 --tls-key, or listen on loopback"
            )));
        }
        _ => None,
    };
    if demo_tokens {
        tracing::warn!(listen = %addr, "demo mode: demo tokens accepted on loopback");
    }
    let ready = Readiness::default();
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let metrics = Arc::new(Metrics::new());
    // TLS, the per-address cap and the handshake deadline apply to every connection, from the
    // first health check while the store recovers.
    let conns = crate::accept::spawn(
        listeners.grpc,
        AcceptOptions {
            per_peer: config.limits.connections_per_peer,
            handshake_timeout: config.limits.handshake_timeout,
            keepalive: config.limits.keepalive,
            tls,
        },
        metrics.clone(),
    );
    let engine_slot = Arc::new(OnceLock::new());
    let (stop_tx, stop_rx) = watch::channel(false);

    let ops_task = listeners.ops.map(|listener| {
        let mut stopped = stop_rx.clone();
        tokio::spawn(crate::ops::serve_http(
            listener,
            metrics.clone(),
            engine_slot.clone(),
            ready.clone(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });

    // While the store recovers, answer health checks (NOT_SERVING) on the same socket, so that
    // orchestrators see a starting broker rather than a dead one.
    let (recovered_tx, recovered_rx) = oneshot::channel::<()>();
    let starting_done = Arc::new(AtomicBool::new(false));
    let leader = LeaderHint::default();
    let starting = tokio::spawn(
        Server::builder()
            .layer(StartingLayer {
                leader: leader.clone(),
            })
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(
                SharedIncoming {
                    conns: conns.clone(),
                    done: Some(starting_done.clone()),
                },
                async {
                    let _ = recovered_rx.await;
                },
            ),
    );
    // Recover before serving: nothing is answered from a state that is not yet what is durable.
    let (directory, policy, options) = (config.directory(), config.policy.clone(), config.store);
    let (router, events, journal): (Router, Vec<Event>, Box<dyn Journal>) = match &config.store_url
    {
        Some(url) => {
            let options = store::postgres::options(&config, url, addr)?;
            match store::postgres::lead(options, directory, leader, shutdown_rx).await? {
                Some(r) => (r.router, r.events, Box::new(r.journal)),
                None => {
                    tracing::info!("stopped while a standby");
                    return Ok(());
                }
            }
        }
        None => {
            let data_dir = config.data_dir.clone();
            let now = config.clock.now();
            let recovered = tokio::task::spawn_blocking(move || {
                store::open_at(&data_dir, directory, policy, options, now)
            })
            .await
            .map_err(|e| Error::Internal(format!("recovery stopped: {e}")))?
            .map_err(|e| {
                Error::Internal(format!(
                    "cannot open the data directory {}: {e}",
                    config.data_dir.display()
                ))
            })?;
            recovered
                .journal
                .observe_snapshots(snapshot_metrics(metrics.clone()));
            (
                recovered.router,
                recovered.events,
                Box::new(recovered.journal),
            )
        }
    };
    // Its connections are told to go away and finish on their own: a health watcher opened while
    // starting stays until it ends (it hears SERVING through the shared reporter).
    starting_done.store(true, Ordering::SeqCst);
    let _ = recovered_tx.send(());
    drop(starting);
    let views = Arc::new(Views::new(
        &router,
        events,
        config.retention_ms,
        metrics.clone(),
    ));
    let limiter = rate_limiter(&config);
    let (floor, floor_monitor) = DiskFloor::start(
        &config.data_dir,
        config.min_free_bytes,
        Some(metrics.clone()),
    )?;
    let (audit, audit_writer) =
        AuditLog::open(&config.data_dir, config.audit, config.clock.clone())?;
    let audit = audit.with_budget(limiter.clone()).with_floor(floor);
    let (engine, sequencer) = Engine::start(crate::engine::Parts {
        router,
        journal,
        views,
        clock: config.clock.clone(),
        metrics: metrics.clone(),
        audit: audit.clone(),
        on_fatal: crate::engine::abort_process(),
    })?;
    let _ = engine_slot.set(engine.clone());
    let auth = authenticator(&config, demo_tokens, limiter.clone());
    let ctx = Context {
        engine: engine.clone(),
        auth,
        shutdown: stop_rx.clone(),
        audit,
        watches: WatchLimiter::new(config.limits.watches_per_org),
        presence: Arc::new(Presence::default()),
        metrics: metrics.clone(),
    };
    let web_task = listeners.web.map(|listener| {
        let mut web_ctx = ctx.clone();
        // Demo tokens on the page only when the page, too, is on loopback.
        web_ctx.auth = authenticator(
            &config,
            demo_tokens && web_addr.is_some_and(|a| a.ip().is_loopback()),
            limiter,
        );
        let mut stopped = stop_rx.clone();
        tokio::spawn(crate::web::serve_web(
            listener,
            web_ctx,
            config.trusts.keys().cloned().collect(),
            config.labs.iter().map(|l| l.ods.clone()).collect(),
            web_tls,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    if let Some(timeout) = config.heartbeat_timeout {
        tokio::spawn(crate::ops::watch_heartbeats(
            engine.clone(),
            ctx.presence.clone(),
            config.clock.clone(),
            timeout,
        ));
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

    // Shutdown: refuse new work first, tell health checkers and watchers, then let tonic drain.
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let engine = engine.clone();
        let health = health.clone();
        let ready = ready.clone();
        let grace = config.shutdown_grace;
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(grace_secs = grace.as_secs(), "shutting down");
            engine.stop_accepting();
            ready.set(false);
            set_health(&health, ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
            let _ = drain_tx.send(());
        });
    }
    let grace = config.shutdown_grace;
    let server = limited(Server::builder(), &config.limits)
        .layer(RpcLayer::new(metrics))
        .layer(FramingLayer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(InterceptedService::new(
            RequestServiceServer::new(RequestApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::for_role(ctx.auth.clone(), Role::Trust),
        ))
        .add_service(InterceptedService::new(
            LabServiceServer::new(LabApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::for_role(ctx.auth.clone(), Role::Lab),
        ))
        .add_service(InterceptedService::new(
            DirectoryServiceServer::new(DirectoryApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::any_role(ctx.auth.clone()),
        ))
        .add_service(InterceptedService::new(
            CoordinatorServiceServer::new(CoordinatorApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Gate::for_role(ctx.auth.clone(), Role::Coordinator),
        ))
        .serve_with_incoming_shutdown(SharedIncoming { conns, done: None }, async move {
            let _ = drain_rx.await;
        });
    ready.set(true);
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(listen = %addr, "broker serving");
    if let Some(on_ready) = listeners.on_ready {
        let _ = on_ready.send(());
    }

    // The server future owns the services and so engine handles: it must be dropped (not just
    // abandoned after the grace period) before the sequencer can finish.
    let result = {
        let mut server = std::pin::pin!(server);
        let mut stopping = stop_rx;
        tokio::select! {
            r = &mut server => r,
            () = stopped(&mut stopping) => {
                // Bounded drain: calls still running after the grace period are cut off; their
                // commands, if any reached the sequencer, are durable or were never acknowledged.
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(grace_secs = grace.as_secs(), "calls still running after the grace period; stopping anyway");
                        Ok(())
                    }
                }
            }
        }
    }
    .map_err(|e| Error::Internal(format!("server: {e}")));
    drop(ctx);
    // Connection tasks that outlived the grace period may still hold engine handles, so the
    // sequencer is told to stop rather than left to notice the last handle go.
    engine.close();
    drop(engine);
    if let Some(task) = ops_task {
        let _ = task.await;
    }
    if let Some(task) = web_task {
        // Open live feeds end at the shutdown signal; the grace period bounds anything else.
        let _ = tokio::time::timeout(grace, task).await;
    }
    // Wait for the sequencer, so the journal is complete and synced.
    let _ = tokio::task::spawn_blocking(move || sequencer.join()).await;
    let _ = tokio::task::spawn_blocking(move || {
        audit_writer.close();
        drop(floor_monitor);
    })
    .await;
    tracing::info!("broker stopped");
    result
}

/// Resolves once shutdown has begun.
async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|s| *s).await;
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for name in HEALTH_SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// Logs the configuration in effect; it holds no secrets but the log masks nothing by accident
/// because only these fields are printed.
fn log_effective_config(
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
fn transport_security(
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
fn snapshot_metrics(metrics: Arc<Metrics>) -> store::SnapshotObserver {
    Box::new(move |kind, bytes, took| {
        let kind = match kind {
            store::SnapshotKind::Full => "full",
            store::SnapshotKind::Incremental => "incremental",
        };
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
fn rate_limiter(config: &Config) -> RateLimiter {
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

fn authenticator(config: &Config, demo_tokens: bool, limiter: RateLimiter) -> Authenticator {
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
fn limited(builder: Server, limits: &Limits) -> Server {
    builder
        .max_concurrent_streams(limits.streams_per_connection)
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(limits.keepalive))
}
