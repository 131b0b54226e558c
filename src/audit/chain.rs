//! The audit file format: one JSON object per line, each hash-chained to the one before, so an
//! edited, deleted, inserted or reordered entry breaks the chain at that point; and reading a
//! file's first and last entries.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::domain::RequestId;

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record. Request ids only: never patient identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch (the broker's clock).
    pub time_ms: i64,
    /// The calling organisation's ODS code.
    pub org: String,
    /// Its role.
    pub role: String,
    /// The trusted edge that called on the organisation's behalf (its id), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// What it did, e.g. `request.get`.
    pub action: String,
    /// The request (or job) concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The requests (or jobs) a list call returned, in its order: one entry for the whole page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ids: Option<Vec<String>>,
    /// A coordinator's stated reason for a decision (setting a lab's status, reassigning a job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a change: the number of the first journal entry of the batch it was made durable
    /// with. The journal holds the change's entry too, so a trail whose last lines a crash cut
    /// off is completed from the journal at the next start (see [`super::AuditLog::restore`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash`, a newline and the canonical body (see [`AuditEntry::compute_hash`]).
    pub hash: String,
}

/// The hashed part of an entry, in a fixed field order: serde_json writes struct fields in
/// declaration order, so this serialisation is canonical. `request_id` is always present (null
/// if none); `via`, `request_ids`, `reason` and `lsn` only when there are some, so entries
/// without them hash as they always did.
#[derive(Serialize)]
pub(crate) struct Body<'a> {
    pub(crate) seq: u64,
    pub(crate) time_ms: i64,
    pub(crate) org: &'a str,
    pub(crate) role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) via: Option<&'a str>,
    pub(crate) action: &'a str,
    pub(crate) request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_ids: Option<Ids<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lsn: Option<u64>,
}

/// A list of request ids, written as an array of lower-case hyphenated UUIDs whether it comes
/// from the broker (parsed ids) or from a file being checked (their text).
#[derive(Clone, Copy)]
pub(crate) enum Ids<'a> {
    Parsed(&'a [RequestId]),
    Text(&'a [String]),
}

impl Serialize for Ids<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(ids) => serializer.collect_seq(ids.iter()),
            Self::Parsed(ids) => {
                let mut seq = serializer.serialize_seq(Some(ids.len()))?;
                let mut text = uuid::Uuid::encode_buffer();
                for id in *ids {
                    seq.serialize_element(&*id.0.hyphenated().encode_lower(&mut text))?;
                }
                seq.end()
            }
        }
    }
}

/// An entry as written: the same JSON line an [`AuditEntry`] makes, from borrowed parts.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time_ms: i64,
    org: &'a str,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'a str>,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_ids: Option<Ids<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lsn: Option<u64>,
    prev_hash: &'a str,
    hash: &'a str,
}

impl AuditEntry {
    /// The hash this entry should carry, from its fields and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let body = Body {
            seq: self.seq,
            time_ms: self.time_ms,
            org: &self.org,
            role: &self.role,
            via: self.via.as_deref(),
            action: &self.action,
            request_id: self.request_id.as_deref(),
            request_ids: self.request_ids.as_deref().map(Ids::Text),
            reason: self.reason.as_deref(),
            lsn: self.lsn,
        };
        let mut hash = String::new();
        chain_hash(&self.prev_hash, &body, &mut Vec::new(), &mut hash);
        hash
    }

    /// True when the entry names request `id`, alone or among a list call's ids: who saw or
    /// changed it.
    pub fn concerns(&self, id: &str) -> bool {
        self.request_id.as_deref() == Some(id)
            || self
                .request_ids
                .as_ref()
                .is_some_and(|ids| ids.iter().any(|i| i == id))
    }
}

/// Writes into `hash` the hex SHA-256 of `prev_hash`, a newline and `body`'s canonical JSON.
/// `scratch` is reused between entries.
pub(crate) fn chain_hash(
    prev_hash: &str,
    body: &Body<'_>,
    scratch: &mut Vec<u8>,
    hash: &mut String,
) {
    scratch.clear();
    // Serialising a struct of plain fields into memory cannot fail.
    let _ = serde_json::to_writer(&mut *scratch, body);
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(scratch);
    let mut hex_digest = [0u8; 64];
    let _ = hex::encode_to_slice(h.finalize(), &mut hex_digest);
    hash.clear();
    hash.extend(hex_digest.iter().map(|&b| char::from(b)));
}

