//! Incremental snapshot rows: what changed since the snapshot row before, written fenced by the
//! leader's epoch, and the chain of them after a full row applied at a restart or a takeover
//! (read by `snapshot::newest`), so that recovery replays at most the journal rows since the
//! last of them.

use postgres::Client;
use rustc_hash::FxHashMap;

use super::connect::pg_error;
use super::local::LocalCopy;
use super::packed::{self, RowBytes};
use super::snapshot::Loaded;
use crate::store::delta::{DeltaFile, delta_bytes, read_delta_from};
use crate::store::{Delta, Directory, StoreError, codec};

/// Writes the incremental snapshot after `lsn` entries, following the snapshot row that covered
/// `after`, if `epoch` still holds the lease. The body is compressed first ([`packed`]); once
/// committed, `local` keeps a copy of it as written. Returns its sizes, or `None` when fenced.
pub(crate) fn write(
    client: &mut Client,
    (url, epoch): (&str, i64),
    (lsn, after): (u64, u64),
    directory: &Directory,
    delta: &Delta,
    local: Option<&LocalCopy>,
) -> Result<Option<RowBytes>, StoreError> {
    let raw = delta_bytes(lsn, after, directory, delta)?;
    let body = packed::pack(&raw)?;
    let bytes = RowBytes {
        raw: raw.len(),
        stored: body.len(),
    };
    let head = &raw[..codec::SNAPSHOT_HEADER.min(raw.len())];
    let written = client
        .execute(
            "INSERT INTO labaid_delta (lsn, after, epoch, body, packing, head) \
             SELECT $1, $2, $3, $4, $5, $6 FROM labaid_lease WHERE id = 1 AND epoch = $3 FOR SHARE",
            &[
                &(lsn as i64),
                &(after as i64),
                &epoch,
                &body,
                &packed::ZSTD,
                &head,
            ],
        )
        .map_err(|e| pg_error(url, e))?;
    if let (1, Some(local)) = (written, local) {
        local.keep_delta(lsn, &raw);
    }
    Ok((written == 1).then_some(bytes))
}

/// An incremental row read: the entries it covers, those of the row it follows, its body's size
/// as written, and what it holds (or why that cannot be read).
pub(super) struct Row {
    pub lsn: u64,
    pub after: u64,
    pub bytes: u64,
    pub delta: Result<DeltaFile, StoreError>,
}

/// Decodes the body of the incremental row after `lsn` entries, following the row after `after`.
/// Done apart from [`apply`], so that each row decodes while the one before is merged.
pub(super) fn decode(lsn: u64, after: u64, body: &[u8]) -> Row {
    let delta = read_delta_from(
        body,
        &format!("the incremental snapshot row after {lsn} entries"),
    )
    .and_then(|delta| {
        if delta.lsn != lsn || delta.after != after {
            return Err(StoreError::Corrupt(format!(
                "the incremental snapshot row after {lsn} entries (following {after}) says it \
                 covers {} entries, following {}",
                delta.lsn, delta.after
            )));
        }
        Ok(delta)
    });
    Row {
        lsn,
        after,
        bytes: body.len() as u64,
        delta,
    }
}

