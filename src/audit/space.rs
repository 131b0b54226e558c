//! The free-space floor of the data directory: new work is refused while the filesystem holding
//! the journal and the audit trail has less free space than the floor, so that the broker stops
//! taking work with a clear error before a full disk fails every organisation's calls.
//!
//! A monitor thread measures once a second and keeps the answer; a call only reads it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::error::Error;
use crate::metrics::Metrics;

/// How often the monitor measures.
const EVERY: Duration = Duration::from_secs(1);

/// Measures the bytes available to the broker on the filesystem holding a directory.
pub type Probe = Box<dyn Fn(&Path) -> io::Result<u64> + Send + Sync>;

/// The bytes available to an unprivileged writer on the filesystem holding `dir`.
#[cfg(target_os = "linux")]
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The bytes available on the filesystem holding `dir` (measured on Linux only).
#[cfg(not(target_os = "linux"))]
pub fn available_bytes(_dir: &Path) -> io::Result<u64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "free space is measured on Linux only",
    ))
}

/// The floor's latest verdict; cheap to clone and to ask.
#[derive(Clone)]
pub struct DiskFloor {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    floor: u64,
    free: AtomicU64,
    below: AtomicBool,
    /// Whether the last measurement failed, so its warning is logged once, not every second.
    unmeasured: AtomicBool,
    probe: Probe,
    metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for DiskFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskFloor")
            .field("dir", &self.shared.dir)
            .field("floor", &self.shared.floor)
            .field("free", &self.shared.free.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The monitor thread; dropping it stops and joins it.
#[derive(Debug)]
pub struct FloorMonitor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for FloorMonitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl DiskFloor {
    /// Refuses work while `dir`'s filesystem has fewer than `floor` bytes free (0: never),
    /// measured now and then once a second by a monitor thread.
    pub fn start(
        dir: &Path,
        floor: u64,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<(Self, FloorMonitor), Error> {
        let floor = Self::with_probe(dir, floor, Box::new(available_bytes), metrics);
        floor.refresh();
        let (stop, stopped) = mpsc::channel::<()>();
        let monitor = floor.clone();
        let thread = thread::Builder::new()
            .name("labaid-diskfloor".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                    monitor.refresh();
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the free-space monitor: {e}")))?;
        Ok((
            floor,
            FloorMonitor {
                stop: Some(stop),
                thread: Some(thread),
            },
        ))
    }

    /// A floor measured by `probe`, only when [`DiskFloor::refresh`] is called (tests drive it).
    pub fn with_probe(dir: &Path, floor: u64, probe: Probe, metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.data_dir_free_floor_bytes
                .set(i64::try_from(floor).unwrap_or(i64::MAX));
        }
        Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                floor,
                free: AtomicU64::new(u64::MAX),
                below: AtomicBool::new(false),
                unmeasured: AtomicBool::new(false),
                probe,
                metrics,
            }),
        }
    }

    /// Measures the free space again and logs a crossing of the floor either way.
    pub fn refresh(&self) {
        let s = &*self.shared;
        let free = match (s.probe)(&s.dir) {
            Ok(free) => {
                s.unmeasured.store(false, Ordering::Relaxed);
                free
            }
            Err(e) => {
                // Work goes on unmeasured rather than stop for a measurement that failed.
                if !s.unmeasured.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %s.dir.display(), error = %e, "cannot measure the data directory's free space; its floor is not enforced until it can be");
                }
                s.below.store(false, Ordering::Relaxed);
                return;
            }
        };
        s.free.store(free, Ordering::Relaxed);
        if let Some(m) = &s.metrics {
            m.data_dir_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let below = s.floor > 0 && free < s.floor;
        let was = s.below.swap(below, Ordering::Relaxed);
        if below && !was {
            tracing::warn!(dir = %s.dir.display(), free_bytes = free, floor_bytes = s.floor, "the data directory is below its free-space floor; refusing new work until space is freed");
        } else if was && !below {
            tracing::info!(dir = %s.dir.display(), free_bytes = free, floor_bytes = s.floor, "the data directory is above its free-space floor again; taking work");
        }
    }

    /// Ok while the data directory has at least the floor free, as last measured; else
    /// UNAVAILABLE with what to do.
    pub fn check(&self) -> Result<(), Error> {
        if self.shared.below.load(Ordering::Relaxed) {
            return Err(Error::Unavailable(format!(
                "the broker's disk is below its free-space floor ({} bytes free, floor {}); \
                 new work is refused until an operator frees space",
                self.shared.free.load(Ordering::Relaxed),
                self.shared.floor
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor_over(free: Arc<AtomicU64>, floor: u64) -> DiskFloor {
        DiskFloor::with_probe(
            Path::new("."),
            floor,
            Box::new(move |_| Ok(free.load(Ordering::Relaxed))),
            Some(Arc::new(Metrics::new())),
        )
    }

    #[test]
    fn work_is_refused_below_the_floor_and_taken_again_above_it() {
        let free = Arc::new(AtomicU64::new(1000));
        let floor = floor_over(free.clone(), 500);
        floor.refresh();
        floor.check().unwrap();
        free.store(499, Ordering::Relaxed);
        // Nothing changes until the next measurement: a call never measures.
        floor.check().unwrap();
        floor.refresh();
        let err = floor.check().unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("free-space floor"), "{err}");
        free.store(500, Ordering::Relaxed);
        floor.refresh();
        floor.check().unwrap();
    }

    #[test]
    fn a_zero_floor_never_refuses_and_a_failed_measurement_does_not_stop_work() {
        let free = Arc::new(AtomicU64::new(0));
        let floor = floor_over(free, 0);
        floor.refresh();
        floor.check().unwrap();

        let failing = DiskFloor::with_probe(
            Path::new("."),
            u64::MAX,
            Box::new(|_| Err(io::Error::other("no statvfs"))),
            None,
        );
        failing.refresh();
        failing.check().unwrap();
    }

    #[test]
    fn the_real_data_directory_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        let (floor, monitor) = DiskFloor::start(dir.path(), u64::MAX, None).unwrap();
        assert!(floor.check().is_err(), "no disk has u64::MAX bytes free");
        drop(monitor);
        let (floor, monitor) = DiskFloor::start(dir.path(), 1, None).unwrap();
        floor.check().unwrap();
        drop(monitor);
    }
}
