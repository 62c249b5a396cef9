//! Appointments and service appointments ↔ VEVENT (a series and its
//! exceptions in one VCALENDAR), tasks, phone calls, letters, faxes ↔ VTODO.

use std::collections::BTreeSet;

use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType as CT, ICalendarEntry,
    ICalendarParameter, ICalendarParameterName as PN, ICalendarParameterValue as PV,
    ICalendarProperty as P, ICalendarValue as V, ICalendarValueType, Uri,
};
use calcard::{Entry, Parser};
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::scan::{self, Scanned};
use super::tz::{self, Zone, Zones};
use super::{
    fill_required, put_field, Exception, ItemKind, MailboxItem, MappingError, RenderOptions,
    Status, PRODID, TRACKED_CATEGORY, X_CRM_ENTITY, X_CRM_ID, X_CRM_REGARDING, X_CRM_RESOLVED,
    X_CRM_SET, X_CRM_TIME_ZONE,
};
use crate::entity::EntitySet;

/// One component with its sub-components (calcard keeps them in a flat list).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Comp {
    pub kind: CT,
    pub entries: Vec<ICalendarEntry>,
    pub children: Vec<Comp>,
    /// calcard's component id in the parsed input (for line numbers).
    pub id: Option<u32>,
}

const MAX_TREE_DEPTH: usize = 32;

impl Comp {
    pub fn new(kind: CT) -> Comp {
        Comp {
            kind,
            entries: Vec::new(),
            children: Vec::new(),
            id: None,
        }
    }

    pub fn from_calendar(cal: &ICalendar) -> Option<Comp> {
        Self::build(cal, 0, 0)
    }

    fn build(cal: &ICalendar, id: u32, depth: usize) -> Option<Comp> {
        let c = cal.components.get(id as usize)?;
        if depth > MAX_TREE_DEPTH {
            return None;
        }
        Some(Comp {
            kind: c.component_type.clone(),
            entries: c.entries.clone(),
            // Children always come after their parent; this also rules out cycles.
            children: c
                .component_ids
                .iter()
                .filter(|&&child| child > id)
                .filter_map(|&child| Self::build(cal, child, depth + 1))
                .collect(),
            id: Some(id),
        })
    }

    fn to_calendar(&self) -> ICalendar {
        fn push(c: &Comp, out: &mut Vec<ICalendarComponent>) -> u32 {
            let id = out.len() as u32;
            out.push(ICalendarComponent {
                component_type: c.kind.clone(),
                entries: c.entries.clone(),
                component_ids: Vec::new(),
            });
            let ids: Vec<u32> = c.children.iter().map(|child| push(child, out)).collect();
            out[id as usize].component_ids = ids;
            id
        }
        let mut components = Vec::new();
        push(self, &mut components);
        ICalendar { components }
    }

    pub fn first(&self, p: &P) -> Option<&ICalendarEntry> {
        self.entries.iter().find(|e| &e.name == p)
    }

