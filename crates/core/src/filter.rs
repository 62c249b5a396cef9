//! Sync filters (R-S6) and offline filters (R-O1): condition trees over a
//! record's fields, with `@me` and relative dates. This module parses,
//! validates and evaluates them in memory; the SQL form is the server's.
//!
//! JSON form: `{"all": [..]}`, `{"any": [..]}`, `{"not": {..}}` or
//! `{"field": "owner_id", "op": "eq", "value": "@me"}`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::entity::EntitySet;
use crate::field::FieldKind;
use crate::record::Record;

/// The owner of the record a `regarding` field points to: a condition
/// field of offline filters only (R-O1), as it needs a second record.
pub const REGARDING_OWNER: &str = "regarding.owner_id";

const MAX_DEPTH: usize = 16;
const MAX_NODES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Contains,
    IsNull,
    NotNull,
}

const OPS: &[(&str, Op)] = &[
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("lt", Op::Lt),
    ("le", Op::Le),
    ("gt", Op::Gt),
    ("ge", Op::Ge),
    ("in", Op::In),
    ("contains", Op::Contains),
    ("is_null", Op::IsNull),
    ("not_null", Op::NotNull),
];

/// A value in a comparison: a literal, the current user, or a time relative
/// to now (evaluated at each sync, R-S6).
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Literal(Value),
    List(Vec<Value>),
    Me,
    /// Seconds from now (negative: in the past), from `@now-30d`.
    Now(i64),
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Compare {
        field: String,
        op: Op,
        value: Operand,
    },
}

/// How a field compares in filters: the common columns have no FieldDef.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Subject {
    Kind(FieldKind),
    Owner,
    State,
    Timestamp,
}

/// Which condition fields a tree may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// The record's own fields (sync filters, R-S6).
    Own,
    /// Also `regarding.owner_id` (offline filters, R-O1).
    WithRegardingOwner,
}

fn subject(set: EntitySet, field: &str, fields: Fields) -> Option<Subject> {
    match field {
        "owner_id" => Some(Subject::Owner),
        REGARDING_OWNER
            if fields == Fields::WithRegardingOwner && set.field("regarding").is_some() =>
        {
            Some(Subject::Owner)
        }
        "state" => Some(Subject::State),
        "created_at" | "modified_at" => Some(Subject::Timestamp),
        _ => set.field(field).map(|f| Subject::Kind(f.kind)),
    }
}

fn ordered(s: Subject) -> bool {
    matches!(
        s,
        Subject::Timestamp
            | Subject::Kind(
                FieldKind::DateTime
                    | FieldKind::Date
                    | FieldKind::Percent
                    | FieldKind::Count
                    | FieldKind::Money
            )
    )
}

fn is_list(s: Subject) -> bool {
    matches!(
        s,
        Subject::Kind(FieldKind::Attendees | FieldKind::AddressList | FieldKind::Parties)
    )
}

fn accepts_me(s: Subject) -> bool {
    matches!(s, Subject::Owner | Subject::Kind(FieldKind::Email)) || is_list(s)
}

fn is_time(s: Subject) -> bool {
    matches!(s, Subject::Timestamp | Subject::Kind(FieldKind::DateTime))
}

/// Parses `@now`, `@now-30d`, `@now+2h` into seconds from now.
pub fn parse_relative(s: &str) -> Option<i64> {
    let rest = s.strip_prefix("@now")?;
    if rest.is_empty() {
        return Some(0);
    }
    let (sign, amount) = match rest.split_at(1) {
        ("-", a) => (-1, a),
        ("+", a) => (1, a),
        _ => return None,
    };
    let unit_at = amount.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = amount.split_at(unit_at);
    let n: i64 = digits.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    // Up to ten years either way.
    let secs = n.checked_mul(scale).filter(|s| *s <= 10 * 366 * 86_400)?;
    Some(sign * secs)
}

