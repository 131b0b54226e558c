//! Malformed protobuf and gRPC framing: a request body that is not a valid message is the
//! caller's INVALID_ARGUMENT, answered with a fixed message, and the broker logs nothing at error
//! (or warning) level for it. Requests are sent as raw HTTP/2 through a tonic channel, so the
//! bodies can be anything.

mod common;

use common::*;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tonic::Code;
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tower::ServiceExt as _;

/// One gRPC message: uncompressed flag, big-endian length, the bytes.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Posts `body` as-is to `path` with a trust's demo token, and returns the call's status.
async fn call_raw(channel: &Channel, path: &str, token: &str, body: Vec<u8>) -> tonic::Status {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://labaid{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .unwrap();
    let response = channel
        .clone()
        .oneshot(request)
        .await
        .expect("an HTTP answer");
    assert_eq!(response.status(), 200, "gRPC answers in HTTP 200");
    // An error is usually trailers-only (the status in the headers); otherwise, the trailers.
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = response.into_body().collect().await.expect("the body");
    let trailers = collected.trailers().cloned().expect("trailers");
    tonic::Status::from_header_map(&trailers).expect("a grpc-status trailer")
}

/// Bodies that are well framed but whose message is not a valid SubmitRequestRequest or
/// GetRequestRequest (field 1 is a string in both).
fn bad_messages() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("invalid UTF-8 in a string", vec![0x0a, 0x02, 0xc3, 0x28]),
        ("a string longer than the message", b"\x0a\x0aabc".to_vec()),
        ("a varint cut short", vec![0x20, 0xff, 0xff]),
        ("a wrong wire type", vec![0x08, 0x01]),
        ("an invalid wire type", vec![0x0f, 0x01]),
        (
            "garbage",
            vec![0xff, 0xfe, 0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x99],
        ),
    ]
}

/// Bodies whose gRPC framing itself is broken.
fn bad_frames() -> Vec<(&'static str, Vec<u8>)> {
    let whole = framed(b"\x0a\x03abc");
    vec![
        ("a message cut short", whole[..whole.len() - 2].to_vec()),
        ("a prefix cut short", vec![0, 0, 0]),
        ("an unknown flag byte", b"\x07\x00\x00\x00\x01x".to_vec()),
        (
            "a compressed flag without compression",
            b"\x01\x00\x00\x00\x01x".to_vec(),
        ),
        ("text instead of a frame", b"GET / HTTP/1.1\r\n".to_vec()),
    ]
}

#[tokio::test]
async fn malformed_bodies_are_invalid_argument_with_nothing_logged_as_a_failure() {
    let logs = log_capture();
    let broker = TestBroker::spawn().await;
    let channel = Channel::from_shared(broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let cases = bad_messages()
        .into_iter()
        .map(|(what, m)| (what, framed(&m)))
        .chain(bad_frames());
    for (what, body) in cases {
        for path in [
            "/labaid.v1.RequestService/SubmitRequest",
            "/labaid.v1.RequestService/GetRequest",
        ] {
            let status = call_raw(&channel, path, "demo:RJ1", body.clone()).await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{what} to {path}: {status:?}"
            );
            assert!(
                status.message().starts_with("malformed message"),
                "{what} to {path}: {status:?}"
            );
        }
    }
    // The same channel still serves a well-formed call: nothing was left half-read.
    let ok = call_raw(
        &channel,
        "/labaid.v1.RequestService/SubmitRequest",
        "demo:RJ1",
        framed(&submission("MAL-1", labaid::proto::Priority::Stat, broker.now()).encode_to_vec()),
    )
    .await;
    assert_eq!(ok.code(), Code::Ok, "{ok:?}");
    broker.shutdown().await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        text.contains("broker serving"),
        "the capture saw the broker"
    );
    assert!(
        text.contains("request body does not decode") && text.contains("not well-framed gRPC"),
        "the capture saw both kinds of fault"
    );
    for line in text.lines() {
        assert!(!line.contains(" ERROR "), "an error line: {line}");
        assert!(
            !line.contains("rpc failed"),
            "a call counted as the broker's fault: {line}"
        );
    }
}

#[tokio::test]
async fn a_malformed_body_is_refused_without_the_callers_bytes_in_the_answer() {
    let broker = TestBroker::spawn().await;
    let channel = Channel::from_shared(broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A valid NHS number inside a string field followed by an invalid UTF-8 one.
    let mut message = vec![0x0a, 0x0a];
    message.extend_from_slice(b"9434765919");
    message.extend_from_slice(&[0x32, 0x02, 0xc3, 0x28]);
    let status = call_raw(
        &channel,
        "/labaid.v1.RequestService/SubmitRequest",
        "demo:RJ1",
        framed(&message),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().contains("9434765919"), "{status:?}");
    assert!(!status.message().contains("clinical_note"), "{status:?}");
    // Nothing was submitted.
    let trust = broker.client("RJ1").await;
    assert!(all_requests(&trust).await.is_empty());
    broker.shutdown().await;
}
