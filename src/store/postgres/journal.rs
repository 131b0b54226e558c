//! The journal on PostgreSQL: each batch is one multi-row INSERT (one transaction, one commit
//! sync) that checks the leader's epoch inside the statement, so a leader that lost its lease
//! cannot commit anything, at no extra round trip. Snapshot rows, full and incremental, are due
//! as the file store's snapshots are (by journal bytes, see `StoreOptions`) and go to a writer
//! thread with its own session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::Instant;

use postgres::Client;

use super::connect::{PgTarget, pg_error};
use super::lease::LeaseKeeper;
use super::local::LocalCopy;
use super::{delta, snapshot};
use crate::store::writer::Due;
use crate::store::{
    Delta, Directory, Entry, Journal, Snapshot, SnapshotKind, SnapshotObserver, StoreError,
    StoreOptions,
};

/// Where a new leader's journal starts, and what its snapshot trigger weighs from there.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Position {
    /// The next entry's number.
    pub next: u64,
    /// Entries covered by the last snapshot row, full or incremental.
    pub covered: u64,
    /// The last full row's size.
    pub full_bytes: u64,
    /// The incremental rows' sizes since it, added up.
    pub deltas_bytes: u64,
    /// Journal bytes after `covered`, replayed into the core; an incremental row cannot hold
    /// what they changed, so the next snapshot row is full.
    pub replayed_bytes: u64,
}

/// A snapshot row for the writer thread.
enum Job {
    Full { lsn: u64, snapshot: Snapshot },
    Incremental { lsn: u64, after: u64, delta: Delta },
}

/// What the writer thread tells the journal: the sizes the snapshot trigger weighs, and whether
/// a row failed (the next must then be full: an incremental row would follow one that is not
/// there); and whom it tells of each row written (the broker's metrics).
#[derive(Default)]
struct Written {
    full: AtomicU64,
    deltas: AtomicU64,
    failed: AtomicBool,
    observer: OnceLock<SnapshotObserver>,
}

/// The snapshot writer thread: where to send snapshot rows, and its handle.
type Writer = (mpsc::Sender<Job>, thread::JoinHandle<()>);

