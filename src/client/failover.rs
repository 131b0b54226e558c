//! The client's transport: one gRPC channel to the broker that leads, found again after it is
//! lost. Given several brokers on one store, a call that cannot reach its broker, or that a
//! standby answers UNAVAILABLE, sets off a search (one at a time) for the broker that now leads;
//! later calls go there. The failed call itself is not repeated: only the caller knows whether
//! it is safe to send again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

/// How long one search for a leader goes on: a takeover takes a lease's lifetime plus
/// catching up, and a region's whole database failover some seconds more.
const SEARCH_FOR: Duration = Duration::from_secs(60);
/// The pause between two rounds of asking every broker.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// The `grpc-status` value of UNAVAILABLE, as a standby answers (in a trailers-only reply).
const UNAVAILABLE: &str = "14";

/// The endpoint settings a search reuses for each address.
pub(super) type Configure = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

/// Connects to one address and tells whether that broker leads.
pub(super) type Probe =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Channel>> + Send>> + Send + Sync>;

/// Finds the leader again: the addresses, and how to connect to one and ask it.
pub(super) struct Finder {
    /// Every broker's address, in the order given.
    pub(super) addrs: Vec<String>,
    /// Connects to an address and returns the channel if that broker leads.
    pub(super) probe: Probe,
}

struct Shared {
    current: RwLock<Channel>,
    finder: Option<Finder>,
    searching: AtomicBool,
}

/// A channel that moves to the leading broker (a tower service, as tonic's generated clients
/// take).
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field(
                "brokers",
                &self.shared.finder.as_ref().map_or(1, |f| f.addrs.len()),
            )
            .finish()
    }
}

impl Transport {
    /// A transport over one channel; with a `finder`, one that searches for the leader when it
    /// loses its broker.
    pub(super) fn new(channel: Channel, finder: Option<Finder>) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: RwLock::new(channel),
                finder,
                searching: AtomicBool::new(false),
            }),
        }
    }

    /// The channel calls go to now.
    pub(super) fn channel(&self) -> Channel {
        self.shared
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts a search for the leader unless one is under way (or there is only one broker).
    pub(super) fn search(&self) {
        let Some(finder) = &self.shared.finder else {
            return;
        };
        if self.shared.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.searching.store(false, Ordering::Release);
            return;
        };
        tracing::info!(
            broker.count = finder.addrs.len(),
            "lost the leading broker; looking for the one that leads now"
        );
        let shared = self.shared.clone();
        runtime.spawn(async move {
            let found = find(&shared).await;
            if let Some((addr, channel)) = found {
                *shared
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = channel;
                tracing::info!(broker.addr = %addr, "moved to the leading broker");
            } else {
                tracing::warn!(
                    search.seconds = SEARCH_FOR.as_secs(),
                    "no broker leads; the next failed call searches again"
                );
            }
            shared.searching.store(false, Ordering::Release);
        });
    }
}

async fn find(shared: &Shared) -> Option<(String, Channel)> {
    let finder = shared.finder.as_ref()?;
    let deadline = tokio::time::Instant::now() + SEARCH_FOR;
    loop {
        for addr in &finder.addrs {
            if let Some(channel) = (finder.probe)(addr.clone()).await {
                return Some((addr.clone(), channel));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// True when a call's outcome says its broker is gone or does not lead.
fn lost_leader(outcome: &Result<http::Response<Body>, tonic::transport::Error>) -> bool {
    match outcome {
        Err(_) => true,
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .is_some_and(|s| s.as_bytes() == UNAVAILABLE.as_bytes()),
    }
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies its own clone of the current channel (a buffered sender).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.channel();
        let this = self.clone();
        Box::pin(async move {
            let outcome = channel.oneshot(request).await;
            if lost_leader(&outcome) {
                this.search();
            }
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: Option<&str>) -> http::Response<Body> {
        let mut r = http::Response::new(Body::empty());
        if let Some(s) = status {
            r.headers_mut().insert("grpc-status", s.parse().unwrap());
        }
        r
    }

    #[test]
    fn unavailable_means_the_leader_is_lost_and_other_answers_do_not() {
        assert!(lost_leader(&Ok(reply(Some("14")))));
        assert!(!lost_leader(&Ok(reply(None))));
        assert!(!lost_leader(&Ok(reply(Some("0")))));
        // NOT_FOUND, PERMISSION_DENIED: the leader answered.
        assert!(!lost_leader(&Ok(reply(Some("5")))));
        assert!(!lost_leader(&Ok(reply(Some("7")))));
    }
}
