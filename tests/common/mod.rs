//! Test harness: a real broker on an ephemeral port, with a manual clock, and clients for any
//! organisation of the demo directory.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part of the harness

pub mod acked;
pub mod pg;
pub mod pg_shared;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use labaid::Config;
use labaid::client::{Client, ConnectOptions};
use labaid::domain::Timestamp;
use labaid::engine::ManualClock;
use labaid::proto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Streaming;

/// True in the test binary that runs the store-agnostic suites again on the PostgreSQL store
/// (`tests/on_postgres.rs`, whose crate is named after its file): there every broker started
/// without a `store_url` gets one, a database of its own on a PostgreSQL the binary shares (see
/// `pg_shared`). Every other test binary's brokers use the file store unless told otherwise.
pub const ON_POSTGRES: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"on_postgres");

/// A broker running in this process.
pub struct TestBroker {
    pub addr: SocketAddr,
    /// The metrics and health HTTP listener.
    pub ops_addr: SocketAddr,
    /// The coordinator page, when the broker serves it (`spawn_with_web`).
    pub web_addr: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), labaid::Error>>>,
    /// Where the broker keeps its files (the audit log; on the file store, journal and snapshots).
    pub data_dir: std::path::PathBuf,
    /// The temporary data directory, removed when the broker is dropped.
    _data: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// The demo directory with a manual clock.
    pub async fn spawn() -> Self {
        Self::spawn_with(Config::demo().expect("demo config")).await
    }

    /// A broker with this config (its clock is replaced by a manual one). A config that keeps the
    /// default data directory gets a temporary one instead, so tests never share state; one
    /// without TLS may serve plaintext, since the harness listens on loopback only. Where
    /// [`ON_POSTGRES`], one without a `store_url` is given the database that belongs to its data
    /// directory, so a broker started again on the same directory finds its state.
    pub async fn spawn_with(config: Config) -> Self {
        Self::spawn_with_clock(config, Arc::new(ManualClock::new(Timestamp::now()))).await
    }

    /// A broker with this config and clock (e.g. a restart on `config.data_dir` at a later time).
    pub async fn spawn_with_clock(config: Config, clock: Arc<ManualClock>) -> Self {
        Self::start(config, clock, false).await
    }

    /// A broker with this config that also serves the coordinator page on an ephemeral port.
    pub async fn spawn_with_web(config: Config) -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::now()));
        Self::start(config, clock, true).await
    }

    async fn start(mut config: Config, clock: Arc<ManualClock>, web: bool) -> Self {
        config.clock = clock.clone();
        let data = (config.data_dir == std::path::Path::new(labaid::config::DEFAULT_DATA_DIR))
            .then(|| tempfile::tempdir().expect("tempdir"));
        if let Some(d) = &data {
            config.data_dir = d.path().to_path_buf();
        }
        if config.tls.is_none() {
            config.allow_plaintext_loopback = true;
        }
        config = on_test_store(config).await;
        let data_dir = config.data_dir.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ops = TcpListener::bind("127.0.0.1:0").await.expect("bind ops");
        let ops_addr = ops.local_addr().expect("ops addr");
        let web = if web {
            Some(TcpListener::bind("127.0.0.1:0").await.expect("bind web"))
        } else {
            None
        };
        let web_addr = web.as_ref().map(|l| l.local_addr().expect("web addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = oneshot::channel();
        let listeners = labaid::Listeners {
            grpc: listener,
            ops: Some(ops),
            web,
            on_ready: Some(ready_tx),
        };
        let mut task = tokio::spawn(labaid::serve_on(listeners, config, async {
            let _ = stopped.await;
        }));
        tokio::select! {
            r = ready => r.expect("the broker stopped before serving"),
            r = &mut task => panic!("the broker stopped before serving: {r:?}"),
        }
        Self {
            addr,
            ops_addr,
            web_addr,
            clock,
            stop: Some(stop),
            task: Some(task),
            data_dir,
            _data: data,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client holding the demo token of `org` (e.g. "RJ1").
    pub async fn client(&self, org: &str) -> Client {
        self.client_with_token(Some(&format!("demo:{org}"))).await
    }

    pub async fn client_with_token(&self, token: Option<&str>) -> Client {
        Client::connect(&ConnectOptions {
            addr: self.url(),
            token: token.map(str::to_string),
            connect_timeout: None,
            tls: None,
        })
        .await
        .expect("connect")
    }

    /// Moves the broker's clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn now(&self) -> Timestamp {
        use labaid::domain::Clock;
        self.clock.now()
    }

    /// Stops the broker and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("serve");
        }
    }
}

impl Drop for TestBroker {
    /// Stops the broker (unless `shutdown` did), and removes its temporary data directory only
    /// once the store has let go of it: a closing snapshot written into a removed directory
    /// fails, and the store aborts the process on a failed snapshot, taking every other test in
    /// it along. The store's lock is released when its journal closes; a thread waits for that,
    /// so that dropping never blocks the test's runtime.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(dir) = self._data.take() {
            std::thread::spawn(move || {
                if let Ok(lock) = std::fs::File::open(dir.path().join("LOCK")) {
                    let _ = lock.lock();
                }
                drop(dir);
            });
        }
    }
}

/// `config` on the store this test binary runs its brokers on: where [`ON_POSTGRES`] and it
/// names no store, the database that belongs to its data directory; otherwise as it is. For a
/// test that starts `labaid::serve` itself (`TestBroker` does this for its own).
pub async fn on_test_store(mut config: Config) -> Config {
    if ON_POSTGRES && config.store_url.is_none() {
        let dir = config.data_dir.clone();
        let url = tokio::task::spawn_blocking(move || pg_shared::store_url_for(&dir))
            .await
            .expect("a database on the shared PostgreSQL");
        config.store_url = Some(url);
    }
    config
}

pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.millis().div_euclid(1000),
        nanos: (t.millis().rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A valid submission: potassium (4 h stability), collected 20 minutes before `now`.
pub fn submission(
    order: &str,
    priority: proto::Priority,
    now: Timestamp,
) -> proto::SubmitRequestRequest {
    submission_of(order, priority, &["K"], now.plus_minutes(-20))
}

pub fn submission_of(
    order: &str,
    priority: proto::Priority,
    tests: &[&str],
    collected_at: Timestamp,
) -> proto::SubmitRequestRequest {
    proto::SubmitRequestRequest {
        order_number: order.to_string(),
        patient: Some(proto::Patient {
            nhs_number: "9434765919".into(),
            family_name: "Testpatient".into(),
            given_name: "Alex".into(),
            birth_date: "1970-01-01".into(),
        }),
        tests: tests.iter().map(|t| t.to_string()).collect(),
        priority: priority as i32,
        collected_at: Some(ts(collected_at)),
        clinical_note: String::new(),
    }
}

/// Submits a request that must be accepted, and returns it as the broker holds it.
pub async fn submit(client: &Client, request: proto::SubmitRequestRequest) -> proto::Request {
    client
        .requests()
        .submit_request(request)
        .await
        .expect("submit")
        .into_inner()
        .request
        .expect("request")
}

/// A request as its trust sees it now; the call must succeed.
pub async fn get_request(trust: &Client, id: &str) -> proto::Request {
    trust
        .requests()
        .get_request(proto::GetRequestRequest { id: id.to_string() })
        .await
        .expect("get request")
        .into_inner()
}

/// The trust's request events from the start of its history.
pub async fn watch_request_events(trust: &Client) -> Streaming<proto::RequestEvent> {
    trust
        .requests()
        .watch_request_events(proto::WatchRequestEventsRequest::default())
        .await
        .expect("watch request events")
        .into_inner()
}

/// A potassium result of `value` mmol/L (reference range 3.5-5.3: above 6.5 is critical).
pub fn k_result(value: &str) -> proto::Observation {
    proto::Observation {
        test: "K".into(),
        value: value.into(),
        unit: "mmol/L".into(),
        reference_range: "3.5-5.3".into(),
        ..Default::default()
    }
}

/// The lab accepts the job and receives its sample; both must succeed.
pub async fn accept_and_receive(lab: &Client, id: &str) {
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: id.to_string() })
        .await
        .expect("accept");
    lab.labs()
        .receive_sample(proto::ReceiveSampleRequest { id: id.to_string() })
        .await
        .expect("receive");
}

/// The exposition text of `/metrics`, parsed with `prometheus-parse` (the same parser the bench
/// reads the broker's figures with).
pub fn scrape(metrics: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition text parses")
}

/// The value of one sample, named as it is written, e.g.
/// `labaid_requests{priority="stat",state="resulted"}` or `labaid_decision_seconds_count`: the
/// name and the whole set of labels must match. The selector is parsed as a sample line too.
pub fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    let wanted = scrape(&format!("{name_and_labels} 0"));
    let wanted = wanted.samples.first().expect("a sample selector");
    scrape(metrics)
        .samples
        .iter()
        .find(|s| s.metric == wanted.metric && s.labels == wanted.labels)
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no sample {name_and_labels}"))
}

/// A plain HTTP/1.1 GET (for the operations listener): status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, path, None).await
}

/// A plain HTTP/1.1 GET, with `Authorization: Bearer <token>` when given: status code and body.
pub async fn http_get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .expect("status line")
        .parse()
        .expect("status");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Next message of a stream, failing the test after 10 s rather than hanging.
pub async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("timed out waiting for a stream message")
        .expect("stream error")
        .expect("stream ended")
}

/// Reads lab events until one of `kind` arrives; returns it.
pub async fn next_job_event(
    stream: &mut Streaming<proto::JobEvent>,
    kind: proto::JobEventKind,
) -> proto::JobEvent {
    loop {
        let e = next(stream).await;
        if e.kind == kind as i32 {
            return e;
        }
    }
}

/// Sets every capacity of every demo lab to zero, so requests queue.
pub async fn close_all_labs(broker: &TestBroker) {
    for lab in ["RJ7", "R1H", "RJ2", "RJ6", "RAL", "RAX"] {
        let c = broker.client(lab).await;
        let cap = c
            .labs()
            .get_capacity(proto::GetCapacityRequest {})
            .await
            .unwrap()
            .into_inner();
        for t in cap.tests {
            c.labs()
                .set_capacity(proto::SetCapacityRequest {
                    test: t.test,
                    capacity: 0,
                })
                .await
                .unwrap();
        }
    }
}

/// Every request the client's organisation can list, page by page.
pub async fn all_requests(client: &Client) -> Vec<proto::Request> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .requests()
            .list_requests(proto::ListRequestsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list requests")
            .into_inner();
        out.extend(page.requests);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Every log line of this test binary, from DEBUG up: the binary's one tracing subscriber,
/// installed on the first call.
pub fn log_capture() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static CAPTURE: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let writer = buf.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || Capture(writer.clone()))
                .try_init()
                .expect("the first subscriber of this test binary");
            buf
        })
        .clone()
}

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
