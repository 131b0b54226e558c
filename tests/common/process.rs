//! The broker binary as a child process on a data directory, as an operator runs it: JSON logs,
//! ready once it logs that it serves, its warnings and errors kept for the test to read;
//! SIGKILLed when dropped, so a failing test leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use labaid::client::{Client, ConnectOptions};

/// A running `labaid-broker` on the demo directory.
pub struct BrokerProcess {
    child: Child,
    pub addr: SocketAddr,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl BrokerProcess {
    /// Starts it on `data_dir` with `extra` arguments, and waits (up to 30 s) until it serves.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--web-listen", "off", "--log-format", "json", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start labaid-broker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let seen = warnings.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] == "broker serving" {
                    let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_string());
                }
                if v["level"] == "WARN" || v["level"] == "ERROR" {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let w = warnings.lock().unwrap_or_else(|e| e.into_inner());
                panic!("the broker did not start serving; its warnings and errors: {w:#?}");
            }
        };
        Self {
            child,
            addr,
            warnings,
        }
    }

    /// The address clients are given.
    pub fn addrs(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client holding the demo token of `org`.
    pub async fn client(&self, org: &str) -> Client {
        Client::connect(&ConnectOptions {
            addr: self.addrs(),
            token: Some(format!("demo:{org}")),
            connect_timeout: Some(Duration::from_secs(5)),
            tls: None,
        })
        .await
        .expect("connect")
    }

    /// SIGKILL; returns the warnings and errors it logged.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.take_warnings()
    }

    /// SIGTERM, then waits for a clean exit; returns the warnings and errors it logged.
    pub fn stop(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "the broker did not stop cleanly: {exit}");
        self.take_warnings()
    }

    fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
