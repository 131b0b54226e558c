//! Format 2 snapshots written as earlier builds wrote them, so that tests show they are still
//! read.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::{EventRecord, HeadRef, RequestRef, SNAPSHOT_HEADER, SNAPSHOT_MAGIC_V2, Versions};
use crate::domain::Request;
use crate::routing::{Event, Router};
use crate::store::segment::{snapshot_name, sync_dir};
use crate::store::{Directory, StoreError};

#[derive(Serialize)]
struct EventsRef<'a> {
    versions: Vec<&'a Request>,
    events: Vec<EventRecord>,
}

/// The events of a format 2 snapshot as records, and the older request versions they point at.
fn event_records<'a>(router: &Router, events: &'a [Event]) -> (Vec<&'a Request>, Vec<EventRecord>) {
    let mut versions = Versions::default();
    let records = events
        .iter()
        .map(|e| {
            let request = match router.request(&e.request.id) {
                Some(now) if Arc::ptr_eq(now, &e.request) => RequestRef::Current(e.request.id),
                _ => RequestRef::Version(versions.of(&e.request)),
            };
            EventRecord {
                org: e.org.clone(),
                sequence: e.sequence,
                time: e.time,
                kind: e.kind,
                request,
            }
        })
        .collect();
    (versions.list, records)
}

/// Writes a format 2 snapshot, as earlier builds did, to test that it is still read.
pub(crate) fn write_snapshot_v2(
    dir: &Path,
    lsn: u64,
    directory: &Directory,
    router: &Router,
    events: &[Event],
) -> Result<u64, StoreError> {
    let (versions, events) = event_records(router, events);
    let encode = |e: postcard::Error| StoreError::Corrupt(format!("cannot encode a snapshot: {e}"));
    let mut payload = postcard::to_extend(
        &HeadRef {
            lsn,
            directory,
            state: router.state(),
        },
        vec![0; 8],
    )
    .map_err(encode)?;
    let head_len = (payload.len() - 8) as u64;
    payload[..8].copy_from_slice(&head_len.to_le_bytes());
    let payload = postcard::to_extend(&EventsRef { versions, events }, payload).map_err(encode)?;
    let tmp = dir.join(format!("{}.tmp", snapshot_name(lsn)));
    let mut file = File::create(&tmp)?;
    file.write_all(&super::framed(SNAPSHOT_MAGIC_V2, &payload))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(snapshot_name(lsn)))?;
    sync_dir(dir)?;
    Ok((SNAPSHOT_HEADER + payload.len()) as u64)
}
