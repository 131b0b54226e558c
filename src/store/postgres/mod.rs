//! The PostgreSQL store: the same journal seam as the file store, on a database that several
//! brokers share with exactly one leader. Tables (see `migrations/`): `labaid_store` (the format
//! stamp), `labaid_lease` (leadership), `labaid_journal` (one row per entry) and
//! `labaid_snapshot` (the newest full state) with `labaid_delta` (what changed since, in
//! incremental rows). A broker opening the store is a standby until it takes the lease:
//! meanwhile it follows the journal rows, then it catches up on the last ones and serves as
//! leader until its term ends ([`Leadership`]), when it becomes a standby again.

mod connect;
mod delta;
mod follow;
mod journal;
mod leadership;
mod lease;
mod local;
mod packed;
mod schema;
mod snapshot;
mod start;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::Client;

use crate::domain::Timestamp;
use crate::routing::{Event, Outcome, Router, RoutingPolicy};
use crate::store::{Directory, StoreError, StoreOptions};

pub use connect::{PASSWORD_ENV, PgTarget, is_postgres_url};
pub use journal::PgJournal;
pub use leadership::{Leadership, OnLeader};
pub use lease::LeaseTiming;
pub use local::LocalCopy;
pub use schema::STORE_FORMAT;
pub use start::{lead, options};

use follow::Follower;
use journal::Position;
use lease::LeaseKeeper;

/// How a broker uses the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The database.
    pub target: PgTarget,
    /// The gRPC address other brokers' callers are sent to while this one leads.
    pub address: String,
    /// The lease's timing.
    pub lease: LeaseTiming,
    /// When snapshot rows are due (`snapshot_min_bytes`, counted in journal row bytes); the rest
    /// concerns the file store alone.
    pub store: StoreOptions,
    /// How the core routes: the broker's configured policy, also for cores read from snapshots.
    pub policy: Arc<dyn RoutingPolicy>,
    /// Where this broker keeps a copy of the newest full snapshot row it wrote, to read at a
    /// restart instead of fetching the row (see [`LocalCopy`]); `None` keeps none.
    pub local: Option<LocalCopy>,
}

/// A broker that took the lease: its core, as of the last committed entry, and its journal.
#[derive(Debug)]
pub struct PgRecovered {
    /// The core.
    pub router: Router,
    /// Retained events.
    pub events: Vec<Event>,
    /// The journal, fenced by the epoch taken.
    pub journal: PgJournal,
    /// Entries applied at the takeover itself (those the standby had not yet followed).
    pub caught_up: u64,
    /// The term taken: the broker steps down when it ends, and ends it when a write fails.
    pub leadership: Leadership,
}