/// Applies each row that follows the state `loaded` holds (a row that could not be fetched or
/// unpacked ends it with that error). The chain ends at the first row that does not (one written
/// after a failed write, or left by an older broker's full row): the journal rows after the last
/// row applied are kept until the next full one, so replaying them from there loses nothing.
/// Returns how many it applied.
pub(super) fn apply(
    loaded: &mut Loaded,
    rows: impl Iterator<Item = Result<Row, StoreError>>,
) -> Result<usize, StoreError> {
    // A request changed in several rows keeps only its last version; the core is indexed once.
    let mut merged = FxHashMap::default();
    let mut head = None;
    let mut applied = 0;
    for row in rows {
        let Row {
            lsn,
            after,
            bytes,
            delta,
        } = row?;
        if after != loaded.lsn {
            tracing::warn!(
                store.snapshot_entries = loaded.lsn,
                store.delta_entries = lsn,
                store.delta_after = after,
                "an incremental snapshot row does not follow the state read; replaying the \
                 journal from there"
            );
            break;
        }
        let delta = delta?;
        merged.extend(delta.changed);
        head = Some(delta.head);
        loaded.events.extend(delta.events);
        loaded.directory = delta.directory;
        loaded.deltas_bytes += bytes;
        loaded.lsn = lsn;
        applied += 1;
    }
    if let Some(head) = head {
        loaded.router.apply_delta(head, merged);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::domain::{Priority, Timestamp};
    use crate::routing::fixtures::submit;
    use crate::routing::{DefaultPolicy, Outcome, Router, RoutingPolicy};
    use crate::store::codec;
    use crate::store::postgres::snapshot;

    fn policy() -> Arc<dyn RoutingPolicy> {
        Arc::new(DefaultPolicy)
    }

    fn now() -> Timestamp {
        Timestamp::from_millis(1_750_000_000_000)
    }

    /// Submits `orders` to `router`; returns what changed, as an incremental row holds it.
    fn submit_some(router: &mut Router, orders: std::ops::Range<usize>) -> Delta {
        let mut outcome = Outcome::default();
        let mut requests = Vec::new();
        for order in orders {
            let command = submit(router, "RJ1", order, Priority::Urgent, now());
            router
                .apply(&command, now(), &mut outcome)
                .expect("applies");
            let crate::routing::Command::Submit { id, .. } = command else {
                unreachable!()
            };
            requests.push((id, router.request(&id).cloned()));
        }
        Delta {
            head: router.state().head_copy(),
            requests,
            events: outcome.events,
        }
    }

    /// An incremental row: entries covered, those of the row it follows, its body.
    type Written = (u64, u64, Vec<u8>);

    /// A full row of three requests after entry 3, then rows after entries 5 and 9 holding the
    /// requests submitted since; the router as it stands after all of them.
    fn chain() -> (Loaded, Vec<Written>, Router) {
        let directory = Config::demo().expect("demo").directory();
        let mut router = directory.router(policy());
        let first = submit_some(&mut router, 0..3);
        let full = codec::snapshot_bytes(3, &directory, router.state().clone(), &first.events)
            .expect("encodes");
        let loaded = snapshot::decode(3, &full, policy()).expect("decodes");
        let second = submit_some(&mut router, 3..5);
        let third = submit_some(&mut router, 5..9);
        let rows = vec![
            (
                5,
                3,
                delta_bytes(5, 3, &directory, &second).expect("encodes"),
            ),
            (
                9,
                5,
                delta_bytes(9, 5, &directory, &third).expect("encodes"),
            ),
        ];
        (loaded, rows, router)
    }

    fn rows(rows: &[Written]) -> impl Iterator<Item = Result<Row, StoreError>> + '_ {
        rows.iter()
            .map(|(lsn, after, body)| Ok(decode(*lsn, *after, body)))
    }

    #[test]
    fn the_rows_after_a_full_one_bring_the_core_to_the_last_of_them() {
        let (mut loaded, chain, router) = chain();
        assert_eq!(apply(&mut loaded, rows(&chain)).expect("applies"), 2);
        assert_eq!(loaded.lsn, 9);
        assert_eq!(loaded.full_lsn, 3);
        assert_eq!(loaded.router.request_count(), 9);
        for request in router.requests() {
            assert_eq!(loaded.router.request(&request.id), Some(request));
        }
        assert_eq!(loaded.router.queue().len(), router.queue().len());
        assert_eq!(loaded.router.next_timer(), router.next_timer());
        assert_eq!(
            loaded.deltas_bytes,
            chain.iter().map(|(_, _, b)| b.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn the_chain_ends_at_a_row_that_does_not_follow_the_one_before() {
        let (mut loaded, mut chain, _) = chain();
        // The row after entry 5 was never written: the one after 9 follows nothing read.
        chain.remove(0);
        assert_eq!(apply(&mut loaded, rows(&chain)).expect("stops"), 0);
        assert_eq!(loaded.lsn, 3, "the journal is replayed from the full row");
        assert_eq!(loaded.router.request_count(), 3);
        assert_eq!(loaded.deltas_bytes, 0);
    }

    #[test]
    fn a_row_whose_body_covers_other_entries_or_is_damaged_is_refused_by_name() {
        let (loaded, chain, _) = chain();
        let mut moved = chain.clone();
        moved[0].0 = 6;
        moved[1].1 = 6;
        let mut into = snapshot::decode(3, &full_of(&loaded), policy()).expect("decodes");
        let err = apply(&mut into, rows(&moved)).unwrap_err().to_string();
        assert!(
            err.contains("row after 6 entries") && err.contains("covers 5"),
            "{err}"
        );
        let mut cut = chain;
        let half = cut[0].2.len() / 2;
        cut[0].2.truncate(half);
        let mut into = snapshot::decode(3, &full_of(&loaded), policy()).expect("decodes");
        let err = apply(&mut into, rows(&cut)).unwrap_err().to_string();
        assert!(
            err.contains("the incremental snapshot row after 5 entries is damaged"),
            "{err}"
        );
    }

    /// `loaded` as a full row again.
    fn full_of(loaded: &Loaded) -> Vec<u8> {
        codec::snapshot_bytes(
            loaded.lsn,
            &loaded.directory,
            loaded.router.state().clone(),
            &loaded.events,
        )
        .expect("encodes")
    }
}
