//! Mapping between CRM records and mailbox items (SPEC R-F2, R-M1, R-M2):
//! contacts ↔ vCard, appointments and service appointments ↔ VEVENT,
//! tasks, phone calls, letters and faxes ↔ VTODO. Pure: bytes in, bytes out.
//!
//! # API
//!
//! - [`parse_item`]`(bytes) -> Result<`[`MailboxItem`]`, `[`MappingError`]`>` reads
//!   one `.vcf` (vCard 3.0 or 4.0) or `.ics` (one VCALENDAR: a VEVENT series
//!   with its exceptions, or one VTODO). It never panics. An error names the
//!   line and the problem (missing END, garbage, no UID, too large); things it
//!   can read around (a floating time, a bad e-mail address in one ATTENDEE,
//!   a long subject) end up in [`MailboxItem::problems`] instead.
//! - [`render_item`]`(&MailboxItem, &`[`RenderOptions`]`) -> Result<Vec<u8>, MappingError>`
//!   writes the item. With [`RenderOptions::existing`] (the user's current
//!   copy) every property the mapping does not own is kept as it was (the
//!   user's client put it there: photos, alarms, other e-mail addresses, home
//!   phones, X- properties, parameters such as CN and PARTSTAT), and a
//!   mapped property whose value did not change is kept as it was, with its
//!   parameters (a TZID such as "W. Europe Standard Time" stays). The
//!   exceptions written are exactly [`MailboxItem::exceptions`]; others the
//!   existing item had are dropped.
//! - [`MailboxItem::from_records`] builds the item to render from a CRM
//!   series record (or contact, or to-do) and its exception records;
//!   [`project_fields`] is the part of a record's fields a mailbox can hold,
//!   in the form [`parse_item`] gives back.
//!
//! The round trip CRM → mailbox → CRM changes nothing (R-F2):
//! `parse_item(render_item(item))` gives `item` back for every item
//! [`MailboxItem::from_records`] builds (property-tested below).
//!
//! # What maps where
//!
//! | CRM | vCard |
//! |---|---|
//! | `last_name`, `first_name` | `N` (family; given); `FN` is written from them |
//! | `email`, `email2` | the first two `EMAIL`s (a lone `email2` carries `X-CRM-FIELD=email2`) |
//! | `phone` | first `TEL` typed `work` (written `TYPE=work,voice`) |
//! | `mobile` | first `TEL` typed `cell` |
//! | `job_title` | `TITLE` |
//! | `street`, `city`, `postal_code`, `country` | first work `ADR` (street; locality; postal code; country) |
//! | `birthday` | `BDAY` (a date with a year) |
//! | `notes` | `NOTE` |
//! | account name (R-F4) | `ORG`, written only when [`RenderOptions::company`] is given; never read |
//!
//! | CRM | VEVENT | VTODO |
//! |---|---|---|
//! | `subject`, `description` | `SUMMARY`, `DESCRIPTION` | same |
//! | `location` | `LOCATION` | – |
//! | `start`, `end` / `due` | `DTSTART`, `DTEND` (or `DURATION`) | `DTSTART`, `DUE` |
//! | `time_zone` | `TZID` of `DTSTART` + a `VTIMEZONE`; `X-CRM-TIME-ZONE` when a `TZID` cannot carry it (all-day, unknown zone) | – |
//! | `all_day` | `DTSTART;VALUE=DATE` | – |
//! | `organizer`, `attendees` | `ORGANIZER`, `ATTENDEE` (`mailto:`, `ROLE`; both always get `SCHEDULE-AGENT=CLIENT` on write, R-T6; `resolved` in `X-CRM-RESOLVED=<set>:<uuid>`) | – |
//! | `recurrence` | `RRULE`, `EXDATE`; exception records are VEVENTs with the same `UID` and a `RECURRENCE-ID` | – |
//! | `priority` | – | `PRIORITY` 1–4 high, 5 normal, 6–9 low |
//! | `percent_complete` | – | `PERCENT-COMPLETE` |
//! | `state` | `STATUS:CANCELLED` | `STATUS` `COMPLETED` / `CANCELLED` / `NEEDS-ACTION` |
//! | `regarding` | `X-CRM-REGARDING;X-CRM-SET=<set>:<uuid>` | same |
//! | the set | `X-CRM-ENTITY` | `X-CRM-ENTITY` (tasks, phonecalls, letters, faxes) |
//!
//! Every item also carries `UID`, `X-CRM-ID:<uuid>` once linked (R-M2) and
//! the category `Tracked to CRM` while tracked (R-M1; the user's other
//! categories stay).
//!
//! Times: CRM date-times are UTC (`2026-11-25T09:00:00Z`). A `TZID` local time
//! is converted with the tz database (chrono-tz, through calcard); a `TZID`
//! that names no known zone is converted with the item's own VTIMEZONE rules;
//! a floating time (no zone) is read as UTC and reported. A time a `TZID`
//! cannot name (the second pass of a repeated hour) is written in UTC with
//! `X-CRM-TIME-ZONE`. An all-day event is stored as the local midnights (in
//! `time_zone`, else UTC) of its first day and of the day after its last.
//! The RRULE goes out and comes back in the CRM's own spelling (key order).
//!
//! State: the mailbox only knows [`Status`] (active, completed, cancelled);
//! [`Status::crm_state`] gives the record's state from it and the current
//! state, so that open and scheduled, which look alike, stay as they were.
//!
//! What an item leaves out (R-F7, as RFC 5545 and RFC 6350 define it): a
//! VEVENT without DTEND or DURATION ends at its start (a DATE-valued one
//! lasts one day); a VTODO without DUE has no due date; no SUMMARY reads as
//! the subject [`NO_SUBJECT`]; a vCard without a family name in N (or FN)
//! is named by its given name alone, else ORG, else its first EMAIL, else
//! [`NO_NAME`]. [`project_fields`] gives a record the same values, so they
//! read back unchanged and are written into the item only when the CRM
//! changes them. A VEVENT without a readable DTSTART, an item without UID,
//! and a file of several items cannot be read: [`parse_item`] says why.
//!
//! Not mapped: phone calls' `phone_number` and `direction` (no VTODO
//! counterpart; FieldDef.mailbox is false), attendees' names and answers
//! (`CN`, `PARTSTAT`: kept in the mailbox, not read), alarms, attachments,
//! `RDATE` (kept, not read), a contact's other addresses and phone numbers.

