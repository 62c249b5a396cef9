//! Contacts ↔ vCard (3.0 and 4.0 read; 4.0, or 3.0 when asked, written).

use std::collections::BTreeMap;

use calcard::common::PartialDateTime;
use calcard::vcard::{
    VCard, VCardEntry, VCardParameter, VCardParameterName as PN, VCardParameterValue as PV,
    VCardProperty as P, VCardType, VCardValue as V, VCardVersion,
};
use calcard::{Entry, Parser};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::scan::{self, Scanned};
use super::{
    fill_required, put_field, MailboxItem, MappingError, RenderOptions, Status, VcardVersion,
    PRODID, TRACKED_CATEGORY, X_CRM_FIELD, X_CRM_ID,
};
use crate::entity::EntitySet;

const SET: EntitySet = EntitySet::Contacts;

fn read_card(scanned: &Scanned) -> Result<VCard, MappingError> {
    match Parser::new(&scanned.text).entry() {
        Entry::VCard(card) => Ok(card),
        _ => Err(MappingError::at(1, "the vCard could not be read")),
    }
}

/// Which entry each mapped field lives in (indexes into `card.entries`).
#[derive(Debug, Default)]
struct Slots {
    n: Option<usize>,
    fn_: Option<usize>,
    email: Option<usize>,
    email2: Option<usize>,
    phone: Option<usize>,
    mobile: Option<usize>,
    adr: Option<usize>,
    title: Option<usize>,
    note: Option<usize>,
    bday: Option<usize>,
    org: Option<usize>,
    uid: Option<usize>,
    crm_id: Option<usize>,
}

/// The TYPEs of an entry, lower-cased (`TYPE=WORK,VOICE`, `TEL;CELL`).
fn types(e: &VCardEntry) -> Vec<String> {
    e.parameters(&PN::Type)
        .filter_map(PV::as_text)
        .flat_map(|t| t.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

fn crm_field_tag(e: &VCardEntry) -> Option<String> {
    e.parameters(&PN::Other(X_CRM_FIELD.into()))
        .find_map(PV::as_text)
        .map(|t| t.trim().to_ascii_lowercase())
}

fn is_mobile(types: &[String]) -> bool {
    types
        .iter()
        .any(|t| matches!(t.as_str(), "cell" | "mobile" | "iphone"))
}

fn slots(card: &VCard) -> Slots {
    let mut s = Slots::default();
    let first = |p: &P| card.entries.iter().position(|e| &e.name == p);
    s.n = first(&P::N);
    s.fn_ = first(&P::Fn);
    s.title = first(&P::Title);
    s.note = first(&P::Note);
    s.bday = first(&P::Bday);
    s.org = first(&P::Org);
    s.uid = first(&P::Uid);
    s.crm_id = first(&P::Other(X_CRM_ID.into()));

    // email, email2: the first two EMAILs, unless tagged.
    let emails: Vec<usize> = (0..card.entries.len())
        .filter(|&i| card.entries[i].name == P::Email)
        .collect();
    let tagged = |name: &str| {
        emails
            .iter()
            .copied()
            .find(|&i| crm_field_tag(&card.entries[i]).as_deref() == Some(name))
    };
    let (t1, t2) = (tagged("email"), tagged("email2"));
    let mut untagged = emails
        .iter()
        .copied()
        .filter(|&i| Some(i) != t1 && Some(i) != t2);
    s.email = t1.or_else(|| untagged.next());
    s.email2 = t2.or_else(|| untagged.next());

    let tels: Vec<(usize, Vec<String>)> = (0..card.entries.len())
        .filter(|&i| card.entries[i].name == P::Tel)
        .map(|i| (i, types(&card.entries[i])))
        .collect();
    s.mobile = tels.iter().find(|(_, t)| is_mobile(t)).map(|(i, _)| *i);
    let not_other = |t: &[String]| {
        !is_mobile(t)
            && !t
                .iter()
                .any(|t| matches!(t.as_str(), "fax" | "pager" | "home" | "textphone" | "video"))
    };
    s.phone = tels
        .iter()
        .find(|(_, t)| t.iter().any(|t| t == "work") && not_other(t))
        .or_else(|| {
            tels.iter().find(|(_, t)| {
                not_other(t) && t.iter().all(|t| matches!(t.as_str(), "voice" | "pref"))
            })
        })
        .map(|(i, _)| *i);

    let adrs: Vec<(usize, Vec<String>)> = (0..card.entries.len())
        .filter(|&i| card.entries[i].name == P::Adr)
        .map(|i| (i, types(&card.entries[i])))
        .collect();
    s.adr = adrs
        .iter()
        .find(|(_, t)| t.iter().any(|t| t == "work"))
        .or_else(|| adrs.iter().find(|(_, t)| !t.iter().any(|t| t == "home")))
        .map(|(i, _)| *i);
    s
}

fn component(e: &VCardEntry, i: usize) -> String {
    match e.values.get(i) {
        Some(V::Text(s)) => s.clone(),
        Some(V::Component(parts)) => parts.join(","),
        _ => String::new(),
    }
}

fn text(e: &VCardEntry) -> String {
    let parts: Vec<String> = (0..e.values.len()).map(|i| component(e, i)).collect();
    parts.join(",")
}

fn phone_text(e: &VCardEntry) -> String {
    let t = text(e);
    let trimmed = t.trim();
    match trimmed.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("tel:") => trimmed[4..].to_string(),
        _ => t,
    }
}

fn bday_text(e: &VCardEntry) -> Option<String> {
    match e.values.first()? {
        V::PartialDateTime(p) => Some(format!("{:04}-{:02}-{:02}", p.year?, p.month?, p.day?)),
        V::Text(t) => {
            let t = t.trim();
            let digits: String = t.chars().filter(|c| *c != '-').collect();
            (digits.len() == 8 && digits.chars().all(|c| c.is_ascii_digit()) && !t.starts_with('-'))
                .then(|| format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..]))
        }
        _ => None,
    }
}