fn literal(set: EntitySet, field: &str, s: Subject, v: &Value) -> Result<Value, String> {
    match s {
        Subject::Owner => v
            .as_str()
            .and_then(|x| Uuid::parse_str(x).ok())
            .map(|u| json!(u))
            .ok_or_else(|| format!("{field}: value must be a user id or @me")),
        Subject::State => match v.as_str() {
            Some(x) if set.states().contains(&x) => Ok(v.clone()),
            _ => Err(format!(
                "{field}: value must be one of: {}",
                set.states().join(", ")
            )),
        },
        Subject::Timestamp => {
            let x = v
                .as_str()
                .ok_or_else(|| format!("{field}: value must be a date-time or @now-30d"))?;
            crate::time::parse_datetime(x)
                .map(|t| json!(crate::time::format_timestamp(t)))
                .map_err(|e| format!("{field}: {e}"))
        }
        // A list field is compared element-wise with one address.
        Subject::Kind(FieldKind::Attendees | FieldKind::AddressList | FieldKind::Parties) => {
            crate::field::email(v)
                .map(Value::String)
                .map_err(|e| format!("{field}: {e}"))
        }
        // `contains` on text compares with any substring.
        Subject::Kind(FieldKind::Text | FieldKind::LongText) => match v.as_str() {
            Some(_) => Ok(v.clone()),
            None => Err(format!("{field}: value must be a string")),
        },
        Subject::Kind(_) => {
            let def = set.field(field).expect("subject() found the field");
            def.normalize(v).map_err(|e| format!("{field}: value {e}"))
        }
    }
}

impl Condition {
    /// Parses and validates a condition tree for one entity set.
    pub fn parse(set: EntitySet, value: &Value) -> Result<Condition, String> {
        let mut nodes = 0;
        parse_node(set, Fields::Own, value, 0, &mut nodes, "condition")
    }

    /// [`Condition::parse`] for an offline filter (R-O1), which may also
    /// name `regarding.owner_id` on sets that have a regarding.
    pub fn parse_offline(set: EntitySet, value: &Value) -> Result<Condition, String> {
        let mut nodes = 0;
        parse_node(
            set,
            Fields::WithRegardingOwner,
            value,
            0,
            &mut nodes,
            "condition",
        )
    }

    pub fn to_json(&self) -> Value {
        match self {
            Condition::All(c) => {
                json!({"all": c.iter().map(Condition::to_json).collect::<Vec<_>>()})
            }
            Condition::Any(c) => {
                json!({"any": c.iter().map(Condition::to_json).collect::<Vec<_>>()})
            }
            Condition::Not(c) => json!({"not": c.to_json()}),
            Condition::Compare { field, op, value } => {
                let op_name = OPS
                    .iter()
                    .find(|(_, o)| o == op)
                    .map(|(n, _)| *n)
                    .unwrap_or("eq");
                let mut out = json!({"field": field, "op": op_name});
                let v = match value {
                    Operand::Literal(v) => Some(v.clone()),
                    Operand::List(l) => Some(Value::Array(l.clone())),
                    Operand::Me => Some(json!("@me")),
                    Operand::Now(0) => Some(json!("@now")),
                    Operand::Now(s) if s % 86_400 == 0 => {
                        Some(json!(format!("@now{:+}d", s / 86_400)))
                    }
                    Operand::Now(s) => Some(json!(format!("@now{s:+}s"))),
                    Operand::None => None,
                };
                if let Some(v) = v {
                    out["value"] = v;
                }
                out
            }
        }
    }
}

