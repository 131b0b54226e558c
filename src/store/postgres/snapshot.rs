//! Snapshot rows: the core's state, the directory it was made under and the retained events after
//! a number of entries, in the file store's snapshot format (sections that decode in parallel,
//! events sharing the core's requests), compressed ([`packed`]) and written fenced by the
//! leader's epoch; and reading the newest of them, from this host's copies where they match
//! ([`LocalCopy`]). Rows written as one postcard value by earlier builds are still read.

use std::borrow::Cow;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use postgres::Client;
use serde::Deserialize;

use super::connect::pg_error;
use super::local::LocalCopy;
use super::packed::{self, RowBytes};
use crate::routing::{Event, Router, RoutingPolicy, State};
use crate::store::{Directory, StoreError, codec};

/// A row's body as earlier builds wrote it: one postcard value.
#[derive(Deserialize)]
struct SnapshotRow {
    lsn: u64,
    directory: Directory,
    state: State,
    events: Vec<Event>,
}

/// A full snapshot row, and the incremental rows after it once applied ([`super::delta`]).
#[derive(Debug)]
pub(crate) struct Loaded {
    /// Entries covered: the full row's, then the last incremental row's applied.
    pub lsn: u64,
    /// Entries the full row covers.
    pub full_lsn: u64,
    /// The directory the last row applied was made under.
    pub directory: Directory,
    /// The core.
    pub router: Router,
    /// Retained events.
    pub events: Vec<Event>,
    /// The full row's size.
    pub full_bytes: u64,
    /// The incremental rows' sizes, added up.
    pub deltas_bytes: u64,
}

/// Writes the snapshot after `lsn` entries if `epoch` still holds the lease, then drops the
/// journal rows and older snapshots (full and incremental) it covers, in one transaction. The
/// body is compressed first ([`packed`]); once committed, `local` keeps a copy of it as written.
/// Returns its sizes, or `None` when fenced.
pub(crate) fn write(
    client: &mut Client,
    (url, epoch): (&str, i64),
    lsn: u64,
    directory: &Directory,
    state: State,
    events: &[Event],
    local: Option<&LocalCopy>,
) -> Result<Option<RowBytes>, StoreError> {
    let raw = codec::snapshot_bytes(lsn, directory, state, events)?;
    let body = packed::pack(&raw)?;
    let bytes = RowBytes {
        raw: raw.len(),
        stored: body.len(),
    };
    let head = &raw[..codec::SNAPSHOT_HEADER.min(raw.len())];
    let at = lsn;
    let lsn = lsn as i64;
    let mut tx = client.transaction().map_err(|e| pg_error(url, e))?;
    let written = tx
        .execute(
            "INSERT INTO labaid_snapshot (lsn, epoch, body, packing, head) \
             SELECT $1, $2, $3, $4, $5 FROM labaid_lease WHERE id = 1 AND epoch = $2 FOR SHARE \
             ON CONFLICT (lsn) DO NOTHING",
            &[&lsn, &epoch, &body, &packed::ZSTD, &head],
        )
        .map_err(|e| pg_error(url, e))?;
    let fenced = tx
        .query_opt(
            "SELECT 1 FROM labaid_lease WHERE id = 1 AND epoch = $1",
            &[&epoch],
        )
        .map_err(|e| pg_error(url, e))?
        .is_none();
    if fenced {
        return Ok(None);
    }
    if written == 1 {
        tx.execute("DELETE FROM labaid_snapshot WHERE lsn < $1", &[&lsn])
            .map_err(|e| pg_error(url, e))?;
        tx.execute("DELETE FROM labaid_delta WHERE lsn <= $1", &[&lsn])
            .map_err(|e| pg_error(url, e))?;
        tx.execute("DELETE FROM labaid_journal WHERE lsn < $1", &[&lsn])
            .map_err(|e| pg_error(url, e))?;
    }
    tx.commit().map_err(|e| pg_error(url, e))?;
    if let (1, Some(local)) = (written, local) {
        local.keep(at, &raw);
    }
    Ok(Some(bytes))
}

/// A snapshot row fetched: the entries it covers, the entries of the row it follows (its own
/// for a full row), and its body.
struct Fetched {
    lsn: u64,
    after: u64,
    body: Source,
}

/// Where a fetched row's body is.
enum Source {
    /// In the row: as stored in column 2, how in column 3.
    Row(postgres::Row),
    /// In this host's copy of the row, as written.
    Copy(Vec<u8>),
}

