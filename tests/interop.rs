//! A client in another language, generated from `proto/` alone, can submit and follow a request,
//! and work a job over a lab's bidirectional Work stream.
//!
//! Runs `tests/interop/python_client.py` (Python with grpcio-tools) against a real broker. Where
//! grpcio-tools is not installed the test says so and passes, unless `LABAID_REQUIRE_INTEROP` is
//! set, as CI sets it after installing grpcio-tools.

mod common;

use std::process::Command;

use common::TestBroker;

fn python_has_grpc_tools() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc_tools, grpc"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_protos_takes_a_request_to_its_result() {
    if !python_has_grpc_tools() {
        assert!(
            std::env::var_os("LABAID_REQUIRE_INTEROP").is_none(),
            "LABAID_REQUIRE_INTEROP is set but python3 cannot import grpc_tools"
        );
        eprintln!("SKIPPED: python3 with grpcio-tools is not installed (pip install grpcio-tools)");
        return;
    }
    let broker = TestBroker::spawn().await;
    let addr = broker.addr.to_string();
    let root = env!("CARGO_MANIFEST_DIR");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(format!("{root}/tests/interop/python_client.py"))
            .arg(addr)
            .arg(format!("{root}/proto"))
            .output()
    })
    .await
    .unwrap()
    .expect("run python3");
    assert!(
        output.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("to RESULTED via"), "{stdout}");
    assert!(stdout.contains("RESULTED over a Work stream"), "{stdout}");
    broker.shutdown().await;
}
