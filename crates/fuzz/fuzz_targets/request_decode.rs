#![no_main]
//! Fuzz target: see `labaid::fuzzing::request_decode`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| labaid::fuzzing::request_decode(data));