impl Fetched {
    /// The row's entries, the row it follows, and its body as written; `what` names the row in
    /// errors.
    fn unpack(self, what: &str) -> Result<(u64, u64, Body), StoreError> {
        let body = match self.body {
            Source::Copy(body) => Body::Unpacked(body),
            Source::Row(row) => match packed::unpack(row.get(3), row.get(2), what)? {
                Cow::Borrowed(_) => Body::Row(row),
                Cow::Owned(body) => Body::Unpacked(body),
            },
        };
        Ok((self.lsn, self.after, body))
    }
}

/// A snapshot row's body as written: the row's own column 2 when stored as written, else
/// unpacked.
enum Body {
    Row(postgres::Row),
    Unpacked(Vec<u8>),
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Body::Row(row) => row.get(2),
            Body::Unpacked(body) => body,
        }
    }
}

/// The newest full snapshot with the incremental rows after it applied, if any.
/// Its core routes by `policy`, the broker's configured one. One row is decoded while the next
/// is fetched, as the file store reads its incremental snapshots.
pub(crate) fn newest(
    client: &mut Client,
    url: &str,
    policy: Arc<dyn RoutingPolicy>,
    local: Option<&LocalCopy>,
) -> Result<Option<Loaded>, StoreError> {
    match (read_newest(client, url, policy.clone(), local), local) {
        // A copy that matched its row's header but did not decode: the rows have it all.
        (Err(StoreError::Corrupt(why)), Some(local)) => {
            tracing::warn!(error = %why, "a local copy of a snapshot row did not apply; reading the rows");
            local.drop_all();
            read_newest(client, url, policy, None)
        }
        (read, _) => read,
    }
}

/// [`newest`], reading the copies in `local` where they match their rows.
fn read_newest(
    client: &mut Client,
    url: &str,
    policy: Arc<dyn RoutingPolicy>,
    local: Option<&LocalCopy>,
) -> Result<Option<Loaded>, StoreError> {
    let started = Instant::now();
    let copied = match local {
        Some(local) => read_local(client, url, local, policy.clone())?,
        None => None,
    };
    let from_copy = copied.as_ref().map(|c| c.full_lsn);
    let (tx, rx) = mpsc::sync_channel::<Fetched>(1);
    let (read, fetched) = std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("labaid-pg-read".into())
            .spawn_scoped(scope, move || read_rows(rx, policy, copied));
        let fetched = fetch_rows(client, url, tx, (from_copy, local));
        let read = match reader {
            Ok(reader) => reader.join().unwrap_or_else(|_| {
                Err(StoreError::Corrupt(
                    "reading the snapshot rows panicked".into(),
                ))
            }),
            Err(e) => Err(StoreError::Io(e)),
        };
        (read, fetched)
    });
    // A fetch that failed part way ended the reader early: its state must not be used.
    let (fetching, copies) = fetched?;
    let Some((loaded, incremental, unpacking)) = read? else {
        return Ok(None);
    };
    tracing::info!(
        store.snapshot_entries = loaded.full_lsn,
        store.covered_entries = loaded.lsn,
        requests = loaded.router.request_count(),
        incremental,
        local = from_copy.is_some(),
        local_incremental = copies,
        fetch_ms = fetching.as_millis() as u64,
        unpack_ms = unpacking.as_millis() as u64,
        ms = started.elapsed().as_millis() as u64,
        "snapshot rows read"
    );
    Ok(Some(loaded))
}

