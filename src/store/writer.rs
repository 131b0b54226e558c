//! The snapshot writer: the thread that writes snapshots one at a time, off the append path,
//! and the trigger that decides which kind is due.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use super::codec::write_snapshot;
use super::delta::write_delta;
use super::segment::{obsolete_at, parse_name, remove_files, snapshot_name};
use super::{Delta, Directory, Snapshot, SnapshotKind, StoreError, StoreOptions};

/// What a graceful stop says when its snapshot cannot be written (on a full disk, say).
pub(super) const FINAL_SNAPSHOT_FAILED: &str = "the final snapshot could not be written; stopped \
     with the journal intact, and the next start replays it";

/// A snapshot for the writer to write.
pub(super) enum Job {
    /// `last` when it is the one a graceful stop takes.
    Full {
        lsn: u64,
        snapshot: Snapshot,
        last: bool,
    },
    Incremental {
        lsn: u64,
        after: u64,
        delta: Delta,
    },
}

/// What the writer keeps for others: the sizes the snapshot trigger weighs, and whom to tell of
/// each snapshot written.
pub(super) struct Written {
    /// The last full snapshot's size.
    pub(super) full: AtomicU64,
    /// The incremental snapshots' sizes since it, added up.
    pub(super) deltas: AtomicU64,
    /// Told of each snapshot once it is durable (see [`super::FileJournal::observe_snapshots`]).
    pub(super) observer: OnceLock<SnapshotObserver>,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("full", &self.full)
            .field("deltas", &self.deltas)
            .field("observed", &self.observer.get().is_some())
            .finish()
    }
}

impl Written {
    fn observe(&self, kind: SnapshotKind, bytes: u64, took: Duration) {
        if let Some(observer) = self.observer.get() {
            observer(kind, bytes, took);
        }
    }
}

/// Told of each snapshot the writer made durable: its kind, bytes, and the time it took from
/// being handed over (rebuilding indexes, encoding, writing and syncing).
pub type SnapshotObserver = Box<dyn Fn(SnapshotKind, u64, Duration) + Send + Sync>;

/// What the snapshot trigger weighs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Due {
    /// Journal bytes since the last snapshot, full or incremental.
    pub(super) since_snapshot: u64,
    /// Journal bytes since the last full snapshot.
    pub(super) since_full: u64,
    /// The last full snapshot's size.
    pub(super) full_size: u64,
    /// The incremental snapshots' sizes since it, added up.
    pub(super) deltas_size: u64,
    /// Entries from before this start follow the last snapshot (see `FileJournal::full_due`).
    pub(super) full_due: bool,
}

impl Due {
    /// The snapshot due, if any.
    pub(super) fn kind(self, options: &StoreOptions, closing: bool) -> Option<SnapshotKind> {
        if closing {
            // A clean stop leaves one full snapshot: the next start reads nothing else.
            return (self.since_snapshot > 0 || self.deltas_size > 0).then_some(SnapshotKind::Full);
        }
        if self.since_snapshot < options.incremental_bytes() {
            return None;
        }
        // Incremental ones cost what changed, but a restart reads each of them after the full
        // one: once they add up to half of it, the next is full. Not before the journal since
        // the full one reaches the minimum, though: while the state is small and growing, half
        // of it comes round every few incremental ones, and each full one pauses deciding for
        // its copy.
        let compact = self.deltas_size.saturating_mul(2) >= self.full_size
            && self.since_full >= options.snapshot_min_bytes;
        Some(if self.full_due || compact {
            SnapshotKind::Full
        } else {
            SnapshotKind::Incremental
        })
    }
}

