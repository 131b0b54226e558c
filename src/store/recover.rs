//! Recovery: open a data directory, load the latest snapshot, replay the journal after it through
//! the core, drop a torn tail (and say so), refuse damage anywhere else.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use super::codec;
use super::delta::{delta_name, read_delta};
use super::file::{FileJournal, Tail};
use super::loss::{DataLoss, Mark, entries_shown, read_mark};
use super::record::{self, End};
use super::segment::{
    Batch, SEGMENT_HEADER, create_segment, obsolete_at, parse_name, read_segment_header,
    remove_files, segment_name, snapshot_name, sync_dir,
};
use super::{Directory, StoreError, StoreOptions};
use crate::domain::{Request, RequestId, Timestamp};
use rustc_hash::FxHashMap;

use crate::routing::{Event, Outcome, Router, RoutingPolicy};

/// Where a new segment's records start.
const HEADER_LEN: u64 = SEGMENT_HEADER as u64;

/// A recovered core, its retained events, and the journal to carry on with.
#[derive(Debug)]
pub struct Recovered {
    /// The core as of the last durable entry.
    pub router: Router,
    /// Every retained event, in sequence order within each organisation.
    pub events: Vec<Event>,
    /// The journal, ready to append after the last durable entry.
    pub journal: FileJournal,
    /// Entries the snapshots covered (the full one and the incremental ones after it).
    pub snapshot_entries: u64,
    /// Incremental snapshots read after the full one.
    pub incremental: usize,
    /// Entries replayed from the journal after it.
    pub replayed: u64,
    /// Bytes of torn tail dropped.
    pub dropped_bytes: u64,
    /// Acknowledged changes found missing and, as the options allowed, carried on without.
    pub lost: Option<DataLoss>,
    /// The bytes each batch still in the journal carried (its audit records), in journal order,
    /// for [`crate::audit::AuditLog::restore`].
    pub carried: Vec<Vec<u8>>,
}

/// Opens (or makes) the data directory `dir` for `directory`, and recovers what is durable in it
/// into a core that routes by `policy`.
pub fn open(
    dir: &Path,
    directory: Directory,
    policy: Arc<dyn RoutingPolicy>,
    options: StoreOptions,
) -> Result<Recovered, StoreError> {
    open_at(dir, directory, policy, options, Timestamp::now())
}

