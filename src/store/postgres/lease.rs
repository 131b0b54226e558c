//! Leadership: one lease row with an epoch and an expiry set by the database's own clock (it
//! survives a database failover and a holder that died mid-query, unlike a session advisory
//! lock). The leader renews it well inside its lifetime on one session, opened as the term
//! begins; losing that session ends the term, since a new one could reach another database (a
//! promoted standby holds the same lease row at the same epoch). A watchdog on this process's
//! monotonic clock steps the broker down when renewals have not succeeded for most of a
//! lifetime, so a paused leader stops leading as soon as it runs again. Journal writes check the
//! epoch themselves (see `journal`), so nothing it writes after a takeover commits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;

use super::connect::{PgTarget, pg_error};
use super::leadership::Leadership;
use crate::store::StoreError;

/// How long a lease lasts and how often it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// From the last renewal until a standby may take over.
    pub lifetime: Duration,
    /// Between renewals (a sixth of the lifetime by default: five may fail before it lapses).
    pub renew_every: Duration,
    /// Between a standby's attempts (and its reads of the journal).
    pub poll_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_millis(2_000),
            renew_every: Duration::from_millis(330),
            poll_every: Duration::from_millis(100),
        }
    }
}

/// Takes the lease if it has lapsed (by the database's clock), with the next epoch.
pub(crate) fn try_acquire(
    client: &mut Client,
    url: &str,
    holder: &str,
    address: &str,
    lifetime: Duration,
) -> Result<Option<i64>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE labaid_lease SET epoch = epoch + 1, holder = $1, address = $2, \
             expires = clock_timestamp() + make_interval(secs => $3) \
             WHERE id = 1 AND expires < clock_timestamp() RETURNING epoch",
            &[&holder, &address, &lifetime.as_secs_f64()],
        )
        .map_err(|e| pg_error(url, e))?;
    Ok(row.map(|r| r.get(0)))
}

/// The address of the broker holding an unexpired lease, if any.
pub(crate) fn leader(client: &mut Client, url: &str) -> Result<Option<String>, StoreError> {
    let row = client
        .query_opt(
            "SELECT address FROM labaid_lease WHERE id = 1 AND expires >= clock_timestamp()",
            &[],
        )
        .map_err(|e| pg_error(url, e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Keeps a held lease: a renewer thread and a watchdog, which end the term when it is lost.
/// Dropping it (or `release`) stops both.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    epoch: i64,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    target: PgTarget,
}

impl LeaseKeeper {
    /// Starts renewing the lease `term` holds.
    pub(crate) fn start(
        target: PgTarget,
        term: &Leadership,
        timing: LeaseTiming,
    ) -> Result<Self, StoreError> {
        let epoch = term.epoch();
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        // Milliseconds since `origin` at the last successful renewal (or the acquisition).
        let renewed = Arc::new(AtomicU64::new(0));
        let renewer = {
            let (stop, renewed, target, term) =
                (stop.clone(), renewed.clone(), target.clone(), term.clone());
            thread::Builder::new()
                .name("labaid-lease".into())
                .spawn(move || renew(&target, &term, timing, origin, &renewed, &stop))?
        };
        let watchdog = {
            let (stop, renewed, term) = (stop.clone(), renewed.clone(), term.clone());
            thread::Builder::new()
                .name("labaid-lease-watchdog".into())
                .spawn(move || watch(&term, timing, origin, &renewed, &stop))?
        };
        Ok(Self {
            epoch,
            stop,
            threads: vec![renewer, watchdog],
            target,
        })
    }

    /// The epoch held.
    pub(crate) fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Stops renewing and lets the lease lapse now, so a standby takes over at once (a clean stop).
    pub(crate) fn release(mut self) -> Result<(), StoreError> {
        self.stop_threads();
        let mut client = self.target.connect()?;
        let released = client
            .execute(
                "UPDATE labaid_lease SET expires = '-infinity' WHERE id = 1 AND epoch = $1",
                &[&self.epoch],
            )
            .map_err(|e| pg_error(self.target.url(), e))?;
        if released == 1 {
            tracing::info!(store.epoch = self.epoch, "lease released");
        }
        Ok(())
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn renew(
    target: &PgTarget,
    term: &Leadership,
    timing: LeaseTiming,
    origin: Instant,
    renewed: &AtomicU64,
    stop: &AtomicBool,
) {
    let epoch = term.epoch();
    let over = || stop.load(Ordering::Acquire) || term.is_ending();
    let mut client = match target.connect() {
        Ok(client) => client,
        Err(e) => {
            term.step_down(&format!(
                "cannot open the session that renews the lease: {e}"
            ));
            return;
        }
    };
    while !over() {
        thread::sleep(timing.renew_every);
        if over() {
            return;
        }
        let started = origin.elapsed();
        match client.execute(
            "UPDATE labaid_lease SET expires = clock_timestamp() + make_interval(secs => $2) \
             WHERE id = 1 AND epoch = $1",
            &[&epoch, &timing.lifetime.as_secs_f64()],
        ) {
            // Counted from before the statement was sent: the database set the expiry later.
            Ok(1) => renewed.store(started.as_millis() as u64, Ordering::Release),
            Ok(_) => {
                term.step_down("another broker took the lease");
                return;
            }
            // Never renewed on a new session: after a failover the multi-host URL leads it to the
            // promoted standby, where this epoch's lease row is too, and the term would go on
            // there with its journal's session on the dead primary.
            Err(e) if client.is_closed() => {
                term.step_down(&format!(
                    "lost the database session that holds the lease: {e}"
                ));
                return;
            }
            Err(e) => tracing::warn!(store.epoch = epoch, error = %e, "lease renewal failed"),
        }
    }
}

fn watch(
    term: &Leadership,
    timing: LeaseTiming,
    origin: Instant,
    renewed: &AtomicU64,
    stop: &AtomicBool,
) {
    // A margin for clock rate differences and the time a renewal takes to reach the database.
    let limit = timing.lifetime.mul_f64(0.8).as_millis() as u64;
    let tick = (timing.renew_every / 4).max(Duration::from_millis(10));
    let over = || stop.load(Ordering::Acquire) || term.is_ending();
    while !over() {
        let since =
            (origin.elapsed().as_millis() as u64).saturating_sub(renewed.load(Ordering::Acquire));
        if since > limit && !over() {
            term.step_down("the lease was not renewed within its lifetime");
            return;
        }
        thread::sleep(tick);
    }
}
