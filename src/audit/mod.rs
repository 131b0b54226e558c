//! The tamper-evident audit trail: every read of patient data and every state change, recorded
//! as a hash-chained JSON line in `audit.log` in the data directory, rotated into
//! `audit-<seq>.log` files with the chain running on. Request ids only, never patient
//! identifiers; a list call is one entry naming the requests it returned.
//!
//! An entry is durable before the call it records is answered. A writer thread takes whatever
//! was handed to it since its last write, chains and writes it and syncs once for all of it
//! (group commit), then tells each waiter. Reads record with [`AuditLog::record`] and
//! [`AuditLog::record_list`]. Changes are recorded by the engine's syncer from each batch: on
//! the file store the records travel in the batch's journal append ([`journaled`]), and reach
//! the trail just after, synced within a second and restored from the journal at the next start
//! if a crash comes first ([`AuditLog::restore`]); on a journal that cannot carry them they are
//! written before the append and synced beside it ([`AuditLog::append_written`]). Either way no
//! change is answered, or left durable by a killed process, without a durable record. Before an
//! audited call acts it is admitted ([`AuditLog::admit`]): refused while the
//! trail cannot be written (once a write or sync fails it is closed for good), while the data
//! directory is below its free-space floor, or while the caller's organisation is over its audit
//! volume budget.

mod chain;
mod files;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
pub mod journaled;
mod space;
mod verify;
mod writer;

use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use tokio::sync::{mpsc, oneshot};

pub use chain::{AuditEntry, GENESIS, ReadError};
pub use files::{AUDIT_FILE, ChainFile, chain_files, rotated_name};
pub use space::{DiskFloor, FloorMonitor, Probe, available_bytes};
pub use verify::{Broken, Verdict, export, verify};

use writer::{Message, Writer};

use crate::auth::{Principal, RateLimiter};
use crate::domain::Clock;
use crate::domain::{OdsCode, RequestId, Timestamp};
use crate::error::Error;

/// Entries waiting for the writer before callers wait for room.
const QUEUE: usize = 65_536;
/// About what an entry takes in the log besides its ids and reason: charged to the caller's
/// audit budget before the entry is written (the exact length is known only then).
pub const ENTRY_BYTES: u64 = 300;
/// What each id of a list entry adds: a quoted UUID and a comma.
pub const ID_BYTES: u64 = 39;

/// How the trail is kept in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// Rotate `audit.log` once it holds this many bytes (0: never by size).
    pub rotate_bytes: u64,
    /// Rotate `audit.log` when the first entry of a new day (UTC) is written.
    pub rotate_daily: bool,
}

impl AuditOptions {
    /// By default a file is rotated at 256 MiB and not by day.
    pub const DEFAULT_ROTATE_BYTES: u64 = 256 * 1024 * 1024;
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            rotate_bytes: Self::DEFAULT_ROTATE_BYTES,
            rotate_daily: false,
        }
    }
}

/// The bytes to charge for an entry naming `ids` requests, with `reason`.
pub fn entry_bytes(ids: usize, reason: Option<&str>) -> u64 {
    ENTRY_BYTES + ID_BYTES * ids as u64 + reason.map_or(0, |r| r.len() as u64)
}

