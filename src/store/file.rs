//! The file journal: segments of checksummed records synced once per append (group commit), and
//! snapshots written by a background thread so that acknowledgements do not wait for them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use serde::{Deserialize, Serialize};

use super::record;
use super::{Directory, Entry, Journal, Snapshot, StoreError, StoreOptions, SyncMode};
use crate::domain::{OdsCode, Request, RequestId, Timestamp};
use crate::routing::{DefaultPolicy, Event, EventKind, Router, State};

/// First bytes of a journal segment; followed by its first entry number and a checksum.
const SEGMENT_MAGIC: &[u8; 8] = b"LABAIDJ1";
/// Length of a segment's header.
pub(crate) const SEGMENT_HEADER: usize = 20;
/// First bytes of a snapshot; followed by the payload length, a checksum and the payload. Format
/// 2 stores each request once (see `RequestRef`); format 1 is still read.
const SNAPSHOT_MAGIC: &[u8; 8] = b"LABAIDS2";
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"LABAIDS1";
const SNAPSHOT_HEADER: usize = 20;

/// The segment holding entries from `first` on.
pub(crate) fn segment_name(first: u64) -> String {
    format!("journal-{first:020}.log")
}

/// The snapshot of the state after `lsn` entries.
pub(crate) fn snapshot_name(lsn: u64) -> String {
    format!("snapshot-{lsn:020}.snap")
}

/// The number in a file name of the given shape.
pub(crate) fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A record's payload: a batch of entries numbered from `first`.
#[derive(Serialize)]
struct BatchRef<'a> {
    first: u64,
    entries: &'a [Entry],
}

/// A record's payload, read back.
#[derive(Debug, Deserialize)]
pub(crate) struct Batch {
    pub(crate) first: u64,
    pub(crate) entries: Vec<Entry>,
}

/// How a retained event's request is stored in a snapshot: most events carry the request exactly
/// as the state holds it (the same `Arc`), so they name it instead of repeating it; an event
/// whose request changed since points at one copy of that older version, shared by every event
/// that carried it. Without this a snapshot held each request once per event, and a restart from
/// it decoded (and kept in memory) a copy per event.
#[derive(Debug, Serialize, Deserialize)]
enum RequestRef {
    /// The request as the state holds it.
    Current(RequestId),
    /// An older version, by index into the snapshot's `versions`.
    Version(u32),
}

/// A retained event in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct EventRecord {
    org: OdsCode,
    sequence: u64,
    time: Timestamp,
    kind: EventKind,
    request: RequestRef,
}

#[derive(Serialize)]
struct HeadRef<'a> {
    lsn: u64,
    directory: &'a Directory,
    state: &'a State,
}

#[derive(Serialize)]
struct EventsRef<'a> {
    versions: Vec<&'a Request>,
    events: Vec<EventRecord>,
}

/// A format 2 payload is `[length of the head: u64 LE][head][events]`, two postcard encodings,
/// so that the events decode on a second thread while the core's state decodes.
#[derive(Debug, Deserialize)]
struct Head {
    lsn: u64,
    directory: Directory,
    state: State,
}

/// The events part of a format 2 payload.
#[derive(Debug, Deserialize)]
struct Events {
    versions: Vec<Request>,
    events: Vec<EventRecord>,
}

/// A snapshot file's payload as written by format 1 (every event with its own request), still
/// read so that a data directory from an earlier build starts; the next snapshot is format 2.
#[derive(Debug, Deserialize)]
struct SnapshotFileV1 {
    lsn: u64,
    directory: Directory,
    state: State,
    events: Vec<Event>,
}

/// A snapshot, read back: the core it holds, and its retained events sharing the core's requests.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    pub(crate) lsn: u64,
    pub(crate) directory: Directory,
    pub(crate) router: Router,
    pub(crate) events: Vec<Event>,
}

