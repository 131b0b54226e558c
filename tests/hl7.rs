//! labaid-edge's HL7 v2 adapter against a real broker, as a real process, driven by an independent
//! HL7 stack (the Python `hl7` package: its MLLP client sends our fixtures, its parser reads our
//! ACKs, its MLLP server receives our ORUs). These tests fail, never skip, without it.

mod common;
#[path = "hl7/harness.rs"]
mod harness;

use std::time::Duration;

use common::TestBroker;
use harness::{Edge, Receiver, errs, fixture, frame, msa, raw_exchange, send};
use labaid::proto;

/// The trust's requests as the broker holds them.
async fn requests(broker: &TestBroker) -> Vec<proto::Request> {
    broker
        .client("RJ1")
        .await
        .list_requests(&[], &[], 100)
        .await
        .expect("list")
}

/// The one request with this order number.
async fn request(broker: &TestBroker, order: &str) -> proto::Request {
    let all = requests(broker).await;
    let mut found = all.into_iter().filter(|r| r.order_number == order);
    let r = found.next().unwrap_or_else(|| panic!("no request {order}"));
    assert!(found.next().is_none(), "two requests {order}");
    r
}

/// The lab holding `r` accepts it, receives the sample and posts `results`.
async fn work(broker: &TestBroker, r: &proto::Request, results: Vec<proto::Observation>) -> String {
    assert!(
        !r.lab.is_empty(),
        "request {} was not offered to a lab",
        r.order_number
    );
    let lab = broker.client(&r.lab).await;
    common::accept_and_receive(&lab, &r.id).await;
    lab.labs()
        .post_results(proto::PostResultsRequest {
            id: r.id.clone(),
            observations: results,
        })
        .await
        .expect("post results");
    r.lab.clone()
}