    fn all<'a>(&'a self, p: &'a P) -> impl Iterator<Item = &'a ICalendarEntry> + 'a {
        self.entries.iter().filter(move |e| &e.name == p)
    }

    /// The first `p`'s value as text.
    pub fn text(&self, p: &P) -> Option<String> {
        let entry = self.first(p)?;
        let parts: Vec<&str> = entry.values.iter().filter_map(|v| v.as_text()).collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }

    fn remove(&mut self, p: &P) {
        self.entries.retain(|e| &e.name != p);
    }

    /// Puts `entry` in place of the first `p` (other `p`s go), or at the end.
    fn put(&mut self, p: &P, entry: Option<ICalendarEntry>) {
        let Some(entry) = entry else {
            self.remove(p);
            return;
        };
        match self.entries.iter().position(|e| &e.name == p) {
            Some(i) => {
                self.entries[i] = entry;
                let mut seen = false;
                self.entries.retain(|e| {
                    if &e.name != p {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.entries.push(entry),
        }
    }

    /// A text property: a changed value keeps the property's parameters
    /// (LANGUAGE, ...) but an ALTREP, which pointed to the old text.
    fn put_text(&mut self, p: &P, value: Option<&str>) {
        let Some(value) = value else {
            self.remove(p);
            return;
        };
        let entry = match self.first(p) {
            Some(old) => ICalendarEntry {
                name: p.clone(),
                params: old
                    .params
                    .iter()
                    .filter(|x| x.name != PN::Altrep)
                    .cloned()
                    .collect(),
                values: vec![V::Text(value.to_string())],
            },
            None => entry(p.clone(), vec![], V::Text(value.to_string())),
        };
        self.put(p, Some(entry));
    }
}

fn entry(name: P, params: Vec<ICalendarParameter>, value: V) -> ICalendarEntry {
    ICalendarEntry {
        name,
        params,
        values: vec![value],
    }
}

fn param(name: PN, value: &str) -> ICalendarParameter {
    ICalendarParameter {
        name,
        value: PV::Text(value.to_string()),
    }
}

fn x(name: &str) -> P {
    P::Other(name.to_string())
}

fn x_param(name: &str) -> PN {
    PN::Other(name.to_string())
}

fn param_text<'a>(e: &'a ICalendarEntry, name: &PN) -> Option<&'a str> {
    e.parameters(name).find_map(|v| v.as_text())
}

// ---------------------------------------------------------------- times

/// A DTSTART/DTEND/DUE/EXDATE/RECURRENCE-ID value as written.
#[derive(Debug, Clone, PartialEq)]
enum When {
    Date(NaiveDate),
    Utc(NaiveDateTime),
    Local(NaiveDateTime, String),
    Floating(NaiveDateTime),
}

fn when(e: &ICalendarEntry, value: &V) -> Option<When> {
    let p = value.as_partial_date_time()?;
    let is_date = p.hour.is_none()
        || param_text(e, &PN::Value).is_some_and(|v| v.eq_ignore_ascii_case("DATE"));
    let n = tz::naive(p)?;
    if is_date {
        return Some(When::Date(n.date()));
    }
    if let Some(offset) = tz::utc_offset(p) {
        return n
            .checked_sub_signed(Duration::seconds(offset.into()))
            .map(When::Utc);
    }
    match e.tz_id() {
        Some(tzid) => Some(When::Local(n, tzid.to_string())),
        None => Some(When::Floating(n)),
    }
}

/// How the date-times of one VEVENT are written.
#[derive(Debug, Clone)]
enum Form {
    /// `VALUE=DATE`, days in this zone.
    AllDay(Zone),
    /// `TZID=<name>` local times (UTC for a time the zone cannot name).
    Tzid(String, Zone),
    Utc,
}

pub(crate) fn fmt_utc(t: NaiveDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub(crate) fn parse_utc(s: &str) -> Option<NaiveDateTime> {
    let t = crate::time::parse_datetime(s).ok()?;
    Some(chrono::DateTime::from_timestamp(t.unix_timestamp(), 0)?.naive_utc())
}

fn pdt(t: NaiveDateTime, utc: bool) -> PartialDateTime {
    PartialDateTime {
        year: u16::try_from(t.year()).ok(),
        month: Some(t.month() as u8),
        day: Some(t.day() as u8),
        hour: Some(t.hour() as u8),
        minute: Some(t.minute() as u8),
        second: Some(t.second() as u8),
        tz_hour: utc.then_some(0),
        tz_minute: utc.then_some(0),
        tz_minus: false,
    }
}

fn pdt_date(d: NaiveDate) -> PartialDateTime {
    PartialDateTime {
        year: u16::try_from(d.year()).ok(),
        month: Some(d.month() as u8),
        day: Some(d.day() as u8),
        ..PartialDateTime::default()
    }
}

fn utc_value(t: NaiveDateTime) -> V {
    V::PartialDateTime(Box::new(pdt(t, true)))
}

fn date_param() -> ICalendarParameter {
    ICalendarParameter {
        name: PN::Value,
        value: PV::Value(ICalendarValueType::Date),
    }
}

/// The local date an all-day end falls on: a time after midnight counts
/// its day in (the end is exclusive).
fn end_date(zone: &Zone, end: NaiveDateTime) -> NaiveDate {
    let date = zone.to_local(end).date();
    // Compared with the day's midnight as [`Zone::midnight`] has it: where
    // clocks skip midnight, the day starts at 01:00.
    if zone.midnight(date) == end {
        date
    } else {
        date.succ_opt().unwrap_or(date)
    }
}

/// How one date-time is written in `form`: (parameters, value, group key
/// for EXDATE lines).
fn write_when(form: &Form, t: NaiveDateTime, ceil: bool) -> (Vec<ICalendarParameter>, V, u8) {
    match form {
        Form::AllDay(zone) => {
            let date = if ceil {
                end_date(zone, t)
            } else {
                zone.to_local(t).date()
            };
            (
                vec![date_param()],
                V::PartialDateTime(Box::new(pdt_date(date))),
                0,
            )
        }
        Form::Tzid(name, zone) if zone.can_express(t) => (
            vec![param(PN::Tzid, name)],
            V::PartialDateTime(Box::new(pdt(zone.to_local(t), false))),
            1,
        ),
        _ => (vec![], utc_value(t), 2),
    }
}

fn form_of(kind: ItemKind, fields: &Map<String, Value>) -> Form {
    if kind == ItemKind::Todo {
        return Form::Utc;
    }
    if let Some(zone) = all_day_zone(fields) {
        return Form::AllDay(zone);
    }
    let name = fields.get("time_zone").and_then(Value::as_str);
    match name.and_then(|n| Some((n, tz::known(n)?))) {
        // UTC needs no TZID: `Z` times and X-CRM-TIME-ZONE say it.
        Some((name, zone))
            if !zone.is_utc()
                && ["start", "end"].iter().all(|f| {
                    fields
                        .get(*f)
                        .and_then(Value::as_str)
                        .and_then(parse_utc)
                        .is_none_or(|t| zone.can_express(t))
                }) =>
        {
            Form::Tzid(name.to_string(), zone)
        }
        _ => Form::Utc,
    }
}

/// The zone of an all-day event's days (`time_zone`, else UTC), or `None`
/// for an event that is not all-day.
pub(crate) fn all_day_zone(fields: &Map<String, Value>) -> Option<Zone> {
    if fields.get("all_day") != Some(&Value::Bool(true)) {
        return None;
    }
    Some(
        fields
            .get("time_zone")
            .and_then(Value::as_str)
            .and_then(tz::known)
            .unwrap_or_else(Zone::utc),
    )
}

/// A record's `recurrence_id` as the item gives it back: UTC to the second,
/// the local midnight of its day in an all-day series.
pub(crate) fn canonical_recurrence_id(rid: &str, all_day: Option<&Zone>) -> Option<String> {
    let t = parse_utc(rid)?;
    Some(fmt_utc(match all_day {
        Some(zone) => zone.midnight(zone.to_local(t).date()),
        None => t,
    }))
}

/// [`super::project_fields`] for events: an all-day event's times on the
/// midnights of its days, its exdates on the midnights of theirs.
pub(crate) fn snap_all_day(fields: &mut Map<String, Value>) {
    let Some(zone) = all_day_zone(fields) else {
        return;
    };
    let start = fields
        .get("start")
        .and_then(Value::as_str)
        .and_then(parse_utc);
    let end = fields
        .get("end")
        .and_then(Value::as_str)
        .and_then(parse_utc);
    let start_date = start.map(|s| zone.to_local(s).date());
    if let Some(d) = start_date {
        fields.insert("start".into(), fmt_utc(zone.midnight(d)).into());
    }
    if let Some(e) = end {
        let d = end_date(&zone, e).max(start_date.unwrap_or(NaiveDate::MIN));
        fields.insert("end".into(), fmt_utc(zone.midnight(d)).into());
    }
    if let Some(Value::Array(exdates)) = fields
        .get_mut("recurrence")
        .and_then(|r| r.get_mut("exdates"))
    {
        for d in exdates.iter_mut() {
            if let Some(t) = d.as_str().and_then(parse_utc) {
                *d = fmt_utc(zone.midnight(zone.to_local(t).date())).into();
            }
        }
    }
}

// ---------------------------------------------------------------- recurrence

/// Whether an RRULE can be written as it is: no control characters, and a
/// rule calcard reads.
pub(crate) fn recurrence_is_writable(value: &Value) -> bool {
    value
        .get("rrule")
        .and_then(Value::as_str)
        .is_some_and(|r| rrule_entry(r).is_some())
}

fn rrule_entry(rrule: &str) -> Option<ICalendarEntry> {
    let rrule = rrule.strip_prefix("RRULE:").unwrap_or(rrule);
    if rrule.is_empty() || rrule.chars().any(|c| c.is_control()) {
        return None;
    }
    let probe = format!(
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nRRULE:{rrule}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    );
    let Entry::ICalendar(cal) = Parser::new(&probe).entry() else {
        return None;
    };
    let parsed = cal.components.get(1)?.entries.first()?;
    matches!(parsed.values.first(), Some(V::RecurrenceRule(_)))
        .then(|| entry(P::Rrule, vec![], V::Text(rrule.to_string())))
}

// ---------------------------------------------------------------- reading

/// What one VEVENT or VTODO reads as.
#[derive(Debug, Clone, Default)]
struct Read {
    fields: Map<String, Value>,
    status: Status,
    crm_id: Option<Uuid>,
    tracked: bool,
    recurrence_id: Option<String>,
}

struct Ctx<'a> {
    scanned: &'a Scanned,
    zones: Zones,
    problems: Vec<String>,
}

impl Ctx<'_> {
    fn at(&self, comp: &Comp, prop: &str) -> String {
        self.scanned.at(comp.id, prop)
    }

    /// A value in UTC, and the IANA name of its TZID zone.
    fn utc(&mut self, w: &When, days: &Zone, at: &str) -> (NaiveDateTime, Option<String>) {
        match w {
            When::Date(d) => (days.midnight(*d), None),
            When::Utc(t) => (*t, None),
            When::Local(t, tzid) => match self.zones.get(tzid) {
                Some(zone) => {
                    if zone.name().is_none() {
                        self.problems.push(format!(
                            "{at}: TZID '{tzid}' is not in the tz database; converted with the item's VTIMEZONE"
                        ));
                    }
                    (zone.to_utc(*t), zone.name().map(str::to_string))
                }
                None => {
                    self.problems.push(format!(
                        "{at}: TZID '{tzid}' is neither a known time zone nor defined in the item; read as UTC"
                    ));
                    (*t, None)
                }
            },
            When::Floating(t) => {
                self.problems
                    .push(format!("{at}: a floating time (no time zone); read as UTC"));
                (*t, None)
            }
        }
    }
}

