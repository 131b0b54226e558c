//! labaid-edge: adapters that let trust systems speak their own standards to the broker.

pub mod fhir;