/// The events of a snapshot as records, and the older request versions they point at.
fn event_records<'a>(router: &Router, events: &'a [Event]) -> (Vec<&'a Request>, Vec<EventRecord>) {
    let mut versions = Vec::new();
    let mut index: HashMap<*const Request, u32> = HashMap::new();
    let records = events
        .iter()
        .map(|e| {
            let request = match router.request(&e.request.id) {
                Some(now) if Arc::ptr_eq(now, &e.request) => RequestRef::Current(e.request.id),
                _ => RequestRef::Version(*index.entry(Arc::as_ptr(&e.request)).or_insert_with(
                    || {
                        versions.push(&*e.request);
                        (versions.len() - 1) as u32
                    },
                )),
            };
            EventRecord {
                org: e.org.clone(),
                sequence: e.sequence,
                time: e.time,
                kind: e.kind,
                request,
            }
        })
        .collect();
    (versions, records)
}

/// Events from their records, each sharing its request with the core or with the other events
/// that carried the same older version.
fn resolve_events(
    router: &Router,
    versions: &[Arc<Request>],
    records: Vec<EventRecord>,
) -> Result<Vec<Event>, String> {
    records
        .into_iter()
        .map(|r| {
            let request = match r.request {
                RequestRef::Current(id) => router.request(&id).cloned().ok_or_else(|| {
                    format!("an event names request {id}, which it does not hold")
                })?,
                RequestRef::Version(i) => versions.get(i as usize).cloned().ok_or_else(|| {
                    format!("an event names request version {i} of {}", versions.len())
                })?,
            };
            Ok(Event {
                org: r.org,
                sequence: r.sequence,
                time: r.time,
                kind: r.kind,
                request,
            })
        })
        .collect()
}

/// Syncs a directory, so that files created, renamed or removed in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn segment_header(first: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0; SEGMENT_HEADER];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first entry number a segment header names, if the header is whole and valid.
pub(crate) fn read_segment_header(buf: &[u8]) -> Option<u64> {
    let h = buf.get(..SEGMENT_HEADER)?;
    let first = u64::from_le_bytes(h[8..16].try_into().ok()?);
    (h == segment_header(first)).then_some(first)
}

/// Creates an empty segment for entries from `first` on, durably.
pub(crate) fn create_segment(dir: &Path, first: u64) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(segment_name(first)))?;
    file.write_all(&segment_header(first))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes a snapshot durably (temporary name, sync, rename, directory sync); returns its size.
pub(crate) fn write_snapshot(
    dir: &Path,
    lsn: u64,
    directory: &Directory,
    router: &Router,
    events: &[Event],
) -> Result<u64, StoreError> {
    let (versions, events) = event_records(router, events);
    let encode = |e: postcard::Error| StoreError::Corrupt(format!("cannot encode a snapshot: {e}"));
    let mut payload = postcard::to_extend(
        &HeadRef {
            lsn,
            directory,
            state: router.state(),
        },
        vec![0; 8],
    )
    .map_err(encode)?;
    let head_len = (payload.len() - 8) as u64;
    payload[..8].copy_from_slice(&head_len.to_le_bytes());
    let payload = postcard::to_extend(&EventsRef { versions, events }, payload).map_err(encode)?;
    let len = (payload.len() as u64).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&payload);
    let tmp = dir.join(format!("{}.tmp", snapshot_name(lsn)));
    let mut file = File::create(&tmp)?;
    file.write_all(SNAPSHOT_MAGIC)?;
    file.write_all(&len)?;
    file.write_all(&crc.finalize().to_le_bytes())?;
    file.write_all(&payload)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(snapshot_name(lsn)))?;
    sync_dir(dir)?;
    Ok((SNAPSHOT_HEADER + payload.len()) as u64)
}