fn parse_node(
    set: EntitySet,
    fields: Fields,
    value: &Value,
    depth: usize,
    nodes: &mut usize,
    path: &str,
) -> Result<Condition, String> {
    *nodes += 1;
    if depth > MAX_DEPTH || *nodes > MAX_NODES {
        return Err(format!(
            "{path}: the condition is too large (at most {MAX_DEPTH} levels and {MAX_NODES} nodes)"
        ));
    }
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{path}: must be an object: {{\"all\": [..]}}, {{\"any\": [..]}}, {{\"not\": {{..}}}} or {{\"field\", \"op\", \"value\"}}"))?;
    let children = |key: &str, list: &Value, nodes: &mut usize| -> Result<Vec<Condition>, String> {
        let items = list
            .as_array()
            .ok_or_else(|| format!("{path}.{key}: must be a list of conditions"))?;
        if items.is_empty() {
            return Err(format!("{path}.{key}: must not be empty"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, c)| {
                parse_node(
                    set,
                    fields,
                    c,
                    depth + 1,
                    nodes,
                    &format!("{path}.{key}[{i}]"),
                )
            })
            .collect()
    };
    if obj.len() == 1 {
        if let Some(list) = obj.get("all") {
            return children("all", list, nodes).map(Condition::All);
        }
        if let Some(list) = obj.get("any") {
            return children("any", list, nodes).map(Condition::Any);
        }
        if let Some(inner) = obj.get("not") {
            return parse_node(set, fields, inner, depth + 1, nodes, &format!("{path}.not"))
                .map(|c| Condition::Not(Box::new(c)));
        }
    }
    if let Some(k) = obj
        .keys()
        .find(|k| !["field", "op", "value"].contains(&k.as_str()))
    {
        return Err(format!("{path}: unknown key '{k}'"));
    }
    let field = obj
        .get("field")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}: needs 'field'"))?;
    let s = subject(set, field, fields)
        .ok_or_else(|| format!("{path}: '{field}' is not a field of {set}"))?;
    let op_name = obj
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}: needs 'op'"))?;
    let op = OPS
        .iter()
        .find(|(n, _)| *n == op_name)
        .map(|(_, o)| *o)
        .ok_or_else(|| {
            format!(
                "{path}: unknown op '{op_name}'; use one of: {}",
                OPS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })?;
    let raw = obj.get("value");
    let path_field = format!("{path} ({field} {op_name})");
    let value = match op {
        Op::IsNull | Op::NotNull => match raw {
            None | Some(Value::Null) => Operand::None,
            Some(_) => return Err(format!("{path_field}: takes no value")),
        },
        _ => {
            let raw = raw.ok_or_else(|| format!("{path_field}: needs 'value'"))?;
            if op == Op::In && !raw.is_array() {
                return Err(format!("{path_field}: 'in' takes a list of values"));
            }
            match raw.as_str() {
                Some("@me") if accepts_me(s) => Operand::Me,
                Some("@me") => {
                    return Err(format!(
                        "{path_field}: @me only compares with owner_id or email fields"
                    ))
                }
                Some(r) if r.starts_with("@now") => {
                    if !is_time(s) {
                        return Err(format!(
                            "{path_field}: relative dates only compare with date-time fields"
                        ));
                    }
                    Operand::Now(parse_relative(r).ok_or_else(|| {
                        format!("{path_field}: '{r}' is not a relative date such as @now, @now-30d or @now+2w")
                    })?)
                }
                _ if op == Op::In => {
                    let items = raw
                        .as_array()
                        .ok_or_else(|| format!("{path_field}: 'in' takes a list"))?;
                    Operand::List(
                        items
                            .iter()
                            .map(|v| literal(set, field, s, v))
                            .collect::<Result<_, _>>()?,
                    )
                }
                _ => Operand::Literal(literal(set, field, s, raw)?),
            }
        }
    };
    let fits = match op {
        Op::Lt | Op::Le | Op::Gt | Op::Ge => ordered(s),
        Op::Contains => {
            is_list(s) || matches!(s, Subject::Kind(FieldKind::Text | FieldKind::LongText))
        }
        Op::Eq | Op::Ne | Op::In => {
            !is_list(s)
                && !matches!(
                    s,
                    Subject::Kind(FieldKind::Regarding | FieldKind::Recurrence)
                )
        }
        Op::IsNull | Op::NotNull => {
            !matches!(s, Subject::Owner | Subject::State | Subject::Timestamp)
        }
    };
    if !fits {
        return Err(format!(
            "{path_field}: op '{op_name}' does not apply to this field"
        ));
    }
    Ok(Condition::Compare {
        field: field.to_string(),
        op,
        value,
    })
}

/// What a condition is evaluated against besides the record: who "@me"
/// is, what time "@now" is, and for `regarding.owner_id` the owners of the
/// records that regarding fields point to (the caller looks up those of
/// the records it evaluates; a regarding missing here matches nothing).
#[derive(Debug, Clone)]
pub struct EvalContext {
    pub me: Uuid,
    pub me_email: String,
    pub now: time::OffsetDateTime,
    pub regarding_owners: std::collections::HashMap<Uuid, Uuid>,
}

