//! Results delivery: follows the trust's events on the broker from the cursor kept in the outbox,
//! puts an ORU for each outcome in the outbox (durably, before the cursor moves past it), and
//! sends the outbox in order to the trust's MLLP endpoint, retrying with backoff until the
//! receiver answers; AA or a final AE/AR takes the message out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use super::ResultsConfig;
use super::ack::ControlIds;
use super::message::Message;
use super::mllp::{self, Frame, FrameReader, Limits};
use super::oru::{self, Outcome};
use super::outbox::{Outbox, OutboxError, Pending};
use super::profile::Profile;
use crate::domain::Timestamp;
use crate::edge::Metrics;
use crate::edge::broker::Broker;
use crate::edge::tls::Io;
use crate::proto;

/// How often a moved cursor is written when no message was put in meanwhile.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

type Shared = Arc<Mutex<Outbox>>;

fn lock(outbox: &Shared) -> std::sync::MutexGuard<'_, Outbox> {
    outbox
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the follower and the sender until `stop`; an outbox write failure ends both with it.
pub async fn run(
    outbox: Outbox,
    config: ResultsConfig,
    broker: Broker,
    profile: Arc<Profile>,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    metrics.outbox(outbox.depth(), outbox.oldest_ms());
    metrics
        .watch_sequence
        .set(i64::try_from(outbox.cursor()).unwrap_or(i64::MAX));
    let outbox: Shared = Arc::new(Mutex::new(outbox));
    let wake = Arc::new(Notify::new());
    let (failed_tx, failed) = watch::channel(false);
    // A failed outbox write stops the other half too.
    let mut stop_both = stop.clone();
    let (both_tx, both) = watch::channel(false);
    let mut failed_rx = failed.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop_both.wait_for(|s| *s) => {}
            _ = failed_rx.wait_for(|f| *f) => {}
        }
        let _ = both_tx.send(true);
    });
    let follow = tokio::spawn(follow(
        outbox.clone(),
        broker,
        profile,
        metrics.clone(),
        wake.clone(),
        both.clone(),
    ));
    let send = tokio::spawn(send(outbox, config, metrics, wake, both));
    let mut result = Ok(());
    for task in [follow, send] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = failed_tx.send(true);
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => tracing::error!(error = %e, "a results task panicked"),
        }
    }
    result
}

