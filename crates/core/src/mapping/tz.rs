//! Time zones: TZID local times to UTC and back, with the tz database that
//! calcard bundles (chrono-tz), and the rules of an item's own VTIMEZONE
//! when its TZID names no zone the database knows (Outlook's "Customized Time
//! Zone", ...). Also writes VTIMEZONE components (calcard generates them from
//! the tz database).

use std::collections::HashMap;
use std::str::FromStr;

use calcard::common::timezone::Tz;
use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType as CT, ICalendarProperty as P,
    ICalendarValue as V, ICalendarWeekday,
};
use chrono::{
    Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Weekday,
};

use super::icalendar::Comp;

/// A zone local times are in.
#[derive(Debug, Clone)]
pub(crate) enum Zone {
    /// In the tz database; the IANA name when there is one.
    Known(Tz, Option<String>),
    /// Only the item's VTIMEZONE rules.
    Custom(Vec<Observance>),
}

impl Zone {
    pub fn utc() -> Zone {
        Zone::Known(Tz::UTC, Some("UTC".into()))
    }

    pub fn is_utc(&self) -> bool {
        matches!(self, Zone::Known(tz, _) if tz.is_utc())
    }

    /// The IANA name for the record's `time_zone`.
    pub fn name(&self) -> Option<&str> {
        match self {
            Zone::Known(_, name) => name.as_deref(),
            Zone::Custom(_) => None,
        }
    }

    /// A local time to UTC. An ambiguous time (the repeated hour when clocks
    /// go back) is the first one; a time in the gap when clocks go forward is
    /// read with the offset before the gap (RFC 5545 3.3.5).
    pub fn to_utc(&self, local: NaiveDateTime) -> NaiveDateTime {
        match self {
            Zone::Known(tz, _) => match tz.offset_from_local_datetime(&local) {
                LocalResult::Single(o) | LocalResult::Ambiguous(o, _) => {
                    shift(local, -o.fix().local_minus_utc())
                }
                LocalResult::None => {
                    let before = local.checked_sub_signed(Duration::days(1)).unwrap_or(local);
                    let o = tz.offset_from_utc_datetime(&before);
                    shift(local, -o.fix().local_minus_utc())
                }
            },
            Zone::Custom(observances) => shift(local, -offset_at_local(observances, local)),
        }
    }

    /// A UTC time to local time.
    pub fn to_local(&self, utc: NaiveDateTime) -> NaiveDateTime {
        match self {
            Zone::Known(tz, _) => shift(
                utc,
                tz.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
            ),
            Zone::Custom(observances) => {
                // The offset in force at `utc`: try it as a local time first.
                let guess = shift(utc, offset_at_local(observances, utc));
                shift(utc, offset_at_local(observances, guess))
            }
        }
    }

    /// Whether a TZID local time can name `utc` exactly: not the second of
    /// two identical local times, and a year iCalendar can write.
    pub fn can_express(&self, utc: NaiveDateTime) -> bool {
        let local = self.to_local(utc);
        (0..=9999).contains(&local.year()) && self.to_utc(local) == utc
    }

    /// Local midnight of `date`, in UTC.
    pub fn midnight(&self, date: NaiveDate) -> NaiveDateTime {
        self.to_utc(date.and_time(NaiveTime::MIN))
    }
}

fn shift(t: NaiveDateTime, seconds: i32) -> NaiveDateTime {
    t.checked_add_signed(Duration::seconds(seconds.into()))
        .unwrap_or(t)
}

/// A zone the tz database knows under exactly this name (what a record's
/// `time_zone` must be to be written as a TZID).
pub(crate) fn known(name: &str) -> Option<Zone> {
    match Tz::from_str(name) {
        Ok(Tz::Tz(inner)) if inner.name() == name => {
            Some(Zone::Known(Tz::Tz(inner), Some(name.to_string())))
        }
        _ => None,
    }
}

/// Resolves a TZID the way calendar clients write them: IANA names,
/// Windows names, `/mozilla.org/.../Europe/Berlin`, `(UTC+01:00) ...`.
fn resolve(tzid: &str) -> Option<Zone> {
    if let Some(zone) = known(tzid) {
        return Some(zone);
    }
    let tz = Tz::from_str(tzid).ok()?;
    Some(Zone::Known(tz, iana_name(tz)))
}

