//! Operations: Prometheus metrics, the HTTP listener for `/metrics`, `/healthz` and `/readyz`, and
//! the tower layer that gives every RPC a span and a call count.

mod http;
mod layer;
mod metrics;
mod starting;

pub use http::{Readiness, serve_http};
pub use layer::RpcLayer;
pub use metrics::Metrics;
pub use starting::StartingLayer;
