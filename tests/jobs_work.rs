//! `labctl jobs work`, the interactive bench, driven in tmux (send-keys, capture-pane) as a lab
//! operator would use it, against a real broker behind a proxy whose connections the test cuts.
//! Needs tmux: without it the test fails (`.ci/run` installs it).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use labaid::client::Client;
use labaid::proto::{self, Priority, RequestState};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Longest to wait for the screen to show something.
const SHOW_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP proxy between labctl and the broker whose connections the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    target: Arc<Mutex<std::net::SocketAddr>>,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    task: AbortHandle,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let target = Arc::new(Mutex::new(target));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let (up2, connections2, target2) = (up.clone(), connections.clone(), target.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let to = *target2.lock().unwrap();
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections2.lock().unwrap().push(relay.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            target,
            up,
            connections,
            task,
        }
    }

    /// Sends new connections to another broker (one restarted on another port).
    fn retarget(&self, to: std::net::SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    /// Drops every open connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Accepts connections again.
    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// A tmux server of the test's own (its own socket) running labctl in one pane.
struct Bench {
    socket: PathBuf,
    _home: tempfile::TempDir,
}

impl Bench {
    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    /// Starts `labctl jobs work` as lab `org` against `addr`, in a 160x40 pane.
    fn start(addr: &str, org: &str) -> Self {
        let version = Command::new("tmux").arg("-V").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "this test drives labctl in tmux, which is not installed (apt-get install tmux): \
             {version:?}"
        );
        let home = tempfile::tempdir().expect("tempdir");
        let socket = home.path().join("tmux.sock");
        let labctl = env!("CARGO_BIN_EXE_labctl");
        // The shell line stays after labctl exits, so the test sees how it ended.
        let line = format!(
            "env -u LABAID_PROFILE -u LABAID_CA -u LABAID_CERT -u LABAID_KEY \
             LABAID_ADDR={addr} LABAID_TOKEN=demo:{org} NO_COLOR=1 HOME={home} \
             XDG_CONFIG_HOME={home} {labctl} jobs work; echo \"labctl exited $?\"; sleep 600",
            home = home.path().display()
        );
        let bench = Self {
            socket,
            _home: home,
        };
        let status = bench
            .tmux()
            .args([
                "new-session",
                "-d",
                "-s",
                "bench",
                "-x",
                "160",
                "-y",
                "40",
                &line,
            ])
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session");
        bench
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "bench"])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the pane shows `needle`; returns the screen.
    async fn shows(&self, needle: &str) -> String {
        let deadline = Instant::now() + SHOW_TIMEOUT;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the bench never showed {needle:?}; it shows:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Presses one key (a tmux key name: `a`, `Enter`, `Down`).
    fn press(&self, key: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", "bench", key])
            .status()
            .expect("send-keys");
        assert!(ok.success());
    }

    /// Types text literally.
    fn type_text(&self, text: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", "bench", "-l", text])
            .status()
            .expect("send-keys");
        assert!(ok.success());
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

async fn job_state(lab: &Client, id: &str) -> RequestState {
    let job = lab
        .labs()
        .get_job(proto::GetJobRequest { id: id.to_string() })
        .await
        .expect("get job")
        .into_inner();
    RequestState::try_from(job.state).expect("state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_operator_accepts_receives_results_and_declines_by_key_through_a_dropped_link() {
    let broker = TestBroker::spawn().await;
    let proxy = Proxy::start(broker.addr).await;
    let trust = broker.client("RJ1").await;
    let lab = broker.client("R1H").await;

    // A stat potassium goes to R1H; the bench lists it with its lease counting down.
    let first = submit(&trust, submission("W-1", Priority::Stat, broker.now())).await;
    assert_eq!(first.lab, "R1H");
    let bench = Bench::start(&format!("http://{}", proxy.addr), "R1H");
    bench.shows("labctl jobs work: R1H").await;
    let screen = bench.shows("to accept").await;
    assert!(screen.contains("W-1"), "{screen}");

    // One key accepts; done only once the broker has it.
    bench.press("a");
    bench.shows("accepted W-1").await;
    assert_eq!(job_state(&lab, &first.id).await, RequestState::Accepted);

    // The link drops. A key pressed meanwhile is kept, and sent on reconnecting.
    proxy.cut();
    bench.shows("RECONNECTING").await;
    bench.press("r");
    bench.shows("receive W-1: kept, sent on reconnecting").await;
    assert_eq!(job_state(&lab, &first.id).await, RequestState::Accepted);
    proxy.restore();
    bench.shows("received the sample of W-1").await;
    bench.shows("reconnected").await;
    assert_eq!(job_state(&lab, &first.id).await, RequestState::Received);

    // Results: checked locally first (a test not requested, one missing: nothing sent), then
    // posted.
    bench.press("e");
    bench.type_text("UE=5");
    bench.press("Enter");
    bench.shows("nothing was sent").await;
    assert_eq!(job_state(&lab, &first.id).await, RequestState::Received);
    for _ in 0.."UE=5".len() {
        bench.press("BSpace");
    }
    bench.type_text("K=4.1mmol/L");
    bench.press("Enter");
    bench.shows("results posted for W-1").await;
    let resulted = get_request(&trust, &first.id).await;
    assert_eq!(resulted.state, RequestState::Resulted as i32);
    assert_eq!(resulted.results[0].value, "4.1");

    // A new offer appears as it arrives; declining asks why, and the offer goes elsewhere.
    let second = submit(&trust, submission("W-2", Priority::Stat, broker.now())).await;
    bench.shows("new offer W-2").await;
    bench.press("d");
    bench.shows("decline: why").await;
    bench.type_text("analyser down");
    bench.press("Enter");
    bench.shows("declined W-2").await;
    let moved = get_request(&trust, &second.id).await;
    assert_ne!(moved.lab, "R1H", "{moved:?}");
    let gone = lab
        .labs()
        .get_job(proto::GetJobRequest {
            id: second.id.clone(),
        })
        .await
        .expect_err("a declined job is no longer R1H's");
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // q leaves cleanly.
    bench.press("q");
    bench.shows("labctl exited 0").await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_rides_out_a_broker_restart_and_its_done_actions_are_durable() {
    let data = tempfile::tempdir().expect("tempdir");
    let config = || {
        let mut c = labaid::Config::demo().expect("demo");
        c.data_dir = data.path().to_path_buf();
        c
    };
    let broker = TestBroker::spawn_with(config()).await;
    let clock = broker.clock.clone();
    let proxy = Proxy::start(broker.addr).await;
    let trust = broker.client("RJ1").await;
    let first = submit(&trust, submission("R-1", Priority::Stat, broker.now())).await;
    assert_eq!(first.lab, "R1H");
    let bench = Bench::start(&format!("http://{}", proxy.addr), "R1H");
    bench.shows("to accept").await;
    bench.press("a");
    bench.shows("accepted R-1").await;

    // The broker stops (a deploy, say); the bench keeps what the operator presses meanwhile.
    broker.shutdown().await;
    proxy.cut();
    bench.shows("RECONNECTING").await;
    bench.press("r");
    bench.shows("receive R-1: kept, sent on reconnecting").await;

    // It comes back on another port, from the same store.
    let broker = TestBroker::spawn_with_clock(config(), clock).await;
    proxy.retarget(broker.addr);
    proxy.restore();
    bench.shows("received the sample of R-1").await;
    let lab = broker.client("R1H").await;
    assert_eq!(job_state(&lab, &first.id).await, RequestState::Received);
    let screen = bench.screen();
    assert!(
        screen
            .lines()
            .any(|l| l.contains("R-1") && l.contains("received")),
        "{screen}"
    );
    bench.press("q");
    bench.shows("labctl exited 0").await;
    broker.shutdown().await;
}
