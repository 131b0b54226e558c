//! The tamper-evident audit trail: every read of patient data and every state change, recorded
//! as a hash-chained JSON line in `audit.log` in the data directory. Request ids only, never
//! patient identifiers.
//!
//! Appends are cheap for callers: [`AuditLog::record`] hands the entry to a writer thread over a
//! bounded queue (a writer that falls behind holds callers back instead of growing memory), which
//! chains and writes whole batches through a buffer, flushes each batch to the OS, and syncs the
//! file to disk every [`SYNC_INTERVAL`] while entries are not yet durable, and at shutdown.

mod chain;

use std::fmt;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use chain::{AuditEntry, Broken, GENESIS, ReadError, Verdict, export, verify};

use crate::auth::Principal;
use crate::domain::{OdsCode, RequestId};
use crate::engine::Clock;
use crate::error::Error;

/// The audit file's name inside the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// Longest an appended entry waits for an fsync.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Entries waiting for the writer before callers wait for room.
const QUEUE: usize = 65_536;

/// What was done. The names are stable: auditors search for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A trust submitted a request.
    RequestSubmit,
    /// A trust read one of its requests.
    RequestGet,
    /// A trust listed its requests (one entry per request returned).
    RequestList,
    /// A trust cancelled a request.
    RequestCancel,
    /// A trust opened a watch of its request events.
    RequestWatch,
    /// A lab opened a watch of its offers and jobs.
    OffersWatch,
    /// A lab listed jobs whose patient it may see (one entry per such job).
    JobList,
    /// A lab read an accepted job, with patient identifiers.
    JobGet,
    /// A lab accepted a job (and with it saw the patient).
    JobAccept,
    /// A lab declined an offer.
    JobDecline,
    /// A lab received the sample.
    JobReceive,
    /// A lab posted results.
    JobResults,
    /// A lab failed a job.
    JobFail,
    /// A lab changed a capacity.
    LabCapacity,
    /// A lab changed its status.
    LabStatus,
    /// A coordinator read the overview (no patient data).
    CoordinatorOverview,
    /// A coordinator set a lab's status.
    CoordinatorLabStatus,
    /// A coordinator reassigned a job.
    CoordinatorReassign,
}

impl Action {
    /// The name written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestSubmit => "request.submit",
            Self::RequestGet => "request.get",
            Self::RequestList => "request.list",
            Self::RequestCancel => "request.cancel",
            Self::RequestWatch => "request.watch",
            Self::OffersWatch => "offers.watch",
            Self::JobList => "job.list",
            Self::JobGet => "job.get",
            Self::JobAccept => "job.accept",
            Self::JobDecline => "job.decline",
            Self::JobReceive => "job.receive",
            Self::JobResults => "job.results",
            Self::JobFail => "job.fail",
            Self::LabCapacity => "lab.capacity",
            Self::LabStatus => "lab.status",
            Self::CoordinatorOverview => "coordinator.overview",
            Self::CoordinatorLabStatus => "coordinator.lab_status",
            Self::CoordinatorReassign => "coordinator.reassign",
        }
    }
}

struct Record {
    time_ms: i64,
    org: OdsCode,
    role: &'static str,
    action: Action,
    request_id: Option<RequestId>,
    reason: Option<String>,
}

enum Message {
    Record(Record),
    Close,
}

/// A handle for recording; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    failed: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The writer thread; [`AuditWriter::close`] flushes, syncs and joins it.
#[derive(Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<Message>,
    thread: Option<thread::JoinHandle<()>>,
}

