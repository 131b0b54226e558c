#![no_main]
//! Fuzz target: see `labaid::fuzzing::fhir_bundle`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| labaid::fuzzing::fhir_bundle(data));
