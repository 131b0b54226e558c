//! Acknowledgements: ACK messages with MSA (AA, AE, AR) echoing MSH-10, and ERR segments in the
//! form of the sender's version (ERR-1 up to 2.4; ERR-2, -3, -4 and -8 from 2.5).

use std::sync::atomic::{AtomicU64, Ordering};

use super::message::{Charset, Delimiters, Message, Writer};
use super::orders::Problem;

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept: the broker holds the request durably.
    Accept,
    /// Application error: the content is wrong; sending it again will not help.
    Error,
    /// Application reject: the message type, version or processing ID is not taken, or the
    /// broker could not be reached (sending it again later may help).
    Reject,
}

impl AckCode {
    /// The MSA-1 code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }
}

/// Message control IDs for what the edge sends: 20 characters (MSH-10's length in v2.5),
/// the time in milliseconds and a counter, so that they are unique and sort by time.
#[derive(Debug, Default)]
pub struct ControlIds(AtomicU64);

impl ControlIds {
    /// A new id at `now_ms`.
    pub fn next(&self, now_ms: i64) -> String {
        let n = self.0.fetch_add(1, Ordering::Relaxed) % 10_000_000;
        format!("{:013}{n:07}", now_ms.rem_euclid(10_000_000_000_000))
    }
}

/// What an ACK answers: the incoming message's header, or nothing usable.
#[derive(Debug)]
pub struct Reply<'a> {
    /// The incoming message, when its MSH could be read.
    pub to: Option<&'a Message>,
    /// MSA-1.
    pub code: AckCode,
    /// MSA-3: a short text.
    pub text: String,
    /// One ERR segment each.
    pub problems: Vec<Problem>,
}

/// Builds the ACK bytes, in the sender's separators and character set. `now` is MSH-7
/// (`YYYYMMDDHHMMSS+ZZZZ`), `control_id` MSH-10.
pub fn build(reply: &Reply<'_>, now: &str, control_id: &str) -> Vec<u8> {
    let (delims, charset) = reply
        .to
        .map_or((Delimiters::default(), Charset::Unlabelled), |m| {
            (m.delims, m.charset)
        });
    let mut w = Writer::new(delims);
    let raw = |n: usize| {
        reply
            .to
            .map_or(String::new(), |m| m.msh().raw(n).to_string())
    };
    let event = reply
        .to
        .map(|m| m.component(m.msh(), 9, 2))
        .unwrap_or_default();
    let version = reply
        .to
        .map(|m| m.header(12))
        .filter(|v| super::orders::VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "2.5.1".into());
    let processing = reply
        .to
        .map(|m| m.header(11))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "P".into());
    let mut msh = vec![
        delims.encoding_characters(),
        raw(5),
        raw(6),
        raw(3),
        raw(4),
        now.to_string(),
        String::new(),
        w.join(&["ACK", &event, "ACK"]),
        w.text(control_id),
        w.text(&processing),
        w.text(&version),
    ];
    if charset != Charset::Unlabelled {
        msh.resize(16, String::new());
        msh.push(charset.label_in(&delims).into());
    }
    w.segment("MSH", &msh);
    let their_id = reply.to.map(|m| m.header(10)).unwrap_or_default();
    w.segment(
        "MSA",
        &[
            reply.code.as_str().into(),
            w.text(&their_id),
            w.text(&clip(&reply.text, 80)),
        ],
    );
    let modern = matches!(version.as_str(), "2.5" | "2.5.1");
    for p in &reply.problems {
        let (seg, seq, field) =
            p.location
                .as_ref()
                .map_or((String::new(), String::new(), String::new()), |l| {
                    (
                        l.segment.to_string(),
                        l.sequence.to_string(),
                        l.field.to_string(),
                    )
                });
        let code = p.code.to_string();
        if modern {
            let location = w.join(&[&seg, &seq, &field]);
            let error = w.join(&[&code, &clip(&p.text, 199), "HL70357"]);
            let severity = if reply.code == AckCode::Accept {
                "W"
            } else {
                "E"
            };
            let text = w.text(&p.text);
            w.segment(
                "ERR",
                &[
                    String::new(),
                    location,
                    error,
                    severity.into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    text,
                ],
            );
        } else {
            // ELD: segment^sequence^field^code&text&table, the text escaped for a subcomponent.
            let d = w.delims();
            let sub = d.subcomponent.to_string();
            let coded = [code.as_str(), &clip(&p.text, 199), "HL70357"]
                .iter()
                .map(|s| d.escape(s))
                .collect::<Vec<_>>()
                .join(&sub);
            let comp = d.component.to_string();
            let eld = [d.escape(&seg), d.escape(&seq), d.escape(&field), coded].join(&comp);
            w.segment("ERR", &[eld]);
        }
    }
    charset.encode(&w.finish())
}

fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::hl7::message::{Charset, Location};
    use crate::edge::hl7::orders::code;

    fn problem() -> Problem {
        Problem {
            location: Some(Location {
                segment: "PID",
                sequence: 1,
                field: 3,
            }),
            code: code::DATA_TYPE,
            text: "NHS number: is not a valid NHS number (check digit)".into(),
        }
    }

    #[test]
    fn an_acks_character_set_reads_back_whatever_the_separators() {
        // With `/` as the escape character, `8859/1` was escaped to `8859/E/1`, which no reader
        // takes as a character set (found by the hl7_parse fuzz target); with `-` as the
        // repetition separator, `UNICODE UTF-8` would read back as `UNICODE UTF`.
        for (msh2, label, charset) in [
            ("^~/&", "8859/1", Charset::Latin1),
            ("^~\\&", "8859/1", Charset::Latin1),
            ("^-\\&", "UTF8", Charset::Utf8),
            ("^~\\&", "UNICODE UTF-8", Charset::Utf8),
            ("^~\\&", "ASCII", Charset::Ascii),
        ] {
            let header = format!("MSH|{msh2}|EPR|RJ1|||||ORM^O01|ID1|P|2.5.1|||||GBR|{label}\r");
            let m = Message::parse(header.as_bytes()).expect("the message reads");
            assert_eq!(m.charset, charset);
            let reply = Reply {
                to: Some(&m),
                code: AckCode::Accept,
                text: "accepted".into(),
                problems: vec![],
            };
            let ack = build(&reply, "20240603101500+0100", "1");
            let read = Message::parse(&ack).unwrap_or_else(|e| panic!("{msh2} {label}: {e}"));
            assert_eq!(read.charset, charset, "{msh2} {label}");
        }
    }

    #[test]
    fn an_ack_swaps_the_parties_and_echoes_msh_10() {
        let m = Message::parse(
            b"MSH|^~\\&|EPR|RJ1|LABAID|HUB|20240603||OML^O21^OML_O21|ABC123|P|2.5.1|||||GBR|UNICODE UTF-8\r",
        )
        .unwrap();
        let ack = build(
            &Reply {
                to: Some(&m),
                code: AckCode::Error,
                text: "content error".into(),
                problems: vec![problem()],
            },
            "20240603101500+0100",
            "00000000000010000001",
        );
        let text = String::from_utf8(ack).unwrap();
        let lines: Vec<&str> = text.split('\r').collect();
        assert_eq!(
            lines[0],
            "MSH|^~\\&|LABAID|HUB|EPR|RJ1|20240603101500+0100||ACK^O21^ACK|00000000000010000001|P|2.5.1||||||UNICODE UTF-8"
        );
        assert_eq!(lines[1], "MSA|AE|ABC123|content error");
        assert_eq!(
            lines[2],
            "ERR||PID^1^3|102^NHS number: is not a valid NHS number (check digit)^HL70357|E||||NHS number: is not a valid NHS number (check digit)"
        );
    }

    #[test]
    fn versions_before_2_5_get_err_1_and_unreadable_messages_get_a_bare_ar() {
        let m = Message::parse(b"MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|X9|P|2.3\r").unwrap();
        let ack = build(
            &Reply {
                to: Some(&m),
                code: AckCode::Error,
                text: "content error".into(),
                problems: vec![problem()],
            },
            "20240603",
            "1",
        );
        let text = String::from_utf8(ack).unwrap();
        assert!(
            text.contains(
                "\rERR|PID^1^3^102&NHS number: is not a valid NHS number (check digit)&HL70357\r"
            ),
            "{text}"
        );

        let ack = build(
            &Reply {
                to: None,
                code: AckCode::Reject,
                text: "no MSH".into(),
                problems: vec![],
            },
            "20240603",
            "2",
        );
        let text = String::from_utf8(ack).unwrap();
        assert!(
            text.starts_with("MSH|^~\\&|||||20240603||ACK^^ACK|2|P|2.5.1\rMSA|AR||no MSH\r"),
            "{text}"
        );
    }

    #[test]
    fn control_ids_are_twenty_characters_and_unique() {
        let ids = ControlIds::default();
        let a = ids.next(1_717_404_300_000);
        let b = ids.next(1_717_404_300_000);
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
