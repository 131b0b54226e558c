//! Times on the command line: RFC 3339, `now` and relative times such as `-20m` in; RFC 3339 and
//! "in 3 min" / "40 s ago" out. The calendar and RFC 3339's grammar are the `time` crate's, the
//! durations `humantime`'s; only the spans people read are worded here.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::Timestamp;

const SECOND_MS: i64 = 1000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Parses a point in time: an RFC 3339 time (`2024-06-03T09:40:00Z`, `...+01:00`), `now`, or a
/// time relative to `now` such as `-20m`, `-1h30m` or `-90s`.
pub(crate) fn parse_time(raw: &str, now: Timestamp) -> Result<Timestamp, String> {
    let s = raw.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(rest) = s.strip_prefix('-') {
        return Ok(now.plus_millis(-parse_duration_ms(rest)?));
    }
    if let Some(rest) = s.strip_prefix('+') {
        return Ok(now.plus_millis(parse_duration_ms(rest)?));
    }
    parse_rfc3339(s)
}

/// Parses a duration such as `20m`, `1h30m`, `90s` or `2d` into milliseconds. humantime's
/// grammar also takes units spelt out (`20min`, `1h 30m`).
pub(crate) fn parse_duration_ms(raw: &str) -> Result<i64, String> {
    let err =
        || format!("{raw:?} is not a duration: use a number and a unit, e.g. 20m, 1h30m, 90s");
    let span = humantime::parse_duration(raw).map_err(|_| err())?;
    i64::try_from(span.as_millis()).map_err(|_| err())
}

/// Parses an RFC 3339 time; the offset (`Z` or `+01:00`) is required, since a bare local time is
/// ambiguous across the BST change. Fractions finer than a millisecond are cut off.
pub(crate) fn parse_rfc3339(raw: &str) -> Result<Timestamp, String> {
    let err = |why: &str| {
        format!(
            "{raw:?} is not a time ({why}): use RFC 3339 such as 2024-06-03T09:40:00Z, \
             `now`, or a relative time such as -20m"
        )
    };
    // The time crate takes any one character between date and time, as RFC 3339's note allows;
    // labctl keeps to T and a space, so that a slip of the keyboard is not read as a time.
    if raw
        .as_bytes()
        .get(10)
        .is_some_and(|c| !matches!(c, b'T' | b't' | b' '))
    {
        return Err(err("expected YYYY-MM-DDTHH:MM:SS"));
    }
    match OffsetDateTime::parse(raw, &Rfc3339) {
        Ok(t) => {
            let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
            i64::try_from(ms)
                .map(Timestamp::from_millis)
                .map_err(|_| err("out of range"))
        }
        Err(_) if OffsetDateTime::parse(&format!("{raw}Z"), &Rfc3339).is_ok() => {
            Err(err("no offset: add Z for UTC or an offset such as +01:00"))
        }
        Err(e) => Err(err(&e.to_string())),
    }
}

/// Formats a time as RFC 3339 in UTC, with milliseconds only when there are any. A time beyond
/// the years 9999 either way (no broker makes one) is given as milliseconds since the epoch.
pub(crate) fn format_rfc3339(t: Timestamp) -> String {
    let Ok(utc) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.millis()) * 1_000_000)
    else {
        return format!("{} ms since 1970-01-01T00:00:00Z", t.millis());
    };
    let (date, ms) = (utc.date(), utc.millisecond());
    let (h, mi, s) = (utc.hour(), utc.minute(), utc.second());
    let (y, mo, d) = (date.year(), u8::from(date.month()), date.day());
    if ms == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// The UTC time of day, `HH:MM:SS`, for event lines.
pub(crate) fn format_clock(t: Timestamp) -> String {
    let in_day = t.millis().rem_euclid(DAY_MS);
    format!(
        "{:02}:{:02}:{:02}",
        in_day / HOUR_MS,
        in_day % HOUR_MS / MINUTE_MS,
        in_day % MINUTE_MS / SECOND_MS
    )
}

/// A span for people: `40 s`, `4 min 10 s` (under 10 minutes, where seconds matter for a lease),
/// `25 min`, `3 h 40 min`, `2 d 4 h`.
pub(crate) fn format_span(ms: i64) -> String {
    let ms = ms.abs();
    let s = ms / SECOND_MS;
    match ms {
        _ if ms < MINUTE_MS => format!("{s} s"),
        _ if ms < 10 * MINUTE_MS && s % 60 != 0 => format!("{} min {} s", s / 60, s % 60),
        _ if ms < HOUR_MS => format!("{} min", s / 60),
        _ if ms < DAY_MS => match (s / 3600, s % 3600 / 60) {
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        },
        _ => match (s / 86_400, s % 86_400 / 3600) {
            (d, 0) => format!("{d} d"),
            (d, h) => format!("{d} d {h} h"),
        },
    }
}

