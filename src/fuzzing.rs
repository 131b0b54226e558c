//! The fuzz targets' entry points (feature `fuzzing`, built only by `crates/fuzz`): each takes
//! arbitrary bytes through the same readers and checks the server and the edge use, and must
//! return, never panic. Also the valid inputs that seed their corpora.

use std::fs;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use prost::Message as _;

use crate::api::{MAX_OBSERVATIONS, list_filters, page_size, page_token, parse_id};
use crate::config::Config;
use crate::domain::{
    BoundedText, Catalogue, MAX_NOTE_CHARS, NewRequest, OdsCode, Priority, Timestamp,
};
use crate::edge::fhir::{codes::Codes, ingest};
use crate::edge::hl7::ack::{self, AckCode, Reply};
use crate::edge::hl7::inbound::read_frame;
use crate::edge::hl7::message::Message;
use crate::edge::hl7::mllp::{self, FrameReader, Limits};
use crate::edge::hl7::orders::read_orders;
use crate::edge::hl7::profile::Profile;
use crate::proto;
use crate::routing::{Command, DefaultPolicy, Outcome, RoutingPolicy};
use crate::store::{self, Directory, Entry, Journal as _, StoreOptions};
use crate::wire::{KindFilter, failure_from, raw_submission};

/// The fixed "now" of every check that needs one, so that a run is repeatable.
pub const NOW: Timestamp = Timestamp::from_millis(1_750_000_000_000);

/// The demo directory: the catalogue, trusts and labs every target checks against.
fn directory() -> &'static Directory {
    static DIRECTORY: OnceLock<Directory> = OnceLock::new();
    DIRECTORY.get_or_init(|| {
        Config::demo()
            .unwrap_or_else(|e| panic!("the demo config is valid: {e}"))
            .directory()
    })
}

fn catalogue() -> &'static Catalogue {
    &directory().catalogue
}

fn policy() -> Arc<dyn RoutingPolicy> {
    Arc::new(DefaultPolicy)
}

/// The HL7 profile of the repository's fixtures (`tests/fixtures/hl7/codes.toml`).
fn profile() -> &'static Profile {
    static PROFILE: OnceLock<Profile> = OnceLock::new();
    PROFILE.get_or_init(|| {
        Profile::parse(include_str!("../tests/fixtures/hl7/codes.toml"))
            .unwrap_or_else(|e| panic!("the fixture profile is valid: {e}"))
    })
}

/// `request_decode`: the first byte picks a message; the rest is decoded as it and validated as
/// its handler does before anything reaches the engine.
pub fn request_decode(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            if let Ok(m) = proto::SubmitRequestRequest::decode(bytes)
                && let Ok(raw) = raw_submission(m)
            {
                let _ = NewRequest::validate(&raw, catalogue(), NOW);
            }
        }
        1 => {
            if let Ok(m) = proto::ListRequestsRequest::decode(bytes) {
                let _ = list_filters(&m.states, &m.priorities);
                let _ = page_size(m.page_size);
                let _ = page_token(&m.page_token);
            }
        }
        2 => {
            if let Ok(m) = proto::CancelRequestRequest::decode(bytes) {
                let _ = parse_id(&m.id);
                let _ = BoundedText::parse(&m.reason, MAX_NOTE_CHARS);
            }
        }
        3 => {
            if let Ok(m) = proto::WatchRequestEventsRequest::decode(bytes) {
                let _ = KindFilter::request_kinds(&m.kinds);
            }
        }
        4 => {
            if let Ok(m) = proto::WatchOffersRequest::decode(bytes) {
                let _ = KindFilter::job_kinds(&m.kinds);
            }
        }
        5 => {
            if let Ok(m) = proto::PostResultsRequest::decode(bytes) {
                let _ = parse_id(&m.id);
                if m.observations.len() <= MAX_OBSERVATIONS {
                    // Against a job of every catalogue test the observations could name.
                    let all: Vec<String> = catalogue().iter().map(|t| t.code.to_string()).collect();
                    if let Ok(tests) = crate::domain::TestSet::parse(&all, catalogue()) {
                        let _ =
                            crate::api::validate_observations(&m.observations, &tests, catalogue());
                    }
                }
            }
        }
        6 => {
            if let Ok(m) = proto::FailJobRequest::decode(bytes) {
                let _ = parse_id(&m.id);
                let _ = failure_from(m.reason);
                let _ = BoundedText::parse(&m.detail, MAX_NOTE_CHARS);
            }
        }
        _ => {
            let _ = proto::WorkRequest::decode(bytes);
        }
    }
}

