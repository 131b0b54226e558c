//! `labaid-broker dev-certs`: a development PKI whose client certificates name each organisation
//! and each trusted edge as the broker reads them, and a bad edge id a usage error (exit 2).

use std::process::Command;

use labaid::auth::{CertIdentity, identity_of};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn identity(path: &std::path::Path) -> CertIdentity {
    let cert = CertificateDer::from_pem_file(path).expect("a certificate");
    identity_of(&cert).expect("names an identity")
}

#[test]
fn dev_certs_issues_a_certificate_per_organisation_and_per_trusted_edge() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
        .args(["dev-certs", "--edge", "gstt-fhir", "--edge", "kch-fhir"])
        .arg(dir.path())
        .output()
        .expect("run dev-certs");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("edge-gstt-fhir, edge-kch-fhir"), "{said}");
    for id in ["gstt-fhir", "kch-fhir"] {
        match identity(&dir.path().join(format!("edge-{id}.pem"))) {
            CertIdentity::Edge(edge) => assert_eq!(edge.as_str(), id),
            other => panic!("edge-{id}.pem names {other:?}"),
        }
        assert!(dir.path().join(format!("edge-{id}.key")).exists());
    }
    match identity(&dir.path().join("RJ1.pem")) {
        CertIdentity::Org(ods) => assert_eq!(ods.as_str(), "RJ1"),
        other => panic!("RJ1.pem names {other:?}"),
    }
}

#[test]
fn a_bad_edge_id_is_a_usage_error_naming_the_flag_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new(env!("CARGO_BIN_EXE_labaid-broker"))
        .args(["dev-certs", "--edge", "no spaces please"])
        .arg(&pki)
        .output()
        .expect("run dev-certs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().next().is_some_and(|l| l.contains("--edge")),
        "{err}"
    );
    assert!(err.contains("lower-case letters"), "{err}");
    assert!(!pki.exists(), "nothing written");
}
