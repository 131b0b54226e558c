//! labaid-sim end to end: the real binary and the library's run over shipped and generated
//! scenarios. Determinism, queueing theory, conservation, comparison and scenario errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use labaid::domain::RequestState;
use labaid::sim::{self, output};

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_labaid-sim"))
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_same_seed_gives_byte_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenarios().join("small.toml");
    for name in ["one", "two"] {
        let run = sim::run(sim::load(&path).unwrap(), &mut |_| {}).unwrap();
        output::write_run(&run, &dir.path().join(name)).unwrap();
    }
    let (one, two) = (
        files(&dir.path().join("one")),
        files(&dir.path().join("two")),
    );
    let names: Vec<&str> = one.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "requests.csv",
        "timeseries.csv",
        "summary.txt",
        "index.html",
        "turnaround.png",
        "utilisation.svg",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(one.len(), two.len());
    for ((n1, b1), (n2, b2)) in one.iter().zip(&two) {
        assert_eq!(n1, n2);
        assert!(b1 == b2, "{n1} differs between two runs of the same seed");
    }
    // And the seed matters: another one gives other requests.
    let mut other = sim::load(&path).unwrap();
    other.seed += 1;
    let run = sim::run(other, &mut |_| {}).unwrap();
    output::write_run(&run, &dir.path().join("three")).unwrap();
    let three = std::fs::read(dir.path().join("three/requests.csv")).unwrap();
    assert_ne!(
        three,
        std::fs::read(dir.path().join("one/requests.csv")).unwrap()
    );
}

/// Erlang C: the probability that an arrival waits in an M/M/c queue, and the mean wait.
fn erlang_c_mean_wait(lambda: f64, mu: f64, c: u32) -> f64 {
    let a = lambda / mu;
    let mut term = 1.0;
    let mut sum = 0.0;
    for k in 0..c {
        if k > 0 {
            term *= a / f64::from(k);
        }
        sum += term;
    }
    let last = term * a / f64::from(c) * f64::from(c) / (f64::from(c) - a);
    let p_wait = last / (sum + last);
    p_wait / (f64::from(c) * mu - lambda)
}

#[test]
fn a_single_lab_with_poisson_arrivals_and_exponential_service_matches_erlang_c() {
    let dir = tempfile::tempdir().unwrap();
    // One trust, one lab of 4 slots, one test of 6 minutes mean; no courier, no delays: the
    // lab's slots are the c servers, and the wait for a lab is the wait in the queue.
    std::fs::write(
        dir.path().join("directory.toml"),
        r#"
[[test]]
code = "MMC"
name = "Queueing check"
stability_hours = 72
tat_minutes = 6

[[trust]]
ods = "TRU1"
name = "Trust"

[[lab]]
ods = "LAB1"
name = "Lab"
tests = ["MMC"]
capacity = { MMC = 4 }
transport_minutes = { TRU1 = 0 }
agreements = ["TRU1"]
"#,
    )
    .unwrap();
    // Load 0.75: lambda = 0.75 * 4 / 6 a minute = 720 a day.
    let per_day = 0.75 * 4.0 / 6.0 * 1440.0;
    let scenario = dir.path().join("mmc.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"
start = "2024-01-01T00:00"
duration_hours = {hours}
drain_hours = 24
seed = 11
directory = "directory.toml"

[lab_defaults]
accept_minutes = 0
service = "exponential"

[[demand]]
trust = "TRU1"
per_day = {{ routine = {per_day} }}
collection_minutes = 0
[[demand.mix]]
tests = ["MMC"]
weight = 1
"#,
            hours = 24 * 70
        ),
    )
    .unwrap();
    let run = sim::run(sim::load(&scenario).unwrap(), &mut |_| {}).unwrap();
    let waits: Vec<f64> = run
        .lives
        .iter()
        .map(|l| (l.first_offer_at.unwrap() - l.submitted_at) as f64 / 60_000.0)
        .collect();
    assert!(waits.len() > 45_000, "{} requests", waits.len());
    assert!(run.lives.iter().all(|l| l.state == RequestState::Resulted));
    let simulated = waits.iter().sum::<f64>() / waits.len() as f64;
    let theory = erlang_c_mean_wait(per_day / 1440.0, 1.0 / 6.0, 4);
    let error = (simulated - theory).abs() / theory;
    println!(
        "M/M/4 at load 0.75: simulated mean wait {simulated:.3} min, Erlang C {theory:.3} min ({:.1} % apart)",
        error * 100.0
    );
    assert!(
        error < 0.05,
        "simulated {simulated:.3} min vs Erlang C {theory:.3} min"
    );
}