/// The leader's journal.
pub struct PgJournal {
    client: Client,
    url: String,
    epoch: i64,
    next: u64,
    options: StoreOptions,
    /// Entries covered by the last snapshot row handed over: the next incremental row follows it.
    covered: u64,
    /// Journal bytes since the last snapshot row handed over, and since the last full one.
    since_snapshot: u64,
    since_full: u64,
    full_due: bool,
    writer: Option<Writer>,
    busy: Arc<AtomicBool>,
    written: Arc<Written>,
    lease: Option<LeaseKeeper>,
    lsns: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

impl PgJournal {
    /// The journal of the lease held by `lease`, appending from `at`.
    pub(crate) fn new(
        target: &PgTarget,
        lease: LeaseKeeper,
        directory: Directory,
        at: Position,
        options: StoreOptions,
        local: Option<LocalCopy>,
    ) -> Result<Self, StoreError> {
        let epoch = lease.epoch();
        let busy = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Written {
            full: AtomicU64::new(at.full_bytes),
            deltas: AtomicU64::new(at.deltas_bytes),
            failed: AtomicBool::new(false),
            observer: OnceLock::new(),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let writer = {
            let mut client = target.connect()?;
            let url = target.url().to_string();
            let (busy, written) = (busy.clone(), written.clone());
            thread::Builder::new()
                .name("labaid-pg-snapshots".into())
                .spawn(move || {
                    for job in rx {
                        let fence = (url.as_str(), epoch);
                        write_row(
                            &mut client,
                            fence,
                            &directory,
                            job,
                            &written,
                            local.as_ref(),
                        );
                        busy.store(false, Ordering::Release);
                    }
                })?
        };
        Ok(Self {
            client: target.connect()?,
            url: target.url().to_string(),
            epoch,
            next: at.next,
            options,
            covered: at.covered,
            since_snapshot: at.replayed_bytes,
            since_full: at.replayed_bytes,
            full_due: at.next > at.covered,
            writer: Some((tx, writer)),
            busy,
            written,
            lease: Some(lease),
            lsns: Vec::new(),
            bodies: Vec::new(),
        })
    }

    /// The epoch this journal writes under.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Entries journaled so far (the next entry's number).
    pub fn entries(&self) -> u64 {
        self.next
    }

    /// Has `observer` told of each snapshot row written from now on, with the bytes stored (one
    /// observer; a second is ignored). It runs on the snapshot writer's thread.
    pub fn observe_snapshots(&self, observer: SnapshotObserver) {
        let _ = self.written.observer.set(observer);
    }

    /// True while a snapshot handed over is still being written.
    pub fn writing_snapshot(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    fn send(&mut self, job: Job) -> Result<(), StoreError> {
        let Some((tx, _)) = &self.writer else {
            return Err(StoreError::Refused("the journal is closed".into()));
        };
        self.busy.store(true, Ordering::Release);
        tx.send(job)
            .map_err(|_| StoreError::Refused("the snapshot writer stopped".into()))?;
        self.covered = self.next;
        self.since_snapshot = 0;
        Ok(())
    }
}

/// Writes one snapshot row (on the writer thread), and notes its size or its failure.
fn write_row(
    client: &mut Client,
    (url, epoch): (&str, i64),
    directory: &Directory,
    job: Job,
    written: &Written,
    local: Option<&LocalCopy>,
) {
    let started = Instant::now();
    let (kind, lsn, result) = match job {
        Job::Full { lsn, snapshot } => {
            let state = snapshot.state.into_state();
            let events = &snapshot.events;
            let result =
                snapshot::write(client, (url, epoch), lsn, directory, state, events, local);
            if let Ok(Some(bytes)) = result {
                written.full.store(bytes.raw as u64, Ordering::Relaxed);
                written.deltas.store(0, Ordering::Relaxed);
            }
            (SnapshotKind::Full, lsn, result)
        }
        Job::Incremental { lsn, after, delta } => {
            let fence = (url, epoch);
            let result = delta::write(client, fence, (lsn, after), directory, &delta, local);
            if let Ok(Some(bytes)) = result {
                written
                    .deltas
                    .fetch_add(bytes.raw as u64, Ordering::Relaxed);
            }
            (SnapshotKind::Incremental, lsn, result)
        }
    };
    let took = started.elapsed();
    match result {
        Ok(Some(bytes)) => {
            tracing::info!(
                store.snapshot_kind = kind.name(),
                store.snapshot_entries = lsn,
                bytes = bytes.raw,
                stored = bytes.stored,
                ms = took.as_millis() as u64,
                "snapshot row written"
            );
            if let Some(observe) = written.observer.get() {
                observe(kind, bytes.stored as u64, took);
            }
        }
        Ok(None) => tracing::warn!(
            store.epoch = epoch,
            "snapshot not written: another broker holds the lease"
        ),
        // The journal rows stay until a full snapshot covers them: nothing lost.
        Err(e) => {
            written.failed.store(true, Ordering::Release);
            tracing::error!(store.snapshot_kind = kind.name(), error = %e, "snapshot row not written");
        }
    }
}

impl std::fmt::Debug for PgJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJournal")
            .field("url", &self.url)
            .field("epoch", &self.epoch)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Journal for PgJournal {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.lsns.clear();
        self.bodies.clear();
        for (i, entry) in entries.iter().enumerate() {
            self.lsns.push((self.next + i as u64) as i64);
            self.bodies.push(
                postcard::to_stdvec(entry)
                    .map_err(|e| StoreError::Corrupt(format!("cannot encode an entry: {e}")))?,
            );
        }
        // FOR SHARE: a standby taking the lease waits for this statement's transaction, and
        // this statement waits for a takeover in flight and then sees the new epoch.
        let inserted = self
            .client
            .execute(
                "INSERT INTO labaid_journal (lsn, epoch, body) \
                 SELECT e.lsn, l.epoch, e.body \
                 FROM (SELECT epoch FROM labaid_lease WHERE id = 1 AND epoch = $3 FOR SHARE) l, \
                      unnest($1::bigint[], $2::bytea[]) AS e(lsn, body)",
                &[&self.lsns, &self.bodies, &self.epoch],
            )
            .map_err(|e| pg_error(&self.url, e))?;
        if inserted == 0 && !entries.is_empty() {
            return Err(StoreError::Refused(format!(
                "fenced: another broker took the lease from epoch {}; nothing was committed",
                self.epoch
            )));
        }
        if inserted != entries.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "{inserted} of {} journal rows inserted",
                entries.len()
            )));
        }
        let bytes: usize = self.bodies.iter().map(Vec::len).sum();
        self.next += entries.len() as u64;
        self.since_snapshot += bytes as u64;
        self.since_full += bytes as u64;
        Ok(())
    }

    fn snapshot_due(&self, closing: bool) -> Option<SnapshotKind> {
        if !closing && self.busy.load(Ordering::Acquire) {
            return None;
        }
        Due {
            since_snapshot: self.since_snapshot,
            since_full: self.since_full,
            full_size: self.written.full.load(Ordering::Relaxed),
            deltas_size: self.written.deltas.load(Ordering::Relaxed),
            full_due: self.full_due || self.written.failed.load(Ordering::Acquire),
        }
        .kind(&self.options, closing)
    }

    fn incremental(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.full_due = false;
        self.written.failed.store(false, Ordering::Release);
        self.since_full = 0;
        let lsn = self.next;
        self.send(Job::Full { lsn, snapshot })
    }

    fn delta(&mut self, delta: Delta) -> Result<(), StoreError> {
        let (lsn, after) = (self.next, self.covered);
        self.send(Job::Incremental { lsn, after, delta })
    }

    fn close(&mut self) -> Result<(), StoreError> {
        if let Some((tx, writer)) = self.writer.take() {
            drop(tx);
            let _ = writer.join();
        }
        if let Some(lease) = self.lease.take() {
            lease.release()?;
        }
        Ok(())
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        if let Some((tx, writer)) = self.writer.take() {
            drop(tx);
            let _ = writer.join();
        }
    }
}