mod icalendar;
mod scan;
mod tz;
mod vcard;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::entity::EntitySet;
use crate::field::{FieldKind, MAX_LONG_TEXT, MAX_TEXT};
use crate::record::Record;

/// R-M1: the category that marks an item as tracked.
pub const TRACKED_CATEGORY: &str = "Tracked to CRM";
/// R-M2: the property linking an item to its CRM record.
pub const X_CRM_ID: &str = "X-CRM-ID";
/// R-M2: `X-CRM-REGARDING;X-CRM-SET=<set>:<uuid>`.
pub const X_CRM_REGARDING: &str = "X-CRM-REGARDING";
pub const X_CRM_SET: &str = "X-CRM-SET";
/// R-F2: the CRM entity set of a VEVENT or VTODO.
pub const X_CRM_ENTITY: &str = "X-CRM-ENTITY";
/// The record's `time_zone` when no `TZID` can carry it (all-day events,
/// zones the tz database does not know, times a `TZID` cannot express).
pub const X_CRM_TIME_ZONE: &str = "X-CRM-TIME-ZONE";
/// ATTENDEE parameter holding the CRM's resolution of the address.
pub const X_CRM_RESOLVED: &str = "X-CRM-RESOLVED";
/// EMAIL parameter naming the CRM field when position cannot (`email2`
/// without `email`).
pub const X_CRM_FIELD: &str = "X-CRM-FIELD";
/// R-F7: the subject of an event or to-do without SUMMARY.
pub const NO_SUBJECT: &str = "(no subject)";
/// R-F7: the last name of a vCard that names no one (no N, FN, ORG or EMAIL).
pub const NO_NAME: &str = "(no name)";
/// PRODID written into the items.
pub const PRODID: &str = "-//crmsync//crmsync mapping//EN";

/// Largest item accepted by [`parse_item`] (and as an existing item): a
/// vCard with a photo is well below it.
pub const MAX_ITEM_BYTES: usize = 20 * 1024 * 1024;

/// The kind of mailbox item a set maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A vCard (`.vcf`): contacts.
    Contact,
    /// A VCALENDAR with VEVENTs (`.ics`): appointments, service appointments.
    Event,
    /// A VCALENDAR with one VTODO (`.ics`): tasks, phone calls, letters, faxes.
    Todo,
}