/// Reads a snapshot; any damage is an error (a snapshot is only renamed into place once synced).
pub(crate) fn read_snapshot(path: &Path) -> Result<SnapshotFile, StoreError> {
    let buf = fs::read(path)?;
    let damaged =
        |why: &str| StoreError::Corrupt(format!("snapshot {} is damaged: {why}", path.display()));
    let version = match buf.get(..8) {
        Some(m) if m == SNAPSHOT_MAGIC => 2,
        Some(m) if m == SNAPSHOT_MAGIC_V1 => 1,
        _ => return Err(damaged("not a labaid snapshot")),
    };
    if buf.len() < SNAPSHOT_HEADER {
        return Err(damaged("short header"));
    }
    let len_bytes: [u8; 8] = buf[8..16].try_into().map_err(|_| damaged("short header"))?;
    let crc: [u8; 4] = buf[16..20]
        .try_into()
        .map_err(|_| damaged("short header"))?;
    let payload = &buf[SNAPSHOT_HEADER..];
    if u64::from_le_bytes(len_bytes) != payload.len() as u64 {
        return Err(damaged("its length does not match its header"));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(payload);
    if h.finalize() != u32::from_le_bytes(crc) {
        return Err(damaged("checksum mismatch"));
    }
    let decode = |e: postcard::Error| damaged(&format!("cannot decode: {e}"));
    let policy = Arc::new(DefaultPolicy);
    if version == 1 {
        let v1: SnapshotFileV1 = postcard::from_bytes(payload).map_err(decode)?;
        return Ok(SnapshotFile {
            lsn: v1.lsn,
            directory: v1.directory,
            router: Router::from_state(v1.state, policy),
            events: v1.events,
        });
    }
    let (head, events) = payload
        .get(8..)
        .zip(payload.get(..8))
        .and_then(|(rest, len)| {
            let len = u64::from_le_bytes(len.try_into().ok()?);
            let len = usize::try_from(len).ok().filter(|&l| l <= rest.len())?;
            Some(rest.split_at(len))
        })
        .ok_or_else(|| damaged("its head length is out of range"))?;
    // Two cores at a restart: the events decode while the state does, then each half of them
    // is linked to the core's requests on its own thread.
    let (head, events) = std::thread::scope(|scope| {
        let events = scope.spawn(|| postcard::from_bytes::<Events>(events));
        let head = postcard::from_bytes::<Head>(head);
        (head, events.join())
    });
    let head = head.map_err(decode)?;
    let events = events
        .map_err(|_| damaged("decoding its events panicked"))?
        .map_err(decode)?;
    let router = Router::from_state(head.state, policy);
    let versions: Vec<Arc<Request>> = events.versions.into_iter().map(Arc::new).collect();
    let mut records = events.events;
    let second = records.split_off(records.len() / 2);
    let (first, second) = std::thread::scope(|scope| {
        let second = scope.spawn(|| resolve_events(&router, &versions, second));
        (resolve_events(&router, &versions, records), second.join())
    });
    let mut events = first.map_err(|e| damaged(&e))?;
    events.extend(
        second
            .map_err(|_| damaged("linking its events panicked"))?
            .map_err(|e| damaged(&e))?,
    );
    Ok(SnapshotFile {
        lsn: head.lsn,
        directory: head.directory,
        router,
        events,
    })
}

/// Removes snapshots before `lsn` and segments whose entries all come before `lsn`.
fn remove_obsolete(dir: &Path, lsn: u64) -> Result<(), StoreError> {
    for item in fs::read_dir(dir)? {
        let name = item?.file_name();
        let name = name.to_string_lossy();
        let old_snapshot = parse_name(&name, "snapshot-", ".snap").is_some_and(|n| n < lsn);
        // Segments are started at each snapshot's entry number, so one that starts before `lsn`
        // ends before it.
        let old_segment = parse_name(&name, "journal-", ".log").is_some_and(|n| n < lsn);
        if old_snapshot || old_segment {
            fs::remove_file(dir.join(&*name))?;
        }
    }
    sync_dir(dir)
}

struct Job {
    lsn: u64,
    snapshot: Snapshot,
}

/// The thread that writes snapshots, one at a time.
#[derive(Debug)]
struct Writer {
    tx: Option<mpsc::SyncSender<Job>>,
    busy: Arc<AtomicBool>,
    last_size: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(dir: PathBuf, directory: Arc<Directory>, last_size: u64) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let size = Arc::new(AtomicU64::new(last_size));
        let (thread_busy, thread_size) = (busy.clone(), size.clone());
        let thread = thread::Builder::new()
            .name("labaid-snapshot".into())
            .spawn(move || {
                for job in rx {
                    let started = std::time::Instant::now();
                    // A core around the copied state, for its request lookups.
                    let router = Router::from_state(job.snapshot.state, Arc::new(DefaultPolicy));
                    let written =
                        write_snapshot(&dir, job.lsn, &directory, &router, &job.snapshot.events)
                            .and_then(|size| remove_obsolete(&dir, job.lsn).map(|()| size));
                    match written {
                        Ok(bytes) => {
                            tracing::info!(
                                entries = job.lsn,
                                bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "snapshot written"
                            );
                            thread_size.store(bytes, Ordering::Relaxed);
                        }
                        Err(err) => {
                            // The journal still holds everything, but a failed sync must never be
                            // retried: stop, and let the next start recover from what is durable.
                            tracing::error!(error = %err, "snapshot failed; stopping");
                            std::process::abort();
                        }
                    }
                    thread_busy.store(false, Ordering::Release);
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            busy,
            last_size: size,
            thread: Some(thread),
        })
    }

    fn send(&mut self, job: Job) -> Result<(), StoreError> {
        self.busy.store(true, Ordering::Release);
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| StoreError::Io(std::io::Error::other("the snapshot writer stopped")))
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| {
                StoreError::Io(std::io::Error::other("the snapshot writer panicked"))
            })?;
        }
        Ok(())
    }
}

