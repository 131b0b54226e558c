//! The one PostgreSQL a test process shares among its in-process brokers when its suites run on
//! the PostgreSQL store (`tests/on_postgres.rs`): started by the first broker that needs it,
//! stopped once the process has ended, however it ends; a database of its own for each broker's
//! data directory, so a broker restarted on the same directory finds its state again.
//!
//! Each suite that binary includes compiles its own copy of `common` (`mod common;` in every
//! suite), and so its own statics: the copies agree on one server through a file in the
//! temporary directory named by the process id, which the first copy locks, starts the server
//! and writes the server's port into; the others wait for the lock and read the port.

use std::collections::hash_map::DefaultHasher;
use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::OnceLock;

use super::pg::PgServer;

/// The store URL of the database for brokers on `data_dir`, created on first use (on the
/// shared server, started on first use). Blocking: call it off the async runtime.
pub fn store_url_for(data_dir: &Path) -> String {
    let port = shared_port();
    // DefaultHasher::new() has fixed keys: the same directory always names the same database.
    let mut hasher = DefaultHasher::new();
    data_dir.hash(&mut hasher);
    let name = format!("labaid_{:016x}", hasher.finish());
    let admin = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let mut client = postgres::Client::connect(&admin, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot reach the shared PostgreSQL on port {port}: {e}"));
    // FILE_COPY copies the template's files instead of writing them all to the WAL too.
    match client.batch_execute(&format!("CREATE DATABASE {name} STRATEGY FILE_COPY")) {
        Ok(()) => {}
        // A broker restarted on the same data directory: its database is already there.
        Err(e) if e.code() == Some(&postgres::error::SqlState::DUPLICATE_DATABASE) => {}
        Err(e) => panic!("cannot create database {name}: {e}"),
    }
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}

/// The shared server's port, starting it if no copy of this module has yet.
fn shared_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("labaid-pg-{}.port", std::process::id()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        // Held until `file` is dropped, at the end of this closure.
        file.lock()
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
        let mut text = String::new();
        file.read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Ok(port) = text.trim().parse() {
            return port;
        }
        let server = PgServer::start_for_suites();
        let port = server.port;
        server.stop_after_this_process(&path);
        file.rewind()
            .and_then(|()| file.write_all(port.to_string().as_bytes()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        port
    })
}
