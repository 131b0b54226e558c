//! The file journal: segments of checksummed records synced once per append (group commit), and
//! snapshots written by a background thread so that acknowledgements do not wait for them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::delta::write_delta;
use super::record;
use super::{
    Delta, Directory, Entry, Journal, Snapshot, SnapshotKind, StoreError, StoreOptions, SyncMode,
};
use crate::domain::{OdsCode, Request, RequestId, Timestamp};
use crate::routing::{DefaultPolicy, Event, EventKind, Router, State};

/// First bytes of a journal segment; followed by its first entry number and a checksum.
const SEGMENT_MAGIC: &[u8; 8] = b"LABAIDJ1";
/// Length of a segment's header.
pub(crate) const SEGMENT_HEADER: usize = 20;
/// Zeros written ahead of the journal's records whenever they reach the end of the file. The sync
/// after a reservation also flushes the zeros and the file's new length: with 1 MiB that one sync
/// took about ten times an ordinary one, and every batch decided meanwhile waited for it. 64 KiB
/// keeps that sync close to an ordinary one, and still writes the length once per 64 KiB of
/// journal instead of once per sync (BENCHMARKS.md, history, b533194).
const RESERVE: u64 = 64 * 1024;
/// First bytes of a snapshot; followed by the payload length, a checksum and the payload. Format
/// 3 writes the requests apart from the rest of the state, in chunks that decode in parallel
/// (see `write_snapshot`); formats 2 (each request once, see `RequestRef`) and 1 are still read.
const SNAPSHOT_MAGIC: &[u8; 8] = b"LABAIDS3";
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"LABAIDS2";
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"LABAIDS1";
pub(super) const SNAPSHOT_HEADER: usize = 20;
/// Requests per chunk of a format 3 snapshot: enough chunks for every core to take a share, few
/// enough that the section table stays small.
const SNAPSHOT_CHUNK: usize = 4096;

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

/// How a retained event's request is stored in a format 3 snapshot: as `RequestRef`, but the
/// current request is named by its position in the snapshot's requests, so that linking an
/// event at a restart is an index rather than a hash lookup.
#[derive(Debug, Serialize, Deserialize)]
enum RequestSlot {
    /// The request at this position in the snapshot's requests (as the state holds it).
    Current(u32),
    /// An older version, by index into the snapshot's `versions`.
    Version(u32),
}

/// A retained event in a format 3 snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EventSlot {
    org: OdsCode,
    sequence: u64,
    time: Timestamp,
    kind: EventKind,
    request: RequestSlot,
}

#[derive(Serialize)]
struct EventSlotsRef<'a> {
    versions: Vec<&'a Request>,
    events: Vec<EventSlot>,
}

/// The events section of a format 3 payload.
#[derive(Debug, Deserialize)]
struct EventSlots {
    versions: Vec<Request>,
    events: Vec<EventSlot>,
}

/// A retained event in a format 2 snapshot.
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

#[cfg(test)]
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

/// The events of a format 2 snapshot as records, and the older request versions they point at.
#[cfg(test)]
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
    // Not O_APPEND: the journal writes at its own offset, inside space it reserved ahead.
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.join(segment_name(first)))?;
    file.write_all(&segment_header(first))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes a format 3 snapshot durably (temporary name, sync, rename, directory sync); returns
/// its size. The payload is a table of sections, `[count: u32 LE][length: u64 LE; count]`, then
/// the sections: the head (entry number, directory, and the state with its requests taken out),
/// the events, and the requests in ordinal order as postcard sequences of `SNAPSHOT_CHUNK`.
pub(crate) fn write_snapshot(
    dir: &Path,
    lsn: u64,
    directory: &Directory,
    mut state: State,
    events: &[Event],
) -> Result<u64, StoreError> {
    let requests = std::mem::take(state.requests_mut());
    // Ordinal order: the events (in sequence order) then link to nearby requests, and the
    // views' per-organisation lists, built in this order at a restart, come out sorted.
    let mut ordered: Vec<&Arc<Request>> = requests.values().collect();
    ordered.sort_unstable_by_key(|r| r.ordinal);
    let head = postcard::to_stdvec(&HeadRef {
        lsn,
        directory,
        state: &state,
    })
    .map_err(encode_error)?;
    write_sections(
        dir,
        &snapshot_name(lsn),
        SNAPSHOT_MAGIC,
        head,
        &ordered,
        events,
    )
}

