//! Record fields on pages, built from the core field tables: how each kind
//! is shown, which input edits it, and how a posted form becomes the
//! API's JSON body (validation stays in core: a value that does not parse
//! here is passed on as text, so the API's message names the problem).

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crmsync_core::field::{FieldDef, FieldKind};
use crmsync_core::{EntitySet, Record};

use super::csrf::FormData;
use super::layout::label;

/// Fields the server or the mail sync fills; forms do not offer them.
const NOT_IN_FORMS: &[&str] = &[
    "series_id",
    "recurrence_id",
    "tracking_token",
    "parties",
    "raw_size",
    "message_id",
    "in_reply_to",
];

/// One field as a record page shows it.
pub struct Shown {
    pub label: String,
    pub text: String,
    /// A link to the record it points to.
    pub href: Option<String>,
    pub multiline: bool,
}

/// A record's display name: its name, title, subject or person's name.
pub fn display_name(r: &Record) -> String {
    name_of(r.set, &r.fields)
}

/// [`display_name`] of a record's fields (also the offline copy's report
/// of a change, whose record may be gone).
pub fn name_of(set: EntitySet, fields: &Map<String, Value>) -> String {
    let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("");
    let person = format!("{} {}", text("first_name"), text("last_name"));
    for candidate in [
        text("name"),
        text("title"),
        text("subject"),
        person.trim(),
        text("email"),
    ] {
        if !candidate.is_empty() {
            return candidate.to_string();
        }
    }
    format!("({} without a name)", super::layout::set_singular(set))
}

/// The ids a record points to, to look their names up in one query.
pub fn referenced_ids(r: &Record) -> Vec<Uuid> {
    crmsync_core::record::references(r.set, &r.fields)
        .into_iter()
        .map(|(_, _, id)| id)
        .collect()
}

