//! Field kinds and the validation/normalization of one field value.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::entity::{EntitySet, REGARDING_SETS};
use crate::time::{parse_date, parse_datetime};

/// Longest accepted single-line text (a name, a phone number, a subject).
pub const MAX_TEXT: usize = 1_000;
/// Longest accepted multi-line text (notes, descriptions, email bodies).
pub const MAX_LONG_TEXT: usize = 1_000_000;

/// How a field's value is written in JSON and what it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    LongText,
    Email,
    Bool,
    /// RFC 3339 date-time; stored in UTC.
    DateTime,
    /// `YYYY-MM-DD`.
    Date,
    /// An IANA time zone name such as `Europe/Berlin`.
    TimeZone,
    Enum(&'static [&'static str]),
    /// Integer 0..=100.
    Percent,
    /// Integer ≥ 0.
    Count,
    /// Non-negative amount.
    Money,
    /// The id of a record of the given set.
    Reference(EntitySet),
    /// `{"set": ..., "id": ...}` pointing to an account, contact, lead, opportunity or case.
    Regarding,
    /// `[{"email", "role": required|optional, "resolved"}]`.
    Attendees,
    /// `{"rrule": "...", "exdates": [date-time...]}`.
    Recurrence,
    /// A list of email addresses.
    AddressList,
    /// `[{"address", "role", "resolved"}]`.
    Parties,
}

/// A field of an entity set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDef {
    pub name: &'static str,
    pub kind: FieldKind,
    pub required: bool,
    /// Whether the field has a mailbox counterpart (vCard, iCalendar or
    /// message property); fields without one never synchronize (R-F1).
    pub mailbox: bool,
}

impl FieldDef {
    /// Checks one non-null value and returns its normalized form, or a
    /// message for people saying what is wrong.
    pub fn normalize(&self, value: &Value) -> Result<Value, String> {
        normalize(self.kind, value)
    }
}

fn normalize(kind: FieldKind, value: &Value) -> Result<Value, String> {
    match kind {
        FieldKind::Text => text(value, MAX_TEXT),
        FieldKind::LongText => text(value, MAX_LONG_TEXT),
        FieldKind::Email => email(value).map(Value::String),
        FieldKind::Bool => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| "must be true or false".to_string()),
        FieldKind::DateTime => {
            let s = value
                .as_str()
                .ok_or("must be an RFC 3339 date-time string")?;
            parse_datetime(s).map(|t| Value::String(crate::time::format_datetime(t)))
        }
        FieldKind::Date => {
            let s = value.as_str().ok_or("must be a date string YYYY-MM-DD")?;
            parse_date(s).map(|_| Value::String(s.to_string()))
        }
        FieldKind::TimeZone => time_zone(value),
        FieldKind::Enum(allowed) => match value.as_str() {
            Some(s) if allowed.contains(&s) => Ok(value.clone()),
            _ => Err(format!("must be one of: {}", allowed.join(", "))),
        },
        FieldKind::Percent => match value.as_i64() {
            Some(n) if (0..=100).contains(&n) => Ok(json!(n)),
            _ => Err("must be a whole number from 0 to 100".into()),
        },
        FieldKind::Count => match value.as_i64() {
            Some(n) if n >= 0 => Ok(json!(n)),
            _ => Err("must be a whole number of 0 or more".into()),
        },
        FieldKind::Money => match value.as_f64() {
            Some(n) if n >= 0.0 && n.is_finite() && n < 1e15 => Ok(value.clone()),
            _ => Err("must be a number from 0 to 10^15".into()),
        },
        FieldKind::Reference(_) => uuid(value).map(|u| Value::String(u.to_string())),
        FieldKind::Regarding => regarding(value),
        FieldKind::Attendees => attendees(value),
        FieldKind::Recurrence => recurrence(value),
        FieldKind::AddressList => {
            let items = value
                .as_array()
                .ok_or("must be a list of email addresses")?;
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    email(v)
                        .map(Value::String)
                        .map_err(|e| format!("[{i}] {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        FieldKind::Parties => parties(value),
    }
}

fn text(value: &Value, max: usize) -> Result<Value, String> {
    match value.as_str() {
        // PostgreSQL cannot store NUL in text or JSON; no mail client needs it.
        Some(s) if s.contains('\0') => Err("must not contain NUL characters (\\u0000)".into()),
        Some(s) if s.len() <= max => Ok(value.clone()),
        Some(_) => Err(format!("is longer than {max} bytes")),
        None => Err("must be a string".into()),
    }
}

/// A light syntax check (local@domain, no spaces, one `@`): mailbox
/// addresses in the wild are messier than RFC 5321, so only what can never
/// be an address is refused. Addresses are kept as written.
pub fn email(value: &Value) -> Result<String, String> {
    let s = value.as_str().ok_or("must be an email address string")?;
    let valid = s.len() <= 320
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c));
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{}' is not an email address (expected name@domain)",
            shorten(s)
        ))
    }
}