pub(super) fn encode_error(e: postcard::Error) -> StoreError {
    StoreError::Corrupt(format!("cannot encode a snapshot: {e}"))
}

/// Writes a sectioned file durably under `name` (temporary name, sync, rename, directory
/// sync) and returns its size: `magic`, the payload length and checksum, then the payload, a
/// table of sections `[count: u32 LE][length: u64 LE; count]` followed by the sections: `head`,
/// the events (each naming its request by position in `requests` when it carries that version),
/// and `requests` as postcard sequences of `SNAPSHOT_CHUNK`.
pub(super) fn write_sections(
    dir: &Path,
    name: &str,
    magic: &[u8; 8],
    head: Vec<u8>,
    requests: &[&Arc<Request>],
    events: &[Event],
) -> Result<u64, StoreError> {
    if u32::try_from(requests.len()).is_err() {
        return Err(StoreError::Corrupt(
            "too many requests for a snapshot".into(),
        ));
    }
    let position: HashMap<RequestId, u32> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i as u32))
        .collect();
    let mut versions = Vec::new();
    let mut index: HashMap<*const Request, u32> = HashMap::new();
    let slots = events
        .iter()
        .map(|e| {
            let request = match position.get(&e.request.id) {
                Some(&i) if Arc::ptr_eq(requests[i as usize], &e.request) => {
                    RequestSlot::Current(i)
                }
                _ => RequestSlot::Version(*index.entry(Arc::as_ptr(&e.request)).or_insert_with(
                    || {
                        versions.push(&*e.request);
                        (versions.len() - 1) as u32
                    },
                )),
            };
            EventSlot {
                org: e.org.clone(),
                sequence: e.sequence,
                time: e.time,
                kind: e.kind,
                request,
            }
        })
        .collect();
    drop(position);
    let mut sections = vec![
        head,
        postcard::to_stdvec(&EventSlotsRef {
            versions,
            events: slots,
        })
        .map_err(encode_error)?,
    ];
    for chunk in requests.chunks(SNAPSHOT_CHUNK) {
        sections.push(postcard::to_stdvec(chunk).map_err(encode_error)?);
    }
    let count = u32::try_from(sections.len())
        .map_err(|_| StoreError::Corrupt("too many snapshot sections".into()))?;
    let mut table = count.to_le_bytes().to_vec();
    for section in &sections {
        table.extend_from_slice(&(section.len() as u64).to_le_bytes());
    }
    let payload_len = table.len() + sections.iter().map(Vec::len).sum::<usize>();
    let len = (payload_len as u64).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&table);
    for section in &sections {
        crc.update(section);
    }
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = PacedWriter::new(File::create(&tmp)?);
    let mut head = magic.to_vec();
    head.extend_from_slice(&len);
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    head.extend_from_slice(&table);
    file.write(&head)?;
    for section in &sections {
        file.write(section)?;
    }
    let file = file.finish();
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok((SNAPSHOT_HEADER + payload_len) as u64)
}

/// Bytes a snapshot writer leaves unsynced at most. The journal's syncs share the disk's queue
/// with it: one sync of a whole snapshot put tens of megabytes ahead of them, and the journal's
/// syncs waited behind it, so it syncs as it goes, as PostgreSQL's checkpoints do.
const SNAPSHOT_SYNC_EVERY: usize = 1024 * 1024;

/// Writes a file, syncing its data every `SNAPSHOT_SYNC_EVERY` bytes.
struct PacedWriter {
    file: File,
    unsynced: usize,
}

impl PacedWriter {
    fn new(file: File) -> Self {
        Self { file, unsynced: 0 }
    }

    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(SNAPSHOT_SYNC_EVERY - self.unsynced);
            self.file.write_all(&bytes[..n])?;
            bytes = &bytes[n..];
            self.unsynced += n;
            if self.unsynced == SNAPSHOT_SYNC_EVERY {
                self.file.sync_data()?;
                self.unsynced = 0;
            }
        }
        Ok(())
    }

    /// The file, every byte written but not necessarily synced.
    fn finish(self) -> File {
        self.file
    }
}