/// Where recovery left the journal: the segment to append to and the counters.
#[derive(Debug)]
pub(crate) struct Tail {
    pub(crate) segment: File,
    pub(crate) segment_first: u64,
    pub(crate) next: u64,
    pub(crate) since_snapshot: u64,
    pub(crate) last_snapshot_size: u64,
}

/// The journal in a data directory. Made by [`super::open`], which recovers first.
#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
    segment: File,
    segment_first: u64,
    /// Number of the next entry.
    next: u64,
    /// Journal bytes written since the last snapshot.
    since_snapshot: u64,
    options: StoreOptions,
    payload: Vec<u8>,
    frames: Vec<u8>,
    writer: Writer,
    _lock: File,
}

impl FileJournal {
    pub(crate) fn new(
        dir: PathBuf,
        lock: File,
        directory: Directory,
        tail: Tail,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let writer = Writer::start(dir.clone(), Arc::new(directory), tail.last_snapshot_size)?;
        Ok(Self {
            dir,
            segment: tail.segment,
            segment_first: tail.segment_first,
            next: tail.next,
            since_snapshot: tail.since_snapshot,
            options,
            payload: Vec::new(),
            frames: Vec::new(),
            writer,
            _lock: lock,
        })
    }

    /// Number of entries journaled since the data directory was made.
    pub fn entries(&self) -> u64 {
        self.next
    }

    fn push_record(&mut self, first: u64, entries: &[Entry]) -> Result<(), StoreError> {
        self.payload.clear();
        let payload = std::mem::take(&mut self.payload);
        self.payload = postcard::to_extend(&BatchRef { first, entries }, payload)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode entries: {e}")))?;
        record::frame(&self.payload, &mut self.frames);
        Ok(())
    }

    fn write_and_sync(&mut self) -> Result<(), StoreError> {
        self.segment.write_all(&self.frames)?;
        self.segment.sync_data()?;
        self.since_snapshot += self.frames.len() as u64;
        self.frames.clear();
        Ok(())
    }
}

impl Journal for FileJournal {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.frames.clear();
        match self.options.sync {
            SyncMode::PerBatch => {
                self.push_record(self.next, entries)?;
                self.write_and_sync()?;
            }
            SyncMode::PerEntry => {
                for (i, entry) in entries.iter().enumerate() {
                    self.push_record(self.next + i as u64, std::slice::from_ref(entry))?;
                    self.write_and_sync()?;
                }
            }
        }
        self.next += entries.len() as u64;
        Ok(())
    }

    fn snapshot_due(&self, closing: bool) -> bool {
        if closing {
            return self.since_snapshot > 0;
        }
        let trigger = self
            .options
            .snapshot_min_bytes
            .max(self.writer.last_size.load(Ordering::Relaxed));
        self.since_snapshot >= trigger && !self.writer.busy.load(Ordering::Acquire)
    }

    fn snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        // Later entries go to a new segment, so that once the snapshot is durable every older
        // segment can be removed whole.
        if self.segment_first != self.next {
            self.segment = create_segment(&self.dir, self.next)?;
            self.segment_first = self.next;
        }
        self.since_snapshot = 0;
        self.writer.send(Job {
            lsn: self.next,
            snapshot,
        })
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.writer.finish()
    }
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        let _ = self.writer.finish();
    }
}
