//! Audit records carried in the journal: the bytes a batch's records take beside its entries,
//! and, at a start, which of them a crash kept from the trail.
//!
//! A change's record is made durable by the journal sync that makes the change durable (one
//! sync, not two), and written to the trail at once but synced there within a second. Each such
//! line names its batch (`lsn`, the batch's first entry), and a batch's lines are written
//! together and in journal order, so the trail's last batch and how many of its lines it holds
//! say exactly which carried records are missing.

use std::borrow::Cow;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chain::{self, AuditEntry, ReadError};
use super::files;
use super::{Action, Record};
use crate::auth::{EdgeId, Role};
use crate::domain::{OdsCode, RequestId};
use crate::error::Error;

/// A batch's records as the journal keeps them: the batch once, each record's role by name and
/// action by its fixed code ([`Action::code`]), never by enum position, so that reordering an
/// enum never changes what an old journal says. Borrowed when written: the syncer encodes every
/// batch.
#[derive(Serialize, Deserialize)]
struct Carried<'a> {
    lsn: u64,
    #[serde(borrow)]
    records: Vec<CarriedRecord<'a>>,
}

#[derive(Serialize, Deserialize)]
struct CarriedRecord<'a> {
    time_ms: i64,
    org: OdsCode,
    role: &'a str,
    /// The trusted edge that called on the organisation's behalf, when one did.
    via: Option<&'a str>,
    action: u8,
    request_id: Option<RequestId>,
    #[serde(borrow)]
    request_ids: Option<Cow<'a, [RequestId]>>,
    reason: Option<&'a str>,
}

/// Marks `records` as made durable by the journal batch whose first entry is `lsn`, and encodes
/// them to be appended with it.
pub fn encode(records: &mut [Record], lsn: u64) -> Vec<u8> {
    for r in records.iter_mut() {
        r.lsn = Some(lsn);
    }
    let carried = Carried {
        lsn,
        records: records
            .iter()
            .map(|r| CarriedRecord {
                time_ms: r.time_ms,
                org: r.org.clone(),
                role: r.role,
                via: r.via.as_ref().map(EdgeId::as_str),
                action: r.action.code(),
                request_id: r.request_id,
                request_ids: r.request_ids.as_deref().map(Cow::Borrowed),
                reason: r.reason.as_deref(),
            })
            .collect(),
    };
    // Plain fields always encode.
    postcard::to_stdvec(&carried).unwrap_or_default()
}

/// The records a batch carried.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let carried: Carried<'_> =
        postcard::from_bytes(bytes).map_err(|e| format!("cannot decode audit records: {e}"))?;
    let lsn = carried.lsn;
    carried
        .records
        .into_iter()
        .map(|c| {
            Ok(Record {
                time_ms: c.time_ms,
                org: c.org,
                role: Role::parse(c.role)?.as_str(),
                via: c.via.map(EdgeId::parse).transpose()?,
                action: Action::from_code(c.action)
                    .ok_or_else(|| format!("unknown audit action code {}", c.action))?,
                request_id: c.request_id,
                request_ids: c.request_ids.map(Cow::into_owned),
                reason: c.reason.map(str::to_string),
                lsn: Some(lsn),
            })
        })
        .collect()
}

/// Where the journaled part of a trail ends: its last batch, and how many of that batch's lines
/// it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailEnd {
    /// The last batch's first journal entry.
    pub lsn: u64,
    /// Its lines in the trail.
    pub lines: usize,
}

/// Bytes read at a time from a file's end.
const BLOCK: usize = 64 * 1024;