/// Writes a format 2 snapshot, as earlier builds did, to test that it is still read.
#[cfg(test)]
pub(crate) fn write_snapshot_v2(
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
    file.write_all(SNAPSHOT_MAGIC_V2)?;
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
    let damaged =
        |why: &str| StoreError::Corrupt(format!("snapshot {} is damaged: {why}", path.display()));
    let file = File::open(path)?;
    let mut header = [0; SNAPSHOT_HEADER];
    if file.read_exact_at(&mut header, 0).is_ok() && header[..8] == SNAPSHOT_MAGIC[..] {
        // Format 3 is read section by section, never whole: a buffer the size of the file would
        // be a third of a gigabyte of fresh pages at a million requests.
        return read_sections(&file, &header).map_err(|e| match e {
            SectionError::Io(e) => StoreError::Io(e),
            SectionError::Damaged(why) => damaged(&why),
        });
    }
    let buf = fs::read(path)?;
    let version = match buf.get(..8) {
        Some(m) if m == SNAPSHOT_MAGIC_V2 => 2,
        Some(m) if m == SNAPSHOT_MAGIC_V1 => 1,
        Some(m) if m.starts_with(b"LABAIDS") => {
            return Err(StoreError::Corrupt(format!(
                "snapshot {} is in format {:?}, which this build cannot read (it reads formats \
                 1 to 3); start it with the build that wrote it",
                path.display(),
                char::from(m[7])
            )));
        }
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

/// One decoded section of a sectioned file.
enum Section<H> {
    Head(Box<H>),
    Events(EventSlots),
    Requests(RequestChunk),
}

/// Why a sectioned file could not be read.
pub(super) enum SectionError {
    Io(std::io::Error),
    Damaged(String),
}

impl From<String> for SectionError {
    fn from(why: String) -> Self {
        Self::Damaged(why)
    }
}

impl From<&str> for SectionError {
    fn from(why: &str) -> Self {
        Self::Damaged(why.into())
    }
}

/// A chunk of requests, each decoded straight into its `Arc`, the vector sized once.
struct RequestChunk(Vec<Arc<Request>>);

impl<'de> Deserialize<'de> for RequestChunk {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChunkVisitor;
        impl<'de> serde::de::Visitor<'de> for ChunkVisitor {
            type Value = RequestChunk;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of requests")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut chunk =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(SNAPSHOT_CHUNK));
                while let Some(r) = seq.next_element::<Request>()? {
                    chunk.push(Arc::new(r));
                }
                Ok(RequestChunk(chunk))
            }
        }
        deserializer.deserialize_seq(ChunkVisitor)
    }
}

/// Reads a format 3 snapshot (see `write_snapshot`) after its `header`: every core takes the
/// next unread section in turn, reads it into a buffer of its own and decodes it; the checksum
/// is the sections' checksums combined in order, checked before anything decoded is used. Then
/// the core's request map is filled on one thread while the events are linked on another.
fn read_sections(
    file: &File,
    header: &[u8; SNAPSHOT_HEADER],
) -> Result<SnapshotFile, SectionError> {
    let Parts {
        head,
        versions,
        slots,
        requests,
    } = read_parts::<Head>(file, header)?;
    let Head {
        lsn,
        directory,
        mut state,
    } = head;
    let (filled, events) = thread::scope(|scope| {
        let linked = scope.spawn(|| link_events(&requests, &versions, slots));
        let map = state.requests_mut();
        map.reserve(requests.len());
        let mut filled = Ok(());
        for r in &requests {
            if map.insert(r.id, r.clone()).is_some() {
                filled = Err(format!("request {} appears twice", r.id));
                break;
            }
        }
        (filled, linked.join())
    });
    filled?;
    let events = events.map_err(|_| "linking its events panicked")??;
    Ok(SnapshotFile {
        lsn,
        directory,
        router: Router::from_state(state, Arc::new(DefaultPolicy)),
        events,
    })
}

