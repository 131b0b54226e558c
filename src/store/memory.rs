//! A journal kept in memory: the seam for tests and for runs that need no durability.

use std::sync::{Arc, Mutex};

use super::{Entry, Journal, StoreError};

/// Keeps every entry in memory; clones share the same entries.
#[derive(Debug, Clone, Default)]
pub struct MemoryJournal {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl MemoryJournal {
    /// Every entry appended so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Journal for MemoryJournal {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.entries
            .lock()
            .map_err(|_| StoreError::Corrupt("memory journal lock poisoned".into()))?
            .extend_from_slice(entries);
        Ok(())
    }
}
