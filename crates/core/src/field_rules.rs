//! Field rules set by admins: sync-field directions (R-F1) and field-level
//! security (R-F3). Enforcement comes with the sync protocol.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::entity::EntitySet;

/// R-F1: which way a field synchronizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToMailbox,
    ToCrm,
    Both,
    None,
}

/// The directions of every field of one entity set.
pub type SyncFields = BTreeMap<String, Direction>;

/// Default directions: fields with a mailbox counterpart sync both ways,
/// the rest never (R-F1).
pub fn default_sync_fields(set: EntitySet) -> SyncFields {
    set.fields()
        .iter()
        .map(|f| {
            (
                f.name.to_string(),
                if f.mailbox {
                    Direction::Both
                } else {
                    Direction::None
                },
            )
        })
        .collect()
}

/// Applies `{"field": "direction", ...}` to the current directions; a field
/// without a mailbox counterpart can only be `none`.
pub fn patch_sync_fields(
    set: EntitySet,
    current: &SyncFields,
    patch: &Value,
) -> Result<SyncFields, String> {
    const SHAPE: &str = "the body must be an object of field names and directions (to_mailbox, to_crm, both, none), or the document the GET returns";
    let mut obj = patch.as_object().ok_or(SHAPE)?;
    // The document a GET returns (`{"entity_set", "fields"}`) is accepted as
    // it is, so a settings page can write back what it read.
    if let Some(fields) = obj.get("fields") {
        if let Some(k) = obj.keys().find(|k| *k != "fields" && *k != "entity_set") {
            return Err(format!(
                "unknown key '{k}'; the document has entity_set and fields"
            ));
        }
        if let Some(named) = obj.get("entity_set") {
            if named.as_str() != Some(set.as_str()) {
                return Err(format!(
                    "entity_set: this address holds the directions of {set}, not {named}"
                ));
            }
        }
        obj = fields.as_object().ok_or(SHAPE)?;
    }
    let mut out = current.clone();
    for (name, v) in obj {
        let def = set
            .field(name)
            .ok_or_else(|| format!("'{name}' is not a field of {set}"))?;
        let dir: Direction = serde_json::from_value(v.clone()).map_err(|_| {
            format!("{name}: direction must be one of to_mailbox, to_crm, both, none")
        })?;
        if !def.mailbox && dir != Direction::None {
            return Err(format!(
                "{name} has no mailbox counterpart in {set}, so it can only be 'none'"
            ));
        }
        out.insert(name.clone(), dir);
    }
    Ok(out)
}

/// R-F3: one field-level security rule. `user_id` null means every user
/// who is not an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSecurityRule {
    #[serde(default)]
    pub id: Option<Uuid>,
    pub entity_set: EntitySet,
    pub field: String,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    pub can_read: bool,
    pub can_update: bool,
}

impl FieldSecurityRule {
    pub fn parse(body: &Value) -> Result<FieldSecurityRule, String> {
        let rule: FieldSecurityRule = serde_json::from_value(body.clone())
            .map_err(|e| format!("invalid field-security rule: {e}"))?;
        if rule.entity_set.field(&rule.field).is_none() {
            return Err(format!(
                "'{}' is not a field of {}",
                rule.field, rule.entity_set
            ));
        }
        if rule.can_update && !rule.can_read {
            return Err(
                "a field that cannot be read cannot be updated: set can_update to false".into(),
            );
        }
        Ok(rule)
    }
}

/// Keeps only the fields of a record a rule set lets `user` read.
pub fn readable(
    fields: &Map<String, Value>,
    set: EntitySet,
    user: Uuid,
    rules: &[FieldSecurityRule],
) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(name, _)| {
            !rules.iter().any(|r| {
                r.entity_set == set
                    && &r.field == *name
                    && r.user_id.is_none_or(|u| u == user)
                    && !r.can_read
            })
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn r_f1_fields_without_counterpart_never_sync() {
        let defaults = default_sync_fields(EntitySet::Contacts);
        assert_eq!(defaults["email"], Direction::Both);
        assert_eq!(defaults["account_id"], Direction::None);
        let err = patch_sync_fields(
            EntitySet::Contacts,
            &defaults,
            &json!({"account_id": "both"}),
        )
        .unwrap_err();
        assert!(err.contains("no mailbox counterpart"));
        let ok = patch_sync_fields(
            EntitySet::Contacts,
            &defaults,
            &json!({"email": "to_mailbox"}),
        )
        .unwrap();
        assert_eq!(ok["email"], Direction::ToMailbox);
        assert!(patch_sync_fields(
            EntitySet::Contacts,
            &defaults,
            &json!({"email": "sideways"})
        )
        .is_err());
        assert!(
            patch_sync_fields(EntitySet::Contacts, &defaults, &json!({"shoe": "both"})).is_err()
        );
    }

    #[test]
    fn r_f1_the_document_a_get_returns_is_accepted_unchanged() {
        let defaults = default_sync_fields(EntitySet::Contacts);
        let doc = json!({"entity_set": "contacts", "fields": defaults});
        assert_eq!(
            patch_sync_fields(EntitySet::Contacts, &defaults, &doc).unwrap(),
            defaults
        );
        let edited = json!({"entity_set": "contacts", "fields": {"email": "to_crm"}});
        let next = patch_sync_fields(EntitySet::Contacts, &defaults, &edited).unwrap();
        assert_eq!(next["email"], Direction::ToCrm);
        let other = json!({"entity_set": "tasks", "fields": {}});
        assert!(patch_sync_fields(EntitySet::Contacts, &defaults, &other)
            .unwrap_err()
            .contains("tasks"));
        let extra = json!({"entity_set": "contacts", "fields": {}, "x": 1});
        assert!(patch_sync_fields(EntitySet::Contacts, &defaults, &extra).is_err());
    }

    #[test]
    fn r_f3_rules_validate_and_hide_fields() {
        let user = Uuid::new_v4();
        let rule = FieldSecurityRule::parse(&json!({
            "entity_set": "contacts", "field": "mobile", "user_id": user, "can_read": false, "can_update": false
        }))
        .unwrap();
        let fields = json!({"mobile": "1", "email": "a@b.c"})
            .as_object()
            .unwrap()
            .clone();
        let seen = readable(
            &fields,
            EntitySet::Contacts,
            user,
            std::slice::from_ref(&rule),
        );
        assert!(!seen.contains_key("mobile") && seen.contains_key("email"));
        let other = readable(&fields, EntitySet::Contacts, Uuid::new_v4(), &[rule]);
        assert!(other.contains_key("mobile"));
        assert!(FieldSecurityRule::parse(
            &json!({"entity_set": "contacts", "field": "x", "can_read": true, "can_update": true})
        )
        .is_err());
        assert!(FieldSecurityRule::parse(&json!({"entity_set": "contacts", "field": "mobile", "can_read": false, "can_update": true})).is_err());
    }
}