/// The sections of a file written by `write_sections`, decoded and checked.
pub(super) struct Parts<H> {
    pub(super) head: H,
    /// Older versions of requests that events carry.
    pub(super) versions: Vec<Arc<Request>>,
    /// The events, to link with `link_events`.
    pub(super) slots: Vec<EventSlot>,
    pub(super) requests: Vec<Arc<Request>>,
}

/// Reads the sections of a file written by `write_sections` after its `header`: every core
/// takes the next unread section in turn, reads it into a buffer of its own and decodes it; the
/// checksum is the sections' checksums combined in order, checked before anything decoded is
/// returned.
pub(super) fn read_parts<H: serde::de::DeserializeOwned + Send>(
    file: &File,
    header: &[u8; SNAPSHOT_HEADER],
) -> Result<Parts<H>, SectionError> {
    let len_bytes: [u8; 8] = header[8..16].try_into().map_err(|_| "short header")?;
    let crc: [u8; 4] = header[16..20].try_into().map_err(|_| "short header")?;
    let payload_len = u64::from_le_bytes(len_bytes);
    let file_len = file.metadata().map_err(SectionError::Io)?.len();
    if file_len.checked_sub(SNAPSHOT_HEADER as u64) != Some(payload_len) {
        return Err("its length does not match its header".into());
    }
    let mut count = [0; 4];
    file.read_exact_at(&mut count, SNAPSHOT_HEADER as u64)
        .map_err(|_| "its section table is cut short")?;
    let count = u32::from_le_bytes(count) as u64;
    let table_len = count * 8 + 4;
    if count < 2 || table_len > payload_len {
        return Err("its section table is out of range".into());
    }
    let mut table = vec![0; table_len as usize];
    file.read_exact_at(&mut table, SNAPSHOT_HEADER as u64)
        .map_err(SectionError::Io)?;
    let mut sections = Vec::with_capacity(count as usize);
    let mut at = SNAPSHOT_HEADER as u64 + table_len;
    for entry in table[4..].chunks_exact(8) {
        let len = entry.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX);
        let end = at
            .checked_add(len)
            .filter(|&end| end <= file_len)
            .ok_or("a section runs past its end")?;
        sections.push((at, len as usize));
        at = end;
    }
    if at != file_len {
        return Err("its sections do not fill it".into());
    }

    let decode = |i: usize, bytes: &[u8]| -> Result<Section<H>, String> {
        let why = |e: postcard::Error| format!("cannot decode section {i}: {e}");
        Ok(match i {
            0 => Section::Head(Box::new(postcard::from_bytes(bytes).map_err(why)?)),
            1 => Section::Events(postcard::from_bytes(bytes).map_err(why)?),
            _ => Section::Requests(postcard::from_bytes(bytes).map_err(why)?),
        })
    };
    type Decoded<H> = (crc32fast::Hasher, Result<Section<H>, String>);
    type Done<H> = (usize, crc32fast::Hasher, Result<Section<H>, String>);
    let next = AtomicUsize::new(0);
    let work = || -> Result<Vec<Done<H>>, std::io::Error> {
        let mut done = Vec::new();
        let mut buf = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(offset, len)) = sections.get(i) else {
                return Ok(done);
            };
            buf.resize(len, 0);
            file.read_exact_at(&mut buf, offset)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&buf);
            done.push((i, crc, decode(i, &buf)));
        }
    };
    let workers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(sections.len());
    let mut decoded: Vec<Option<Decoded<H>>> = (0..sections.len()).map(|_| None).collect();
    thread::scope(|scope| -> Result<(), SectionError> {
        let others: Vec<_> = (1..workers).map(|_| scope.spawn(work)).collect();
        let mine = work().map_err(SectionError::Io)?;
        for handle in others {
            let done = handle
                .join()
                .map_err(|_| "decoding a section panicked")?
                .map_err(SectionError::Io)?;
            for (i, crc, section) in done {
                decoded[i] = Some((crc, section));
            }
        }
        for (i, crc, section) in mine {
            decoded[i] = Some((crc, section));
        }
        Ok(())
    })?;
    let mut whole = crc32fast::Hasher::new();
    whole.update(&len_bytes);
    whole.update(&table);
    let mut parts = Vec::with_capacity(decoded.len());
    for part in decoded {
        let (crc, section) = part.ok_or("a section was not read")?;
        whole.combine(&crc);
        parts.push(section);
    }
    if whole.finalize() != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    let count = parts.len();
    let mut decoded = parts.into_iter();
    let mut take = || -> Result<Section<H>, String> {
        decoded
            .next()
            .unwrap_or_else(|| Err("a section is missing".into()))
    };
    let Section::Head(head) = take()? else {
        return Err("its first section is not the head".into());
    };
    let Section::Events(events) = take()? else {
        return Err("its second section is not the events".into());
    };
    let mut requests = Vec::new();
    for _ in 2..count {
        let Section::Requests(RequestChunk(chunk)) = take()? else {
            return Err("a requests section holds something else".into());
        };
        if requests.is_empty() {
            requests.reserve_exact((count - 2) * SNAPSHOT_CHUNK);
        }
        requests.extend(chunk);
    }
    Ok(Parts {
        head: *head,
        versions: events.versions.into_iter().map(Arc::new).collect(),
        slots: events.events,
        requests,
    })
}

