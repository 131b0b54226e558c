//! The broker's Prometheus metrics, in a registry of its own (so brokers in one process, as in
//! tests, do not mix). Labels carry ODS codes, test codes, priorities and states: never patient data.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::domain::{OdsCode, Priority, Request, RequestState};
use crate::routing::LabState;

/// Buckets for times from submission to offer, accept and result, in seconds: one second to a day.
const LIFE_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    86400.0,
];

/// Every metric the broker exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests held, by state and priority.
    pub requests: IntGaugeVec,
    /// Queue depth per priority (requests waiting for a lab).
    pub queue_depth: IntGaugeVec,
    /// Seconds the oldest waiting request of each priority has waited (set at scrape time).
    pub queue_oldest_wait: prometheus::GaugeVec,
    /// Open offers per lab.
    pub offers_open: IntGaugeVec,
    /// Seconds from submission to first offer, per priority.
    pub time_to_offer: HistogramVec,
    /// Seconds from submission to acceptance, per priority.
    pub time_to_accept: HistogramVec,
    /// Seconds from submission to result, per priority.
    pub time_to_result: HistogramVec,
    /// Requests expired, per priority.
    pub expired: IntCounterVec,
    /// Requests routed again, by reason.
    pub reroutes: IntCounterVec,
    /// Critical results posted, per priority.
    pub critical_results: IntCounterVec,
    /// Capacity per lab and test (set at scrape time).
    pub lab_capacity: IntGaugeVec,
    /// Jobs in flight per lab and test (set at scrape time).
    pub lab_in_flight: IntGaugeVec,
    /// In flight / capacity per lab and test (set at scrape time).
    pub lab_utilisation: prometheus::GaugeVec,
    /// 1 for each lab's current status (set at scrape time).
    pub lab_status: IntGaugeVec,
    /// gRPC calls by method and status code.
    pub grpc_calls: IntCounterVec,
    /// gRPC call latency by method, seconds.
    pub grpc_latency: HistogramVec,
    /// gRPC connections the broker closed before serving them, by reason (`peer_limit`,
    /// `handshake_timeout`).
    pub grpc_connections_closed: IntCounterVec,
    /// Actions on labs' Work streams by action and status code (the stream is one call).
    pub work_actions: IntCounterVec,
    /// Journal sync latency, seconds.
    pub store_sync: Histogram,
    /// Commands per journal sync.
    pub store_batch: Histogram,
    /// Seconds deciding paused while the state was copied for a snapshot.
    pub store_snapshot_copy: Histogram,
    /// Snapshots handed to the writer, by kind (`full`, `incremental`).
    pub store_snapshots: IntCounterVec,
    /// Seconds from handing a snapshot to the writer to its being durable, by kind.
    pub store_snapshot_write: HistogramVec,
    /// Bytes of snapshots made durable, by kind.
    pub store_snapshot_bytes: IntCounterVec,
    /// Seconds one command held the decision lock, being decided.
    pub decision: Histogram,
    /// Seconds the syncer took to update the read views with one durable batch.
    pub view_update: Histogram,
    /// Bytes free on the data directory's filesystem, as last measured.
    pub data_dir_free_bytes: IntGauge,
    /// The free-space floor below which new work is refused (0: none).
    pub data_dir_free_floor_bytes: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants; a failure here is a programming error caught by tests.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    /// Defines and registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("labaid".into()), None).unwrap_or_else(|_| Registry::new());
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let fgauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(prometheus::GaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let hist = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                labels,
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let life = LIFE_BUCKETS.to_vec();
        let plain_hist = |name: &str, help: &str, buckets: prometheus::Result<Vec<f64>>| {
            let h = must(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets.unwrap_or_default()),
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let store_sync = plain_hist(
            "store_sync_seconds",
            "Journal append and sync latency.",
            prometheus::exponential_buckets(0.000_025, 2.0, 16),
        );
        let store_batch = plain_hist(
            "store_batch_commands",
            "Commands made durable per journal sync.",
            prometheus::exponential_buckets(1.0, 2.0, 10),
        );
        let store_snapshots = counter(
            "store_snapshots_total",
            "Snapshots handed to the writer, by kind (full, incremental).",
            &["kind"],
        );
        // Both kinds from the start, at zero: a series that appears only at its first count
        // reads as "no data" rather than as none taken yet.
        for kind in ["full", "incremental"] {
            store_snapshots.with_label_values(&[kind]);
        }
        let store_snapshot_write = hist(
            "store_snapshot_write_seconds",
            "Time from handing a snapshot to the writer to its being durable (rebuilding its \
             indexes, encoding, writing and syncing), by kind. Everything journaled meanwhile is \
             replayed after a crash.",
            &["kind"],
            prometheus::exponential_buckets(0.01, 2.0, 14).unwrap_or_default(),
        );
        let store_snapshot_bytes = counter(
            "store_snapshot_bytes_total",
            "Bytes of snapshots made durable (as stored: compressed on PostgreSQL), by kind: \
             against the journal's own writes, what snapshots add to the disk's load.",
            &["kind"],
        );
        for kind in ["full", "incremental"] {
            store_snapshot_write.with_label_values(&[kind]);
            store_snapshot_bytes.with_label_values(&[kind]);
        }
        let store_snapshot_copy = plain_hist(
            "store_snapshot_copy_seconds",
            "Time deciding paused while the state was copied for a snapshot.",
            prometheus::exponential_buckets(0.000_5, 2.0, 14),
        );
        let decision = plain_hist(
            "decision_seconds",
            "Time one command held the decision lock, being decided (every other waits).",
            prometheus::exponential_buckets(0.000_002, 2.0, 18),
        );
        let plain_gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let data_dir_free_bytes = plain_gauge(
            "data_dir_free_bytes",
            "Bytes free on the data directory's filesystem (journal, snapshots, audit trail), \
             measured once a second.",
        );
        let data_dir_free_floor_bytes = plain_gauge(
            "data_dir_free_floor_bytes",
            "The free-space floor: below it the broker refuses new work (0: no floor).",
        );
        let view_update = plain_hist(
            "view_update_seconds",
            "Time the syncer took to update the read views with one durable batch (its replies and \
             events wait for it).",
            prometheus::exponential_buckets(0.000_002, 2.0, 18),
        );
        Self {
            requests: gauge(
                "requests",
                "Requests held, by state and priority.",
                &["state", "priority"],
            ),
            queue_depth: gauge(
                "queue_depth",
                "Requests waiting for a lab, by priority.",
                &["priority"],
            ),
            queue_oldest_wait: fgauge(
                "queue_oldest_wait_seconds",
                "How long the oldest waiting request of each priority has waited.",
                &["priority"],
            ),
            offers_open: gauge("offers_open", "Open offers, by lab.", &["lab"]),
            time_to_offer: hist(
                "time_to_offer_seconds",
                "Submission to first offer.",
                &["priority"],
                life.clone(),
            ),
            time_to_accept: hist(
                "time_to_accept_seconds",
                "Submission to acceptance.",
                &["priority"],
                life.clone(),
            ),
            time_to_result: hist(
                "time_to_result_seconds",
                "Submission to result.",
                &["priority"],
                life,
            ),
            expired: counter(
                "expired_total",
                "Requests expired: no lab could finish in time.",
                &["priority"],
            ),
            reroutes: counter(
                "reroutes_total",
                "Requests routed again, by reason.",
                &["reason"],
            ),
            critical_results: counter(
                "critical_results_total",
                "Results with a critical value.",
                &["priority"],
            ),
            lab_capacity: gauge(
                "lab_capacity",
                "Capacity per lab and test.",
                &["lab", "test"],
            ),
            lab_in_flight: gauge(
                "lab_in_flight",
                "Jobs in flight per lab and test.",
                &["lab", "test"],
            ),
            lab_utilisation: fgauge(
                "lab_utilisation",
                "Jobs in flight over capacity.",
                &["lab", "test"],
            ),
            lab_status: gauge(
                "lab_status",
                "1 for the lab's current status.",
                &["lab", "status"],
            ),
            grpc_calls: counter(
                "grpc_calls_total",
                "gRPC calls by method and status code.",
                &["method", "code"],
            ),
            grpc_latency: hist(
                "grpc_call_seconds",
                "gRPC call latency (to response headers).",
                &["method"],
                prometheus::exponential_buckets(0.000_05, 2.0, 18).unwrap_or_default(),
            ),
            grpc_connections_closed: counter(
                "grpc_connections_closed_total",
                "gRPC connections closed before they were served, by reason.",
                &["reason"],
            ),
            work_actions: counter(
                "work_actions_total",
                "Actions on labs' Work streams by action and status code.",
                &["action", "code"],
            ),
            store_sync,
            store_batch,
            store_snapshot_copy,
            store_snapshots,
            store_snapshot_write,
            store_snapshot_bytes,
            decision,
            view_update,
            data_dir_free_bytes,
            data_dir_free_floor_bytes,
            registry,
        }
    }

    /// Counts a request into (or, with `delta = -1`, out of) its state and priority.
    pub(crate) fn count_request(&self, r: &Request, delta: i64) {
        self.count_requests(
            r.state,
            r.submission.priority,
            r.lab.as_ref().filter(|_| r.state == RequestState::Offered),
            delta,
        );
    }

    /// Counts `delta` requests in `state` of `priority`, offered to `lab` when that is given.
    pub(crate) fn count_requests(
        &self,
        state: RequestState,
        priority: Priority,
        lab: Option<&OdsCode>,
        delta: i64,
    ) {
        let p = priority.as_str();
        self.requests
            .with_label_values(&[state.as_str(), p])
            .add(delta);
        if state == RequestState::Queued {
            self.queue_depth.with_label_values(&[p]).add(delta);
        }
        if state == RequestState::Offered
            && let Some(lab) = lab
        {
            self.offers_open
                .with_label_values(&[lab.as_str()])
                .add(delta);
        }
    }

    /// Sets the scrape-time gauges from the labs and the oldest waits.
    pub(crate) fn refresh(&self, labs: &[LabState], oldest_wait_secs: &[(Priority, f64)]) {
        for lab in labs {
            for (test, slot) in &lab.slots {
                let labels = [lab.config.ods.as_str(), test.as_str()];
                self.lab_capacity
                    .with_label_values(&labels)
                    .set(i64::from(slot.capacity));
                self.lab_in_flight
                    .with_label_values(&labels)
                    .set(i64::from(slot.in_flight));
                let util = if slot.capacity == 0 {
                    0.0
                } else {
                    f64::from(slot.in_flight) / f64::from(slot.capacity)
                };
                self.lab_utilisation.with_label_values(&labels).set(util);
            }
            for status in ["online", "draining", "offline"] {
                let on = i64::from(lab.status.as_str() == status);
                self.lab_status
                    .with_label_values(&[lab.config.ods.as_str(), status])
                    .set(on);
            }
        }
        for p in Priority::ALL {
            let wait = oldest_wait_secs
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(0.0, |(_, w)| *w);
            self.queue_oldest_wait
                .with_label_values(&[p.as_str()])
                .set(wait);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
