//! The journal's segments and the data directory's file names: a segment's header, making one
//! durably, the batch each record holds, and removing the files a snapshot made obsolete.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Entry, StoreError};

/// First bytes of a journal segment; followed by its first entry number and a checksum.
const SEGMENT_MAGIC: &[u8; 8] = b"LABAIDJ1";
/// Length of a segment's header.
pub(crate) const SEGMENT_HEADER: usize = 20;
/// Zeros written ahead of the journal's records whenever they reach the end of the file. The sync
/// after a reservation also flushes the zeros and the file's new length: with 1 MiB that one sync
/// took about ten times an ordinary one, and every batch decided meanwhile waited for it. 64 KiB
/// keeps that sync close to an ordinary one, and still writes the length once per 64 KiB of
/// journal instead of once per sync (BENCHMARKS.md, history, b533194).
pub(super) const RESERVE: u64 = 64 * 1024;

/// The segment holding entries from `first` on.
pub(crate) fn segment_name(first: u64) -> String {
    format!("journal-{first:020}.log")
}

/// The snapshot of the state after `lsn` entries.
pub(crate) fn snapshot_name(lsn: u64) -> String {
    format!("snapshot-{lsn:020}.snap")
}

/// The number in a file name of the given shape.
pub(crate) fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A record's payload: a batch of entries numbered from `first`, then any bytes carried with
/// them (the batch's audit records), which [`Batch::read`] returns.
#[derive(Serialize)]
pub(super) struct BatchRef<'a> {
    pub(super) first: u64,
    pub(super) entries: &'a [Entry],
}

/// A record's payload, read back.
#[derive(Debug, Deserialize)]
pub(crate) struct Batch {
    pub(crate) first: u64,
    pub(crate) entries: Vec<Entry>,
}

impl Batch {
    /// The batch in `payload`, and the bytes carried after it (none from older builds).
    pub(crate) fn read(payload: &[u8]) -> Result<(Self, Option<Vec<u8>>), postcard::Error> {
        let (batch, rest) = postcard::take_from_bytes::<Self>(payload)?;
        Ok((batch, (!rest.is_empty()).then(|| rest.to_vec())))
    }
}

/// Syncs a directory, so that files created, renamed or removed in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub(super) fn segment_header(first: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0; SEGMENT_HEADER];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first entry number a segment header names, if the header is whole and valid.
pub(crate) fn read_segment_header(buf: &[u8]) -> Option<u64> {
    let h = buf.get(..SEGMENT_HEADER)?;
    let first = u64::from_le_bytes(h[8..16].try_into().ok()?);
    (h == segment_header(first)).then_some(first)
}

/// Creates an empty segment for entries from `first` on, durably.
pub(crate) fn create_segment(dir: &Path, first: u64) -> Result<File, StoreError> {
    // Not O_APPEND: the journal writes at its own offset, inside space it reserved ahead.
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.join(segment_name(first)))?;
    file.write_all(&segment_header(first))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// True for a file of the data directory that a snapshot covering `lsn` entries makes obsolete:
/// an earlier snapshot, an incremental one up to it, or a journal segment before it (segments
/// are started at each snapshot's entry number, so one that starts before `lsn` ends before it).
pub(crate) fn obsolete_at(name: &str, lsn: u64) -> bool {
    parse_name(name, "snapshot-", ".snap").is_some_and(|n| n < lsn)
        || parse_name(name, "delta-", ".snap").is_some_and(|n| n <= lsn)
        || parse_name(name, "journal-", ".log").is_some_and(|n| n < lsn)
}

/// Removes the files of `dir` that `obsolete` picks by name, then syncs it.
pub(crate) fn remove_files(dir: &Path, obsolete: impl Fn(&str) -> bool) -> Result<(), StoreError> {
    for item in fs::read_dir(dir)? {
        let name = item?.file_name();
        let name = name.to_string_lossy();
        if obsolete(&name) {
            fs::remove_file(dir.join(&*name))?;
        }
    }
    sync_dir(dir)
}