/// Format 3 events from their records, each sharing its request with the snapshot's requests
/// (and so the core's) or with the other events that carried the same older version.
pub(super) fn link_events(
    requests: &[Arc<Request>],
    versions: &[Arc<Request>],
    slots: Vec<EventSlot>,
) -> Result<Vec<Event>, String> {
    slots
        .into_iter()
        .map(|e| {
            let request = match e.request {
                RequestSlot::Current(i) => requests
                    .get(i as usize)
                    .cloned()
                    .ok_or_else(|| format!("an event names request {i} of {}", requests.len()))?,
                RequestSlot::Version(i) => versions.get(i as usize).cloned().ok_or_else(|| {
                    format!("an event names request version {i} of {}", versions.len())
                })?,
            };
            Ok(Event {
                org: e.org,
                sequence: e.sequence,
                time: e.time,
                kind: e.kind,
                request,
            })
        })
        .collect()
}

/// True for a file of the data directory that a snapshot covering `lsn` entries makes obsolete:
/// an earlier snapshot, an incremental one up to it, or a journal segment before it (segments
/// are started at each snapshot's entry number, so one that starts before `lsn` ends before it).
pub(crate) fn obsolete_at(name: &str, lsn: u64) -> bool {
    parse_name(name, "snapshot-", ".snap").is_some_and(|n| n < lsn)
        || parse_name(name, "delta-", ".snap").is_some_and(|n| n <= lsn)
        || parse_name(name, "journal-", ".log").is_some_and(|n| n < lsn)
}

/// Removes the files of `dir` that `obsolete` picks by name, then syncs it.
pub(crate) fn remove_files(dir: &Path, obsolete: impl Fn(&str) -> bool) -> Result<(), StoreError> {
    for item in fs::read_dir(dir)? {
        let name = item?.file_name();
        let name = name.to_string_lossy();
        if obsolete(&name) {
            fs::remove_file(dir.join(&*name))?;
        }
    }
    sync_dir(dir)
}

/// A snapshot for the writer to write.
enum Job {
    Full { lsn: u64, snapshot: Snapshot },
    Incremental { lsn: u64, after: u64, delta: Delta },
}

/// What the writer keeps for others: the sizes the snapshot trigger weighs, and whom to tell of
/// each snapshot written.
struct Written {
    /// The last full snapshot's size.
    full: AtomicU64,
    /// The incremental snapshots' sizes since it, added up.
    deltas: AtomicU64,
    /// Told of each snapshot once it is durable (see [`FileJournal::observe_snapshots`]).
    observer: OnceLock<SnapshotObserver>,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("full", &self.full)
            .field("deltas", &self.deltas)
            .field("observed", &self.observer.get().is_some())
            .finish()
    }
}

impl Written {
    fn observe(&self, kind: SnapshotKind, bytes: u64, took: Duration) {
        if let Some(observer) = self.observer.get() {
            observer(kind, bytes, took);
        }
    }
}

/// Told of each snapshot the writer made durable: its kind, bytes, and the time it took from
/// being handed over (rebuilding indexes, encoding, writing and syncing).
pub type SnapshotObserver = Box<dyn Fn(SnapshotKind, u64, Duration) + Send + Sync>;