struct Read {
    fields: Map<String, Value>,
    crm_id: Option<Uuid>,
    tracked: bool,
}

fn read_fields(card: &VCard, scanned: &Scanned, problems: &mut Vec<String>) -> Read {
    let s = slots(card);
    let at = |prop: &str| scanned.at(Some(0), prop);
    let mut fields = Map::new();
    let put = |fields: &mut Map<String, Value>,
               problems: &mut Vec<String>,
               name: &str,
               v: String,
               at: &str| { put_field(SET, fields, problems, name, v.into(), at) };
    let e = |i: Option<usize>| i.and_then(|i| card.entries.get(i));

    let n = e(s.n).filter(|n| !component(n, 0).is_empty() || !component(n, 1).is_empty());
    let fn_ = e(s.fn_).filter(|f| !text(f).trim().is_empty());
    if let Some(n) = n {
        put(
            &mut fields,
            problems,
            "last_name",
            component(n, 0),
            &at("N"),
        );
        put(
            &mut fields,
            problems,
            "first_name",
            component(n, 1),
            &at("N"),
        );
    } else if let Some(f) = fn_ {
        let full = text(f);
        let full = full.trim();
        let (first, last) = match full.rsplit_once(' ') {
            Some((first, last)) => (first.trim(), last),
            None => ("", full),
        };
        problems.push(format!(
            "{}: no N; last and first name taken from FN '{}'",
            at("FN"),
            crate::field::shorten(full)
        ));
        put(
            &mut fields,
            problems,
            "last_name",
            last.to_string(),
            &at("FN"),
        );
        put(
            &mut fields,
            problems,
            "first_name",
            first.to_string(),
            &at("FN"),
        );
    }
    if let Some(x) = e(s.email) {
        put(
            &mut fields,
            problems,
            "email",
            text(x).trim().to_string(),
            &at("EMAIL"),
        );
    }
    name_without_family(card, &s, &mut fields);
    if let Some(x) = e(s.email2) {
        put(
            &mut fields,
            problems,
            "email2",
            text(x).trim().to_string(),
            &at("EMAIL"),
        );
    }
    if let Some(x) = e(s.phone) {
        put(&mut fields, problems, "phone", phone_text(x), &at("TEL"));
    }
    if let Some(x) = e(s.mobile) {
        put(&mut fields, problems, "mobile", phone_text(x), &at("TEL"));
    }
    if let Some(x) = e(s.title) {
        put(&mut fields, problems, "job_title", text(x), &at("TITLE"));
    }
    if let Some(x) = e(s.adr) {
        for (i, name) in [
            (2, "street"),
            (3, "city"),
            (5, "postal_code"),
            (6, "country"),
        ] {
            put(&mut fields, problems, name, component(x, i), &at("ADR"));
        }
    }
    if let Some(x) = e(s.bday) {
        match bday_text(x) {
            Some(d) => put(&mut fields, problems, "birthday", d, &at("BDAY")),
            None => problems.push(format!(
                "{}: not a date with a year; the birthday is left out",
                at("BDAY")
            )),
        }
    }
    if let Some(x) = e(s.note) {
        put(&mut fields, problems, "notes", text(x), &at("NOTE"));
    }
    let mut crm_id = None;
    if let Some(x) = e(s.crm_id) {
        let id = text(x);
        match Uuid::parse_str(id.trim()) {
            Ok(id) => crm_id = Some(id),
            Err(_) => problems.push(format!(
                "{}: '{}' is not a UUID; the contact is read as not linked",
                at(X_CRM_ID),
                crate::field::shorten(&id)
            )),
        }
    }
    let tracked = card
        .entries
        .iter()
        .filter(|e| e.name == P::Categories)
        .flat_map(|e| e.values.iter())
        .filter_map(V::as_text)
        .any(is_marker);
    Read {
        fields,
        crm_id,
        tracked,
    }
}

