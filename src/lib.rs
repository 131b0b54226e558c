//! labaid: a gRPC broker for NHS pathology mutual aid. A trust whose pathology provider is down
//! submits urgent blood-test requests; labaid routes each one, by clinical priority and live lab
//! capacity, to a partner lab that can run every test before the sample spoils.

pub mod accept;
pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod edge;
pub mod engine;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod server;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod wire;

pub use config::Config;
pub use error::Error;
pub use labaid_core::{domain, routing};
pub use server::{Listeners, serve, serve_on, shutdown_signal};

/// The generated labaid.v1 protobuf types and gRPC stubs.
#[allow(missing_docs, unreachable_pub, clippy::all)] // generated code
pub mod proto {
    tonic::include_proto!("labaid.v1");
    // The clients, generated apart so that they keep prost's codec (see build.rs).
    include!(concat!(env!("OUT_DIR"), "/client/labaid.v1.rs"));

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/labaid_descriptor.bin"));

    /// The path of every labaid.v1 rpc, e.g. `/labaid.v1.RequestService/SubmitRequest`.
    pub const METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/labaid_methods.rs"));
}