/// What the snapshot trigger weighs.
#[derive(Debug, Clone, Copy)]
struct Due {
    /// Journal bytes since the last snapshot, full or incremental.
    since_snapshot: u64,
    /// Journal bytes since the last full snapshot.
    since_full: u64,
    /// The last full snapshot's size.
    full_size: u64,
    /// The incremental snapshots' sizes since it, added up.
    deltas_size: u64,
    /// Entries from before this start follow the last snapshot (see `FileJournal::full_due`).
    full_due: bool,
}

impl Due {
    /// The snapshot due, if any.
    fn kind(self, options: &StoreOptions, closing: bool) -> Option<SnapshotKind> {
        if closing {
            // A clean stop leaves one full snapshot: the next start reads nothing else.
            return (self.since_snapshot > 0 || self.deltas_size > 0).then_some(SnapshotKind::Full);
        }
        if self.since_snapshot < options.incremental_bytes() {
            return None;
        }
        // Incremental ones cost what changed, but a restart reads each of them after the full
        // one: once they add up to half of it, the next is full. Not before the journal since
        // the full one reaches the minimum, though: while the state is small and growing, half
        // of it comes round every few incremental ones, and each full one pauses deciding for
        // its copy.
        let compact = self.deltas_size.saturating_mul(2) >= self.full_size
            && self.since_full >= options.snapshot_min_bytes;
        Some(if self.full_due || compact {
            SnapshotKind::Full
        } else {
            SnapshotKind::Incremental
        })
    }
}