/// [`open`], with the time at which a changed directory routes waiting requests.
pub fn open_at(
    dir: &Path,
    directory: Directory,
    policy: Arc<dyn RoutingPolicy>,
    options: StoreOptions,
    now: Timestamp,
) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let dir = dir.to_path_buf();
    make_dir(&dir)?;
    let lock = lock(&dir)?;
    let mut snapshots = Vec::new();
    let mut deltas = Vec::new();
    let mut segments = Vec::new();
    for item in fs::read_dir(&dir)? {
        let name = item?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = parse_name(&name, "snapshot-", ".snap") {
            snapshots.push(n);
        } else if let Some(n) = parse_name(&name, "delta-", ".snap") {
            deltas.push(n);
        } else if let Some(n) = parse_name(&name, "journal-", ".log") {
            segments.push(n);
        } else if (name.starts_with("snapshot-") || name.starts_with("delta-"))
            && name.ends_with(".tmp")
        {
            // A snapshot that was being written when the broker stopped; never renamed, never used.
            fs::remove_file(dir.join(&*name))?;
        }
    }
    snapshots.sort_unstable();
    deltas.sort_unstable();
    segments.sort_unstable();

    let Some(&lsn) = snapshots.last() else {
        if !segments.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "{} holds journal segments but no snapshot; refusing to guess the state",
                dir.display()
            )));
        }
        return create(dir, lock, directory, policy, options);
    };
    let snap = codec::read_snapshot(&dir.join(snapshot_name(lsn)), policy.clone())?;
    if snap.lsn != lsn {
        return Err(StoreError::Corrupt(format!(
            "snapshot {} says it covers {} entries",
            snapshot_name(lsn),
            snap.lsn
        )));
    }
    let full_read = started.elapsed();
    let last_snapshot_size = fs::metadata(dir.join(snapshot_name(lsn)))?.len();
    let mut router = snap.router;
    let mut events = snap.events;
    let mut pinned = snap.directory;

    // The incremental snapshots after it, each applying to the state the one before left.
    let mut covered = lsn;
    let mut deltas_size = 0;
    let mut incremental = 0;
    let mut chain = Vec::with_capacity(deltas.len());
    for n in deltas {
        if n <= lsn {
            // Left by a stop before the full snapshot that covers it removed it.
            fs::remove_file(dir.join(delta_name(n)))?;
        } else {
            chain.push(n);
        }
    }
    // Each is read (on both cores) while the one before is merged (on one): a request changed in
    // several keeps only its last version, and the whole chain is indexed in one sorted pass.
    let mut merged: FxHashMap<RequestId, Option<Arc<Request>>> = FxHashMap::default();
    let mut head = None;
    std::thread::scope(|scope| -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let read_dir = &dir;
        scope.spawn(move || {
            for n in chain {
                let path = read_dir.join(delta_name(n));
                let read = read_delta(&path).and_then(|d| Ok((d, fs::metadata(&path)?.len())));
                let failed = read.is_err();
                if tx.send((n, read)).is_err() || failed {
                    return;
                }
            }
        });
        for (n, read) in rx {
            let (delta, size) = read?;
            if delta.lsn != n || delta.after != covered {
                return Err(StoreError::Corrupt(format!(
                    "{} covers entries {} to {}, but the snapshots before it cover {covered}",
                    delta_name(n),
                    delta.after,
                    delta.lsn
                )));
            }
            merged.extend(delta.changed);
            head = Some(delta.head);
            events.extend(delta.events);
            pinned = delta.directory;
            deltas_size += size;
            incremental += 1;
            covered = n;
        }
        Ok(())
    })?;
    if let Some(head) = head {
        router.apply_delta(head, merged);
    }
    let lsn = covered;
    let snapshots_read = started.elapsed();
    if incremental > 0 {
        tracing::debug!(
            full_ms = full_read.as_millis() as u64,
            incremental,
            incremental_ms = (snapshots_read - full_read).as_millis() as u64,
            "snapshots read"
        );
    }
    // A changed directory is applied after replay: the journal was written under the old one.
    let differences = directory.differences(&pinned);

    // Segments that end before the snapshot are leftovers of a stop before their removal.
    while segments.len() > 1 && segments[1] <= lsn {
        fs::remove_file(dir.join(segment_name(segments.remove(0))))?;
    }
    // A first segment that starts after the snapshot is a gap, found as such below.
    let mut next = segments
        .first()
        .copied()
        .filter(|&f| f <= lsn)
        .unwrap_or(lsn);
    let mark = read_mark(&dir, options.accept_data_loss)?;
    // Entries acknowledged as far as the evidence goes: the mark, or `shown` if more.
    let acked = |shown: u64| mark.unwrap_or(0).max(shown);
    let mut lost: Option<DataLoss> = None;
    // Segments after a loss, set aside (renamed, not removed) if the loss is accepted.
    let mut set_aside: Vec<u64> = Vec::new();
    // A last segment cut short while it was being created: removed once the start goes ahead.
    let mut short: Option<PathBuf> = None;
    let mut replayed = 0;
    let mut dropped_bytes = 0;
    let mut since_snapshot = 0;
    let mut carried = Vec::new();
    // The last segment replayed, and where its records end.
    let mut tail: Option<SegmentEnd> = None;
    for (i, &first) in segments.iter().enumerate() {
        if lost.is_some() {
            set_aside.push(first);
            continue;
        }
        let last = i + 1 == segments.len();
        let path = dir.join(segment_name(first));
        let name = segment_name(first);
        // Every entry before a later segment's first was synced before that segment was made.
        let later = segments.get(i + 1).copied().unwrap_or(0);
        if first != next {
            lost = Some(DataLoss {
                file: segment_name(next),
                offset: 0,
                from: next.max(lsn),
                acknowledged: acked(first),
                what: format!("is missing (the journal goes on with {name}, from entry {first})"),
            });
            set_aside.push(first);
            continue;
        }
        let buf = fs::read(&path)?;
        if read_segment_header(&buf) != Some(first) {
            if last && buf.len() <= SEGMENT_HEADER && mark.is_none_or(|m| m <= first) {
                // Made just before a stop, before its header was synced: it held no entries.
                tracing::warn!(file = %name, bytes = buf.len(), "dropping a journal segment cut short while it was being created");
                dropped_bytes += buf.len() as u64;
                short = Some(path);
                continue;
            }
            lost = Some(DataLoss {
                file: name,
                offset: 0,
                from: next.max(lsn),
                acknowledged: acked(later)
                    .max(entries_shown(buf.get(SEGMENT_HEADER..).unwrap_or(&[]))),
                what: "its header is damaged or cut short".into(),
            });
            set_aside.push(first);
            continue;
        }
        let body = &buf[SEGMENT_HEADER..];
        let (payloads, end) = record::scan(body);
        // Records decode on a second thread while this one applies them; the channel keeps
        // their order, and a record that cannot be decoded stops the replay where it stands.
        std::thread::scope(|scope| -> Result<(), StoreError> {
            type Read = Result<(Batch, Option<Vec<u8>>), postcard::Error>;
            let (tx, rx) = mpsc::sync_channel::<Read>(64);
            scope.spawn(move || {
                for payload in payloads {
                    let batch = Batch::read(payload);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
            for batch in rx {
                let (batch, with) = batch.map_err(|e| {
                    StoreError::Corrupt(format!(
                        "{name}: a record at entry {next} has a valid checksum but cannot be decoded ({e})"
                    ))
                })?;
                if batch.first != next {
                    return Err(StoreError::Corrupt(format!(
                        "{name}: expected entry {next}, found a record starting at entry {}",
                        batch.first
                    )));
                }
                carried.extend(with);
                for entry in &batch.entries {
                    if next >= lsn {
                        let mut outcome = Outcome::default();
                        router
                            .apply(&entry.command, entry.time, &mut outcome)
                            .map_err(|e| {
                                StoreError::Corrupt(format!(
                                    "entry {next} no longer applies to the state before it ({e}); \
                                     this broker build decides differently from the one that wrote it"
                                ))
                            })?;
                        events.append(&mut outcome.events);
                        replayed += 1;
                    }
                    next += 1;
                }
            }
            Ok(())
        })?;
        let damage = |at: usize, what: String, shown: u64| DataLoss {
            file: name.clone(),
            offset: (SEGMENT_HEADER + at) as u64,
            from: next.max(lsn),
            acknowledged: acked(later).max(shown),
            what,
        };
        let valid = match end {
            End::Clean => body.len(),
            End::Reserved { at } => at,
            // Only a record whose sync never returned (so never acknowledged) may be torn.
            End::Torn { at } if last && mark.is_none_or(|m| next >= m) => {
                let dropped = body.len() - at;
                tracing::warn!(
                    file = %name,
                    offset = SEGMENT_HEADER + at,
                    bytes = dropped,
                    "dropping a torn record at the end of the journal, written after the last synced entry; it was never acknowledged"
                );
                dropped_bytes += dropped as u64;
                at
            }
            End::Torn { at } => {
                let what = if last {
                    "a record before the last synced entry is damaged or cut short"
                } else {
                    "a record is damaged or cut short, and later segments follow"
                };
                lost = Some(damage(at, what.into(), 0));
                at
            }
            End::Damaged { at, next: good } => {
                let what = format!(
                    "a record is damaged, with valid records after it (from byte {})",
                    SEGMENT_HEADER + good
                );
                lost = Some(damage(at, what, entries_shown(&body[good..])));
                at
            }
        };
        if first >= lsn {
            since_snapshot += valid as u64;
        }
        tail = Some(SegmentEnd {
            path,
            first,
            end: (SEGMENT_HEADER + valid) as u64,
            len: buf.len() as u64,
            cut: !matches!(end, End::Clean | End::Reserved { .. }),
        });
    }
    if lost.is_none()
        && let Some(m) = mark
        && next < m
    {
        // A segment deleted, or cut at a record's end: nothing looks damaged, but it ends early.
        lost = Some(match &tail {
            Some(t) => DataLoss {
                file: segment_name(t.first),
                offset: t.end,
                from: next.max(lsn),
                acknowledged: m,
                what: "the journal ends here, before the last synced entry".into(),
            },
            None => DataLoss {
                file: segment_name(next),
                offset: 0,
                from: next.max(lsn),
                acknowledged: m,
                what: "is missing".into(),
            },
        });
    }
    if let Some(loss) = &lost {
        if !options.accept_data_loss {
            return Err(StoreError::Lost(loss.clone()));
        }
        tracing::error!(
            file = %loss.file,
            offset = loss.offset,
            missing = loss.missing(),
            set_aside = set_aside.len(),
            "{loss}; accepted (--accept-data-loss): carrying on without them, later segments renamed to *.lost"
        );
        if next < lsn {
            // Damage in entries the snapshot covers: the journal starts again at it.
            set_aside.extend(tail.take().map(|t| t.first));
            next = lsn;
        }
        for first in &set_aside {
            set_aside_segment(&dir, *first)?;
        }
        sync_dir(&dir)?;
    }
    if next < lsn {
        return Err(StoreError::Corrupt(format!(
            "the journal ends at entry {next}, before the snapshot's {lsn}"
        )));
    }
    if let Some(path) = short {
        fs::remove_file(&path)?;
        sync_dir(&dir)?;
    }
    let replay_ms = (started.elapsed() - snapshots_read).as_millis() as u64;
    let (mut segment, mut segment_first, mut segment_end, mut segment_len) = match tail {
        Some(t) => {
            let file = OpenOptions::new().write(true).open(&t.path)?;
            let len = if t.cut && t.end < t.len {
                file.set_len(t.end)?;
                file.sync_all()?;
                t.end
            } else {
                t.len.max(t.end)
            };
            (file, t.first, t.end, len)
        }
        None => (create_segment(&dir, next)?, next, HEADER_LEN, HEADER_LEN),
    };
    let mut last_snapshot_size = last_snapshot_size;
    let mut snapshot_entries = lsn;
    if !differences.is_empty() {
        let mut outcome = Outcome::default();
        router
            .adopt_directory(&directory.router(policy), now, &mut outcome)
            .map_err(|e| {
                StoreError::Refused(format!(
                    "its directory cannot change that way ({}): {e}",
                    differences.join(", ")
                ))
            })?;
        events.append(&mut outcome.events);
        // Pin the new directory: a snapshot at the end of the journal and a fresh segment after
        // it, so that the next start replays only entries made under the new directory.
        last_snapshot_size =
            codec::write_snapshot(&dir, next, &directory, router.state().clone(), &events)?;
        if segment_first != next {
            drop(segment);
            segment = create_segment(&dir, next)?;
            segment_first = next;
            segment_end = HEADER_LEN;
            segment_len = HEADER_LEN;
        }
        remove_files(&dir, |name| obsolete_at(name, next))?;
        since_snapshot = 0;
        snapshot_entries = next;
        deltas_size = 0;
        pinned = directory;
        tracing::warn!(
            changed = %differences.join(", "),
            "the directory changed since the store was written; applied it and took a snapshot"
        );
    }
    tracing::info!(
        data_dir = %dir.display(),
        snapshot_entries = lsn,
        incremental,
        snapshots_ms = snapshots_read.as_millis() as u64,
        replayed,
        replay_ms,
        dropped_bytes,
        requests = router.request_count(),
        ms = started.elapsed().as_millis() as u64,
        "store recovered"
    );
    let mark = Mark::create(&dir, next)?;
    let journal = FileJournal::new(
        dir,
        lock,
        pinned,
        Tail {
            mark,
            segment,
            segment_first,
            segment_end,
            segment_len,
            next,
            since_snapshot,
            snapshot_entries,
            last_snapshot_size,
            deltas_size,
        },
        options,
    )?;
    Ok(Recovered {
        router,
        events,
        journal,
        snapshot_entries: lsn,
        incremental,
        replayed,
        dropped_bytes,
        lost,
        carried,
    })
}

/// Where the last segment replayed ends.
struct SegmentEnd {
    path: PathBuf,
    first: u64,
    /// Offset just past its last valid record.
    end: u64,
    /// Its length on disk.
    len: u64,
    /// True when bytes after `end` are not reserved zeros, so the file is cut there.
    cut: bool,
}

/// Renames a segment past an accepted loss out of the journal, keeping it for the operator.
fn set_aside_segment(dir: &Path, first: u64) -> Result<(), StoreError> {
    let name = segment_name(first);
    let mut to = format!("{name}.lost");
    let mut n = 1;
    while dir.join(&to).exists() {
        n += 1;
        to = format!("{name}.lost{n}");
    }
    tracing::warn!(file = %name, to = %to, "journal segment set aside");
    fs::rename(dir.join(&name), dir.join(&to))?;
    Ok(())
}

/// A new data directory: a snapshot of the empty state pins the directory it was made for.
fn create(
    dir: PathBuf,
    lock: File,
    directory: Directory,
    policy: Arc<dyn RoutingPolicy>,
    options: StoreOptions,
) -> Result<Recovered, StoreError> {
    let router = directory.router(policy);
    let size = codec::write_snapshot(&dir, 0, &directory, router.state().clone(), &[])?;
    let segment = create_segment(&dir, 0)?;
    let mark = Mark::create(&dir, 0)?;
    tracing::info!(data_dir = %dir.display(), "new data directory");
    let journal = FileJournal::new(
        dir,
        lock,
        directory,
        Tail {
            mark,
            segment,
            segment_first: 0,
            segment_end: HEADER_LEN,
            segment_len: HEADER_LEN,
            next: 0,
            since_snapshot: 0,
            snapshot_entries: 0,
            last_snapshot_size: size,
            deltas_size: 0,
        },
        options,
    )?;
    Ok(Recovered {
        router,
        events: Vec::new(),
        journal,
        snapshot_entries: 0,
        incremental: 0,
        replayed: 0,
        dropped_bytes: 0,
        lost: None,
        carried: Vec::new(),
    })
}

fn make_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    // The new directory's entry lives in its parent: sync that too.
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)
}

/// Makes `dir` if need be and locks it for this process, as the file store does: a broker on the
/// PostgreSQL store keeps its audit log (whose hash chain one writer continues) and its copies of
/// the snapshot rows there, so two brokers must not share one.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    make_dir(dir)?;
    lock(dir)
}

fn lock(dir: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            Err(StoreError::Refused("it is in use by another broker".into()))
        }
        Err(fs::TryLockError::Error(e)) => Err(e.into()),
    }
}