/// R-F7: FN and N are optional in the vCards clients write, but the CRM
/// needs a last name: see [`fill_required`] (ORG is read for this only).
fn name_without_family(card: &VCard, s: &Slots, fields: &mut Map<String, Value>) {
    let org = s
        .org
        .and_then(|i| card.entries.get(i))
        .map(|o| component(o, 0).trim().to_string())
        .filter(|o| !o.is_empty());
    fill_required(SET, fields, org);
}

fn is_marker(category: &str) -> bool {
    category.trim().eq_ignore_ascii_case(TRACKED_CATEGORY)
}

fn uid_of(card: &VCard) -> Option<String> {
    card.entries
        .iter()
        .find(|e| e.name == P::Uid)
        .map(text)
        .filter(|u| !u.trim().is_empty())
}

pub(super) fn parse(scanned: &Scanned) -> Result<MailboxItem, MappingError> {
    let card = read_card(scanned)?;
    let uid = uid_of(&card).ok_or_else(|| {
        MappingError::at(
            scanned.begin_line(Some(0)).unwrap_or(1),
            "the vCard has no UID; give it one (UID:<unique id>) so it can be synchronized",
        )
    })?;
    let mut problems = scanned.problems.clone();
    let read = read_fields(&card, scanned, &mut problems);
    Ok(MailboxItem {
        set: SET,
        uid,
        crm_id: read.crm_id,
        tracked: read.tracked,
        status: Status::Active,
        fields: read.fields,
        exceptions: Vec::new(),
        problems,
    })
}

fn new_entry(name: P, params: Vec<VCardParameter>, values: Vec<V>) -> VCardEntry {
    VCardEntry {
        group: None,
        name,
        params,
        values,
    }
}

fn type_param(t: VCardType) -> VCardParameter {
    VCardParameter {
        name: PN::Type,
        value: PV::Type(t),
    }
}

fn with_values(mut e: VCardEntry, values: Vec<V>) -> VCardEntry {
    e.values = values;
    e
}

