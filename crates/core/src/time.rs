//! Times as the API writes them: RFC 3339, UTC.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// Parses an RFC 3339 date-time (any offset) and returns it in UTC.
pub fn parse_datetime(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.to_offset(UtcOffset::UTC))
        .map_err(|_| {
            format!(
                "'{}' is not an RFC 3339 date-time such as 2026-11-25T09:30:00Z",
                crate::field::shorten(s)
            )
        })
}

pub fn parse_date(s: &str) -> Result<Date, String> {
    Date::parse(s, format_description!("[year]-[month]-[day]")).map_err(|_| {
        format!(
            "'{}' is not a date such as 2026-11-25",
            crate::field::shorten(s)
        )
    })
}

/// RFC 3339 in UTC to the second (`2026-11-25T09:00:00Z`). Fixed width, so
/// that text order is time order in both databases (filters compare stored
/// date-times as text); calendar data does not need sub-second precision.
pub fn format_datetime(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .expect("UTC times always format")
}

/// Fixed-width UTC time with microseconds, for `created_at`/`modified_at`:
/// fixed width makes text order equal time order in both databases.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .expect("UTC times always format")
}

pub fn now_timestamp() -> String {
    format_timestamp(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_normalize_to_utc() {
        let t = parse_datetime("2026-11-25T10:00:00+01:00").unwrap();
        assert_eq!(format_datetime(t), "2026-11-25T09:00:00Z");
        assert!(parse_datetime("2026-11-25 10:00").is_err());
        assert!(parse_datetime("yesterday")
            .unwrap_err()
            .contains("RFC 3339"));
    }

    #[test]
    fn datetimes_drop_fractions_and_keep_fixed_width() {
        let a = format_datetime(parse_datetime("2026-01-01T00:00:00.75Z").unwrap());
        assert_eq!(a, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn timestamps_are_fixed_width() {
        let a = format_timestamp(parse_datetime("2026-01-01T00:00:00Z").unwrap());
        let b = format_timestamp(parse_datetime("2026-01-01T00:00:00.5Z").unwrap());
        assert_eq!(a.len(), b.len());
        assert!(a < b);
        assert_eq!(a, "2026-01-01T00:00:00.000000Z");
    }

    #[test]
    fn dates() {
        assert!(parse_date("2026-02-28").is_ok());
        assert!(parse_date("2026-02-30").is_err());
    }
}
