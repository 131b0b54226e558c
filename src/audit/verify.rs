//! Checking the whole chain, across `audit.log` and the files rotated out of it, and exporting
//! it: every entry must follow the one before, file to file, so an edited, deleted, inserted or
//! reordered entry, and a missing, renamed or reordered file, breaks it where it happens.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use super::chain::{AuditEntry, GENESIS, ReadError};
use super::files::{self, ChainFile};

/// Where the chain breaks first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken in {file} at line {line}{}: {reason}", seq.map(|s| format!(" (entry seq {s})")).unwrap_or_default())]
pub struct Broken {
    /// The file's name in the data directory.
    pub file: String,
    /// 1-based line of the file.
    pub line: usize,
    /// The entry's own sequence number, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry chains to the one before.
    Intact {
        /// How many entries.
        entries: u64,
        /// How many files they are in.
        files: usize,
        /// The hash of the last entry: record it elsewhere to detect truncation later.
        head: String,
    },
    /// The first broken entry.
    Broken(Broken),
}

/// Checks every entry of the audit trail in the data directory `dir`, from the first file to
/// `audit.log`.
pub fn verify(dir: &Path) -> Result<Verdict, ReadError> {
    walk(dir, |_| Ok(()))
}

/// Verifies the trail in `dir` and writes its entries to `out` as JSON lines (only those that
/// concern `request`, when given: who saw or changed it); stops at the first broken entry.
pub fn export(
    dir: &Path,
    out: &mut dyn Write,
    request: Option<&str>,
) -> Result<Verdict, ReadError> {
    walk(dir, |entry| {
        if request.is_some_and(|id| !entry.concerns(id)) {
            return Ok(());
        }
        serde_json::to_string(entry)
            .map_err(std::io::Error::other)
            .and_then(|line| writeln!(out, "{line}"))
            .map_err(|source| ReadError {
                path: "<output>".into(),
                source,
            })
    })
}

/// Reads every file of the chain line by line, checking each link, and hands each good entry to
/// `each`. Returns the verdict at the first break.
fn walk(
    dir: &Path,
    mut each: impl FnMut(&AuditEntry) -> Result<(), ReadError>,
) -> Result<Verdict, ReadError> {
    let chain = files::chain_files(dir).map_err(|source| ReadError {
        path: dir.display().to_string(),
        source,
    })?;
    let mut link = Link {
        seq: 0,
        head: GENESIS.to_string(),
    };
    for file in &chain {
        if let Some(broken) = walk_file(file, &mut link, &mut each)? {
            return Ok(Verdict::Broken(broken));
        }
    }
    Ok(Verdict::Intact {
        entries: link.seq,
        files: chain.len(),
        head: link.head,
    })
}

/// Where the chain has got to: the last entry's sequence number and hash.
struct Link {
    seq: u64,
    head: String,
}

fn walk_file(
    file: &ChainFile,
    link: &mut Link,
    each: &mut impl FnMut(&AuditEntry) -> Result<(), ReadError>,
) -> Result<Option<Broken>, ReadError> {
    let read_error = |source| ReadError {
        path: file.path.display().to_string(),
        source,
    };
    let name = file.name();
    let broken = |line, seq, reason: String| {
        Ok(Some(Broken {
            file: name.clone(),
            line,
            seq,
            reason,
        }))
    };
    let reader = BufReader::new(fs::File::open(&file.path).map_err(read_error)?);
    let mut lines = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(read_error)?;
        let number = i + 1;
        lines = number;
        let entry: AuditEntry = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => return broken(number, None, format!("not an audit entry: {e}")),
        };
        let seq = Some(entry.seq);
        let expected = link.seq + 1;
        if number == 1
            && let Some(named) = file.named_seq
            && named != entry.seq
        {
            return broken(
                number,
                seq,
                format!(
                    "the file is named for entry {named} but begins with entry {} (a file was \
                     renamed or its entries moved)",
                    entry.seq
                ),
            );
        }
        if entry.seq != expected {
            let why = if number == 1 && entry.seq > expected {
                format!(
                    "entries {expected} to {} are missing before this file (a file, or entries, \
                     deleted)",
                    entry.seq - 1
                )
            } else {
                "an entry was deleted, inserted or moved".to_string()
            };
            return broken(
                number,
                seq,
                format!(
                    "sequence {} where {expected} was expected: {why}",
                    entry.seq
                ),
            );
        }
        if entry.prev_hash != link.head {
            return broken(
                number,
                seq,
                "prev_hash does not match the previous entry's hash".into(),
            );
        }
        if entry.compute_hash() != entry.hash {
            return broken(
                number,
                seq,
                "the hash does not match the entry's content (it was edited)".into(),
            );
        }
        each(&entry)?;
        link.seq = entry.seq;
        link.head = entry.hash;
    }
    if lines == 0 && file.named_seq.is_some() {
        return broken(
            1,
            None,
            "the rotated file is empty; a file is rotated only once it holds entries".into(),
        );
    }
    Ok(None)
}
