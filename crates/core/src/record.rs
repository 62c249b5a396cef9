//! CRM records (SPEC §2) and the validation of what clients send.

use serde_json::{Map, Value};
use std::fmt;
use uuid::Uuid;

use crate::entity::EntitySet;
use crate::field::FieldKind;
use crate::time::parse_datetime;

/// Columns every record has, whatever its set.
pub const COMMON_FIELDS: [&str; 6] = [
    "id",
    "version",
    "owner_id",
    "state",
    "created_at",
    "modified_at",
];

/// A stored record: the common columns plus the set's own fields (nulls
/// omitted).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: Uuid,
    pub set: EntitySet,
    pub version: i64,
    pub owner_id: Uuid,
    pub state: String,
    pub created_at: String,
    pub modified_at: String,
    pub fields: Map<String, Value>,
}

impl Record {
    /// The record as the API shows it: common columns first, then fields.
    pub fn to_json(&self) -> Value {
        let mut out = Map::with_capacity(self.fields.len() + COMMON_FIELDS.len());
        out.insert("id".into(), self.id.to_string().into());
        out.insert("version".into(), self.version.into());
        out.insert("owner_id".into(), self.owner_id.to_string().into());
        out.insert("state".into(), self.state.clone().into());
        out.insert("created_at".into(), self.created_at.clone().into());
        out.insert("modified_at".into(), self.modified_at.clone().into());
        for (k, v) in &self.fields {
            out.insert(k.clone(), v.clone());
        }
        Value::Object(out)
    }

    /// Lower-cased text of the record's text fields, for `?q=` searches.
    pub fn search_text(&self) -> String {
        search_text(self.set, &self.fields)
    }
}

pub fn search_text(set: EntitySet, fields: &Map<String, Value>) -> String {
    let mut out = String::new();
    for def in set.fields() {
        if matches!(def.kind, FieldKind::Text | FieldKind::Email) {
            if let Some(Value::String(s)) = fields.get(def.name) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&s.to_lowercase());
            }
        }
    }
    out
}

/// One problem with one field of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Why an input was refused: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidRecord(pub Vec<FieldError>);

impl fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// What a client may send to create or change a record: the set's fields plus
/// `owner_id` and `state`. Nulls mean "clear" (on update).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordInput {
    pub owner_id: Option<Uuid>,
    pub state: Option<String>,
    pub fields: Map<String, Value>,
}