/// Follows the trust's events, reconnecting from the cursor after any break.
async fn follow(
    outbox: Shared,
    broker: Broker,
    profile: Arc<Profile>,
    metrics: Metrics,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    let ids = ControlIds::default();
    let mut wait = Duration::from_millis(500);
    loop {
        let after = lock(&outbox).cursor();
        let request = proto::WatchRequestEventsRequest {
            after_sequence: after,
            kinds: Outcome::watched_kinds(),
        };
        let mut client = broker.client().requests();
        let opened = tokio::select! {
            r = client.watch_request_events(request) => r,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(status) => {
                tracing::warn!(grpc.code = ?status.code(), error = %status.message(), "results: cannot watch the broker's events; trying again");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        tracing::info!(
            results.after_sequence = after,
            "results: watching the broker's events"
        );
        wait = Duration::from_millis(500);
        let mut unwritten: Option<u64> = None;
        let mut tick = tokio::time::interval(CURSOR_EVERY);
        loop {
            let step = tokio::select! {
                m = stream.message() => Step::Event(Box::new(m)),
                _ = tick.tick() => Step::Tick,
                _ = stop.wait_for(|s| *s) => Step::Stop,
            };
            let next = match step {
                Step::Event(m) => *m,
                Step::Tick | Step::Stop => {
                    if let Some(seq) = unwritten.take() {
                        let o = outbox.clone();
                        tokio::task::spawn_blocking(move || lock(&o).set_cursor(seq))
                            .await
                            .map_err(join_error)??;
                    }
                    if matches!(step, Step::Stop) {
                        return Ok(());
                    }
                    continue;
                }
            };
            let event = match next {
                Ok(Some(e)) => e,
                Ok(None) => {
                    tracing::warn!("results: the broker ended the event stream; watching again");
                    break;
                }
                Err(status) => {
                    tracing::warn!(grpc.code = ?status.code(), error = %status.message(), "results: the event stream broke; watching again");
                    break;
                }
            };
            metrics
                .watch_sequence
                .set(i64::try_from(event.sequence).unwrap_or(i64::MAX));
            let Some(outcome) = Outcome::of(&event) else {
                unwritten = Some(event.sequence);
                continue;
            };
            let now = Timestamp::now().millis();
            let control_id = ids.next(now);
            let body = oru::build(outcome, &event, &profile, &broker.names(), &control_id, now);
            let request_id = event
                .request
                .as_ref()
                .map(|r| r.id.clone())
                .unwrap_or_default();
            let sequence = event.sequence;
            let o = outbox.clone();
            let (depth, oldest) = tokio::task::spawn_blocking(move || {
                let mut o = lock(&o);
                o.put(request_id, sequence, control_id, body, now)?;
                Ok::<_, OutboxError>((o.depth(), o.oldest_ms()))
            })
            .await
            .map_err(join_error)??;
            unwritten = None;
            metrics.outbox(depth, oldest);
            tracing::info!(
                request.id = %event.request.as_ref().map_or("", |r| r.id.as_str()),
                results.sequence = sequence,
                results.outcome = ?outcome,
                outbox.depth = depth,
                "results: ORU queued"
            );
            wake.notify_one();
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// What woke the follower.
enum Step {
    Event(Box<Result<Option<proto::RequestEvent>, tonic::Status>>),
    Tick,
    Stop,
}

fn join_error(e: tokio::task::JoinError) -> OutboxError {
    OutboxError::Io {
        path: super::outbox::FILE_NAME.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// What the receiver said to one message.
enum Answer {
    /// MSA-1 and MSA-3.
    Ack(String, String),
    /// No usable answer: try again.
    Retry(&'static str, String),
}

/// Sends the outbox in order, one message at a time, on one connection kept open between them.
async fn send(
    outbox: Shared,
    config: ResultsConfig,
    metrics: Metrics,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    let mut conn: Option<Connection> = None;
    let mut wait = config.retry_initial;
    loop {
        let front = lock(&outbox).front().cloned();
        let Some(message) = front else {
            conn = None;
            tokio::select! {
                () = wake.notified() => continue,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        };
        let answer = tokio::select! {
            a = deliver(&mut conn, &config, &message) => a,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        match answer {
            Answer::Ack(code, text) => {
                let id = message.id;
                let outcome = code.clone();
                let o = outbox.clone();
                let (depth, oldest) = tokio::task::spawn_blocking(move || {
                    let mut o = lock(&o);
                    o.done(id, &outcome)?;
                    Ok::<_, OutboxError>((o.depth(), o.oldest_ms()))
                })
                .await
                .map_err(join_error)??;
                metrics.outbox(depth, oldest);
                metrics
                    .results_delivered
                    .with_label_values(&[code.as_str()])
                    .inc();
                if code == "AA" || code == "CA" {
                    tracing::info!(request.id = %message.request, hl7.control_id = %message.control_id, hl7.ack = %code, "results: delivered");
                } else {
                    // The receiver looked at it and said no: sending it again would say no again.
                    tracing::error!(request.id = %message.request, hl7.control_id = %message.control_id, hl7.ack = %code, hl7.text = %text, "results: the receiver refused a result message; it is not sent again");
                }
                wait = config.retry_initial;
            }
            Answer::Retry(reason, error) => {
                conn = None;
                metrics.results_retries.with_label_values(&[reason]).inc();
                tracing::warn!(request.id = %message.request, hl7.control_id = %message.control_id, results.reason = reason, error = %error, results.retry_in_ms = wait.as_millis() as u64, "results: delivery failed; trying again");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                wait = (wait * 2).min(config.retry_max);
            }
        }
    }
}

struct Connection {
    write: tokio::io::WriteHalf<Box<dyn Io>>,
    read: FrameReader<tokio::io::ReadHalf<Box<dyn Io>>>,
}

async fn deliver(
    conn: &mut Option<Connection>,
    config: &ResultsConfig,
    message: &Pending,
) -> Answer {
    if conn.is_none() {
        let tcp =
            match tokio::time::timeout(config.ack_timeout, TcpStream::connect(&config.to)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Answer::Retry("connect", e.to_string()),
                Err(_) => return Answer::Retry("connect", "timed out".into()),
            };
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &config.tls {
            None => Box::new(tcp),
            Some(tls) => match tokio::time::timeout(config.ack_timeout, tls.connect(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Answer::Retry("tls", e.to_string()),
                Err(_) => return Answer::Retry("tls", "timed out".into()),
            },
        };
        let (read, write) = tokio::io::split(io);
        let limits = Limits {
            max_frame: 1024 * 1024,
            frame_timeout: config.ack_timeout,
            idle_timeout: config.ack_timeout,
        };
        *conn = Some(Connection {
            write,
            read: FrameReader::new(read, limits),
        });
    }
    let Some(c) = conn.as_mut() else {
        return Answer::Retry("connect", "no connection".into());
    };
    if let Err(e) = mllp::write_frame(&mut c.write, &message.body).await {
        return Answer::Retry("send", e.to_string());
    }
    loop {
        let frame = match c.read.next().await {
            Ok(Frame::Message(b)) => b,
            Ok(Frame::TooLarge { .. }) => {
                return Answer::Retry("bad_ack", "the answer was too large".into());
            }
            Err(e) => return Answer::Retry("no_ack", e.to_string()),
        };
        let Ok(ack) = Message::parse(&frame) else {
            return Answer::Retry("bad_ack", "the answer is not an HL7 message".into());
        };
        let Some(msa) = ack.first("MSA") else {
            return Answer::Retry("bad_ack", "the answer has no MSA segment".into());
        };
        if ack.component(msa, 2, 1) != message.control_id {
            // An answer to an earlier attempt on this connection: wait for ours.
            continue;
        }
        let code = ack.component(msa, 1, 1).trim().to_ascii_uppercase();
        let text = ack.component(msa, 3, 1);
        return match code.as_str() {
            "AA" | "AE" | "AR" | "CA" | "CE" | "CR" => Answer::Ack(code, text),
            _ => Answer::Retry(
                "bad_ack",
                format!("MSA-1 {code:?} is not an acknowledgement code"),
            ),
        };
    }
}