impl AuditLog {
    /// Opens (or creates) `dir/audit.log`, continuing its chain, and starts the writer.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<(Self, AuditWriter), Error> {
        fs::create_dir_all(dir).map_err(|e| {
            Error::Internal(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join(AUDIT_FILE);
        drop_torn_tail(&path)?;
        let last = chain::last_entry(&path).map_err(|e| Error::Internal(e.to_string()))?;
        let (seq, head) = last.map_or((0, GENESIS.to_string()), |e| (e.seq, e.hash));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::Internal(format!("cannot open {}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let writer_failed = failed.clone();
        let thread = thread::Builder::new()
            .name("labaid-audit".into())
            .spawn(move || write_loop(file, path, seq, head, rx, writer_failed))
            .map_err(|e| Error::Internal(format!("cannot start the audit writer: {e}")))?;
        Ok((
            Self {
                tx: tx.clone(),
                failed,
                clock,
            },
            AuditWriter {
                tx,
                thread: Some(thread),
            },
        ))
    }

    /// Records that `who` did `action` (to `request`). Fails closed: once the log cannot be
    /// written, calls that must be audited are refused with UNAVAILABLE.
    pub async fn record(
        &self,
        who: &Principal,
        action: Action,
        request: Option<&RequestId>,
    ) -> Result<(), Error> {
        self.record_with_reason(who, action, request, None).await
    }

    /// [`Self::record`] with a coordinator's stated `reason` for the decision.
    pub async fn record_with_reason(
        &self,
        who: &Principal,
        action: Action,
        request: Option<&RequestId>,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::Unavailable(
                "the audit trail cannot be written; the broker refuses audited calls".into(),
            ));
        }
        let record = Record {
            time_ms: self.clock.now().millis(),
            org: who.org.clone(),
            role: who.role.as_str(),
            action,
            request_id: request.copied(),
            reason: reason.map(str::to_string),
        };
        self.tx
            .send(Message::Record(record))
            .await
            .map_err(|_| Error::Unavailable("the audit trail is closed".into()))
    }
}

impl AuditWriter {
    /// Writes what is queued, syncs the file and stops the writer.
    pub fn close(mut self) {
        // Called from a blocking context (the server's shutdown hands it to spawn_blocking).
        let _ = self.tx.blocking_send(Message::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops a partial last line left by a crash mid-write: it was never complete, so never counted.
fn drop_torn_tail(path: &Path) -> Result<(), Error> {
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

/// How long the writer naps between batches while entries keep coming.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

fn write_loop(
    file: fs::File,
    path: PathBuf,
    mut seq: u64,
    mut head: String,
    mut rx: mpsc::Receiver<Message>,
    failed: Arc<AtomicBool>,
) {
    let mut out = BufWriter::new(file);
    let mut scratch = Vec::new();
    let mut next_head = String::with_capacity(64);
    let mut dirty = false;
    let mut last_sync = Instant::now();
    let fail = |e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "audit log write failed; refusing audited calls");
        failed.store(true, Ordering::Relaxed);
    };
    let mut busy = false;
    loop {
        // Under load, nap between batches instead of blocking on the channel: a sender wakes the
        // writer (a futex call and a context switch) only when it is blocked, so entries then
        // arrive without a system call each and are written many to one write.
        let first = if busy || dirty {
            thread::sleep(COALESCE);
            let next = rx.try_recv().ok();
            // Quiet with entries not yet durable: sync once SYNC_INTERVAL has passed, not per
            // entry (a sync per entry at low load cost more CPU than the calls themselves).
            if next.is_none() && dirty && last_sync.elapsed() >= SYNC_INTERVAL {
                if let Err(e) = out.get_ref().sync_data() {
                    fail(e);
                }
                dirty = false;
                last_sync = Instant::now();
            }
            next
        } else {
            Some(rx.blocking_recv().unwrap_or(Message::Close))
        };
        busy = first.is_some();
        let mut closing = false;
        let mut batch = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()));
        for message in batch.by_ref() {
            match message {
                Message::Record(r) => {
                    seq += 1;
                    let mut id_text = uuid::Uuid::encode_buffer();
                    let body = chain::Body {
                        seq,
                        time_ms: r.time_ms,
                        org: r.org.as_str(),
                        role: r.role,
                        action: r.action.as_str(),
                        request_id: r
                            .request_id
                            .map(|id| &*id.0.hyphenated().encode_lower(&mut id_text)),
                        reason: r.reason.as_deref(),
                    };
                    chain::chain_hash(&head, &body, &mut scratch, &mut next_head);
                    if let Err(e) = chain::write_line(&mut out, &body, &head, &next_head) {
                        fail(e);
                    }
                    std::mem::swap(&mut head, &mut next_head);
                    dirty = true;
                }
                Message::Close => {
                    closing = true;
                    break;
                }
            }
        }
        if let Err(e) = out.flush() {
            fail(e);
        }
        if dirty && (closing || last_sync.elapsed() >= SYNC_INTERVAL) {
            if let Err(e) = out.get_ref().sync_data() {
                fail(e);
            }
            dirty = false;
            last_sync = Instant::now();
        }
        if closing {
            tracing::info!(entries = seq, head = %head, "audit log closed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::domain::{OdsCode, Timestamp};
    use crate::engine::ManualClock;

    fn log_some(dir: &Path, n: usize) {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
        let (log, writer) = AuditLog::open(dir, clock).unwrap();
        let who = Principal {
            org: OdsCode::parse("RJ1").unwrap(),
            role: Role::Trust,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..n {
            rt.block_on(log.record(&who, Action::RequestGet, Some(&RequestId::generate())))
                .unwrap();
        }
        writer.close();
    }

    #[test]
    fn a_reopened_log_continues_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        log_some(dir.path(), 3);
        log_some(dir.path(), 2);
        match verify(&dir.path().join(AUDIT_FILE)).unwrap() {
            Verdict::Intact { entries, .. } => assert_eq!(entries, 5),
            Verdict::Broken(b) => panic!("{b}"),
        }
    }

    #[test]
    fn lines_parse_back_as_entries_with_the_request_id_only_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
        let (log, writer) = AuditLog::open(dir.path(), clock).unwrap();
        let who = Principal {
            org: OdsCode::parse("RJ1").unwrap(),
            role: Role::Lab,
        };
        let id = RequestId::generate();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(log.record(&who, Action::JobAccept, Some(&id)))
            .unwrap();
        rt.block_on(log.record(&who, Action::OffersWatch, None))
            .unwrap();
        writer.close();
        let text = fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        let entries: Vec<AuditEntry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].request_id, Some(id.to_string()));
        assert_eq!(
            (entries[0].org.as_str(), entries[0].role.as_str()),
            ("RJ1", "lab")
        );
        assert_eq!(entries[0].action, "job.accept");
        assert!(!text.lines().nth(1).unwrap().contains("request_id"));
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(entries[1].hash, entries[1].compute_hash());
    }

    #[test]
    fn a_torn_tail_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        log_some(dir.path(), 2);
        let path = dir.path().join(AUDIT_FILE);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"ti").unwrap();
        drop(f);
        log_some(dir.path(), 1);
        assert!(matches!(
            verify(&path).unwrap(),
            Verdict::Intact { entries: 3, .. }
        ));
    }

