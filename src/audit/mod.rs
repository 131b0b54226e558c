//! The tamper-evident audit trail: every read of patient data and every state change, recorded
//! as a hash-chained JSON line in `audit.log` in the data directory. Request ids only, never
//! patient identifiers.
//!
//! An entry is durable before the call it records is answered. A writer thread takes whatever
//! was handed to it since its last write, chains and writes it through a buffer and syncs once
//! for all of it (group commit), then tells each waiter. Reads record with [`AuditLog::record`];
//! changes are recorded by the engine's syncer from each batch, before the batch's journal
//! write ([`AuditLog::append_durably`]), so a change is never durable unaudited. Once a write or
//! sync fails the trail is closed for good and audited calls are refused before they act.

mod chain;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;

use std::fmt;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use tokio::sync::{mpsc, oneshot};

pub use chain::{AuditEntry, Broken, GENESIS, ReadError, Verdict, export, verify};

use crate::auth::Principal;
use crate::domain::Clock;
use crate::domain::{OdsCode, RequestId, Timestamp};
use crate::error::Error;

/// The audit file's name inside the data directory.
pub const AUDIT_FILE: &str = "audit.log";
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

/// One entry to be written.
#[derive(Debug, Clone)]
pub struct Record {
    time_ms: i64,
    org: OdsCode,
    role: &'static str,
    action: Action,
    request_id: Option<RequestId>,
    /// A coordinator's stated reason for a decision.
    reason: Option<String>,
}

impl Record {
    /// `who` did `action` (to `request`) at `time`.
    pub fn new(
        time: Timestamp,
        who: &Principal,
        action: Action,
        request: Option<RequestId>,
    ) -> Self {
        Self {
            time_ms: time.millis(),
            org: who.org.clone(),
            role: who.role.as_str(),
            action,
            request_id: request,
            reason: None,
        }
    }

    /// The entry with a coordinator's stated `reason` for the decision.
    pub fn with_reason(mut self, reason: Option<&str>) -> Self {
        self.reason = reason.map(str::to_string);
        self
    }

    /// The request the entry names, once it is known (a submission's id comes from its reply).
    pub fn set_request(&mut self, id: RequestId) {
        self.request_id.get_or_insert(id);
    }
}

/// The writer's answer to a batch: true once every entry of it is durable.
type Ack = oneshot::Sender<bool>;

enum Message {
    Records(Vec<Record>, Ack),
    Close,
}

/// The trail could not be written; nothing more will be.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail cannot be written; the broker refuses audited calls")]
pub struct AuditFailed;

impl From<AuditFailed> for Error {
    fn from(e: AuditFailed) -> Self {
        Error::Unavailable(e.to_string())
    }
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

    /// Ok while the trail can be written; checked before an audited call acts.
    pub fn check(&self) -> Result<(), AuditFailed> {
        if self.failed.load(Ordering::Relaxed) {
            Err(AuditFailed)
        } else {
            Ok(())
        }
    }

    /// Records that `who` did `action` (to `request`), and returns once the entry is durable.
    /// Fails closed: once the log cannot be written, audited calls are refused with UNAVAILABLE.
    pub async fn record(
        &self,
        who: &Principal,
        action: Action,
        request: Option<&RequestId>,
    ) -> Result<(), Error> {
        let record = Record::new(self.clock.now(), who, action, request.copied());
        self.send(vec![record]).await
    }

    /// Records `action` by `who` once per request of `requests` (a list call's page), with one
    /// wait for all of them; nothing for none.
    pub async fn record_each(
        &self,
        who: &Principal,
        action: Action,
        requests: impl IntoIterator<Item = RequestId>,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let records: Vec<Record> = requests
            .into_iter()
            .map(|id| Record::new(now, who, action, Some(id)))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.send(records).await
    }

    async fn send(&self, records: Vec<Record>) -> Result<(), Error> {
        self.check()?;
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(Message::Records(records, ack))
            .await
            .map_err(|_| AuditFailed)?;
        match acked.await {
            Ok(true) => Ok(()),
            _ => Err(AuditFailed.into()),
        }
    }

    /// Writes `records` and returns once they are durable: for the engine's syncer thread, which
    /// must not go on to make a batch durable that the trail could not record.
    pub fn append_durably(&self, records: Vec<Record>) -> Result<(), AuditFailed> {
        self.check()?;
        let (ack, acked) = oneshot::channel();
        self.tx
            .blocking_send(Message::Records(records, ack))
            .map_err(|_| AuditFailed)?;
        match acked.blocking_recv() {
            Ok(true) => Ok(()),
            _ => Err(AuditFailed),
        }
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

/// Writes what was handed over since the last write, syncs once for all of it, then answers
/// each batch. After a failed write or sync nothing more is written (the file may end in a
/// partial entry, dropped at the next start) and every batch is answered false.
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
    let mut acks = Vec::new();
    loop {
        let first = rx.blocking_recv().unwrap_or(Message::Close);
        let mut closing = false;
        let mut written = Ok(());
        let batch = std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()));
        for message in batch {
            match message {
                Message::Records(records, ack) => {
                    acks.push(ack);
                    if failed.load(Ordering::Relaxed) || written.is_err() {
                        continue;
                    }
                    for r in records {
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
                            written = Err(e);
                            break;
                        }
                        std::mem::swap(&mut head, &mut next_head);
                    }
                }
                Message::Close => {
                    closing = true;
                    break;
                }
            }
        }
        if !acks.is_empty() && !failed.load(Ordering::Relaxed) {
            written = written
                .and_then(|()| out.flush())
                .and_then(|()| out.get_ref().sync_data());
            if let Err(e) = &written {
                tracing::error!(path = %path.display(), error = %e, "audit log write failed; refusing audited calls");
                failed.store(true, Ordering::Relaxed);
            }
        }
        let durable = !failed.load(Ordering::Relaxed);
        for ack in acks.drain(..) {
            let _ = ack.send(durable);
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
