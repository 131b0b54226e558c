//! Results out: the ORU^R01 (v2.5.1, UTF-8) that tells the trust's system what became of an
//! order: its results with units, ranges and flags, or that it failed, expired or was cancelled
//! and what to do next.

use std::collections::HashMap;

use jiff::tz::TimeZone;

use super::message::{Charset, Delimiters, Writer};
use super::profile::Profile;
use crate::proto;

/// What a trust event means for the trust's system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Results were posted.
    Resulted,
    /// The lab could not use the sample.
    Failed,
    /// No lab could finish before the sample deadline.
    Expired,
    /// The trust cancelled the order.
    Cancelled,
}

impl Outcome {
    /// The outcome an event reports, if it is one the trust's system is sent.
    pub fn of(event: &proto::RequestEvent) -> Option<Self> {
        let state = event.request.as_ref().map(|r| r.state);
        match proto::RequestEventKind::try_from(event.kind) {
            Ok(proto::RequestEventKind::Resulted) => Some(Self::Resulted),
            Ok(proto::RequestEventKind::Failed) => Some(Self::Failed),
            Ok(proto::RequestEventKind::Expired) => Some(Self::Expired),
            Ok(proto::RequestEventKind::StateChanged)
                if state == Some(proto::RequestState::Cancelled as i32) =>
            {
                Some(Self::Cancelled)
            }
            _ => None,
        }
    }

    /// The event kinds to watch for these outcomes.
    pub fn watched_kinds() -> Vec<i32> {
        [
            proto::RequestEventKind::Resulted,
            proto::RequestEventKind::Failed,
            proto::RequestEventKind::Expired,
            proto::RequestEventKind::StateChanged,
        ]
        .map(|k| k as i32)
        .to_vec()
    }

    /// OBR-25 result status (HL7 table 0123) and ORC-5 order status (table 0038).
    fn statuses(self) -> (&'static str, &'static str) {
        match self {
            Self::Resulted => ("F", "CM"),
            Self::Failed | Self::Expired => ("X", "DC"),
            Self::Cancelled => ("X", "CA"),
        }
    }
}

/// `YYYYMMDDHHMMSS+ZZZZ` in `tz`.
pub fn hl7_time(ms: i64, tz: &TimeZone) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y%m%d%H%M%S%z")
                .to_string()
        })
        .unwrap_or_default()
}

fn millis(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// HL7 table 0078 abnormal flags.
fn flag(f: i32) -> &'static str {
    match proto::ObservationFlag::try_from(f) {
        Ok(proto::ObservationFlag::Normal) => "N",
        Ok(proto::ObservationFlag::Low) => "L",
        Ok(proto::ObservationFlag::High) => "H",
        Ok(proto::ObservationFlag::Abnormal) => "A",
        Ok(proto::ObservationFlag::CriticalLow) => "LL",
        Ok(proto::ObservationFlag::CriticalHigh) => "HH",
        _ => "",
    }
}

/// What the trust should do, in words for the NTE.
fn advice(outcome: Outcome, r: &proto::Request) -> String {
    let detail = if r.status_detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.status_detail)
    };
    match outcome {
        Outcome::Resulted => String::new(),
        Outcome::Failed => {
            let why = match proto::FailureReason::try_from(r.failure_reason) {
                Ok(proto::FailureReason::Haemolysed) => "the sample was haemolysed",
                Ok(proto::FailureReason::Insufficient) => "there was too little sample",
                Ok(proto::FailureReason::Unlabelled) => "the sample was unlabelled or mislabelled",
                _ => "the lab could not use the sample",
            };
            format!(
                "No result: {why}{detail}. Take a new sample and send a new order with a new placer order number."
            )
        }
        Outcome::Expired => format!(
            "No result: no partner lab could finish these tests before the sample's stability ran out{detail}. Take a new sample and send a new order with a new placer order number."
        ),
        Outcome::Cancelled => format!(
            "The order was cancelled{detail}. No results will follow; send a new order if the tests are still needed."
        ),
    }
}

