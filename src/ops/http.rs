//! The operations HTTP listener: `/metrics` for Prometheus, `/healthz` (the process is alive) and
//! `/readyz` (it serves calls: not while starting or draining) for load balancers.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::metrics::Metrics;

/// Whether the broker serves calls; shared by the gRPC health service and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the broker ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// True while the broker serves calls.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The engine of the broker's current term as leader: `None` while it starts or is a standby,
/// when only the counters are served.
pub type EngineSlot = Arc<RwLock<Option<Engine>>>;

#[derive(Debug, Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    engine: EngineSlot,
    ready: Readiness,
}

/// Serves the operations endpoints on `listener` until `shutdown` resolves.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    engine: EngineSlot,
    ready: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops {
            metrics,
            engine,
            ready,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render_metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let engine = ops.engine.read().ok().and_then(|e| e.clone());
    if let Some(engine) = engine {
        let views = engine.views();
        ops.metrics
            .refresh(&views.labs(), &views.oldest_waits(engine.now()));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
