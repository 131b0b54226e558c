//! The audit writer thread: chains the entries handed to it, writes whatever arrived since its
//! last write and syncs once for all of it (group commit), then answers each waiter; entries the
//! journal already holds are synced at most [`SYNC_INTERVAL`] later instead. Rotates
//! `audit.log` when it is full or a new day begins, the chain running on into the next file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::chain::{self, Ids};
use super::files::{self, AUDIT_FILE};
use super::{AuditOptions, Record};
use crate::error::Error;

/// Bytes of a batch held before they are written, so a huge batch does not sit in memory.
const WRITE_AT: usize = 256 * 1024;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest an entry the journal already holds waits for the trail's own sync.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The writer's answers to a batch: `written` (when asked for) true once every entry of it is in
/// the file, not yet synced; `durable` true once it is synced.
pub(super) struct Ack {
    pub(super) written: Option<oneshot::Sender<bool>>,
    pub(super) durable: oneshot::Sender<bool>,
}

pub(super) enum Message {
    /// Entries to make durable before `Ack` says so.
    Records(Vec<Record>, Ack),
    /// Entries already durable in the journal: written at once, synced within [`SYNC_INTERVAL`].
    Journaled(Vec<Record>),
    /// Sync everything written, then answer.
    Sync(oneshot::Sender<bool>),
    Close,
}

/// The file being written and where the chain stands.
pub(super) struct Writer {
    dir: PathBuf,
    file: fs::File,
    seq: u64,
    head: String,
    /// Bytes in `file`, written or held in `pending`.
    size: u64,
    /// The sequence number and UTC day of the file's first entry, once it has one.
    first: Option<(u64, i64)>,
    options: AuditOptions,
    pending: Vec<u8>,
    scratch: Vec<u8>,
    next_head: String,
}

impl Writer {
    /// Opens `dir/audit.log` to continue the chain, wherever it ends: in it, or in the newest
    /// rotated file (a crash right after a rotation).
    pub(super) fn open(dir: &Path, options: AuditOptions) -> Result<Self, Error> {
        let path = dir.join(AUDIT_FILE);
        drop_torn_tail(&path)?;
        let internal = |e: chain::ReadError| Error::Internal(e.to_string());
        let last = files::chain_end(dir).map_err(internal)?;
        let (seq, head) = last.map_or((0, chain::GENESIS.to_string()), |e| (e.seq, e.hash));
        let first = chain::first_entry(&path)
            .map_err(internal)?
            .map(|e| (e.seq, day(e.time_ms)));
        let file = files::open_append(&path)
            .map_err(|e| Error::Internal(format!("cannot open {}: {e}", path.display())))?;
        let size = file
            .metadata()
            .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?
            .len();
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            seq,
            head,
            size,
            first,
            options,
            pending: Vec::new(),
            scratch: Vec::new(),
            next_head: String::with_capacity(64),
        })
    }

    /// Chains `r` onto the log, rotating first when the file is due.
    fn append(&mut self, r: &Record) -> std::io::Result<()> {
        if self.rotation_due(r.time_ms) {
            self.rotate()?;
        }
        self.seq += 1;
        let mut id_text = uuid::Uuid::encode_buffer();
        let body = chain::Body {
            seq: self.seq,
            time_ms: r.time_ms,
            org: r.org.as_str(),
            role: r.role,
            via: r.via.as_ref().map(crate::auth::EdgeId::as_str),
            action: r.action.as_str(),
            request_id: r
                .request_id
                .map(|id| &*id.0.hyphenated().encode_lower(&mut id_text)),
            request_ids: r.request_ids.as_deref().map(Ids::Parsed),
            reason: r.reason.as_deref(),
            lsn: r.lsn,
        };
        chain::chain_hash(&self.head, &body, &mut self.scratch, &mut self.next_head);
        let before = self.pending.len();
        chain::write_line(&mut self.pending, &body, &self.head, &self.next_head)?;
        self.size += (self.pending.len() - before) as u64;
        std::mem::swap(&mut self.head, &mut self.next_head);
        self.first.get_or_insert((self.seq, day(r.time_ms)));
        if self.pending.len() >= WRITE_AT {
            self.write_pending()?;
        }
        Ok(())
    }

    fn rotation_due(&self, time_ms: i64) -> bool {
        let Some((_, first_day)) = self.first else {
            return false;
        };
        let full = self.options.rotate_bytes > 0 && self.size >= self.options.rotate_bytes;
        full || (self.options.rotate_daily && day(time_ms) != first_day)
    }

    /// Makes the current file durable, moves it aside and continues in a new `audit.log`.
    fn rotate(&mut self) -> std::io::Result<()> {
        let Some((first_seq, _)) = self.first else {
            return Ok(());
        };
        self.sync()?;
        self.file = files::rotate(&self.dir, first_seq)?;
        tracing::info!(
            file = %files::rotated_name(first_seq),
            first_seq,
            last_seq = self.seq,
            bytes = self.size,
            "audit log rotated"
        );
        self.size = 0;
        self.first = None;
        Ok(())
    }

    fn write_pending(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    /// Writes what is held and syncs the file.
    fn sync(&mut self) -> std::io::Result<()> {
        self.write_pending()?;
        self.file.sync_data()
    }
}