fn uuid(value: &Value) -> Result<Uuid, String> {
    value
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| "must be a UUID string".to_string())
}

fn time_zone(value: &Value) -> Result<Value, String> {
    // Syntax only (Area/Location, UTC, Etc/GMT+1): the server carries no tz
    // database; the agent resolves the name when it writes VTIMEZONE.
    let s = value
        .as_str()
        .ok_or("must be an IANA time zone name such as Europe/Berlin")?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if ok {
        Ok(value.clone())
    } else {
        Err(format!(
            "'{}' is not an IANA time zone name such as Europe/Berlin",
            shorten(s)
        ))
    }
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("must be an object {what}"))
}

fn only_keys(obj: &Map<String, Value>, keys: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "has unknown key '{k}'; allowed: {}",
            keys.join(", ")
        )),
        None => Ok(()),
    }
}

/// `{"set", "id"}` where set is one of [`REGARDING_SETS`]; also the shape of
/// `resolved` in attendees and parties, which may point to any record.
fn record_ref(value: &Value, sets: &[EntitySet]) -> Result<Value, String> {
    let obj = object(value, r#"{"set": "<entity set>", "id": "<uuid>"}"#)?;
    only_keys(obj, &["set", "id"])?;
    let set: EntitySet = obj
        .get("set")
        .and_then(Value::as_str)
        .ok_or("needs 'set'")?
        .parse()
        .map_err(|e: crate::entity::UnknownEntitySet| e.to_string())?;
    if !sets.contains(&set) {
        return Err(format!(
            "cannot point to {set}; use one of: {}",
            sets.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let id = uuid(obj.get("id").unwrap_or(&Value::Null)).map_err(|e| format!("'id' {e}"))?;
    Ok(json!({"set": set, "id": id}))
}

fn regarding(value: &Value) -> Result<Value, String> {
    record_ref(value, REGARDING_SETS)
}

fn resolved(value: Option<&Value>) -> Result<Value, String> {
    match value {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(v) => record_ref(v, &EntitySet::ALL).map_err(|e| format!("'resolved' {e}")),
    }
}

fn attendees(value: &Value) -> Result<Value, String> {
    let items = value.as_array().ok_or("must be a list of attendees")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let attendee = || -> Result<Value, String> {
            let obj = object(item, r#"{"email", "role", "resolved"}"#)?;
            only_keys(obj, &["email", "role", "resolved"])?;
            let email = email(obj.get("email").unwrap_or(&Value::Null))?;
            let role = match obj.get("role").map(|r| r.as_str()) {
                None | Some(Some("required")) => "required",
                Some(Some("optional")) => "optional",
                _ => return Err("'role' must be required or optional".into()),
            };
            Ok(json!({"email": email, "role": role, "resolved": resolved(obj.get("resolved"))?}))
        };
        out.push(attendee().map_err(|e| format!("[{i}] {e}"))?);
    }
    Ok(Value::Array(out))
}

fn parties(value: &Value) -> Result<Value, String> {
    const ROLES: &[&str] = &["from", "to", "cc", "bcc"];
    let items = value.as_array().ok_or("must be a list of parties")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let party = || -> Result<Value, String> {
            let obj = object(item, r#"{"address", "role", "resolved"}"#)?;
            only_keys(obj, &["address", "role", "resolved"])?;
            let address = email(obj.get("address").unwrap_or(&Value::Null))?;
            let role = obj
                .get("role")
                .and_then(Value::as_str)
                .filter(|r| ROLES.contains(r));
            let role =
                role.ok_or_else(|| format!("'role' must be one of: {}", ROLES.join(", ")))?;
            Ok(
                json!({"address": address, "role": role, "resolved": resolved(obj.get("resolved"))?}),
            )
        };
        out.push(party().map_err(|e| format!("[{i}] {e}"))?);
    }
    Ok(Value::Array(out))
}

fn recurrence(value: &Value) -> Result<Value, String> {
    let obj = object(value, r#"{"rrule": "FREQ=...", "exdates": [...]}"#)?;
    only_keys(obj, &["rrule", "exdates"])?;
    let rrule = obj
        .get("rrule")
        .and_then(Value::as_str)
        .ok_or("needs 'rrule'")?;
    check_rrule(rrule)?;
    let exdates = match obj.get("exdates") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .map(|d| {
                let s = d.as_str().ok_or("'exdates' must hold date-time strings")?;
                parse_datetime(s).map(|t| Value::String(crate::time::format_datetime(t)))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("'exdates' must be a list of date-times".into()),
    };
    Ok(json!({"rrule": rrule, "exdates": exdates}))
}

/// Structural check of an RFC 5545 RRULE value: `KEY=VALUE` parts, a known
/// FREQ, no COUNT together with UNTIL. Expansion (and its full grammar)
/// belongs to the agent's iCalendar mapping.
fn check_rrule(rrule: &str) -> Result<(), String> {
    const FREQS: &[&str] = &[
        "SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY",
    ];
    const KEYS: &[&str] = &[
        "FREQ",
        "UNTIL",
        "COUNT",
        "INTERVAL",
        "BYSECOND",
        "BYMINUTE",
        "BYHOUR",
        "BYDAY",
        "BYMONTHDAY",
        "BYYEARDAY",
        "BYWEEKNO",
        "BYMONTH",
        "BYSETPOS",
        "WKST",
    ];
    let rrule = rrule.strip_prefix("RRULE:").unwrap_or(rrule);
    let mut freq = None;
    let mut seen = Vec::new();
    for part in rrule.split(';') {
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| format!("'rrule' part '{}' is not KEY=VALUE", shorten(part)))?;
        if !KEYS.contains(&key) {
            return Err(format!("'rrule' has unknown part '{}'", shorten(key)));
        }
        if val.is_empty() || seen.contains(&key) {
            return Err(format!("'rrule' part {key} is empty or repeated"));
        }
        seen.push(key);
        if key == "FREQ" {
            freq = Some(val);
        }
    }
    match freq {
        Some(f) if FREQS.contains(&f) => {}
        _ => return Err(format!("'rrule' needs FREQ={}", FREQS.join("|"))),
    }
    if seen.contains(&"COUNT") && seen.contains(&"UNTIL") {
        return Err("'rrule' may not have both COUNT and UNTIL".into());
    }
    Ok(())
}

/// Cuts a user-supplied value for quoting in an error message.
pub(crate) fn shorten(s: &str) -> String {
    if s.chars().count() <= 60 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(60).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(email(&json!("ann@example.com")).is_ok());
        assert!(email(&json!("all-staff@lists.example.com")).is_ok());
        for bad in ["ann", "@x.com", "ann@", "a b@x.com", "a@b@c", "a@.x", ""] {
            assert!(email(&json!(bad)).is_err(), "{bad}");
        }
        assert!(email(&json!(5)).is_err());
    }

    #[test]
    fn regarding_only_points_to_allowed_sets() {
        let id = Uuid::new_v4();
        assert!(regarding(&json!({"set": "accounts", "id": id})).is_ok());
        assert!(regarding(&json!({"set": "tasks", "id": id}))
            .unwrap_err()
            .contains("cannot point"));
        assert!(regarding(&json!({"set": "accounts"})).is_err());
        assert!(regarding(&json!({"set": "accounts", "id": id, "x": 1})).is_err());
    }

    #[test]
    fn nul_characters_are_refused() {
        assert!(text(&json!("a\u{0}b"), MAX_TEXT)
            .unwrap_err()
            .contains("NUL"));
        assert!(text(&json!("ab"), MAX_TEXT).is_ok());
    }

    #[test]
    fn rrules() {
        assert!(check_rrule("FREQ=WEEKLY;BYDAY=MO,WE").is_ok());
        assert!(check_rrule("FREQ=DAILY").is_ok());
        assert!(check_rrule("BYDAY=MO").is_err());
        assert!(check_rrule("FREQ=OFTEN").is_err());
        assert!(check_rrule("FREQ=DAILY;COUNT=3;UNTIL=20270101T000000Z").is_err());
        assert!(check_rrule("FREQ=DAILY;;").is_err());
    }

    #[test]
    fn attendees_default_role_and_reject_junk() {
        let v = attendees(&json!([{"email": "a@x.org"}])).unwrap();
        assert_eq!(
            v,
            json!([{"email": "a@x.org", "role": "required", "resolved": null}])
        );
        assert!(attendees(&json!([{"email": "a@x.org", "role": "boss"}])).is_err());
        assert!(attendees(&json!("a@x.org")).is_err());
    }

    #[test]
    fn numbers_and_enums() {
        let pct = FieldKind::Percent;
        assert!(normalize(pct, &json!(100)).is_ok());
        assert!(normalize(pct, &json!(101)).is_err());
        assert!(normalize(pct, &json!(1.5)).is_err());
        assert!(normalize(FieldKind::Money, &json!(-1)).is_err());
        assert!(normalize(FieldKind::Enum(&["a"]), &json!("b")).is_err());
        assert!(normalize(FieldKind::TimeZone, &json!("Europe/Berlin")).is_ok());
        assert!(normalize(FieldKind::TimeZone, &json!("Not a zone")).is_err());
    }
}
