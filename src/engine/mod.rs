//! The sequencer and its syncer. Every mutation is decided under one lock, in the caller's own
//! task, by the pure core; the syncer thread takes everything decided since its last sync,
//! appends it with one journal sync (group commit sized by load), then updates the read views,
//! publishes events and only then replies. A timer thread fires leases and expiries when no
//! command comes to fire them first. Between syncs the syncer takes a snapshot of the state when
//! the journal asks for one.
//!
//! A command asked for by a caller is audited inside this path: refused before it is decided
//! when the audit trail cannot be written, and made durable with its batch, so that no change is
//! answered unaudited: carried in the journal append itself when the journal can (the file
//! journal), else written to the trail before the append and synced beside it.

mod chunked;
mod clock;
mod fatal;
#[cfg(test)]
mod tests;
mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;

use tokio::sync::{Mutex, Notify, oneshot};

use crate::audit::{Action, AuditLog, Record};
use crate::auth::Principal;
use crate::domain::{Clock, RequestId, Timestamp};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::routing::{Command, Outcome, Reply, Router, SnapshotState, State};
use crate::store::{Entry, Journal, Snapshot, SnapshotKind};

pub use clock::{ManualClock, SystemClock};
pub use fatal::{Fatal, OnFatal, abort_process};
pub use views::{Changes, EventLog, SinceSnapshot, Views};

/// A caller waiting for its command's answer until the command is durable, with the audit
/// entry its command makes if it succeeds.
struct Pending {
    reply: oneshot::Sender<Result<Reply, Error>>,
    result: Result<Reply, Error>,
    audit: Option<Record>,
}

/// Who asked for a command and why, for the audit trail.
#[derive(Debug, Clone)]
pub struct Asked<'a> {
    /// The caller.
    pub who: &'a Principal,
    /// What the call does.
    pub action: Action,
    /// The request it acts on, when known before the command is decided.
    pub request: Option<RequestId>,
    /// A coordinator's stated reason, recorded with the entry.
    pub reason: Option<&'a str>,
}

/// What has been decided and not yet taken by the syncer, with the state it was decided on.
struct Decided {
    router: Router,
    /// What changed since the syncer last took: the read views' next update.
    outcome: Outcome,
    entries: Vec<Entry>,
    replies: Vec<Pending>,
    /// The syncer found nothing to take and is parked: the next decision must wake it.
    syncer_parked: bool,
    /// The instant the timer thread sleeps until; an earlier timer must wake it.
    timer_target: Option<Timestamp>,
    /// The syncer has taken its last batch: nothing more may be decided.
    closed: bool,
}

impl Decided {
    /// Fires every timer due at `now`, journaling the tick if it changed anything. Done before
    /// each command, so an offer whose lease ran out cannot be accepted after it.
    fn fire_timers(&mut self, now: Timestamp) {
        if self.router.next_timer().is_some_and(|t| t <= now) {
            self.outcome.changed = false;
            let _ = self.router.apply(&Command::Tick, now, &mut self.outcome);
            if self.outcome.changed {
                self.entries.push(Entry {
                    time: now,
                    command: Command::Tick,
                });
            }
        }
    }

    fn has_work(&self) -> bool {
        !self.entries.is_empty() || !self.replies.is_empty()
    }
}

/// Aborts the process if dropped while unwinding. A panic part-way through a decision could leave
/// the state changed but not journaled (the lock does not poison), and a dead syncer or timer
/// thread would leave callers waiting for ever; recovery replays what is durable instead.
struct AbortOnPanic(&'static str);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            tracing::error!(part = self.0, "panicked; stopping");
            std::process::abort();
        }
    }
}

/// State shared by every handle, the syncer and the timer thread.
struct Shared {
    decided: Mutex<Decided>,
    /// Set by `close` (or the last handle going): the syncer finishes what was decided and stops.
    closing: AtomicBool,
    syncer: OnceLock<thread::Thread>,
    /// Wakes the timer thread when an earlier timer is armed, or at close.
    timers_changed: Notify,
}

impl Shared {
    fn wake_syncer(&self) {
        if let Some(t) = self.syncer.get() {
            t.unpark();
        }
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake_syncer();
        self.timers_changed.notify_one();
    }
}