/// Builds the ORU^R01 for an event. `names` gives catalogue test names; `now_ms` is MSH-7.
pub fn build(
    outcome: Outcome,
    event: &proto::RequestEvent,
    profile: &Profile,
    names: &HashMap<String, String>,
    control_id: &str,
    now_ms: i64,
) -> Vec<u8> {
    let tz = &profile.timezone;
    let r = event.request.clone().unwrap_or_default();
    let mut w = Writer::new(Delimiters::default());
    let h = &profile.results;
    let receiving_facility = if h.receiving_facility.is_empty() {
        r.trust.clone()
    } else {
        h.receiving_facility.clone()
    };
    let mut msh: Vec<String> = vec![
        w.delims().encoding_characters(),
        w.text(&h.sending_application),
        w.text(&h.sending_facility),
        w.text(&h.receiving_application),
        w.text(&receiving_facility),
        hl7_time(now_ms, tz),
        String::new(),
        w.join(&["ORU", "R01", "ORU_R01"]),
        w.text(control_id),
        "P".into(),
        "2.5.1".into(),
    ];
    msh.resize(16, String::new());
    msh.push(w.text(Charset::Utf8.label()));
    w.segment("MSH", &msh);

    let patient = r.patient.clone().unwrap_or_default();
    w.segment(
        "PID",
        &[
            "1".into(),
            String::new(),
            w.join(&[&patient.nhs_number, "", "", "NHS", "NH"]),
            String::new(),
            w.join(&[&patient.family_name, &patient.given_name]),
            String::new(),
            patient.birth_date.replace('-', ""),
        ],
    );
    let (result_status, order_status) = outcome.statuses();
    let placer = w.join(&[&r.order_number]);
    let filler = w.join(&[&r.id, "LABAID"]);
    w.segment(
        "ORC",
        &[
            "RE".into(),
            placer.clone(),
            filler.clone(),
            String::new(),
            order_status.into(),
        ],
    );
    let when = millis(event.time.as_ref())
        .map(|t| hl7_time(t, tz))
        .unwrap_or_default();
    let collected = millis(r.collected_at.as_ref())
        .map(|t| hl7_time(t, tz))
        .unwrap_or_default();
    let note = advice(outcome, &r);
    let performer = w.join(&[&r.lab, "", "ODS"]);
    let performing_org = w.join(&[&r.lab, "", "", "", "", "ODS", "XX", "", "", &r.lab]);
    let mut obx_n = 0;
    for (i, test) in r.tests.iter().enumerate() {
        let name = names.get(test).map_or("", String::as_str);
        let local = profile.local_code(test).unwrap_or("");
        let service = w.join(&[
            test,
            name,
            "LABAID",
            local,
            "",
            if local.is_empty() { "" } else { "L" },
        ]);
        let mut obr = vec![String::new(); 25];
        obr[0] = (i + 1).to_string();
        obr[1] = placer.clone();
        obr[2] = filler.clone();
        obr[3] = service;
        obr[6] = collected.clone();
        obr[21] = when.clone();
        obr[24] = result_status.into();
        w.segment("OBR", &obr);
        if !note.is_empty() {
            w.segment("NTE", &["1".into(), "L".into(), w.text(&note)]);
        }
        for o in r
            .results
            .iter()
            .filter(|o| outcome == Outcome::Resulted && &o.test == test)
        {
            obx_n += 1;
            let numeric = o.value.trim().parse::<f64>().is_ok();
            let analyte = if o.analyte.is_empty() {
                test
            } else {
                &o.analyte
            };
            let analyte_name = if o.analyte.is_empty() { name } else { "" };
            let mut obx = vec![String::new(); 23];
            obx[0] = obx_n.to_string();
            obx[1] = if numeric { "NM" } else { "ST" }.into();
            obx[2] = w.join(&[analyte, analyte_name, "LABAID"]);
            obx[4] = w.text(&o.value);
            obx[5] = w.join(&[&o.unit, "", if o.unit.is_empty() { "" } else { "UCUM" }]);
            obx[6] = w.text(&o.reference_range);
            obx[7] = flag(o.flag).into();
            obx[10] = "F".into();
            obx[13] = when.clone();
            obx[14] = performer.clone();
            obx[22] = performing_org.clone();
            w.segment("OBX", &obx);
        }
    }
    Charset::Utf8.encode(&w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::hl7::message::Message;

    fn ts(ms: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: 0,
        })
    }

    fn event(kind: proto::RequestEventKind, state: proto::RequestState) -> proto::RequestEvent {
        proto::RequestEvent {
            sequence: 7,
            time: ts(1_717_408_800_000),
            kind: kind as i32,
            request: Some(proto::Request {
                id: "0190d0c1-0000-7000-8000-000000000001".into(),
                order_number: "ORD|1".into(),
                trust: "RJ1".into(),
                patient: Some(proto::Patient {
                    nhs_number: "9434765919".into(),
                    family_name: "O'Brien".into(),
                    given_name: "Seán".into(),
                    birth_date: "1970-01-01".into(),
                }),
                tests: vec!["K".into(), "FBC".into()],
                state: state as i32,
                lab: "RJ7".into(),
                collected_at: ts(1_717_404_300_000),
                results: vec![
                    proto::Observation {
                        test: "K".into(),
                        value: "6.8".into(),
                        unit: "mmol/L".into(),
                        reference_range: "3.5-5.3".into(),
                        flag: proto::ObservationFlag::CriticalHigh as i32,
                        analyte: String::new(),
                    },
                    proto::Observation {
                        test: "FBC".into(),
                        analyte: "HGB".into(),
                        value: "132".into(),
                        unit: "g/L".into(),
                        reference_range: "130-170".into(),
                        flag: proto::ObservationFlag::Normal as i32,
                    },
                ],
                failure_reason: proto::FailureReason::Haemolysed as i32,
                status_detail: "lab RJ7 failed the job".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_result_becomes_an_oru_with_one_obx_per_observation() {
        let e = event(
            proto::RequestEventKind::Resulted,
            proto::RequestState::Resulted,
        );
        assert_eq!(Outcome::of(&e), Some(Outcome::Resulted));
        let profile = Profile::parse("[codes]\nKPOT = \"K\"\n").unwrap();
        let names = HashMap::from([("K".to_string(), "Potassium".to_string())]);
        let bytes = build(
            Outcome::Resulted,
            &e,
            &profile,
            &names,
            "C1",
            1_717_408_800_000,
        );
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.header(10), "C1");
        assert_eq!(m.component(m.msh(), 9, 2), "R01");
        assert_eq!(m.header(7), "20240603110000+0100");
        let pid = m.first("PID").unwrap();
        assert_eq!(m.component(pid, 3, 1), "9434765919");
        assert_eq!(m.component(pid, 5, 2), "Seán");
        let obrs: Vec<_> = m.all("OBR").collect();
        assert_eq!(obrs.len(), 2);
        assert_eq!(m.component(obrs[0], 2, 1), "ORD|1");
        assert_eq!(
            m.component(obrs[0], 3, 1),
            "0190d0c1-0000-7000-8000-000000000001"
        );
        assert_eq!(m.component(obrs[0], 4, 4), "KPOT");
        assert_eq!(m.component(obrs[0], 25, 1), "F");
        assert_eq!(m.component(obrs[0], 7, 1), "20240603094500+0100");
        let obx: Vec<_> = m.all("OBX").collect();
        assert_eq!(obx.len(), 2);
        assert_eq!(m.component(obx[0], 5, 1), "6.8");
        assert_eq!(m.component(obx[0], 6, 1), "mmol/L");
        assert_eq!(m.component(obx[0], 7, 1), "3.5-5.3");
        assert_eq!(m.component(obx[0], 8, 1), "HH");
        assert_eq!(m.component(obx[0], 15, 1), "RJ7");
        assert_eq!(m.component(obx[1], 3, 1), "HGB");
        assert_eq!(m.component(obx[1], 8, 1), "N");
        assert!(m.first("NTE").is_none());
    }

    #[test]
    fn failure_expiry_and_cancellation_say_what_to_do() {
        let profile = Profile::default();
        let names = HashMap::new();
        let e = event(proto::RequestEventKind::Failed, proto::RequestState::Failed);
        let m = Message::parse(&build(Outcome::Failed, &e, &profile, &names, "C2", 0)).unwrap();
        assert_eq!(m.component(m.first("OBR").unwrap(), 25, 1), "X");
        let note = m.component(m.first("NTE").unwrap(), 3, 1);
        assert!(
            note.contains("haemolysed") && note.contains("new sample"),
            "{note}"
        );
        assert!(m.first("OBX").is_none(), "no results on a failure");

        let e = event(
            proto::RequestEventKind::StateChanged,
            proto::RequestState::Cancelled,
        );
        assert_eq!(Outcome::of(&e), Some(Outcome::Cancelled));
        let m = Message::parse(&build(Outcome::Cancelled, &e, &profile, &names, "C3", 0)).unwrap();
        assert_eq!(m.component(m.first("ORC").unwrap(), 5, 1), "CA");
        let e = event(
            proto::RequestEventKind::StateChanged,
            proto::RequestState::Accepted,
        );
        assert_eq!(Outcome::of(&e), None);
        let e = event(
            proto::RequestEventKind::Expired,
            proto::RequestState::Expired,
        );
        let m = Message::parse(&build(Outcome::Expired, &e, &profile, &names, "C4", 0)).unwrap();
        assert!(
            m.component(m.first("NTE").unwrap(), 3, 1)
                .contains("stability")
        );
    }
}
