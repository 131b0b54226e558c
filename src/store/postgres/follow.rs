//! Recovery and following: the newest full snapshot row and the incremental rows after it,
//! plus the journal rows after those, applied through the core. A standby keeps doing this while it waits for the lease, so taking over
//! only applies the rows committed since its last read.

use std::sync::{Arc, mpsc};

use postgres::{Client, Row};

use super::connect::pg_error;
use super::journal::Position;
use super::local::LocalCopy;
use super::snapshot;
use crate::routing::{Event, Outcome, Router, RoutingPolicy};
use crate::store::{Directory, Entry, StoreError};

/// Rows read per query while catching up.
const PAGE: i64 = 10_000;

/// A core kept as current as the journal rows read so far.
#[derive(Debug)]
pub(crate) struct Follower {
    /// The core, once a snapshot exists.
    pub router: Option<Router>,
    /// Retained events, including those of the rows applied.
    pub events: Vec<Event>,
    /// The directory the newest snapshot read was made under.
    pub pinned: Option<Directory>,
    /// The next entry number to apply.
    pub next: u64,
    /// Entries the snapshot rows read covered.
    pub snapshot_lsn: u64,
    /// Rows applied since those snapshot rows.
    pub replayed: u64,
    /// Their bodies' bytes.
    replayed_bytes: u64,
    /// The full snapshot row's size, and the incremental rows' after it.
    full_bytes: u64,
    deltas_bytes: u64,
    /// The broker's routing policy, for the cores read from snapshots.
    policy: Arc<dyn RoutingPolicy>,
    /// This broker's copy of the newest full snapshot row, if it keeps one.
    local: Option<LocalCopy>,
}

impl Follower {
    /// A follower with no core yet, whose cores route by `policy`, reading full snapshot rows
    /// from `local` when it holds them.
    pub(crate) fn new(policy: Arc<dyn RoutingPolicy>, local: Option<LocalCopy>) -> Self {
        Self {
            router: None,
            events: Vec::new(),
            pinned: None,
            next: 0,
            snapshot_lsn: 0,
            replayed: 0,
            replayed_bytes: 0,
            full_bytes: 0,
            deltas_bytes: 0,
            policy,
            local,
        }
    }

    /// Applies every row committed after `next`, reloading the newest snapshot first when there
    /// is none yet or when the rows this core needs were dropped behind a newer snapshot.
    pub(crate) fn catch_up(&mut self, client: &mut Client, url: &str) -> Result<(), StoreError> {
        let newest = snapshot::newest_lsn(client, url)?;
        let behind = match newest {
            None => return Ok(()),
            Some(lsn) => self.router.is_none() || lsn > self.next,
        };
        if behind {
            self.reload(client, url)?;
        }
        while let Some(lsn) = self.apply_rows(client, url)? {
            // Rows below a newer snapshot were dropped meanwhile: start from it.
            if snapshot::newest_lsn(client, url)?.is_some_and(|s| s > self.next) {
                self.reload(client, url)?;
                continue;
            }
            return Err(StoreError::Corrupt(format!(
                "the journal skips from entry {} to {lsn}",
                self.next
            )));
        }
        Ok(())
    }

