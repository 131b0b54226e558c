//! Times on the command line: RFC 3339, `now` and relative times such as `-20m` in; RFC 3339 and
//! "in 3 min" / "40 s ago" out. Hand-rolled (civil-date arithmetic) to keep labctl's dependencies
//! to what the broker already uses.

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

/// Parses a duration such as `20m`, `1h30m`, `90s` or `2d` into milliseconds.
pub(crate) fn parse_duration_ms(raw: &str) -> Result<i64, String> {
    let err =
        || format!("{raw:?} is not a duration: use a number and a unit, e.g. 20m, 1h30m, 90s");
    if raw.is_empty() {
        return Err(err());
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in raw.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => SECOND_MS,
            'm' => MINUTE_MS,
            'h' => HOUR_MS,
            'd' => DAY_MS,
            _ => return Err(err()),
        };
        let n: i64 = digits.parse().map_err(|_| err())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(err());
    }
    Ok(total)
}

/// Parses an RFC 3339 time; the offset (`Z` or `+01:00`) is required, since a bare local time is
/// ambiguous across the BST change.
pub(crate) fn parse_rfc3339(raw: &str) -> Result<Timestamp, String> {
    let err = |why: &str| {
        format!(
            "{raw:?} is not a time ({why}): use RFC 3339 such as 2024-06-03T09:40:00Z, \
             `now`, or a relative time such as -20m"
        )
    };
    let b = raw.as_bytes();
    if b.len() < 19 {
        return Err(err("too short"));
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        raw.get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("bad digits"))
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(err("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60 {
        return Err(err("no such date or time"));
    }
    let mut i = 19;
    let mut frac_ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(err("empty fraction"));
        }
        let digits = &raw[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().map_err(|_| err("bad fraction"))?
            * 10_i64.pow(3 - u32::try_from(digits.len()).unwrap_or(3));
    }
    let offset_ms = match &raw[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && (tz.starts_with('+') || tz.starts_with('-'))
            && tz.as_bytes()[3] == b':' =>
        {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * HOUR_MS + om * MINUTE_MS)
        }
        "" => return Err(err("no offset: add Z for UTC or an offset such as +01:00")),
        _ => return Err(err("bad offset")),
    };
    let days = days_from_civil(y, mo, d);
    let ms = days * DAY_MS + h * HOUR_MS + mi * MINUTE_MS + s.min(59) * SECOND_MS + frac_ms;
    Ok(Timestamp::from_millis(ms - offset_ms))
}

/// Formats a time as RFC 3339 in UTC, with milliseconds only when there are any.
pub(crate) fn format_rfc3339(t: Timestamp) -> String {
    let ms = t.millis();
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, frac) = (
        in_day / HOUR_MS,
        in_day % HOUR_MS / MINUTE_MS,
        in_day % MINUTE_MS / SECOND_MS,
        in_day % SECOND_MS,
    );
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
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

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
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
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_time("now", NOW).unwrap(), NOW);
        assert_eq!(parse_time("-20m", NOW).unwrap(), NOW.plus_minutes(-20));
        assert_eq!(parse_time("-1h30m", NOW).unwrap(), NOW.plus_minutes(-90));
        assert_eq!(parse_time("-90s", NOW).unwrap(), NOW.plus_millis(-90_000));
        assert!(parse_time("-20", NOW).is_err());
        assert!(parse_time("-20x", NOW).is_err());
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
