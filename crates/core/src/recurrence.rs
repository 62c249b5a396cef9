//! R-E2: the instances of a recurring series. The CRM keeps the series and
//! its exceptions as records; the instances for a window (by default the
//! next 12 months) are computed from the RRULE on demand rather than stored,
//! so that editing the series never leaves stale copies behind. The
//! expansion is calcard's (the series is rendered to iCalendar by
//! `mapping`, time zones and DST included).

use calcard::icalendar::dates::TimeOrDelta;
use calcard::{Entry, Parser};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::mapping::{render_item, MailboxItem, RenderOptions};
use crate::record::Record;
use crate::time::{format_datetime, parse_datetime};

/// The most occurrences expanded from a series' start (a guard against
/// rules such as FREQ=MINUTELY over years).
pub const MAX_OCCURRENCES: usize = 20_000;

/// One instance of a series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// The original start of the occurrence (its RECURRENCE-ID), UTC.
    pub recurrence_id: String,
    pub start: String,
    pub end: String,
    pub state: String,
    /// The exception record, when this instance was modified or cancelled.
    pub exception_id: Option<Uuid>,
}

/// The instances of `series` that start in `[from, to)`, plus every
/// exception whatever its date; `truncated` when the rule produced more
/// occurrences than [`MAX_OCCURRENCES`] before `to`.
pub fn instances(
    series: &Record,
    exceptions: &[Record],
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<(Vec<Instance>, bool), String> {
    if series.fields.get("recurrence").is_none_or(Value::is_null) {
        return Err("this appointment is not a recurring series".into());
    }
    let item = MailboxItem::from_records(series, &[], series.id.to_string(), false);
    let bytes = render_item(&item, &RenderOptions::new(OffsetDateTime::UNIX_EPOCH))
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let Entry::ICalendar(cal) = Parser::new(&text).entry() else {
        return Err("the series cannot be expressed in iCalendar".into());
    };
    let expanded = cal.expand_dates(calcard::common::timezone::Tz::UTC, MAX_OCCURRENCES);
    if let Some(e) = expanded.errors.first() {
        return Err(format!(
            "the recurrence rule cannot be expanded: {:?}",
            e.error
        ));
    }
    // Cut short only if the rule still had occurrences before `to`.
    let last_start = expanded
        .events
        .iter()
        .map(|e| e.start.timestamp())
        .max()
        .unwrap_or(i64::MIN);
    let truncated = expanded.events.len() >= MAX_OCCURRENCES && last_start < to.unix_timestamp();
    let utc = |ts: i64| {
        OffsetDateTime::from_unix_timestamp(ts)
            .map(format_datetime)
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for ev in &expanded.events {
        let start = ev.start.timestamp();
        let end = match &ev.end {
            TimeOrDelta::Time(t) => t.timestamp(),
            TimeOrDelta::Delta(d) => start + d.num_seconds(),
        };
        let start_t = OffsetDateTime::from_unix_timestamp(start).map_err(|e| e.to_string())?;
        if start_t < from || start_t >= to {
            continue;
        }
        out.push(Instance {
            recurrence_id: utc(start),
            start: utc(start),
            end: utc(end),
            state: series.state.clone(),
            exception_id: None,
        });
    }
    // Exceptions replace their occurrence, or stand on their own when the
    // occurrence is outside the window (or was moved out of the rule).
    for e in exceptions {
        let Some(rid) = e.fields.get("recurrence_id").and_then(Value::as_str) else {
            continue;
        };
        let field = |k: &str| e.fields.get(k).and_then(Value::as_str).map(str::to_string);
        let instance = Instance {
            recurrence_id: rid.to_string(),
            start: field("start").unwrap_or_else(|| rid.to_string()),
            end: field("end").unwrap_or_else(|| rid.to_string()),
            state: e.state.clone(),
            exception_id: Some(e.id),
        };
        match out.iter_mut().find(|i| i.recurrence_id == rid) {
            Some(slot) => *slot = instance,
            None => out.push(instance),
        }
    }
    out.sort_by(|a, b| a.start.cmp(&b.start));
    Ok((out, truncated))
}

/// The end of a series' last occurrence, when its rule ends (UNTIL or
/// COUNT); `None` for a series without end.
pub fn series_end(series: &Record) -> Option<OffsetDateTime> {
    let rrule = series.fields.get("recurrence")?.get("rrule")?.as_str()?;
    if !rrule.contains("COUNT=") && !rrule.contains("UNTIL=") {
        return None;
    }
    let (all, truncated) = instances(
        series,
        &[],
        OffsetDateTime::UNIX_EPOCH - time::Duration::days(365 * 1000),
        OffsetDateTime::from_unix_timestamp(253_402_300_799).ok()?,
    )
    .ok()?;
    if truncated {
        return None;
    }
    all.iter().filter_map(|i| parse_datetime(&i.end).ok()).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::EntitySet;
    use serde_json::json;

    fn series(fields: Value) -> Record {
        Record {
            id: Uuid::new_v4(),
            set: EntitySet::Appointments,
            version: 1,
            owner_id: Uuid::nil(),
            state: "scheduled".into(),
            created_at: String::new(),
            modified_at: String::new(),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    fn t(s: &str) -> OffsetDateTime {
        parse_datetime(s).unwrap()
    }

    #[test]
    fn r_e2_weekly_instances_in_a_window_keep_local_time_across_dst() {
        // Mondays 09:00 Berlin: 08:00Z in winter, 07:00Z in summer.
        let s = series(
            json!({"subject": "Standup", "start": "2026-03-02T08:00:00Z", "end": "2026-03-02T08:30:00Z",
            "time_zone": "Europe/Berlin", "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=MO", "exdates": ["2026-03-16T08:00:00Z"]}}),
        );
        let (all, truncated) = instances(
            &s,
            &[],
            t("2026-03-01T00:00:00Z"),
            t("2026-04-07T00:00:00Z"),
        )
        .unwrap();
        assert!(!truncated);
        let starts: Vec<&str> = all.iter().map(|i| i.start.as_str()).collect();
        assert_eq!(
            starts,
            vec![
                "2026-03-02T08:00:00Z",
                "2026-03-09T08:00:00Z",
                "2026-03-23T08:00:00Z",
                "2026-03-30T07:00:00Z",
                "2026-04-06T07:00:00Z"
            ],
            "EXDATE removes the 16th; the clock change on the 29th keeps 09:00 local"
        );
        assert_eq!(all[0].end, "2026-03-02T08:30:00Z");
    }

    #[test]
    fn r_e2_exceptions_replace_their_occurrence_whatever_their_date() {
        let s = series(
            json!({"subject": "Standup", "start": "2026-01-05T09:00:00Z", "end": "2026-01-05T09:30:00Z",
            "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=MO"}}),
        );
        let moved = series(
            json!({"subject": "Moved", "start": "2026-01-13T10:00:00Z", "end": "2026-01-13T10:30:00Z",
            "series_id": s.id, "recurrence_id": "2026-01-12T09:00:00Z"}),
        );
        let mut old = series(
            json!({"subject": "Cancelled long ago", "start": "2026-01-05T09:00:00Z", "end": "2026-01-05T09:30:00Z",
            "series_id": s.id, "recurrence_id": "2026-01-05T09:00:00Z"}),
        );
        old.state = "canceled".into();
        let (all, _) = instances(
            &s,
            &[moved.clone(), old.clone()],
            t("2026-01-10T00:00:00Z"),
            t("2026-01-27T00:00:00Z"),
        )
        .unwrap();
        let view: Vec<(&str, &str, Option<Uuid>)> = all
            .iter()
            .map(|i| (i.recurrence_id.as_str(), i.state.as_str(), i.exception_id))
            .collect();
        assert_eq!(
            view,
            vec![
                ("2026-01-05T09:00:00Z", "canceled", Some(old.id)),
                ("2026-01-12T09:00:00Z", "scheduled", Some(moved.id)),
                ("2026-01-19T09:00:00Z", "scheduled", None),
                ("2026-01-26T09:00:00Z", "scheduled", None),
            ]
        );
        assert_eq!(all[1].start, "2026-01-13T10:00:00Z");
    }

    #[test]
    fn r_e1_a_series_ends_with_its_count_or_until() {
        let counted = series(
            json!({"subject": "x", "start": "2026-01-01T09:00:00Z", "end": "2026-01-01T10:00:00Z",
            "recurrence": {"rrule": "FREQ=DAILY;COUNT=3"}}),
        );
        assert_eq!(series_end(&counted), Some(t("2026-01-03T10:00:00Z")));
        let endless = series(
            json!({"subject": "x", "start": "2026-01-01T09:00:00Z", "end": "2026-01-01T10:00:00Z",
            "recurrence": {"rrule": "FREQ=DAILY"}}),
        );
        assert_eq!(series_end(&endless), None);
        let plain = series(
            json!({"subject": "x", "start": "2026-01-01T09:00:00Z", "end": "2026-01-01T10:00:00Z"}),
        );
        assert!(instances(
            &plain,
            &[],
            t("2026-01-01T00:00:00Z"),
            t("2027-01-01T00:00:00Z")
        )
        .is_err());
    }
}
