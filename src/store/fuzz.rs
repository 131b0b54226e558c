//! The fuzz targets' reach into the store's formats (feature `fuzzing`): file names, segment and
//! snapshot framing with valid checksums, and the snapshot reader.

use std::path::Path;
use std::sync::Arc;

use super::codec;
use super::record;
use super::segment::{segment_header, segment_name, snapshot_name};
use super::{Directory, StoreError};
use crate::routing::{Event, RoutingPolicy, State};

/// The name of the segment holding entries from `first` on.
pub(crate) fn segment_file(first: u64) -> String {
    segment_name(first)
}

/// The name of the full snapshot after `lsn` entries.
pub(crate) fn snapshot_file(lsn: u64) -> String {
    snapshot_name(lsn)
}

/// A segment from `first` on holding one record per payload, each with a valid checksum.
pub(crate) fn segment(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = segment_header(first).to_vec();
    for p in payloads {
        record::frame(p, &mut out);
    }
    out
}

/// The payloads of a segment's valid records.
pub(crate) fn payloads(segment: &[u8]) -> Vec<Vec<u8>> {
    let body = segment.get(super::segment::SEGMENT_HEADER..).unwrap_or(&[]);
    record::scan(body)
        .0
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect()
}

/// Sets a snapshot file's header (after its 8-byte magic) to the length and checksum of what
/// follows it, as the writer does, for every format.
pub(crate) fn fix_snapshot_header(file: &mut [u8]) {
    let header = codec::SNAPSHOT_HEADER;
    if file.len() < header {
        return;
    }
    let magic: [u8; 8] = file[..8].try_into().unwrap_or_default();
    let framed = codec::framed(&magic, &file[header..]);
    file.copy_from_slice(&framed);
}

/// Reads the snapshot file at `path` as a start does.
pub(crate) fn read_snapshot(path: &Path, policy: Arc<dyn RoutingPolicy>) -> Result<(), StoreError> {
    codec::read_snapshot(path, policy).map(drop)
}

/// The bytes of a full snapshot of `state` and `events` after `lsn` entries, written in `dir`.
pub(crate) fn write_snapshot(
    dir: &Path,
    lsn: u64,
    directory: &Directory,
    state: State,
    events: &[Event],
) -> Vec<u8> {
    codec::write_snapshot(dir, lsn, directory, state, events)
        .and_then(|_| Ok(std::fs::read(dir.join(snapshot_name(lsn)))?))
        .unwrap_or_else(|e| panic!("a snapshot is written: {e}"))
}
