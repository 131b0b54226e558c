//! The snapshot codec: formats 1 to 3 of a full snapshot, the sectioned layout incremental
//! snapshots share, and how retained events name the requests they carry.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod older;
#[cfg(test)]
pub(crate) use older::write_snapshot_v2;

use super::io::{PacedWriter, ReadAt};
use super::segment::{snapshot_name, sync_dir};
use super::{Directory, StoreError};
use crate::domain::{OdsCode, Request, RequestId, Timestamp};
use crate::routing::{Event, EventKind, Router, RoutingPolicy, State};

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

/// A format 2 payload is `[length of the head: u64 LE][head][events]`, two postcard encodings,
/// so that the events decode on a second thread while the core's state decodes.
#[derive(Debug, Deserialize)]
pub(super) struct Head {
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

/// Writes a format 3 snapshot durably (temporary name, sync, rename, directory sync); returns
/// its size. The payload is a table of sections, `[count: u32 LE][length: u64 LE; count]`, then
/// the sections: the head (entry number, directory, and the state with its requests taken out),
/// the events, and the requests in ordinal order as postcard sequences of `SNAPSHOT_CHUNK`.
pub(crate) fn write_snapshot(
    dir: &Path,
    lsn: u64,
    directory: &Directory,
    state: State,
    events: &[Event],
) -> Result<u64, StoreError> {
    let (head, requests) = snapshot_parts(lsn, directory, state)?;
    let ordered: Vec<&Arc<Request>> = requests.iter().collect();
    write_sections(
        dir,
        &snapshot_name(lsn),
        SNAPSHOT_MAGIC,
        head,
        &ordered,
        events,
    )
}

/// A format 3 snapshot as one buffer, byte for byte what `write_snapshot` puts in a file (the
/// PostgreSQL store keeps it in a row); read back by `read_snapshot_bytes`.
pub(super) fn snapshot_bytes(
    lsn: u64,
    directory: &Directory,
    state: State,
    events: &[Event],
) -> Result<Vec<u8>, StoreError> {
    let (head, requests) = snapshot_parts(lsn, directory, state)?;
    let ordered: Vec<&Arc<Request>> = requests.iter().collect();
    sectioned_bytes(SNAPSHOT_MAGIC, head, &ordered, events)
}

/// A sectioned payload behind `magic` as one buffer, byte for byte what `write_sections` puts
/// in a file.
pub(super) fn sectioned_bytes(
    magic: &[u8; 8],
    head: Vec<u8>,
    requests: &[&Arc<Request>],
    events: &[Event],
) -> Result<Vec<u8>, StoreError> {
    let sections = encode_sections(head, requests, events)?;
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER + sections.payload_len);
    out.extend_from_slice(&sections.header(magic));
    for section in &sections.sections {
        out.extend_from_slice(section);
    }
    Ok(out)
}

/// The head of a format 3 snapshot (the state with its requests taken out) and those requests
/// in ordinal order: the events (in sequence order) then link to nearby requests, and the
/// views' per-organisation lists, built in this order at a restart, come out sorted.
fn snapshot_parts(
    lsn: u64,
    directory: &Directory,
    mut state: State,
) -> Result<(Vec<u8>, Vec<Arc<Request>>), StoreError> {
    let requests = std::mem::take(state.requests_mut());
    let mut ordered: Vec<Arc<Request>> = requests.values().cloned().collect();
    drop(requests);
    ordered.sort_unstable_by_key(|r| r.ordinal);
    let head = postcard::to_stdvec(&HeadRef {
        lsn,
        directory,
        state: &state,
    })
    .map_err(encode_error)?;
    Ok((head, ordered))
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
    let sections = encode_sections(head, requests, events)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = PacedWriter::new(File::create(&tmp)?);
    file.write(&sections.header(magic))?;
    for section in &sections.sections {
        file.write(section)?;
    }
    let file = file.finish();
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok((SNAPSHOT_HEADER + sections.payload_len) as u64)
}

/// A sectioned payload, encoded: its section table, the sections, and its checksum.
struct Sections {
    payload_len: usize,
    crc: u32,
    table: Vec<u8>,
    sections: Vec<Vec<u8>>,
}

impl Sections {
    /// Everything before the sections: `magic`, the payload length and checksum, the table.
    fn header(&self, magic: &[u8; 8]) -> Vec<u8> {
        let mut head = magic.to_vec();
        head.extend_from_slice(&(self.payload_len as u64).to_le_bytes());
        head.extend_from_slice(&self.crc.to_le_bytes());
        head.extend_from_slice(&self.table);
        head
    }
}

/// The older versions of requests that retained events carry, each stored once however many
/// events carry it, by position.
#[derive(Default)]
pub(super) struct Versions<'a> {
    pub(super) list: Vec<&'a Request>,
    index: HashMap<*const Request, u32>,
}

impl<'a> Versions<'a> {
    /// The position of `request` in the list, added if it is not there yet.
    pub(super) fn of(&mut self, request: &'a Arc<Request>) -> u32 {
        let list = &mut self.list;
        *self.index.entry(Arc::as_ptr(request)).or_insert_with(|| {
            list.push(request);
            (list.len() - 1) as u32
        })
    }
}

