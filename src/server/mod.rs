//! The broker server: binds nothing itself; on bound listeners it answers health NOT_SERVING while
//! the store recovers (or, on PostgreSQL, while a standby waits to lead), then serves terms as
//! leader (see `term`) until shutdown, going back to being a standby between terms when a term's
//! leadership is lost, and shuts down without losing a call.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::accept::{AcceptOptions, Conn, SharedIncoming};
use crate::audit::{AuditLog, AuditWriter, DiskFloor, FloorMonitor};
use crate::auth::RateLimiter;
use crate::config::Config;
use crate::engine::{OnFatal, abort_process};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::ops::{EngineSlot, LeaderHint, Readiness, StartingLayer};
use crate::routing::{Event, Router};
use crate::store::{self, Journal};
use crate::web::WebTls;

mod setup;
mod term;

use setup::{
    authenticator, limited, log_effective_config, rate_limiter, snapshot_metrics,
    transport_security,
};
use term::Ended;

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
/// sequencer has made its last batch durable. On the PostgreSQL store a leader whose lease is
/// lost does the same without returning: it becomes a standby again on the same listeners.
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
    // Each term serves the page on a copy of the listener, so the socket stays bound between
    // terms (connections wait in its backlog meanwhile, as they do while the broker starts).
    let web = listeners
        .web
        .map(|l| {
            l.into_std()
                .map_err(|e| Error::Internal(format!("coordinator page listener: {e}")))
        })
        .transpose()?;
    let ready = Readiness::default();
    let health = HealthReporter::new();
    let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
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
    let engine_slot = EngineSlot::default();
    let ops_task = listeners.ops.map(|listener| {
        let mut stopped = shutdown_rx.clone();
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
    let limiter = rate_limiter(&config);
    let shared = Shared {
        addr,
        web_addr,
        demo_tokens,
        web_tls,
        web,
        ready,
        health,
        health_service,
        metrics,
        conns,
        engine_slot,
        leader: LeaderHint::default(),
        limiter,
        shutdown: shutdown_rx,
        config,
    };
    let mut on_ready = listeners.on_ready;
    // The file store locks its data directory as it opens; on PostgreSQL the directory still
    // holds this broker's own audit trail and snapshot copies, so it is locked for the process.
    let _data_dir = match &shared.config.store_url {
        Some(_) => Some(store::lock_dir(&shared.config.data_dir).map_err(|e| {
            Error::Internal(format!(
                "cannot open the data directory {}: {e}; give each broker its own",
                shared.config.data_dir.display()
            ))
        })?),
        None => None,
    };
    // Opened when the broker first leads, and kept across terms: one trail per process.
    let mut audit: Option<Audit> = None;
    let mut standby = StandbyServer::start(&shared);
    let result = loop {
        let recovered = match recover(&shared).await {
            Ok(Some(recovered)) => recovered,
            Ok(None) => {
                standby.stop();
                tracing::info!("stopped while a standby");
                break Ok(());
            }
            Err(e) => break Err(e),
        };
        standby.stop();
        let trail = match &audit {
            Some(a) => a.log.clone(),
            None => match Audit::open(&shared) {
                Ok(opened) => audit.insert(opened).log.clone(),
                Err(e) => break Err(e),
            },
        };
        match term::serve(&shared, trail, recovered, &mut on_ready).await {
            Ok(Ended::Shutdown) => break Ok(()),
            Ok(Ended::Deposed(waiting)) => standby = waiting,
            Err(e) => break Err(e),
        }
    };
    if let Some(task) = ops_task {
        // It stops at shutdown; a broker that cannot go on stops it itself.
        if result.is_err() {
            task.abort();
        }
        let _ = task.await;
    }
    if let Some(audit) = audit {
        let _ = tokio::task::spawn_blocking(move || {
            audit.writer.close();
            drop(audit.floor_monitor);
        })
        .await;
    }
    tracing::info!("broker stopped");
    result
}

/// What outlives a term: the configuration, the listeners and what reports on the broker.
struct Shared {
    config: Config,
    addr: std::net::SocketAddr,
    web_addr: Option<std::net::SocketAddr>,
    demo_tokens: bool,
    web_tls: Option<WebTls>,
    web: Option<std::net::TcpListener>,
    ready: Readiness,
    health: HealthReporter,
    health_service: HealthServer<HealthService>,
    metrics: Arc<Metrics>,
    conns: Arc<Mutex<mpsc::Receiver<Conn>>>,
    engine_slot: EngineSlot,
    /// Where the leader serves, while this broker does not.
    leader: LeaderHint,
    limiter: RateLimiter,
    /// Turns true at shutdown.
    shutdown: watch::Receiver<bool>,
}

/// The audit trail and the free-space floor it is held to.
struct Audit {
    log: AuditLog,
    writer: AuditWriter,
    floor_monitor: FloorMonitor,
}

impl Audit {
    fn open(shared: &Shared) -> Result<Self, Error> {
        let config = &shared.config;
        let (floor, floor_monitor) = DiskFloor::start(
            &config.data_dir,
            config.min_free_bytes,
            Some(shared.metrics.clone()),
        )?;
        let (log, writer) = AuditLog::open(&config.data_dir, config.audit, config.clock.clone())?;
        Ok(Self {
            log: log.with_budget(shared.limiter.clone()).with_floor(floor),
            writer,
            floor_monitor,
        })
    }
}

/// The core a term starts from, and how the term ends.
struct Recovered {
    router: Router,
    events: Vec<Event>,
    journal: Box<dyn Journal>,
    /// The audit records the journal holds, for completing the trail (file store).
    carried: Vec<Vec<u8>>,
    /// What the engine does when a batch cannot be made durable.
    on_fatal: OnFatal,
    /// Turns true when the term's leadership is lost; never for the file store.
    deposed: watch::Receiver<bool>,
}

/// Recovers the file store, or waits as a standby until this broker leads on PostgreSQL. `None`
/// if shutdown came first.
async fn recover(shared: &Shared) -> Result<Option<Recovered>, Error> {
    let config = &shared.config;
    let (directory, policy, options) = (config.directory(), config.policy.clone(), config.store);
    if let Some(url) = &config.store_url {
        let options = store::postgres::options(config, url, shared.addr)?;
        let led = store::postgres::lead(
            options,
            directory,
            shared.leader.clone(),
            shared.shutdown.clone(),
        )
        .await?;
        return Ok(led.map(|r| {
            r.journal
                .observe_snapshots(snapshot_metrics(shared.metrics.clone()));
            let leadership = r.leadership;
            let deposed = leadership.watch();
            // A failed write ends the term, not the process: nothing after it was committed
            // under this epoch's name, and the next term starts from what the database holds.
            let on_fatal: OnFatal = Arc::new(move |fatal| leadership.step_down(&fatal.to_string()));
            Recovered {
                router: r.router,
                events: r.events,
                journal: Box::new(r.journal),
                carried: Vec::new(),
                on_fatal,
                deposed,
            }
        }));
    }
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
        .observe_snapshots(snapshot_metrics(shared.metrics.clone()));
    // A single disk's store never steps down: the sender goes, and the term ends only at shutdown.
    let (_, deposed) = watch::channel(false);
    Ok(Some(Recovered {
        router: recovered.router,
        events: recovered.events,
        journal: Box::new(recovered.journal),
        carried: recovered.carried,
        on_fatal: abort_process(),
        deposed,
    }))
}

/// While the broker does not lead (it recovers its store, or is a standby), health checks are
/// answered NOT_SERVING on the same socket, so that orchestrators see a starting broker rather
/// than a dead one, and every other call UNAVAILABLE naming the leader when one is known.
struct StandbyServer {
    done: Arc<AtomicBool>,
    stop: oneshot::Sender<()>,
}

impl StandbyServer {
    fn start(shared: &Shared) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        tokio::spawn(
            Server::builder()
                .layer(StartingLayer {
                    leader: shared.leader.clone(),
                })
                .add_service(shared.health_service.clone())
                .serve_with_incoming_shutdown(
                    SharedIncoming {
                        conns: shared.conns.clone(),
                        done: Some(done.clone()),
                    },
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Self { done, stop }
    }

    /// Its connections are told to go away and finish on their own: a health watcher opened
    /// meanwhile stays until it ends (it hears SERVING through the shared reporter).
    fn stop(self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.stop.send(());
    }
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
