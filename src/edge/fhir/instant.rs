//! FHIR instants and dateTimes to and from the broker's protobuf timestamps.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses a FHIR dateTime that carries a time and a zone (as a collection time must).
pub fn parse_instant(raw: &str) -> Result<prost_types::Timestamp, String> {
    let t = OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        format!("{raw:?} is not a dateTime with a time and zone, such as 2024-06-03T09:40:00Z")
    })?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    })
}

/// Milliseconds since the epoch.
pub fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

/// Formats a timestamp as a FHIR instant in UTC, to the millisecond.
pub fn format_instant(t: &prost_types::Timestamp) -> String {
    let ns = i128::from(millis(t)) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_to_the_millisecond() {
        let t = parse_instant("2024-06-03T10:40:00.250+01:00").unwrap();
        assert_eq!(format_instant(&t), "2024-06-03T09:40:00.250Z");
        assert!(parse_instant("2024-06-03").is_err());
        assert!(parse_instant("2024-06-03T09:40:00").is_err());
    }
}
