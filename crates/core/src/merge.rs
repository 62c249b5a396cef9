//! R-F5: merging an item changed on both sides since the last sync, field
//! by field against the baseline (the last synchronized state).

use serde::Serialize;
use serde_json::{Map, Value};

/// Which side's value a field took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Crm,
    Mailbox,
}

/// R-F6: a field changed on both sides to different values; one was discarded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldConflict {
    pub field: String,
    pub crm_value: Value,
    pub mailbox_value: Value,
    pub kept: Side,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Merged {
    /// The merged fields (absent = no value): the new state of both sides.
    pub fields: Map<String, Value>,
    pub conflicts: Vec<FieldConflict>,
}

/// Merges per field. `may_push(field)` says whether a mailbox change of that
/// field may reach the CRM at all (R-F1 direction, R-F3 update right); if
/// not, the CRM value stands. On a field changed on both sides the side whose
/// item was modified later wins, the CRM on ties (`mailbox_is_later` false).
pub fn merge(
    baseline: &Map<String, Value>,
    crm: &Map<String, Value>,
    mailbox: &Map<String, Value>,
    mailbox_is_later: bool,
    may_push: impl Fn(&str) -> bool,
) -> Merged {
    let mut names: Vec<&String> = baseline
        .keys()
        .chain(crm.keys())
        .chain(mailbox.keys())
        .collect();
    names.sort();
    names.dedup();
    let mut out = Merged::default();
    for name in names {
        let (b, c, m) = (baseline.get(name), crm.get(name), mailbox.get(name));
        let value = if !may_push(name) {
            c
        } else {
            match (c != b, m != b) {
                (_, false) => c,
                (false, true) => m,
                (true, true) if c == m => c,
                (true, true) => {
                    let kept = if mailbox_is_later {
                        Side::Mailbox
                    } else {
                        Side::Crm
                    };
                    out.conflicts.push(FieldConflict {
                        field: name.clone(),
                        crm_value: c.cloned().unwrap_or(Value::Null),
                        mailbox_value: m.cloned().unwrap_or(Value::Null),
                        kept,
                    });
                    if kept == Side::Mailbox {
                        m
                    } else {
                        c
                    }
                }
            }
        };
        if let Some(v) = value.filter(|v| !v.is_null()) {
            out.fields.insert(name.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn r_f5_overlapping_edits_merge_per_field() {
        // SPEC example: baseline (A, B, C); mailbox (A1, B1, C1) at 10:00;
        // CRM (A2, B2, C) at 10:05 -> (A2, B2, C1).
        let base = map(json!({"a": "A", "b": "B", "c": "C"}));
        let mailbox = map(json!({"a": "A1", "b": "B1", "c": "C1"}));
        let crm = map(json!({"a": "A2", "b": "B2", "c": "C"}));
        let m = merge(&base, &crm, &mailbox, false, |_| true);
        assert_eq!(m.fields, map(json!({"a": "A2", "b": "B2", "c": "C1"})));
        assert_eq!(m.conflicts.len(), 2, "R-F6: two discarded mailbox values");
        assert_eq!(m.conflicts[0].mailbox_value, "A1");
        // Mailbox later: it wins the overlapping fields.
        let m = merge(&base, &crm, &mailbox, true, |_| true);
        assert_eq!(m.fields, map(json!({"a": "A1", "b": "B1", "c": "C1"})));
    }

    #[test]
    fn r_f5_clearing_a_field_is_a_change() {
        let base = map(json!({"a": "A", "b": "B"}));
        let mailbox = map(json!({"b": "B"}));
        let m = merge(&base, &base, &mailbox, false, |_| true);
        assert_eq!(m.fields, map(json!({"b": "B"})));
    }

    #[test]
    fn r_f1_fields_that_may_not_be_pushed_keep_the_crm_value() {
        let base = map(json!({"a": "A"}));
        let m = merge(&base, &base, &map(json!({"a": "mine"})), true, |f| f != "a");
        assert_eq!(m.fields, base);
        assert!(m.conflicts.is_empty());
    }

    fn small_map() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c", "d"]), 0u8..3, 0..4)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect()
            })
    }

    proptest! {
        /// The merge equals the rule's oracle on every field.
        #[test]
        fn r_f5_merge_equals_the_oracle(base in small_map(), crm in small_map(), mailbox in small_map(), later in any::<bool>()) {
            let m = merge(&base, &crm, &mailbox, later, |_| true);
            for f in ["a", "b", "c", "d"] {
                let (b, c, x) = (base.get(f), crm.get(f), mailbox.get(f));
                let expected = if c == b { x } else if x == b || c == x { c } else if later { x } else { c };
                prop_assert_eq!(m.fields.get(f), expected, "field {}", f);
                let conflict = c != b && x != b && c != x;
                prop_assert_eq!(m.conflicts.iter().any(|k| k.field == f), conflict);
            }
            // Merging again with the result as the new baseline changes nothing.
            let again = merge(&m.fields, &m.fields, &m.fields, later, |_| true);
            prop_assert_eq!(again.fields, m.fields);
        }
    }
}
