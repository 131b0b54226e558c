//! Property tests of the core: random directories and command sequences, checked after every
//! command for the invariants routing promises.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::domain::*;

const TESTS: [&str; 3] = ["K", "UE", "GLU"];
const TRUSTS: [&str; 2] = ["RJ1", "RJZ"];
const LABS: [&str; 3] = ["RJ7", "R1H", "RJ2"];
const T0: i64 = 1_800_000_000_000;

fn code(s: &str) -> TestCode {
    TestCode::parse(s).unwrap()
}
fn ods(s: &str) -> OdsCode {
    OdsCode::parse(s).unwrap()
}

fn catalogue() -> Catalogue {
    let def = |c: &str, stability_minutes: u32, tat: u32| TestDef {
        code: code(c),
        name: c.into(),
        discipline: String::new(),
        specimen: String::new(),
        stability_minutes,
        turnaround_minutes: tat,
        unit: None,
        critical_low: None,
        critical_high: None,
        loinc: None,
        snomed: None,
    };
    Catalogue::new([def("K", 240, 45), def("UE", 1440, 60), def("GLU", 240, 30)]).unwrap()
}

#[derive(Debug, Clone)]
struct LabSpec {
    tests: Vec<bool>,
    capacity: Vec<u32>,
    transport: [u32; 2],
    agreements: [bool; 2],
}

