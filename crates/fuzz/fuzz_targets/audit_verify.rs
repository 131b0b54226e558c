#![no_main]
//! Fuzz target: see `labaid::fuzzing::audit_verify`. Its reader takes a file, written in a scratch
//! directory of this process (on /dev/shm where there is one, so no disk is touched).

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static SCRATCH: LazyLock<tempfile::TempDir> = LazyLock::new(labaid_fuzz_scratch);

fn labaid_fuzz_scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    made.expect("a scratch directory")
}

fuzz_target!(|data: &[u8]| labaid::fuzzing::audit_verify(SCRATCH.path(), data));
