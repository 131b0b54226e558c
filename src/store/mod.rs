//! Durability: the journal every mutation passes through before it is acknowledged, the snapshots
//! that keep it short, and the recovery that rebuilds the core from both.
//!
//! The file store keeps, in its data directory:
//!
//! - `journal-<first entry number>.log`: a segment of framed records (see `record`), one per
//!   `append`, each a batch of entries; synced with `fdatasync` before `append` returns.
//! - `snapshot-<entry number>.snap`: the core's state and the retained events after that many
//!   entries, written to a temporary name, synced, renamed and the directory synced.
//! - `delta-<entry number>.snap`: an incremental snapshot after that many entries, written the
//!   same way: the requests changed since the snapshot or incremental snapshot before it, the
//!   rest of the state, and the events published meanwhile.
//! - `synced.mark`: how many entries were synced, so a start tells a torn tail from a journal
//!   cut or deleted (see `loss`).
//! - `LOCK`: held while a broker runs, so two brokers never write one journal.

mod codec;
mod delta;
mod directory;
mod file;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod io;
mod loss;
mod memory;
pub mod postgres;
mod record;
mod recover;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{Request, RequestId, Timestamp};
use crate::routing::{Command, Event, SnapshotState, State};

pub use directory::Directory;
pub use file::FileJournal;
pub use loss::DataLoss;
pub use memory::MemoryJournal;
pub(crate) use recover::lock_dir;
pub use recover::{Recovered, open, open_at};
pub use writer::SnapshotObserver;

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

/// What changed since the last snapshot (full or incremental), for an incremental one.
#[derive(Debug, Clone)]
pub struct Delta {
    /// Everything but the requests ([`State::head_copy`]), as of the last batch it covers.
    pub head: State,
    /// Each request changed since, as it is now; `None` if purged.
    pub requests: Vec<(RequestId, Option<Arc<Request>>)>,
    /// Every event published since, in order.
    pub events: Vec<Event>,
}

/// Which snapshot the journal wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// The whole state and the retained events ([`Snapshot`]).
    Full,
    /// What changed since the last one ([`Delta`]).
    Incremental,
}

impl SnapshotKind {
    /// The kind as logs and metric labels name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        }
    }
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
    /// Acknowledged changes are missing from the journal; the start is refused unless the
    /// operator accepts the loss ([`StoreOptions::accept_data_loss`]).
    #[error(
        "{0}; refusing to start: restore the missing files, or start with --accept-data-loss to \
         carry on without those changes"
    )]
    Lost(DataLoss),
}

/// How the file store syncs and when it snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Journal bytes since the last full snapshot before the next may be taken; an eighth of
    /// it, since the last snapshot of either kind, triggers an incremental one. The next is full
    /// once the incremental ones since the last full one add up to half its size. A crash then
    /// replays at most about an eighth of this much journal, after reading at most about half a
    /// full snapshot's worth of changed requests (more while the state is small).
    pub snapshot_min_bytes: u64,
    /// How many syncs an append costs.
    pub sync: SyncMode,
    /// Start even when acknowledged changes are missing from the journal (deleted, cut or
    /// damaged): carry on from what is readable, say what was dropped, and set later segments
    /// aside. Off by default: such a start is refused, naming the file, the position and the
    /// number of changes missing.
    pub accept_data_loss: bool,
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

/// Default snapshot trigger: 64 MiB of journal between full snapshots, so an incremental one
/// every 8 MiB (about half a second of replay here at a million live requests).
pub const DEFAULT_SNAPSHOT_MIN_BYTES: u64 = 64 * 1024 * 1024;

impl StoreOptions {
    /// Journal bytes since the last snapshot, full or incremental, that trigger the next.
    pub fn incremental_bytes(&self) -> u64 {
        (self.snapshot_min_bytes / 8).max(1)
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            snapshot_min_bytes: DEFAULT_SNAPSHOT_MIN_BYTES,
            sync: SyncMode::PerBatch,
            accept_data_loss: false,
        }
    }
}

/// Where the sequencer makes batches durable.
pub trait Journal: fmt::Debug + Send + 'static {
    /// Appends a batch of entries and returns only once they are durable.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;

    /// The number the next entry appended will take, when the journal keeps bytes beside a batch
    /// ([`Journal::append_carrying`]); `None` when it cannot.
    fn carrying_from(&self) -> Option<u64> {
        None
    }

    /// Appends a batch of entries with `carried` (the batch's audit records) kept beside it,
    /// durable together with one sync, and read back by recovery ([`Recovered::carried`]). Only
    /// for a journal whose [`Journal::carrying_from`] is `Some`.
    fn append_carrying(&mut self, entries: &[Entry], carried: &[u8]) -> Result<(), StoreError> {
        let _ = (entries, carried);
        Err(StoreError::Refused(
            "this journal cannot keep audit records beside its entries".into(),
        ))
    }

    /// The snapshot the journal wants of the state after the last append, if any; `closing` is
    /// set once, when the sequencer stops.
    fn snapshot_due(&self, closing: bool) -> Option<SnapshotKind> {
        let _ = closing;
        None
    }

    /// True when the journal takes incremental snapshots, so the caller must keep what changed
    /// since the last snapshot.
    fn incremental(&self) -> bool {
        false
    }

    /// Takes a snapshot of the state after the last append. It may be written in the background;
    /// the journal stays complete until it is durable.
    fn snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let _ = snapshot;
        Ok(())
    }

    /// Takes an incremental snapshot of the state after the last append, as for `snapshot`.
    fn delta(&mut self, delta: Delta) -> Result<(), StoreError> {
        let _ = delta;
        Ok(())
    }

    /// Waits for background work (a snapshot being written) to finish.
    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
