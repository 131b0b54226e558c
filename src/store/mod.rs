//! Durability: the journal every mutation passes through before it is acknowledged.

mod memory;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::Timestamp;
use crate::routing::Command;

pub use memory::MemoryJournal;

/// One journaled change: a command and the time it was applied at. Replaying the entries in order
/// through the core rebuilds the state exactly, because the core is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When the command was applied.
    pub time: Timestamp,
    /// The command.
    pub command: Command,
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
}

/// Where the sequencer makes batches durable.
pub trait Journal: fmt::Debug + Send + 'static {
    /// Appends a batch of entries and returns only once they are durable.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;
}
