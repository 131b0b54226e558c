//! Calendar arithmetic for scenario times: UTC date-times to and from [`Timestamp`], without a
//! time zone database (scenarios are written in UTC, as the broker's timestamps are).

use crate::domain::Timestamp;

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `2024-06-03T08:00`, `2024-06-03 08:00:30` or either with a trailing `Z` (UTC).
pub fn parse_datetime(raw: &str) -> Result<Timestamp, String> {
    let bad = || format!("{raw:?} is not a UTC date and time such as 2024-06-03T08:00");
    let raw_trim = raw.trim().trim_end_matches('Z');
    let (date, clock) = raw_trim.split_once(['T', ' ']).ok_or_else(bad)?;
    let num = |s: &str, lo: i64, hi: i64| -> Result<i64, String> {
        s.parse::<i64>()
            .ok()
            .filter(|v| (lo..=hi).contains(v) && !s.is_empty() && s.len() <= 4)
            .ok_or_else(bad)
    };
    let mut d = date.split('-');
    let (y, m, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(day), None) => {
            (num(y, 1970, 9999)?, num(m, 1, 12)?, num(day, 1, 31)?)
        }
        _ => return Err(bad()),
    };
    let mut c = clock.split(':');
    let (h, min, s) = match (c.next(), c.next(), c.next(), c.next()) {
        (Some(h), Some(min), None, None) => (num(h, 0, 23)?, num(min, 0, 59)?, 0),
        (Some(h), Some(min), Some(s), None) => (num(h, 0, 23)?, num(min, 0, 59)?, num(s, 0, 59)?),
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, m, day);
    if civil_from_days(days) != (y, m, day) {
        return Err(bad());
    }
    Ok(Timestamp::from_millis(
        days * DAY_MS + (h * 3600 + min * 60 + s) * 1000,
    ))
}

/// `2024-06-03 08:00` (UTC, to the minute).
pub fn format_datetime(t: Timestamp) -> String {
    let days = t.millis().div_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let minutes = t.millis().rem_euclid(DAY_MS) / 60_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        minutes / 60,
        minutes % 60
    )
}

/// The weekday, 0 for Monday.
pub fn weekday(t: Timestamp) -> u32 {
    // 1970-01-01 was a Thursday.
    ((t.millis().div_euclid(DAY_MS) + 3).rem_euclid(7)) as u32
}

/// Short name of a weekday from [`weekday`].
pub fn weekday_name(day: u32) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][day as usize % 7]
}

/// Hour of the day, 0 to 23.
pub fn hour_of_day(t: Timestamp) -> u32 {
    (t.millis().rem_euclid(DAY_MS) / 3_600_000) as u32
}

/// Minute of the day, 0 to 1439.
pub fn minute_of_day(t: Timestamp) -> u32 {
    (t.millis().rem_euclid(DAY_MS) / 60_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_morning_of_the_attack_round_trips_and_is_a_monday() {
        let t = parse_datetime("2024-06-03T08:00").unwrap();
        assert_eq!(format_datetime(t), "2024-06-03 08:00");
        assert_eq!(weekday_name(weekday(t)), "Mon");
        assert_eq!(hour_of_day(t), 8);
        assert_eq!(parse_datetime("2024-06-03 08:00:00Z"), Ok(t));
    }

    #[test]
    fn impossible_dates_are_refused() {
        for bad in [
            "2024-02-30T00:00",
            "2024-06-03",
            "2024-13-01T00:00",
            "yesterday",
            "2024-06-03T25:00",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }
}