/// A value as text in a form or on a page.
pub fn value_text(kind: FieldKind, v: &Value) -> String {
    match (kind, v) {
        (_, Value::Null) => String::new(),
        (_, Value::String(s)) => s.clone(),
        (FieldKind::Bool, Value::Bool(b)) => if *b { "true" } else { "false" }.into(),
        (FieldKind::Regarding, v) => match (
            v.get("set").and_then(Value::as_str),
            v.get("id").and_then(Value::as_str),
        ) {
            (Some(set), Some(id)) => format!("{set}/{id}"),
            _ => v.to_string(),
        },
        (FieldKind::AddressList, Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        (FieldKind::Attendees, Value::Array(items)) => items
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a.get("email").and_then(Value::as_str).unwrap_or(""),
                    a.get("role").and_then(Value::as_str).unwrap_or("required")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        (FieldKind::Parties, Value::Array(items)) => items
            .iter()
            .map(|p| {
                format!(
                    "{} ({})",
                    p.get("address").and_then(Value::as_str).unwrap_or(""),
                    p.get("role").and_then(Value::as_str).unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        (_, v) => v.to_string(),
    }
}

/// The fields of a record page, reference fields linked and named.
pub fn shown_fields(r: &Record, names: &HashMap<Uuid, String>) -> Vec<Shown> {
    let mut out = Vec::new();
    for def in r.set.fields() {
        if r.set == EntitySet::Emails && matches!(def.name, "body_text" | "body_html") {
            continue; // the email view shows the body
        }
        let Some(v) = r.fields.get(def.name) else {
            continue;
        };
        let (text, href) = match def.kind {
            FieldKind::Reference(target) => {
                let id = v.as_str().unwrap_or("");
                let name = Uuid::parse_str(id)
                    .ok()
                    .and_then(|u| names.get(&u).cloned());
                (
                    name.unwrap_or_else(|| id.to_string()),
                    Some(format!("/{target}/{id}")),
                )
            }
            FieldKind::Regarding => {
                let set = v.get("set").and_then(Value::as_str).unwrap_or("");
                let id = v.get("id").and_then(Value::as_str).unwrap_or("");
                let name = Uuid::parse_str(id)
                    .ok()
                    .and_then(|u| names.get(&u).cloned());
                (
                    name.unwrap_or_else(|| format!("{set}/{id}")),
                    Some(format!("/{set}/{id}")),
                )
            }
            FieldKind::Bool => (
                if v.as_bool() == Some(true) {
                    "Yes"
                } else {
                    "No"
                }
                .into(),
                None,
            ),
            kind => (value_text(kind, v), None),
        };
        out.push(Shown {
            label: label(def.name),
            text,
            href,
            multiline: matches!(def.kind, FieldKind::LongText | FieldKind::Attendees),
        });
    }
    out
}

/// How a field is edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Widget {
    /// `<input type=...>`
    Input(&'static str),
    TextArea,
    Select(Vec<(String, String)>),
}

/// One field of an edit or create form.
pub struct Input {
    pub name: String,
    pub label: String,
    pub widget: Widget,
    pub value: String,
    pub required: bool,
    pub hint: Option<String>,
    /// The API's message about this field, when it refused the input.
    pub error: Option<String>,
}

impl Input {
    pub fn is_selected(&self, option: &str) -> bool {
        self.value == option
    }
    pub fn is_textarea(&self) -> bool {
        self.widget == Widget::TextArea
    }
    pub fn input_type(&self) -> &'static str {
        match self.widget {
            Widget::Input(t) => t,
            _ => "",
        }
    }
    pub fn options(&self) -> &[(String, String)] {
        match &self.widget {
            Widget::Select(o) => o,
            _ => &[],
        }
    }
    pub fn hint_id(&self) -> String {
        format!("{}-hint", self.name)
    }
    pub fn error_id(&self) -> String {
        format!("{}-error", self.name)
    }
    /// `aria-describedby`: the hint and the error, when present.
    pub fn described_by(&self) -> String {
        let mut ids = Vec::new();
        if self.hint.is_some() {
            ids.push(self.hint_id());
        }
        if self.error.is_some() {
            ids.push(self.error_id());
        }
        ids.join(" ")
    }
}

fn widget(def: &FieldDef) -> (Widget, Option<String>) {
    let options = |values: &[&str]| {
        let mut o = vec![(String::new(), "(none)".to_string())];
        o.extend(values.iter().map(|v| (v.to_string(), label(v))));
        Widget::Select(o)
    };
    match def.kind {
        FieldKind::Text | FieldKind::TimeZone => (Widget::Input("text"), None),
        FieldKind::Email => (Widget::Input("email"), None),
        FieldKind::LongText => (Widget::TextArea, None),
        FieldKind::Bool => (
            Widget::Select(vec![
                (String::new(), "(none)".into()),
                ("true".into(), "Yes".into()),
                ("false".into(), "No".into()),
            ]),
            None,
        ),
        FieldKind::DateTime => (
            Widget::Input("text"),
            Some("A date and time such as 2026-11-25T09:30:00Z".into()),
        ),
        FieldKind::Date => (Widget::Input("date"), None),
        FieldKind::Enum(values) => (options(values), None),
        FieldKind::Percent | FieldKind::Count => (Widget::Input("number"), None),
        FieldKind::Money => (
            Widget::Input("text"),
            Some("An amount such as 1500.50".into()),
        ),
        FieldKind::Reference(target) => (
            Widget::Input("text"),
            Some(format!(
                "The id of a record in {}",
                super::layout::set_title(target)
            )),
        ),
        FieldKind::Regarding => (
            Widget::Input("text"),
            Some("The record it is about, as set/id, such as accounts/0f8e…".into()),
        ),
        FieldKind::AddressList => (
            Widget::Input("text"),
            Some("Email addresses separated by commas".into()),
        ),
        FieldKind::Attendees => (
            Widget::TextArea,
            Some("One attendee per line: the email address, then required or optional".into()),
        ),
        FieldKind::Recurrence | FieldKind::Parties => (
            Widget::TextArea,
            Some("As JSON, e.g. {\"rrule\": \"FREQ=WEEKLY\", \"exdates\": []}".into()),
        ),
    }
}

/// The fields a form offers for `set`.
pub fn form_fields(set: EntitySet) -> impl Iterator<Item = &'static FieldDef> {
    set.fields()
        .iter()
        .filter(|f| !NOT_IN_FORMS.contains(&f.name))
}

/// The inputs of a form: prefilled from the posted form if any, else from
/// the record; the API's messages next to their fields.
pub fn inputs(
    set: EntitySet,
    record: Option<&Record>,
    posted: Option<&FormData>,
    errors: &HashMap<String, String>,
) -> Vec<Input> {
    let current = |name: &str, kind: FieldKind| -> String {
        match posted {
            Some(form) => form.get(name).unwrap_or("").to_string(),
            None => record
                .and_then(|r| r.fields.get(name))
                .map(|v| value_text(kind, v))
                .unwrap_or_default(),
        }
    };
    let mut out: Vec<Input> = form_fields(set)
        .map(|def| {
            let (widget, hint) = widget(def);
            Input {
                name: def.name.to_string(),
                label: label(def.name),
                widget,
                value: current(def.name, def.kind),
                required: def.required,
                hint,
                error: errors.get(def.name).cloned(),
            }
        })
        .collect();
    let state = match posted {
        Some(form) => form.get("state").unwrap_or("").to_string(),
        None => record.map_or_else(|| set.default_state().to_string(), |r| r.state.clone()),
    };
    out.push(Input {
        name: "state".into(),
        label: "State".into(),
        widget: Widget::Select(
            set.states()
                .iter()
                .map(|s| (s.to_string(), label(s)))
                .collect(),
        ),
        value: state,
        required: true,
        hint: None,
        error: errors.get("state").cloned(),
    });
    out
}

/// One posted text as the JSON the API takes for that kind; text that
/// does not parse is passed on as is (core refuses it with its message).
pub fn field_value(kind: FieldKind, text: &str, current: Option<&Value>) -> Value {
    let t = text.trim();
    match kind {
        FieldKind::LongText => json!(text.replace("\r\n", "\n")),
        FieldKind::Bool => match t {
            "true" => json!(true),
            "false" => json!(false),
            _ => json!(t),
        },
        FieldKind::Percent | FieldKind::Count => t.parse::<i64>().map_or(json!(t), |n| json!(n)),
        FieldKind::Money => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(json!(t), Value::Number),
        FieldKind::Regarding => match t.split_once('/') {
            Some((set, id)) => json!({"set": set.trim(), "id": id.trim()}),
            None => json!(t),
        },
        FieldKind::AddressList => Value::Array(
            t.split([',', ';', '\n'])
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| json!(a))
                .collect(),
        ),
        FieldKind::Attendees => {
            // Keep what each attendee already had (its resolution).
            let known: HashMap<String, Value> = current
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| Some((a.get("email")?.as_str()?.to_lowercase(), a.clone())))
                .collect();
            Value::Array(
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|line| {
                        let mut parts = line.split_whitespace();
                        let email = parts.next().unwrap_or("");
                        let role = parts.next().unwrap_or("required");
                        let mut a = known
                            .get(&email.to_lowercase())
                            .cloned()
                            .unwrap_or_else(|| json!({}));
                        a["email"] = json!(email);
                        a["role"] = json!(role);
                        a
                    })
                    .collect(),
            )
        }
        FieldKind::Recurrence | FieldKind::Parties => {
            serde_json::from_str(t).unwrap_or_else(|_| json!(t))
        }
        _ => json!(t),
    }
}

