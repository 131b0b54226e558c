//! The broker's journal figures over a measured window, read from its Prometheus endpoint: how
//! many syncs, how many commands each made durable, and how long each took (mean and tail); and
//! the snapshots written meanwhile, whose writes share the disk with those syncs.

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    syncs: f64,
    sync_seconds: f64,
    commands: f64,
    /// The sync-latency histogram: (bucket upper bound in seconds, syncs at or under it).
    sync_buckets: Vec<(f64, f64)>,
    /// Snapshots made durable, by kind: full, then incremental.
    snapshots: [SnapshotCounters; 2],
}

/// One kind of snapshot's cumulative counters.
#[derive(Debug, Clone, Copy, Default)]
struct SnapshotCounters {
    written: f64,
    write_seconds: f64,
    bytes: f64,
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
    /// 99th percentile of append and sync, milliseconds: the upper bound of the histogram
    /// bucket it falls in (buckets double from 25 µs), so at most twice the true value.
    pub p99_sync_ms: Option<f64>,
    /// Syncs that took longer than [`SLOW_SYNC_SECONDS`]: each holds up every answer and event
    /// of its batch, and a few of them set an offer p99 of several milliseconds.
    pub slow_syncs: u64,
    /// The slowest sync, milliseconds: the upper bound of the highest bucket that gained one
    /// (`None` past the last bucket, 819 ms, or with no syncs).
    pub max_sync_ms: Option<f64>,
    /// Full snapshots made durable in the window.
    pub full_snapshots: SnapshotFigures,
    /// Incremental snapshots made durable in the window.
    pub incremental_snapshots: SnapshotFigures,
}

/// The snapshots of one kind made durable in a window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SnapshotFigures {
    /// How many.
    pub written: u64,
    /// Their mean time from hand-over to durable, milliseconds (0 with none): the journal
    /// written meanwhile is what a crash would replay.
    pub mean_write_ms: f64,
    /// Their size in all, MiB.
    pub mib: f64,
}

/// A slow sync, seconds: a bucket bound of the broker's histogram (25 µs × 2^7).
pub const SLOW_SYNC_SECONDS: f64 = 0.0032;

/// Reads the counters from `http://{addr}/metrics`; `None` when the endpoint does not answer.
pub async fn read(addr: SocketAddr) -> Option<Counters> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(parse(&body))
}

/// Reads the counters from the exposition with `prometheus-parse`, which groups a histogram's
/// buckets under its name and labels (it needs the `# TYPE` line the broker always writes).
fn parse(text: &str) -> Counters {
    let mut counters = Counters::default();
    let Ok(scrape) = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else {
        return counters;
    };
    for sample in &scrape.samples {
        let value = match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) if sample.metric == "labaid_store_sync_seconds" => {
                counters.sync_buckets = buckets
                    .iter()
                    .filter(|b| b.less_than.is_finite())
                    .map(|b| (b.less_than, b.count))
                    .collect();
                continue;
            }
            Value::Histogram(_) | Value::Summary(_) => continue,
        };
        let kind = match sample.labels.get("kind") {
            Some("full") => Some(0),
            Some("incremental") => Some(1),
            _ => None,
        };
        match (sample.metric.as_str(), kind) {
            ("labaid_store_sync_seconds_count", None) => counters.syncs = value,
            ("labaid_store_sync_seconds_sum", None) => counters.sync_seconds = value,
            ("labaid_store_batch_commands_sum", None) => counters.commands = value,
            ("labaid_store_snapshot_write_seconds_count", Some(k)) => {
                counters.snapshots[k].written = value;
            }
            ("labaid_store_snapshot_write_seconds_sum", Some(k)) => {
                counters.snapshots[k].write_seconds = value;
            }
            ("labaid_store_snapshot_bytes_total", Some(k)) => counters.snapshots[k].bytes = value,
            _ => {}
        }
    }
    counters
}

/// The figures between `before` and `after`, `seconds` apart.
pub fn between(before: &Counters, after: &Counters, seconds: f64) -> JournalFigures {
    let syncs = (after.syncs - before.syncs).max(0.0);
    let per_sync = |x: f64| if syncs > 0.0 { x / syncs } else { 0.0 };
    // Syncs at or under each bound during the window (the +Inf bucket, the total, is left out).
    let window: Vec<(f64, f64)> = after
        .sync_buckets
        .iter()
        .map(|&(le, n)| {
            let earlier = before
                .sync_buckets
                .iter()
                .find(|&&(b, _)| b == le)
                .map_or(0.0, |&(_, m)| m);
            (le, (n - earlier).max(0.0))
        })
        .collect();
    let p99_sync_ms = (syncs > 0.0)
        .then(|| window.iter().find(|&&(_, n)| n >= 0.99 * syncs))
        .flatten()
        .map(|&(le, _)| le * 1000.0);
    let under_slow = window
        .iter()
        .find(|&&(le, _)| (le - SLOW_SYNC_SECONDS).abs() < 1e-12)
        .map_or(syncs, |&(_, n)| n);
    let max_sync_ms = (syncs > 0.0)
        .then(|| window.iter().find(|&&(_, n)| n >= syncs))
        .flatten()
        .map(|&(le, _)| le * 1000.0);
    JournalFigures {
        syncs_per_second: syncs / seconds.max(1e-9),
        commands_per_sync: per_sync(after.commands - before.commands),
        mean_sync_ms: per_sync(after.sync_seconds - before.sync_seconds) * 1000.0,
        p99_sync_ms,
        max_sync_ms,
        slow_syncs: (syncs - under_slow).max(0.0).round() as u64,
        full_snapshots: snapshots_between(before.snapshots[0], after.snapshots[0]),
        incremental_snapshots: snapshots_between(before.snapshots[1], after.snapshots[1]),
    }
}