/// A parsed VCALENDAR: its tree, the kind of item, the master component and
/// the overrides (indexes into `root.children`).
struct Doc {
    root: Comp,
    kind: ItemKind,
    master: usize,
    overrides: Vec<usize>,
    uid: String,
}

impl Doc {
    fn read(scanned: &Scanned) -> Result<Doc, MappingError> {
        let cal = match Parser::new(&scanned.text).entry() {
            Entry::ICalendar(cal) => cal,
            Entry::TooManyComponents => {
                return Err(MappingError::new("too many components in the VCALENDAR"))
            }
            _ => return Err(MappingError::at(1, "the VCALENDAR could not be read")),
        };
        let root = Comp::from_calendar(&cal)
            .filter(|r| r.kind == CT::VCalendar)
            .ok_or_else(|| MappingError::at(1, "expected BEGIN:VCALENDAR"))?;
        let has = |kind: CT| root.children.iter().any(|c| c.kind == kind);
        let (kind, ct, name) =
            match (has(CT::VEvent), has(CT::VTodo)) {
                (true, false) => (ItemKind::Event, CT::VEvent, "VEVENT"),
                (false, true) => (ItemKind::Todo, CT::VTodo, "VTODO"),
                (true, true) => return Err(MappingError::new(
                    "the VCALENDAR holds both VEVENT and VTODO; one item is one event or one to-do",
                )),
                (false, false) => {
                    return Err(MappingError::new("the VCALENDAR holds no VEVENT or VTODO"))
                }
            };
        let begin = |c: &Comp| scanned.begin_line(c.id).unwrap_or(1);
        let mut master = None;
        let mut overrides = Vec::new();
        for (i, c) in root.children.iter().enumerate() {
            if c.kind != ct {
                continue;
            }
            if c.first(&P::RecurrenceId).is_some() {
                overrides.push(i);
            } else if master.is_none() {
                master = Some(i);
            } else {
                return Err(MappingError::at(
                    begin(c),
                    format!(
                        "a second {name} without RECURRENCE-ID; one item holds one {} (and its exceptions)",
                        if kind == ItemKind::Event { "event series" } else { "to-do" }
                    ),
                ));
            }
        }
        // R-E2: only overridden instances, without their master (how
        // servers store a single-instance invitation): the first instance
        // is the item's appointment, the others its exceptions. Its
        // RECURRENCE-ID stays in the item as the user's client wrote it.
        let master = match master {
            Some(m) => m,
            None if kind == ItemKind::Event && !overrides.is_empty() => overrides.remove(0),
            None => {
                let first = overrides
                    .first()
                    .map(|&i| begin(&root.children[i]))
                    .unwrap_or(1);
                return Err(MappingError::at(
                    first,
                    format!("only instances (RECURRENCE-ID) of a repeating {name} whose master is not in the item; such items are not mapped"),
                ));
            }
        };
        let uid = root.children[master]
            .text(&P::Uid)
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                MappingError::at(
                    begin(&root.children[master]),
                    format!("the {name} has no UID; every calendar item needs one"),
                )
            })?;
        // R-F7: DTSTART is what RFC 5545 requires of a stored VEVENT; an
        // event without a readable one cannot be placed in a calendar.
        let master_comp = &root.children[master];
        if kind == ItemKind::Event && !has_start(master_comp) {
            return Err(MappingError::at(
                begin(master_comp),
                "the VEVENT has no readable DTSTART; give the event a start date or time",
            ));
        }
        for &i in &overrides {
            let c = &root.children[i];
            let other = c.text(&P::Uid);
            if other.as_deref().map(str::trim) != Some(uid.trim()) {
                return Err(MappingError::at(
                    begin(c),
                    format!(
                        "an instance with UID '{}' next to the series '{uid}'; one item holds one series",
                        other.unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(Doc {
            root,
            kind,
            master,
            overrides,
            uid,
        })
    }

    /// The item, and what the master and each override read as.
    fn item(&self, scanned: &Scanned) -> (MailboxItem, Read, Vec<Read>) {
        let mut ctx = Ctx {
            scanned,
            zones: Zones::from_vtimezones(self.root.children.iter()),
            problems: scanned.problems.clone(),
        };
        let master = &self.root.children[self.master];
        let set = entity(master, self.kind, &mut ctx);
        let days = days_zone(master, set, &mut ctx);
        let master_read = read_component(master, set, self.kind, &days, true, &mut ctx);
        let mut override_reads = Vec::new();
        if self.kind == ItemKind::Todo && !self.overrides.is_empty() {
            ctx.problems
                .push("instances of a repeating to-do (RECURRENCE-ID) are not mapped".into());
        }
        let mut exceptions = Vec::new();
        for &i in &self.overrides {
            let c = &self.root.children[i];
            let read = read_component(c, set, self.kind, &days, false, &mut ctx);
            if self.kind == ItemKind::Event {
                if let Some(rid) = &read.recurrence_id {
                    exceptions.push(Exception {
                        recurrence_id: rid.clone(),
                        crm_id: read.crm_id,
                        status: read.status,
                        fields: read.fields.clone(),
                    });
                }
            }
            override_reads.push(read);
        }
        let mut problems = ctx.problems;
        let mut seen = BTreeSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        let item = MailboxItem {
            set,
            uid: self.uid.clone(),
            crm_id: master_read.crm_id,
            tracked: master_read.tracked,
            status: master_read.status,
            fields: master_read.fields.clone(),
            exceptions,
            problems,
        };
        (item, master_read, override_reads)
    }
}

/// Whether the component has a DTSTART that reads as a date or date-time.
fn has_start(comp: &Comp) -> bool {
    comp.first(&P::Dtstart)
        .is_some_and(|e| e.values.first().and_then(|v| when(e, v)).is_some())
}

pub(super) fn parse(scanned: &Scanned) -> Result<MailboxItem, MappingError> {
    let doc = Doc::read(scanned)?;
    Ok(doc.item(scanned).0)
}

/// The set named by `X-CRM-ENTITY`, checked against the component kind.
fn entity(comp: &Comp, kind: ItemKind, ctx: &mut Ctx<'_>) -> EntitySet {
    let default = match kind {
        ItemKind::Todo => EntitySet::Tasks,
        _ => EntitySet::Appointments,
    };
    let Some(name) = comp.text(&x(X_CRM_ENTITY)) else {
        return default;
    };
    match name.trim().parse::<EntitySet>() {
        Ok(set) if ItemKind::for_set(set) == Some(kind) => set,
        _ => {
            let at = ctx.at(comp, X_CRM_ENTITY);
            ctx.problems.push(format!(
                "{at}: '{}' is not a set this kind of item maps to; read as {default}",
                crate::field::shorten(&name)
            ));
            default
        }
    }
}

/// `X-CRM-TIME-ZONE`, checked as a time zone name.
fn x_time_zone(comp: &Comp, set: EntitySet, ctx: &mut Ctx<'_>) -> Option<String> {
    let name = comp.text(&x(X_CRM_TIME_ZONE))?;
    let value = Value::String(name.trim().to_string());
    match set.field("time_zone")?.normalize(&value) {
        Ok(Value::String(s)) => Some(s),
        _ => {
            let at = ctx.at(comp, X_CRM_TIME_ZONE);
            ctx.problems.push(format!(
                "{at}: '{}' is not a time zone name; ignored",
                crate::field::shorten(&name)
            ));
            None
        }
    }
}

/// The zone whose midnights all-day dates of this component stand for.
fn days_zone(comp: &Comp, set: EntitySet, ctx: &mut Ctx<'_>) -> Zone {
    if ItemKind::for_set(set) != Some(ItemKind::Event) {
        return Zone::utc();
    }
    x_time_zone(comp, set, ctx)
        .and_then(|n| tz::known(&n))
        .unwrap_or_else(Zone::utc)
}

fn read_component(
    comp: &Comp,
    set: EntitySet,
    kind: ItemKind,
    series_days: &Zone,
    master: bool,
    ctx: &mut Ctx<'_>,
) -> Read {
    let mut read = Read::default();
    let mut problems = Vec::new();
    let put = |read: &mut Read, problems: &mut Vec<String>, name: &str, value: Value, at: &str| {
        put_field(set, &mut read.fields, problems, name, value, at)
    };

    if let Some(s) = comp.text(&P::Summary) {
        put(
            &mut read,
            &mut problems,
            "subject",
            s.into(),
            &ctx.at(comp, "SUMMARY"),
        );
    }
    if kind == ItemKind::Event {
        if let Some(s) = comp.text(&P::Location) {
            put(
                &mut read,
                &mut problems,
                "location",
                s.into(),
                &ctx.at(comp, "LOCATION"),
            );
        }
    }
    if let Some(s) = comp.text(&P::Description) {
        put(
            &mut read,
            &mut problems,
            "description",
            s.into(),
            &ctx.at(comp, "DESCRIPTION"),
        );
    }

    // Times.
    let days = if kind == ItemKind::Event {
        days_zone(comp, set, ctx)
    } else {
        Zone::utc()
    };
    let x_tz = if kind == ItemKind::Event {
        x_time_zone(comp, set, ctx)
    } else {
        None
    };
    let start = comp.first(&P::Dtstart).and_then(|e| {
        let w = e.values.first().and_then(|v| when(e, v));
        if w.is_none() {
            problems.push(format!(
                "{}: not a date or date-time; left out",
                ctx.at(comp, "DTSTART")
            ));
        }
        w
    });
    let mut start_utc = None;
    if let Some(w) = &start {
        let at = ctx.at(comp, "DTSTART");
        let (t, zone) = ctx.utc(w, &days, &at);
        start_utc = Some(t);
        put(&mut read, &mut problems, "start", fmt_utc(t).into(), &at);
        if kind == ItemKind::Event {
            if matches!(w, When::Date(_)) {
                put(&mut read, &mut problems, "all_day", true.into(), &at);
            }
            if let Some(name) = zone.or(x_tz) {
                put(&mut read, &mut problems, "time_zone", name.into(), &at);
            }
        }
    } else if kind == ItemKind::Event {
        problems.push(format!(
            "{}: the event has no DTSTART; start and end are left out",
            ctx.scanned
                .begin_line(comp.id)
                .map_or("VEVENT".to_string(), |l| format!("line {l}"))
        ));
    }
    let (end_prop, end_name) = match kind {
        ItemKind::Todo => (P::Due, "due"),
        _ => (P::Dtend, "end"),
    };
    let end_label = if kind == ItemKind::Todo {
        "DUE"
    } else {
        "DTEND"
    };
    let end_when = comp
        .first(&end_prop)
        .and_then(|e| e.values.first().and_then(|v| when(e, v)));
    let end = if let Some(w) = &end_when {
        let at = ctx.at(comp, end_label);
        Some(ctx.utc(w, &days, &at).0)
    } else if let (Some(s), Some(dur)) = (
        start_utc,
        comp.first(&P::Duration)
            .and_then(|e| match e.values.first() {
                Some(V::Duration(d)) => Some(d.clone()),
                _ => None,
            }),
    ) {
        match &start {
            Some(When::Date(d)) => {
                let days_n = i64::from(dur.weeks) * 7 + i64::from(dur.days);
                let days_n = if dur.neg { -days_n } else { days_n };
                Duration::try_days(days_n)
                    .and_then(|n| d.checked_add_signed(n))
                    .map(|e| days.midnight(e))
            }
            _ => Duration::try_seconds(dur.as_seconds()).and_then(|n| s.checked_add_signed(n)),
        }
    } else if kind == ItemKind::Event {
        match &start {
            Some(When::Date(d)) => d.succ_opt().map(|e| days.midnight(e)),
            _ => start_utc,
        }
    } else {
        None
    };
    if let Some(e) = end {
        let at = ctx.at(comp, end_label);
        if start_utc.is_some_and(|s| e < s) {
            problems.push(format!("{at}: ends before it starts"));
        }
        put(&mut read, &mut problems, end_name, fmt_utc(e).into(), &at);
    }

    if kind == ItemKind::Event {
        read_people(comp, set, &mut read, &mut problems, ctx);
        if master {
            read_recurrence(comp, set, &days, &mut read, &mut problems, ctx);
        } else if let Some(e) = comp.first(&P::RecurrenceId) {
            let at = ctx.at(comp, "RECURRENCE-ID");
            match e.values.first().and_then(|v| when(e, v)) {
                Some(w) => {
                    let t = ctx.utc(&w, series_days, &at).0;
                    read.recurrence_id = Some(fmt_utc(t));
                    if param_text(e, &PN::Range).is_some() {
                        problems.push(format!(
                            "{at}: RANGE=THISANDFUTURE is read as this instance only"
                        ));
                    }
                }
                None => problems.push(format!(
                    "{at}: not a date or date-time; the instance is left out"
                )),
            }
        }
    } else {
        if let Some(e) = comp.first(&P::Priority) {
            let at = ctx.at(comp, "PRIORITY");
            match e.values.first().and_then(V::as_integer) {
                Some(0) => {}
                Some(1..=4) => put(&mut read, &mut problems, "priority", "high".into(), &at),
                Some(5) => put(&mut read, &mut problems, "priority", "normal".into(), &at),
                Some(6..=9) => put(&mut read, &mut problems, "priority", "low".into(), &at),
                _ => problems.push(format!("{at}: not a priority from 0 to 9; left out")),
            }
        }
        if let Some(e) = comp.first(&P::PercentComplete) {
            let at = ctx.at(comp, "PERCENT-COMPLETE");
            match e.values.first().and_then(V::as_integer) {
                Some(n) => put(&mut read, &mut problems, "percent_complete", n.into(), &at),
                None => problems.push(format!("{at}: not a whole number; left out")),
            }
        }
        if master && comp.first(&P::Rrule).is_some() {
            problems.push(format!(
                "{}: a repeating to-do; the CRM keeps it as one to-do",
                ctx.at(comp, "RRULE")
            ));
        }
    }

    if let Some(e) = comp.first(&x(X_CRM_REGARDING)) {
        let at = ctx.at(comp, X_CRM_REGARDING);
        let id = e.values.first().and_then(V::as_text).unwrap_or("").trim();
        let set_name = param_text(e, &x_param(X_CRM_SET)).unwrap_or("").trim();
        put(
            &mut read,
            &mut problems,
            "regarding",
            json!({"set": set_name, "id": id}),
            &at,
        );
    }

    // R-F7: SUMMARY is optional (RFC 5545); the CRM needs a subject.
    fill_required(set, &mut read.fields, None);
    read.status = status_of(comp, kind);
    if let Some(id) = comp.text(&x(X_CRM_ID)) {
        match Uuid::parse_str(id.trim()) {
            Ok(id) => read.crm_id = Some(id),
            Err(_) => problems.push(format!(
                "{}: '{}' is not a UUID; the item is read as not linked",
                ctx.at(comp, X_CRM_ID),
                crate::field::shorten(&id)
            )),
        }
    }
    read.tracked = comp
        .all(&P::Categories)
        .flat_map(|e| e.values.iter())
        .filter_map(V::as_text)
        .any(is_marker);
    ctx.problems.append(&mut problems);
    read
}

fn is_marker(category: &str) -> bool {
    category.trim().eq_ignore_ascii_case(TRACKED_CATEGORY)
}

fn status_of(comp: &Comp, kind: ItemKind) -> Status {
    let status = comp.text(&P::Status).map(|s| s.trim().to_ascii_uppercase());
    match (kind, status.as_deref()) {
        (_, Some("CANCELLED")) => Status::Canceled,
        (ItemKind::Todo, Some("COMPLETED")) => Status::Completed,
        (ItemKind::Todo, None) if comp.first(&P::Completed).is_some() => Status::Completed,
        _ => Status::Active,
    }
}

/// The address of an ORGANIZER or ATTENDEE (`mailto:` removed).
fn address(e: &ICalendarEntry) -> Option<String> {
    let raw = match e.values.first()? {
        V::Uri(Uri::Location(s)) | V::Text(s) => s.trim(),
        _ => return None,
    };
    let lower = raw.to_ascii_lowercase();
    let addr = if lower.starts_with("mailto:") {
        &raw[7..]
    } else {
        return None;
    };
    let addr = addr.trim();
    (!addr.is_empty()).then(|| addr.to_string())
}

fn role_of(e: &ICalendarEntry) -> &'static str {
    match param_text(e, &PN::Role)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("OPT-PARTICIPANT" | "NON-PARTICIPANT") => "optional",
        _ => "required",
    }
}

fn read_people(
    comp: &Comp,
    set: EntitySet,
    read: &mut Read,
    problems: &mut Vec<String>,
    ctx: &Ctx<'_>,
) {
    if let Some(e) = comp.first(&P::Organizer) {
        let at = ctx.at(comp, "ORGANIZER");
        match address(e) {
            Some(a) => put_field(set, &mut read.fields, problems, "organizer", a.into(), &at),
            None => problems.push(format!("{at}: not a mailto: address; left out")),
        }
    }
    let Some(def) = set.field("attendees") else {
        return;
    };
    let at = ctx.at(comp, "ATTENDEE");
    let mut attendees = Vec::new();
    for e in comp.all(&P::Attendee) {
        let Some(email) =
            address(e).filter(|a| crate::field::email(&Value::String(a.clone())).is_ok())
        else {
            problems.push(format!(
                "{at}: an attendee without a usable mailto: address is not mapped"
            ));
            continue;
        };
        let resolved = param_text(e, &x_param(X_CRM_RESOLVED)).and_then(|r| {
            let (s, id) = r.split_once(':')?;
            Some(json!({"set": s.trim(), "id": id.trim()}))
        });
        let mut one = json!({"email": email, "role": role_of(e), "resolved": resolved});
        if def.normalize(&json!([one])).is_err() {
            problems.push(format!(
                "{at}: {X_CRM_RESOLVED} of {email} is not a record reference; ignored"
            ));
            one["resolved"] = Value::Null;
        }
        attendees.push(one);
    }
    if !attendees.is_empty() {
        put_field(
            set,
            &mut read.fields,
            problems,
            "attendees",
            Value::Array(attendees),
            &at,
        );
    }
}

fn read_recurrence(
    comp: &Comp,
    set: EntitySet,
    days: &Zone,
    read: &mut Read,
    problems: &mut Vec<String>,
    ctx: &mut Ctx<'_>,
) {
    let Some(e) = comp.first(&P::Rrule) else {
        return;
    };
    let at = ctx.at(comp, "RRULE");
    let canonical = match e.values.first() {
        Some(V::RecurrenceRule(r)) => Some(r.to_string()),
        Some(V::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let raw = comp
        .id
        .and_then(|id| ctx.scanned.components.get(id as usize))
        .filter(|c| c.name == "VEVENT")
        .and_then(|c| c.rrule.clone());
    let mut exdates = Vec::new();
    let exdate = P::Exdate;
    let entries: Vec<ICalendarEntry> = comp.all(&exdate).cloned().collect();
    let ex_at = ctx.at(comp, "EXDATE");
    for e in &entries {
        for v in &e.values {
            match when(e, v) {
                Some(w) => exdates.push(Value::String(fmt_utc(ctx.utc(&w, days, &ex_at).0))),
                None => problems.push(format!("{ex_at}: a value that is not a date; left out")),
            }
        }
    }
    let Some(def) = set.field("recurrence") else {
        return;
    };
    for rule in [raw, canonical].into_iter().flatten() {
        let value = json!({"rrule": rule, "exdates": exdates});
        if let Ok(v) = def.normalize(&value) {
            read.fields.insert("recurrence".into(), v);
            return;
        }
    }
    problems.push(format!(
        "{at}: a rule the CRM cannot keep; the recurrence is left out"
    ));
}

// ---------------------------------------------------------------- writing

pub(super) fn render(
    item: &MailboxItem,
    kind: ItemKind,
    opts: &RenderOptions<'_>,
) -> Result<Vec<u8>, MappingError> {
    let existing = match opts.existing {
        None => None,
        Some(bytes) => {
            let scanned = scan::scan(bytes).map_err(existing_error)?;
            if scanned.root != scan::Root::Vcalendar {
                return Err(MappingError::new(
                    "the existing item is a vCard, not a VCALENDAR",
                ));
            }
            let doc = Doc::read(&scanned).map_err(existing_error)?;
            if doc.kind != kind {
                return Err(MappingError::new(format!(
                    "the existing item holds a {}; it cannot become a {}",
                    if doc.kind == ItemKind::Todo {
                        "VTODO"
                    } else {
                        "VEVENT"
                    },
                    if kind == ItemKind::Todo {
                        "VTODO"
                    } else {
                        "VEVENT"
                    },
                )));
            }
            let (_, master, overrides) = doc.item(&scanned);
            Some((doc, master, overrides))
        }
    };

    let ct = if kind == ItemKind::Todo {
        CT::VTodo
    } else {
        CT::VEvent
    };
    let mut root = Comp::new(CT::VCalendar);
    let mut old_master = None;
    let mut old_overrides: Vec<(Comp, Read)> = Vec::new();
    let mut old_zones: Vec<Comp> = Vec::new();
    let mut others: Vec<Comp> = Vec::new();
    if let Some((doc, master_read, override_reads)) = existing {
        let Doc {
            root: old_root,
            master,
            overrides,
            ..
        } = doc;
        root.entries = old_root.entries;
        let mut reads = overrides
            .iter()
            .copied()
            .zip(override_reads)
            .collect::<Vec<_>>();
        for (i, child) in old_root.children.into_iter().enumerate() {
            if i == master {
                old_master = Some((child, master_read.clone()));
            } else if let Some(pos) = reads.iter().position(|(j, _)| *j == i) {
                let (_, read) = reads.swap_remove(pos);
                old_overrides.push((child, read));
            } else if child.kind == CT::VTimezone {
                old_zones.push(child);
            } else if child.kind != ct {
                others.push(child);
            }
        }
    }
    root.remove(&P::Version);
    root.remove(&P::Prodid);
    // A stored calendar object carries no METHOD (RFC 4791 4.1).
    root.remove(&P::Method);
    root.entries
        .insert(0, entry(P::Prodid, vec![], V::Text(PRODID.into())));
    root.entries
        .insert(0, entry(P::Version, vec![], V::Text("2.0".into())));

    let series_form = form_of(
        kind,
        &effective(&item.fields, old_master.as_ref().map(|m| &m.1), opts),
    );
    let mut children = Vec::new();
    let (mut master_comp, master_old) = match old_master {
        Some((c, r)) => (c, Some(r)),
        None => (Comp::new(ct.clone()), None),
    };
    let one = One {
        set: item.set,
        kind,
        uid: &item.uid,
        crm_id: item.crm_id,
        status: item.status,
        tracked: item.tracked,
        fields: &item.fields,
        recurrence_id: None,
    };
    update(
        &mut master_comp,
        master_old.as_ref(),
        &one,
        &series_form,
        opts,
    );
    children.push(master_comp);
    if kind == ItemKind::Event {
        for ex in &item.exceptions {
            let Some(rid) = parse_utc(&ex.recurrence_id) else {
                continue;
            };
            let rid_text = fmt_utc(rid);
            let (mut comp, old) = match old_overrides
                .iter()
                .position(|(_, r)| r.recurrence_id.as_deref() == Some(rid_text.as_str()))
            {
                Some(pos) => {
                    let (c, r) = old_overrides.swap_remove(pos);
                    (c, Some(r))
                }
                None => (Comp::new(ct.clone()), None),
            };
            let one = One {
                set: item.set,
                kind,
                uid: &item.uid,
                crm_id: ex.crm_id,
                status: ex.status,
                tracked: item.tracked,
                fields: &ex.fields,
                recurrence_id: Some(rid),
            };
            update(&mut comp, old.as_ref(), &one, &series_form, opts);
            children.push(comp);
        }
    }
    children.append(&mut others);

    // VTIMEZONE for every TZID used: the item's own definition if it had
    // one, else one from the tz database.
    let mut tzids = BTreeSet::new();
    for c in &children {
        collect_tzids(c, &mut tzids);
    }
    let (from, to) = tz_range(item, opts);
    let mut zones = Vec::new();
    for tzid in tzids {
        let own = old_zones
            .iter()
            .position(|z| z.text(&P::Tzid).as_deref() == Some(tzid.as_str()));
        match own {
            Some(pos) => zones.push(old_zones.swap_remove(pos)),
            None => zones.extend(tz::vtimezone(&tzid, from, to)),
        }
    }
    zones.append(&mut children);
    root.children = zones;

    let mut out = String::new();
    root.to_calendar()
        .write_to(&mut out)
        .map_err(|_| MappingError::new("the item could not be written"))?;
    Ok(out.into_bytes())
}

fn existing_error(e: MappingError) -> MappingError {
    MappingError {
        line: e.line,
        message: format!("the existing item cannot be read: {}", e.message),
    }
}

fn collect_tzids(c: &Comp, out: &mut BTreeSet<String>) {
    if c.kind == CT::VTimezone {
        return;
    }
    for e in &c.entries {
        if let Some(t) = e.tz_id() {
            out.insert(t.to_string());
        }
    }
    for child in &c.children {
        collect_tzids(child, out);
    }
}

/// The years a VTIMEZONE must cover: a year before the item's first date to
/// two after its last (so its yearly rules come out open-ended).
fn tz_range(item: &MailboxItem, opts: &RenderOptions<'_>) -> (i64, i64) {
    let mut years: Vec<i32> = Vec::new();
    let mut add = |fields: &Map<String, Value>| {
        for name in ["start", "end", "due"] {
            if let Some(t) = fields.get(name).and_then(Value::as_str).and_then(parse_utc) {
                years.push(t.year());
            }
        }
        if let Some(Value::Array(ex)) = fields.get("recurrence").and_then(|r| r.get("exdates")) {
            years.extend(
                ex.iter()
                    .filter_map(|d| Some(parse_utc(d.as_str()?)?.year())),
            );
        }
    };
    add(&item.fields);
    for ex in &item.exceptions {
        add(&ex.fields);
    }
    years.extend(
        item.exceptions
            .iter()
            .filter_map(|e| Some(parse_utc(&e.recurrence_id)?.year())),
    );
    let now = opts.timestamp.year();
    let first = years.iter().copied().min().unwrap_or(now).clamp(1900, 2200);
    let last = years
        .iter()
        .copied()
        .max()
        .unwrap_or(now)
        .clamp(first, first + 60);
    let jan1 = |y: i32| {
        NaiveDate::from_ymd_opt(y, 1, 1)
            .map(|d| d.and_time(NaiveTime::MIN).and_utc().timestamp())
            .unwrap_or(0)
    };
    (jan1(first - 1), jan1(last + 2))
}

/// What to write into one component.
struct One<'a> {
    set: EntitySet,
    kind: ItemKind,
    uid: &'a str,
    crm_id: Option<Uuid>,
    status: Status,
    tracked: bool,
    fields: &'a Map<String, Value>,
    recurrence_id: Option<NaiveDateTime>,
}

/// The fields to write: `fields`, except `keep_fields`, which keep the
/// existing item's values.
fn effective(
    fields: &Map<String, Value>,
    old: Option<&Read>,
    opts: &RenderOptions<'_>,
) -> Map<String, Value> {
    let mut out = fields.clone();
    for name in opts.keep_fields {
        match old.and_then(|o| o.fields.get(*name)) {
            Some(v) => out.insert(name.to_string(), v.clone()),
            None => out.remove(*name),
        };
    }
    out
}

fn update(
    comp: &mut Comp,
    old: Option<&Read>,
    one: &One<'_>,
    series: &Form,
    opts: &RenderOptions<'_>,
) {
    let new = effective(one.fields, old, opts);
    let old_fields = old.map(|o| &o.fields);
    let changed = |names: &[&str]| {
        names
            .iter()
            .any(|n| old_fields.and_then(|f| f.get(*n)) != new.get(*n))
    };
    let text = |name: &str| new.get(name).and_then(Value::as_str);
    let utc = |name: &str| text(name).and_then(parse_utc);

    comp.put(
        &P::Uid,
        Some(entry(P::Uid, vec![], V::Text(one.uid.to_string()))),
    );
    comp.put(
        &P::Dtstamp,
        Some(entry(
            P::Dtstamp,
            vec![],
            utc_value(naive_of(opts.timestamp)),
        )),
    );
    if let Some(rid) = one.recurrence_id {
        let (params, value, _) = write_when(series, rid, false);
        comp.put(
            &P::RecurrenceId,
            Some(entry(P::RecurrenceId, params, value)),
        );
    }
    if changed(&["subject"]) {
        comp.put_text(&P::Summary, text("subject"));
    }
    if one.kind == ItemKind::Event && changed(&["location"]) {
        comp.put_text(&P::Location, text("location"));
    }
    if changed(&["description"]) {
        comp.put_text(&P::Description, text("description"));
        // Rich-text copies of the old description would show instead.
        comp.remove(&x("X-ALT-DESC"));
        comp.remove(&P::StyledDescription);
    }

    // Times.
    let timing: &[&str] = match one.kind {
        ItemKind::Todo => &["start", "due"],
        _ => &["start", "end", "all_day", "time_zone"],
    };
    let timing_changed = changed(timing);
    if timing_changed {
        for p in [
            P::Dtstart,
            P::Dtend,
            P::Due,
            P::Duration,
            x(X_CRM_TIME_ZONE),
        ] {
            comp.remove(&p);
        }
        let form = if one.recurrence_id.is_some() {
            form_of(one.kind, &new)
        } else {
            series.clone()
        };
        let end_name = if one.kind == ItemKind::Todo {
            "due"
        } else {
            "end"
        };
        let end_prop = if one.kind == ItemKind::Todo {
            P::Due
        } else {
            P::Dtend
        };
        if let Some(t) = utc("start") {
            let (params, value, _) = write_when(&form, t, false);
            comp.put(&P::Dtstart, Some(entry(P::Dtstart, params, value)));
        }
        if let Some(t) = utc(end_name) {
            let (params, value, _) = write_when(&form, t, true);
            comp.put(&end_prop, Some(entry(end_prop.clone(), params, value)));
        }
        if !matches!(form, Form::Tzid(..)) {
            if let Some(name) = text("time_zone") {
                comp.put(
                    &x(X_CRM_TIME_ZONE),
                    Some(entry(x(X_CRM_TIME_ZONE), vec![], V::Text(name.into()))),
                );
            }
        }
    }

    if one.kind == ItemKind::Event {
        write_people(comp, old_fields, &new);
        if one.recurrence_id.is_none() {
            // The RRULE is always written from its text: a kept entry would
            // come out in calcard's spelling, not the CRM's.
            let rule = new
                .get("recurrence")
                .and_then(|r| r.get("rrule"))
                .and_then(Value::as_str)
                .and_then(rrule_entry);
            comp.put(&P::Rrule, rule);
            if timing_changed || changed(&["recurrence"]) {
                comp.remove(&P::Exdate);
                if let Some(r) = new.get("recurrence") {
                    write_exdates(comp, series, r);
                }
            }
        }
    } else {
        if changed(&["priority"]) {
            let n = match text("priority") {
                Some("high") => Some(1),
                Some("normal") => Some(5),
                Some("low") => Some(9),
                _ => None,
            };
            comp.put(
                &P::Priority,
                n.map(|n| entry(P::Priority, vec![], V::Integer(n))),
            );
        }
        if changed(&["percent_complete"]) {
            let n = new.get("percent_complete").and_then(Value::as_i64);
            comp.put(
                &P::PercentComplete,
                n.map(|n| entry(P::PercentComplete, vec![], V::Integer(n))),
            );
        }
    }
    write_status(comp, one.kind, one.status, opts);
    write_categories(comp, one.tracked);
    comp.put(
        &x(X_CRM_ENTITY),
        Some(entry(
            x(X_CRM_ENTITY),
            vec![],
            V::Text(one.set.as_str().into()),
        )),
    );
    comp.put(
        &x(X_CRM_ID),
        one.crm_id
            .map(|id| entry(x(X_CRM_ID), vec![], V::Text(id.to_string()))),
    );
    if changed(&["regarding"]) {
        let regarding = new.get("regarding").and_then(|r| {
            let set = r.get("set")?.as_str()?;
            let id = r.get("id")?.as_str()?;
            Some(entry(
                x(X_CRM_REGARDING),
                vec![param(x_param(X_CRM_SET), set)],
                V::Text(id.into()),
            ))
        });
        comp.put(&x(X_CRM_REGARDING), regarding);
    }
}

fn naive_of(t: time::OffsetDateTime) -> NaiveDateTime {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), 0)
        .map(|d| d.naive_utc())
        .unwrap_or_default()
}

