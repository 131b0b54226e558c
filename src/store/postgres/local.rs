//! A local copy of the newest full snapshot row and the incremental rows after it, kept in the
//! broker's data directory so that a broker restarting on the same host reads them as fast as the
//! file store reads its own snapshots (as Flink's local recovery keeps one). The rows stay the
//! truth: a copy is used only when its header (the body's length and checksum) equals the one
//! stored beside its row, and only if it then decodes; otherwise the rows are fetched as on any
//! other host.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::snapshot::Loaded;
use crate::routing::RoutingPolicy;
use crate::store::codec;

/// The copy's directory under the data directory.
const DIR: &str = "pg-snapshot";

/// Where the copy lives.
#[derive(Debug, Clone)]
pub struct LocalCopy {
    dir: PathBuf,
}

impl LocalCopy {
    /// The copy kept under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR),
        }
    }

    fn path(&self, lsn: u64) -> PathBuf {
        self.dir.join(format!("snapshot-{lsn:020}.snap"))
    }

    fn delta_path(&self, lsn: u64) -> PathBuf {
        self.dir.join(format!("delta-{lsn:020}.snap"))
    }

    /// Keeps `body`, the full row just committed after `lsn` entries, as the copy, and drops any
    /// other. Not synced: a copy cut short by a crash fails its checksum and is not used. A copy
    /// that cannot be written is logged and left out; the row has everything.
    pub(crate) fn keep(&self, lsn: u64, body: &[u8]) {
        match self.write(&self.path(lsn), body) {
            Ok(()) => self.drop_others(Some(lsn)),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot keep a local copy of the snapshot row");
                self.drop_others(None);
            }
        }
    }

    /// Keeps `body`, the incremental row just committed after `lsn` entries, beside the full
    /// row's copy (dropped with it when the next full row is kept).
    pub(crate) fn keep_delta(&self, lsn: u64, body: &[u8]) {
        if let Err(e) = self.write(&self.delta_path(lsn), body) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot keep a local copy of the incremental snapshot row");
        }
    }

    /// Writes `body` to `path` whole or not at all.
    fn write(&self, path: &Path, body: &[u8]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        // Named for this process: two brokers misconfigured onto one data directory must not
        // write into each other's (a copy that is not its row's is refused anyway).
        let partial = self.dir.join(format!("partial-{}.tmp", std::process::id()));
        let mut file = fs::File::create(&partial)?;
        file.write_all(body)?;
        drop(file);
        fs::rename(&partial, path)
    }

    /// The body of the copy of the incremental row after `lsn` entries whose body starts with
    /// `head`, if this host has it; its sections' checksums are checked as it is applied (see
    /// `snapshot::newest`, which fetches the rows again if that fails).
    pub(crate) fn delta(&self, lsn: u64, head: &[u8]) -> Option<Vec<u8>> {
        if head.len() != codec::SNAPSHOT_HEADER {
            return None;
        }
        let body = fs::read(self.delta_path(lsn)).ok()?;
        (body.get(..head.len()) == Some(head)).then_some(body)
    }

    /// Removes every copy: one of them was damaged.
    pub(crate) fn drop_all(&self) {
        self.drop_others(None);
    }

    /// Removes every copy but the full row's after `keep` entries.
    fn drop_others(&self, keep: Option<u64>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let kept = keep.map(|lsn| self.path(lsn));
        for entry in entries.flatten() {
            let path = entry.path();
            if Some(&path) != kept.as_ref() {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// The state in the copy of the full row after `lsn` entries whose body starts with `head`,
    /// if this host has that copy and it decodes; `None` (the row must be fetched) otherwise.
    pub(crate) fn read(
        &self,
        lsn: u64,
        head: &[u8],
        policy: Arc<dyn RoutingPolicy>,
    ) -> Option<Loaded> {
        let path = self.path(lsn);
        let mut header = [0; codec::SNAPSHOT_HEADER];
        let matches = fs::File::open(&path)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut header, 0))
            .is_ok_and(|()| header[..] == *head);
        if !matches {
            // Another row's copy, or one cut short: of no use from here on.
            self.drop_others(None);
            return None;
        }
        let read = codec::read_snapshot(&path, policy)
            .and_then(|snap| super::snapshot::loaded(lsn, snap, fs::metadata(&path)?.len()));
        match read {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the local copy of the snapshot row is damaged; fetching the row");
                self.drop_others(None);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::DefaultPolicy;
    use crate::store::postgres::snapshot::tests::routed;

    fn policy() -> Arc<dyn RoutingPolicy> {
        Arc::new(DefaultPolicy)
    }

    /// A full row's body after 5 entries: five requests.
    fn body() -> Vec<u8> {
        let (directory, router, events) = routed();
        codec::snapshot_bytes(5, &directory, router.state().clone(), &events).expect("encodes")
    }

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir.join(DIR)).map_or(0, |d| d.count())
    }

    #[test]
    fn the_copy_of_the_row_is_read_and_only_the_newest_is_kept() {
        let data = tempfile::tempdir().unwrap();
        let local = LocalCopy::new(data.path());
        let body = body();
        local.keep(3, &body[..100]);
        local.keep(5, &body);
        assert_eq!(files(data.path()), 1, "the older copy is dropped");
        let head = &body[..codec::SNAPSHOT_HEADER];
        let loaded = local.read(5, head, policy()).expect("read");
        assert_eq!(loaded.router.request_count(), 5);
        assert_eq!(loaded.full_bytes, body.len() as u64);
    }

    #[test]
    fn incremental_copies_are_read_by_their_header_and_dropped_with_the_next_full_copy() {
        let data = tempfile::tempdir().unwrap();
        let local = LocalCopy::new(data.path());
        let body = body();
        let head = &body[..codec::SNAPSHOT_HEADER];
        local.keep(5, &body);
        local.keep_delta(7, &body);
        assert_eq!(local.delta(7, head), Some(body.clone()));
        let mut other = head.to_vec();
        other[19] ^= 1;
        assert_eq!(local.delta(7, &other), None, "another row's header");
        assert_eq!(local.delta(8, head), None, "no copy of that row");
        assert_eq!(local.delta(7, &head[..4]), None, "a header cut short");
        local.keep(9, &body);
        assert_eq!(
            local.delta(7, head),
            None,
            "dropped with the full copy before"
        );
        assert_eq!(files(data.path()), 1);
    }

    #[test]
    fn a_copy_of_another_row_or_a_damaged_one_is_not_used_and_is_dropped() {
        let data = tempfile::tempdir().unwrap();
        let local = LocalCopy::new(data.path());
        let body = body();
        let head = body[..codec::SNAPSHOT_HEADER].to_vec();
        local.keep(5, &body);
        // The row now in the database says another checksum.
        let mut other = head.clone();
        other[19] ^= 1;
        assert!(local.read(5, &other, policy()).is_none());
        assert_eq!(files(data.path()), 0);
        // No copy for that row at all.
        local.keep(5, &body);
        assert!(local.read(6, &head, policy()).is_none());
        // The same header over damaged sections: the checksum is read and refused.
        let mut damaged = body.clone();
        let end = damaged.len() - 1;
        damaged[end] ^= 0xff;
        local.keep(5, &damaged);
        assert!(local.read(5, &head, policy()).is_none());
        assert_eq!(files(data.path()), 0);
    }
}
