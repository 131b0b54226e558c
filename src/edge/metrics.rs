//! The edge's Prometheus metrics and its operations listener: `/metrics`, `/healthz` and
//! `/readyz` (ready once the broker has been reached and the adapters serve).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder as _, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::domain::Timestamp;

/// Every metric the edge exports.
#[derive(Debug)]
pub struct EdgeMetrics {
    registry: Registry,
    /// HL7 messages answered, by message type and MSA-1.
    pub hl7_messages: IntCounterVec,
    /// Connections or frames given up, by reason (half_frame, slow, too_large, stray_bytes…).
    pub mllp_dropped: IntCounterVec,
    /// Open MLLP connections.
    pub mllp_connections: IntGauge,
    /// Results delivered, by the receiver's MSA-1.
    pub results_delivered: IntCounterVec,
    /// Delivery attempts that got no answer (connection or timeout), to be retried.
    pub results_retries: IntCounterVec,
    /// Results waiting in the outbox.
    pub outbox_depth: IntGauge,
    /// Age of the oldest waiting result, in seconds (0 when none wait).
    pub outbox_oldest_age: IntGauge,
    /// When the oldest waiting result was put in, ms since the epoch; 0 when none wait.
    pub outbox_oldest_ms: AtomicI64,
    /// The last broker event handled.
    pub watch_sequence: IntGauge,
    ready: AtomicBool,
}

impl EdgeMetrics {
    /// A fresh registry.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name} registered twice: {e}"));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name} registered twice: {e}"));
            g
        };
        Arc::new(Self {
            hl7_messages: counter(
                "labaid_edge_hl7_messages_total",
                "HL7 messages answered, by message type and acknowledgement code",
                &["type", "ack"],
            ),
            mllp_dropped: counter(
                "labaid_edge_mllp_dropped_total",
                "MLLP frames or connections given up, by reason",
                &["reason"],
            ),
            mllp_connections: gauge("labaid_edge_mllp_connections", "Open MLLP connections"),
            results_delivered: counter(
                "labaid_edge_results_delivered_total",
                "Result messages answered by the receiver, by acknowledgement code",
                &["ack"],
            ),
            results_retries: counter(
                "labaid_edge_results_retries_total",
                "Result deliveries that got no answer and will be tried again, by reason",
                &["reason"],
            ),
            outbox_depth: gauge(
                "labaid_edge_results_outbox_depth",
                "Result messages waiting in the outbox",
            ),
            outbox_oldest_age: gauge(
                "labaid_edge_results_outbox_oldest_age_seconds",
                "Age of the oldest result message waiting in the outbox (0 when none)",
            ),
            outbox_oldest_ms: AtomicI64::new(0),
            watch_sequence: gauge(
                "labaid_edge_results_watch_sequence",
                "The last broker event the results follower handled",
            ),
            ready: AtomicBool::new(false),
            registry,
        })
    }

    /// Marks the edge ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Records the outbox's depth and oldest message.
    pub fn outbox(&self, depth: usize, oldest_ms: Option<i64>) {
        self.outbox_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.outbox_oldest_ms
            .store(oldest_ms.unwrap_or(0), Ordering::SeqCst);
    }

    /// The text exposition, with the oldest age computed at `now`.
    pub fn render(&self, now: Timestamp) -> String {
        let oldest = self.outbox_oldest_ms.load(Ordering::SeqCst);
        let age = if oldest == 0 {
            0
        } else {
            now.millis().saturating_sub(oldest).max(0) / 1000
        };
        self.outbox_oldest_age.set(age);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<EdgeMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render(State(m): State<Arc<EdgeMetrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(Timestamp::now()),
    )
}

async fn readyz(State(m): State<Arc<EdgeMetrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