/// What was done. The names are stable: auditors search for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A trust submitted a request.
    RequestSubmit,
    /// A trust read one of its requests.
    RequestGet,
    /// A trust listed its requests (one entry per call, naming every request returned).
    RequestList,
    /// A trust cancelled a request.
    RequestCancel,
    /// A trust opened a watch of its request events.
    RequestWatch,
    /// A lab opened a watch of its offers and jobs.
    OffersWatch,
    /// A lab listed jobs (one entry per call, naming every job returned whose patient it sees).
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
    /// Every action, for reading a name back.
    const ALL: [Self; 18] = [
        Self::RequestSubmit,
        Self::RequestGet,
        Self::RequestList,
        Self::RequestCancel,
        Self::RequestWatch,
        Self::OffersWatch,
        Self::JobList,
        Self::JobGet,
        Self::JobAccept,
        Self::JobDecline,
        Self::JobReceive,
        Self::JobResults,
        Self::JobFail,
        Self::LabCapacity,
        Self::LabStatus,
        Self::CoordinatorOverview,
        Self::CoordinatorLabStatus,
        Self::CoordinatorReassign,
    ];

    /// The action written as `name` in the log.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Its code in the journal, where a change's record travels with it: fixed for good, like
    /// the name (a new action takes a new code).
    pub fn code(self) -> u8 {
        match self {
            Self::RequestSubmit => 1,
            Self::RequestGet => 2,
            Self::RequestList => 3,
            Self::RequestCancel => 4,
            Self::RequestWatch => 5,
            Self::OffersWatch => 6,
            Self::JobList => 7,
            Self::JobGet => 8,
            Self::JobAccept => 9,
            Self::JobDecline => 10,
            Self::JobReceive => 11,
            Self::JobResults => 12,
            Self::JobFail => 13,
            Self::LabCapacity => 14,
            Self::LabStatus => 15,
            Self::CoordinatorOverview => 16,
            Self::CoordinatorLabStatus => 17,
            Self::CoordinatorReassign => 18,
        }
    }

    /// The action whose journal code is `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }

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
    /// The trusted edge that called on the organisation's behalf.
    via: Option<crate::auth::EdgeId>,
    action: Action,
    request_id: Option<RequestId>,
    /// The requests a list call returned.
    request_ids: Option<Vec<RequestId>>,
    /// A coordinator's stated reason for a decision.
    reason: Option<String>,
    /// For a change journaled with its entry: the first journal entry of its batch.
    lsn: Option<u64>,
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
            via: who.via.clone(),
            action,
            request_id: request,
            request_ids: None,
            reason: None,
            lsn: None,
        }
    }

    /// `who` read the requests `ids` with one list call (`action`) at `time`.
    pub fn list(time: Timestamp, who: &Principal, action: Action, ids: Vec<RequestId>) -> Self {
        Self {
            request_ids: Some(ids),
            ..Self::new(time, who, action, None)
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

    /// The bytes charged for it.
    pub fn weight(&self) -> u64 {
        entry_bytes(
            self.request_ids.as_ref().map_or(0, Vec::len),
            self.reason.as_deref(),
        )
    }
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
    /// Charges each organisation for the entries its calls write.
    budget: Option<RateLimiter>,
    /// Refuses new work while the data directory is nearly full.
    floor: Option<DiskFloor>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .field("budget", &self.budget)
            .field("floor", &self.floor)
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
    /// Opens the trail in `dir`, continuing its chain across rotated files, and starts the
    /// writer.
    pub fn open(
        dir: &Path,
        options: AuditOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, AuditWriter), Error> {
        fs::create_dir_all(dir).map_err(|e| {
            Error::Internal(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let writer = Writer::open(dir, options)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let writer_failed = failed.clone();
        let thread = thread::Builder::new()
            .name("labaid-audit".into())
            .spawn(move || writer::write_loop(writer, rx, writer_failed))
            .map_err(|e| Error::Internal(format!("cannot start the audit writer: {e}")))?;
        Ok((
            Self {
                tx: tx.clone(),
                failed,
                clock,
                budget: None,
                floor: None,
            },
            AuditWriter {
                tx,
                thread: Some(thread),
            },
        ))
    }

    /// Charges each organisation's audit volume to `limiter`'s per-organisation byte budget.
    pub fn with_budget(mut self, limiter: RateLimiter) -> Self {
        self.budget = Some(limiter);
        self
    }

    /// Refuses new work while `floor` says the data directory is below its free-space floor.
    pub fn with_floor(mut self, floor: DiskFloor) -> Self {
        self.floor = Some(floor);
        self
    }

    /// Ok while the trail can be written.
    pub fn check(&self) -> Result<(), AuditFailed> {
        if self.failed.load(Ordering::Relaxed) {
            Err(AuditFailed)
        } else {
            Ok(())
        }
    }

    /// Admits an audited call by `org` that will write about `bytes` of entries, before it acts:
    /// UNAVAILABLE while the trail cannot be written or the disk is below its free-space floor,
    /// RESOURCE_EXHAUSTED while `org` is over its audit volume budget (charged `bytes` if not).
    pub fn admit(&self, org: &OdsCode, bytes: u64) -> Result<(), Error> {
        self.check()?;
        if let Some(floor) = &self.floor {
            floor.check()?;
        }
        if let Some(budget) = &self.budget {
            budget.charge_audit(org, bytes)?;
        }
        Ok(())
    }

    /// Records that `who` did `action` (to `request`), and returns once the entry is durable.
    /// Refused as [`AuditLog::admit`] refuses, before anything is written.
    pub async fn record(
        &self,
        who: &Principal,
        action: Action,
        request: Option<&RequestId>,
    ) -> Result<(), Error> {
        let record = Record::new(self.clock.now(), who, action, request.copied());
        self.send(&who.org, record).await
    }

    /// Records that `who` read the requests `ids` with one list call: one entry naming them
    /// all, durable before it returns; nothing for none.
    pub async fn record_list(
        &self,
        who: &Principal,
        action: Action,
        ids: impl IntoIterator<Item = RequestId>,
    ) -> Result<(), Error> {
        let ids: Vec<RequestId> = ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let record = Record::list(self.clock.now(), who, action, ids);
        self.send(&who.org, record).await
    }

    async fn send(&self, org: &OdsCode, record: Record) -> Result<(), Error> {
        self.admit(org, record.weight())?;
        let (ack, acked) = oneshot::channel();
        let ack = writer::Ack {
            written: None,
            durable: ack,
        };
        self.tx
            .send(Message::Records(vec![record], ack))
            .await
            .map_err(|_| AuditFailed)?;
        match acked.await {
            Ok(true) => Ok(()),
            _ => Err(AuditFailed.into()),
        }
    }

    /// Writes `records` and returns once they are in the file, with what to wait on for their
    /// sync: for the engine's syncer thread, which must not go on to make a batch durable that
    /// the trail could not write, and answers nobody before both syncs (the trail's and the
    /// journal's, which run side by side) are done. Their calls were admitted before they were
    /// decided, so nothing is charged or refused here but a trail that cannot be written.
    pub fn append_written(&self, records: Vec<Record>) -> Result<Syncing, AuditFailed> {
        self.check()?;
        let (written, was_written) = oneshot::channel();
        let (durable, synced) = oneshot::channel();
        let ack = writer::Ack {
            written: Some(written),
            durable,
        };
        self.tx
            .blocking_send(Message::Records(records, ack))
            .map_err(|_| AuditFailed)?;
        match was_written.blocking_recv() {
            Ok(true) => Ok(Syncing(synced)),
            _ => Err(AuditFailed),
        }
    }

    /// Writes `records` and returns once they are durable.
    pub fn append_durably(&self, records: Vec<Record>) -> Result<(), AuditFailed> {
        self.append_written(records)?.wait()
    }

    /// Hands over `records` that the journal made durable with their changes (see
    /// [`journaled::encode`]): written at once, synced within a second, and restored from the
    /// journal by [`AuditLog::restore`] if a crash comes first. Waits only for room in the queue.
    pub fn append_journaled(&self, records: Vec<Record>) -> Result<(), AuditFailed> {
        self.check()?;
        self.tx
            .blocking_send(Message::Journaled(records))
            .map_err(|_| AuditFailed)
    }

    /// Makes everything handed over so far durable, and returns once it is: before the journal
    /// lets go of entries whose records it carries (a snapshot).
    pub fn sync(&self) -> Result<(), AuditFailed> {
        self.check()?;
        let (tx, synced) = oneshot::channel();
        self.tx
            .blocking_send(Message::Sync(tx))
            .map_err(|_| AuditFailed)?;
        match synced.blocking_recv() {
            Ok(true) => Ok(()),
            _ => Err(AuditFailed),
        }
    }

    /// Completes the trail at a start from the records the journal carried (each batch's, as
    /// [`journaled::encode`] made them, in journal order): those a crash kept from the trail are
    /// appended, in order, and made durable; those already in it are not written twice. Returns
    /// how many were appended.
    pub fn restore(&self, dir: &Path, carried: &[Vec<u8>]) -> Result<usize, Error> {
        if carried.is_empty() {
            return Ok(0);
        }
        let end = journaled::trail_end(dir).map_err(|e| Error::Internal(e.to_string()))?;
        let missing = journaled::missing(carried, end)?;
        let n = missing.len();
        if n > 0 {
            tracing::warn!(
                entries = n,
                "the audit trail ended before changes the journal holds; restoring them from it"
            );
            self.append_durably(missing)?;
        }
        Ok(n)
    }
}

/// Entries written to the trail whose sync is under way.
#[derive(Debug)]
pub struct Syncing(oneshot::Receiver<bool>);

impl Syncing {
    /// Waits for the sync (from a blocking thread).
    pub fn wait(self) -> Result<(), AuditFailed> {
        match self.0.blocking_recv() {
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

#[cfg(test)]
mod tests;