/// EXDATE lines, one per run of values written the same way, in order.
fn write_exdates(comp: &mut Comp, form: &Form, recurrence: &Value) {
    let Some(Value::Array(dates)) = recurrence.get("exdates") else {
        return;
    };
    let mut current: Option<(u8, ICalendarEntry)> = None;
    for t in dates.iter().filter_map(|d| parse_utc(d.as_str()?)) {
        let (params, value, key) = write_when(form, t, false);
        match &mut current {
            Some((k, e)) if *k == key && e.params == params => e.values.push(value),
            _ => {
                if let Some((_, e)) = current.take() {
                    comp.entries.push(e);
                }
                current = Some((key, entry(P::Exdate, params, value)));
            }
        }
    }
    if let Some((_, e)) = current {
        comp.entries.push(e);
    }
}

fn schedule_agent_client() -> ICalendarParameter {
    // R-T6: the calendar server sends no invitations or replies.
    param(PN::ScheduleAgent, "CLIENT")
}

fn with_client_agent(mut e: ICalendarEntry) -> ICalendarEntry {
    e.params.retain(|p| p.name != PN::ScheduleAgent);
    e.params.push(schedule_agent_client());
    e
}

fn mailto(address: &str) -> V {
    V::Uri(Uri::Location(format!("mailto:{address}")))
}

