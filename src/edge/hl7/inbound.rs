//! The MLLP listener and what it does with each message: read it, check it, submit its orders to
//! the broker, and answer AA only once the broker holds them, AE with ERR segments for content the
//! broker cannot take, AR for a message the edge does not take or a broker it cannot reach.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tonic::Code;
use tonic_types::StatusExt as _;

use super::ack::{self, AckCode, ControlIds, Reply};
use super::message::{Location, Message, ParseError};
use super::mllp::{self, Frame, FrameReader, Limits, ReadError};
use super::orders::{self, Order, Problem, code};
use super::profile::Profile;
use crate::domain::{NewRequest, Priority, TestCode, Timestamp};
use crate::edge::Metrics;
use crate::edge::broker::Broker;
use crate::edge::tls::Io;
use crate::proto;

/// Messages remembered as accepted, by sender and MSH-10, so a resend is answered at once.
const REMEMBERED: usize = 10_000;

/// The order-handling side of the adapter, shared by every connection.
#[derive(Debug, Clone)]
pub struct Inbound {
    broker: Broker,
    profile: Arc<Profile>,
    ids: Arc<ControlIds>,
    accepted: Arc<Mutex<Remembered>>,
}

#[derive(Debug, Default)]
struct Remembered {
    set: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl Remembered {
    fn insert(&mut self, key: (String, String)) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > REMEMBERED
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// What handling a message came to, for the log and the metrics.
#[derive(Debug)]
pub struct Handled {
    /// The ACK bytes to send.
    pub ack: Vec<u8>,
    /// MSA-1.
    pub code: AckCode,
    /// MSH-9 as `OML^O21`, or `unknown`.
    pub kind: String,
    /// MSH-10, when readable.
    pub control_id: String,
    /// The broker's ids of the requests, once accepted.
    pub requests: Vec<String>,
    /// Why it was not accepted, without patient data.
    pub why: String,
}

impl Inbound {
    /// Handles orders for the trust behind `broker`.
    pub fn new(broker: Broker, profile: Arc<Profile>) -> Self {
        Self {
            broker,
            profile,
            ids: Arc::new(ControlIds::default()),
            accepted: Arc::new(Mutex::new(Remembered::default())),
        }
    }

    fn now(&self) -> (Timestamp, String) {
        let now = Timestamp::now();
        (
            now,
            super::oru::hl7_time(now.millis(), &self.profile.timezone),
        )
    }

    fn reply(
        &self,
        to: Option<&Message>,
        code: AckCode,
        text: &str,
        problems: Vec<Problem>,
    ) -> Handled {
        let (now, stamp) = self.now();
        let why = problems
            .iter()
            .map(|p| p.text.clone())
            .collect::<Vec<_>>()
            .join("; ");
        let reply = Reply {
            to,
            code,
            text: text.to_string(),
            problems,
        };
        Handled {
            ack: ack::build(&reply, &stamp, &self.ids.next(now.millis())),
            code,
            kind: to.map_or_else(
                || "unknown".into(),
                |m| {
                    format!(
                        "{}^{}",
                        m.component(m.msh(), 9, 1),
                        m.component(m.msh(), 9, 2)
                    )
                },
            ),
            control_id: to.map(|m| m.header(10)).unwrap_or_default(),
            requests: Vec::new(),
            why: if why.is_empty() {
                text.to_string()
            } else {
                why
            },
        }
    }

    /// Answers one frame.
    pub async fn handle(&self, frame: Frame) -> Handled {
        let msg = match read_frame(frame, &self.profile) {
            Ok(m) => m,
            Err(r) => return self.reply(r.to.as_ref(), r.code, r.text, r.problems),
        };
        let key = (
            format!("{}^{}", msg.header(3), msg.header(4)),
            msg.header(10),
        );
        if self.lock().set.contains(&key) {
            let mut h = self.reply(
                Some(&msg),
                AckCode::Accept,
                "accepted before; nothing new created",
                vec![],
            );
            h.why = "a resend of an accepted message".into();
            return h;
        }
        let orders = match orders::read_orders(&msg, &self.profile) {
            Ok(o) => o,
            Err(problems) => {
                return self.reply(Some(&msg), AckCode::Error, "content error", problems);
            }
        };
        let problems = self.validate(&orders).await;
        if !problems.is_empty() {
            return self.reply(Some(&msg), AckCode::Error, "content error", problems);
        }
        let mut ids = Vec::new();
        let mut replayed = 0;
        for order in &orders {
            match self.submit(order).await {
                Ok((id, again)) => {
                    ids.push(id);
                    replayed += usize::from(again);
                }
                Err((ack_code, problems)) => {
                    let text = if ack_code == AckCode::Reject {
                        "not processed: send again"
                    } else {
                        "content error"
                    };
                    let mut h = self.reply(Some(&msg), ack_code, text, problems);
                    h.requests = ids;
                    return h;
                }
            }
        }
        self.lock().insert(key);
        let text = if replayed == ids.len() {
            "accepted before; nothing new created".to_string()
        } else {
            format!("accepted: {} request(s)", ids.len())
        };
        let mut h = self.reply(Some(&msg), AckCode::Accept, &text, vec![]);
        h.requests = ids;
        h
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks every order before any is submitted, with the rules the broker applies, so that a
    /// message with one bad order creates nothing.
    async fn validate(&self, orders: &[Order]) -> Vec<Problem> {
        let mut catalogue = self.broker.catalogue().await;
        let unknown = |c: &crate::domain::Catalogue, t: &str| {
            TestCode::parse(t).map_or(true, |code| c.get(&code).is_none())
        };
        if orders
            .iter()
            .flat_map(|o| &o.submission.tests)
            .any(|t| unknown(&catalogue, t))
        {
            catalogue = self.broker.catalogue_fresh().await;
        }
        let now = Timestamp::now();
        let mut problems = Vec::new();
        for order in orders {
            let mut sub = order.submission.clone();
            for (i, t) in sub.tests.iter().enumerate() {
                if unknown(&catalogue, t) {
                    problems.push(Problem {
                        location: Some(order.from.tests[i].clone()),
                        code: code::TABLE_VALUE,
                        text: format!("test code {t:?} is not in the catalogue nor in the config file's [codes]"),
                    });
                }
            }
            // Two OBRs for one test in an order ask for it once.
            let mut seen = HashSet::new();
            sub.tests.retain(|t| seen.insert(t.clone()));
            if let Err(v) = NewRequest::validate(&sub, &catalogue, now) {
                for f in v.0 {
                    if f.field.starts_with("tests")
                        && problems.iter().any(|p| p.code == code::TABLE_VALUE)
                    {
                        continue;
                    }
                    problems.push(violation(order, &f.field, &f.description));
                }
            }
        }
        problems
    }

    /// Submits one order: its request id and whether the broker had it already, or the ACK code
    /// and problems.
    async fn submit(&self, order: &Order) -> Result<(String, bool), (AckCode, Vec<Problem>)> {
        let s = &order.submission;
        let request = proto::SubmitRequestRequest {
            order_number: s.order_number.clone(),
            patient: Some(proto::Patient {
                nhs_number: s.nhs_number.chars().filter(|c| *c != ' ').collect(),
                family_name: s.family_name.clone(),
                given_name: s.given_name.clone(),
                birth_date: s.birth_date.clone(),
            }),
            tests: {
                let mut seen = HashSet::new();
                s.tests
                    .iter()
                    .filter(|t| seen.insert(*t))
                    .cloned()
                    .collect()
            },
            priority: crate::wire::priority_to(s.priority.unwrap_or(Priority::Routine)) as i32,
            collected_at: s.collected_at.map(crate::wire::ts),
            clinical_note: s.clinical_note.clone(),
        };
        match self.broker.client().requests().submit_request(request).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok((r.request.map(|r| r.id).unwrap_or_default(), r.replayed))
            }
            Err(status) => Err(match status.code() {
                Code::InvalidArgument => {
                    let violations = status
                        .get_details_bad_request()
                        .map(|b| b.field_violations)
                        .unwrap_or_default();
                    let mut problems: Vec<Problem> = violations
                        .iter()
                        .map(|v| violation(order, &v.field, &v.description))
                        .collect();
                    if problems.is_empty() {
                        problems.push(Problem {
                            location: Some(order.from.order_number.clone()),
                            code: code::DATA_TYPE,
                            text: format!("the broker refused the order: {}", status.message()),
                        });
                    }
                    (AckCode::Error, problems)
                }
                Code::AlreadyExists => (AckCode::Error, vec![Problem {
                    location: Some(order.from.order_number.clone()),
                    code: code::DUPLICATE_KEY,
                    text: "this placer order number was sent before with different content; send a new number".into(),
                }]),
                Code::PermissionDenied | Code::Unauthenticated => {
                    tracing::error!(grpc.code = ?status.code(), "the broker refused the edge's credential");
                    (AckCode::Reject, vec![Problem {
                        location: None,
                        code: code::INTERNAL,
                        text: "the edge's credential was refused by the broker; call the labaid coordinator".into(),
                    }])
                }
                other => {
                    tracing::warn!(grpc.code = ?other, error = %status.message(), "the broker did not take an order");
                    (AckCode::Reject, vec![Problem {
                        location: None,
                        code: code::INTERNAL,
                        text: "the broker could not be reached or is busy; send the message again".into(),
                    }])
                }
            }),
        }
    }
}

/// A broker field violation as an HL7 problem at the field it came from.
fn violation(order: &Order, field: &str, description: &str) -> Problem {
    let location = order.from.locate(field);
    let label = format!("{}-{}", location.segment, location.field);
    Problem {
        location: Some(location),
        code: if field.starts_with("tests") {
            code::TABLE_VALUE
        } else {
            code::DATA_TYPE
        },
        text: format!("{label} ({field}) {description}"),
    }
}

/// A frame answered before anything reaches the broker: what its ACK says.
#[derive(Debug)]
pub struct Refusal {
    /// The message answered, when its MSH could be read.
    pub to: Option<Message>,
    /// MSA-1.
    pub code: AckCode,
    /// MSA-3.
    pub text: &'static str,
    /// One ERR segment each.
    pub problems: Vec<Problem>,
}

/// Reads a frame into a message whose header `profile` takes: the steps before the broker.
pub fn read_frame(frame: Frame, profile: &Profile) -> Result<Message, Refusal> {
    let bytes = match frame {
        Frame::Message(b) => b,
        Frame::TooLarge { head, total } => {
            let text = format!(
                "the message is {total} bytes; the most taken is {}",
                head.len()
            );
            return Err(Refusal {
                to: header_only(&head),
                code: AckCode::Reject,
                text: "message too large",
                problems: vec![Problem {
                    location: None,
                    code: code::INTERNAL,
                    text,
                }],
            });
        }
    };
    let msg = match Message::parse(&bytes) {
        Ok(m) => m,
        Err(e) => {
            let (ack_code, err_code) = match e {
                ParseError::Undecodable(_) => (AckCode::Error, code::DATA_TYPE),
                ParseError::UnsupportedCharset(_) => (AckCode::Reject, code::TABLE_VALUE),
                ParseError::NoMsh | ParseError::BadSeparators => {
                    (AckCode::Reject, code::SEGMENT_SEQUENCE)
                }
            };
            let location = matches!(
                e,
                ParseError::Undecodable(_) | ParseError::UnsupportedCharset(_)
            )
            .then_some(Location {
                segment: "MSH",
                sequence: 1,
                field: 18,
            });
            return Err(Refusal {
                to: header_only(&bytes),
                code: ack_code,
                text: "message not readable",
                problems: vec![Problem {
                    location,
                    code: err_code,
                    text: e.to_string(),
                }],
            });
        }
    };
    if let Err(p) = orders::check_header(&msg, profile) {
        return Err(Refusal {
            to: Some(msg),
            code: AckCode::Reject,
            text: "message not taken",
            problems: vec![p],
        });
    }
    Ok(msg)
}

/// The MSH line alone, read as ASCII whatever it declares, to answer a message that cannot be
/// read as a whole.
fn header_only(bytes: &[u8]) -> Option<Message> {
    let end = bytes
        .iter()
        .position(|b| matches!(b, b'\r' | b'\n'))
        .unwrap_or(bytes.len());
    let line: Vec<u8> = bytes[..end]
        .iter()
        .map(|b| if b.is_ascii() { *b } else { b'?' })
        .collect();
    // Drop MSH-18 so the line parses whatever character set it named.
    let text = String::from_utf8_lossy(&line).into_owned();
    let field = text.chars().nth(3)?;
    let kept: Vec<&str> = text.split(field).take(17).collect();
    Message::parse(kept.join(&field.to_string()).as_bytes()).ok()
}

/// Accepts connections until `stop`, serving each on its own task, at most `max` at once; on
/// stop, waits for the messages in hand to be answered.
pub async fn listen(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    max: usize,
    inbound: Inbound,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max));
    let mut tasks = JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "MLLP accept failed");
                    continue;
                }
            },
            _ = stopping.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(mllp.peer = %peer, "MLLP: too many connections; closing the new one");
            metrics
                .mllp_dropped
                .with_label_values(&["too_many_connections"])
                .inc();
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (inbound, metrics, stop, tls) =
            (inbound.clone(), metrics.clone(), stop.clone(), tls.clone());
        tasks.spawn(async move {
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some(acceptor) => match tokio::time::timeout(limits.frame_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::warn!(mllp.peer = %peer, error = %e, "MLLP: TLS handshake failed");
                        metrics.mllp_dropped.with_label_values(&["tls_handshake"]).inc();
                        return;
                    }
                    Err(_) => {
                        metrics.mllp_dropped.with_label_values(&["tls_handshake"]).inc();
                        return;
                    }
                },
            };
            metrics.mllp_connections.inc();
            serve_connection(io, peer, limits, &inbound, &metrics, stop).await;
            metrics.mllp_connections.dec();
            drop(slot);
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Reads frames and answers each in turn until the peer leaves, misbehaves or the edge stops.
async fn serve_connection(
    io: Box<dyn Io>,
    peer: std::net::SocketAddr,
    limits: Limits,
    inbound: &Inbound,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let (read, mut write) = tokio::io::split(io);
    let mut reader = FrameReader::new(read, limits);
    loop {
        let frame = tokio::select! {
            f = reader.next() => f,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stray = reader.take_stray();
        if stray > 0 {
            tracing::warn!(mllp.peer = %peer, mllp.stray_bytes = stray, "MLLP: bytes outside a frame were dropped");
            metrics
                .mllp_dropped
                .with_label_values(&["stray_bytes"])
                .inc();
        }
        let frame = match frame {
            Ok(f) => f,
            Err(ReadError::Closed) => return,
            Err(e) => {
                let reason = match e {
                    ReadError::HalfFrame(_) => "half_frame",
                    ReadError::Slow(_) => "slow_sender",
                    ReadError::Idle(_) => "idle",
                    _ => "io",
                };
                tracing::warn!(mllp.peer = %peer, mllp.reason = reason, error = %e, "MLLP: closing the connection");
                metrics.mllp_dropped.with_label_values(&[reason]).inc();
                return;
            }
        };
        if matches!(frame, Frame::TooLarge { .. }) {
            metrics.mllp_dropped.with_label_values(&["too_large"]).inc();
        }
        // Once begun, a message is answered even if a stop comes meanwhile.
        let handled = inbound.handle(frame).await;
        metrics
            .hl7_messages
            .with_label_values(&[handled.kind.as_str(), handled.code.as_str()])
            .inc();
        if handled.code == AckCode::Accept {
            tracing::info!(
                mllp.peer = %peer,
                hl7.type = %handled.kind,
                hl7.control_id = %handled.control_id,
                hl7.ack = handled.code.as_str(),
                request.ids = %handled.requests.join(","),
                "order accepted"
            );
        } else {
            tracing::warn!(
                mllp.peer = %peer,
                hl7.type = %handled.kind,
                hl7.control_id = %handled.control_id,
                hl7.ack = handled.code.as_str(),
                hl7.why = %handled.why,
                "order not accepted"
            );
        }
        if let Err(e) = mllp::write_frame(&mut write, &handled.ack).await {
            tracing::warn!(mllp.peer = %peer, error = %e, "MLLP: cannot send the ACK");
            return;
        }
    }
}
