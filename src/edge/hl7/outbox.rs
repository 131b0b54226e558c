//! The durable outbox of results: an append-only file in the data directory holding each ORU
//! to send, each delivery's outcome and the broker's event cursor, every record checksummed and
//! made durable (fsync) before the next step, so a crash or `kill -9` loses nothing.
//!
//! A file of our own rather than an embedded database: the workload is a short FIFO queue and
//! one number, which a log of a few hundred lines holds with nothing more to build or trust; the
//! broker's journal uses the same framing (length, CRC-32, payload).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The log's file name in the data directory.
pub const FILE_NAME: &str = "results-outbox.log";
/// Largest record accepted when reading (an ORU with many results is far smaller).
const MAX_RECORD: usize = 16 * 1024 * 1024;
/// Rewrite the log once this many delivered messages sit in it.
const COMPACT_AFTER: usize = 1024;

/// Why the outbox failed: the edge stops, as an fsync is never retried.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Reading or writing the log failed.
    #[error("results outbox {path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The log is damaged in a way a crash cannot explain.
    #[error(
        "results outbox {path}: {what}; move it aside to start empty (its undelivered results are then lost)"
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// One message waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Position in the outbox: delivery follows it.
    pub id: u64,
    /// The request the message is about.
    pub request: String,
    /// The event it came from.
    pub sequence: u64,
    /// Its MSH-10, the same on every attempt.
    pub control_id: String,
    /// When it was put in the outbox, in milliseconds since the epoch.
    pub enqueued_ms: i64,
    /// The message, encoded for the wire.
    pub body: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Put(Pending),
    Done { id: u64, outcome: String },
    Cursor { sequence: u64 },
}

/// The outbox, open.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    file: File,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    cursor: u64,
    /// Delivered messages still in the log.
    done_in_log: usize,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, dropping a record torn by a crash.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        let path = dir.join(FILE_NAME);
        let io = |source| OutboxError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (records, good) = read_records(&bytes).map_err(|what| OutboxError::Damaged {
            path: path.clone(),
            what,
        })?;
        if good < bytes.len() {
            tracing::warn!(
                outbox.dropped_bytes = bytes.len() - good,
                "results outbox: dropped a record torn by a crash"
            );
            file.set_len(good as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
        }
        let mut outbox = Self {
            path: path.clone(),
            file,
            pending: BTreeMap::new(),
            next_id: 1,
            cursor: 0,
            done_in_log: 0,
        };
        for r in records {
            outbox.apply(r);
        }
        if outbox.done_in_log > 0 {
            outbox.compact()?;
        }
        Ok(outbox)
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Put(p) => {
                self.next_id = self.next_id.max(p.id + 1);
                self.cursor = self.cursor.max(p.sequence);
                self.pending.insert(p.id, p);
            }
            Record::Done { id, .. } => {
                if self.pending.remove(&id).is_some() {
                    self.done_in_log += 1;
                }
            }
            Record::Cursor { sequence } => self.cursor = self.cursor.max(sequence),
        }
    }

    fn append(&mut self, record: &Record) -> Result<(), OutboxError> {
        let bytes = encode(record);
        let path = self.path.clone();
        let io = |source| OutboxError::Io { path, source };
        self.file.write_all(&bytes).map_err(io.clone())?;
        self.file.sync_data().map_err(io)
    }

    /// Puts a message in the outbox, durably, and moves the cursor to its event.
    pub fn put(
        &mut self,
        request: String,
        sequence: u64,
        control_id: String,
        body: Vec<u8>,
        now_ms: i64,
    ) -> Result<Pending, OutboxError> {
        let pending = Pending {
            id: self.next_id,
            request,
            sequence,
            control_id,
            enqueued_ms: now_ms,
            body,
        };
        let record = Record::Put(pending);
        self.append(&record)?;
        let Record::Put(pending) = record else {
            unreachable!("built above")
        };
        self.apply(Record::Put(pending.clone()));
        Ok(pending)
    }

    /// Records a delivery's outcome (`AA`, or the receiver's `AE`/`AR`): the message leaves the
    /// queue.
    pub fn done(&mut self, id: u64, outcome: &str) -> Result<(), OutboxError> {
        self.append(&Record::Done {
            id,
            outcome: outcome.to_string(),
        })?;
        self.apply(Record::Done {
            id,
            outcome: outcome.to_string(),
        });
        if self.done_in_log >= COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }

    /// Records that every event up to `sequence` has been handled.
    pub fn set_cursor(&mut self, sequence: u64) -> Result<(), OutboxError> {
        if sequence <= self.cursor {
            return Ok(());
        }
        self.append(&Record::Cursor { sequence })?;
        self.cursor = sequence;
        Ok(())
    }

    /// The last event handled.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The oldest message waiting.
    pub fn front(&self) -> Option<&Pending> {
        self.pending.values().next()
    }

    /// Messages waiting.
    pub fn depth(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest waiting message was put in, in milliseconds since the epoch.
    pub fn oldest_ms(&self) -> Option<i64> {
        self.front().map(|p| p.enqueued_ms)
    }

    /// Rewrites the log with only what is still waiting and the cursor: a new file, made
    /// durable, then renamed over the old one.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let tmp = self.path.with_extension("log.tmp");
        let io = |source| OutboxError::Io {
            path: tmp.clone(),
            source,
        };
        let mut out = Vec::new();
        out.extend(encode(&Record::Cursor {
            sequence: self.cursor,
        }));
        for p in self.pending.values() {
            out.extend(encode(&Record::Put(p.clone())));
        }
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&out).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.done_in_log = 0;
        Ok(())
    }
}

