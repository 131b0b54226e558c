//! Reading the snapshot rows at a restart or a standby's reload: the newest full row, then each
//! incremental row after it, in one read-only transaction (so a snapshot written meanwhile does
//! not take rows away mid-read). One row is decoded while the next is fetched, and a large full
//! row streams into its decoder slice by slice, so fetching and decoding overlap.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use postgres::{Client, IsolationLevel, Row};

use super::arriving::Arriving;
use super::connect::pg_error;
use super::snapshot::{self, Loaded};
use crate::routing::RoutingPolicy;
use crate::store::{StoreError, codec};

/// Bytes fetched per query while a full row streams in: a sixteenth of the row, within these
/// bounds, so that a query's round trip is small beside its slice and the first sections decode
/// early. A row of one slice or less is fetched whole.
const SLICE_MIN: i32 = 64 << 10;
const SLICE_MAX: i32 = 8 << 20;

/// A snapshot row fetched.
enum Fetched {
    /// The full row after `lsn` entries.
    Full { lsn: u64, body: FullBody },
    /// An incremental row: the entries it covers, those of the row it follows, and the row
    /// (its body in column 2).
    Incremental { lsn: u64, after: u64, row: Row },
}

/// A full row's body: whole, or still arriving.
enum FullBody {
    Whole(Row),
    Arriving(Arc<Arriving>),
}

/// An incremental row's body.
struct Body(Row);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.get(2)
    }
}

/// The newest full snapshot with the incremental rows after it applied, if any. Its core
/// routes by `policy`, the broker's configured one.
pub(crate) fn newest(
    client: &mut Client,
    url: &str,
    policy: Arc<dyn RoutingPolicy>,
) -> Result<Option<Loaded>, StoreError> {
    let started = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<Fetched>(1);
    let (read, fetched) = std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("labaid-pg-read".into())
            .spawn_scoped(scope, move || read_rows(rx, policy));
        let fetched = fetch_rows(client, url, tx);
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
    let (fetching, streamed) = fetched?;
    let Some((loaded, incremental)) = read? else {
        return Ok(None);
    };
    tracing::info!(
        store.snapshot_entries = loaded.full_lsn,
        store.covered_entries = loaded.lsn,
        requests = loaded.router.request_count(),
        incremental,
        streamed,
        fetch_ms = fetching.as_millis() as u64,
        ms = started.elapsed().as_millis() as u64,
        "snapshot rows read"
    );
    Ok(Some(loaded))
}

/// Fetches the newest full row, then each incremental row after it in order, handing each to
/// `tx` until there are no more or the reader stops taking them; returns the time it took and
/// whether the full row was streamed.
fn fetch_rows(
    client: &mut Client,
    url: &str,
    tx: mpsc::SyncSender<Fetched>,
) -> Result<(Duration, bool), StoreError> {
    let started = Instant::now();
    let failed = |e| pg_error(url, e);
    let mut db = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(failed)?;
    let Some(head) = db
        .query_opt(
            "SELECT lsn, length(body), pg_column_compression(body) IS NULL, \
             substring(body FROM 1 FOR 8) FROM labaid_snapshot ORDER BY lsn DESC LIMIT 1",
            &[],
        )
        .map_err(failed)?
    else {
        return Ok((started.elapsed(), false));
    };
    let lsn: i64 = head.get(0);
    let len: i32 = head.get(1);
    let uncompressed: bool = head.get(2);
    let slice = (len / 16).clamp(SLICE_MIN, SLICE_MAX);
    // Slices of a compressed value would each decompress it from its start.
    let streamed = uncompressed && len > slice && codec::is_format_3(head.get(3));
    if streamed {
        let arriving = Arc::new(Arriving::new(len as u64));
        let body = FullBody::Arriving(arriving.clone());
        if tx
            .send(Fetched::Full {
                lsn: lsn as u64,
                body,
            })
            .is_err()
        {
            return Ok((started.elapsed(), streamed));
        }
        let mut at: i32 = 1;
        // The reader holds the other reference until it is done with the body.
        while (at as i64) <= len as i64 && Arc::strong_count(&arriving) > 1 {
            let slice = db.query_one(
                "SELECT substring(body FROM $1 FOR $2) FROM labaid_snapshot WHERE lsn = $3",
                &[&at, &slice, &lsn],
            );
            match slice {
                Ok(row) => {
                    let bytes: &[u8] = row.get(0);
                    if bytes.is_empty() {
                        arriving.fail("the row ended before its length".into());
                        break;
                    }
                    arriving.push(bytes);
                    at += bytes.len() as i32;
                }
                Err(e) => {
                    arriving.fail(e.to_string());
                    return Err(failed(e));
                }
            }
        }
    } else {
        let row = db
            .query_one(
                "SELECT lsn, lsn, body FROM labaid_snapshot WHERE lsn = $1",
                &[&lsn],
            )
            .map_err(failed)?;
        let body = FullBody::Whole(row);
        if tx
            .send(Fetched::Full {
                lsn: lsn as u64,
                body,
            })
            .is_err()
        {
            return Ok((started.elapsed(), streamed));
        }
    }
    let mut after = lsn;
    while let Some(row) = db
        .query_opt(
            "SELECT lsn, after, body FROM labaid_delta WHERE lsn > $1 ORDER BY lsn LIMIT 1",
            &[&after],
        )
        .map_err(failed)?
    {
        after = row.get(0);
        let follows: i64 = row.get(1);
        let fetched = Fetched::Incremental {
            lsn: after as u64,
            after: follows as u64,
            row,
        };
        if tx.send(fetched).is_err() {
            break;
        }
    }
    db.commit().map_err(failed)?;
    Ok((started.elapsed(), streamed))
}

/// Decodes the full row and applies the incremental ones as `fetch_rows` hands them over;
/// returns the state and how many incremental rows it applied.
fn read_rows(
    rx: mpsc::Receiver<Fetched>,
    policy: Arc<dyn RoutingPolicy>,
) -> Result<Option<(Loaded, usize)>, StoreError> {
    let mut rows = rx.into_iter();
    let Some(Fetched::Full { lsn, body }) = rows.next() else {
        return Ok(None);
    };
    let mut loaded = match body {
        FullBody::Whole(row) => snapshot::decode(lsn, row.get(2), policy)?,
        FullBody::Arriving(arriving) => snapshot::decode_from(lsn, &*arriving, policy)?,
    };
    let incremental = super::delta::apply(
        &mut loaded,
        rows.map_while(|f| match f {
            Fetched::Incremental { lsn, after, row } => Some((lsn, after, Body(row))),
            Fetched::Full { .. } => None,
        }),
    )?;
    Ok(Some((loaded, incremental)))
}
