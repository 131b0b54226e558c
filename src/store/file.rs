//! The file journal: segments of checksummed records synced once per append (group commit), and
//! snapshots handed to a background writer so that acknowledgements do not wait for them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::loss::Mark;
use super::record;
use super::segment::{BatchRef, RESERVE, SEGMENT_HEADER, create_segment};
use super::writer::{Due, FINAL_SNAPSHOT_FAILED, Job, SnapshotObserver, Writer};
use super::{
    Delta, Directory, Entry, Journal, Snapshot, SnapshotKind, StoreError, StoreOptions, SyncMode,
};

/// Where recovery left the journal: the segment to append to and the counters.
#[derive(Debug)]
pub(crate) struct Tail {
    /// The high-water mark, already at `next`.
    pub(crate) mark: Mark,
    pub(crate) segment: File,
    pub(crate) segment_first: u64,
    /// Offset just past the segment's last record: where the next one goes.
    pub(crate) segment_end: u64,
    /// The segment's length on disk, reserved space included.
    pub(crate) segment_len: u64,
    pub(crate) next: u64,
    pub(crate) since_snapshot: u64,
    /// Entries covered by the last snapshot, full or incremental.
    pub(crate) snapshot_entries: u64,
    pub(crate) last_snapshot_size: u64,
    /// The incremental snapshots' sizes since the last full one, added up.
    pub(crate) deltas_size: u64,
}

/// The journal in a data directory. Made by [`super::open`], which recovers first.
#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
    segment: File,
    segment_first: u64,
    /// Offset just past the segment's last record.
    segment_end: u64,
    /// The segment's length on disk: records, then zeros reserved for the next ones.
    segment_len: u64,
    /// Number of the next entry.
    next: u64,
    /// Journal bytes written since the last snapshot, full or incremental.
    since_snapshot: u64,
    /// Journal bytes written since the last full snapshot (at a start, estimated: the bytes
    /// after the last snapshot plus the incremental ones' size, as the journal they covered is
    /// gone).
    since_full: u64,
    /// Entries covered by the last snapshot, full or incremental.
    snapshot_entries: u64,
    /// True until a full snapshot follows entries journaled before this journal was opened: the
    /// caller noted only the changes it made itself, so an incremental one would miss those.
    full_due: bool,
    /// Set once the sequencer asks for the snapshot of a graceful stop: that one may fail (a full
    /// disk) without aborting, as the journal it would have shortened is complete.
    closing: AtomicBool,
    options: StoreOptions,
    payload: Vec<u8>,
    frames: Vec<u8>,
    writer: Writer,
    /// Entries synced, recorded after each append so that a start notices a journal cut short.
    mark: Mark,
    _lock: File,
}

impl FileJournal {
    pub(crate) fn new(
        dir: PathBuf,
        lock: File,
        directory: Directory,
        tail: Tail,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let writer = Writer::start(
            dir.clone(),
            Arc::new(directory),
            tail.last_snapshot_size,
            tail.deltas_size,
        )?;
        Ok(Self {
            dir,
            segment: tail.segment,
            segment_first: tail.segment_first,
            segment_end: tail.segment_end,
            segment_len: tail.segment_len,
            next: tail.next,
            since_snapshot: tail.since_snapshot,
            since_full: tail.since_snapshot + tail.deltas_size,
            snapshot_entries: tail.snapshot_entries,
            full_due: tail.since_snapshot > 0,
            closing: AtomicBool::new(false),
            options,
            payload: Vec::new(),
            frames: Vec::new(),
            writer,
            mark: tail.mark,
            _lock: lock,
        })
    }

    /// Has `observer` told of each snapshot written from now on (one observer; a second is
    /// ignored). It runs on the snapshot writer's thread.
    pub fn observe_snapshots(&self, observer: SnapshotObserver) {
        let _ = self.writer.written.observer.set(observer);
    }

    /// Offset just past the last record in the current segment.
    #[cfg(test)]
    pub(crate) fn segment_end(&self) -> u64 {
        self.segment_end
    }

    /// True while a snapshot handed over is still being written.
    pub fn writing_snapshot(&self) -> bool {
        self.writer.busy.load(Ordering::Acquire)
    }

    /// Waits until the snapshot writer is idle.
    #[cfg(test)]
    pub(crate) fn wait_for_writer(&self) {
        while self.writing_snapshot() {
            std::thread::yield_now();
        }
    }

    /// Number of entries journaled since the data directory was made.
    pub fn entries(&self) -> u64 {
        self.next
    }

