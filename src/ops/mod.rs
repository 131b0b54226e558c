//! Operations: Prometheus metrics, the HTTP listener for `/metrics`, `/healthz` and `/readyz`, the
//! tower layer that gives every RPC a span and a call count, and lab heartbeats.

mod http;
mod layer;
mod metrics;
mod presence;
mod starting;

pub use http::{Readiness, serve_http};
pub use layer::RpcLayer;
pub(crate) use layer::code_name;
pub use metrics::Metrics;
pub use presence::{Presence, Watching, watch_heartbeats};
pub use starting::{LeaderHint, NOT_LEADER, StartingLayer};