/// Fetches the newest full row (unless `from_copy` says it was read from this host's copy), then
/// each incremental row after it in order, from `local` where its copy matches the row's header,
/// handing each to `tx` until there are no more or the reader stops taking them; returns the time
/// spent in queries and how many incremental rows came from copies.
fn fetch_rows(
    client: &mut Client,
    url: &str,
    tx: mpsc::SyncSender<Fetched>,
    (from_copy, local): (Option<u64>, Option<&LocalCopy>),
) -> Result<(Duration, usize), StoreError> {
    let mut querying = Duration::ZERO;
    let mut query = |sql: &str, after: Option<u64>| {
        let started = Instant::now();
        let row = match after {
            None => client.query_opt(sql, &[]),
            Some(lsn) => client.query_opt(sql, &[&(lsn as i64)]),
        }
        .map_err(|e| pg_error(url, e));
        querying += started.elapsed();
        row
    };
    let fetched = |row: postgres::Row| Fetched {
        lsn: row.get::<_, i64>(0) as u64,
        after: row.get::<_, i64>(1) as u64,
        body: Source::Row(row),
    };
    let mut copies = 0;
    let mut at = match from_copy {
        Some(lsn) => lsn,
        None => {
            let full =
                "SELECT lsn, lsn, body, packing FROM labaid_snapshot ORDER BY lsn DESC LIMIT 1";
            let Some(row) = query(full, None)? else {
                return Ok((querying, copies));
            };
            let row = fetched(row);
            let lsn = row.lsn;
            if tx.send(row).is_err() {
                return Ok((querying, copies));
            }
            lsn
        }
    };
    let next =
        "SELECT lsn, after, body, packing FROM labaid_delta WHERE lsn > $1 ORDER BY lsn LIMIT 1";
    let next_head = "SELECT lsn, after, head FROM labaid_delta WHERE lsn > $1 ORDER BY lsn LIMIT 1";
    let body_of = "SELECT lsn, after, body, packing FROM labaid_delta WHERE lsn = $1";
    loop {
        let row = match local {
            None => query(next, Some(at))?.map(fetched),
            Some(local) => match query(next_head, Some(at))? {
                None => None,
                Some(head) => {
                    let (lsn, after) = (head.get::<_, i64>(0) as u64, head.get::<_, i64>(1));
                    let copy = head
                        .get::<_, Option<&[u8]>>(2)
                        .and_then(|head| local.delta(lsn, head));
                    match copy {
                        Some(body) => {
                            copies += 1;
                            let after = after as u64;
                            let body = Source::Copy(body);
                            Some(Fetched { lsn, after, body })
                        }
                        None => query(body_of, Some(lsn))?.map(fetched),
                    }
                }
            },
        };
        let Some(row) = row else { break };
        at = row.lsn;
        if tx.send(row).is_err() {
            break;
        }
    }
    Ok((querying, copies))
}

/// Decodes the full row and applies the incremental ones as `fetch_rows` hands them over;
/// returns the state, how many incremental rows it applied and the time spent unpacking them.
fn read_rows(
    rx: mpsc::Receiver<Fetched>,
    policy: Arc<dyn RoutingPolicy>,
    copied: Option<Loaded>,
) -> Result<Option<(Loaded, usize, Duration)>, StoreError> {
    let mut rows = rx.into_iter();
    let mut unpacking = Duration::ZERO;
    let mut loaded = match copied {
        Some(loaded) => loaded,
        None => {
            let Some(full) = rows.next() else {
                return Ok(None);
            };
            let started = Instant::now();
            let what = format!("the snapshot row after {} entries", full.lsn);
            let (lsn, _, body) = full.unpack(&what)?;
            unpacking += started.elapsed();
            decode(lsn, body.as_ref(), policy)?
        }
    };
    // Each incremental row is unpacked and decoded on a thread of its own while the one before
    // is merged here, as the file store reads its incremental snapshots.
    let (tx, decoded) = mpsc::sync_channel(1);
    let (incremental, unpacked) = std::thread::scope(|scope| {
        let decoder = scope.spawn(move || {
            let mut unpacking = Duration::ZERO;
            for f in rows {
                let started = Instant::now();
                let what = format!("the incremental snapshot row after {} entries", f.lsn);
                let row = f.unpack(&what);
                unpacking += started.elapsed();
                let row =
                    row.map(|(lsn, after, body)| super::delta::decode(lsn, after, body.as_ref()));
                let failed = row.is_err();
                if tx.send(row).is_err() || failed {
                    break;
                }
            }
            unpacking
        });
        let applied = super::delta::apply(&mut loaded, decoded.into_iter());
        // Dropping the receiver stops a decoder still at work on rows no longer wanted.
        (applied, decoder.join())
    });
    let incremental = incremental?;
    unpacking += unpacked.map_err(|_| {
        StoreError::Corrupt("decoding the incremental snapshot rows panicked".into())
    })?;
    Ok(Some((loaded, incremental, unpacking)))
}

/// The newest full row as this host's copy of it holds it, if it has the copy (see
/// [`LocalCopy`]); only the row's header is fetched to check it.
fn read_local(
    client: &mut Client,
    url: &str,
    local: &LocalCopy,
    policy: Arc<dyn RoutingPolicy>,
) -> Result<Option<Loaded>, StoreError> {
    let row = client
        .query_opt(
            "SELECT lsn, head FROM labaid_snapshot ORDER BY lsn DESC LIMIT 1",
            &[],
        )
        .map_err(|e| pg_error(url, e))?;
    Ok(row.and_then(|row| {
        let head: Option<&[u8]> = row.get(1);
        local.read(row.get::<_, i64>(0) as u64, head?, policy)
    }))
}

