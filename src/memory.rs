//! The process's memory settings: transparent huge pages off, for steady call latency.

/// Turns transparent huge pages off for this process and the processes it starts (Linux).
///
/// mimalloc asks the kernel for huge pages. A fault on a fresh one then zeroes 2 MiB while a call
/// waits, and memory mimalloc returns and takes back is zeroed again 2 MiB at a time. The
/// broker's heap grows and shrinks by small requests and messages, so those faults come in the
/// middle of calls. With huge pages off, the p99 of durable submissions was lower in each of six
/// paired runs, throughput moved within the noise, and restarts at a million live requests were
/// no slower (BENCHMARKS.md). Called first thing in `main`, before the runtime's threads start.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_once_disabled() {
        disable_transparent_huge_pages().expect("prctl");
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        // The line is there from Linux 5.0; older kernels only let the call succeed.
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
        assert!(rustix::thread::transparent_huge_pages_are_disabled().expect("prctl"));
    }
}