fn write_people(comp: &mut Comp, old: Option<&Map<String, Value>>, new: &Map<String, Value>) {
    // ORGANIZER
    let organizer = new.get("organizer").and_then(Value::as_str);
    let old_organizer = old.and_then(|o| o.get("organizer")).and_then(Value::as_str);
    match (comp.first(&P::Organizer).cloned(), organizer) {
        (Some(e), Some(o)) if old_organizer == Some(o) => {
            comp.put(&P::Organizer, Some(with_client_agent(e)));
        }
        (_, Some(o)) => comp.put(
            &P::Organizer,
            Some(entry(
                P::Organizer,
                vec![schedule_agent_client()],
                mailto(o),
            )),
        ),
        (_, None) => comp.remove(&P::Organizer),
    }

    // ATTENDEE: kept ones keep their parameters (CN, PARTSTAT, ...); order
    // and roles are the CRM's.
    let wanted: Vec<&Value> = match new.get("attendees") {
        Some(Value::Array(a)) => a.iter().collect(),
        _ => Vec::new(),
    };
    let position = comp.entries.iter().position(|e| e.name == P::Attendee);
    let mut old_mapped: Vec<Option<ICalendarEntry>> = Vec::new();
    let mut unmapped = Vec::new();
    for e in comp.entries.iter().filter(|e| e.name == P::Attendee) {
        if address(e).is_some_and(|a| crate::field::email(&Value::String(a)).is_ok()) {
            old_mapped.push(Some(e.clone()));
        } else {
            unmapped.push(e.clone());
        }
    }
    let mut written = Vec::new();
    for a in wanted {
        let Some(email) = a.get("email").and_then(Value::as_str) else {
            continue;
        };
        let role = a.get("role").and_then(Value::as_str).unwrap_or("required");
        let resolved = a.get("resolved").and_then(|r| {
            Some(format!(
                "{}:{}",
                r.get("set")?.as_str()?,
                r.get("id")?.as_str()?
            ))
        });
        let found = old_mapped.iter_mut().find(|slot| {
            slot.as_ref()
                .and_then(address)
                .is_some_and(|x| x.eq_ignore_ascii_case(email))
        });
        let mut e = match found.and_then(Option::take) {
            Some(mut e) => {
                if address(&e).as_deref() != Some(email) {
                    e.values = vec![mailto(email)];
                }
                if role_of(&e) != role {
                    e.params.retain(|p| p.name != PN::Role);
                    e.params.push(role_param(role));
                }
                e
            }
            None => entry(P::Attendee, vec![role_param(role)], mailto(email)),
        };
        e.params.retain(|p| p.name != x_param(X_CRM_RESOLVED));
        if let Some(r) = resolved {
            e.params.push(param(x_param(X_CRM_RESOLVED), &r));
        }
        written.push(with_client_agent(e));
    }
    written.extend(unmapped);
    comp.remove(&P::Attendee);
    let at = position
        .unwrap_or(comp.entries.len())
        .min(comp.entries.len());
    comp.entries.splice(at..at, written);
}

