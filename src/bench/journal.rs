//! The broker's journal figures over a measured window, read from its Prometheus endpoint: how
//! many syncs, how many commands each made durable, and how long each took.

use std::net::SocketAddr;

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    syncs: f64,
    sync_seconds: f64,
    commands: f64,
}

/// What the journal did between two readings.
#[derive(Debug, Clone, Serialize)]
pub struct JournalFigures {
    /// Journal syncs per second.
    pub syncs_per_second: f64,
    /// Commands made durable per sync, on average.
    pub commands_per_sync: f64,
    /// Mean time of one append and sync, milliseconds.
    pub mean_sync_ms: f64,
}

/// Reads the counters from `http://{addr}/metrics`; `None` when the endpoint does not answer.
pub async fn read(addr: SocketAddr) -> Option<Counters> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(parse(&body))
}

fn parse(text: &str) -> Counters {
    let mut counters = Counters::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "labaid_store_sync_seconds_count" => counters.syncs = value,
            "labaid_store_sync_seconds_sum" => counters.sync_seconds = value,
            "labaid_store_batch_commands_sum" => counters.commands = value,
            _ => {}
        }
    }
    counters
}

/// The figures between `before` and `after`, `seconds` apart.
pub fn between(before: Counters, after: Counters, seconds: f64) -> JournalFigures {
    let syncs = (after.syncs - before.syncs).max(0.0);
    let per_sync = |x: f64| if syncs > 0.0 { x / syncs } else { 0.0 };
    JournalFigures {
        syncs_per_second: syncs / seconds.max(1e-9),
        commands_per_sync: per_sync(after.commands - before.commands),
        mean_sync_ms: per_sync(after.sync_seconds - before.sync_seconds) * 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_difference_of_two_readings() {
        let before = parse(
            "labaid_store_sync_seconds_sum 1\nlabaid_store_sync_seconds_count 10\nlabaid_store_batch_commands_sum 100\n",
        );
        let after = parse(
            "# HELP x\nlabaid_store_sync_seconds_sum 1.5\nlabaid_store_sync_seconds_count 110\nlabaid_store_batch_commands_sum 3100\n",
        );
        let f = between(before, after, 2.0);
        assert_eq!(f.syncs_per_second, 50.0);
        assert_eq!(f.commands_per_sync, 30.0);
        assert!((f.mean_sync_ms - 5.0).abs() < 1e-9);
    }
}