/// The thread that writes snapshots, one at a time.
#[derive(Debug)]
pub(super) struct Writer {
    tx: Option<mpsc::SyncSender<Job>>,
    pub(super) busy: Arc<AtomicBool>,
    pub(super) written: Arc<Written>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(
        dir: PathBuf,
        directory: Arc<Directory>,
        full: u64,
        deltas: u64,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Written {
            full: AtomicU64::new(full),
            deltas: AtomicU64::new(deltas),
            observer: OnceLock::new(),
        });
        let (thread_busy, thread_written) = (busy.clone(), written.clone());
        let thread = thread::Builder::new()
            .name("labaid-snapshot".into())
            .spawn(move || {
                for job in rx {
                    let started = std::time::Instant::now();
                    let (last, entries) = match &job {
                        Job::Full { lsn, last, .. } => (*last, *lsn),
                        Job::Incremental { lsn, .. } => (false, *lsn),
                    };
                    let result = match job {
                        Job::Full { lsn, snapshot, .. } => write_snapshot(
                            &dir,
                            lsn,
                            &directory,
                            snapshot.state.into_state(),
                            &snapshot.events,
                        )
                        .and_then(|bytes| {
                            remove_files(&dir, |name| obsolete_at(name, lsn))?;
                            thread_written.full.store(bytes, Ordering::Relaxed);
                            thread_written.deltas.store(0, Ordering::Relaxed);
                            thread_written.observe(SnapshotKind::Full, bytes, started.elapsed());
                            tracing::info!(
                                entries = lsn,
                                bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "snapshot written"
                            );
                            Ok(())
                        }),
                        Job::Incremental { lsn, after, delta } => {
                            write_delta(&dir, lsn, after, &directory, &delta).and_then(|bytes| {
                                // The segments before it are covered; the snapshots it follows
                                // are still needed.
                                remove_files(&dir, |name| {
                                    parse_name(name, "journal-", ".log").is_some_and(|n| n < lsn)
                                })?;
                                thread_written.deltas.fetch_add(bytes, Ordering::Relaxed);
                                thread_written.observe(
                                    SnapshotKind::Incremental,
                                    bytes,
                                    started.elapsed(),
                                );
                                tracing::info!(
                                    entries = lsn,
                                    bytes,
                                    requests = delta.requests.len(),
                                    ms = started.elapsed().as_millis() as u64,
                                    "incremental snapshot written"
                                );
                                Ok(())
                            })
                        }
                    };
                    if let Err(err) = result {
                        if last {
                            // Stopping anyway, and the journal holds every entry the snapshot
                            // would have covered: give back the space a half-written one took
                            // (a full disk is the likely cause) and end like any clean stop.
                            let tmp = format!("{}.tmp", snapshot_name(entries));
                            let _ = std::fs::remove_file(dir.join(tmp));
                            tracing::warn!(error = %err, entries, "{FINAL_SNAPSHOT_FAILED}");
                            thread_busy.store(false, Ordering::Release);
                            continue;
                        }
                        // The journal still holds everything, but a failed sync must never be
                        // retried: stop, and let the next start recover from what is durable.
                        tracing::error!(error = %err, "snapshot failed; stopping");
                        std::process::abort();
                    }
                    thread_busy.store(false, Ordering::Release);
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            busy,
            written,
            thread: Some(thread),
        })
    }

    pub(super) fn send(&mut self, job: Job) -> Result<(), StoreError> {
        self.busy.store(true, Ordering::Release);
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| StoreError::Io(std::io::Error::other("the snapshot writer stopped")))
    }

    pub(super) fn finish(&mut self) -> Result<(), StoreError> {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| {
                StoreError::Io(std::io::Error::other("the snapshot writer panicked"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod due_tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn due(since_snapshot: u64, since_full: u64, full_size: u64, deltas_size: u64) -> Due {
        Due {
            since_snapshot,
            since_full,
            full_size,
            deltas_size,
            full_due: false,
        }
    }

    #[test]
    fn incremental_every_eighth_of_the_minimum_full_once_they_weigh_half_the_full_one() {
        use SnapshotKind::{Full, Incremental};
        let options = StoreOptions::default();
        assert_eq!(options.incremental_bytes(), 8 * MIB);
        let replayed = Due {
            full_due: true,
            ..due(8 * MIB, 8 * MIB, 300 * MIB, 0)
        };
        let cases = [
            (
                due(8 * MIB - 1, 100 * MIB, 300 * MIB, 0),
                None,
                "below the trigger",
            ),
            (
                due(8 * MIB, 8 * MIB, 300 * MIB, 0),
                Some(Incremental),
                "the first since a full one",
            ),
            (
                due(8 * MIB, 80 * MIB, 300 * MIB, 149 * MIB),
                Some(Incremental),
                "under half",
            ),
            (
                due(8 * MIB, 80 * MIB, 300 * MIB, 150 * MIB),
                Some(Full),
                "half the full one",
            ),
            // A small state: its incremental ones soon weigh half of it, but full ones wait for
            // the minimum of journal since the last.
            (
                due(8 * MIB, 40 * MIB, 10 * MIB, 30 * MIB),
                Some(Incremental),
                "a small state",
            ),
            (
                due(8 * MIB, 64 * MIB, 10 * MIB, 30 * MIB),
                Some(Full),
                "its minimum reached",
            ),
            (replayed, Some(Full), "after a start that replayed entries"),
        ];
        for (due, expected, case) in cases {
            assert_eq!(due.kind(&options, false), expected, "{case}");
        }
    }

    #[test]
    fn a_clean_stop_folds_everything_into_one_full_snapshot() {
        let options = StoreOptions::default();
        let kind = |d: Due| d.kind(&options, true);
        assert_eq!(kind(due(0, 0, 300 * MIB, 0)), None);
        assert_eq!(kind(due(1, 1, 300 * MIB, 0)), Some(SnapshotKind::Full));
        assert_eq!(kind(due(0, 9, 300 * MIB, 9)), Some(SnapshotKind::Full));
    }
}
