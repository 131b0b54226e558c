//! While the broker recovers its store, every call but gRPC health is answered UNAVAILABLE, so
//! clients retry instead of seeing UNIMPLEMENTED from a half-started server. A standby (PostgreSQL
//! store) stays here until it leads, and names the leader in the error's details. A leader that
//! stepped down answers the same way on the connections it is still draining ([`DeposedLayer`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use tokio::sync::watch;
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

/// On a leader's server: once `deposed` turns true, every call but gRPC health is answered as a
/// standby answers it, and a call that was already in the engine and failed UNAVAILABLE (its
/// batch was fenced, or the engine stopped under it) is told where the leader is as well.
#[derive(Debug, Clone)]
pub struct DeposedLayer {
    /// Where the leader serves, as last read.
    pub leader: LeaderHint,
    /// True once this broker's term as leader is over.
    pub deposed: watch::Receiver<bool>,
}

impl<S> Layer<S> for DeposedLayer {
    type Service = Deposed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deposed {
            inner,
            leader: self.leader.clone(),
            deposed: self.deposed.clone(),
        }
    }
}

/// The service [`DeposedLayer`] makes.
#[derive(Debug, Clone)]
pub struct Deposed<S> {
    inner: S,
    leader: LeaderHint,
    deposed: watch::Receiver<bool>,
}

/// gRPC's UNAVAILABLE, as a trailers-only response carries it in its headers.
const UNAVAILABLE: &str = "14";

impl<S, B, R> Service<http::Request<B>> for Deposed<S>
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
        let health = request.uri().path().starts_with("/grpc.health.v1.Health/");
        let leader = self.leader.clone();
        let hint = move || leader.read().ok().and_then(|l| l.clone());
        if !health && *self.deposed.borrow() {
            let response = not_serving(hint()).into_http();
            return Box::pin(async move { Ok(response) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let deposed = self.deposed.clone();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let unavailable = response
                .headers()
                .get("grpc-status")
                .is_some_and(|s| s.as_bytes() == UNAVAILABLE.as_bytes());
            if !health && unavailable && *deposed.borrow() {
                return Ok(not_serving(hint()).into_http());
            }
            Ok(response)
        })
    }
}