fn observation(
    test: &str,
    analyte: &str,
    value: &str,
    unit: &str,
    range: &str,
) -> proto::Observation {
    proto::Observation {
        test: test.into(),
        analyte: analyte.into(),
        value: value.into(),
        unit: unit.into(),
        reference_range: range.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oml_order_is_acknowledged_once_the_broker_holds_it_and_its_results_come_back_as_an_oru()
{
    harness::require_python_hl7();
    let broker = TestBroker::spawn().await;
    let receiver = Receiver::start(0, &["AA"], &[]);
    let data = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(
        &broker.url(),
        data.path(),
        &["--results-to", &receiver.addr()],
    );

    let message = fixture("oml_o21_v251.hl7", 20);
    let ack = send(edge.mllp, message.clone(), "utf-8").await;
    assert_eq!(msa(&ack), ("AA".into(), "OML-0001".into()), "{ack}");
    assert_eq!(ack["type"], "ACK^O21");
    assert_eq!(ack["charset"], "UNICODE UTF-8");

    // The AA came after the broker held it: the request is there, read from the HL7 fields.
    let r = request(&broker, "RJ1-ORD-1001").await;
    assert_eq!(r.tests, ["FBC", "K"], "local codes KPOT and FBCX mapped");
    assert_eq!(r.priority, proto::Priority::Stat as i32, "TQ1-9 S");
    let p = r.patient.clone().unwrap();
    assert_eq!(
        (
            p.nhs_number.as_str(),
            p.family_name.as_str(),
            p.given_name.as_str(),
            p.birth_date.as_str()
        ),
        ("9434765919", "Ó Briain", "Seán", "1970-01-01")
    );
    assert_eq!(
        r.clinical_note, "Chest pain & palpitations\nOn digoxin\nrecheck in 4 h",
        "OBR-13 and NTE, escapes decoded"
    );

    // Sent again, as an engine does after an ACK timeout: AA again, nothing new.
    let again = send(edge.mllp, message.clone(), "utf-8").await;
    assert_eq!(msa(&again).0, "AA");
    // The same order under a new MSH-10 (the engine rebuilt it): the broker's replay, still AA.
    let rebuilt = harness::replace(&message, b"OML-0001", b"OML-0001-R");
    let replayed = send(edge.mllp, rebuilt, "utf-8").await;
    assert_eq!(msa(&replayed), ("AA".into(), "OML-0001-R".into()));
    assert_eq!(requests(&broker).await.len(), 1, "a resend creates nothing");

    // The lab works the job; the trust's receiver gets an ORU^R01 with values and flags.
    let lab = work(
        &broker,
        &r,
        vec![
            observation("K", "", "6.9", "mmol/L", "3.5-5.3"),
            observation("FBC", "HGB", "98", "g/L", "130-170"),
        ],
    )
    .await;
    let oru = receiver.next().await;
    assert_eq!(oru["type"], "ORU^R01", "{oru}");
    assert_eq!(oru["pid3"], "9434765919");
    assert_eq!(oru["pid3_type"], "NH");
    assert_eq!(oru["orc_status"], "CM");
    let obr = oru["obr"].as_array().unwrap();
    assert_eq!(obr.len(), 2);
    for o in obr {
        assert_eq!(o["placer"], "RJ1-ORD-1001");
        assert_eq!(o["filler"], r.id.as_str());
        assert_eq!(o["status"], "F");
    }
    assert_eq!(obr[1]["test"], "K");
    assert_eq!(obr[1]["local"], "KPOT", "the trust's own code beside ours");
    let obx = oru["obx"].as_array().unwrap();
    let k = obx.iter().find(|o| o["code"] == "K").expect("K OBX");
    assert_eq!(
        (
            k["value"].as_str(),
            k["units"].as_str(),
            k["range"].as_str()
        ),
        (Some("6.9"), Some("mmol/L"), Some("3.5-5.3"))
    );
    assert_eq!(k["flag"], "HH", "critical high from the catalogue's limit");
    assert_eq!(k["type"], "NM");
    assert_eq!(k["producer"], lab.as_str(), "the performing lab's ODS code");
    let hgb = obx.iter().find(|o| o["code"] == "HGB").expect("HGB OBX");
    assert_eq!(hgb["value"], "98");

    // Delivered on AA: the outbox is empty again and says so.
    edge.wait_log("results: delivered");
    assert_eq!(
        edge.metric("labaid_edge_results_outbox_depth", "").await,
        0.0
    );
    assert_eq!(
        edge.metric("labaid_edge_results_delivered_total", "ack=\"AA\"")
            .await,
        1.0
    );
    assert_eq!(
        edge.metric("labaid_edge_hl7_messages_total", "ack=\"AA\"")
            .await,
        3.0
    );

    // Patient data never reaches the log.
    let log = edge.log();
    for secret in ["9434765919", "Briain", "Seán", "19700101", "1970-01-01"] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
    assert!(edge.terminate().success(), "a graceful stop exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orm_v2_3_and_a_latin_1_order_are_read_with_their_own_separators_and_character_set() {
    harness::require_python_hl7();
    let broker = TestBroker::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let edge = Edge::start(&broker.url(), data.path(), &[]);

    let ack = send(edge.mllp, fixture("orm_o01_v23.hl7", 30), "utf-8").await;
    assert_eq!(msa(&ack), ("AA".into(), "ORM-0002".into()), "{ack}");
    assert_eq!(ack["version"], "2.3");
    let r = request(&broker, "RJ1-ORD-2002").await;
    assert_eq!(r.tests, ["CRP", "UE"]);
    assert_eq!(
        r.priority,
        proto::Priority::Asap as i32,
        "ORC-7 component 6: A"
    );
    assert_eq!(r.clinical_note, "Renal follow-up: K | Na trend");
    assert_eq!(r.patient.unwrap().birth_date, "1980-02-29");

    let ack = send(edge.mllp, fixture("orm_o01_latin1.hl7", 10), "latin-1").await;
    assert_eq!(msa(&ack), ("AA".into(), "ORM-0003".into()), "{ack}");
    assert_eq!(
        ack["charset"], "8859/1",
        "the ACK comes back in the sender's character set"
    );
    let r = request(&broker, "RJ1-ORD-3003").await;
    let p = r.patient.unwrap();
    assert_eq!(
        (p.family_name.as_str(), p.given_name.as_str()),
        ("Müller", "Renée")
    );
    assert_eq!(r.priority, proto::Priority::Routine as i32, "OBR-5 R");

    // Other separators, declared in MSH-1 and MSH-2.
    let odd = "MSH#:*@%#EPR#RJ1#LABAID##{NOW}##ORM:O01#ODD-1#P#2.5\n\
               PID#1##77:::RJ1:MR*9434765919:::NHS:NH##Doe:Jo\n\
               ORC#NW#RJ1-ORD-4004\n\
               OBR#1#RJ1-ORD-4004##TROP:Troponin:L#S##{COLLECTED}";
    let odd = harness::replace(
        &harness::replace(odd.as_bytes(), b"{NOW}", harness::hl7_time(0).as_bytes()),
        b"{COLLECTED}",
        harness::hl7_time(-5).as_bytes(),
    );
    let ack = send(edge.mllp, odd, "utf-8").await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    assert_eq!(
        request(&broker, "RJ1-ORD-4004").await.priority,
        proto::Priority::Stat as i32
    );
}

/// Sends a fixture changed by `edit` (from, to) and returns the parsed ACK.
async fn send_edited(edge: &Edge, name: &str, edits: &[(&str, &str)]) -> serde_json::Value {
    let mut m = fixture(name, 20);
    for (from, to) in edits {
        m = harness::replace(&m, from.as_bytes(), to.as_bytes());
    }
    send(edge.mllp, m, "utf-8").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_errors_get_ae_and_unsupported_messages_get_ar_each_with_err_segments_and_nothing_is_created()
 {
    harness::require_python_hl7();
    let broker = TestBroker::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let edge = Edge::start(&broker.url(), data.path(), &[]);
    let oml = "oml_o21_v251.hl7";

    // A wrong check digit: AE, ERR at PID-3 with a data type error (v2.5 ERR-2/ERR-3).
    let ack = send_edited(&edge, oml, &[("9434765919", "9434765918")]).await;
    assert_eq!(msa(&ack), ("AE".into(), "OML-0001".into()), "{ack}");
    assert_eq!(errs(&ack), [("PID".into(), "3".into(), "102".into())]);
    assert!(
        ack["err"][0]["text"]
            .as_str()
            .unwrap()
            .contains("check digit"),
        "{ack}"
    );
    assert_eq!(ack["err"][0]["severity"], "E");

    // No NHS number at all (only a hospital number): required field missing.
    let ack = send_edited(&edge, oml, &[("~9434765919^^^NHS^NH", "")]).await;
    assert_eq!(
        errs(&ack),
        [("PID".into(), "3".into(), "101".into())],
        "{ack}"
    );

    // A test code neither in the catalogue nor in the code map: table value not found, at the
    // second OBR's OBR-4.
    let ack = send_edited(&edge, oml, &[("FBCX^Full", "ZZTOP^Full")]).await;
    assert_eq!(msa(&ack).0, "AE");
    assert_eq!(
        errs(&ack),
        [("OBR".into(), "4".into(), "103".into())],
        "{ack}"
    );

    // A priority the code map does not know.
    let ack = send_edited(&edge, oml, &[("S^Stat^HL70485", "Q")]).await;
    assert_eq!(
        errs(&ack),
        [("TQ1".into(), "9".into(), "103".into())],
        "{ack}"
    );

    // No collection time anywhere; and one in the future.
    let ack = send(
        edge.mllp,
        harness::fixture_collected("orm_o01_v23.hl7", ""),
        "utf-8",
    )
    .await;
    assert_eq!(msa(&ack).0, "AE", "{ack}");
    assert_eq!(
        errs(&ack)[0],
        ("OBR".into(), "7".into(), "101".into()),
        "{ack}"
    );
    let mut m = fixture("orm_o01_v23.hl7", -60);
    m = harness::replace(&m, b"ORM-0002", b"ORM-FUTURE");
    let ack = send(edge.mllp, m, "utf-8").await;
    assert_eq!(msa(&ack).0, "AE", "{ack}");
    assert_eq!(
        errs(&ack)[0].0,
        "OBR",
        "v2.3 ERR-1 names the segment: {ack}"
    );
    assert_eq!(errs(&ack)[0].1, "7");
    assert!(
        ack["err"][0]["text"].as_str().unwrap().contains("future"),
        "{ack}"
    );

    assert!(
        requests(&broker).await.is_empty(),
        "no content error creates anything"
    );

    // The same placer order number with different content: duplicate key.
    assert_eq!(msa(&send_edited(&edge, oml, &[]).await).0, "AA");
    let ack = send_edited(
        &edge,
        oml,
        &[("OML-0001", "OML-0002"), ("FBCX^Full", "CRP^Full")],
    )
    .await;
    assert_eq!(msa(&ack).0, "AE", "{ack}");
    assert_eq!(errs(&ack), [("ORC".into(), "2".into(), "205".into())]);

    // Unsupported message type, event, version and processing ID: AR with the right code.
    for (from, to, code, field) in [
        ("OML^O21^OML_O21", "ADT^A01^ADT_A01", "200", "9"),
        ("OML^O21^OML_O21", "OML^O33^OML_O33", "201", "9"),
        ("|2.5.1|", "|2.6|", "203", "12"),
        ("|P|2.5.1|", "|T|2.5.1|", "202", "11"),
    ] {
        let ack = send_edited(&edge, oml, &[("OML-0001", "OML-AR"), (from, to)]).await;
        assert_eq!(
            msa(&ack),
            ("AR".into(), "OML-AR".into()),
            "{from} -> {to}: {ack}"
        );
        assert_eq!(
            errs(&ack),
            [("MSH".into(), field.into(), code.into())],
            "{ack}"
        );
    }
    assert_eq!(
        requests(&broker).await.len(),
        1,
        "only the one good order exists"
    );
    assert!(
        !edge.log().contains("9434765918"),
        "no NHS number in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_get_an_answer_or_a_closed_connection_and_the_listener_keeps_serving() {
    harness::require_python_hl7();
    use tokio::io::AsyncWriteExt;
    let broker = TestBroker::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(&broker.url(), data.path(), &["--frame-timeout", "1"]);
    let good = || frame(&fixture("orm_o01_v23.hl7", 20));

    // No MSH: AR, with MSA-2 empty as there is nothing to echo.
    let ack = harness::parse(
        &raw_exchange(edge.mllp, &frame(b"PID|1||9434765919^^^NHS^NH\nOBR|1|X||K")).await,
        "utf-8",
    );
    assert_eq!(msa(&ack), ("AR".into(), String::new()), "{ack}");
    assert_eq!(errs(&ack)[0].2, "100");

    // Bytes outside any frame are dropped; the frame after them is answered.
    let mut noisy = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    noisy.extend(good());
    let ack = harness::parse(&raw_exchange(edge.mllp, &noisy).await, "utf-8");
    assert_eq!(msa(&ack).0, "AA", "{ack}");

    // Several MB in one message: read through, answered AR, and the connection still serves.
    let mut big = fixture("orm_o01_v23.hl7", 20);
    big = harness::replace(&big, b"ORM-0002", b"ORM-BIG");
    big.extend(b"\nNTE|2||");
    big.extend(std::iter::repeat_n(b'x', 3 * 1024 * 1024));
    let mut s = tokio::net::TcpStream::connect(edge.mllp).await.unwrap();
    s.write_all(&frame(&big)).await.unwrap();
    let ack = harness::parse(&harness::read_frame(&mut s).await, "utf-8");
    assert_eq!(msa(&ack), ("AR".into(), "ORM-BIG".into()), "{ack}");
    assert_eq!(errs(&ack)[0].2, "207");
    s.write_all(&good()).await.unwrap();
    assert_eq!(
        msa(&harness::parse(&harness::read_frame(&mut s).await, "utf-8")).0,
        "AA"
    );
    drop(s);

    // A character set the edge cannot read, and bytes that are not the declared one.
    let jis = harness::replace(
        &fixture("oml_o21_v251.hl7", 20),
        b"UNICODE UTF-8",
        b"ISO IR87",
    );
    let ack = harness::parse(&raw_exchange(edge.mllp, &frame(&jis)).await, "utf-8");
    assert_eq!(msa(&ack), ("AR".into(), "OML-0001".into()), "{ack}");
    assert_eq!(errs(&ack), [("MSH".into(), "18".into(), "103".into())]);
    let broken = harness::replace(
        &fixture("oml_o21_v251.hl7", 20),
        "Seán".as_bytes(),
        b"Se\xe1n",
    );
    let ack = harness::parse(&raw_exchange(edge.mllp, &frame(&broken)).await, "utf-8");
    assert_eq!(msa(&ack).0, "AE", "{ack}");
    assert_eq!(errs(&ack)[0].1, "18");

    // A half-sent frame, then the sender goes away: the connection is closed and logged.
    let mut s = tokio::net::TcpStream::connect(edge.mllp).await.unwrap();
    s.write_all(b"\x0bMSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|HALF|P|2.3\rPID|1||9434")
        .await
        .unwrap();
    drop(s);
    edge.wait_log("half_frame");

    // A slow sender: cut off after --frame-timeout with nothing answered.
    let mut s = tokio::net::TcpStream::connect(edge.mllp).await.unwrap();
    s.write_all(b"\x0bMSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|SLOW|P|2.3\r")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = harness::read_frame(&mut s).await;
    assert!(
        answer.is_empty(),
        "a slow frame gets no answer, only a close"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    edge.wait_log("slow_sender");

    // Still serving, and every refusal is counted.
    let ack = send(edge.mllp, fixture("orm_o01_v23.hl7", 20), "utf-8").await;
    assert_eq!(msa(&ack).0, "AA");
    for reason in ["stray_bytes", "too_large", "half_frame", "slow_sender"] {
        let n = edge
            .metric(
                "labaid_edge_mllp_dropped_total",
                &format!("reason=\"{reason}\""),
            )
            .await;
        assert_eq!(n, 1.0, "{reason}");
    }
    let log = edge.log();
    for secret in ["9434765919", "9434", "Seán", "Smith"] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
    assert_eq!(requests(&broker).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_waiting_in_the_outbox_survive_a_kill_9_of_the_edge_and_are_delivered_after_it_restarts()
 {
    harness::require_python_hl7();
    let broker = TestBroker::spawn().await;
    let data = tempfile::tempdir().unwrap();
    // Nothing listens at the results address yet: deliveries fail and wait in the outbox.
    let port = harness::free_port();
    let to = format!("127.0.0.1:{port}");
    let fast = [
        "--results-to",
        &to,
        "--results-retry-initial-ms",
        "100",
        "--results-retry-max-ms",
        "300",
    ];
    let mut edge = Edge::start(&broker.url(), data.path(), &fast);
    assert_eq!(
        msa(&send(edge.mllp, fixture("orm_o01_v23.hl7", 20), "utf-8").await).0,
        "AA"
    );
    let r = request(&broker, "RJ1-ORD-2002").await;
    work(
        &broker,
        &r,
        vec![
            observation("UE", "NA", "139", "mmol/L", "133-146"),
            observation("CRP", "", "4", "mg/L", "0-5"),
        ],
    )
    .await;
    edge.wait_log("results: ORU queued");
    edge.wait_log_count("results: delivery failed", 2);
    assert_eq!(
        edge.metric("labaid_edge_results_outbox_depth", "").await,
        1.0
    );
    assert!(
        edge.metric("labaid_edge_results_retries_total", "reason=\"connect\"")
            .await
            >= 2.0
    );
    edge.kill9();

    // The trust's endpoint comes up, and the edge restarts on the same data directory.
    let receiver = Receiver::start(port, &["AA"], &[]);
    let mut edge = Edge::start(&broker.url(), data.path(), &fast);
    let oru = receiver.next().await;
    assert_eq!(oru["obr"][0]["placer"], "RJ1-ORD-2002", "{oru}");
    let values: Vec<&str> = oru["obx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["4", "139"]);
    edge.wait_log("results: delivered");
    assert_eq!(
        edge.metric("labaid_edge_results_outbox_depth", "").await,
        0.0
    );
    assert_eq!(
        edge.metric("labaid_edge_results_outbox_oldest_age_seconds", "")
            .await,
        0.0
    );

    // The cursor moved past the event: a second restart sends nothing again.
    drop(edge);
    let mut edge = Edge::start(&broker.url(), data.path(), &fast);
    let watching: serde_json::Value =
        serde_json::from_str(&edge.wait_log("results: watching the broker's events")).unwrap();
    assert!(
        watching["results.after_sequence"].as_u64().unwrap() > 0,
        "the cursor was kept: {watching}"
    );
    assert!(
        receiver.pending().is_empty(),
        "delivered once, not again after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_expiry_and_cancellation_reach_the_trust_and_a_refused_result_is_counted_not_retried()
 {
    harness::require_python_hl7();
    let broker = TestBroker::spawn().await;
    // The receiver refuses the first result (AE) and accepts the rest.
    let receiver = Receiver::start(0, &["AE", "AA"], &[]);
    let data = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(
        &broker.url(),
        data.path(),
        &["--results-to", &receiver.addr()],
    );
    let order = |placer: &str, collected_ago: i64| {
        let m = fixture("orm_o01_latin1.hl7", collected_ago);
        let m = harness::replace(&m, b"RJ1-ORD-3003", placer.as_bytes());
        harness::replace(&m, b"ORM-0003", format!("MSG-{placer}").as_bytes())
    };

    // Failed: the lab finds the sample haemolysed.
    assert_eq!(
        msa(&send(edge.mllp, order("FAIL-1", 10), "latin-1").await).0,
        "AA"
    );
    let failed = request(&broker, "FAIL-1").await;
    let lab = broker.client(&failed.lab).await;
    common::accept_and_receive(&lab, &failed.id).await;
    lab.labs()
        .fail_job(proto::FailJobRequest {
            id: failed.id.clone(),
            reason: proto::FailureReason::Haemolysed as i32,
            detail: String::new(),
        })
        .await
        .expect("fail");
    let first = receiver.next().await;
    assert_eq!(first["answered"], "AE");
    assert_eq!(first["obr"][0]["status"], "X");
    assert!(
        first["nte"][0].as_str().unwrap().contains("haemolysed"),
        "{first}"
    );

    // Cancelled by the trust.
    assert_eq!(
        msa(&send(edge.mllp, order("CANCEL-1", 10), "latin-1").await).0,
        "AA"
    );
    let cancel = request(&broker, "CANCEL-1").await;
    broker
        .client("RJ1")
        .await
        .requests()
        .cancel_request(proto::CancelRequestRequest {
            id: cancel.id.clone(),
            reason: "patient discharged".into(),
        })
        .await
        .expect("cancel");
    let cancelled = receiver.next().await;
    assert_eq!(
        cancelled["obr"][0]["placer"], "CANCEL-1",
        "the refused result was not sent again: {cancelled}"
    );
    assert_eq!(cancelled["orc_status"], "CA");
    assert_eq!(cancelled["obr"][0]["status"], "X");
    assert!(cancelled["nte"][0].as_str().unwrap().contains("cancelled"));

    // Expired: glucose keeps 4 h; collected 3 h 50 ago no lab can finish in time.
    assert_eq!(
        msa(&send(edge.mllp, order("LATE-1", 230), "latin-1").await).0,
        "AA"
    );
    let expired = receiver.next().await;
    assert_eq!(expired["obr"][0]["placer"], "LATE-1", "{expired}");
    assert_eq!(expired["obr"][0]["status"], "X");
    assert!(
        expired["nte"][0].as_str().unwrap().contains("new sample"),
        "{expired}"
    );
    assert!(expired["obx"].as_array().unwrap().is_empty());

    edge.wait_log_count("results: delivered", 2);
    assert_eq!(
        edge.metric("labaid_edge_results_delivered_total", "ack=\"AE\"")
            .await,
        1.0
    );
    assert_eq!(
        edge.metric("labaid_edge_results_delivered_total", "ack=\"AA\"")
            .await,
        2.0
    );
    assert_eq!(
        edge.metric("labaid_edge_results_outbox_depth", "").await,
        0.0
    );
    assert!(edge.log().contains("the receiver refused a result message"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_runs_over_mutual_tls_for_orders_and_tls_for_results() {
    harness::require_python_hl7();
    let broker = TestBroker::spawn().await;
    let certs = tempfile::tempdir().unwrap();
    let pki = labaid::auth::devpki::generate(
        certs.path(),
        [labaid::domain::OdsCode::parse("RJ1").unwrap()],
    )
    .expect("dev PKI");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, server_cert, server_key) =
        (path(&pki.ca), path(&pki.server_cert), path(&pki.server_key));
    let (client_cert, client_key) = pki.client("RJ1");
    let (client_cert, client_key) = (path(&client_cert), path(&client_key));

    let receiver = Receiver::start(
        0,
        &["AA"],
        &["--tls-cert", &server_cert, "--tls-key", &server_key],
    );
    let data = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(
        &broker.url(),
        data.path(),
        &[
            "--mllp-tls-cert",
            &server_cert,
            "--mllp-tls-key",
            &server_key,
            "--mllp-tls-client-ca",
            &ca,
            "--results-to",
            &receiver.addr(),
            "--results-tls-ca",
            &ca,
        ],
    );

    // Orders over TLS, the sender showing the trust's certificate.
    let tls = [
        "--tls-ca",
        &ca,
        "--tls-cert",
        &client_cert,
        "--tls-key",
        &client_key,
    ];
    let ack = harness::send_with(edge.mllp, fixture("orm_o01_v23.hl7", 20), "utf-8", &tls).await;
    assert_eq!(msa(&ack).0, "AA", "{ack}");

    // Plain MLLP to the TLS listener is not a handshake: closed, unanswered, counted.
    let answer = raw_exchange(edge.mllp, &frame(&fixture("orm_o01_v23.hl7", 20))).await;
    assert!(
        !answer.starts_with(&[0x0b]),
        "plain MLLP got an HL7 answer from the TLS listener"
    );
    edge.wait_log("TLS handshake failed");
    // And TLS without a client certificate is refused too.
    let refused = harness::send_refused(
        edge.mllp,
        fixture("orm_o01_v23.hl7", 20),
        &["--tls-ca", &ca],
    )
    .await;
    assert!(
        refused,
        "a sender without a client certificate got an answer"
    );

    // Results over TLS to the trust's endpoint.
    let r = request(&broker, "RJ1-ORD-2002").await;
    work(
        &broker,
        &r,
        vec![
            observation("UE", "K", "4.1", "mmol/L", "3.5-5.3"),
            observation("CRP", "", "12", "mg/L", "0-5"),
        ],
    )
    .await;
    let oru = receiver.next().await;
    assert_eq!(oru["obr"][0]["placer"], "RJ1-ORD-2002", "{oru}");
    edge.wait_log("results: delivered");
    assert_eq!(
        edge.metric("labaid_edge_mllp_dropped_total", "reason=\"tls_handshake\"")
            .await,
        2.0
    );
}
