//! Orders in: what an OML^O21 or ORM^O01 asks for, read into submissions for the broker, and the
//! HL7 error (code, segment and field, text) for everything that cannot be read.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

use super::message::{Location, Message, Segment};
use super::profile::Profile;
use crate::domain::{MAX_NOTE_CHARS, RawSubmission, Timestamp};

/// HL7 table 0357 error codes used by the edge.
pub mod code {
    /// Segment sequence error.
    pub const SEGMENT_SEQUENCE: u16 = 100;
    /// Required field missing.
    pub const REQUIRED_MISSING: u16 = 101;
    /// Data type error.
    pub const DATA_TYPE: u16 = 102;
    /// Table value not found.
    pub const TABLE_VALUE: u16 = 103;
    /// Unsupported message type.
    pub const UNSUPPORTED_TYPE: u16 = 200;
    /// Unsupported event code.
    pub const UNSUPPORTED_EVENT: u16 = 201;
    /// Unsupported processing id.
    pub const UNSUPPORTED_PROCESSING_ID: u16 = 202;
    /// Unsupported version id.
    pub const UNSUPPORTED_VERSION: u16 = 203;
    /// Duplicate key identifier.
    pub const DUPLICATE_KEY: u16 = 205;
    /// Application internal error.
    pub const INTERNAL: u16 = 207;
}

/// The versions read: 2.3 to 2.5.1.
pub const VERSIONS: [&str; 5] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"];

/// One problem found in a message, as an ERR segment reports it. The text never holds patient
/// data, so it may be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, when known.
    pub location: Option<Location>,
    /// HL7 table 0357 code.
    pub code: u16,
    /// For people.
    pub text: String,
}

impl Problem {
    fn at(
        segment: &'static str,
        sequence: usize,
        field: usize,
        code: u16,
        text: impl Into<String>,
    ) -> Self {
        Self {
            location: Some(Location {
                segment,
                sequence,
                field,
            }),
            code,
            text: text.into(),
        }
    }
}

/// Checks MSH-9, MSH-11 and MSH-12: a message the edge does not take is rejected (AR).
pub fn check_header(msg: &Message, profile: &Profile) -> Result<(), Problem> {
    let msh = msg.msh();
    if msg.header(10).is_empty() {
        return Err(Problem::at(
            "MSH",
            1,
            10,
            code::REQUIRED_MISSING,
            "MSH-10 message control ID is required",
        ));
    }
    let kind = msg.component(msh, 9, 1).to_ascii_uppercase();
    let event = msg.component(msh, 9, 2).to_ascii_uppercase();
    match (kind.as_str(), event.as_str()) {
        ("OML", "O21") | ("ORM", "O01") => {}
        ("OML" | "ORM", _) => {
            return Err(Problem::at(
                "MSH",
                1,
                9,
                code::UNSUPPORTED_EVENT,
                format!("event {event:?} is not supported: send OML^O21 or ORM^O01"),
            ));
        }
        _ => {
            return Err(Problem::at(
                "MSH",
                1,
                9,
                code::UNSUPPORTED_TYPE,
                format!("message type {kind:?} is not supported: send OML^O21 or ORM^O01"),
            ));
        }
    }
    let version = msg.header(12);
    if !VERSIONS.contains(&version.as_str()) {
        return Err(Problem::at(
            "MSH",
            1,
            12,
            code::UNSUPPORTED_VERSION,
            format!("version {version:?} is not supported: send 2.3 to 2.5.1"),
        ));
    }
    let processing = msg.header(11).to_ascii_uppercase();
    if !profile.processing_ids.contains(&processing) {
        return Err(Problem::at(
            "MSH",
            1,
            11,
            code::UNSUPPORTED_PROCESSING_ID,
            format!(
                "processing ID {processing:?} is not accepted here (accepted: {})",
                profile.processing_ids.join(", ")
            ),
        ));
    }
    Ok(())
}

/// One order of a message: the submission and where each of its fields came from.
#[derive(Debug, Clone)]
pub struct Order {
    /// What to submit.
    pub submission: RawSubmission,
    /// Where each submission field came from.
    pub from: Sources,
}