    #[test]
    fn a_torn_tail_longer_than_a_read_block_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        log_some(dir.path(), 2);
        let path = dir.path().join(AUDIT_FILE);
        let whole = fs::metadata(&path).unwrap().len();
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&vec![b'x'; 200_000]).unwrap();
        drop(f);
        drop_torn_tail(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
        log_some(dir.path(), 1);
        assert!(matches!(
            verify(&path).unwrap(),
            Verdict::Intact { entries: 3, .. }
        ));
    }

    #[test]
    fn the_last_entry_is_read_from_the_end_whatever_the_block_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        assert_eq!(chain::last_entry(&path).unwrap(), None);
        log_some(dir.path(), 5);
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let last: AuditEntry = serde_json::from_str(lines[4]).unwrap();
        assert_eq!(last.seq, 5);
        let n = lines[4].len();
        // Blocks smaller than a line, about a line, and larger than the whole log.
        let blocks = [1, 7, n - 1, n, n + 1, n + 2, 4096, 1 << 20];
        let found =
            |path: &Path| blocks.map(|block| chain::last_entry_by_blocks(path, block).unwrap());
        assert_eq!(found(&path), blocks.map(|_| Some(last.clone())));

        // Lines that are not entries after it (a write cut short, damage) are passed over.
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":6,\"ti\nnot an entry\n\n{\"seq\":7")
            .unwrap();
        drop(f);
        assert_eq!(found(&path), blocks.map(|_| Some(last.clone())));

        // The first line is found with no newline before it, and without one after it.
        let first: AuditEntry = serde_json::from_str(lines[0]).unwrap();
        fs::write(&path, lines[0]).unwrap();
        assert_eq!(found(&path), blocks.map(|_| Some(first.clone())));
        fs::write(&path, "not an entry\n").unwrap();
        assert_eq!(found(&path), blocks.map(|_| None));
    }
}
