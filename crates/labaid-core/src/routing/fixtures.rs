//! Test fixtures shared by the unit tests here and in the server (feature `fixtures`): a valid
//! submission.

use crate::domain::{NewRequest, OdsCode, Priority, RawSubmission, RequestId, Timestamp};

use super::{Command, Router};

/// `trust` submits order `ORD-{order}`: potassium, collected 20 minutes before `now`.
pub fn submit(
    router: &Router,
    trust: &str,
    order: usize,
    priority: Priority,
    now: Timestamp,
) -> Command {
    let raw = RawSubmission {
        order_number: format!("ORD-{order}"),
        nhs_number: "9434765919".into(),
        family_name: "Testpatient".into(),
        given_name: "Alex".into(),
        birth_date: "1970-01-01".into(),
        tests: vec!["K".into()],
        priority: Some(priority),
        collected_at: Some(now.plus_minutes(-20)),
        clinical_note: String::new(),
    };
    Command::Submit {
        trust: OdsCode::parse(trust).expect("ods"),
        id: RequestId::generate(),
        request: NewRequest::validate(&raw, router.catalogue(), now).expect("valid submission"),
    }
}