/// The API body of a posted form. Creating, empty fields are left out;
/// editing, an emptied field is cleared and an unchanged one is not sent.
pub fn body_from_form(set: EntitySet, form: &FormData, record: Option<&Record>) -> Value {
    let mut body = Map::new();
    for def in form_fields(set) {
        let Some(text) = form.get(def.name) else {
            continue;
        };
        let current = record.and_then(|r| r.fields.get(def.name));
        if text.trim().is_empty() {
            if current.is_some() {
                body.insert(def.name.into(), Value::Null);
            }
            continue;
        }
        let value = field_value(def.kind, text, current);
        if current.is_some_and(|c| value_text(def.kind, c) == value_text(def.kind, &value)) {
            continue;
        }
        body.insert(def.name.into(), value);
    }
    if let Some(state) = form.get("state").filter(|s| !s.is_empty()) {
        if record.is_none_or(|r| r.state != state) {
            body.insert("state".into(), json!(state));
        }
    }
    Value::Object(body)
}

/// Splits the API's refusal ("field: message; field: message") into
/// messages per field of the form, and the rest.
pub fn field_errors(set: EntitySet, message: &str) -> (HashMap<String, String>, Vec<String>) {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut rest = Vec::new();
    for part in message.split("; ") {
        match part.split_once(": ") {
            Some((name, msg)) if name == "state" || set.field(name).is_some() => {
                let entry = fields.entry(name.to_string()).or_default();
                if !entry.is_empty() {
                    entry.push_str("; ");
                }
                entry.push_str(msg);
            }
            _ => match rest.last_mut() {
                // A message that itself holds "; " continues the one before.
                Some(last) if fields.is_empty() => *last = format!("{last}; {part}"),
                _ => rest.push(part.to_string()),
            },
        }
    }
    (fields, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_split_per_field() {
        let (f, rest) = field_errors(
            EntitySet::Contacts,
            "email: 'x' is not an email address; last_name: is required",
        );
        assert_eq!(f["email"], "'x' is not an email address");
        assert_eq!(f["last_name"], "is required");
        assert!(rest.is_empty());
        let (f, rest) = field_errors(EntitySet::Contacts, "only the owner may change it");
        assert!(f.is_empty());
        assert_eq!(rest, vec!["only the owner may change it"]);
    }

    #[test]
    fn r_w4_form_to_body_uses_the_field_kinds() {
        let form = FormData(vec![
            ("last_name".into(), "Lee".into()),
            ("first_name".into(), "".into()),
            ("birthday".into(), "1990-02-03".into()),
            ("state".into(), "active".into()),
        ]);
        assert_eq!(
            body_from_form(EntitySet::Contacts, &form, None),
            json!({"last_name": "Lee", "birthday": "1990-02-03", "state": "active"})
        );
        let form = FormData(vec![
            ("percent_complete".into(), "40".into()),
            ("regarding".into(), "accounts/abc".into()),
        ]);
        assert_eq!(
            body_from_form(EntitySet::Tasks, &form, None),
            json!({"percent_complete": 40, "regarding": {"set": "accounts", "id": "abc"}})
        );
    }
}
