//! Durability: the journal every mutation passes through before it is acknowledged, the snapshots
//! that keep it short, and the recovery that rebuilds the core from both.
//!
//! The file store keeps, in its data directory:
//!
//! - `journal-<first entry number>.log`: a segment of framed records (see `record`), one per
//!   `append`, each a batch of entries; synced with `fdatasync` before `append` returns.
//! - `snapshot-<entry number>.snap`: the core's state and the retained events after that many
//!   entries, written to a temporary name, synced, renamed and the directory synced.
//! - `LOCK`: held while a broker runs, so two brokers never write one journal.

pub(crate) mod bulk;
mod directory;
mod file;
mod memory;
mod record;
mod recover;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::Timestamp;
use crate::routing::{Command, Event, SnapshotState};

pub use directory::Directory;
pub use file::FileJournal;
pub use memory::MemoryJournal;
pub use recover::{Recovered, open, open_at};

/// One journaled change: a command and the time it was applied at. Replaying the entries in order
/// through the core rebuilds the state exactly, because the core is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When the command was applied.
    pub time: Timestamp,
    /// The command.
    pub command: Command,
}

/// The core's state and the read views' retained events at a batch boundary.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The core's state, as copied under the decision lock (the writer rebuilds its indexes).
    pub state: SnapshotState,
    /// Every retained event, in sequence order within each organisation.
    pub events: Vec<Event>,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error; after a failed sync the process must stop.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The files hold something that cannot be read back.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The data directory cannot be used as it is (in use, or made for another directory).
    #[error("{0}")]
    Refused(String),
}

/// How the file store syncs and when it snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Journal bytes written since the last snapshot that trigger the next one; the trigger grows
    /// to the last snapshot's size, so snapshots cost at most as much I/O as the journal.
    pub snapshot_min_bytes: u64,
    /// How many syncs an append costs.
    pub sync: SyncMode,
}

/// How many syncs an append costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// One sync per append, whatever the number of entries in it (group commit).
    #[default]
    PerBatch,
    /// One record and one sync per entry: only to measure what group commit saves.
    PerEntry,
}

/// Default snapshot trigger: 64 MiB of journal.
pub const DEFAULT_SNAPSHOT_MIN_BYTES: u64 = 64 * 1024 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            snapshot_min_bytes: DEFAULT_SNAPSHOT_MIN_BYTES,
            sync: SyncMode::PerBatch,
        }
    }
}

/// Where the sequencer makes batches durable.
pub trait Journal: fmt::Debug + Send + 'static {
    /// Appends a batch of entries and returns only once they are durable.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;

    /// True when the journal wants a snapshot of the state after the last append; `closing` is
    /// set once, when the sequencer stops.
    fn snapshot_due(&self, closing: bool) -> bool {
        let _ = closing;
        false
    }

    /// Takes a snapshot of the state after the last append. It may be written in the background;
    /// the journal stays complete until it is durable.
    fn snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let _ = snapshot;
        Ok(())
    }

    /// Waits for background work (a snapshot being written) to finish.
    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