impl ItemKind {
    /// The kind for a set; `None` for sets that are not contacts, events or
    /// to-dos (emails map to messages, see `crate::email`).
    pub fn for_set(set: EntitySet) -> Option<ItemKind> {
        match set {
            EntitySet::Contacts => Some(ItemKind::Contact),
            EntitySet::Appointments | EntitySet::Serviceappointments => Some(ItemKind::Event),
            EntitySet::Tasks | EntitySet::Phonecalls | EntitySet::Letters | EntitySet::Faxes => {
                Some(ItemKind::Todo)
            }
            _ => None,
        }
    }

    pub fn file_extension(self) -> &'static str {
        match self {
            ItemKind::Contact => "vcf",
            ItemKind::Event | ItemKind::Todo => "ics",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ItemKind::Contact => "text/vcard; charset=utf-8",
            ItemKind::Event | ItemKind::Todo => "text/calendar; charset=utf-8",
        }
    }
}

/// The vCard version [`render_item`] writes (both are read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VcardVersion {
    V3,
    #[default]
    V4,
}

/// What the mailbox says about an item's state. Contacts have no state in
/// the mailbox ([`Status::Active`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// Not cancelled, not completed.
    #[default]
    Active,
    /// VTODO `STATUS:COMPLETED` (events have no such status).
    Completed,
    /// `STATUS:CANCELLED`.
    Canceled,
}

impl Status {
    /// `active`, `completed` or `canceled` (the `state` and `base_state` of
    /// push operations).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Completed => "completed",
            Status::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "active" => Some(Status::Active),
            "completed" => Some(Status::Completed),
            "canceled" => Some(Status::Canceled),
            _ => None,
        }
    }

    /// The status a record in `state` shows in the mailbox. Events cannot
    /// show "completed", so a completed appointment is [`Status::Active`] there.
    pub fn from_crm_state(set: EntitySet, state: &str) -> Status {
        match (ItemKind::for_set(set), state) {
            (Some(ItemKind::Contact) | None, _) => Status::Active,
            (_, "canceled") => Status::Canceled,
            (Some(ItemKind::Todo), "completed") => Status::Completed,
            _ => Status::Active,
        }
    }

    /// The CRM state for this mailbox status, given the record's current
    /// state (`None` for a record not yet in the CRM). An active status keeps
    /// a current state the mailbox cannot tell apart (open / scheduled, and a
    /// completed appointment) and otherwise gives the set's default state.
    pub fn crm_state(self, set: EntitySet, current: Option<&str>) -> String {
        let states = set.states();
        let current = current.filter(|c| states.contains(c));
        let kind = ItemKind::for_set(set);
        match (self, kind) {
            (_, Some(ItemKind::Contact) | None) => current.unwrap_or(set.default_state()),
            (Status::Canceled, _) => "canceled",
            (Status::Completed, _) => "completed",
            (Status::Active, Some(ItemKind::Event)) => match current {
                Some(c) if c != "canceled" => c,
                _ => set.default_state(),
            },
            (Status::Active, Some(ItemKind::Todo)) => match current {
                Some(c) if c != "canceled" && c != "completed" => c,
                _ => set.default_state(),
            },
        }
        .to_string()
    }
}

/// A modified or cancelled instance of a recurring series (R-E2): in the CRM
/// a record with `series_id` and `recurrence_id`, in the mailbox a VEVENT
/// with the series' UID and a `RECURRENCE-ID`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exception {
    /// The instance's original start, UTC (`2026-12-02T09:00:00Z`): the
    /// record's `recurrence_id`.
    pub recurrence_id: String,
    /// The exception record's id (`X-CRM-ID` of that VEVENT).
    pub crm_id: Option<Uuid>,
    pub status: Status,
    /// The instance's mailbox fields (all but `recurrence`).
    pub fields: Map<String, Value>,
}