/// What every `Engine` clone shares: closes the engine when the last clone is dropped. (The
/// syncer and timer threads hold `Shared` itself, so that they do not keep the engine open.)
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the engine is started with.
pub struct Parts {
    /// The core, as recovered.
    pub router: Router,
    /// Where decisions are made durable.
    pub journal: Box<dyn Journal>,
    /// The read views, built from the recovered state.
    pub views: Arc<Views>,
    /// The time decisions are made at, and timers wait on.
    pub clock: Arc<dyn Clock>,
    /// Where the engine reports its timings.
    pub metrics: Arc<Metrics>,
    /// The audit trail callers' commands are recorded in.
    pub audit: AuditLog,
    /// Called when a decided batch cannot be made durable ([`abort_process`] on the file store).
    pub on_fatal: OnFatal,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// A handle to the sequencer and its read views. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    handle: Arc<Handle>,
    views: Arc<Views>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    audit: AuditLog,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stopping", &self.stopping.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the syncer and timer threads (journal syncs never block the runtime that serves
    /// gRPC). The returned handle joins once the engine is closed or every `Engine` clone is
    /// dropped, with everything decided durable.
    pub fn start(parts: Parts) -> Result<(Self, thread::JoinHandle<()>), Error> {
        let Parts {
            router,
            journal,
            views,
            clock,
            metrics,
            audit,
            on_fatal,
        } = parts;
        let shared = Arc::new(Shared {
            decided: Mutex::new(Decided {
                router,
                outcome: Outcome::default(),
                entries: Vec::new(),
                replies: Vec::new(),
                syncer_parked: false,
                timer_target: None,
                closed: false,
            }),
            closing: AtomicBool::new(false),
            syncer: OnceLock::new(),
            timers_changed: Notify::new(),
        });
        let timers = {
            let shared = shared.clone();
            let clock = clock.clone();
            thread::Builder::new()
                .name("labaid-timers".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                    {
                        Ok(rt) => rt.block_on(drive_timers(&shared, &*clock)),
                        Err(err) => {
                            tracing::error!(error = %err, "timer runtime failed to start; stopping");
                            std::process::abort();
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start the timer thread: {e}")))?
        };
        let syncer = {
            let shared = shared.clone();
            let views = views.clone();
            let metrics = metrics.clone();
            let audit = audit.clone();
            thread::Builder::new()
                .name("labaid-syncer".into())
                .spawn(move || {
                    sync(&shared, journal, &views, &metrics, &audit, &*on_fatal);
                    if timers.join().is_err() {
                        tracing::error!("timer thread panicked");
                    }
                    tracing::debug!("sequencer stopped");
                })
                .map_err(|e| Error::Internal(format!("cannot start the journal syncer: {e}")))?
        };
        let _ = shared.syncer.set(syncer.thread().clone());
        Ok((
            Self {
                handle: Arc::new(Handle(shared)),
                views,
                clock,
                metrics,
                audit,
                stopping: Arc::new(AtomicBool::new(false)),
            },
            syncer,
        ))
    }

    /// Decides a command the broker itself asks for (a lab missed its heartbeats) and waits
    /// until it is durable.
    pub async fn execute(&self, command: Command) -> Result<Reply, Error> {
        self.decide(command, None).await
    }

    /// Decides a caller's command and waits until it and its audit entry are durable. Refused
    /// before anything is decided as the audit trail refuses a call: UNAVAILABLE while it
    /// cannot be written or the disk is below its free-space floor, RESOURCE_EXHAUSTED while the
    /// caller is over its audit volume budget.
    pub async fn execute_as(&self, asked: Asked<'_>, command: Command) -> Result<Reply, Error> {
        self.audit
            .admit(&asked.who.org, crate::audit::entry_bytes(0, asked.reason))?;
        self.decide(command, Some(asked)).await
    }

    async fn decide(&self, command: Command, asked: Option<Asked<'_>>) -> Result<Reply, Error> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(Error::Unavailable(
                "the broker is shutting down; retry on its replacement".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        let (wake_syncer, wake_timers) = {
            let mut decided = self.handle.0.decided.lock().await;
            if decided.closed {
                return Err(Error::Unavailable("the broker is shutting down".into()));
            }
            let _abort = AbortOnPanic("sequencer");
            let d = &mut *decided;
            let now = self.clock.now();
            d.fire_timers(now);
            d.outcome.changed = false;
            let started = std::time::Instant::now();
            let result = d.router.apply(&command, now, &mut d.outcome);
            // Every other command waits while one is decided: a slow one shows here.
            self.metrics
                .decision
                .observe(started.elapsed().as_secs_f64());
            if d.outcome.changed {
                d.entries.push(Entry { time: now, command });
            }
            // Even a command that changed nothing waits for the next sync: its answer may
            // depend on an earlier decision (an idempotent resubmission) not yet durable.
            d.replies.push(Pending {
                reply,
                result: result.map_err(Error::from),
                audit: asked
                    .map(|a| Record::new(now, a.who, a.action, a.request).with_reason(a.reason)),
            });
            let next_timer = d.router.next_timer();
            let wake_timers = next_timer.is_some_and(|t| d.timer_target.is_none_or(|at| t < at));
            if wake_timers {
                d.timer_target = next_timer;
            }
            (std::mem::take(&mut d.syncer_parked), wake_timers)
        };
        if wake_syncer {
            self.handle.0.wake_syncer();
        }
        if wake_timers {
            self.handle.0.timers_changed.notify_one();
        }
        answer
            .await
            .map_err(|_| Error::Unavailable("the broker is shutting down".into()))?
    }

    /// Tells the sequencer to finish the commands already decided and stop, even while handles
    /// remain (a connection cut off at shutdown may still hold one).
    pub fn close(&self) {
        self.stop_accepting();
        self.handle.0.close();
    }

    /// Refuses new commands from now on (graceful shutdown).
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// True once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The read views.
    pub fn views(&self) -> &Arc<Views> {
        &self.views
    }

    /// The current time on the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// Fires timers that no command fired first, sleeping until the next one is due.
async fn drive_timers(shared: &Shared, clock: &dyn Clock) {
    let _abort = AbortOnPanic("timer thread");
    loop {
        let next = {
            let mut d = shared.decided.lock().await;
            if d.closed {
                return;
            }
            let now = clock.now();
            d.fire_timers(now);
            if d.has_work() && std::mem::take(&mut d.syncer_parked) {
                shared.wake_syncer();
            }
            d.timer_target = d.router.next_timer();
            d.timer_target
        };
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            () = sleep_until(clock, next) => {}
            () = shared.timers_changed.notified() => {}
        }
    }
}

/// What the syncer takes in one go: everything decided since it last took.
struct Taken {
    entries: Vec<Entry>,
    replies: Vec<Pending>,
    changes: Changes,
    /// The state after `entries`, when a snapshot is due.
    state: Option<SnapshotCopy>,
}

/// The state copied for a snapshot, under the decision lock.
enum SnapshotCopy {
    /// For a full snapshot (see `copy_for_snapshot`).
    Full(Box<SnapshotState>),
    /// For an incremental one: all but the requests, whose changes the syncer noted.
    Head(Box<State>),
}

/// Makes decisions durable in order, one journal sync for everything decided while the previous
/// sync ran, then updates the read views and answers the callers.
fn sync(
    shared: &Shared,
    mut journal: Box<dyn Journal>,
    views: &Views,
    metrics: &Metrics,
    audit: &AuditLog,
    on_fatal: &(dyn Fn(&Fatal) + Send + Sync),
) {
    let _abort = AbortOnPanic("journal syncer");
    // The failed batch's callers: answered only after the hook (which aborts the broker, or ends
    // its term having named the new leader for them).
    let mut unanswered = Vec::new();
    let synced = sync_until_closed(
        shared,
        &mut *journal,
        views,
        metrics,
        audit,
        &mut unanswered,
    );
    if let Err(fatal) = synced {
        tracing::error!(error = %fatal, "a decided batch cannot be made durable; stopping");
        on_fatal(&fatal);
        drop(unanswered);
        // Only a hook that returns (PostgreSQL's, a test's) gets here: stop as the process would
        // have, with nothing more decided, and the callers still waiting told UNAVAILABLE.
        let mut d = shared.decided.blocking_lock();
        d.closed = true;
        d.entries.clear();
        d.replies.clear();
        drop(d);
        shared.close();
    }
}

/// The syncer's loop until the engine closes, then the closing snapshot; the first failure to
/// make something durable ends it, leaving the batch's callers in `unanswered`.
fn sync_until_closed(
    shared: &Shared,
    journal: &mut dyn Journal,
    views: &Views,
    metrics: &Metrics,
    audit: &AuditLog,
    unanswered: &mut Vec<Pending>,
) -> Result<(), Fatal> {
    let mut snapshot_wanted = None;
    let mut since_snapshot = journal.incremental().then(SinceSnapshot::default);
    // Emptied vectors go back for the next decisions, so taking allocates nothing.
    let mut spare_entries = Vec::new();
    let mut spare_replies = Vec::new();
    let closing_state = loop {
        let taken = {
            let mut decided = shared.decided.blocking_lock();
            let d = &mut *decided;
            if !d.has_work() {
                if shared.closing.load(Ordering::Acquire) {
                    d.closed = true;
                    // Copied only when a closing snapshot will be written: at a million live
                    // requests a copy takes up to a second and a gigabyte. Whole, as nothing
                    // more is decided: copying the indexes is quicker than rebuilding them.
                    break journal
                        .snapshot_due(true)
                        .map(|_| Box::new(SnapshotState::whole(d.router.state().clone())));
                }
                d.syncer_parked = true;
                drop(decided);
                // An unpark since the check above makes this return at once.
                thread::park();
                continue;
            }
            d.syncer_parked = false;
            Taken {
                entries: std::mem::replace(&mut d.entries, std::mem::take(&mut spare_entries)),
                replies: std::mem::replace(&mut d.replies, std::mem::take(&mut spare_replies)),
                changes: Changes::capture(&d.router, &mut d.outcome),
                state: snapshot_wanted.map(|kind| match kind {
                    SnapshotKind::Full => SnapshotCopy::Full(copy_for_snapshot(&d.router, metrics)),
                    SnapshotKind::Incremental => {
                        SnapshotCopy::Head(Box::new(d.router.state().head_copy()))
                    }
                }),
            }
        };
        let Taken {
            mut entries,
            mut replies,
            changes,
            state,
        } = taken;
        let durable = make_durable(journal, audit, metrics, &entries, &mut replies);
        if let Err(fatal) = durable {
            *unanswered = replies;
            return Err(fatal);
        }
        entries.clear();
        if let Some(since) = &mut since_snapshot {
            since.note(&changes);
        }
        let started = std::time::Instant::now();
        views.apply(changes);
        // The batch's replies and events, and the next sync, wait for this: a slow one shows here.
        metrics.view_update.observe(started.elapsed().as_secs_f64());
        for Pending { reply, result, .. } in replies.drain(..) {
            let _ = reply.send(result);
        }
        spare_entries = entries;
        spare_replies = replies;
        if let Some(copy) = state
            && journal.snapshot_due(false).is_some()
        {
            // The journal is about to let go of the entries before it, and the audit records
            // they carried must be in the trail first.
            trail_holds_carried(&*journal, audit)?;
            match (copy, &mut since_snapshot) {
                (SnapshotCopy::Full(state), since) => {
                    snapshot(*state, views, metrics, journal)?;
                    if let Some(since) = since {
                        since.clear();
                    }
                }
                (SnapshotCopy::Head(head), Some(since)) => {
                    delta(*head, since, metrics, journal)?;
                }
                // Only a journal that keeps incremental snapshots asks for one.
                (SnapshotCopy::Head(_), None) => {}
            }
        }
        snapshot_wanted = journal.snapshot_due(false);
    };
    // A snapshot at a clean stop makes the next start read it instead of replaying the journal.
    if let Some(state) = closing_state {
        trail_holds_carried(&*journal, audit)?;
        snapshot(*state, views, metrics, journal)?;
    }
    journal.close().map_err(Fatal::Close)
}

/// Copies the state for a snapshot. Deciding waits for the copy (it is taken under the lock, so
/// that it matches the journal's position), but not for rebuilding its indexes, encoding or I/O.
/// The copy shares the requests (they are `Arc`s) yet still grows with them: the metric and the
/// log show operators how long it took.
fn copy_for_snapshot(router: &Router, metrics: &Metrics) -> Box<SnapshotState> {
    let started = std::time::Instant::now();
    let state = Box::new(router.state().lean_copy());
    let paused = started.elapsed();
    metrics.store_snapshot_copy.observe(paused.as_secs_f64());
    tracing::info!(
        ms = paused.as_millis() as u64,
        "state copied for a snapshot"
    );
    state
}

/// Makes a batch durable with the audit records of its successful commands (a refused command
/// changed nothing and is not recorded). A journal that can carries them in the batch's own
/// append, one sync for both; they then go to the trail, which syncs them within a second, and a
/// crash before that leaves them for [`AuditLog::restore`]. Otherwise they are written to the
/// trail before the append and synced beside it. Either way nobody is answered before both are
/// durable, and a trail that cannot take a batch whose journal append needs it stops the broker
/// (the batch is decided already) with none of it durable.
fn make_durable(
    journal: &mut dyn Journal,
    audit: &AuditLog,
    metrics: &Metrics,
    entries: &[Entry],
    replies: &mut [Pending],
) -> Result<(), Fatal> {
    let mut records = records_of(replies);
    match journal.carrying_from() {
        Some(lsn) if !entries.is_empty() && !records.is_empty() => {
            let carried = crate::audit::journaled::encode(&mut records, lsn);
            append(journal, metrics, entries, &carried)?;
            // Durable with the batch already. A trail that fails now refuses every call from
            // here on (`AuditLog::admit`), and gets these back from the journal at the next start.
            if audit.append_journaled(records).is_err() {
                tracing::error!("the audit trail cannot take records the journal holds");
            }
            Ok(())
        }
        _ => {
            let syncing = if records.is_empty() {
                None
            } else {
                Some(audit.append_written(records).map_err(Fatal::Audit)?)
            };
            if !entries.is_empty() {
                append(journal, metrics, entries, &[])?;
            }
            match syncing {
                Some(s) => s.wait().map_err(Fatal::Audit),
                None => Ok(()),
            }
        }
    }
}

/// The audit records of a batch's successful commands, each naming its request.
fn records_of(replies: &mut [Pending]) -> Vec<Record> {
    replies
        .iter_mut()
        .filter_map(|p| {
            let mut record = p.audit.take()?;
            match &p.result {
                Ok(Reply::Request { request, .. }) => record.set_request(request.id),
                Ok(_) => {}
                Err(_) => return None,
            }
            Some(record)
        })
        .collect()
}

/// Makes the trail hold every record the journal carried, before the journal drops them.
fn trail_holds_carried(journal: &dyn Journal, audit: &AuditLog) -> Result<(), Fatal> {
    if journal.carrying_from().is_some() {
        audit.sync().map_err(Fatal::Audit)?;
    }
    Ok(())
}

/// Appends `entries`, with `carried` beside them when there is any, with one sync.
fn append(
    journal: &mut dyn Journal,
    metrics: &Metrics,
    entries: &[Entry],
    carried: &[u8],
) -> Result<(), Fatal> {
    let started = std::time::Instant::now();
    let appended = if carried.is_empty() {
        journal.append(entries)
    } else {
        journal.append_carrying(entries, carried)
    };
    metrics.store_sync.observe(started.elapsed().as_secs_f64());
    metrics.store_batch.observe(entries.len() as f64);
    // Never retry a failed sync: the kernel may have dropped the dirty pages. Stop, and let
    // recovery replay what is durable.
    appended.map_err(Fatal::Journal)
}

/// Hands the journal the state after the last durable decision.
fn snapshot(
    state: SnapshotState,
    views: &Views,
    metrics: &Metrics,
    journal: &mut dyn Journal,
) -> Result<(), Fatal> {
    // Replies to the next batch wait for this copy too (at 1,000,000 live requests it takes
    // longer than the state's), so operators see it beside the state copy's log line.
    let started = std::time::Instant::now();
    let events = views.retained_events();
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        events = events.len(),
        "retained events copied for a snapshot"
    );
    let snapshot = Snapshot { state, events };
    metrics
        .store_snapshots
        .with_label_values(&[SnapshotKind::Full.name()])
        .inc();
    journal.snapshot(snapshot).map_err(Fatal::Snapshot)
}

/// Hands the journal what changed since the last snapshot, as of the batch `head` was copied at.
fn delta(
    head: State,
    since: &mut SinceSnapshot,
    metrics: &Metrics,
    journal: &mut dyn Journal,
) -> Result<(), Fatal> {
    metrics
        .store_snapshots
        .with_label_values(&[SnapshotKind::Incremental.name()])
        .inc();
    journal.delta(since.take(head)).map_err(Fatal::Snapshot)
}

async fn sleep_until(clock: &dyn Clock, at: Option<Timestamp>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}
