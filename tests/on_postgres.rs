//! The integration suites again, on the PostgreSQL store. Each suite below is included as it is,
//! and every broker it starts gets a database of its own on one real PostgreSQL 15 that this
//! binary starts on first use and stops once it has ended (see `common::ON_POSTGRES` and
//! `common::pg_shared`); a broker started again on the same data directory gets the same
//! database, so the restart tests restart on PostgreSQL. What each test asserts is unchanged.
//!
//! Left on the file store, and why:
//! - `durability.rs`: its file-store crash test is about the journal and snapshot files; its
//!   PostgreSQL crash test is already there. `postgres.rs`, `postgres_failover.rs` and
//!   `edge_failover.rs` run on PostgreSQL already, with servers and broker processes of their own.
//! - `audit.rs` and `malformed.rs`: they install the process's one log subscriber, at DEBUG, and
//!   assert over every line the process logs, so they need a process of their own; `audit.rs`'s
//!   kill test runs the broker binary on a data directory. The audit trail is in the data
//!   directory, written by the same code, on both stores.
//! - `bench.rs` and `systemd.rs`: they run the broker binary (`labaid-bench` starts its own) on a
//!   data directory, and the bench reports the file store's journal syncs.
//! - `sim.rs`: the simulator drives the routing core in virtual time, with no broker or store.

// Each suite brings its own `mod common;`, as in its own binary (so its own copy of the harness;
// `common::pg_shared` says how the copies share one server).
#![allow(clippy::duplicate_mod)]

#[path = "access.rs"]
mod access;
#[path = "cli.rs"]
mod cli;
#[path = "connections.rs"]
mod connections;
#[path = "coordinator.rs"]
mod coordinator;
#[path = "coordinator_cli.rs"]
mod coordinator_cli;
#[path = "deploy.rs"]
mod deploy;
#[path = "fhir.rs"]
mod fhir;
#[path = "health.rs"]
mod health;
#[path = "hl7.rs"]
mod hl7;
#[path = "interop.rs"]
mod interop;
#[path = "jobs_work.rs"]
mod jobs_work;
#[path = "lab_self.rs"]
mod lab_self;
#[path = "labs.rs"]
mod labs;
#[path = "ops.rs"]
mod ops;
#[path = "requests.rs"]
mod requests;
#[path = "restart.rs"]
mod restart;
#[path = "routing.rs"]
mod routing;
#[path = "security.rs"]
mod security;
#[path = "service.rs"]
mod service;
#[path = "submit_retry.rs"]
mod submit_retry;
#[path = "watch.rs"]
mod watch;
#[path = "web.rs"]
mod web;
#[path = "web_tls.rs"]
mod web_tls;
#[path = "work.rs"]
mod work;
