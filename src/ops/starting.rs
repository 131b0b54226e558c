//! While the broker recovers its store, every call but gRPC health is answered UNAVAILABLE, so
//! clients retry instead of seeing UNIMPLEMENTED from a half-started server.

use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use tower::{Layer, Service};

/// Answers UNAVAILABLE to everything but `grpc.health.v1.Health`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartingLayer;

impl<S> Layer<S> for StartingLayer {
    type Service = Starting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Starting { inner }
    }
}

/// The service [`StartingLayer`] makes.
#[derive(Debug, Clone)]
pub struct Starting<S> {
    inner: S,
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
        let response = tonic::Status::unavailable(
            "the broker is starting (recovering its store); retry shortly",
        )
        .into_http();
        Box::pin(async move { Ok(response) })
    }
}