fn role_param(role: &str) -> ICalendarParameter {
    param(
        PN::Role,
        if role == "optional" {
            "OPT-PARTICIPANT"
        } else {
            "REQ-PARTICIPANT"
        },
    )
}

fn write_status(comp: &mut Comp, kind: ItemKind, status: Status, opts: &RenderOptions<'_>) {
    let old = comp.text(&P::Status).map(|s| s.trim().to_ascii_uppercase());
    let put = |comp: &mut Comp, s: &str| {
        if old.as_deref() != Some(s) {
            comp.put(
                &P::Status,
                Some(entry(P::Status, vec![], V::Text(s.into()))),
            );
        }
    };
    match (kind, status) {
        (_, Status::Canceled) => {
            put(comp, "CANCELLED");
            comp.remove(&P::Completed);
        }
        (ItemKind::Todo, Status::Completed) => {
            put(comp, "COMPLETED");
            if comp.first(&P::Completed).is_none() {
                comp.entries.push(entry(
                    P::Completed,
                    vec![],
                    utc_value(naive_of(opts.timestamp)),
                ));
            }
        }
        (ItemKind::Todo, _) => {
            if !matches!(old.as_deref(), Some("NEEDS-ACTION" | "IN-PROCESS")) {
                put(comp, "NEEDS-ACTION");
            }
            comp.remove(&P::Completed);
        }
        (_, _) => {
            if old.as_deref() == Some("CANCELLED") {
                comp.remove(&P::Status);
            }
        }
    }
}

/// R-M1: adds or removes the marker; the user's other categories stay.
fn write_categories(comp: &mut Comp, tracked: bool) {
    let has = comp
        .all(&P::Categories)
        .flat_map(|e| e.values.iter())
        .filter_map(V::as_text)
        .any(is_marker);
    if tracked && !has {
        match comp.entries.iter_mut().find(|e| e.name == P::Categories) {
            Some(e) => e.values.push(V::Text(TRACKED_CATEGORY.into())),
            None => comp.entries.push(entry(
                P::Categories,
                vec![],
                V::Text(TRACKED_CATEGORY.into()),
            )),
        }
    } else if !tracked && has {
        for e in comp.entries.iter_mut().filter(|e| e.name == P::Categories) {
            e.values.retain(|v| !v.as_text().is_some_and(is_marker));
        }
        comp.entries
            .retain(|e| e.name != P::Categories || !e.values.is_empty());
    }
}