/// Encodes the sections `write_sections` writes.
fn encode_sections(
    head: Vec<u8>,
    requests: &[&Arc<Request>],
    events: &[Event],
) -> Result<Sections, StoreError> {
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
    let mut versions = Versions::default();
    let slots = events
        .iter()
        .map(|e| {
            let request = match position.get(&e.request.id) {
                Some(&i) if Arc::ptr_eq(requests[i as usize], &e.request) => {
                    RequestSlot::Current(i)
                }
                _ => RequestSlot::Version(versions.of(&e.request)),
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
            versions: versions.list,
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
    Ok(Sections {
        payload_len,
        crc: crc.finalize(),
        table,
        sections,
    })
}

/// A whole snapshot file of `payload` behind `magic`, its header (length and checksum) as the
/// writers make it: for tests and fuzz inputs that build files of any format by hand.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn framed(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    let mut file = Vec::with_capacity(SNAPSHOT_HEADER + payload.len());
    file.extend_from_slice(magic);
    file.extend_from_slice(&len);
    file.extend_from_slice(&crc.finalize().to_le_bytes());
    file.extend_from_slice(payload);
    file
}

/// Reads a snapshot into a core routing by `policy`; any damage is an error (a snapshot is only
/// renamed into place once synced).
pub(crate) fn read_snapshot(
    path: &Path,
    policy: Arc<dyn RoutingPolicy>,
) -> Result<SnapshotFile, StoreError> {
    let damaged =
        |why: &str| StoreError::Corrupt(format!("snapshot {} is damaged: {why}", path.display()));
    let file = File::open(path)?;
    let mut header = [0; SNAPSHOT_HEADER];
    if file.read_exact_at(&mut header, 0).is_ok() && header[..8] == SNAPSHOT_MAGIC[..] {
        // Format 3 is read section by section, never whole: a buffer the size of the file would
        // be a third of a gigabyte of fresh pages at a million requests.
        return read_sections(&file, &header, policy).map_err(|e| match e {
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

/// Reads a format 3 snapshot from one buffer (see `snapshot_bytes`) into a core routing by
/// `policy`; `Ok(None)` when `bytes` is not one (an earlier encoding the caller reads itself).
pub(super) fn read_snapshot_bytes(
    bytes: &[u8],
    policy: Arc<dyn RoutingPolicy>,
) -> Result<Option<SnapshotFile>, String> {
    let Some(header) = bytes
        .get(..SNAPSHOT_HEADER)
        .and_then(|h| <&[u8; SNAPSHOT_HEADER]>::try_from(h).ok())
        .filter(|h| h[..8] == SNAPSHOT_MAGIC[..])
    else {
        return Ok(None);
    };
    read_sections(bytes, header, policy)
        .map(Some)
        .map_err(|e| match e {
            SectionError::Io(e) => e.to_string(),
            SectionError::Damaged(why) => why,
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
fn read_sections<S: ReadAt + ?Sized>(
    file: &S,
    header: &[u8; SNAPSHOT_HEADER],
    policy: Arc<dyn RoutingPolicy>,
) -> Result<SnapshotFile, SectionError> {
    let Parts {
        head,
        versions,
        slots,
        requests,
    } = read_parts::<Head, _>(file, header)?;
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
        router: Router::from_state(state, policy),
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
pub(super) fn read_parts<H: serde::de::DeserializeOwned + Send, S: ReadAt + ?Sized>(
    file: &S,
    header: &[u8; SNAPSHOT_HEADER],
) -> Result<Parts<H>, SectionError> {
    let len_bytes: [u8; 8] = header[8..16].try_into().map_err(|_| "short header")?;
    let crc: [u8; 4] = header[16..20].try_into().map_err(|_| "short header")?;
    let payload_len = u64::from_le_bytes(len_bytes);
    let file_len = file.byte_len().map_err(SectionError::Io)?;
    if file_len.checked_sub(SNAPSHOT_HEADER as u64) != Some(payload_len) {
        return Err("its length does not match its header".into());
    }
    let mut count = [0; 4];
    file.read_bytes_at(&mut count, SNAPSHOT_HEADER as u64)
        .map_err(|_| "its section table is cut short")?;
    let count = u32::from_le_bytes(count) as u64;
    let table_len = count * 8 + 4;
    if count < 2 || table_len > payload_len {
        return Err("its section table is out of range".into());
    }
    let mut table = vec![0; table_len as usize];
    file.read_bytes_at(&mut table, SNAPSHOT_HEADER as u64)
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
            file.read_bytes_at(&mut buf, offset)?;
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
    let mut chunks = Vec::with_capacity(count - 2);
    for _ in 2..count {
        let Section::Requests(RequestChunk(chunk)) = take()? else {
            return Err("a requests section holds something else".into());
        };
        chunks.push(chunk);
    }
    // Sized by what the chunks hold, not by their number: a file of many tiny sections must not
    // reserve a full chunk's room for each.
    let mut requests = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for chunk in chunks {
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