/// One mailbox item in CRM terms: what [`parse_item`] reads and
/// [`render_item`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxItem {
    /// `contacts`, `appointments` (or `serviceappointments` per
    /// `X-CRM-ENTITY`), `tasks`/`phonecalls`/`letters`/`faxes`.
    pub set: EntitySet,
    /// The item's `UID`.
    pub uid: String,
    /// `X-CRM-ID` (R-M2): the linked record, if any.
    pub crm_id: Option<Uuid>,
    /// The `Tracked to CRM` category is present (R-M1).
    pub tracked: bool,
    pub status: Status,
    /// The set's mailbox fields (FieldDef.mailbox), normalized as the CRM
    /// stores them; absent = no value.
    pub fields: Map<String, Value>,
    /// Exceptions of a recurring series, in item order (events only).
    pub exceptions: Vec<Exception>,
    /// What was read around, one message each ("line 7: DTSTART ...").
    /// Ignored by [`render_item`].
    pub problems: Vec<String>,
}

impl MailboxItem {
    /// An empty item of `set` with `uid`.
    pub fn new(set: EntitySet, uid: impl Into<String>) -> MailboxItem {
        MailboxItem {
            set,
            uid: uid.into(),
            crm_id: None,
            tracked: false,
            status: Status::Active,
            fields: Map::new(),
            exceptions: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The item for a CRM record and (for a series) its exception records,
    /// which need `recurrence_id`. Fields are [`project_fields`]; the record's
    /// id becomes `X-CRM-ID`.
    pub fn from_records(
        record: &Record,
        exceptions: &[Record],
        uid: impl Into<String>,
        tracked: bool,
    ) -> MailboxItem {
        let set = record.set;
        let fields = project_fields(set, &record.fields);
        let series_zone = icalendar::all_day_zone(&fields);
        let exceptions = exceptions
            .iter()
            .filter_map(|e| {
                let rid = e.fields.get("recurrence_id")?.as_str()?;
                let mut fields = project_fields(set, &e.fields);
                fields.remove("recurrence");
                Some(Exception {
                    recurrence_id: icalendar::canonical_recurrence_id(rid, series_zone.as_ref())?,
                    crm_id: Some(e.id),
                    status: Status::from_crm_state(set, &e.state),
                    fields,
                })
            })
            .collect();
        MailboxItem {
            set,
            uid: uid.into(),
            crm_id: Some(record.id),
            tracked,
            status: Status::from_crm_state(set, &record.state),
            fields,
            exceptions,
            problems: Vec::new(),
        }
    }
}

/// How [`render_item`] writes.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a> {
    /// DTSTAMP, vCard REV, and the COMPLETED time of a newly completed to-do.
    pub timestamp: OffsetDateTime,
    /// Contacts only.
    pub vcard_version: VcardVersion,
    /// R-F4: the account name for ORG, when the user's "update company
    /// field" setting is on. `None` leaves ORG as it is.
    pub company: Option<&'a str>,
    /// The item as the mailbox holds it now: its unmapped properties,
    /// parameters and components are kept.
    pub existing: Option<&'a [u8]>,
    /// Fields whose mailbox value stays as `existing` has it (R-F1 fields
    /// that do not go to the mailbox, R-F3 fields the user may not read).
    pub keep_fields: &'a [&'a str],
}

impl RenderOptions<'_> {
    pub fn new(timestamp: OffsetDateTime) -> RenderOptions<'static> {
        RenderOptions {
            timestamp,
            vcard_version: VcardVersion::V4,
            company: None,
            existing: None,
            keep_fields: &[],
        }
    }
}

/// Why an item could not be read or written; names the line when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MappingError {
    /// 1-based line of the input (after nothing: physical lines).
    pub line: Option<usize>,
    pub message: String,
}