/// `t` relative to `now`: `in 3 min`, `40 s ago`, or `now`.
pub(crate) fn relative(t: Timestamp, now: Timestamp) -> String {
    let diff = t.millis_since(now);
    if diff.abs() < SECOND_MS {
        "now".into()
    } else if diff > 0 {
        format!("in {}", format_span(diff))
    } else {
        format!("{} ago", format_span(diff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_717_407_600_000); // 2024-06-03T09:40:00Z

    #[test]
    fn rfc3339_round_trips_in_utc() {
        let t = parse_rfc3339("2024-06-03T09:40:00Z").unwrap();
        assert_eq!(t, NOW);
        assert_eq!(format_rfc3339(t), "2024-06-03T09:40:00Z");
        assert_eq!(
            format_rfc3339(t.plus_millis(250)),
            "2024-06-03T09:40:00.250Z"
        );
    }

    #[test]
    fn offsets_and_fractions_are_honoured() {
        assert_eq!(parse_rfc3339("2024-06-03T10:40:00+01:00").unwrap(), NOW);
        assert_eq!(
            parse_rfc3339("2024-06-03T09:40:00.5Z").unwrap(),
            NOW.plus_millis(500)
        );
        assert_eq!(parse_rfc3339("2024-06-03 08:40:00-01:00").unwrap(), NOW);
    }

    #[test]
    fn a_time_without_offset_or_a_bad_date_is_refused_with_advice() {
        let e = parse_rfc3339("2024-06-03T09:40:00").unwrap_err();
        assert!(e.contains("add Z"), "{e}");
        assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn only_rfc3339_itself_is_taken_not_the_rest_of_iso_8601() {
        for bad in [
            "2024-06-03T09:40Z",
            "20240603T094000Z",
            "2024-06-03T09:40:00+01",
            "2024-06-03T09:40:00+0100",
            "2024-06-03_09:40:00Z",
            "2024-06-03T09:40:00.Z",
            "2024-06-03T24:00:00Z",
            "2024-6-03T09:40:00Z",
            "+2024-06-03T09:40:00Z",
            "2024-06-03T09:40:00Z[Europe/London]",
            "2024-06-03",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rfc3339("2024-06-03t09:40:00z").unwrap(), NOW);
        assert_eq!(
            parse_rfc3339("2024-06-03T09:40:00.123987Z").unwrap(),
            NOW.plus_millis(123)
        );
        let before = parse_rfc3339("1969-12-31T23:59:59.999Z").unwrap();
        assert_eq!(before, Timestamp::from_millis(-1));
        assert_eq!(format_rfc3339(before), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_rfc3339(parse_rfc3339("2024-02-29T23:00:00-01:00").unwrap()),
            "2024-03-01T00:00:00Z"
        );
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_time("now", NOW).unwrap(), NOW);
        assert_eq!(parse_time("-20m", NOW).unwrap(), NOW.plus_minutes(-20));
        assert_eq!(parse_time("-1h30m", NOW).unwrap(), NOW.plus_minutes(-90));
        assert_eq!(parse_time("-90s", NOW).unwrap(), NOW.plus_millis(-90_000));
        assert!(parse_time("-20", NOW).is_err());
        assert!(parse_time("-20x", NOW).is_err());
        assert!(parse_time("-", NOW).is_err());
        assert_eq!(
            parse_time("+2d", NOW).unwrap(),
            NOW.plus_minutes(2 * 24 * 60)
        );
        assert_eq!(parse_time("-20min", NOW).unwrap(), NOW.plus_minutes(-20));
        let e = parse_time("-20x", NOW).unwrap_err();
        assert!(e.contains("use a number and a unit"), "{e}");
    }

    #[test]
    fn spans_read_like_a_person_would_say_them() {
        assert_eq!(relative(NOW.plus_millis(40_000), NOW), "in 40 s");
        assert_eq!(relative(NOW.plus_millis(-118_000), NOW), "1 min 58 s ago");
        assert_eq!(relative(NOW.plus_minutes(25), NOW), "in 25 min");
        assert_eq!(relative(NOW.plus_minutes(220), NOW), "in 3 h 40 min");
        assert_eq!(relative(NOW.plus_minutes(-48 * 60), NOW), "2 d ago");
        assert_eq!(relative(NOW, NOW), "now");
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(format_clock(NOW), "09:40:00");
    }
}