/// `journal_read`: the bytes as the one journal segment after an empty snapshot, recovered as a
/// start would. The first byte's bit 0 asks for the rest to be read as payloads (each a u16 LE
/// length and its bytes) framed with valid checksums, so that the decoding and replay behind the
/// checksums are reached; bit 1 accepts data loss. `scratch` is an empty directory to use.
pub fn journal_read(scratch: &Path, data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let segment = if flags & 1 == 1 {
        let mut payloads = Vec::new();
        let mut at = rest;
        while let [a, b, tail @ ..] = at {
            let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
            payloads.push(&tail[..len]);
            at = &tail[len..];
        }
        store::fuzz::segment(0, &payloads)
    } else {
        rest.to_vec()
    };
    let dir = scratch.join("data");
    let _ = fs::remove_dir_all(&dir);
    let made = fs::create_dir(&dir)
        .and_then(|()| fs::write(dir.join(store::fuzz::snapshot_file(0)), empty_snapshot()))
        .and_then(|()| fs::write(dir.join(store::fuzz::segment_file(0)), &segment));
    if made.is_err() {
        return;
    }
    let options = StoreOptions {
        accept_data_loss: flags & 2 == 2,
        ..StoreOptions::default()
    };
    drop(store::open_at(
        &dir,
        directory().clone(),
        policy(),
        options,
        NOW,
    ));
}

/// The bytes of the snapshot a new data directory starts with.
fn empty_snapshot() -> &'static [u8] {
    static SNAPSHOT: OnceLock<Vec<u8>> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("labaid-fuzz-empty-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let opened = store::open(&dir, directory().clone(), policy(), StoreOptions::default())
            .unwrap_or_else(|e| panic!("a new data directory opens: {e}"));
        drop(opened);
        let bytes = fs::read(dir.join(store::fuzz::snapshot_file(0)))
            .unwrap_or_else(|e| panic!("a new data directory has a snapshot: {e}"));
        let _ = fs::remove_dir_all(&dir);
        bytes
    })
}

/// `snapshot_read`: the bytes as a snapshot file, read as a start reads it. When the first byte
/// is odd, the rest is the file with its header's length and checksum made to match, so that the
/// decoding behind the checksum is reached. `scratch` is a directory to write the file in.
pub fn snapshot_read(scratch: &Path, data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut file = rest.to_vec();
    if flags & 1 == 1 {
        store::fuzz::fix_snapshot_header(&mut file);
    }
    let path = scratch.join("fuzz.snap");
    if fs::write(&path, &file).is_ok() {
        let _ = store::fuzz::read_snapshot(&path, policy());
    }
}

/// `audit_verify`: the bytes as an audit log, verified, exported, and read from its end as a
/// reopening broker does. `scratch` is a directory to write the file in.
pub fn audit_verify(scratch: &Path, data: &[u8]) {
    let path = scratch.join(crate::audit::AUDIT_FILE);
    if fs::write(&path, data).is_err() {
        return;
    }
    // The directory holds this one file of the chain; verify and export walk every file in it.
    let _ = crate::audit::verify(scratch);
    let _ = crate::audit::export(scratch, &mut std::io::sink(), None);
    let _ = crate::audit::export(
        scratch,
        &mut std::io::sink(),
        Some("0190d5a0-0000-7000-8000-000000000001"),
    );
    // Small blocks, so that lines cut across block boundaries are reached with small inputs.
    crate::audit::fuzz::tail(&path, 7);
}

/// `hl7_parse`: the bytes as what arrives on an MLLP connection; every frame is read, parsed,
/// checked and its orders validated as the broker would, and answered with an ACK, which must
/// itself be a message the edge can read.
pub fn hl7_parse(data: &[u8]) {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("a runtime starts: {e}"))
    });
    let limits = Limits {
        max_frame: 4096,
        ..Limits::default()
    };
    let mut reader = FrameReader::new(data, limits);
    runtime.block_on(async {
        while let Ok(frame) = reader.next().await {
            answer(frame);
        }
    });
}

fn answer(frame: mllp::Frame) {
    let profile = profile();
    let (msg, code, text, problems) = match read_frame(frame, profile) {
        Ok(msg) => match read_orders(&msg, profile) {
            Ok(orders) => {
                for order in &orders {
                    let _ = NewRequest::validate(&order.submission, catalogue(), NOW);
                }
                (Some(msg), AckCode::Accept, "accepted", Vec::new())
            }
            Err(problems) => (Some(msg), AckCode::Error, "content error", problems),
        },
        Err(r) => (r.to, r.code, r.text, r.problems),
    };
    let answered = msg.is_some();
    let reply = Reply {
        to: msg.as_ref(),
        code,
        text: text.into(),
        problems,
    };
    let ack = ack::build(&reply, "20250615120000+0100", "1");
    if answered && let Err(e) = Message::parse(&ack) {
        panic!("an ACK the edge built cannot be read back: {e}");
    }
}

