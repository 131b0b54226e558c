//! Sectioned files' bytes: where they are read from (a file, or a buffer already in memory, as
//! the PostgreSQL store's snapshot rows are) and how a snapshot file is written without crowding
//! the journal's syncs.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// Where a sectioned payload is read from: a file, or a buffer already in memory.
pub(crate) trait ReadAt: Sync {
    /// Its length in bytes.
    fn byte_len(&self) -> std::io::Result<u64>;
    /// Fills `buf` from `offset`, or fails if it runs past the end.
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for File {
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }

    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let from = usize::try_from(offset)
            .ok()
            .filter(|&o| o <= <[u8]>::len(self))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        let bytes = self[from..]
            .get(..buf.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Bytes a snapshot writer leaves unsynced at most. The journal's syncs share the disk's queue
/// with it: one sync of a whole snapshot put tens of megabytes ahead of them (journal syncs of
/// 50-400 ms while one was written), so it syncs as it goes, as PostgreSQL's checkpoints do.
const SNAPSHOT_SYNC_EVERY: usize = 1024 * 1024;

/// Writes a file, syncing its data every `SNAPSHOT_SYNC_EVERY` bytes.
pub(super) struct PacedWriter {
    file: File,
    unsynced: usize,
}

impl PacedWriter {
    pub(super) fn new(file: File) -> Self {
        Self { file, unsynced: 0 }
    }

    pub(super) fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(SNAPSHOT_SYNC_EVERY - self.unsynced);
            self.file.write_all(&bytes[..n])?;
            bytes = &bytes[n..];
            self.unsynced += n;
            if self.unsynced == SNAPSHOT_SYNC_EVERY {
                self.file.sync_data()?;
                self.unsynced = 0;
            }
        }
        Ok(())
    }

    /// The file, every byte written but not necessarily synced.
    pub(super) fn finish(self) -> File {
        self.file
    }
}