pub(super) fn render(
    item: &MailboxItem,
    opts: &RenderOptions<'_>,
) -> Result<Vec<u8>, MappingError> {
    let (mut card, old) = match opts.existing {
        None => (VCard::default(), None),
        Some(bytes) => {
            let scanned = scan::scan(bytes).map_err(existing_error)?;
            if scanned.root != scan::Root::Vcard {
                return Err(MappingError::new(
                    "the existing item is a VCALENDAR, not a vCard",
                ));
            }
            let card = read_card(&scanned).map_err(existing_error)?;
            let old = read_fields(&card, &scanned, &mut Vec::new());
            (card, Some(old))
        }
    };
    let mut new = item.fields.clone();
    for name in opts.keep_fields {
        match old.as_ref().and_then(|o| o.fields.get(*name)) {
            Some(v) => new.insert(name.to_string(), v.clone()),
            None => new.remove(*name),
        };
    }
    let old_fields = old.as_ref().map(|o| &o.fields);
    let changed = |names: &[&str]| {
        names
            .iter()
            .any(|n| old_fields.and_then(|f| f.get(*n)) != new.get(*n))
    };
    let value = |name: &str| {
        new.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };

    let s = slots(&card);
    // Index → what replaces that entry (nothing = removed); then appends.
    let mut edits: BTreeMap<usize, Vec<VCardEntry>> = BTreeMap::new();
    let mut appends: Vec<VCardEntry> = Vec::new();
    let get = |i: Option<usize>| i.and_then(|i| card.entries.get(i)).cloned();
    let set_one = |edits: &mut BTreeMap<usize, Vec<VCardEntry>>,
                   appends: &mut Vec<VCardEntry>,
                   slot: Option<usize>,
                   entry: Option<VCardEntry>| match (slot, entry) {
        (Some(i), e) => {
            edits.insert(i, e.into_iter().collect());
        }
        (None, Some(e)) => appends.push(e),
        (None, None) => {}
    };

    set_one(
        &mut edits,
        &mut appends,
        s.uid,
        Some(new_entry(P::Uid, vec![], vec![V::Text(item.uid.clone())])),
    );

    // N and FN.
    let names_changed = changed(&["first_name", "last_name"]);
    // R-F7: a card without N or FN keeps it so until the name changes in
    // the CRM (its name is read from FN, ORG or EMAIL).
    if names_changed {
        let last = value("last_name").unwrap_or_default();
        let first = value("first_name").unwrap_or_default();
        let n = match get(s.n) {
            Some(mut n) => {
                while n.values.len() < 5 {
                    n.values.push(V::Text(String::new()));
                }
                n.values[0] = V::Text(last);
                n.values[1] = V::Text(first);
                n
            }
            None => new_entry(
                P::N,
                vec![],
                vec![
                    V::Text(last),
                    V::Text(first),
                    V::Text(String::new()),
                    V::Text(String::new()),
                    V::Text(String::new()),
                ],
            ),
        };
        set_one(&mut edits, &mut appends, s.n, Some(n));
    }
    if names_changed {
        let full = [value("first_name"), value("last_name")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let full = if full.trim().is_empty() {
            value("email").unwrap_or_default()
        } else {
            full
        };
        let f = match get(s.fn_) {
            Some(f) => with_values(f, vec![V::Text(full)]),
            None => new_entry(P::Fn, vec![], vec![V::Text(full)]),
        };
        set_one(&mut edits, &mut appends, s.fn_, Some(f));
    }

    // EMAIL: both slots are written together, in order, at the first's place.
    if changed(&["email", "email2"]) {
        let tag = PN::Other(X_CRM_FIELD.into());
        let make = |slot: Option<usize>, v: Option<String>, tagged: bool| {
            let v = v?;
            let mut e = match get(slot) {
                Some(e) => with_values(e, vec![V::Text(v)]),
                None => new_entry(
                    P::Email,
                    vec![type_param(VCardType::Work)],
                    vec![V::Text(v)],
                ),
            };
            e.params.retain(|p| p.name != tag);
            if tagged {
                e.params.push(VCardParameter {
                    name: tag.clone(),
                    value: PV::Text("email2".into()),
                });
            }
            Some(e)
        };
        let email = value("email");
        let e1 = make(s.email, email.clone(), false);
        let e2 = make(s.email2, value("email2"), email.is_none());
        let both: Vec<VCardEntry> = e1.into_iter().chain(e2).collect();
        match [s.email, s.email2].into_iter().flatten().min() {
            Some(at) => {
                for i in [s.email, s.email2].into_iter().flatten() {
                    edits.insert(i, Vec::new());
                }
                edits.insert(at, both);
            }
            None => appends.extend(both),
        }
    }

    let simple = |name: &str, slot: Option<usize>, prop: P, params: Vec<VCardParameter>| {
        value(name).map(|v| match get(slot) {
            Some(mut e) => {
                // A kept `VALUE=uri` (tel:...) would not fit the new text.
                e.params.retain(|p| p.name != PN::Value);
                with_values(e, vec![V::Text(v)])
            }
            None => new_entry(prop, params, vec![V::Text(v)]),
        })
    };
    if changed(&["phone"]) {
        let e = simple(
            "phone",
            s.phone,
            P::Tel,
            vec![type_param(VCardType::Work), type_param(VCardType::Voice)],
        );
        set_one(&mut edits, &mut appends, s.phone, e);
    }
    if changed(&["mobile"]) {
        let e = simple(
            "mobile",
            s.mobile,
            P::Tel,
            vec![type_param(VCardType::Cell)],
        );
        set_one(&mut edits, &mut appends, s.mobile, e);
    }
    if changed(&["street", "city", "postal_code", "country"]) {
        let mut adr = get(s.adr)
            .unwrap_or_else(|| new_entry(P::Adr, vec![type_param(VCardType::Work)], Vec::new()));
        while adr.values.len() < 7 {
            adr.values.push(V::Text(String::new()));
        }
        for (i, name) in [
            (2, "street"),
            (3, "city"),
            (5, "postal_code"),
            (6, "country"),
        ] {
            adr.values[i] = V::Text(value(name).unwrap_or_default());
        }
        let empty = adr
            .values
            .iter()
            .all(|v| matches!(v, V::Text(t) if t.is_empty()));
        set_one(&mut edits, &mut appends, s.adr, (!empty).then_some(adr));
    }
    if changed(&["job_title"]) {
        let e = simple("job_title", s.title, P::Title, vec![]);
        set_one(&mut edits, &mut appends, s.title, e);
    }
    if changed(&["birthday"]) {
        let e = value("birthday").and_then(|d| {
            let date = crate::time::parse_date(&d).ok()?;
            Some(new_entry(
                P::Bday,
                vec![],
                vec![V::PartialDateTime(PartialDateTime {
                    year: u16::try_from(date.year()).ok(),
                    month: Some(u8::from(date.month())),
                    day: Some(date.day()),
                    ..PartialDateTime::default()
                })],
            ))
        });
        set_one(&mut edits, &mut appends, s.bday, e);
    }
    if changed(&["notes"]) {
        let e = simple("notes", s.note, P::Note, vec![]);
        set_one(&mut edits, &mut appends, s.note, e);
    }
    // R-F4: the company goes to the mailbox only, and only when given.
    if let Some(company) = opts.company.filter(|c| !c.is_empty()) {
        let e = new_entry(P::Org, vec![], vec![V::Text(company.to_string())]);
        set_one(&mut edits, &mut appends, s.org, Some(e));
    }
    set_one(
        &mut edits,
        &mut appends,
        s.crm_id,
        item.crm_id.map(|id| {
            new_entry(
                P::Other(X_CRM_ID.into()),
                vec![],
                vec![V::Text(id.to_string())],
            )
        }),
    );

    // Apply, then the properties every write refreshes.
    let old_entries = std::mem::take(&mut card.entries);
    for (i, e) in old_entries.into_iter().enumerate() {
        match edits.remove(&i) {
            Some(replacement) => card.entries.extend(replacement),
            None => card.entries.push(e),
        }
    }
    card.entries.extend(appends);
    card.entries
        .retain(|e| !matches!(e.name, P::Version | P::Prodid | P::Rev | P::Begin | P::End));
    write_categories(&mut card, item.tracked);
    card.entries
        .push(new_entry(P::Prodid, vec![], vec![V::Text(PRODID.into())]));
    let t = opts.timestamp.to_offset(time::UtcOffset::UTC);
    card.entries.push(new_entry(
        P::Rev,
        vec![],
        vec![V::PartialDateTime(PartialDateTime {
            year: u16::try_from(t.year()).ok(),
            month: Some(u8::from(t.month())),
            day: Some(t.day()),
            hour: Some(t.hour()),
            minute: Some(t.minute()),
            second: Some(t.second()),
            tz_hour: Some(0),
            tz_minute: Some(0),
            tz_minus: false,
        })],
    ));

    let version = match opts.vcard_version {
        VcardVersion::V3 => VCardVersion::V3_0,
        VcardVersion::V4 => VCardVersion::V4_0,
    };
    let mut out = String::new();
    card.write_to(&mut out, version)
        .map_err(|_| MappingError::new("the vCard could not be written"))?;
    Ok(out.into_bytes())
}

fn existing_error(e: MappingError) -> MappingError {
    MappingError {
        line: e.line,
        message: format!("the existing item cannot be read: {}", e.message),
    }
}

/// R-M1: adds or removes the marker; the user's other categories stay.
fn write_categories(card: &mut VCard, tracked: bool) {
    let has = card
        .entries
        .iter()
        .filter(|e| e.name == P::Categories)
        .flat_map(|e| e.values.iter())
        .filter_map(V::as_text)
        .any(is_marker);
    if tracked && !has {
        match card.entries.iter_mut().find(|e| e.name == P::Categories) {
            Some(e) => e.values.push(V::Text(TRACKED_CATEGORY.into())),
            None => card.entries.push(new_entry(
                P::Categories,
                vec![],
                vec![V::Text(TRACKED_CATEGORY.into())],
            )),
        }
    } else if !tracked && has {
        for e in card.entries.iter_mut().filter(|e| e.name == P::Categories) {
            e.values.retain(|v| !v.as_text().is_some_and(is_marker));
        }
        card.entries
            .retain(|e| e.name != P::Categories || !e.values.is_empty());
    }
}