impl MappingError {
    pub(crate) fn new(message: impl Into<String>) -> MappingError {
        MappingError {
            line: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(line: usize, message: impl Into<String>) -> MappingError {
        MappingError {
            line: Some(line),
            message: message.into(),
        }
    }
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Reads one vCard or one VCALENDAR.
pub fn parse_item(bytes: &[u8]) -> Result<MailboxItem, MappingError> {
    let scanned = scan::scan(bytes)?;
    match scanned.root {
        scan::Root::Vcard => vcard::parse(&scanned),
        scan::Root::Vcalendar => icalendar::parse(&scanned),
    }
}

/// Writes `item` as a vCard (contacts) or VCALENDAR (events, to-dos).
/// Errors: a set with no such item (emails, accounts, ...), or an existing
/// item that cannot be read or is of another kind (the caller may then
/// render without it, replacing the user's copy).
pub fn render_item(
    item: &MailboxItem,
    options: &RenderOptions<'_>,
) -> Result<Vec<u8>, MappingError> {
    if item.uid.trim().is_empty() {
        return Err(MappingError::new(
            "the item has no UID; every vCard and calendar item needs one",
        ));
    }
    match ItemKind::for_set(item.set) {
        Some(ItemKind::Contact) => vcard::render(item, options),
        Some(kind) => icalendar::render(item, kind, options),
        None => Err(MappingError::new(format!(
            "{} records have no vCard or iCalendar form (emails map to messages)",
            item.set
        ))),
    }
}

/// The part of a record's fields a mailbox item holds, in the form
/// [`parse_item`] reads it back: the set's mailbox fields only; no empty
/// texts or attendee lists; `all_day: false` left out (it is the default);
/// an all-day event's start and end on the local midnights of its days; a
/// recurrence whose RRULE cannot be written left out.
pub fn project_fields(set: EntitySet, fields: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for def in set.fields().iter().filter(|d| d.mailbox) {
        let Some(value) = fields.get(def.name) else {
            continue;
        };
        let keep = match (def.kind, value) {
            (_, Value::Null) => false,
            (FieldKind::Text | FieldKind::LongText | FieldKind::Email, Value::String(s)) => {
                !s.is_empty()
            }
            (FieldKind::Attendees, Value::Array(a)) => !a.is_empty(),
            (FieldKind::Bool, Value::Bool(b)) => *b,
            (FieldKind::Recurrence, v) => icalendar::recurrence_is_writable(v),
            _ => true,
        };
        if keep {
            out.insert(def.name.to_string(), value.clone());
        }
    }
    if ItemKind::for_set(set) == Some(ItemKind::Event) {
        icalendar::snap_all_day(&mut out);
    }
    fill_required(set, &mut out, None);
    out
}

/// R-F7: what an item that omits a value the CRM requires stands for. An
/// event or to-do without SUMMARY is "(no subject)"; a contact without a
/// family name is named by its given name alone, else its organization
/// (`org`, the vCard's ORG), else its e-mail address. [`parse_item`] and
/// [`project_fields`] both apply it, so such a value reads back as it was
/// and is never written into the item unless it changes in the CRM.
pub(crate) fn fill_required(set: EntitySet, fields: &mut Map<String, Value>, org: Option<String>) {
    match ItemKind::for_set(set) {
        Some(ItemKind::Event | ItemKind::Todo) if !fields.contains_key("subject") => {
            fields.insert("subject".into(), NO_SUBJECT.into());
        }
        Some(ItemKind::Contact) if !fields.contains_key("last_name") => {
            let name = fields
                .remove("first_name")
                .or_else(|| org.map(Value::String))
                .or_else(|| fields.get("email").cloned())
                .unwrap_or_else(|| NO_NAME.into());
            fields.insert("last_name".into(), name);
        }
        _ => {}
    }
}

/// Checks and normalizes one field value read from a mailbox item with the
/// CRM's own rules. Over-long texts are cut (and reported); anything else
/// invalid is left out and reported.
pub(crate) fn put_field(
    set: EntitySet,
    fields: &mut Map<String, Value>,
    problems: &mut Vec<String>,
    name: &str,
    value: Value,
    at: &str,
) {
    let Some(def) = set.field(name) else {
        return;
    };
    let value = match (def.kind, value) {
        (FieldKind::Text | FieldKind::LongText | FieldKind::Email, Value::String(s))
            if s.is_empty() =>
        {
            return;
        }
        (FieldKind::Text | FieldKind::LongText, Value::String(s)) => {
            let max = if def.kind == FieldKind::Text {
                MAX_TEXT
            } else {
                MAX_LONG_TEXT
            };
            let mut s = s;
            if s.contains('\0') {
                s = s.replace('\0', "");
                problems.push(format!("{at}: NUL characters removed from {name}"));
            }
            if s.len() > max {
                let mut cut = max;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                problems.push(format!(
                    "{at}: {name} is longer than {max} bytes; the CRM keeps the first {cut}"
                ));
            }
            Value::String(s)
        }
        (_, v) => v,
    };
    match def.normalize(&value) {
        Ok(v) => {
            fields.insert(name.to_string(), v);
        }
        Err(e) => problems.push(format!("{at}: {name} {e}; the field is left out")),
    }
}