/// The id of the record a record's `regarding` points to.
pub fn regarding_id(r: &Record) -> Option<Uuid> {
    r.fields
        .get("regarding")?
        .get("id")?
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

impl EvalContext {
    /// The text an `@now±offset` operand compares as, for this field.
    pub fn now_text(&self, field: &str, offset_secs: i64) -> String {
        let t = self.now + time::Duration::seconds(offset_secs);
        if field == "created_at" || field == "modified_at" {
            crate::time::format_timestamp(t)
        } else {
            crate::time::format_datetime(t)
        }
    }
}

/// The value of a field as filters see it: the common columns come from
/// the record itself, the regarding's owner from the context.
fn field_value(r: &Record, field: &str, ctx: &EvalContext) -> Option<Value> {
    match field {
        "owner_id" => Some(json!(r.owner_id)),
        REGARDING_OWNER => regarding_id(r)
            .and_then(|id| ctx.regarding_owners.get(&id))
            .map(|owner| json!(owner)),
        "state" => Some(json!(r.state)),
        "created_at" => Some(json!(r.created_at)),
        "modified_at" => Some(json!(r.modified_at)),
        _ => r.fields.get(field).cloned(),
    }
}

/// Email addresses compare without regard to ASCII case (the SQL side uses
/// `lower()`, which folds ASCII only in SQLite).
fn same_address(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The addresses held by a list field (attendees, parties, address lists).
pub fn list_addresses(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    i.as_str()
                        .or_else(|| i.get("email").and_then(Value::as_str))
                        .or_else(|| i.get("address").and_then(Value::as_str))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn compare(kind: Option<FieldKind>, a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) if kind == Some(FieldKind::Email) => {
            Some(x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()))
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Condition {
    /// Whether a record matches, in memory (`explain`, incremental prepare).
    /// A comparison with a field the record lacks is false, as in SQL.
    pub fn matches(&self, set: EntitySet, r: &Record, ctx: &EvalContext) -> bool {
        match self {
            Condition::All(c) => c.iter().all(|c| c.matches(set, r, ctx)),
            Condition::Any(c) => c.iter().any(|c| c.matches(set, r, ctx)),
            Condition::Not(c) => !c.matches(set, r, ctx),
            Condition::Compare { field, op, value } => {
                let kind = set.field(field).map(|f| f.kind);
                let actual = field_value(r, field, ctx);
                let Some(actual) = actual else {
                    return *op == Op::IsNull;
                };
                let target = match value {
                    Operand::Me if field == "owner_id" || field == REGARDING_OWNER => {
                        json!(ctx.me)
                    }
                    Operand::Me => json!(ctx.me_email),
                    Operand::Now(offset) => json!(ctx.now_text(field, *offset)),
                    Operand::Literal(v) => v.clone(),
                    Operand::List(_) | Operand::None => Value::Null,
                };
                let ord = || compare(kind, &actual, &target);
                match op {
                    Op::IsNull => false,
                    Op::NotNull => true,
                    Op::Eq => ord() == Some(std::cmp::Ordering::Equal),
                    Op::Ne => ord().is_some_and(|o| o != std::cmp::Ordering::Equal),
                    Op::Lt => ord() == Some(std::cmp::Ordering::Less),
                    Op::Le => ord().is_some_and(|o| o != std::cmp::Ordering::Greater),
                    Op::Gt => ord() == Some(std::cmp::Ordering::Greater),
                    Op::Ge => ord().is_some_and(|o| o != std::cmp::Ordering::Less),
                    Op::In => match value {
                        Operand::List(items) => items
                            .iter()
                            .any(|v| compare(kind, &actual, v) == Some(std::cmp::Ordering::Equal)),
                        _ => false,
                    },
                    Op::Contains => match (&actual, target.as_str()) {
                        (Value::String(text), Some(needle)) => text.contains(needle),
                        (Value::Array(_), Some(address)) => list_addresses(&actual)
                            .iter()
                            .any(|a| same_address(a, address)),
                        _ => false,
                    },
                }
            }
        }
    }

    /// Whether the condition compares with a time relative to now, so
    /// that its result can change from one day to the next.
    pub fn uses_now(&self) -> bool {
        match self {
            Condition::All(c) | Condition::Any(c) => c.iter().any(Condition::uses_now),
            Condition::Not(c) => c.uses_now(),
            Condition::Compare { value, .. } => matches!(value, Operand::Now(_)),
        }
    }

    /// Whether the passage of time alone can make a record start matching:
    /// an upper bound relative to now (`start le @now+7d`), or a lower
    /// bound under `not`. Such filters need a periodic re-evaluation over
    /// all records, not only over those the mailbox holds.
    pub fn may_gain_matches_over_time(&self) -> bool {
        self.gains(true)
    }

    fn gains(&self, positive: bool) -> bool {
        match self {
            Condition::All(c) | Condition::Any(c) => c.iter().any(|c| c.gains(positive)),
            Condition::Not(c) => c.gains(!positive),
            Condition::Compare {
                op,
                value: Operand::Now(_),
                ..
            } => match op {
                Op::Lt | Op::Le => positive,
                Op::Gt | Op::Ge => !positive,
                _ => true,
            },
            Condition::Compare { .. } => false,
        }
    }

    /// The condition in words, for `explain`.
    pub fn describe(&self) -> String {
        match self {
            Condition::All(c) => format!(
                "all of ({})",
                c.iter()
                    .map(Condition::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Condition::Any(c) => format!(
                "any of ({})",
                c.iter()
                    .map(Condition::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Condition::Not(c) => format!("not ({})", c.describe()),
            Condition::Compare { .. } => {
                let j = self.to_json();
                let value = j.get("value").map(|v| v.to_string()).unwrap_or_default();
                format!(
                    "{} {} {}",
                    j["field"].as_str().unwrap_or(""),
                    j["op"].as_str().unwrap_or(""),
                    value
                )
                .trim()
                .to_string()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterScope {
    /// Organization-wide, made by an admin; applies to every user.
    System,
    /// One user's own filter.
    User,
}

/// The default filters every organization starts with (R-S6).
pub fn default_filters() -> Vec<(String, EntitySet, Value)> {
    let me_involved = json!({"any": [
        {"field": "owner_id", "op": "eq", "value": "@me"},
        {"field": "organizer", "op": "eq", "value": "@me"},
        {"field": "attendees", "op": "contains", "value": "@me"}
    ]});
    let my_open_or_recent = json!({"all": [
        {"field": "owner_id", "op": "eq", "value": "@me"},
        {"any": [
            {"field": "state", "op": "eq", "value": "open"},
            {"field": "modified_at", "op": "ge", "value": "@now-30d"}
        ]}
    ]});
    let mut out = vec![(
        "My contacts".to_string(),
        EntitySet::Contacts,
        json!({"field": "owner_id", "op": "eq", "value": "@me"}),
    )];
    for set in [EntitySet::Appointments, EntitySet::Serviceappointments] {
        out.push((format!("My {set}"), set, me_involved.clone()));
    }
    for set in [
        EntitySet::Tasks,
        EntitySet::Phonecalls,
        EntitySet::Letters,
        EntitySet::Faxes,
    ] {
        out.push((
            format!("My open or recent {set}"),
            set,
            my_open_or_recent.clone(),
        ));
    }
    out
}

/// The default offline filters (R-O1): the active accounts, contacts,
/// leads, opportunities and cases the user owns, and the activities and
/// emails regarding them from the last 90 days.
pub fn default_offline_filters() -> Vec<(String, EntitySet, Value)> {
    let mut out = Vec::new();
    for (set, active) in [
        (EntitySet::Accounts, "active"),
        (EntitySet::Contacts, "active"),
        (EntitySet::Leads, "open"),
        (EntitySet::Opportunities, "open"),
        (EntitySet::Cases, "active"),
    ] {
        out.push((
            format!("My active {set}"),
            set,
            json!({"all": [
                {"field": "owner_id", "op": "eq", "value": "@me"},
                {"field": "state", "op": "eq", "value": active}
            ]}),
        ));
    }
    for set in [
        EntitySet::Appointments,
        EntitySet::Tasks,
        EntitySet::Phonecalls,
        EntitySet::Letters,
        EntitySet::Faxes,
        EntitySet::Emails,
    ] {
        out.push((
            format!("Recent {set} regarding my records"),
            set,
            json!({"all": [
                {"field": REGARDING_OWNER, "op": "eq", "value": "@me"},
                {"field": "modified_at", "op": "ge", "value": "@now-90d"}
            ]}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_s6_default_filters_parse_and_round_trip() {
        for (_, set, cond) in default_filters() {
            let parsed = Condition::parse(set, &cond).unwrap();
            assert_eq!(parsed.to_json(), cond, "{set}");
        }
    }

    #[test]
    fn r_s6_relative_dates() {
        assert_eq!(parse_relative("@now"), Some(0));
        assert_eq!(parse_relative("@now-30d"), Some(-30 * 86_400));
        assert_eq!(parse_relative("@now+2w"), Some(14 * 86_400));
        assert_eq!(parse_relative("@now-x"), None);
        assert_eq!(parse_relative("@nowish"), None);
    }

    #[test]
    fn r_s6_invalid_filters_are_explained() {
        let c = |v: Value| Condition::parse(EntitySet::Contacts, &v).unwrap_err();
        assert!(c(json!({"field": "shoe", "op": "eq", "value": 1})).contains("not a field"));
        assert!(
            c(json!({"field": "last_name", "op": "lt", "value": "x"})).contains("does not apply")
        );
        assert!(
            c(json!({"field": "last_name", "op": "eq", "value": "@now-1d"}))
                .contains("relative dates")
        );
        assert!(c(json!({"field": "state", "op": "eq", "value": "won"})).contains("one of"));
        assert!(c(json!({"all": []})).contains("must not be empty"));
        assert!(c(json!({"field": "owner_id", "op": "eq"})).contains("needs 'value'"));
        assert!(
            c(json!({"field": "email", "op": "is_null", "value": 1})).contains("takes no value")
        );
        assert!(c(json!([1])).contains("must be an object"));
        let mut deep = json!({"field": "owner_id", "op": "eq", "value": "@me"});
        for _ in 0..40 {
            deep = json!({"not": deep});
        }
        assert!(c(deep).contains("too large"));
    }

    fn contact(fields: Value) -> Record {
        Record {
            id: Uuid::new_v4(),
            set: EntitySet::Contacts,
            version: 1,
            owner_id: Uuid::nil(),
            state: "active".into(),
            created_at: "2026-01-01T00:00:00.000000Z".into(),
            modified_at: "2026-11-20T00:00:00.000000Z".into(),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    fn ctx() -> EvalContext {
        EvalContext {
            me: Uuid::nil(),
            me_email: "Me@Example.com".into(),
            now: crate::time::parse_datetime("2026-11-25T00:00:00Z").unwrap(),
            regarding_owners: Default::default(),
        }
    }

    #[test]
    fn r_s6_evaluation_with_me_relative_dates_and_missing_fields() {
        let parse = |v: Value| Condition::parse(EntitySet::Contacts, &v).unwrap();
        let r = contact(json!({"last_name": "Lee", "city": "Berlin"}));
        let c = ctx();
        assert!(
            parse(json!({"field": "owner_id", "op": "eq", "value": "@me"})).matches(
                EntitySet::Contacts,
                &r,
                &c
            )
        );
        assert!(
            parse(json!({"field": "modified_at", "op": "ge", "value": "@now-30d"})).matches(
                EntitySet::Contacts,
                &r,
                &c
            )
        );
        assert!(
            !parse(json!({"field": "modified_at", "op": "ge", "value": "@now-1d"})).matches(
                EntitySet::Contacts,
                &r,
                &c
            )
        );
        // A missing field: comparisons are false, even `ne`; `not` inverts that.
        let ne = parse(json!({"field": "email", "op": "ne", "value": "a@b.c"}));
        assert!(!ne.matches(EntitySet::Contacts, &r, &c));
        assert!(Condition::Not(Box::new(ne)).matches(EntitySet::Contacts, &r, &c));
        assert!(parse(json!({"field": "email", "op": "is_null"})).matches(
            EntitySet::Contacts,
            &r,
            &c
        ));
        assert!(
            parse(json!({"field": "city", "op": "contains", "value": "erl"})).matches(
                EntitySet::Contacts,
                &r,
                &c
            )
        );
        assert!(
            !parse(json!({"field": "city", "op": "contains", "value": "ERL"})).matches(
                EntitySet::Contacts,
                &r,
                &c
            )
        );
        let with_email = contact(json!({"last_name": "Lee", "email": "me@example.COM"}));
        assert!(
            parse(json!({"field": "email", "op": "eq", "value": "@me"})).matches(
                EntitySet::Contacts,
                &with_email,
                &c
            )
        );
    }

    #[test]
    fn r_s6_attendee_contains_me() {
        let cond = Condition::parse(
            EntitySet::Appointments,
            &json!({"field": "attendees", "op": "contains", "value": "@me"}),
        )
        .unwrap();
        let mut r = contact(
            json!({"attendees": [{"email": "other@x.org", "role": "required", "resolved": null}, {"email": "me@example.com", "role": "optional", "resolved": null}]}),
        );
        r.set = EntitySet::Appointments;
        assert!(cond.matches(EntitySet::Appointments, &r, &ctx()));
        r.fields
            .insert("attendees".into(), json!([{"email": "other@x.org"}]));
        assert!(!cond.matches(EntitySet::Appointments, &r, &ctx()));
    }

    #[test]
    fn r_s6_which_filters_gain_records_as_time_passes() {
        let gains = |v: Value| {
            Condition::parse(EntitySet::Appointments, &v)
                .unwrap()
                .may_gain_matches_over_time()
        };
        assert!(gains(
            json!({"field": "start", "op": "le", "value": "@now+7d"})
        ));
        assert!(!gains(
            json!({"field": "modified_at", "op": "ge", "value": "@now-30d"})
        ));
        assert!(gains(
            json!({"not": {"field": "modified_at", "op": "ge", "value": "@now-30d"}})
        ));
        assert!(!gains(
            json!({"field": "owner_id", "op": "eq", "value": "@me"})
        ));
        for (_, set, cond) in default_filters() {
            assert!(
                !Condition::parse(set, &cond)
                    .unwrap()
                    .may_gain_matches_over_time(),
                "{set}"
            );
        }
    }

    #[test]
    fn r_o1_regarding_owner_is_an_offline_field_looked_up_in_the_context() {
        let cond = json!({"field": REGARDING_OWNER, "op": "eq", "value": "@me"});
        assert!(Condition::parse(EntitySet::Tasks, &cond)
            .unwrap_err()
            .contains("not a field"));
        assert!(Condition::parse_offline(EntitySet::Contacts, &cond)
            .unwrap_err()
            .contains("not a field"));
        let parsed = Condition::parse_offline(EntitySet::Tasks, &cond).unwrap();
        assert_eq!(parsed.to_json(), cond);
        let account = Uuid::new_v4();
        let mut task = contact(json!({"regarding": {"set": "accounts", "id": account}}));
        task.set = EntitySet::Tasks;
        let mut c = ctx();
        assert!(
            !parsed.matches(EntitySet::Tasks, &task, &c),
            "owner unknown"
        );
        c.regarding_owners.insert(account, c.me);
        assert!(parsed.matches(EntitySet::Tasks, &task, &c));
        c.regarding_owners.insert(account, Uuid::new_v4());
        assert!(!parsed.matches(EntitySet::Tasks, &task, &c));
        for (_, set, cond) in default_offline_filters() {
            let parsed = Condition::parse_offline(set, &cond).unwrap();
            assert_eq!(parsed.to_json(), cond, "{set}");
        }
    }

    #[test]
    fn in_lists_are_checked_per_item() {
        let ok = json!({"field": "state", "op": "in", "value": ["active", "inactive"]});
        assert!(Condition::parse(EntitySet::Contacts, &ok).is_ok());
        let bad = json!({"field": "state", "op": "in", "value": ["active", "gone"]});
        assert!(Condition::parse(EntitySet::Contacts, &bad).is_err());
        let me = json!({"field": "owner_id", "op": "in", "value": "@me"});
        assert!(Condition::parse(EntitySet::Contacts, &me)
            .unwrap_err()
            .contains("takes a list"));
    }
}