/// `len (u32 LE) | crc32 (u32 LE) | JSON`.
fn encode(record: &Record) -> Vec<u8> {
    let payload = serde_json::to_vec(record).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend(
        u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend(crc32fast::hash(&payload).to_le_bytes());
    out.extend(payload);
    out
}

/// The records, and how many bytes of them are whole. A short or failing last record is a torn
/// write; a bad record with whole records after it is damage.
fn read_records(bytes: &[u8]) -> Result<(Vec<Record>, usize), String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes.get(at..at + 8);
        let Some(header) = header else { break };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let end = at + 8 + len;
        if len > MAX_RECORD || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + 8..end];
        let parsed = (crc32fast::hash(payload) == crc)
            .then(|| serde_json::from_slice::<Record>(payload).ok())
            .flatten();
        match parsed {
            Some(r) => records.push(r),
            None if end == bytes.len() => break,
            None => {
                return Err(format!(
                    "the record at byte {at} fails its checksum, with records after it"
                ));
            }
        }
        at = end;
    }
    Ok((records, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(o: &mut Outbox, seq: u64) -> u64 {
        o.put(
            format!("req-{seq}"),
            seq,
            format!("C{seq}"),
            b"MSH|x".to_vec(),
            1000 + seq as i64,
        )
        .unwrap()
        .id
    }

    #[test]
    fn waiting_messages_and_the_cursor_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        let a = put(&mut o, 3);
        let b = put(&mut o, 5);
        put(&mut o, 9);
        o.done(a, "AA").unwrap();
        o.set_cursor(12).unwrap();
        drop(o);
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.depth(), 2);
        assert_eq!(o.front().unwrap().id, b);
        assert_eq!(o.oldest_ms(), Some(1005));
        assert_eq!(o.cursor(), 12);
        // Reopening compacted the delivered message away; ids keep growing.
        let mut o = o;
        assert!(put(&mut o, 13) > b + 1);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_before_the_end_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        put(&mut o, 1);
        put(&mut o, 2);
        drop(o);
        let path = dir.path().join(FILE_NAME);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!((o.depth(), o.cursor()), (1, 1));
        drop(o);

        let mut damaged = std::fs::read(&path).unwrap();
        damaged[10] ^= 0xff;
        damaged.extend(encode(&Record::Cursor { sequence: 7 }));
        std::fs::write(&path, &damaged).unwrap();
        let e = Outbox::open(dir.path()).unwrap_err();
        assert!(matches!(e, OutboxError::Damaged { .. }), "{e}");
    }
}