/// `fhir_bundle`: the bytes as a FHIR JSON body, read as a transaction Bundle and as a
/// ServiceRequest, and the submission each makes validated as the broker would.
pub fn fhir_bundle(data: &[u8]) {
    static CODES: OnceLock<Codes> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        let tests: Vec<proto::TestDefinition> =
            catalogue().iter().map(crate::wire::test_to).collect();
        Codes::new(&tests, crate::edge::fhir::codes::DEFAULT_CATALOGUE_SYSTEM)
    });
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let orders = [
        ingest::transaction(&value, codes).map(|(order, _)| order),
        ingest::service_request(&value, codes),
    ];
    for order in orders {
        match order {
            Ok(order) => {
                if let Ok(raw) = raw_submission(order.submit) {
                    let _ = NewRequest::validate(&raw, catalogue(), NOW);
                }
            }
            Err(outcome) => {
                let _ = outcome.resource();
            }
        }
    }
}

/// Valid inputs for each target's corpus, by target name: made through the real writers.
pub fn seeds(scratch: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let submit = submission(1);
    out.push((
        "request_decode",
        [&[0u8][..], &submit.encode_to_vec()].concat(),
    ));
    let list = proto::ListRequestsRequest {
        states: vec![proto::RequestState::Queued as i32],
        priorities: vec![proto::Priority::Stat as i32],
        page_size: 50,
        page_token: "12".into(),
        order_number: "ORD-1".into(),
    };
    out.push((
        "request_decode",
        [&[1u8][..], &list.encode_to_vec()].concat(),
    ));
    let results = proto::PostResultsRequest {
        id: crate::domain::RequestId::generate().to_string(),
        observations: vec![proto::Observation {
            test: "K".into(),
            analyte: "Potassium".into(),
            value: "4.1".into(),
            unit: "mmol/L".into(),
            reference_range: "3.5-5.3".into(),
            flag: proto::ObservationFlag::Normal as i32,
        }],
    };
    out.push((
        "request_decode",
        [&[5u8][..], &results.encode_to_vec()].concat(),
    ));

    // A journal and a snapshot written by the store, after three submissions.
    let dir = scratch.join("seed-store");
    let _ = fs::remove_dir_all(&dir);
    let mut recovered = store::open_at(
        &dir,
        directory().clone(),
        policy(),
        StoreOptions::default(),
        NOW,
    )
    .unwrap_or_else(|e| panic!("a new data directory opens: {e}"));
    let mut entries = Vec::new();
    let mut events = Vec::new();
    for order in 0..3 {
        let raw = raw_submission(submission(order)).unwrap_or_else(|e| panic!("{e}"));
        let request = NewRequest::validate(&raw, catalogue(), NOW)
            .unwrap_or_else(|e| panic!("a valid submission: {e:?}"));
        let command = Command::Submit {
            trust: OdsCode::parse("RJ1").unwrap_or_else(|e| panic!("{e}")),
            id: crate::domain::RequestId::generate(),
            request,
        };
        let mut outcome = Outcome::default();
        if recovered.router.apply(&command, NOW, &mut outcome).is_ok() {
            entries.push(Entry { time: NOW, command });
            events.append(&mut outcome.events);
        }
    }
    recovered
        .journal
        .append(&entries)
        .unwrap_or_else(|e| panic!("the journal takes a batch: {e}"));
    let _ = recovered.journal.close();
    let state = recovered.router.state().clone();
    drop(recovered);
    let segment = fs::read(dir.join(store::fuzz::segment_file(0))).unwrap_or_default();
    out.push(("journal_read", [&[0u8][..], &segment].concat()));
    let mut payloads = vec![1u8];
    for payload in store::fuzz::payloads(&segment) {
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        payloads.extend_from_slice(&len.to_le_bytes());
        payloads.extend_from_slice(&payload[..usize::from(len)]);
    }
    out.push(("journal_read", payloads));
    out.push(("snapshot_read", [&[0u8][..], empty_snapshot()].concat()));
    let snap = store::fuzz::write_snapshot(&dir, 3, directory(), state, &events);
    out.push(("snapshot_read", [&[1u8][..], &snap].concat()));
    let _ = fs::remove_dir_all(&dir);

    out.push(("audit_verify", crate::audit::fuzz::sample_log(scratch)));
    out
}

/// A submission of order `ORD-{order}`: potassium, STAT, collected 20 minutes before [`NOW`].
fn submission(order: usize) -> proto::SubmitRequestRequest {
    proto::SubmitRequestRequest {
        order_number: format!("ORD-{order}"),
        patient: Some(proto::Patient {
            nhs_number: "9434765919".into(),
            family_name: "Testpatient".into(),
            given_name: "Alex".into(),
            birth_date: "1970-01-01".into(),
        }),
        tests: vec!["K".into()],
        priority: crate::wire::priority_to(Priority::Stat) as i32,
        collected_at: Some(crate::wire::ts(NOW.plus_minutes(-20))),
        clinical_note: "fasting".into(),
    }
}
