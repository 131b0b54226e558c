//! A running labaid-edge given every broker's address, when the leading broker is killed: its
//! order feed and its results watch move to the broker that takes over, with a real PostgreSQL
//! (see `common::pg`), real broker processes, a real edge, and the Python `hl7` package as the
//! trust's integration engine and results receiver. Every wait is bounded.

mod common;
#[path = "hl7/harness.rs"]
#[allow(dead_code)] // tests/hl7.rs uses the rest
mod harness;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::pg::{PgBroker, PgServer, leading_now};
use harness::{Edge, Receiver, fixture, msa, replace, send};
use labaid::proto;

/// Sends `message` as an integration engine does, again after each refusal, until it is
/// acknowledged AA; panics after `within`.
async fn send_until_accepted(edge: &Edge, message: &[u8], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let ack = send(edge.mllp, message.to_vec(), "utf-8").await;
        if msa(&ack).0 == "AA" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not accepted within {within:?}: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn observation(test: &str, analyte: &str, value: &str, unit: &str) -> proto::Observation {
    proto::Observation {
        test: test.into(),
        analyte: analyte.into(),
        value: value.into(),
        unit: unit.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_edge_moves_its_orders_and_results_to_the_broker_that_takes_over() {
    harness::require_python_hl7();
    let pg = PgServer::start();
    let url = pg.url();
    let mut brokers = vec![PgBroker::start(&url), PgBroker::start(&url)];
    let leader = leading_now(&mut brokers, Duration::from_secs(30)).await;
    // The standby first: an edge that kept to the first address would never be served.
    let addrs = format!(
        "http://{},http://{}",
        brokers[1 - leader].addr,
        brokers[leader].addr
    );
    let receiver = Receiver::start(0, &["AA"], &[]);
    let data = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(&addrs, data.path(), &["--results-to", &receiver.addr()]);

    let before = fixture("oml_o21_v251.hl7", 20);
    let ack = send(edge.mllp, before.clone(), "utf-8").await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");

    brokers.remove(leader).kill();
    let successor = &mut brokers[0];
    let terms = successor.terms();
    assert!(
        successor.wait_terms(terms + 1, Duration::from_secs(30)),
        "the standby did not take over: {}",
        successor.log()
    );

    // A new order after the takeover reaches the new leader through the same running edge.
    let after = replace(
        &replace(&before, b"OML-0001", b"OML-0002"),
        b"RJ1-ORD-1001",
        b"RJ1-ORD-1002",
    );
    send_until_accepted(&edge, &after, Duration::from_secs(30)).await;
    edge.wait_log("moved to the leading broker");

    // The labs work both orders on the new leader; the edge's results watch, resumed there,
    // sends both ORUs.
    let trust = successor.client("RJ1").await;
    let held = trust.list_requests(&[], &[], 100).await.expect("list");
    let orders: HashSet<&str> = held.iter().map(|r| r.order_number.as_str()).collect();
    assert_eq!(
        orders,
        HashSet::from(["RJ1-ORD-1001", "RJ1-ORD-1002"]),
        "both acknowledged orders are held, once each"
    );
    for r in &held {
        assert!(!r.lab.is_empty(), "{} was not offered", r.order_number);
        let lab = successor.client(&r.lab).await;
        common::accept_and_receive(&lab, &r.id).await;
        lab.labs()
            .post_results(proto::PostResultsRequest {
                id: r.id.clone(),
                observations: vec![
                    observation("K", "", "4.1", "mmol/L"),
                    observation("FBC", "HGB", "140", "g/L"),
                ],
            })
            .await
            .expect("post results");
    }
    let mut placers = HashSet::new();
    for _ in 0..2 {
        let oru = receiver.next().await;
        assert_eq!(oru["type"], "ORU^R01", "{oru}");
        placers.insert(
            oru["obr"][0]["placer"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(
        placers,
        HashSet::from(["RJ1-ORD-1001".to_string(), "RJ1-ORD-1002".to_string()])
    );
    assert!(edge.terminate().success(), "a graceful stop exits 0");
}