/// The trail's last journaled batch, read from the end of its files (the newest first): `None`
/// when no line names one (a new trail, or one from before records were journaled). Lines of
/// reads between a batch's lines are passed over; a batch cut by a rotation is counted across
/// both files.
pub fn trail_end(dir: &Path) -> Result<Option<TrailEnd>, ReadError> {
    let files = files::chain_files(dir).map_err(|source| ReadError {
        path: dir.display().to_string(),
        source,
    })?;
    let mut end: Option<TrailEnd> = None;
    let mut done = false;
    for file in files.iter().rev() {
        chain::lines_from_end(&file.path, BLOCK, |line| {
            // Only a change's line names a batch; the rest need not be parsed.
            if !contains(line, b"\"lsn\":") {
                return true;
            }
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(line) else {
                return true;
            };
            let Some(lsn) = entry.lsn else { return true };
            match &mut end {
                None => end = Some(TrailEnd { lsn, lines: 1 }),
                Some(e) if e.lsn == lsn => e.lines += 1,
                Some(_) => done = true,
            }
            !done
        })?;
        if done {
            break;
        }
    }
    Ok(end)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The carried records (each batch's bytes, in journal order) that a trail ending at `end` lacks.
pub(super) fn missing(carried: &[Vec<u8>], end: Option<TrailEnd>) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    for bytes in carried {
        let records = decode(bytes).map_err(Error::Internal)?;
        let Some(lsn) = records.first().and_then(|r| r.lsn) else {
            continue;
        };
        let skip = match end {
            None => 0,
            Some(e) if lsn < e.lsn => records.len(),
            Some(e) if lsn == e.lsn => e.lines.min(records.len()),
            Some(_) => 0,
        };
        out.extend(records.into_iter().skip(skip));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{AuditLog, AuditOptions, Principal, verify};
    use super::*;
    use crate::domain::Timestamp;
    use crate::engine::ManualClock;

    const T0: i64 = 1_700_000_000_000;

    fn who(role: Role) -> Principal {
        Principal {
            org: OdsCode::parse("RJ1").unwrap(),
            role,
            via: None,
        }
    }

    fn changes(n: usize) -> Vec<Record> {
        (0..n)
            .map(|_| {
                Record::new(
                    Timestamp::from_millis(T0),
                    &who(Role::Lab),
                    Action::JobAccept,
                    Some(RequestId::generate()),
                )
            })
            .collect()
    }

    fn open(dir: &Path, options: AuditOptions) -> (AuditLog, super::super::AuditWriter) {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
        AuditLog::open(dir, options, clock).unwrap()
    }

    /// Journals batches of `sizes` records from entry 0 on (each batch `10` entries long), hands
    /// them to the trail as the syncer does, and returns what the journal carried.
    fn journal_batches(log: &AuditLog, sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<RequestId>) {
        let mut carried = Vec::new();
        let mut ids = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let mut records = changes(n);
            ids.extend(records.iter().filter_map(|r| r.request_id));
            carried.push(encode(&mut records, 10 * i as u64));
            log.append_journaled(records).unwrap();
        }
        (carried, ids)
    }

    fn lines(path: &Path) -> Vec<AuditEntry> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn cut_last_lines(path: &Path, n: usize) {
        let text = std::fs::read_to_string(path).unwrap();
        let kept: Vec<&str> = text.lines().collect();
        let kept = &kept[..kept.len() - n];
        std::fs::write(
            path,
            kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    fn intact(dir: &Path) -> u64 {
        match verify(dir).unwrap() {
            super::super::Verdict::Intact { entries, .. } => entries,
            super::super::Verdict::Broken(b) => panic!("{b}"),
        }
    }

    #[test]
    fn records_read_back_from_the_journal_as_they_were_written() {
        let mut records = changes(3);
        let edge = Principal {
            via: Some(EdgeId::parse("gstt-fhir").unwrap()),
            ..who(Role::Trust)
        };
        records[2] = Record::new(
            Timestamp::from_millis(T0 + 9),
            &edge,
            Action::RequestSubmit,
            Some(RequestId::generate()),
        );
        records[1] = Record::new(
            Timestamp::from_millis(T0 + 5),
            &who(Role::Coordinator),
            Action::CoordinatorReassign,
            Some(RequestId::generate()),
        )
        .with_reason(Some("lab flooded"));
        let bytes = encode(&mut records, 42);
        let back = decode(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{records:?}"));
        assert!(back.iter().all(|r| r.lsn == Some(42)));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_trail_cut_short_by_a_crash_is_completed_from_the_journal_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = open(dir.path(), AuditOptions::default());
        let (carried, ids) = journal_batches(&log, &[2, 3, 1]);
        log.sync().unwrap();
        writer.close();
        let path = dir.path().join(files::AUDIT_FILE);
        assert_eq!(
            trail_end(dir.path()).unwrap(),
            Some(TrailEnd { lsn: 20, lines: 1 })
        );
        // The last batch and one line of the one before never reached the disk.
        cut_last_lines(&path, 2);
        assert_eq!(
            trail_end(dir.path()).unwrap(),
            Some(TrailEnd { lsn: 10, lines: 2 })
        );

        let (log, writer) = open(dir.path(), AuditOptions::default());
        assert_eq!(log.restore(dir.path(), &carried).unwrap(), 2);
        writer.close();
        let trail = lines(&path);
        let held: Vec<String> = trail.iter().filter_map(|e| e.request_id.clone()).collect();
        let want: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        assert_eq!(held, want, "every record once, in journal order");
        let lsns: Vec<u64> = trail.iter().filter_map(|e| e.lsn).collect();
        assert_eq!(lsns, [0, 0, 10, 10, 10, 20]);
        assert_eq!(intact(dir.path()), 6);

        // A second start finds nothing missing.
        let (log, writer) = open(dir.path(), AuditOptions::default());
        assert_eq!(log.restore(dir.path(), &carried).unwrap(), 0);
        writer.close();
        assert_eq!(intact(dir.path()), 6);
    }

    #[test]
    fn reads_between_batches_and_a_rotation_inside_one_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        // Rotates once the file holds anything: the second batch is split across two files.
        let options = AuditOptions {
            rotate_bytes: 1,
            rotate_daily: false,
        };
        let (log, writer) = open(dir.path(), options);
        let (mut carried, _) = journal_batches(&log, &[1]);
        let read = Record::new(
            Timestamp::from_millis(T0),
            &who(Role::Trust),
            Action::RequestGet,
            Some(RequestId::generate()),
        );
        log.append_durably(vec![read]).unwrap();
        let mut records = changes(3);
        carried.push(encode(&mut records, 10));
        log.append_journaled(records).unwrap();
        log.sync().unwrap();
        writer.close();
        assert_eq!(
            trail_end(dir.path()).unwrap(),
            Some(TrailEnd { lsn: 10, lines: 3 })
        );
        // The file being written is lost whole: the batch's first lines are in the rotated ones.
        std::fs::remove_file(dir.path().join(files::AUDIT_FILE)).unwrap();
        let held = trail_end(dir.path()).unwrap().unwrap();
        assert_eq!(held.lsn, 10);
        assert!(held.lines < 3);

        let (log, writer) = open(dir.path(), options);
        assert_eq!(log.restore(dir.path(), &carried).unwrap(), 3 - held.lines);
        writer.close();
        assert_eq!(
            trail_end(dir.path()).unwrap(),
            Some(TrailEnd { lsn: 10, lines: 3 })
        );
        assert_eq!(intact(dir.path()), 5);
    }

    #[test]
    fn a_trail_from_before_records_were_journaled_takes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = open(dir.path(), AuditOptions::default());
        let read = Record::new(
            Timestamp::from_millis(T0),
            &who(Role::Trust),
            Action::RequestGet,
            None,
        );
        log.append_durably(vec![read]).unwrap();
        writer.close();
        assert_eq!(trail_end(dir.path()).unwrap(), None);
        let mut records = changes(2);
        let carried = vec![encode(&mut records, 7)];
        let (log, writer) = open(dir.path(), AuditOptions::default());
        assert_eq!(log.restore(dir.path(), &carried).unwrap(), 2);
        writer.close();
        assert_eq!(intact(dir.path()), 3);
    }
}
