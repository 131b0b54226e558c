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
    type Service = Deposed<S>;

    /// A broker that does not serve yet answers as one whose term is over: its flag is set for
    /// good (the receiver outlives its dropped sender and keeps the last value).
    fn layer(&self, inner: S) -> Self::Service {
        Deposed {
            inner,
            leader: self.leader.clone(),
            deposed: watch::channel(true).1,
        }
    }
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Ready, ready};

    use tonic_types::StatusExt;

    use super::*;

    /// Answers every call with `code`, trailers-only, as a unary handler's result is sent.
    #[derive(Clone)]
    struct Answers(tonic::Code);

    impl Service<http::Request<()>> for Answers {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            ready(Ok(
                tonic::Status::new(self.0, "from the handler").into_http()
            ))
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn status(response: &http::Response<()>) -> tonic::Status {
        tonic::Status::from_header_map(response.headers()).expect("a grpc-status header")
    }

    fn named_leader(status: &tonic::Status) -> Option<String> {
        let info = status.get_error_details().error_info().cloned()?;
        assert_eq!(info.reason, NOT_LEADER);
        info.metadata.get("leader").cloned()
    }

    fn deposed_service(code: tonic::Code) -> (Deposed<Answers>, watch::Sender<bool>, LeaderHint) {
        let (deposed, rx) = watch::channel(false);
        let leader = LeaderHint::default();
        let layer = DeposedLayer {
            leader: leader.clone(),
            deposed: rx,
        };
        (layer.layer(Answers(code)), deposed, leader)
    }

    const SUBMIT: &str = "/labaid.v1.RequestService/SubmitRequest";

    #[tokio::test]
    async fn a_leader_answers_as_its_handlers_do() {
        let (mut service, _deposed, _leader) = deposed_service(tonic::Code::Unavailable);
        let answered = status(&service.call(request(SUBMIT)).await.unwrap());
        assert_eq!(answered.code(), tonic::Code::Unavailable);
        assert_eq!(answered.message(), "from the handler");
        assert_eq!(named_leader(&answered), None);
    }

    #[tokio::test]
    async fn a_deposed_leader_refuses_new_calls_naming_the_leader_but_not_health() {
        let (mut service, deposed, leader) = deposed_service(tonic::Code::Ok);
        *leader.write().unwrap() = Some("10.0.0.2:50051".into());
        deposed.send_replace(true);
        let refused = status(&service.call(request(SUBMIT)).await.unwrap());
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(named_leader(&refused).as_deref(), Some("10.0.0.2:50051"));
        let health = status(
            &service
                .call(request("/grpc.health.v1.Health/Check"))
                .await
                .unwrap(),
        );
        assert_eq!(health.code(), tonic::Code::Ok);
    }

    #[tokio::test]
    async fn a_call_in_flight_when_the_term_ends_hears_where_the_leader_is() {
        let (mut service, deposed, leader) = deposed_service(tonic::Code::Unavailable);
        let in_flight = service.call(request(SUBMIT));
        *leader.write().unwrap() = Some("10.0.0.2:50051".into());
        deposed.send_replace(true);
        let answered = status(&in_flight.await.unwrap());
        assert_eq!(answered.code(), tonic::Code::Unavailable);
        assert_eq!(named_leader(&answered).as_deref(), Some("10.0.0.2:50051"));
    }

    #[tokio::test]
    async fn an_answer_made_durable_before_the_term_ended_is_not_rewritten() {
        let (mut service, deposed, _leader) = deposed_service(tonic::Code::Ok);
        let in_flight = service.call(request(SUBMIT));
        deposed.send_replace(true);
        assert_eq!(status(&in_flight.await.unwrap()).code(), tonic::Code::Ok);
    }
}