/// Connects, migrates, waits as a standby until this broker takes the lease (following the
/// journal meanwhile and telling `on_leader` where the leader is), then returns the core and
/// the journal. Returns `Ok(None)` if `stop` is set first.
pub fn open(
    options: &PgOptions,
    directory: Directory,
    on_leader: &OnLeader,
    stop: &AtomicBool,
) -> Result<Option<PgRecovered>, StoreError> {
    let url = options.target.url().to_string();
    let holder = uuid::Uuid::new_v4().to_string();
    let mut follower = Follower::new(options.policy.clone(), options.local.clone());
    let mut client: Option<Client> = None;
    let mut last_warned: Option<Instant> = None;
    let epoch = loop {
        if stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        match standby_step(&mut client, options, &holder, &mut follower, on_leader) {
            Ok(Some(epoch)) => break epoch,
            Ok(None) => {}
            // A standby outlives the database's failover: it reconnects and carries on.
            Err(e @ StoreError::Io(_)) => {
                client = None;
                if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "standby cannot reach the store; retrying");
                    last_warned = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
        std::thread::sleep(options.lease.poll_every);
    };
    let started = Instant::now();
    // Renewals start at once: catching up and a changed directory take time.
    let leadership = Leadership::new(
        options.target.clone(),
        epoch,
        on_leader.clone(),
        options.lease.lifetime,
    );
    let lease = LeaseKeeper::start(options.target.clone(), &leadership, options.lease)?;
    let taken = match take_over(options, directory, client, &mut follower, epoch) {
        Ok(taken) => taken,
        // A broker that refuses to lead (a directory it may not adopt, a store it cannot read)
        // lets the lease go now rather than keep a standby waiting for it to lapse. One that
        // lost the database leaves it to lapse: releasing would wait for the same database.
        Err(e @ StoreError::Io(_)) => return Err(e),
        Err(e) => {
            if let Err(released) = lease.release() {
                tracing::warn!(store.epoch = epoch, error = %released, "cannot release the lease");
            }
            return Err(e);
        }
    };
    tracing::info!(
        store.url = %url,
        store.epoch = epoch,
        entries = taken.position.next,
        caught_up = taken.caught_up,
        replayed = taken.replayed,
        requests = taken.router.request_count(),
        ms = started.elapsed().as_millis() as u64,
        "took the lease; leading"
    );
    on_leader(Some(options.address.clone()));
    let journal = PgJournal::new(
        &options.target,
        lease,
        taken.pinned,
        taken.position,
        options.store,
        options.local.clone(),
    )?;
    Ok(Some(PgRecovered {
        router: taken.router,
        events: taken.events,
        journal,
        caught_up: taken.caught_up,
        leadership,
    }))
}

/// What a broker that took the lease leads from.
struct TakenOver {
    router: Router,
    events: Vec<Event>,
    /// The directory the store is pinned to now.
    pinned: Directory,
    /// Where the journal continues.
    position: Position,
    /// Journal rows applied at the takeover, and since the snapshot rows read.
    caught_up: u64,
    replayed: u64,
}

/// Catches up on the rows the old leader committed and adopts `directory` (or starts a new
/// store), under the lease held at `epoch`.
fn take_over(
    options: &PgOptions,
    directory: Directory,
    client: Option<Client>,
    follower: &mut Follower,
    epoch: i64,
) -> Result<TakenOver, StoreError> {
    let url = options.target.url();
    let mut client = match client {
        Some(c) => c,
        None => options.target.connect()?,
    };
    // Every row the old leader committed is visible now: its writes hold the lease row shared,
    // so taking the lease waited for them.
    let before = follower.replayed;
    follower.catch_up(&mut client, url)?;
    let caught_up = follower.replayed.saturating_sub(before);
    let replayed = follower.replayed;
    let (mut router, mut events, pinned, position) = match follower.router.take() {
        Some(router) => (
            router,
            std::mem::take(&mut follower.events),
            follower.pinned.take().unwrap_or_else(|| directory.clone()),
            follower.position(),
        ),
        None => {
            // A new store: a snapshot of the empty state pins the directory it was made for.
            let router = directory.router(options.policy.clone());
            let pinned = (&directory, &router, &[][..]);
            let bytes =
                write_pinning(&mut client, (url, epoch), 0, pinned, options.local.as_ref())?;
            tracing::info!(store.url = %url, "new store");
            let position = Position {
                full_bytes: bytes,
                ..Position::default()
            };
            (router, Vec::new(), directory.clone(), position)
        }
    };
    let differences = directory.differences(&pinned);
    let (pinned, position) = if differences.is_empty() {
        (pinned, position)
    } else {
        let mut outcome = Outcome::default();
        router
            .adopt_directory(
                &directory.router(options.policy.clone()),
                Timestamp::now(),
                &mut outcome,
            )
            .map_err(|e| {
                StoreError::Refused(format!(
                    "its directory cannot change that way ({}): {e}",
                    differences.join(", ")
                ))
            })?;
        events.append(&mut outcome.events);
        let next = position.next;
        let pinned = (&directory, &router, &events[..]);
        let bytes = write_pinning(
            &mut client,
            (url, epoch),
            next,
            pinned,
            options.local.as_ref(),
        )?;
        tracing::warn!(
            changed = %differences.join(", "),
            "the directory changed since the store was written; applied it and took a snapshot"
        );
        let position = Position {
            next,
            covered: next,
            full_bytes: bytes,
            ..Position::default()
        };
        (directory, position)
    };
    Ok(TakenOver {
        router,
        events,
        pinned,
        position,
        caught_up,
        replayed,
    })
}

/// One round of waiting: (re)connect, try the lease, else say who leads and follow the journal.
fn standby_step(
    client: &mut Option<Client>,
    options: &PgOptions,
    holder: &str,
    follower: &mut Follower,
    on_leader: &OnLeader,
) -> Result<Option<i64>, StoreError> {
    let url = options.target.url();
    if client.is_none() {
        let mut c = options.target.connect()?;
        schema::migrate(&mut c, url)?;
        *client = Some(c);
    }
    let Some(c) = client.as_mut() else {
        return Ok(None);
    };
    if let Some(epoch) =
        lease::try_acquire(c, url, holder, &options.address, options.lease.lifetime)?
    {
        return Ok(Some(epoch));
    }
    on_leader(lease::leader(c, url)?);
    follower.catch_up(c, url)?;
    Ok(None)
}

/// Writes a snapshot that must exist before the journal goes on (a new store, a changed
/// directory); returns its size.
fn write_pinning(
    client: &mut Client,
    (url, epoch): (&str, i64),
    lsn: u64,
    (directory, router, events): (&Directory, &Router, &[Event]),
    local: Option<&LocalCopy>,
) -> Result<u64, StoreError> {
    let state = router.state().clone();
    match snapshot::write(client, (url, epoch), lsn, directory, state, events, local)? {
        Some(bytes) => Ok(bytes.raw as u64),
        None => Err(StoreError::Refused(format!(
            "fenced: another broker took the lease from epoch {epoch}"
        ))),
    }
}