/// The UTC day of a time in milliseconds since the epoch.
fn day(time_ms: i64) -> i64 {
    time_ms.div_euclid(DAY_MS)
}

/// Drops a partial last line left by a crash mid-write: it was never complete, so never counted.
pub(super) fn drop_torn_tail(path: &Path) -> Result<(), Error> {
    let Ok(file) = fs::File::open(path) else {
        return Ok(());
    };
    let (keep, len) = chain::end_of_last_line(&file)
        .and_then(|keep| Ok((keep, file.metadata()?.len())))
        .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?;
    if keep < len {
        tracing::warn!(
            path = %path.display(),
            dropped_bytes = len - keep,
            "audit log ends in a partial entry from an interrupted write; dropping it"
        );
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(keep))
            .map_err(|e| Error::Internal(format!("cannot repair {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Writes what was handed over since the last write, syncs once for all of it, then answers
/// each batch; entries the journal holds are written at once and synced once
/// [`SYNC_INTERVAL`] has passed (or sooner, with entries that must be durable now). After a
/// failed write, sync or rotation nothing more is written (the file may end in a partial entry,
/// dropped at the next start) and every batch is answered false.
pub(super) fn write_loop(mut w: Writer, mut rx: mpsc::Receiver<Message>, failed: Arc<AtomicBool>) {
    // Only to wait for the next message with a deadline: the queue is a tokio one, as callers
    // on the runtime wait on it for room.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let mut acks = Vec::new();
    let mut syncs = Vec::new();
    // Written but not yet synced: entries the journal holds.
    let mut unsynced_since: Option<Instant> = None;
    loop {
        // None: the sync interval ran out with nothing new.
        let first = match (unsynced_since, &timer) {
            (Some(since), Ok(timer)) => {
                let left = SYNC_INTERVAL.saturating_sub(since.elapsed());
                timer
                    .block_on(async { tokio::time::timeout(left, rx.recv()).await })
                    .map(|m| m.unwrap_or(Message::Close))
                    .ok()
            }
            _ => Some(rx.blocking_recv().unwrap_or(Message::Close)),
        };
        let mut closing = false;
        let mut written = Ok(());
        let mut journaled = false;
        let batch = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()));
        for message in batch {
            let records = match message {
                Message::Records(records, ack) => {
                    acks.push(ack);
                    records
                }
                Message::Journaled(records) => {
                    journaled = true;
                    records
                }
                Message::Sync(tx) => {
                    syncs.push(tx);
                    continue;
                }
                Message::Close => {
                    closing = true;
                    break;
                }
            };
            if failed.load(Ordering::Relaxed) || written.is_err() {
                continue;
            }
            written = records.iter().try_for_each(|r| w.append(r));
        }
        if journaled && unsynced_since.is_none() {
            unsynced_since = Some(Instant::now());
        }
        // Without a timer to wake it, the writer syncs them at once.
        let sync_due =
            unsynced_since.is_some_and(|t| timer.is_err() || t.elapsed() >= SYNC_INTERVAL);
        let sync = !acks.is_empty() || !syncs.is_empty() || closing || sync_due;
        if !failed.load(Ordering::Relaxed) {
            // Written first and said so, so that the engine's journal sync runs beside this one.
            written = written.and_then(|()| w.write_pending());
            let ok = written.is_ok();
            for ack in &mut acks {
                if let Some(tx) = ack.written.take() {
                    let _ = tx.send(ok);
                }
            }
            if sync {
                written = written.and_then(|()| w.file.sync_data());
                if written.is_ok() {
                    unsynced_since = None;
                }
            }
            if let Err(e) = &written {
                tracing::error!(dir = %w.dir.display(), error = %e, "audit log write failed; refusing audited calls");
                failed.store(true, Ordering::Relaxed);
            }
        }
        let durable = !failed.load(Ordering::Relaxed);
        for ack in acks.drain(..) {
            if let Some(tx) = ack.written {
                let _ = tx.send(durable);
            }
            let _ = ack.durable.send(durable);
        }
        for tx in syncs.drain(..) {
            let _ = tx.send(durable);
        }
        if closing {
            tracing::info!(entries = w.seq, head = %w.head, "audit log closed");
            return;
        }
    }
}
