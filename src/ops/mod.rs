//! Operations: Prometheus metrics, the HTTP listener for `/metrics`, `/healthz` and `/readyz`, the
//! tower layer that gives every RPC a span and a call count, lab heartbeats, the `health` check
//! of a running broker and systemd readiness.

pub mod healthcheck;
mod http;
mod layer;
mod presence;
mod starting;
pub mod systemd;

pub use http::{EngineSlot, Readiness, serve_http};
pub use layer::RpcLayer;
pub(crate) use layer::code_name;
pub use presence::{Presence, Watching, watch_heartbeats};
pub use starting::{DeposedLayer, LeaderHint, NOT_LEADER, StartingLayer};