/// The thread that writes snapshots, one at a time.
#[derive(Debug)]
struct Writer {
    tx: Option<mpsc::SyncSender<Job>>,
    busy: Arc<AtomicBool>,
    written: Arc<Written>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(
        dir: PathBuf,
        directory: Arc<Directory>,
        full: u64,
        deltas: u64,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Written {
            full: AtomicU64::new(full),
            deltas: AtomicU64::new(deltas),
            observer: OnceLock::new(),
        });
        let (thread_busy, thread_written) = (busy.clone(), written.clone());
        let thread = thread::Builder::new()
            .name("labaid-snapshot".into())
            .spawn(move || {
                for job in rx {
                    let started = std::time::Instant::now();
                    let result = match job {
                        Job::Full { lsn, snapshot } => write_snapshot(
                            &dir,
                            lsn,
                            &directory,
                            snapshot.state.into_state(),
                            &snapshot.events,
                        )
                        .and_then(|bytes| {
                            remove_files(&dir, |name| obsolete_at(name, lsn))?;
                            thread_written.full.store(bytes, Ordering::Relaxed);
                            thread_written.deltas.store(0, Ordering::Relaxed);
                            thread_written.observe(SnapshotKind::Full, bytes, started.elapsed());
                            tracing::info!(
                                entries = lsn,
                                bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "snapshot written"
                            );
                            Ok(())
                        }),
                        Job::Incremental { lsn, after, delta } => {
                            write_delta(&dir, lsn, after, &directory, &delta).and_then(|bytes| {
                                // The segments before it are covered; the snapshots it follows
                                // are still needed.
                                remove_files(&dir, |name| {
                                    parse_name(name, "journal-", ".log").is_some_and(|n| n < lsn)
                                })?;
                                thread_written.deltas.fetch_add(bytes, Ordering::Relaxed);
                                thread_written.observe(
                                    SnapshotKind::Incremental,
                                    bytes,
                                    started.elapsed(),
                                );
                                tracing::info!(
                                    entries = lsn,
                                    bytes,
                                    requests = delta.requests.len(),
                                    ms = started.elapsed().as_millis() as u64,
                                    "incremental snapshot written"
                                );
                                Ok(())
                            })
                        }
                    };
                    if let Err(err) = result {
                        // The journal still holds everything, but a failed sync must never be
                        // retried: stop, and let the next start recover from what is durable.
                        tracing::error!(error = %err, "snapshot failed; stopping");
                        std::process::abort();
                    }
                    thread_busy.store(false, Ordering::Release);
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            busy,
            written,
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
    /// Offset just past the segment's last record: where the next one goes.
    pub(crate) segment_end: u64,
    /// The segment's length on disk, reserved space included.
    pub(crate) segment_len: u64,
    pub(crate) next: u64,
    pub(crate) since_snapshot: u64,
    /// Entries covered by the last snapshot, full or incremental.
    pub(crate) snapshot_entries: u64,
    pub(crate) last_snapshot_size: u64,
    /// The incremental snapshots' sizes since the last full one, added up.
    pub(crate) deltas_size: u64,
}

/// The journal in a data directory. Made by [`super::open`], which recovers first.
#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
    segment: File,
    segment_first: u64,
    /// Offset just past the segment's last record.
    segment_end: u64,
    /// The segment's length on disk: records, then zeros reserved for the next ones.
    segment_len: u64,
    /// Number of the next entry.
    next: u64,
    /// Journal bytes written since the last snapshot, full or incremental.
    since_snapshot: u64,
    /// Journal bytes written since the last full snapshot (at a start, estimated: the bytes
    /// after the last snapshot plus the incremental ones' size, as the journal they covered is
    /// gone).
    since_full: u64,
    /// Entries covered by the last snapshot, full or incremental.
    snapshot_entries: u64,
    /// True until a full snapshot follows entries journaled before this journal was opened: the
    /// caller noted only the changes it made itself, so an incremental one would miss those.
    full_due: bool,
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
        let writer = Writer::start(
            dir.clone(),
            Arc::new(directory),
            tail.last_snapshot_size,
            tail.deltas_size,
        )?;
        Ok(Self {
            dir,
            segment: tail.segment,
            segment_first: tail.segment_first,
            segment_end: tail.segment_end,
            segment_len: tail.segment_len,
            next: tail.next,
            since_snapshot: tail.since_snapshot,
            since_full: tail.since_snapshot + tail.deltas_size,
            snapshot_entries: tail.snapshot_entries,
            full_due: tail.since_snapshot > 0,
            options,
            payload: Vec::new(),
            frames: Vec::new(),
            writer,
            _lock: lock,
        })
    }

    /// Has `observer` told of each snapshot written from now on (one observer; a second is
    /// ignored). It runs on the snapshot writer's thread.
    pub fn observe_snapshots(&self, observer: SnapshotObserver) {
        let _ = self.writer.written.observer.set(observer);
    }

    /// Offset just past the last record in the current segment.
    #[cfg(test)]
    pub(crate) fn segment_end(&self) -> u64 {
        self.segment_end
    }

    /// True while a snapshot handed over is still being written.
    pub fn writing_snapshot(&self) -> bool {
        self.writer.busy.load(Ordering::Acquire)
    }

    /// Waits until the snapshot writer is idle.
    #[cfg(test)]
    pub(crate) fn wait_for_writer(&self) {
        while self.writing_snapshot() {
            thread::yield_now();
        }
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
        let end = self.segment_end + self.frames.len() as u64;
        if end > self.segment_len {
            self.reserve(end + RESERVE)?;
        }
        self.segment.write_all_at(&self.frames, self.segment_end)?;
        self.segment.sync_data()?;
        self.segment_end = end;
        self.since_snapshot += self.frames.len() as u64;
        self.since_full += self.frames.len() as u64;
        self.frames.clear();
        Ok(())
    }

    /// Gives back the zeros reserved past the last record, so that a segment no longer written
    /// to (rotated at a snapshot, or at a clean stop) ends at its last record, as segments from
    /// earlier builds did. A crash before this is durable leaves the zeros: still a valid tail.
    fn drop_reserved(&mut self) -> Result<(), StoreError> {
        if self.segment_len > self.segment_end {
            self.segment.set_len(self.segment_end)?;
            self.segment.sync_all()?;
            self.segment_len = self.segment_end;
        }
        Ok(())
    }

    /// Starts a new segment at the next entry for a snapshot of the state before it, so that
    /// once the snapshot is durable every older segment can be removed whole; returns the
    /// entries the snapshot covers.
    fn rotate(&mut self) -> Result<u64, StoreError> {
        if self.segment_first != self.next {
            self.drop_reserved()?;
            self.segment = create_segment(&self.dir, self.next)?;
            self.segment_first = self.next;
            self.segment_end = SEGMENT_HEADER as u64;
            self.segment_len = SEGMENT_HEADER as u64;
        }
        self.since_snapshot = 0;
        self.snapshot_entries = self.next;
        Ok(self.next)
    }

    /// Writes zeros up to `len`. Records then overwrite blocks the file already has, so a sync
    /// flushes their data alone instead of also writing the file's new size (one I/O fewer per
    /// sync). Recovery reads a zero tail as reserved space, not damage. The next sync makes the
    /// zeros and the new length durable.
    fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = self.segment_len;
        while at < len {
            let n = ZEROS.len().min((len - at) as usize);
            self.segment.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        self.segment_len = len;
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

    fn snapshot_due(&self, closing: bool) -> Option<SnapshotKind> {
        if !closing && self.writer.busy.load(Ordering::Acquire) {
            return None;
        }
        Due {
            since_snapshot: self.since_snapshot,
            since_full: self.since_full,
            full_size: self.writer.written.full.load(Ordering::Relaxed),
            deltas_size: self.writer.written.deltas.load(Ordering::Relaxed),
            full_due: self.full_due,
        }
        .kind(&self.options, closing)
    }

    fn incremental(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let lsn = self.rotate()?;
        self.full_due = false;
        self.since_full = 0;
        self.writer.send(Job::Full { lsn, snapshot })
    }

    fn delta(&mut self, delta: Delta) -> Result<(), StoreError> {
        let after = self.snapshot_entries;
        let lsn = self.rotate()?;
        self.writer.send(Job::Incremental { lsn, after, delta })
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.drop_reserved()?;
        self.writer.finish()
    }
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        let _ = self.writer.finish();
    }
}

#[cfg(test)]
mod due_tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn due(since_snapshot: u64, since_full: u64, full_size: u64, deltas_size: u64) -> Due {
        Due {
            since_snapshot,
            since_full,
            full_size,
            deltas_size,
            full_due: false,
        }
    }