/// Where each submission field of an order came from, to place the broker's field violations.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The ORC (or OBR) holding the placer order number.
    pub order_number: Location,
    /// The OBR-4 of each requested test, in the order of `submission.tests`.
    pub tests: Vec<Location>,
    /// The field the priority came from.
    pub priority: Location,
    /// OBR-7 or SPM-17.
    pub collected_at: Location,
    /// OBR-13 or the first NTE.
    pub clinical_note: Location,
}

impl Sources {
    /// The HL7 location of a broker field path such as `tests` or `patient.nhs_number`.
    pub fn locate(&self, field: &str) -> Location {
        let pid = |f| Location {
            segment: "PID",
            sequence: 1,
            field: f,
        };
        match field {
            "order_number" => self.order_number.clone(),
            "patient.nhs_number" => pid(3),
            "patient.family_name" | "patient.given_name" => pid(5),
            "patient.birth_date" => pid(7),
            "priority" => self.priority.clone(),
            "collected_at" => self.collected_at.clone(),
            "clinical_note" => self.clinical_note.clone(),
            f if f.starts_with("tests") => {
                let index = f
                    .trim_start_matches("tests")
                    .trim_matches(['[', ']'])
                    .parse::<usize>()
                    .ok();
                index
                    .and_then(|i| self.tests.get(i))
                    .or(self.tests.first())
                    .cloned()
                    .unwrap_or_else(|| self.order_number.clone())
            }
            _ => self.order_number.clone(),
        }
    }
}

/// An order as it is gathered from its ORC, OBR, TQ1, SPM and NTE segments.
#[derive(Debug)]
struct Group {
    placer: String,
    placer_at: Location,
    tests: Vec<(String, Location)>,
    priority: Option<(String, Location)>,
    collected: Option<(String, Location)>,
    notes: Vec<String>,
    note_at: Option<Location>,
    obrs: usize,
}

/// Reads the orders of a message whose header passed [`check_header`]. Every problem is
/// reported, so that the sender hears of all its mistakes at once.
pub fn read_orders(msg: &Message, profile: &Profile) -> Result<Vec<Order>, Vec<Problem>> {
    let mut problems = Vec::new();
    let Some(pid) = msg.first("PID") else {
        return Err(vec![Problem::at(
            "PID",
            1,
            0,
            code::SEGMENT_SEQUENCE,
            "the message has no PID segment",
        )]);
    };
    let nhs = nhs_number(msg, pid).unwrap_or_else(|p| {
        problems.push(p);
        String::new()
    });
    let family_name = msg.value(pid, 5, 1, 1, 1);
    let given_name = msg.component(pid, 5, 2);
    let birth_date = match birth_date(&msg.component(pid, 7, 1)) {
        Ok(d) => d,
        Err(text) => {
            problems.push(Problem::at("PID", 1, 7, code::DATA_TYPE, text));
            String::new()
        }
    };

    let groups = gather(msg, &mut problems);
    if groups.is_empty() && problems.is_empty() {
        problems.push(Problem::at(
            "OBR",
            1,
            0,
            code::SEGMENT_SEQUENCE,
            "the message orders nothing: it has no OBR segment",
        ));
    }
    let mut orders = Vec::new();
    for g in groups {
        let tests: Vec<String> = g.tests.iter().map(|(c, _)| profile.test_code(c)).collect();
        let default_at = g.placer_at.clone();
        let (priority, priority_at) = match &g.priority {
            Some((code_text, at)) if !code_text.is_empty() => match profile.priority(code_text) {
                Some(p) => (Some(p), at.clone()),
                None => {
                    problems.push(Problem {
                        location: Some(at.clone()),
                        code: code::TABLE_VALUE,
                        text: format!("priority {code_text:?} is not in the code map (S, A, U, T or R, or the config file's [priorities])"),
                    });
                    (None, at.clone())
                }
            },
            _ => (Some(profile.default_priority), default_at.clone()),
        };
        let (collected_at, collected_from) = match &g.collected {
            Some((raw, at)) => match parse_time(raw, &profile.timezone) {
                Ok(t) => (Some(t), at.clone()),
                Err(text) => {
                    problems.push(Problem {
                        location: Some(at.clone()),
                        code: code::DATA_TYPE,
                        text,
                    });
                    (None, at.clone())
                }
            },
            None => {
                let at = g
                    .tests
                    .first()
                    .map(|(_, l)| Location {
                        field: 7,
                        ..l.clone()
                    })
                    .unwrap_or(default_at.clone());
                problems.push(Problem {
                    location: Some(at.clone()),
                    code: code::REQUIRED_MISSING,
                    text: "the collection time is required, in OBR-7 or SPM-17".into(),
                });
                (None, at)
            }
        };
        let note = clip(&g.notes.join("\n"), MAX_NOTE_CHARS);
        orders.push(Order {
            submission: RawSubmission {
                order_number: g.placer.clone(),
                nhs_number: nhs.clone(),
                family_name: family_name.clone(),
                given_name: given_name.clone(),
                birth_date: birth_date.clone(),
                tests,
                priority,
                collected_at,
                clinical_note: note,
            },
            from: Sources {
                order_number: g.placer_at.clone(),
                tests: g.tests.iter().map(|(_, l)| l.clone()).collect(),
                priority: priority_at,
                collected_at: collected_from,
                clinical_note: g.note_at.clone().unwrap_or(default_at),
            },
        });
    }
    if problems.is_empty() {
        Ok(orders)
    } else {
        Err(problems)
    }
}

