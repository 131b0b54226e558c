#![no_main]
//! Fuzz target: see `labaid::fuzzing::hl7_parse`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| labaid::fuzzing::hl7_parse(data));