    /// Applies the rows from `next` on, a page at a time. A full first page means more are
    /// waiting (a restart, a takeover): the pages after it are then fetched on one thread and
    /// decoded on another while this one applies, as the file store decodes its records; a
    /// standby's usual poll finds a short page and starts no thread. Returns the row found where
    /// `next` was expected, if the rows skip.
    fn apply_rows(&mut self, client: &mut Client, url: &str) -> Result<Option<u64>, StoreError> {
        if self.router.is_none() {
            return Ok(None);
        }
        let first = fetch_page(client, url, self.next)?;
        let Some(after) = first
            .last()
            .filter(|_| first.len() as i64 == PAGE)
            .map(|last| last.get::<_, i64>(0) as u64 + 1)
        else {
            return self.apply_pages(std::iter::once(decode_page(&first)));
        };
        let (raw_tx, raw_rx) = mpsc::sync_channel::<Vec<Row>>(1);
        let (tx, rx) = mpsc::sync_channel::<Decoded>(1);
        std::thread::scope(|scope| {
            let spawn = |name: &str| std::thread::Builder::new().name(format!("labaid-pg-{name}"));
            let fetcher = spawn("rows")
                .spawn_scoped(scope, move || fetch_pages(client, url, after, raw_tx))
                .map_err(StoreError::Io)?;
            spawn("decode")
                .spawn_scoped(scope, move || {
                    for rows in std::iter::once(first).chain(raw_rx) {
                        let page = decode_page(&rows);
                        let failed = page.is_err();
                        // Dropping `raw_rx` on return stops the fetcher at its next page.
                        if tx.send(page).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(StoreError::Io)?;
            let applied = self.apply_pages(rx.iter());
            // The decoder, then the fetcher, stop at their next page once nobody takes them.
            drop(rx);
            let fetched = fetcher.join().unwrap_or_else(|_| {
                Err(StoreError::Corrupt("fetching journal rows panicked".into()))
            });
            let skipped = applied?;
            fetched?;
            Ok(skipped)
        })
    }

    /// Applies decoded `pages` in order, until they end or skip an entry.
    fn apply_pages(
        &mut self,
        pages: impl IntoIterator<Item = Decoded>,
    ) -> Result<Option<u64>, StoreError> {
        let Some(router) = self.router.as_mut() else {
            return Ok(None);
        };
        for page in pages {
            for row in page? {
                if row.lsn != self.next {
                    return Ok(Some(row.lsn));
                }
                let mut outcome = Outcome::default();
                router
                    .apply(&row.entry.command, row.entry.time, &mut outcome)
                    .map_err(|e| {
                        StoreError::Corrupt(format!(
                            "entry {} no longer applies to the state before it ({e}); \
                             this broker build decides differently from the one that wrote it",
                            row.lsn
                        ))
                    })?;
                self.events.append(&mut outcome.events);
                self.next += 1;
                self.replayed += 1;
                self.replayed_bytes += row.bytes;
            }
        }
        Ok(None)
    }

    /// Where a journal continuing from this core starts.
    pub(crate) fn position(&self) -> Position {
        Position {
            next: self.next,
            covered: self.snapshot_lsn,
            full_bytes: self.full_bytes,
            deltas_bytes: self.deltas_bytes,
            replayed_bytes: self.replayed_bytes,
        }
    }

    fn reload(&mut self, client: &mut Client, url: &str) -> Result<(), StoreError> {
        if let Some(snap) = snapshot::newest(client, url, self.policy.clone(), self.local.as_ref())?
        {
            self.router = Some(snap.router);
            self.events = snap.events;
            self.pinned = Some(snap.directory);
            self.next = snap.lsn;
            self.snapshot_lsn = snap.lsn;
            self.replayed = 0;
            self.replayed_bytes = 0;
            self.full_bytes = snap.full_bytes;
            self.deltas_bytes = snap.deltas_bytes;
        }
        Ok(())
    }
}

/// One journal row, decoded.
#[derive(Debug)]
struct DecodedRow {
    lsn: u64,
    /// The body's size as stored.
    bytes: u64,
    entry: Entry,
}

/// A page of rows decoded in order, or the first that could not be.
type Decoded = Result<Vec<DecodedRow>, StoreError>;

/// Decodes a page of `lsn, body` rows.
fn decode_page(rows: &[Row]) -> Decoded {
    rows.iter()
        .map(|row| {
            let lsn = row.get::<_, i64>(0) as u64;
            let body: &[u8] = row.get(1);
            let entry = postcard::from_bytes(body).map_err(|e| {
                StoreError::Corrupt(format!("journal entry {lsn} cannot be decoded: {e}"))
            })?;
            Ok(DecodedRow {
                lsn,
                bytes: body.len() as u64,
                entry,
            })
        })
        .collect()
}

/// Fetches the journal rows from entry `from` on, `PAGE` at a time, handing each page to `tx`
/// until a short page or until nobody takes them.
fn fetch_pages(
    client: &mut Client,
    url: &str,
    mut from: u64,
    tx: mpsc::SyncSender<Vec<Row>>,
) -> Result<(), StoreError> {
    loop {
        let rows = fetch_page(client, url, from)?;
        let last_page = (rows.len() as i64) < PAGE;
        if let Some(last) = rows.last() {
            from = last.get::<_, i64>(0) as u64 + 1;
        }
        if tx.send(rows).is_err() || last_page {
            return Ok(());
        }
    }
}

/// Up to `PAGE` journal rows from entry `from` on, in order.
fn fetch_page(client: &mut Client, url: &str, from: u64) -> Result<Vec<Row>, StoreError> {
    client
        .query(
            "SELECT lsn, body FROM labaid_journal WHERE lsn >= $1 ORDER BY lsn LIMIT $2",
            &[&(from as i64), &PAGE],
        )
        .map_err(|e| pg_error(url, e))
}