fn iana_name(tz: Tz) -> Option<String> {
    match tz {
        Tz::Tz(inner) => Some(inner.name().to_string()),
        Tz::Fixed(offset) => {
            let secs = offset.local_minus_utc();
            match secs {
                0 => Some("UTC".into()),
                // Etc/GMT-1 is UTC+1 (POSIX signs); whole hours only.
                s if s % 3600 == 0 && (-12..=14).contains(&(s / 3600)) => {
                    Some(format!("Etc/GMT{:+}", -s / 3600))
                }
                _ => None,
            }
        }
        Tz::Floating => None,
    }
}

/// The zones of one item: its VTIMEZONEs by TZID, then the tz database.
#[derive(Debug, Default)]
pub(crate) struct Zones {
    by_tzid: HashMap<String, Zone>,
}

impl Zones {
    pub fn from_vtimezones<'a>(components: impl Iterator<Item = &'a Comp>) -> Zones {
        let mut by_tzid = HashMap::new();
        for comp in components.filter(|c| c.kind == CT::VTimezone) {
            let Some(tzid) = comp.text(&P::Tzid) else {
                continue;
            };
            let calcard_comp = ICalendarComponent {
                component_type: CT::VTimezone,
                entries: comp.entries.clone(),
                component_ids: Vec::new(),
            };
            let zone = match calcard_comp.timezone() {
                Some((_, tz)) if !tz.is_floating() => {
                    let name = known(&tzid)
                        .and_then(|z| z.name().map(str::to_string))
                        .or_else(|| iana_name(tz));
                    Some(Zone::Known(tz, name))
                }
                _ => {
                    let observances = observances(comp);
                    (!observances.is_empty()).then_some(Zone::Custom(observances))
                }
            };
            if let Some(zone) = zone {
                by_tzid.entry(tzid).or_insert(zone);
            }
        }
        Zones { by_tzid }
    }

    pub fn get(&self, tzid: &str) -> Option<Zone> {
        self.by_tzid.get(tzid).cloned().or_else(|| resolve(tzid))
    }
}

/// One STANDARD or DAYLIGHT part of a VTIMEZONE.
#[derive(Debug, Clone)]
pub(crate) struct Observance {
    start: NaiveDateTime,
    from: i32,
    to: i32,
    yearly: Option<Yearly>,
}

/// `FREQ=YEARLY;BYMONTH=m;BYDAY=nWD[;UNTIL=...]`, the rule of nearly every
/// VTIMEZONE.
#[derive(Debug, Clone)]
struct Yearly {
    month: u32,
    nth: i16,
    weekday: Weekday,
    until: Option<NaiveDateTime>,
}

fn observances(comp: &Comp) -> Vec<Observance> {
    comp.children
        .iter()
        .filter(|c| matches!(c.kind, CT::Standard | CT::Daylight))
        .filter_map(|c| {
            let start = c
                .first(&P::Dtstart)?
                .values
                .first()?
                .as_partial_date_time()?;
            let start = naive(start)?;
            let offset = |p: &P| {
                c.first(p)?
                    .values
                    .first()?
                    .as_partial_date_time()
                    .and_then(utc_offset)
            };
            let to = offset(&P::Tzoffsetto)?;
            let from = offset(&P::Tzoffsetfrom).unwrap_or(to);
            let yearly = c.first(&P::Rrule).and_then(|e| match e.values.first() {
                Some(V::RecurrenceRule(r))
                    if r.bymonth.len() == 1
                        && r.byday.len() == 1
                        && r.freq == calcard::icalendar::ICalendarFrequency::Yearly =>
                {
                    Some(Yearly {
                        month: r.bymonth[0].month().into(),
                        nth: r.byday[0].ordwk.unwrap_or(1),
                        weekday: weekday(r.byday[0].weekday),
                        until: r.until.as_ref().and_then(naive),
                    })
                }
                _ => None,
            });
            Some(Observance {
                start,
                from,
                to,
                yearly,
            })
        })
        .collect()
}

/// The UTC offset (seconds) in force at a local time: the latest onset at or
/// before it wins; before all of them, the first one's "from" offset.
fn offset_at_local(observances: &[Observance], t: NaiveDateTime) -> i32 {
    let mut best: Option<(NaiveDateTime, i32)> = None;
    for o in observances {
        let mut consider = |onset: NaiveDateTime| {
            if onset <= t && best.is_none_or(|(b, _)| onset > b) {
                best = Some((onset, o.to));
            }
        };
        consider(o.start);
        if let Some(rule) = &o.yearly {
            for year in [t.year() - 1, t.year()] {
                if year <= o.start.year() {
                    continue;
                }
                let Some(day) = nth_weekday(year, rule.month, rule.nth, rule.weekday) else {
                    continue;
                };
                let onset = day.and_time(o.start.time());
                if rule.until.is_none_or(|u| onset <= u) {
                    consider(onset);
                }
            }
        }
    }
    best.map(|(_, offset)| offset)
        .or_else(|| observances.iter().min_by_key(|o| o.start).map(|o| o.from))
        .unwrap_or(0)
}

