//! A tower layer around the gRPC server: one debug-level span per RPC (method, then organisation
//! and request id recorded by the handlers), a call count by method and status code, and a warning
//! for each call the broker itself failed.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use prometheus::{Histogram, IntCounter};

use crate::metrics::Metrics;
use rustc_hash::FxHashMap;

/// Wraps every RPC in a span and counts it.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    methods: Arc<Methods>,
}

impl RpcLayer {
    /// A layer that records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let methods = Arc::new(Methods::new(&metrics));
        Self { metrics, methods }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
        }
    }
}

/// The service [`RpcLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    methods: Arc<Methods>,
}

/// gRPC's own services the broker serves, labelled by name like labaid's.
const GRPC_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The metric handles of one method label, resolved once: a label lookup hashes the values and
/// takes a lock, which every call would otherwise pay.
#[derive(Debug)]
struct MethodMetrics {
    label: &'static str,
    ok: IntCounter,
    latency: Histogram,
}

impl MethodMetrics {
    fn new(metrics: &Metrics, label: &'static str) -> Self {
        Self {
            label,
            ok: metrics.grpc_calls.with_label_values(&[label, "OK"]),
            latency: metrics.grpc_latency.with_label_values(&[label]),
        }
    }
}

/// Every method the broker serves, by path; anything else is labelled `other`, so a caller
/// cannot mint label values.
#[derive(Debug)]
struct Methods {
    by_path: FxHashMap<&'static str, Arc<MethodMetrics>>,
    other: Arc<MethodMetrics>,
}

impl Methods {
    fn new(metrics: &Metrics) -> Self {
        let by_path = crate::proto::METHODS
            .iter()
            .chain(GRPC_METHODS)
            .map(|path| (*path, Arc::new(MethodMetrics::new(metrics, &path[1..]))))
            .collect();
        Self {
            by_path,
            other: Arc::new(MethodMetrics::new(metrics, "other")),
        }
    }

    fn get(&self, path: &str) -> Arc<MethodMetrics> {
        self.by_path.get(path).unwrap_or(&self.other).clone()
    }
}

/// Codes that mean the broker failed, not the caller: worth a line at the default level, since
/// the per-call span that would name the method is at debug level.
fn is_server_fault(code: i32) -> bool {
    matches!(
        tonic::Code::from_i32(code),
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
    )
}

/// The canonical name of a gRPC status code, as metrics label it.
pub(crate) fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl<S, B, R> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.methods.get(request.uri().path());
        // Debug level: at the default level a span per call was a visible share of the broker's
        // CPU in a profile (creating it and formatting the fields the handlers record), for lines that already
        // name what they are about. `RUST_LOG=labaid=debug` brings it back for tracing a call.
        let span = tracing::debug_span!(
            "rpc",
            rpc.method = method.label,
            org = tracing::field::Empty,
            edge = tracing::field::Empty,
            request.id = tracing::field::Empty,
        );
        // The clone that was polled ready is the one to call (tower's readiness contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let started = Instant::now();
                let response = inner.call(request).await;
                if let Ok(r) = &response {
                    // Errors travel as a trailers-only response with grpc-status in the headers;
                    // a success carries its status in the trailers, so no header means OK so far.
                    let code = r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0);
                    if code == 0 {
                        method.ok.inc();
                    } else {
                        if is_server_fault(code) {
                            tracing::warn!(
                                rpc.method = method.label,
                                grpc.code = code_name(code),
                                "rpc failed"
                            );
                        }
                        metrics
                            .grpc_calls
                            .with_label_values(&[method.label, code_name(code)])
                            .inc();
                    }
                    method.latency.observe(started.elapsed().as_secs_f64());
                    tracing::debug!(grpc.code = code_name(code), "rpc done");
                }
                response
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_keep_their_name_and_anything_else_is_other() {
        let methods = Methods::new(&Metrics::new());
        assert_eq!(
            methods.get("/labaid.v1.RequestService/SubmitRequest").label,
            "labaid.v1.RequestService/SubmitRequest"
        );
        assert_eq!(
            methods.get("/grpc.health.v1.Health/Check").label,
            "grpc.health.v1.Health/Check"
        );
        // A made-up method under a real package must not become a label of its own.
        assert_eq!(
            methods.get("/labaid.v1.RequestService/Nope1").label,
            "other"
        );
        assert_eq!(methods.get("/").label, "other");
        assert!(methods.by_path.len() > 20, "every labaid.v1 rpc is listed");
    }
}