fn snapshots_between(before: SnapshotCounters, after: SnapshotCounters) -> SnapshotFigures {
    let written = (after.written - before.written).max(0.0);
    SnapshotFigures {
        written: written.round() as u64,
        mean_write_ms: if written > 0.0 {
            (after.write_seconds - before.write_seconds).max(0.0) / written * 1000.0
        } else {
            0.0
        },
        mib: (after.bytes - before.bytes).max(0.0) / (1024.0 * 1024.0),
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
        let f = between(&before, &after, 2.0);
        assert_eq!(f.syncs_per_second, 50.0);
        assert_eq!(f.commands_per_sync, 30.0);
        assert!((f.mean_sync_ms - 5.0).abs() < 1e-9);
        assert_eq!(f.p99_sync_ms, None, "no buckets, no tail");
    }

    #[test]
    fn the_tail_comes_from_the_histogram_buckets_of_the_window() {
        let reading = |buckets: [f64; 4], count: f64| {
            let mut text = String::from("# TYPE labaid_store_sync_seconds histogram\n");
            for (le, n) in ["0.0008", "0.0016", "0.0032", "0.0064"].iter().zip(buckets) {
                text.push_str(&format!(
                    "labaid_store_sync_seconds_bucket{{le=\"{le}\"}} {n}\n"
                ));
            }
            text.push_str(&format!(
                "labaid_store_sync_seconds_bucket{{le=\"+Inf\"}} {count}\nlabaid_store_sync_seconds_count {count}\n"
            ));
            parse(&text)
        };
        // Before the window: 10 syncs, all fast. In it: 1,000 more, of which 980 under 0.8 ms,
        // 5 more under 1.6 ms, 5 more under 3.2 ms (the 990th, the p99), 6 under 6.4 ms and 4
        // slower still.
        let before = reading([10.0, 10.0, 10.0, 10.0], 10.0);
        let after = reading([990.0, 995.0, 1000.0, 1006.0], 1010.0);
        let f = between(&before, &after, 1.0);
        assert_eq!(f.p99_sync_ms, Some(3.2));
        assert_eq!(f.slow_syncs, 10);
        assert_eq!(f.max_sync_ms, None, "4 syncs slower than the last bucket");
        let after = reading([990.0, 995.0, 1000.0, 1010.0], 1010.0);
        assert_eq!(between(&before, &after, 1.0).max_sync_ms, Some(6.4));
    }

    #[test]
    fn snapshots_are_counted_by_kind_over_the_window() {
        let reading = |full: [f64; 3], incremental: [f64; 3]| {
            let mut text = String::from(
                "# TYPE labaid_store_snapshot_write_seconds histogram\n\
                 # TYPE labaid_store_snapshot_bytes_total counter\n",
            );
            for (kind, [count, sum, bytes]) in [("full", full), ("incremental", incremental)] {
                text.push_str(&format!(
                    "labaid_store_snapshot_write_seconds_bucket{{kind=\"{kind}\",le=\"0.01\"}} 0\n\
                     labaid_store_snapshot_write_seconds_sum{{kind=\"{kind}\"}} {sum}\n\
                     labaid_store_snapshot_write_seconds_count{{kind=\"{kind}\"}} {count}\n\
                     labaid_store_snapshot_bytes_total{{kind=\"{kind}\"}} {bytes}\n"
                ));
            }
            parse(&text)
        };
        let before = reading([1.0, 3.0, 1048576.0], [2.0, 0.5, 2097152.0]);
        let after = reading([1.0, 3.0, 1048576.0], [6.0, 1.5, 10485760.0]);
        let f = between(&before, &after, 1.0);
        assert_eq!(f.full_snapshots.written, 0);
        assert_eq!(f.full_snapshots.mean_write_ms, 0.0, "none written, no mean");
        assert_eq!(f.incremental_snapshots.written, 4);
        assert!((f.incremental_snapshots.mean_write_ms - 250.0).abs() < 1e-9);
        assert!((f.incremental_snapshots.mib - 8.0).abs() < 1e-9);
    }
}