/// Parses a create or update body for `set`: unknown fields, read-only
/// columns and badly typed values are all reported together.
pub fn parse_input(set: EntitySet, body: &Value) -> Result<RecordInput, InvalidRecord> {
    let Some(obj) = body.as_object() else {
        return Err(InvalidRecord(vec![FieldError {
            field: "(body)".into(),
            message: "must be a JSON object of field names and values".into(),
        }]));
    };
    let mut errors = Vec::new();
    let mut input = RecordInput::default();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        })
    };
    for (name, value) in obj {
        match name.as_str() {
            "id" | "version" | "created_at" | "modified_at" => {
                err(name, "is set by the server and cannot be written".into())
            }
            "owner_id" => match value.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                Some(id) => input.owner_id = Some(id),
                None => err(name, "must be the UUID of a user".into()),
            },
            "state" => match value.as_str() {
                Some(s) if set.states().contains(&s) => input.state = Some(s.to_string()),
                _ => err(name, format!("must be one of: {}", set.states().join(", "))),
            },
            _ => match set.field(name) {
                None => err(
                    name,
                    format!(
                        "is not a field of {set}; fields are: {}",
                        set.fields()
                            .iter()
                            .map(|f| f.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Some(_) if value.is_null() => {
                    input.fields.insert(name.clone(), Value::Null);
                }
                Some(def) => match def.normalize(value) {
                    Ok(v) => {
                        input.fields.insert(name.clone(), v);
                    }
                    Err(message) => err(name, message),
                },
            },
        }
    }
    if errors.is_empty() {
        Ok(input)
    } else {
        Err(InvalidRecord(errors))
    }
}

/// Applies an input to the current fields (none for a create) and checks
/// the whole record: required fields present, end not before start.
/// Returns the new field map without nulls.
pub fn apply_input(
    set: EntitySet,
    current: Option<&Map<String, Value>>,
    input: &RecordInput,
) -> Result<Map<String, Value>, InvalidRecord> {
    let mut fields = current.cloned().unwrap_or_default();
    for (name, value) in &input.fields {
        if value.is_null() {
            fields.remove(name);
        } else {
            fields.insert(name.clone(), value.clone());
        }
    }
    check_record(set, &fields)?;
    // Canonical order (the set's field order), whatever order the input had.
    Ok(set
        .fields()
        .iter()
        .filter_map(|f| fields.get_key_value(f.name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

/// Whole-record checks that no single field can make.
pub fn check_record(set: EntitySet, fields: &Map<String, Value>) -> Result<(), InvalidRecord> {
    let mut errors = Vec::new();
    for def in set.fields().iter().filter(|f| f.required) {
        if !fields.contains_key(def.name) {
            errors.push(FieldError {
                field: def.name.into(),
                message: "is required".into(),
            });
        }
    }
    for (from, to) in set.time_ranges() {
        let time = |name: &str| {
            fields
                .get(name)
                .and_then(Value::as_str)
                .and_then(|s| parse_datetime(s).ok())
        };
        if let (Some(a), Some(b)) = (time(from), time(to)) {
            if b < a {
                errors.push(FieldError {
                    field: (*to).into(),
                    message: format!("must not be before '{from}'"),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidRecord(errors))
    }
}

/// The records a field map points to (reference fields and `regarding`),
/// which must exist when the record is written.
pub fn references(set: EntitySet, fields: &Map<String, Value>) -> Vec<(String, EntitySet, Uuid)> {
    let mut out = Vec::new();
    for def in set.fields() {
        let Some(value) = fields.get(def.name) else {
            continue;
        };
        match def.kind {
            FieldKind::Reference(target) => {
                if let Some(id) = value.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                    out.push((def.name.to_string(), target, id));
                }
            }
            FieldKind::Regarding => {
                let target = value
                    .get("set")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok());
                let id = value
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok());
                if let (Some(target), Some(id)) = (target, id) {
                    out.push((def.name.to_string(), target, id));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_needs_required_fields() {
        let input = parse_input(EntitySet::Contacts, &json!({"first_name": "Ann"})).unwrap();
        let err = apply_input(EntitySet::Contacts, None, &input).unwrap_err();
        assert_eq!(err.0[0].field, "last_name");
    }

    #[test]
    fn unknown_and_read_only_fields_are_all_reported() {
        let err = parse_input(
            EntitySet::Contacts,
            &json!({"id": "x", "shoe_size": 9, "email": "nope"}),
        )
        .unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["id", "shoe_size", "email"]);
        assert!(err.to_string().contains("not a field of contacts"));
    }

    #[test]
    fn end_not_before_start() {
        let body =
            json!({"subject": "s", "start": "2026-11-25T10:00:00Z", "end": "2026-11-25T09:00:00Z"});
        let input = parse_input(EntitySet::Appointments, &body).unwrap();
        let err = apply_input(EntitySet::Appointments, None, &input).unwrap_err();
        assert_eq!(err.0[0].field, "end");
        // Offsets are compared as instants, not as text.
        let body = json!({"subject": "s", "start": "2026-11-25T10:00:00+02:00", "end": "2026-11-25T09:00:00Z"});
        let input = parse_input(EntitySet::Appointments, &body).unwrap();
        assert!(apply_input(EntitySet::Appointments, None, &input).is_ok());
    }

    #[test]
    fn update_with_null_clears_but_not_required() {
        let current = json!({"last_name": "Lee", "email": "a@b.c"})
            .as_object()
            .unwrap()
            .clone();
        let input = parse_input(EntitySet::Contacts, &json!({"email": null})).unwrap();
        let fields = apply_input(EntitySet::Contacts, Some(&current), &input).unwrap();
        assert!(!fields.contains_key("email"));
        let input = parse_input(EntitySet::Contacts, &json!({"last_name": null})).unwrap();
        assert!(apply_input(EntitySet::Contacts, Some(&current), &input).is_err());
    }

    #[test]
    fn state_must_belong_to_the_set() {
        assert!(parse_input(EntitySet::Leads, &json!({"state": "qualified"})).is_ok());
        assert!(parse_input(EntitySet::Leads, &json!({"state": "won"})).is_err());
    }

    #[test]
    fn references_are_listed() {
        let acc = Uuid::new_v4();
        let fields = json!({"last_name": "x", "account_id": acc})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            references(EntitySet::Contacts, &fields),
            vec![("account_id".into(), EntitySet::Accounts, acc)]
        );
    }
}
