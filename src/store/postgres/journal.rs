//! The journal on PostgreSQL: each batch is one multi-row INSERT (one transaction, one commit
//! sync) that checks the leader's epoch inside the statement, so a leader that lost its lease
//! cannot commit anything, at no extra round trip. Snapshots go to a writer thread with its own
//! session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Instant;

use postgres::Client;

use super::connect::{PgTarget, pg_error};
use super::lease::LeaseKeeper;
use super::snapshot;
use crate::store::{Directory, Entry, Journal, Snapshot, SnapshotKind, StoreError};

/// Entries between full snapshots by default.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 200_000;

/// The snapshot writer thread: where to send snapshots, and its handle.
type Writer = (mpsc::Sender<(u64, Snapshot)>, thread::JoinHandle<()>);

/// The leader's journal.
pub struct PgJournal {
    client: Client,
    url: String,
    epoch: i64,
    next: u64,
    since_snapshot: u64,
    snapshot_every: u64,
    writer: Option<Writer>,
    busy: Arc<AtomicBool>,
    lease: Option<LeaseKeeper>,
    lsns: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

impl PgJournal {
    /// The journal of the lease held by `lease`, appending from entry `next`.
    pub(crate) fn new(
        target: &PgTarget,
        lease: LeaseKeeper,
        directory: Directory,
        next: u64,
        since_snapshot: u64,
        snapshot_every: u64,
    ) -> Result<Self, StoreError> {
        let epoch = lease.epoch();
        let busy = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(u64, Snapshot)>();
        let writer = {
            let mut client = target.connect()?;
            let url = target.url().to_string();
            let busy = busy.clone();
            thread::Builder::new()
                .name("labaid-pg-snapshots".into())
                .spawn(move || {
                    for (lsn, snap) in rx {
                        let started = Instant::now();
                        let state = snap.state.into_state();
                        match snapshot::write(
                            &mut client,
                            &url,
                            epoch,
                            lsn,
                            &directory,
                            state,
                            &snap.events,
                        ) {
                            Ok(Some(bytes)) => tracing::info!(
                                store.snapshot_entries = lsn,
                                bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "snapshot row written"
                            ),
                            Ok(None) => tracing::warn!(
                                store.epoch = epoch,
                                "snapshot not written: another broker holds the lease"
                            ),
                            // The journal rows stay until a snapshot covers them: nothing lost.
                            Err(e) => tracing::error!(error = %e, "snapshot row not written"),
                        }
                        busy.store(false, Ordering::Release);
                    }
                })?
        };
        Ok(Self {
            client: target.connect()?,
            url: target.url().to_string(),
            epoch,
            next,
            since_snapshot,
            snapshot_every: snapshot_every.max(1),
            writer: Some((tx, writer)),
            busy,
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

    /// True while a snapshot handed over is still being written.
    pub fn writing_snapshot(&self) -> bool {
        self.busy.load(Ordering::Acquire)
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
        self.next += entries.len() as u64;
        self.since_snapshot += entries.len() as u64;
        Ok(())
    }

    fn snapshot_due(&self, closing: bool) -> Option<SnapshotKind> {
        let due = if closing {
            self.since_snapshot > 0
        } else {
            self.since_snapshot >= self.snapshot_every && !self.busy.load(Ordering::Acquire)
        };
        due.then_some(SnapshotKind::Full)
    }

    fn snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let Some((tx, _)) = &self.writer else {
            return Err(StoreError::Refused("the journal is closed".into()));
        };
        self.busy.store(true, Ordering::Release);
        tx.send((self.next, snapshot))
            .map_err(|_| StoreError::Refused("the snapshot writer stopped".into()))?;
        self.since_snapshot = 0;
        Ok(())
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
