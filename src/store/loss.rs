//! Telling a torn tail from lost acknowledged changes: the high-water mark of synced entries kept
//! beside the journal, and the loss a start refuses (or, when the operator says so, accepts).
//!
//! A crash can only tear records whose sync never returned, so none of them was acknowledged;
//! the mark says how many entries were synced, so a journal that ends before it (a segment
//! deleted or cut, a damaged record at its end) has lost acknowledged changes. The mark is
//! written after each sync into the page cache and synced at a clean stop, not at every
//! append: a process crash keeps it exact, and a machine crash can only leave it behind the
//! journal (never ahead), so it never makes a start refuse a journal that is whole.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::StoreError;
use super::record;
use super::segment::{Batch, sync_dir};

/// The mark's file in a data directory.
pub(crate) const MARK_NAME: &str = "synced.mark";
const MARK_MAGIC: &[u8; 8] = b"LABAIDM1";
/// `[magic][entries: u64 LE][crc32 of both: u32 LE]`, written whole at offset 0 (one sector).
const MARK_LEN: usize = 20;

fn encode(entries: u64) -> [u8; MARK_LEN] {
    let mut m = [0; MARK_LEN];
    m[..8].copy_from_slice(MARK_MAGIC);
    m[8..16].copy_from_slice(&entries.to_le_bytes());
    let crc = crc32fast::hash(&m[..16]);
    m[16..].copy_from_slice(&crc.to_le_bytes());
    m
}

/// The number of entries known synced, from the mark in `dir`; `None` when there is none (a data
/// directory from an earlier build). A damaged mark is refused unless `accept` is set.
pub(crate) fn read_mark(dir: &Path, accept: bool) -> Result<Option<u64>, StoreError> {
    let bytes = match std::fs::read(dir.join(MARK_NAME)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let entries = bytes
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    match entries {
        Some(n) if bytes.len() == MARK_LEN && bytes[..] == encode(n) => Ok(Some(n)),
        _ if accept => {
            tracing::error!(
                file = MARK_NAME,
                "the high-water mark is damaged; accepted (--accept-data-loss): the journal is \
                 taken as it is"
            );
            Ok(None)
        }
        _ => Err(StoreError::Corrupt(format!(
            "{} is damaged, so the store cannot tell how many changes were acknowledged; \
             start with --accept-data-loss to take the journal as it is",
            dir.join(MARK_NAME).display()
        ))),
    }
}

/// The high-water mark of a running journal.
#[derive(Debug)]
pub(crate) struct Mark {
    file: File,
}

impl Mark {
    /// Opens the mark of `dir` (making it if absent) and records `entries` durably.
    pub(crate) fn create(dir: &Path, entries: u64) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(MARK_NAME))?;
        let mark = Self { file };
        mark.record(entries)?;
        mark.file.set_len(MARK_LEN as u64)?;
        mark.file.sync_all()?;
        sync_dir(dir)?;
        Ok(mark)
    }

    /// Records that `entries` entries are synced: one write, left to the page cache (see the
    /// module's note on why that is enough).
    pub(crate) fn record(&self, entries: u64) -> Result<(), StoreError> {
        self.file.write_all_at(&encode(entries), 0)?;
        Ok(())
    }

    /// Makes the last recorded number durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data()?;
        Ok(())
    }
}

/// Acknowledged changes a start found missing from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLoss {
    /// The journal segment where the damage or the early end is.
    pub file: String,
    /// Byte position in it.
    pub offset: u64,
    /// First entry missing.
    pub from: u64,
    /// Entries acknowledged: the mark, or more if later records or segments show more.
    pub acknowledged: u64,
    /// What was found there.
    pub what: String,
}

impl DataLoss {
    /// How many acknowledged changes (journal entries) are missing.
    pub fn missing(&self) -> u64 {
        self.acknowledged.saturating_sub(self.from)
    }
}

impl fmt::Display for DataLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: {}; {} acknowledged change(s) are missing (entries {} to {})",
            self.file,
            self.offset,
            self.what,
            self.missing(),
            self.from,
            self.acknowledged.saturating_sub(1).max(self.from),
        )
    }
}

/// The entry after the last one the valid records at the start of `buf` hold (0 if none): what
/// records past a damaged one show was written, synced and so acknowledged.
pub(crate) fn entries_shown(buf: &[u8]) -> u64 {
    let (payloads, _) = record::scan(buf);
    payloads
        .iter()
        .filter_map(|p| postcard::from_bytes::<Batch>(p).ok())
        .map(|b| b.first + b.entries.len() as u64)
        .max()
        .unwrap_or(0)
}
