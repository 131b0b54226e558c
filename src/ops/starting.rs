//! While the broker recovers its store, every call but gRPC health is answered UNAVAILABLE, so
//! clients retry instead of seeing UNIMPLEMENTED from a half-started server. A standby (PostgreSQL
//! store) stays here until it leads, and names the leader in the error's details.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use tower::{Layer, Service};

/// The leader's gRPC address as a standby last read it (`None` while no broker leads).
pub type LeaderHint = Arc<RwLock<Option<String>>>;

/// The `ErrorInfo` reason of a standby's UNAVAILABLE; its metadata's `leader` is the address.
pub const NOT_LEADER: &str = "NOT_LEADER";

/// Answers UNAVAILABLE to everything but `grpc.health.v1.Health`.
#[derive(Debug, Clone, Default)]
pub struct StartingLayer {
    /// Set by a standby: where the leader serves.
    pub leader: LeaderHint,
}

impl<S> Layer<S> for StartingLayer {
    type Service = Starting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Starting {
            inner,
            leader: self.leader.clone(),
        }
    }
}

/// The service [`StartingLayer`] makes.
#[derive(Debug, Clone)]
pub struct Starting<S> {
    inner: S,
    leader: LeaderHint,
}

/// UNAVAILABLE from a broker that does not (yet) serve, naming the leader when one is known.
fn not_serving(leader: Option<String>) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    match leader {
        Some(addr) => tonic::Status::with_error_details(
            tonic::Code::Unavailable,
            format!("this broker is a standby; the leader serves at {addr}"),
            ErrorDetails::with_error_info(
                NOT_LEADER,
                "labaid",
                HashMap::from([("leader".to_string(), addr)]),
            ),
        ),
        None => tonic::Status::unavailable(
            "the broker is starting (recovering its store, or waiting to lead); retry shortly",
        ),
    }
}

impl<S, B, R> Service<http::Request<B>> for Starting<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move { inner.call(request).await });
        }
        let leader = self.leader.read().ok().and_then(|l| l.clone());
        let response = not_serving(leader).into_http();
        Box::pin(async move { Ok(response) })
    }
}
