//! The generated workload: the directory the broker runs on (trusts, labs filling up quickly,
//! long leases) and realistic submissions (priorities, tests, patient names, valid NHS numbers,
//! notes) from a seeded generator, so that every run fills the same way.

use std::fmt::Write as _;
use std::net::SocketAddr;

use labaid::domain::{Priority, RawSubmission, Timestamp};

use super::{CAPACITY, LABS, TESTS, TRUSTS};

pub(crate) fn trust_code(i: usize) -> String {
    format!("LT{i:03}")
}

/// A directory whose labs fill up quickly, so that most requests wait, with leases as long as the
/// config allows: an offer lapsing mid-measurement would re-route work while RSS is read.
pub(crate) fn config_text(grpc: SocketAddr, ops: SocketAddr) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "listen = \"{grpc}\"\nmetrics_listen = \"{ops}\"");
    let _ = writeln!(out, "allow_plaintext_loopback = true\n");
    let _ = writeln!(
        out,
        "[leases]\nstat = 1440\nasap = 1440\nurgent = 1440\nroutine = 1440\n"
    );
    let trusts: Vec<String> = (0..TRUSTS).map(trust_code).collect();
    for t in &trusts {
        let _ = writeln!(out, "[[trust]]\nods = \"{t}\"\nname = \"Trust {t}\"\n");
    }
    let tests: Vec<String> = TESTS.iter().map(|t| format!("\"{t}\"")).collect();
    let capacity: Vec<String> = TESTS.iter().map(|t| format!("{t} = {CAPACITY}")).collect();
    let agreements: Vec<String> = trusts.iter().map(|t| format!("\"{t}\"")).collect();
    for l in 0..LABS {
        let transport: Vec<String> = trusts
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{t} = {}", 20 + (i + l) % 5 * 5))
            .collect();
        let _ = writeln!(
            out,
            "[[lab]]\nods = \"LL{l:03}\"\nname = \"Lab {l}\"\ntests = [{}]\ncapacity = {{ {} }}\n\
             transport_minutes = {{ {} }}\nagreements = [{}]\n",
            tests.join(", "),
            capacity.join(", "),
            transport.join(", "),
            agreements.join(", ")
        );
    }
    out
}

/// A small deterministic generator (xorshift64*), so every run fills the same data.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

const FAMILY: [&str; 16] = [
    "Okonkwo-Reid",
    "Fitzgerald",
    "Richardson",
    "Abernethy",
    "Kowalczyk",
    "Thompson",
    "Chaudhary",
    "Macdonald",
    "Williamson",
    "Oyelaran",
    "Henderson",
    "Patterson",
    "Nakamura",
    "Gallagher",
    "Ramasamy",
    "Whitfield",
];
const GIVEN: [&str; 12] = [
    "Alexandra",
    "Oluwaseun",
    "Catherine",
    "Mohammed",
    "Josephine",
    "Benjamin",
    "Priyanka",
    "Christopher",
    "Margaret",
    "Frederick",
    "Anastasia",
    "Sebastian",
];
const NOTES: [&str; 8] = [
    "Query sepsis, on IV co-amoxiclav; phone results to ward 7B",
    "Pre-op, theatre list tomorrow 08:00",
    "Chest pain 2h, ECG changes; repeat troponin at 3h",
    "On warfarin, INR target 2.5; dose due 18:00",
    "Known CKD stage 3, K was 5.9 yesterday",
    "Post-partum haemorrhage, crossmatch 2 units",
    "Routine monitoring, methotrexate",
    "Collapse at home, query GI bleed",
];

/// A valid NHS number: nine random digits and the modulus 11 check digit.
pub(crate) fn nhs_number(rng: &mut Rng) -> String {
    loop {
        let digits: Vec<u32> = (0..9).map(|_| rng.below(10) as u32).collect();
        let sum: u32 = digits.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => continue,
            c => c,
        };
        return digits
            .iter()
            .chain(std::iter::once(&check))
            .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
            .collect();
    }
}

pub(crate) fn submission(rng: &mut Rng, i: usize, now: Timestamp) -> RawSubmission {
    let priority = match rng.below(100) {
        0..5 => Priority::Stat,
        5..20 => Priority::Asap,
        20..50 => Priority::Urgent,
        _ => Priority::Routine,
    };
    let wanted = [1, 1, 1, 2, 2, 2, 3, 3, 4][rng.below(9)];
    let mut tests: Vec<String> = Vec::with_capacity(wanted);
    while tests.len() < wanted {
        // Skewed towards the common tests: the lower of two draws.
        let t = TESTS[rng.below(TESTS.len()).min(rng.below(TESTS.len()))];
        if !tests.iter().any(|x| x == t) {
            tests.push(t.to_string());
        }
    }
    let note = if rng.below(4) == 0 {
        String::new()
    } else {
        rng.pick(&NOTES).to_string()
    };
    RawSubmission {
        order_number: format!("ORD-2026-{i:08}"),
        nhs_number: nhs_number(rng),
        family_name: rng.pick(&FAMILY).to_string(),
        given_name: rng.pick(&GIVEN).to_string(),
        birth_date: format!(
            "{}-{:02}-{:02}",
            1930 + rng.below(90),
            1 + rng.below(12),
            1 + rng.below(28)
        ),
        tests,
        priority: Some(priority),
        // Collected in the last half hour: the shortest stability (4 h) leaves hours to measure.
        collected_at: Some(now.plus_minutes(-(rng.below(30) as i64))),
        clinical_note: note,
    }
}
