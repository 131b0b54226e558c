//! The audit trail's files in the data directory: `audit.log`, the one being written, and those
//! rotated out of it, `audit-<seq>.log`, each named for its first entry; listing them in chain
//! order, rotating, and finding where the chain ends when the broker reopens it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::chain::{self, AuditEntry, ReadError};

/// The file being written, inside the data directory.
pub const AUDIT_FILE: &str = "audit.log";
const ROTATED_PREFIX: &str = "audit-";
const ROTATED_SUFFIX: &str = ".log";

/// The name a file rotated out of `audit.log` takes: its first entry's sequence number, padded so
/// that names sort in chain order.
pub fn rotated_name(first_seq: u64) -> String {
    format!("{ROTATED_PREFIX}{first_seq:020}{ROTATED_SUFFIX}")
}

/// One file of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    /// Where it is.
    pub path: PathBuf,
    /// The first entry its name gives (rotated files); `None` for `audit.log`.
    pub named_seq: Option<u64>,
}

impl ChainFile {
    /// Its file name, to name it in a report.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// The first entry a rotated file's name gives, if `name` is one.
fn named_seq(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(ROTATED_PREFIX)?
        .strip_suffix(ROTATED_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The chain's files in order: the rotated ones by the entry their names give, then
/// `audit.log` when it exists. Empty when the directory holds none (or does not exist).
pub fn chain_files(dir: &Path) -> io::Result<Vec<ChainFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut rotated = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(named_seq) {
            rotated.push(ChainFile {
                path: entry.path(),
                named_seq: Some(seq),
            });
        }
    }
    rotated.sort_by_key(|f| f.named_seq);
    let current = dir.join(AUDIT_FILE);
    // A symlink counts too (tests point it at /dev/full), so ask for its metadata, not the link's.
    if fs::metadata(&current).is_ok() {
        rotated.push(ChainFile {
            path: current,
            named_seq: None,
        });
    }
    Ok(rotated)
}

/// Where the chain ends: the last entry of the newest file that holds one. A crash between a
/// rotation's rename and the first write to the new `audit.log` leaves it in the rotated file.
pub(crate) fn chain_end(dir: &Path) -> Result<Option<AuditEntry>, ReadError> {
    let files = chain_files(dir).map_err(|source| ReadError {
        path: dir.display().to_string(),
        source,
    })?;
    for file in files.iter().rev() {
        if let Some(last) = chain::last_entry(&file.path)? {
            return Ok(Some(last));
        }
    }
    Ok(None)
}

/// Opens `path` for appending, creating it.
pub(crate) fn open_append(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Moves `audit.log`, already synced, aside as the file named for `first_seq`, and returns a new,
/// empty `audit.log`. Each step is made durable in the directory before the next, so a crash
/// leaves either the old name or the new one, never both or neither.
pub(crate) fn rotate(dir: &Path, first_seq: u64) -> io::Result<fs::File> {
    let target = dir.join(rotated_name(first_seq));
    if fs::symlink_metadata(&target).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists already; not overwriting it", target.display()),
        ));
    }
    fs::rename(dir.join(AUDIT_FILE), &target)?;
    sync_dir(dir)?;
    let file = open_append(&dir.join(AUDIT_FILE))?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_in_chain_order_and_parse_back() {
        assert_eq!(rotated_name(7), "audit-00000000000000000007.log");
        assert!(rotated_name(9) < rotated_name(10));
        assert_eq!(named_seq(&rotated_name(123)), Some(123));
        for not_rotated in [
            "audit.log",
            "audit-.log",
            "audit-12x.log",
            "audit-12.log.tmp",
        ] {
            assert_eq!(named_seq(not_rotated), None, "{not_rotated}");
        }
    }

    #[test]
    fn files_are_listed_rotated_first_by_sequence_then_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(chain_files(dir.path()).unwrap().is_empty());
        for name in [
            rotated_name(11),
            AUDIT_FILE.into(),
            rotated_name(1),
            "notes.txt".into(),
        ] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = chain_files(dir.path())
            .unwrap()
            .iter()
            .map(ChainFile::name)
            .collect();
        assert_eq!(
            names,
            [rotated_name(1), rotated_name(11), AUDIT_FILE.into()]
        );
    }
}