/// Appends one entry to `out` as its JSON line, chained to `prev_hash`, whose hash is `hash`.
pub(crate) fn write_line(
    out: &mut Vec<u8>,
    body: &Body<'_>,
    prev_hash: &str,
    hash: &str,
) -> std::io::Result<()> {
    let line = Line {
        seq: body.seq,
        time_ms: body.time_ms,
        org: body.org,
        role: body.role,
        via: body.via,
        action: body.action,
        request_id: body.request_id,
        request_ids: body.request_ids,
        reason: body.reason,
        lsn: body.lsn,
        prev_hash,
        hash,
    };
    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
    out.push(b'\n');
    Ok(())
}

/// Why a log could not be checked at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the audit log {path}: {source}")]
pub struct ReadError {
    /// The file.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

/// Bytes read at a time when a log is read from its end.
const TAIL_BLOCK: usize = 64 * 1024;

/// The last entry of a log that is being reopened: the chain continues from it. Read from the
/// end, a block at a time: the log only grows (an entry per audited call, about a gigabyte per
/// four million), and reopening it must not cost time or memory in proportion. A line that is
/// not an entry is passed over, as a reader from the start would.
pub(crate) fn last_entry(path: &Path) -> Result<Option<AuditEntry>, ReadError> {
    last_entry_by_blocks(path, TAIL_BLOCK)
}

/// [`last_entry`], reading `block` bytes at a time (the tests cut lines across small blocks).
pub(crate) fn last_entry_by_blocks(
    path: &Path,
    block: usize,
) -> Result<Option<AuditEntry>, ReadError> {
    let mut last = None;
    lines_from_end(path, block, |line| {
        last = serde_json::from_slice(line).ok();
        last.is_none()
    })?;
    Ok(last)
}

/// Hands `visit` each line of the file at `path`, the last first, read `block` bytes at a time
/// (a missing file has none), until it returns false. The part after the last newline comes
/// first when there is one: a partial line is the caller's to pass over.
pub(crate) fn lines_from_end(
    path: &Path,
    block: usize,
    mut visit: impl FnMut(&[u8]) -> bool,
) -> Result<(), ReadError> {
    let read_error = |source| ReadError {
        path: path.display().to_string(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_error(e)),
    };
    let mut end = file.metadata().map_err(read_error)?.len();
    // The start of a line cut by the block boundary, to be completed by the block before.
    let mut cut = Vec::new();
    let mut buf = vec![0; block];
    loop {
        let start = end.saturating_sub(block as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut buf[..n], start)
            .map_err(read_error)?;
        let mut bytes = Vec::with_capacity(n + cut.len());
        bytes.extend_from_slice(&buf[..n]);
        bytes.append(&mut cut);
        let mut line_end = bytes.len();
        while let Some(newline) = bytes[..line_end].iter().rposition(|&b| b == b'\n') {
            if !visit(&bytes[newline + 1..line_end]) {
                return Ok(());
            }
            line_end = newline;
        }
        if start == 0 {
            visit(&bytes[..line_end]);
            return Ok(());
        }
        bytes.truncate(line_end);
        cut = bytes;
        end = start;
    }
}

/// The first entry of the file at `path`, if its first line is one; reads no further than its
/// first newline (and its length: the file may be a device that never ends).
pub(crate) fn first_entry(path: &Path) -> Result<Option<AuditEntry>, ReadError> {
    let read_error = |source| ReadError {
        path: path.display().to_string(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let len = file.metadata().map_err(read_error)?.len();
    let mut line = Vec::new();
    BufReader::new(file.take(len))
        .read_until(b'\n', &mut line)
        .map_err(read_error)?;
    Ok(serde_json::from_slice(line.trim_ascii_end()).ok())
}

/// Where the log's last whole line ends (0 if it has none): anything after it is an entry whose
/// write was cut short. Read from the end, like [`last_entry`].
pub(crate) fn end_of_last_line(file: &fs::File) -> std::io::Result<u64> {
    let mut end = file.metadata()?.len();
    let mut buf = vec![0; TAIL_BLOCK];
    while end > 0 {
        let start = end.saturating_sub(TAIL_BLOCK as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut buf[..n], start)?;
        if let Some(newline) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
