//! A tower layer around the gRPC server: one span per RPC (method, then organisation and request
//! id recorded by the handlers) and a call count by method and status code.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use super::Metrics;

/// Wraps every RPC in a span and counts it.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    /// A layer that records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The method as a metric label: known services by name, anything else as `other`, so a caller
/// cannot mint label values.
fn method_label(path: &str) -> String {
    if path.starts_with("/labaid.v1.") || path.starts_with("/grpc.") {
        path.trim_start_matches('/').to_string()
    } else {
        "other".to_string()
    }
}

fn code_name(code: i32) -> &'static str {
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
        let method = method_label(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            rpc.method = %method,
            org = tracing::field::Empty,
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
                    metrics
                        .grpc_calls
                        .with_label_values(&[method.as_str(), code_name(code)])
                        .inc();
                    metrics
                        .grpc_latency
                        .with_label_values(&[method.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(grpc.code = code_name(code), "rpc done");
                }
                response
            }
            .instrument(span),
        )
    }
}