fn lab_spec() -> impl Strategy<Value = LabSpec> {
    (
        proptest::collection::vec(any::<bool>(), 3),
        proptest::collection::vec(0u32..6, 3),
        [10u32..200, 10u32..200],
        [any::<bool>(), any::<bool>()],
    )
        .prop_map(|(tests, capacity, transport, agreements)| LabSpec {
            tests,
            capacity,
            transport,
            agreements,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        trust: usize,
        tests: Vec<bool>,
        priority: usize,
        age_min: i64,
    },
    Accept {
        lab: usize,
        pick: usize,
    },
    Decline {
        lab: usize,
        pick: usize,
    },
    Receive {
        lab: usize,
        pick: usize,
    },
    Result {
        lab: usize,
        pick: usize,
    },
    Fail {
        lab: usize,
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Capacity {
        lab: usize,
        test: usize,
        capacity: u32,
    },
    Status {
        lab: usize,
        status: usize,
    },
    Advance {
        minutes: i64,
    },
    Reassign {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2usize, proptest::collection::vec(any::<bool>(), 3), 0..4usize, 0i64..300)
            .prop_map(|(trust, tests, priority, age_min)| Op::Submit { trust, tests, priority, age_min }),
        3 => (0..3usize, any::<usize>()).prop_map(|(lab, pick)| Op::Accept { lab, pick }),
        1 => (0..3usize, any::<usize>()).prop_map(|(lab, pick)| Op::Decline { lab, pick }),
        2 => (0..3usize, any::<usize>()).prop_map(|(lab, pick)| Op::Receive { lab, pick }),
        2 => (0..3usize, any::<usize>()).prop_map(|(lab, pick)| Op::Result { lab, pick }),
        1 => (0..3usize, any::<usize>()).prop_map(|(lab, pick)| Op::Fail { lab, pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (0..3usize, 0..3usize, 0u32..4).prop_map(|(lab, test, capacity)| Op::Capacity { lab, test, capacity }),
        1 => (0..3usize, 0..3usize).prop_map(|(lab, status)| Op::Status { lab, status }),
        2 => (1i64..30).prop_map(|minutes| Op::Advance { minutes }),
        1 => any::<usize>().prop_map(|pick| Op::Reassign { pick }),
    ]
}

fn build(specs: &[LabSpec]) -> Router {
    let labs = specs
        .iter()
        .zip(LABS)
        .map(|(s, name)| LabConfig {
            ods: ods(name),
            name: name.into(),
            capacity: TESTS
                .iter()
                .zip(&s.tests)
                .zip(&s.capacity)
                .filter(|((_, on), _)| **on)
                .map(|((t, _), c)| (code(t), *c))
                .collect(),
            transport_minutes: TRUSTS
                .iter()
                .zip(s.transport)
                .map(|(t, m)| (ods(t), m))
                .collect(),
            agreements: TRUSTS
                .iter()
                .zip(s.agreements)
                .filter(|(_, on)| *on)
                .map(|(t, _)| ods(t))
                .collect(),
        })
        .collect();
    let trusts: BTreeMap<OdsCode, String> =
        TRUSTS.iter().map(|t| (ods(t), t.to_string())).collect();
    Router::new(
        Arc::new(catalogue()),
        trusts,
        labs,
        Leases::default(),
        60 * 60_000,
    )
}

fn command(router: &Router, op: &Op, now: Timestamp, n: usize) -> Command {
    let ids: Vec<RequestId> = {
        let mut v: Vec<_> = router.requests().map(|r| (r.ordinal, r.id)).collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    };
    let pick = |p: usize| {
        ids.get(p % ids.len().max(1))
            .copied()
            .unwrap_or_else(RequestId::generate)
    };
    let lab = |l: usize| ods(LABS[l]);
    // Lab commands mostly name one of that lab's jobs, so that transitions actually happen.
    let held = |l: usize, p: usize| {
        let mine: Vec<RequestId> = ids
            .iter()
            .copied()
            .filter(|id| router.request(id).is_some_and(|r| r.is_job_of(&lab(l))))
            .collect();
        if mine.is_empty() || p.is_multiple_of(10) {
            pick(p)
        } else {
            mine[p % mine.len()]
        }
    };
    match op {
        Op::Submit {
            trust,
            tests,
            priority,
            age_min,
        } => {
            let mut codes: Vec<TestCode> = TESTS
                .iter()
                .zip(tests)
                .filter(|(_, on)| **on)
                .map(|(t, _)| code(t))
                .collect();
            if codes.is_empty() {
                codes.push(code("K"));
            }
            // Every other id random (version 4), as in a data directory from before ids came
            // in time order: the core's indexes must hold for ids in any order.
            let id = if n.is_multiple_of(2) {
                RequestId::generate()
            } else {
                RequestId(uuid::Uuid::new_v4())
            };
            Command::Submit {
                trust: ods(TRUSTS[*trust]),
                id,
                request: NewRequest {
                    order_number: OrderNumber::parse(&format!("O{n}")).unwrap(),
                    patient: Patient {
                        nhs_number: NhsNumber::parse("9434765919").unwrap(),
                        family_name: BoundedText::default(),
                        given_name: BoundedText::default(),
                        birth_date: String::new(),
                    },
                    tests: TestSet::from_codes(codes),
                    priority: Priority::ALL[*priority],
                    collected_at: now.plus_minutes(-age_min),
                    clinical_note: BoundedText::default(),
                },
            }
        }
        Op::Accept { lab: l, pick: p } => Command::Accept {
            lab: lab(*l),
            id: held(*l, *p),
        },
        Op::Decline { lab: l, pick: p } => Command::Decline {
            lab: lab(*l),
            id: held(*l, *p),
            reason: BoundedText::parse("busy", 10).unwrap(),
        },
        Op::Receive { lab: l, pick: p } => Command::Receive {
            lab: lab(*l),
            id: held(*l, *p),
        },
        Op::Result { lab: l, pick: p } => {
            let id = held(*l, *p);
            let observations = router
                .request(&id)
                .map(|r| {
                    r.submission
                        .tests
                        .codes()
                        .iter()
                        .map(|t| Observation {
                            test: t.clone(),
                            analyte: String::new(),
                            value: "1".into(),
                            unit: String::new(),
                            reference_range: String::new(),
                            flag: ObservationFlag::Normal,
                        })
                        .collect()
                })
                .unwrap_or_default();
            Command::PostResults {
                lab: lab(*l),
                id,
                observations,
            }
        }
        Op::Fail { lab: l, pick: p } => Command::Fail {
            lab: lab(*l),
            id: held(*l, *p),
            reason: FailureReason::Haemolysed,
            detail: BoundedText::default(),
        },
        Op::Cancel { pick: p } => {
            let id = pick(*p);
            let trust = router
                .request(&id)
                .map_or_else(|| ods("RJ1"), |r| r.trust.clone());
            Command::Cancel {
                trust,
                id,
                reason: BoundedText::default(),
            }
        }
        Op::Capacity {
            lab: l,
            test,
            capacity,
        } => Command::SetCapacity {
            lab: lab(*l),
            test: code(TESTS[*test]),
            capacity: *capacity,
        },
        Op::Status { lab: l, status } => Command::SetStatus {
            lab: lab(*l),
            status: [LabStatus::Online, LabStatus::Draining, LabStatus::Offline][*status],
        },
        Op::Advance { .. } => Command::Tick,
        Op::Reassign { pick: p } => {
            // Mostly an accepted job, the only kind a coordinator can reassign.
            let accepted: Vec<RequestId> = ids
                .iter()
                .copied()
                .filter(|id| {
                    router
                        .request(id)
                        .is_some_and(|r| r.state == RequestState::Accepted)
                })
                .collect();
            let id = if accepted.is_empty() || p.is_multiple_of(10) {
                pick(*p)
            } else {
                accepted[p % accepted.len()]
            };
            Command::Reassign {
                id,
                reason: BoundedText::parse("courier lost", 40).unwrap(),
            }
        }
    }
}

fn query<'a>(r: &'a Request, cat: &Catalogue) -> RouteQuery<'a> {
    RouteQuery {
        trust: &r.trust,
        tests: &r.submission.tests,
        deadline: r.deadline,
        turnaround_minutes: r.submission.tests.turnaround_minutes(cat),
        excluded: &r.excluded,
    }
}

fn check(
    router: &Router,
    before: &Router,
    out: &Outcome,
    now: Timestamp,
    submitted: &HashSet<RequestId>,
) {
    let cat = router.catalogue().clone();
    // Capacity: a command never raises work in flight above capacity, and in-flight counts match
    // the open requests exactly.
    for lab in router.labs().iter() {
        let old = before.labs().get(&lab.config.ods).unwrap();
        for (test, slot) in &lab.slots {
            if slot.in_flight > old.slots[test].in_flight {
                assert!(
                    slot.in_flight <= slot.capacity,
                    "capacity exceeded at {} {test}",
                    lab.config.ods
                );
            }
            let open = lab
                .open
                .iter()
                .filter(|id| router.request(id).unwrap().submission.tests.contains(test))
                .count();
            assert_eq!(
                slot.in_flight as usize, open,
                "in-flight count drifted at {}",
                lab.config.ods
            );
        }
        for id in &lab.open {
            let r = router.request(id).unwrap();
            assert!(matches!(
                r.state,
                RequestState::Offered | RequestState::Accepted | RequestState::Received
            ));
            assert_eq!(r.lab.as_ref(), Some(&lab.config.ods));
        }
    }
    // Offers go only to eligible labs (checked against the state just before the offer's room
    // was taken: same status, directory and exclusions; capacity was checked above).
    for e in &out.events {
        if e.kind == EventKind::Lab(JobEventKind::Offered) {
            let r = &e.request;
            let lab = router.labs().get(&e.org).unwrap();
            assert_eq!(lab.status, LabStatus::Online);
            assert!(lab.serves(&r.trust) && lab.performs(&r.submission.tests));
            assert!(query(r, &cat).predicted_at(lab, now) < r.deadline);
            assert!(!r.excludes(&e.org));
        }
    }
    // No request is lost: every submission is held, queued requests are in the queue, and nothing
    // queued could go anywhere (work-conserving).
    let mut queued = 0;
    for id in submitted {
        let r = router.request(id).expect("request lost");
        if r.state == RequestState::Queued {
            queued += 1;
            for lab in router.labs().iter() {
                assert!(
                    !query(r, &cat).is_eligible(lab, now),
                    "queued request eligible at {}",
                    lab.config.ods
                );
            }
        }
    }
    assert_eq!(queued, router.queue().len());
    // Priority order within a group: a request taken from the queue never overtakes an earlier
    // one of the same trust and tests that waited all along and that the same lab could have
    // taken. (One that only began to wait later in the same command, say when its own lease ran
    // out in the same tick, was not waiting when the lab chose.)
    let was_queued: BTreeSet<QueueKey> = before.queue().in_order().into_iter().collect();
    let still: Vec<QueueKey> = router.queue().in_order();
    for e in &out.events {
        if e.kind != EventKind::Lab(JobEventKind::Offered) {
            continue;
        }
        let Some(taken) = was_queued.iter().find(|k| k.id == e.request.id) else {
            continue;
        };
        let lab = router.labs().get(&e.org).unwrap();
        for k in still
            .iter()
            .filter(|k| *k < taken && was_queued.contains(*k))
        {
            let q = router.request(&k.id).unwrap();
            if q.trust == e.request.trust && q.submission.tests == e.request.submission.tests {
                let qq = query(q, &cat);
                assert!(
                    qq.predicted_at(lab, now) >= q.deadline || q.excludes(&e.org),
                    "a later request overtook an earlier one of the same group"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn routing_invariants_hold_for_any_command_sequence(
        specs in proptest::collection::vec(lab_spec(), 3),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut router = build(&specs);
        let mut now = Timestamp::from_millis(T0);
        let mut submitted = HashSet::new();
        let mut seen = BTreeMap::new();
        // An incremental snapshot's base, brought forward every few commands by the requests
        // the outcomes named: it must equal the live state, indexes included.
        let mut base = router.state().clone();
        let mut changed = BTreeSet::new();
        for (n, op) in ops.iter().enumerate() {
            if let Op::Advance { minutes } = op {
                now = now.plus_minutes(*minutes);
            }
            let cmd = command(&router, op, now, n);
            let before = Router::from_state(router.state().clone(), Arc::new(DefaultPolicy));
            let mut out = Outcome::default();
            let result = router.apply(&cmd, now, &mut out);
            if let (Command::Submit { .. }, Ok(Reply::Request { request, replayed: false })) = (&cmd, &result) {
                submitted.insert(request.id);
            }
            if result.is_err() {
                // A rejected command changes nothing.
                prop_assert!(!out.changed);
                prop_assert!(out.events.is_empty());
                prop_assert!(router.state() == before.state());
            }
            submitted.retain(|id| router.request(id).is_some() || !out.purged.contains(id));
            check(&router, &before, &out, now, &submitted);
            // A snapshot's copy leaves out the indexes; rebuilt, they are exactly the live ones.
            prop_assert!(router.state().lean_copy().into_state() == *router.state());
            changed.extend(out.requests.iter().chain(&out.purged).copied());
            if n % 5 == 4 || n + 1 == ops.len() {
                let head = router.state().head_copy();
                base.apply_delta(
                    head,
                    std::mem::take(&mut changed)
                        .into_iter()
                        .map(|id| (id, router.request(&id).cloned())),
                );
                prop_assert!(base == *router.state());
            }
            for e in &out.events {
                if let EventKind::Lab(k) = e.kind {
                    *seen.entry(format!("{k:?}")).or_insert(0usize) += 1;
                }
            }
        }
        if std::env::var("LABAID_PROPTEST_STATS").is_ok() {
            eprintln!("{seen:?}");
        }
    }
}
