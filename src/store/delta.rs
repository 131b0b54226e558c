//! Incremental snapshots: the requests changed since the snapshot before (full or incremental),
//! the rest of the state, and the events published meanwhile. A restart reads each changed
//! request once instead of replaying every decision that changed it, and writing one costs what
//! changed, not what is live.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::codec::{
    self, Parts, SNAPSHOT_HEADER, SectionError, encode_error, link_events, write_sections,
};
use super::io::ReadAt;
use super::{Delta, Directory, StoreError};
use crate::domain::{Request, RequestId};
use crate::routing::{Event, State};

/// First bytes of an incremental snapshot; laid out as a format 3 snapshot (see
/// `write_sections`), with its own head.
const DELTA_MAGIC: &[u8; 8] = b"LABAIDD1";

/// The incremental snapshot of the state after `lsn` entries.
pub(crate) fn delta_name(lsn: u64) -> String {
    format!("delta-{lsn:020}.snap")
}

#[derive(Serialize)]
struct DeltaHeadRef<'a> {
    lsn: u64,
    after: u64,
    directory: &'a Directory,
    state: &'a State,
    removed: &'a [RequestId],
}

/// The head section of an incremental snapshot.
#[derive(Debug, Deserialize)]
struct DeltaHead {
    /// Entries it covers.
    lsn: u64,
    /// Entries covered by the snapshot it follows: it applies only to exactly that state.
    after: u64,
    directory: Directory,
    /// Everything but the requests ([`State::head_copy`]).
    state: State,
    /// Requests purged since.
    removed: Vec<RequestId>,
}

/// An incremental snapshot, read back.
#[derive(Debug)]
pub(crate) struct DeltaFile {
    pub(crate) lsn: u64,
    pub(crate) after: u64,
    pub(crate) directory: Directory,
    pub(crate) head: State,
    /// Each changed request as it is now; `None` if purged.
    pub(crate) changed: Vec<(RequestId, Option<Arc<Request>>)>,
    /// Events published since the snapshot before, in order.
    pub(crate) events: Vec<Event>,
}

/// Writes an incremental snapshot of the state after `lsn` entries, following the snapshot that
/// covered `after`, durably; returns its size.
pub(crate) fn write_delta(
    dir: &Path,
    lsn: u64,
    after: u64,
    directory: &Directory,
    delta: &Delta,
) -> Result<u64, StoreError> {
    let (head, upserted) = delta_parts(lsn, after, directory, delta)?;
    write_sections(
        dir,
        &delta_name(lsn),
        DELTA_MAGIC,
        head,
        &upserted,
        &delta.events,
    )
}

/// An incremental snapshot as one buffer, byte for byte what `write_delta` puts in a file (the
/// PostgreSQL store keeps it in a row); read back by `read_delta_from`.
pub(crate) fn delta_bytes(
    lsn: u64,
    after: u64,
    directory: &Directory,
    delta: &Delta,
) -> Result<Vec<u8>, StoreError> {
    let (head, upserted) = delta_parts(lsn, after, directory, delta)?;
    codec::sectioned_bytes(DELTA_MAGIC, head, &upserted, &delta.events)
}

/// The head section of an incremental snapshot, and its changed requests in ordinal order.
fn delta_parts<'a>(
    lsn: u64,
    after: u64,
    directory: &Directory,
    delta: &'a Delta,
) -> Result<(Vec<u8>, Vec<&'a Arc<Request>>), StoreError> {
    let mut upserted: Vec<&Arc<Request>> = Vec::with_capacity(delta.requests.len());
    let mut removed = Vec::new();
    for (id, request) in &delta.requests {
        match request {
            Some(r) => upserted.push(r),
            None => removed.push(*id),
        }
    }
    upserted.sort_unstable_by_key(|r| r.ordinal);
    let head = postcard::to_stdvec(&DeltaHeadRef {
        lsn,
        after,
        directory,
        state: &delta.head,
        removed: &removed,
    })
    .map_err(encode_error)?;
    Ok((head, upserted))
}

/// Reads an incremental snapshot; any damage is an error (it is only renamed into place once
/// synced).
pub(crate) fn read_delta(path: &Path) -> Result<DeltaFile, StoreError> {
    let file = File::open(path)?;
    read_delta_from(&file, &format!("incremental snapshot {}", path.display()))
}

/// Reads an incremental snapshot from `source` (a file, or a buffer as `delta_bytes` makes one);
/// `name` says where it was read from, for the error.
pub(crate) fn read_delta_from<S: ReadAt + ?Sized>(
    source: &S,
    name: &str,
) -> Result<DeltaFile, StoreError> {
    let damaged = |why: &str| StoreError::Corrupt(format!("{name} is damaged: {why}"));
    let mut header = [0; SNAPSHOT_HEADER];
    source
        .read_bytes_at(&mut header, 0)
        .map_err(|_| damaged("short header"))?;
    if header[..8] != DELTA_MAGIC[..] {
        return Err(if header.starts_with(b"LABAIDD") {
            StoreError::Corrupt(format!(
                "{name} is in format {:?}, which this build cannot read (it reads format 1); \
                 start it with the build that wrote it",
                char::from(header[7])
            ))
        } else {
            damaged("not a labaid incremental snapshot")
        });
    }
    let Parts {
        head,
        versions,
        slots,
        requests,
    } = codec::read_parts::<DeltaHead, _>(source, &header).map_err(|e| match e {
        SectionError::Io(e) => StoreError::Io(e),
        SectionError::Damaged(why) => damaged(&why),
    })?;
    let events = link_events(&requests, &versions, slots).map_err(|why| damaged(&why))?;
    // In ordinal order, as written: the queue and timer trees then fill mostly in order.
    let changed: Vec<(RequestId, Option<Arc<Request>>)> = requests
        .into_iter()
        .map(|r| (r.id, Some(r)))
        .chain(head.removed.into_iter().map(|id| (id, None)))
        .collect();
    let mut ids: Vec<RequestId> = changed.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(damaged("it names a request twice"));
    }
    Ok(DeltaFile {
        lsn: head.lsn,
        after: head.after,
        directory: head.directory,
        head: head.state,
        changed,
        events,
    })
}