    #[test]
    fn incremental_every_eighth_of_the_minimum_full_once_they_weigh_half_the_full_one() {
        use SnapshotKind::{Full, Incremental};
        let options = StoreOptions::default();
        assert_eq!(options.incremental_bytes(), 8 * MIB);
        let replayed = Due {
            full_due: true,
            ..due(8 * MIB, 8 * MIB, 300 * MIB, 0)
        };
        let cases = [
            (
                due(8 * MIB - 1, 100 * MIB, 300 * MIB, 0),
                None,
                "below the trigger",
            ),
            (
                due(8 * MIB, 8 * MIB, 300 * MIB, 0),
                Some(Incremental),
                "the first since a full one",
            ),
            (
                due(8 * MIB, 80 * MIB, 300 * MIB, 149 * MIB),
                Some(Incremental),
                "under half",
            ),
            (
                due(8 * MIB, 80 * MIB, 300 * MIB, 150 * MIB),
                Some(Full),
                "half the full one",
            ),
            // A small state: its incremental ones soon weigh half of it, but full ones wait for
            // the minimum of journal since the last.
            (
                due(8 * MIB, 40 * MIB, 10 * MIB, 30 * MIB),
                Some(Incremental),
                "a small state",
            ),
            (
                due(8 * MIB, 64 * MIB, 10 * MIB, 30 * MIB),
                Some(Full),
                "its minimum reached",
            ),
            (replayed, Some(Full), "after a start that replayed entries"),
        ];
        for (due, expected, case) in cases {
            assert_eq!(due.kind(&options, false), expected, "{case}");
        }
    }

    #[test]
    fn a_clean_stop_folds_everything_into_one_full_snapshot() {
        let options = StoreOptions::default();
        let kind = |d: Due| d.kind(&options, true);
        assert_eq!(kind(due(0, 0, 300 * MIB, 0)), None);
        assert_eq!(kind(due(1, 1, 300 * MIB, 0)), Some(SnapshotKind::Full));
        assert_eq!(kind(due(0, 9, 300 * MIB, 9)), Some(SnapshotKind::Full));
    }
}