fn nth_weekday(year: i32, month: u32, nth: i16, weekday: Weekday) -> Option<NaiveDate> {
    match nth {
        1..=5 => NaiveDate::from_weekday_of_month_opt(year, month, weekday, nth as u8),
        -5..=-1 => {
            let next = if month == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(year, month + 1, 1)
            }?;
            let mut day = next.pred_opt()?;
            while day.weekday() != weekday {
                day = day.pred_opt()?;
            }
            let day = day.checked_sub_signed(Duration::weeks(i64::from(-nth - 1)))?;
            (day.month() == month).then_some(day)
        }
        _ => None,
    }
}

fn weekday(w: ICalendarWeekday) -> Weekday {
    match w {
        ICalendarWeekday::Sunday => Weekday::Sun,
        ICalendarWeekday::Monday => Weekday::Mon,
        ICalendarWeekday::Tuesday => Weekday::Tue,
        ICalendarWeekday::Wednesday => Weekday::Wed,
        ICalendarWeekday::Thursday => Weekday::Thu,
        ICalendarWeekday::Friday => Weekday::Fri,
        ICalendarWeekday::Saturday => Weekday::Sat,
    }
}

/// The date and time of a parsed value, ignoring any zone.
pub(crate) fn naive(p: &PartialDateTime) -> Option<NaiveDateTime> {
    let date = NaiveDate::from_ymd_opt(p.year?.into(), p.month?.into(), p.day?.into())?;
    // A leap second (60) is read as 59.
    let time = NaiveTime::from_hms_opt(
        p.hour.unwrap_or(0).into(),
        p.minute.unwrap_or(0).into(),
        p.second.unwrap_or(0).min(59).into(),
    )?;
    Some(date.and_time(time))
}

/// The UTC offset of a value that carries one (`Z`, `+0100`), in seconds.
pub(crate) fn utc_offset(p: &PartialDateTime) -> Option<i32> {
    let secs = i32::from(p.tz_hour?) * 3600 + i32::from(p.tz_minute.unwrap_or(0)) * 60;
    Some(if p.tz_minus { -secs } else { secs })
}

/// A VTIMEZONE for `tzid` covering `from`..`to` (Unix seconds).
pub(crate) fn vtimezone(tzid: &str, from: i64, to: i64) -> Option<Comp> {
    let mut cal = ICalendar {
        components: vec![ICalendarComponent::new(CT::VCalendar)],
    };
    cal.add_timezone(tzid, from, to)?;
    Comp::from_calendar(&cal)?.children.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn berlin_gaps_and_overlaps() {
        let berlin = known("Europe/Berlin").unwrap();
        assert_eq!(
            berlin.to_utc(at("2026-11-25 10:00")),
            at("2026-11-25 09:00")
        );
        assert_eq!(
            berlin.to_utc(at("2026-07-01 10:00")),
            at("2026-07-01 08:00")
        );
        // 02:30 does not exist on 29 March 2026: read with the offset before (+1).
        assert_eq!(
            berlin.to_utc(at("2026-03-29 02:30")),
            at("2026-03-29 01:30")
        );
        // 02:30 happens twice on 25 October 2026: the first (+2).
        assert_eq!(
            berlin.to_utc(at("2026-10-25 02:30")),
            at("2026-10-25 00:30")
        );
        assert!(berlin.can_express(at("2026-10-25 00:30")));
        assert!(!berlin.can_express(at("2026-10-25 01:30")));
        assert!(known("europe/berlin").is_none());
        assert!(known("Mars/Base").is_none());
    }

    #[test]
    fn windows_names_resolve() {
        let zone = resolve("W. Europe Standard Time").unwrap();
        assert_eq!(zone.to_utc(at("2026-11-25 10:00")), at("2026-11-25 09:00"));
        assert!(zone.name().is_some());
    }

    #[test]
    fn last_and_nth_weekdays() {
        let d = nth_weekday(2026, 3, -1, Weekday::Sun).unwrap();
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 3, 29).unwrap());
        let d = nth_weekday(2026, 11, 1, Weekday::Sun).unwrap();
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        assert!(nth_weekday(2026, 2, 5, Weekday::Sun).is_none());
    }
}