/// The NHS number: the PID-3 repetition whose identifier type (CX-5) is `NH`.
fn nhs_number(msg: &Message, pid: &Segment) -> Result<String, Problem> {
    msg.repetitions(pid, 3)
        .into_iter()
        .map(|rep| msg.split_components(rep))
        .find(|c| {
            c.get(4)
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("NH"))
        })
        .map(|c| c[0].trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Problem::at(
                "PID",
                1,
                3,
                code::REQUIRED_MISSING,
                "PID-3 has no NHS number (an identifier with type code NH)",
            )
        })
}

/// PID-7 (`YYYYMMDD`, perhaps followed by a time) as `YYYY-MM-DD`; empty stays empty.
fn birth_date(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(String::new());
    }
    let date = raw
        .get(..8)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
    match date {
        Some(d) => Ok(format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])),
        None => Err("PID-7 date of birth must start YYYYMMDD".into()),
    }
}

/// Groups the order segments by placer order number: ORC starts an order, OBR adds a test, and
/// TQ1, SPM and NTE add to the order they follow. Other segments (PV1, IN1, DG1, Z-segments…)
/// are not needed and are ignored.
fn gather(msg: &Message, problems: &mut Vec<Problem>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut current: Option<usize> = None;
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for seg in &msg.segments {
        let name: &'static str = match seg.name.as_str() {
            "ORC" => "ORC",
            "OBR" => "OBR",
            "TQ1" => "TQ1",
            "SPM" => "SPM",
            "NTE" => "NTE",
            _ => continue,
        };
        let n = counts.entry(name).or_default();
        *n += 1;
        let at = |field| Location {
            segment: name,
            sequence: *n,
            field,
        };
        match name {
            "ORC" => {
                let control = msg.component(seg, 1, 1).to_ascii_uppercase();
                if !control.is_empty() && control != "NW" {
                    problems.push(Problem::at(
                        "ORC",
                        *n,
                        1,
                        code::TABLE_VALUE,
                        format!("order control {control:?} is not supported: send new orders (NW)"),
                    ));
                }
                let placer = msg.component(seg, 2, 1).trim().to_string();
                current = Some(group_for(&mut groups, placer, at(2)));
                let priority = msg.value(seg, 7, 1, 6, 1);
                if !priority.trim().is_empty() {
                    groups[current.unwrap_or(0)]
                        .priority
                        .get_or_insert((priority.trim().into(), at(7)));
                }
            }
            "OBR" => {
                let placer = msg.component(seg, 2, 1).trim().to_string();
                let index = match current {
                    Some(i)
                        if placer.is_empty()
                            || groups[i].placer == placer
                            || groups[i].placer.is_empty() =>
                    {
                        if groups[i].placer.is_empty() && !placer.is_empty() {
                            groups[i].placer = placer;
                            groups[i].placer_at = at(2);
                        }
                        i
                    }
                    _ => group_for(&mut groups, placer, at(2)),
                };
                current = Some(index);
                let g = &mut groups[index];
                g.obrs += 1;
                let mut code_text = msg.component(seg, 4, 1).trim().to_string();
                if code_text.is_empty() {
                    code_text = msg.component(seg, 4, 4).trim().to_string();
                }
                if code_text.is_empty() {
                    problems.push(Problem::at(
                        "OBR",
                        *n,
                        4,
                        code::REQUIRED_MISSING,
                        "OBR-4 universal service identifier (the test code) is required",
                    ));
                } else {
                    g.tests.push((code_text, at(4)));
                }
                let collected = msg.component(seg, 7, 1);
                if !collected.trim().is_empty() {
                    g.collected.get_or_insert((collected.trim().into(), at(7)));
                }
                for (field, comp) in [(27, 6), (5, 1)] {
                    let p = msg.value(seg, field, 1, comp, 1);
                    if !p.trim().is_empty() {
                        g.priority.get_or_insert((p.trim().into(), at(field)));
                    }
                }
                let info = msg.value(seg, 13, 1, 1, 1);
                if !info.trim().is_empty() {
                    g.notes.push(info.trim().into());
                    g.note_at.get_or_insert(at(13));
                }
            }
            "TQ1" | "SPM" | "NTE" => {
                let Some(i) = current else { continue };
                let g = &mut groups[i];
                match name {
                    // TQ1-9 is the v2.5 place for priority, before ORC-7's older one.
                    "TQ1" => {
                        let p = msg.component(seg, 9, 1);
                        if !p.trim().is_empty() {
                            g.priority = Some((p.trim().into(), at(9)));
                        }
                    }
                    "SPM" => {
                        let t = msg.component(seg, 17, 1);
                        if !t.trim().is_empty() {
                            g.collected.get_or_insert((t.trim().into(), at(17)));
                        }
                    }
                    _ => {
                        let text: Vec<String> = msg
                            .repetitions(seg, 3)
                            .iter()
                            .map(|r| msg.delims.unescape(r))
                            .collect();
                        let text = text.join("\n");
                        if !text.trim().is_empty() {
                            g.notes.push(text.trim().into());
                            g.note_at.get_or_insert(at(3));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for g in &groups {
        if g.placer.is_empty() {
            problems.push(Problem {
                location: Some(g.placer_at.clone()),
                code: code::REQUIRED_MISSING,
                text: "the placer order number is required, in ORC-2 or OBR-2".into(),
            });
        }
        if g.obrs == 0 {
            problems.push(Problem {
                location: Some(g.placer_at.clone()),
                code: code::SEGMENT_SEQUENCE,
                text: "the order has no OBR segment naming a test".into(),
            });
        }
    }
    groups
}

/// The group with this placer number, or a new one; an empty number always starts a new group.
fn group_for(groups: &mut Vec<Group>, placer: String, at: Location) -> usize {
    if !placer.is_empty()
        && let Some(i) = groups.iter().position(|g| g.placer == placer)
    {
        return i;
    }
    groups.push(Group {
        placer,
        placer_at: at,
        tests: Vec::new(),
        priority: None,
        collected: None,
        notes: Vec::new(),
        note_at: None,
        obrs: 0,
    });
    groups.len() - 1
}

/// At most `max` characters: a long clinical note is cut rather than the order refused.
fn clip(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut cut: String = clean.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// Reads an HL7 timestamp, `YYYYMMDDHHMM[SS[.S…]][+/-ZZZZ]`, in `tz` when it has no offset.
pub fn parse_time(raw: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    let err = || "the time must be YYYYMMDDHHMM[SS][+/-ZZZZ] and a real time".to_string();
    let raw = raw.trim();
    let (body, offset) = match raw
        .char_indices()
        .skip(8)
        .find(|(_, c)| *c == '+' || *c == '-')
    {
        Some((i, _)) => (&raw[..i], Some(&raw[i..])),
        None => (raw, None),
    };
    let body = body.split('.').next().unwrap_or("");
    if !(body.len() == 12 || body.len() == 14) || !body.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| body[r].parse::<i16>().map_err(|_| err());
    let seconds = if body.len() == 14 { num(12..14)? } else { 0 };
    let dt = DateTime::new(
        num(0..4)?,
        i8::try_from(num(4..6)?).map_err(|_| err())?,
        i8::try_from(num(6..8)?).map_err(|_| err())?,
        i8::try_from(num(8..10)?).map_err(|_| err())?,
        i8::try_from(num(10..12)?).map_err(|_| err())?,
        i8::try_from(seconds).map_err(|_| err())?,
        0,
    )
    .map_err(|_| err())?;
    let instant = match offset {
        Some(o) => {
            let digits = &o[1..];
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            let h: i32 = digits[..2].parse().map_err(|_| err())?;
            let m: i32 = digits[2..].parse().map_err(|_| err())?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let offset = Offset::from_seconds(sign * (h * 3600 + m * 60)).map_err(|_| err())?;
            offset.to_timestamp(dt).map_err(|_| err())?
        }
        None => tz
            .to_ambiguous_timestamp(dt)
            .compatible()
            .map_err(|_| err())?,
    };
    Ok(Timestamp::from_millis(instant.as_millisecond()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Priority;

    fn profile() -> Profile {
        Profile::parse("[codes]\n\"K+\" = \"K\"\nFBCX = \"FBC\"\n").unwrap()
    }

    fn parse(text: &str) -> Message {
        Message::parse(text.replace('\n', "\r").as_bytes()).unwrap()
    }

    const OML: &str = "MSH|^~\\&|EPR|RJ1|LABAID|LABAID|20240603101500||OML^O21^OML_O21|M1|P|2.5.1
PID|1||123^^^RJ1^MR~9434765919^^^NHS^NH||Smith^Jo^^^Dr||19700101
PV1|1|I
ORC|NW|ORD1||||||||||||||||||
TQ1|1||||||||S
OBR|1|ORD1||K+^Potassium^L|||20240603094500+0100||||||chest pain
NTE|1||on \\T\\ off warfarin
ZXY|ignored|data
OBR|2|ORD1||FBCX^FBC^L
SPM|1|||BLD||||||||||||20240603094500+0100
ORC|NW|ORD2
OBR|1|ORD2||CRP^CRP^L|R||202406030930
";

    #[test]
    fn an_oml_yields_one_order_per_placer_number_with_mapped_codes() {
        let m = parse(OML);
        check_header(&m, &profile()).unwrap();
        let orders = read_orders(&m, &profile()).unwrap();
        assert_eq!(orders.len(), 2);
        let o = &orders[0].submission;
        assert_eq!(o.order_number, "ORD1");
        assert_eq!(o.nhs_number, "9434765919");
        assert_eq!(
            (o.family_name.as_str(), o.given_name.as_str()),
            ("Smith", "Jo")
        );
        assert_eq!(o.birth_date, "1970-01-01");
        assert_eq!(o.tests, ["K", "FBC"]);
        assert_eq!(o.priority, Some(Priority::Stat));
        // 09:45 at +01:00 is 08:45 UTC.
        assert_eq!(
            o.collected_at,
            Some(Timestamp::from_millis(1_717_404_300_000))
        );
        assert_eq!(o.clinical_note, "chest pain\non & off warfarin");
        assert_eq!(orders[0].from.locate("tests[1]").sequence, 2);
        let o = &orders[1].submission;
        assert_eq!(
            (o.order_number.as_str(), o.priority),
            ("ORD2", Some(Priority::Routine))
        );
        // No offset: read in Europe/London, on summer time in June.
        assert_eq!(
            o.collected_at,
            Some(Timestamp::from_millis(1_717_403_400_000))
        );
    }

    #[test]
    fn an_orm_v2_3_reads_priority_from_orc_7() {
        let m = parse(
            "MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|M2|P|2.3
PID|1||9434765919^^^NHS^NH||Doe^Ann||19800229
ORC|NW|P77|||||^^^^^A
OBR|1|P77||UE|||202401151230",
        );
        check_header(&m, &profile()).unwrap();
        let orders = read_orders(&m, &profile()).unwrap();
        assert_eq!(orders[0].submission.priority, Some(Priority::Asap));
        assert_eq!(orders[0].submission.birth_date, "1980-02-29");
        // January: Greenwich time.
        assert_eq!(
            orders[0].submission.collected_at,
            Some(Timestamp::from_millis(1_705_321_800_000))
        );
    }

    #[test]
    fn header_problems_name_the_field_and_code() {
        let p = profile();
        let m = parse("MSH|^~\\&|EPR|RJ1|||20240603||ADT^A01|M3|P|2.5.1\r");
        assert_eq!(
            check_header(&m, &p).unwrap_err().code,
            code::UNSUPPORTED_TYPE
        );
        let m = parse("MSH|^~\\&|EPR|RJ1|||20240603||ORM^O02|M3|P|2.5.1\r");
        assert_eq!(
            check_header(&m, &p).unwrap_err().code,
            code::UNSUPPORTED_EVENT
        );
        let m = parse("MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|M3|P|2.6\r");
        let e = check_header(&m, &p).unwrap_err();
        assert_eq!(
            (e.code, e.location.unwrap().field),
            (code::UNSUPPORTED_VERSION, 12)
        );
        let m = parse("MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|M3|T|2.4\r");
        assert_eq!(
            check_header(&m, &p).unwrap_err().code,
            code::UNSUPPORTED_PROCESSING_ID
        );
        let m = parse("MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01||P|2.4\r");
        assert_eq!(
            check_header(&m, &p).unwrap_err().code,
            code::REQUIRED_MISSING
        );
    }

    #[test]
    fn content_problems_are_all_reported_with_their_place() {
        let m = parse(
            "MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|M4|P|2.3
PID|1||9434765919^^^RJ1^MR||Doe||1980XX01
ORC|NW|P1
OBR|1|P1||K|R",
        );
        let problems = read_orders(&m, &profile()).unwrap_err();
        let summary: Vec<(u16, &str, usize)> = problems
            .iter()
            .map(|p| {
                let l = p.location.as_ref().unwrap();
                (p.code, l.segment, l.field)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (code::REQUIRED_MISSING, "PID", 3),
                (code::DATA_TYPE, "PID", 7),
                (code::REQUIRED_MISSING, "OBR", 7),
            ]
        );
        let m = parse(
            "MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|M5|P|2.3\rPID|1||9434765919^^^NHS^NH\rORC|NW|P1\rOBR|1|P1||K|Q|202406031000",
        );
        let problems = read_orders(&m, &profile()).unwrap_err();
        assert_eq!(
            (
                problems[0].code,
                problems[0].location.as_ref().unwrap().field
            ),
            (code::TABLE_VALUE, 5)
        );
        let m = parse("MSH|^~\\&|EPR|RJ1|||20240603||ORM^O01|M6|P|2.3\rORC|NW|P1\r");
        assert_eq!(
            read_orders(&m, &profile()).unwrap_err()[0].code,
            code::SEGMENT_SEQUENCE
        );
    }

    #[test]
    fn timestamps_honour_offsets_and_reject_nonsense() {
        let utc = TimeZone::UTC;
        assert_eq!(
            parse_time("202406031000", &utc).unwrap().millis(),
            1_717_408_800_000
        );
        assert_eq!(
            parse_time("20240603100000.123-0200", &utc)
                .unwrap()
                .millis(),
            1_717_416_000_000
        );
        for bad in [
            "2024060310",
            "202413031000",
            "20240603250000",
            "20240603100000+01",
            "soon",
        ] {
            assert!(parse_time(bad, &utc).is_err(), "{bad}");
        }
    }
}