/// The snapshot in the body of the row after `lsn` entries, in either format.
pub(super) fn decode(
    lsn: u64,
    body: &[u8],
    policy: Arc<dyn RoutingPolicy>,
) -> Result<Loaded, StoreError> {
    let damaged = |why: String| {
        StoreError::Corrupt(format!(
            "the snapshot after {lsn} entries cannot be decoded: {why}"
        ))
    };
    let snap = match codec::read_snapshot_bytes(body, policy.clone()).map_err(damaged)? {
        Some(snap) => snap,
        None => {
            let snap: SnapshotRow =
                postcard::from_bytes(body).map_err(|e| damaged(e.to_string()))?;
            codec::SnapshotFile {
                lsn: snap.lsn,
                directory: snap.directory,
                router: Router::from_state(snap.state, policy),
                events: snap.events,
            }
        }
    };
    loaded(lsn, snap, body.len() as u64)
}

/// The full snapshot `snap`, `bytes` long as written, read from the row after `lsn` entries (or
/// a copy of it), if it says it covers that many.
pub(super) fn loaded(
    lsn: u64,
    snap: codec::SnapshotFile,
    bytes: u64,
) -> Result<Loaded, StoreError> {
    if snap.lsn != lsn {
        return Err(StoreError::Corrupt(format!(
            "the snapshot row after {lsn} entries says it covers {}",
            snap.lsn
        )));
    }
    Ok(Loaded {
        lsn: snap.lsn,
        full_lsn: snap.lsn,
        directory: snap.directory,
        router: snap.router,
        events: snap.events,
        full_bytes: bytes,
        deltas_bytes: 0,
    })
}

/// The newest snapshot's entry number, if any (cheap: no body).
pub(crate) fn newest_lsn(client: &mut Client, url: &str) -> Result<Option<u64>, StoreError> {
    let row = client
        .query_one("SELECT max(lsn) FROM labaid_snapshot", &[])
        .map_err(|e| pg_error(url, e))?;
    Ok(row.get::<_, Option<i64>>(0).map(|l| l as u64))
}

#[cfg(test)]
pub(super) mod tests {
    use serde::Serialize;

    use super::*;
    use crate::config::Config;
    use crate::domain::{Priority, Timestamp};
    use crate::routing::fixtures::submit;
    use crate::routing::{DefaultPolicy, Outcome};

    /// A row's body as format 1 wrote it.
    #[derive(Serialize)]
    struct OldRow<'a> {
        lsn: u64,
        directory: &'a Directory,
        state: &'a State,
        events: &'a [Event],
    }

    fn policy() -> Arc<dyn RoutingPolicy> {
        Arc::new(DefaultPolicy)
    }

    /// A core with five requests routed, its directory and its events.
    pub(in crate::store::postgres) fn routed() -> (Directory, Router, Vec<Event>) {
        let directory = Config::demo().expect("demo").directory();
        let mut router = directory.router(policy());
        let now = Timestamp::from_millis(1_750_000_000_000);
        let mut outcome = Outcome::default();
        for order in 0..5 {
            let command = submit(&router, "RJ1", order, Priority::Urgent, now);
            router.apply(&command, now, &mut outcome).expect("applies");
        }
        (directory, router, outcome.events)
    }

    #[test]
    fn rows_of_either_format_read_back_as_the_state_they_hold() {
        let (directory, router, events) = routed();
        let new = codec::snapshot_bytes(7, &directory, router.state().clone(), &events).unwrap();
        let old = postcard::to_stdvec(&OldRow {
            lsn: 7,
            directory: &directory,
            state: router.state(),
            events: &events,
        })
        .unwrap();
        for body in [new, old] {
            let loaded = decode(7, &body, policy()).expect("decodes");
            assert_eq!(loaded.router.request_count(), 5);
            assert_eq!(loaded.events.len(), events.len());
            for request in router.requests() {
                assert_eq!(loaded.router.request(&request.id), Some(request));
            }
            assert_eq!(loaded.router.next_timer(), router.next_timer());
        }
    }

    #[test]
    fn a_damaged_row_or_one_for_other_entries_is_refused_by_name() {
        let (directory, router, events) = routed();
        let body = codec::snapshot_bytes(7, &directory, router.state().clone(), &events).unwrap();
        let err = decode(8, &body, policy()).unwrap_err().to_string();
        assert!(err.contains("says it covers 7"), "{err}");
        let err = decode(7, &body[..body.len() / 2], policy())
            .unwrap_err()
            .to_string();
        assert!(err.contains("after 7 entries cannot be decoded"), "{err}");
    }
}
