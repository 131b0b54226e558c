//! The fuzz targets' reach into the audit trail (feature `fuzzing`): reading a log from its end
//! as a reopening broker does, and a small valid log to seed the corpus.

use std::path::Path;
use std::sync::Arc;

use super::{AUDIT_FILE, Action, AuditLog, Record, chain};
use crate::auth::{Principal, Role};
use crate::domain::{OdsCode, RequestId, Timestamp};
use crate::engine::ManualClock;

/// Reads the log at `path` from its end, `block` bytes at a time, and finds its last whole line.
pub(crate) fn tail(path: &Path, block: usize) {
    let _ = chain::last_entry_by_blocks(path, block);
    if let Ok(file) = std::fs::File::open(path) {
        let _ = chain::end_of_last_line(&file);
    }
}

/// The bytes of a log of four entries written by the audit writer, in `scratch`.
pub(crate) fn sample_log(scratch: &Path) -> Vec<u8> {
    let dir = scratch.join("seed-audit");
    let _ = std::fs::remove_dir_all(&dir);
    let time = Timestamp::from_millis(1_750_000_000_000);
    let (log, writer) = AuditLog::open(
        &dir,
        super::AuditOptions::default(),
        Arc::new(ManualClock::new(time)),
    )
    .unwrap_or_else(|e| panic!("an audit log opens: {e}"));
    let who = |org: &str, role| Principal {
        org: OdsCode::parse(org).unwrap_or_else(|e| panic!("{e}")),
        role,
        via: None,
    };
    let id = RequestId::generate();
    let records = vec![
        Record::new(
            time,
            &who("RJ1", Role::Trust),
            Action::RequestSubmit,
            Some(id),
        ),
        Record::new(time, &who("RJ1", Role::Trust), Action::RequestGet, Some(id)),
        Record::new(time, &who("RXH", Role::Lab), Action::JobAccept, Some(id)),
        Record::new(
            time,
            &who("NHSE", Role::Coordinator),
            Action::CoordinatorLabStatus,
            None,
        )
        .with_reason(Some("analyser down")),
    ];
    let _ = log.append_durably(records);
    writer.close();
    let bytes = std::fs::read(dir.join(AUDIT_FILE)).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}