#[test]
fn the_synnovis_scenario_conserves_every_request_and_writes_its_plots() {
    let out = tempfile::tempdir().unwrap();
    let status = bin()
        .arg(scenarios().join("synnovis-june-2024.toml"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("requests submitted") && stdout.contains("requests/s"),
        "{stdout}"
    );
    // Every request appears once, in exactly one state, final after the drain.
    let csv = std::fs::read_to_string(out.path().join("requests.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let state_col = header.iter().position(|h| *h == "state").unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert!(rows.len() > 10_000);
    for r in &rows {
        assert!(
            ["resulted", "failed", "expired", "cancelled"].contains(&r[state_col]),
            "request {} ended {}",
            r[0],
            r[state_col]
        );
    }
    let html = std::fs::read_to_string(out.path().join("index.html")).unwrap();
    for plot in ["turnaround", "waiting", "utilisation", "expiries"] {
        assert!(
            html.contains(&format!("{plot}.png")),
            "index.html does not show {plot}"
        );
        let png = std::fs::read(out.path().join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(out.path().join(format!("{plot}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"));
    }
    // The LFT suspension and the lab outage are in the run.
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap();
    assert!(summary.contains("LFT suspended") && summary.contains("R1H offline for 8 h"));
}

#[test]
fn a_second_partner_lab_shortens_turnaround_in_comparison_mode() {
    let out = tempfile::tempdir().unwrap();
    let status = bin()
        .arg(scenarios().join("compare-one-partner.toml"))
        .arg("--compare")
        .arg(scenarios().join("compare-two-partners.toml"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        out.path().join("a/index.html").exists() && out.path().join("b/utilisation.png").exists()
    );
    let page = std::fs::read_to_string(out.path().join("index.html")).unwrap();
    assert!(page.contains("a/turnaround.png") && page.contains("b/turnaround.png"));
    let priorities = |side: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(out.path().join(side).join("priorities.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let (a, b) = (priorities("a"), priorities("b"));
    // Column 11 is p90 in minutes; row 2 is urgent. Same demand (same seed), more capacity.
    assert_eq!(
        a[2][1], b[2][1],
        "the pair should see the same urgent demand"
    );
    let (pa, pb): (f64, f64) = (a[2][11].parse().unwrap(), b[2][11].parse().unwrap());
    assert!(
        pb < pa,
        "urgent p90 with two partners {pb} should beat one partner's {pa}"
    );
}

fn bad_scenario(body: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, body).unwrap();
    let out = bin()
        .arg(&path)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains("bad.toml:"), "no file named: {stderr}");
    assert!(
        !dir.path().join("out").exists(),
        "a bad scenario wrote output"
    );
    (out.status.code().unwrap(), stderr)
}

const GOOD_HEAD: &str = r#"start = "2024-06-03T00:00"
duration_hours = 24
seed = 1
[[demand]]
trust = "RJ1"
per_day = { urgent = 10 }
[[demand.mix]]
tests = ["FBC"]
weight = 1
"#;

#[test]
fn an_unknown_lab_is_named_with_its_line_and_exit_code_2() {
    let (code, err) = bad_scenario(&format!("{GOOD_HEAD}[[lab]]\nods = \"XYZ9\"\n"));
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:11: lab.ods: unknown lab \"XYZ9\""),
        "{err}"
    );
}

#[test]
fn a_negative_capacity_is_named_with_its_line_and_exit_code_2() {
    let (code, err) = bad_scenario(&format!(
        "{GOOD_HEAD}[[lab]]\nods = \"RJ7\"\ncapacity = {{ FBC = -5 }}\n"
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:12: capacity.FBC: must be 0 or more, not -5"),
        "{err}"
    );
}

#[test]
fn an_event_before_the_start_is_named_with_its_line_and_exit_code_2() {
    let (code, err) = bad_scenario(&format!(
        "{GOOD_HEAD}[[event]]\nkind = \"lab_offline\"\nlab = \"RJ7\"\nat = \"2024-06-02T23:00\"\n"
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:13: at: 2024-06-02T23:00 is before the scenario's start"),
        "{err}"
    );
}

#[test]
fn malformed_toml_and_unknown_fields_are_named_with_their_line() {
    let (code, err) = bad_scenario(&format!("{GOOD_HEAD}[[lab]]\nods = \"RJ7\"\nspeed = 3\n"));
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml:12:") && err.contains("speed"),
        "{err}"
    );
    let (code, err) = bad_scenario("start = \"2024-06-03T00:00\"\nduration_hours = 24\nseed = \n");
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:3:"), "{err}");
}

#[test]
fn every_shipped_scenario_is_valid() {
    for entry in std::fs::read_dir(scenarios()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            sim::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