    /// Frames a record of `entries` numbered from `first`, with `carried` after them: readers
    /// that know nothing of it (an older build's) decode the batch and ignore the rest.
    fn push_record(
        &mut self,
        first: u64,
        entries: &[Entry],
        carried: &[u8],
    ) -> Result<(), StoreError> {
        self.payload.clear();
        let payload = std::mem::take(&mut self.payload);
        self.payload = postcard::to_extend(&BatchRef { first, entries }, payload)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode entries: {e}")))?;
        self.payload.extend_from_slice(carried);
        record::frame(&self.payload, &mut self.frames);
        Ok(())
    }

    fn write_and_sync(&mut self) -> Result<(), StoreError> {
        let end = self.segment_end + self.frames.len() as u64;
        if end > self.segment_len {
            self.reserve(end + RESERVE)?;
        }
        self.segment.write_all_at(&self.frames, self.segment_end)?;
        self.segment.sync_data()?;
        self.segment_end = end;
        self.since_snapshot += self.frames.len() as u64;
        self.since_full += self.frames.len() as u64;
        self.frames.clear();
        Ok(())
    }

    /// Gives back the zeros reserved past the last record, so that a segment no longer written
    /// to (rotated at a snapshot, or at a clean stop) ends at its last record, as segments from
    /// earlier builds did. A crash before this is durable leaves the zeros: still a valid tail.
    fn drop_reserved(&mut self) -> Result<(), StoreError> {
        if self.segment_len > self.segment_end {
            self.segment.set_len(self.segment_end)?;
            self.segment.sync_all()?;
            self.segment_len = self.segment_end;
        }
        Ok(())
    }

    /// Starts a new segment at the next entry for a snapshot of the state before it, so that
    /// once the snapshot is durable every older segment can be removed whole; returns the
    /// entries the snapshot covers.
    fn rotate(&mut self) -> Result<u64, StoreError> {
        if self.segment_first != self.next {
            self.drop_reserved()?;
            self.segment = create_segment(&self.dir, self.next)?;
            self.segment_first = self.next;
            self.segment_end = SEGMENT_HEADER as u64;
            self.segment_len = SEGMENT_HEADER as u64;
        }
        self.since_snapshot = 0;
        self.snapshot_entries = self.next;
        Ok(self.next)
    }

    /// Writes zeros up to `len`. Records then overwrite blocks the file already has, so a sync
    /// flushes their data alone instead of also writing the file's new size (one I/O fewer per
    /// sync). Recovery reads a zero tail as reserved space, not damage. The next sync makes the
    /// zeros and the new length durable.
    fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = self.segment_len;
        while at < len {
            let n = ZEROS.len().min((len - at) as usize);
            self.segment.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        self.segment_len = len;
        Ok(())
    }
}

impl Journal for FileJournal {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.append_carrying(entries, &[])
    }

    fn carrying_from(&self) -> Option<u64> {
        Some(self.next)
    }

    fn append_carrying(&mut self, entries: &[Entry], carried: &[u8]) -> Result<(), StoreError> {
        self.frames.clear();
        match self.options.sync {
            SyncMode::PerBatch => {
                self.push_record(self.next, entries, carried)?;
                self.write_and_sync()?;
            }
            SyncMode::PerEntry => {
                let last = entries.len().saturating_sub(1);
                for (i, entry) in entries.iter().enumerate() {
                    let with = if i == last { carried } else { &[] };
                    self.push_record(self.next + i as u64, std::slice::from_ref(entry), with)?;
                    self.write_and_sync()?;
                }
            }
        }
        self.next += entries.len() as u64;
        self.mark.record(self.next)
    }

    fn snapshot_due(&self, closing: bool) -> Option<SnapshotKind> {
        if closing {
            self.closing.store(true, Ordering::Relaxed);
        }
        if !closing && self.writer.busy.load(Ordering::Acquire) {
            return None;
        }
        Due {
            since_snapshot: self.since_snapshot,
            since_full: self.since_full,
            full_size: self.writer.written.full.load(Ordering::Relaxed),
            deltas_size: self.writer.written.deltas.load(Ordering::Relaxed),
            full_due: self.full_due,
        }
        .kind(&self.options, closing)
    }

    fn incremental(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let last = self.closing.load(Ordering::Relaxed);
        let lsn = match self.rotate() {
            Ok(lsn) => lsn,
            // The new segment could not be made (a full disk): the old one is whole and synced.
            Err(err) if last => {
                tracing::warn!(error = %err, entries = self.next, "{FINAL_SNAPSHOT_FAILED}");
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        self.full_due = false;
        self.since_full = 0;
        self.writer.send(Job::Full {
            lsn,
            snapshot,
            last,
        })
    }

    fn delta(&mut self, delta: Delta) -> Result<(), StoreError> {
        let after = self.snapshot_entries;
        let lsn = self.rotate()?;
        self.writer.send(Job::Incremental { lsn, after, delta })
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.drop_reserved()?;
        self.mark.sync()?;
        self.writer.finish()
    }
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        let _ = self.writer.finish();
    }
}
