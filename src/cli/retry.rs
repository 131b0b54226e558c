//! A retried `labctl requests submit`: when the broker answers that the order number was already
//! used for a different request, labctl compares the retry with the original field by field. A
//! relative `--collected-at` (`-20m`) computes a new time on every run, so a collection time that
//! moved forward by no more than the time since the original was submitted counts as the same;
//! anything else is a real conflict, named by flag.

use super::output::instant;
use crate::domain::Timestamp;
use crate::proto;

/// How long before the broker acknowledged it the original attempt may have computed its
/// relative time: connecting (5 s), reading the catalogue and submitting (30 s each).
const ATTEMPT_MS: i64 = 65_000;
/// How far the clocks of the machines that sent the two attempts may disagree.
const CLOCK_SKEW_MS: i64 = 30_000;

/// True when `--collected-at` was given relative to now (`now`, `-20m`, `+0s`), so that a retry
/// computes a different time from the same words.
pub(crate) fn is_relative(raw: &str) -> bool {
    let s = raw.trim();
    s.eq_ignore_ascii_case("now") || s.starts_with('-') || s.starts_with('+')
}

/// The flags whose values differ between the original request and the retried submission, in
/// the order `requests submit --help` lists them; empty when the retry is the same request.
/// `now` is when the retry computed its collection time.
pub(crate) fn differing_flags(
    original: &proto::Request,
    retry: &proto::SubmitRequestRequest,
    collected_relative: bool,
    now: Timestamp,
) -> Vec<&'static str> {
    let mut differ = Vec::new();
    let empty = proto::Patient::default();
    let (was, is) = (
        original.patient.as_ref().unwrap_or(&empty),
        retry.patient.as_ref().unwrap_or(&empty),
    );
    if was.nhs_number != is.nhs_number {
        differ.push("--nhs-number");
    }
    let mut tests_was = original.tests.clone();
    let mut tests_is = retry.tests.clone();
    tests_was.sort();
    tests_is.sort();
    if tests_was != tests_is {
        differ.push("--tests");
    }
    if original.priority != retry.priority {
        differ.push("--priority");
    }
    if !same_collection(original, retry, collected_relative, now) {
        differ.push("--collected-at");
    }
    if was.family_name != is.family_name {
        differ.push("--family-name");
    }
    if was.given_name != is.given_name {
        differ.push("--given-name");
    }
    if was.birth_date != is.birth_date {
        differ.push("--birth-date");
    }
    if original.clinical_note != retry.clinical_note {
        differ.push("--note");
    }
    differ
}

/// Whether the collection times are the same, or, for a relative `--collected-at`, the retry's
/// moved forward by no more than the time since the broker acknowledged the original (allowing
/// for how long that attempt took and for the clocks disagreeing).
fn same_collection(
    original: &proto::Request,
    retry: &proto::SubmitRequestRequest,
    collected_relative: bool,
    now: Timestamp,
) -> bool {
    let (Some(was), Some(is)) = (original.collected_at.as_ref(), retry.collected_at.as_ref())
    else {
        return original.collected_at == retry.collected_at;
    };
    let moved = instant(is).millis_since(instant(was));
    if moved == 0 {
        return true;
    }
    let Some(submitted) = original.submitted_at.as_ref() else {
        return false;
    };
    let since_original = now.millis_since(instant(submitted));
    collected_relative
        && moved >= -CLOCK_SKEW_MS
        && moved <= since_original + ATTEMPT_MS + CLOCK_SKEW_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::proto_time;

    const MIN: i64 = 60_000;

    fn original(submitted: Timestamp, collected: Timestamp) -> proto::Request {
        proto::Request {
            patient: Some(proto::Patient {
                nhs_number: "9434765919".into(),
                ..Default::default()
            }),
            tests: vec!["K".into(), "UE".into()],
            priority: proto::Priority::Stat as i32,
            collected_at: Some(proto_time(collected)),
            submitted_at: Some(proto_time(submitted)),
            ..Default::default()
        }
    }

    fn retry(collected: Timestamp) -> proto::SubmitRequestRequest {
        proto::SubmitRequestRequest {
            patient: Some(proto::Patient {
                nhs_number: "9434765919".into(),
                ..Default::default()
            }),
            tests: vec!["UE".into(), "K".into()],
            priority: proto::Priority::Stat as i32,
            collected_at: Some(proto_time(collected)),
            ..Default::default()
        }
    }

    #[test]
    fn a_relative_collection_time_that_moved_with_the_clock_is_the_same_request() {
        let t1 = Timestamp::from_millis(1_700_000_000_000);
        let original = original(t1.plus_millis(2_000), t1.plus_millis(-20 * MIN));
        let t2 = t1.plus_millis(MIN);
        let again = retry(t2.plus_millis(-20 * MIN));
        assert!(differing_flags(&original, &again, true, t2).is_empty());
        // The same words given as an absolute time did not move: a different time differs.
        assert_eq!(
            differing_flags(&original, &again, false, t2),
            ["--collected-at"]
        );
    }

    #[test]
    fn a_collection_time_that_moved_further_than_the_time_since_submission_differs() {
        let t1 = Timestamp::from_millis(1_700_000_000_000);
        let original = original(t1, t1.plus_millis(-20 * MIN));
        let t2 = t1.plus_millis(MIN);
        // -10m instead of -20m: moved 11 minutes in 1.
        let again = retry(t2.plus_millis(-10 * MIN));
        assert_eq!(
            differing_flags(&original, &again, true, t2),
            ["--collected-at"]
        );
        // Moved back by 5 minutes: not what a later run of the same words computes.
        let again = retry(t1.plus_millis(-25 * MIN));
        assert_eq!(
            differing_flags(&original, &again, true, t2),
            ["--collected-at"]
        );
    }

    #[test]
    fn every_other_difference_is_named_by_its_flag() {
        let t1 = Timestamp::from_millis(1_700_000_000_000);
        let original = original(t1, t1.plus_millis(-20 * MIN));
        let mut again = retry(t1.plus_millis(-20 * MIN));
        again.tests = vec!["K".into()];
        again.priority = proto::Priority::Urgent as i32;
        again.clinical_note = "on heparin".into();
        if let Some(p) = again.patient.as_mut() {
            p.nhs_number = "6541003238".into();
            p.birth_date = "1950-01-01".into();
        }
        assert_eq!(
            differing_flags(&original, &again, true, t1),
            [
                "--nhs-number",
                "--tests",
                "--priority",
                "--birth-date",
                "--note"
            ]
        );
    }

    #[test]
    fn relative_times_are_told_from_absolute_ones() {
        for raw in ["now", "NOW", "-20m", " -1h30m", "+0s"] {
            assert!(is_relative(raw), "{raw}");
        }
        for raw in ["2024-06-03T09:40:00Z", "2024-06-03T09:40:00+01:00"] {
            assert!(!is_relative(raw), "{raw}");
        }
    }
}
