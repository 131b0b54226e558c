//! Writes the valid inputs that seed each target's corpus, made by labaid's own writers, into
//! `corpus/<target>/` beside this crate, plus the repository's HL7 and FHIR fixtures.

use std::fs;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = root.join("../..");
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let mut seeds = labaid::fuzzing::seeds(scratch.path());
    for (target, dir, ext) in [
        ("hl7_parse", "tests/fixtures/hl7", "hl7"),
        ("fhir_bundle", "tests/fixtures/fhir", "json"),
    ] {
        let mut files: Vec<_> = fs::read_dir(repo.join(dir))
            .expect("the fixtures")
            .map(|e| e.expect("an entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        files.sort();
        for path in files {
            let bytes = fs::read(&path).expect("a fixture");
            let bytes = if ext == "hl7" { hl7_frame(&bytes) } else { bytes };
            seeds.push((target, bytes));
        }
    }
    for (i, (target, bytes)) in seeds.iter().enumerate() {
        let dir = root.join("corpus").join(target);
        fs::create_dir_all(&dir).expect("the corpus directory");
        let path = dir.join(format!("seed-{i:02}"));
        fs::write(&path, bytes).expect("a seed");
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}

/// A fixture as it arrives on the wire: its times filled in (ten minutes before the targets'
/// fixed "now"), its lines ended with carriage returns, in an MLLP frame.
fn hl7_frame(fixture: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0b];
    let mut rest = fixture;
    while !rest.is_empty() {
        let (bytes, skip): (&[u8], usize) = if rest.starts_with(b"{NOW}") {
            (b"20250615160000", 5)
        } else if rest.starts_with(b"{COLLECTED}") {
            (b"20250615155000", 11)
        } else if rest[0] == b'\n' {
            (b"\r", 1)
        } else {
            (&rest[..1], 1)
        };
        out.extend_from_slice(bytes);
        rest = &rest[skip..];
    }
    out.extend_from_slice(&[0x1c, 0x0d]);
    out
}
