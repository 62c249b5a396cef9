//! Admin forms for field-level security (R-F3) and system sync filters
//! (R-S6). The filter builder is a plain form: one row per condition
//! (field, operator, value) combined with "all" or "any"; adding and
//! removing a row are submit buttons, so it works without scripts. The
//! tree it builds is the API's JSON, parsed and refused by core.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};
use uuid::Uuid;

use crmsync_core::EntitySet;

use super::admin_settings::{AdminPosted, AdminUser};
use super::csrf::{FormData, Posted};
use super::forms::{display_name, field_value};
use super::layout::{set_title, Layout};
use super::pages::page;
use super::session::WebUser;
use crate::config::FilterKind;
use crate::error::ApiError;
use crate::store::ListQuery;
use crate::AppState;

pub struct RuleRow {
    pub id: String,
    pub set: String,
    pub field: String,
    pub who: String,
    pub can_read: &'static str,
    pub can_update: &'static str,
}

/// What the add-rule form shows: the posted values and the refusal.
#[derive(Default)]
pub struct RuleForm {
    pub entity_set: String,
    pub field: String,
    pub user_id: String,
    pub can_read: bool,
    pub can_update: bool,
    pub error_field: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "field_security.html")]
pub struct FieldSecurityPage {
    layout: Layout,
    csrf: String,
    rules: Vec<RuleRow>,
    sets: Vec<(String, &'static str)>,
    users: Vec<(String, String)>,
    form: RuleForm,
}

pub struct FilterRow {
    pub id: String,
    pub name: String,
    pub set: &'static str,
    pub condition: String,
    pub active: &'static str,
}

pub struct ConditionRow {
    pub field: String,
    pub op: String,
    pub value: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "filters.html")]
pub struct FiltersPage {
    layout: Layout,
    csrf: String,
    words: &'static FilterWords,
    filters: Vec<FilterRow>,
    sets: Vec<(String, &'static str)>,
    ops: &'static [(&'static str, &'static str)],
    name: String,
    name_error: Option<String>,
    entity_set: String,
    set_error: Option<String>,
    combine: String,
    rows: Vec<ConditionRow>,
    error: Option<String>,
}

page!(FieldSecurityPage, FiltersPage);

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "Yes"
    } else {
        "No"
    }
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// Every user's id and email, for naming rules and choosing a user.
async fn user_emails(state: &AppState) -> Result<Vec<(String, String)>, Response> {
    let query = ListQuery {
        limit: 1000,
        ..ListQuery::default()
    };
    let users = state
        .store
        .list(EntitySet::Users, &query)
        .await
        .map_err(|e| super::server_error(e.into()))?;
    Ok(users
        .iter()
        .map(|u| {
            let email = u.fields.get("email").and_then(Value::as_str);
            (
                u.id.to_string(),
                email.map_or_else(|| display_name(u), str::to_string),
            )
        })
        .collect())
}

async fn field_security_page(
    state: &AppState,
    user: &WebUser,
    status: StatusCode,
    form: RuleForm,
) -> Response {
    let rules = match crate::config::list_field_security(&state.store, user.caller).await {
        Ok(r) => r,
        Err(e) => return super::error_page_for(user, e),
    };
    let users = match user_emails(state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut rules: Vec<RuleRow> = rules
        .iter()
        .map(|r| {
            let uid = text(r, "user_id");
            RuleRow {
                id: text(r, "id"),
                set: text(r, "entity_set"),
                field: text(r, "field"),
                who: users
                    .iter()
                    .find(|(id, _)| *id == uid)
                    .map_or_else(|| "Everyone".into(), |(_, e)| e.clone()),
                can_read: yes_no(&r["can_read"]),
                can_update: yes_no(&r["can_update"]),
            }
        })
        .collect();
    rules.sort_by(|a, b| (&a.set, &a.field, &a.who).cmp(&(&b.set, &b.field, &b.who)));
    let page = FieldSecurityPage {
        layout: Layout::new("Field security", user, "/admin"),
        csrf: user.csrf.clone(),
        rules,
        sets: EntitySet::ALL
            .into_iter()
            .map(|s| (s.to_string(), set_title(s)))
            .collect(),
        users,
        form,
    };
    (status, page).into_response()
}

pub async fn field_security(State(state): State<AppState>, AdminUser(user): AdminUser) -> Response {
    let form = RuleForm {
        can_read: true,
        ..RuleForm::default()
    };
    field_security_page(&state, &user, StatusCode::OK, form).await
}

/// "Add rule": the API's rule creation (core parses, the store refuses a
/// second rule for the same set, field and user).
pub async fn add_field_security(
    State(state): State<AppState>,
    AdminPosted(posted): AdminPosted,
) -> Response {
    let user = &posted.user;
    let get = |k: &str| posted.form.get(k).unwrap_or("").trim().to_string();
    let mut form = RuleForm {
        entity_set: get("entity_set"),
        field: get("field"),
        user_id: get("user_id"),
        can_read: get("can_read") == "true",
        can_update: get("can_update") == "true",
        ..RuleForm::default()
    };
    let mut body = json!({
        "entity_set": form.entity_set,
        "field": form.field,
        "can_read": form.can_read,
        "can_update": form.can_update,
    });
    if !form.user_id.is_empty() {
        body["user_id"] = json!(form.user_id);
    }
    match crate::config::create_field_security(&state.store, user.caller, &body).await {
        Ok(_) => Redirect::to("/admin/field-security").into_response(),
        Err(e) if !e.status.is_server_error() => {
            form.error_field = ["entity_set", "user_id", "can_read", "can_update", "field"]
                .into_iter()
                .find(|k| e.message.starts_with(&format!("{k}:")))
                .unwrap_or("")
                .to_string();
            form.error = Some(e.message);
            field_security_page(&state, user, e.status, form).await
        }
        Err(e) => super::error_page_for(user, e),
    }
}

fn config_id(id: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("There is no such {what}.")))
}

/// An admin's "Delete" of the rule `id` (a `what`) through `delete`, back
/// to the page `back`.
async fn delete_rule<F, Fut>(
    posted: &Posted,
    id: &str,
    what: &str,
    back: &str,
    delete: F,
) -> Response
where
    F: FnOnce(Uuid) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let user = &posted.user;
    let id = match config_id(id, what) {
        Ok(id) => id,
        Err(e) => return super::error_page_for(user, e),
    };
    match delete(id).await {
        Ok(()) => Redirect::to(back).into_response(),
        Err(e) => super::error_page_for(user, e),
    }
}

pub async fn delete_field_security(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AdminPosted(posted): AdminPosted,
) -> Response {
    let caller = posted.user.caller;
    delete_rule(&posted, &id, "rule", "/admin/field-security", |id| {
        crate::config::delete_field_security(&state.store, caller, id)
    })
    .await
}

/// The operators a condition row offers, in words.
const OPS: &[(&str, &str)] = &[
    ("eq", "is"),
    ("ne", "is not"),
    ("contains", "contains"),
    ("lt", "is before / less than"),
    ("le", "is at most"),
    ("gt", "is after / more than"),
    ("ge", "is at least"),
    ("in", "is one of (comma-separated)"),
    ("is_null", "is empty"),
    ("not_null", "is not empty"),
];

/// The builder's state as posted: name, set, combination and rows.
struct Builder {
    name: String,
    entity_set: String,
    combine: String,
    rows: Vec<ConditionRow>,
}

impl Builder {
    fn empty() -> Builder {
        Builder {
            name: String::new(),
            entity_set: "contacts".into(),
            combine: "all".into(),
            rows: vec![ConditionRow {
                field: String::new(),
                op: "eq".into(),
                value: String::new(),
                error: None,
            }],
        }
    }

    fn from_form(form: &FormData) -> Builder {
        let get = |k: &str| form.get(k).unwrap_or("").trim().to_string();
        let mut rows = Vec::new();
        for i in 0.. {
            let Some(field) = form.get(&format!("field_{i}")) else {
                break;
            };
            rows.push(ConditionRow {
                field: field.trim().to_string(),
                op: get(&format!("op_{i}")),
                value: form.get(&format!("value_{i}")).unwrap_or("").to_string(),
                error: None,
            });
        }
        Builder {
            name: get("name"),
            entity_set: get("entity_set"),
            combine: if get("combine") == "any" {
                "any"
            } else {
                "all"
            }
            .into(),
            rows,
        }
    }

    /// One row's comparison as the API's JSON: the value typed by the
    /// field's kind (text that does not fit is passed on for core to refuse).
    fn comparison(set: Option<EntitySet>, row: &ConditionRow) -> Value {
        let mut c = json!({"field": row.field, "op": row.op});
        if row.op == "is_null" || row.op == "not_null" {
            return c;
        }
        let typed = |t: &str| match set.and_then(|s| s.field(&row.field)) {
            Some(def) if !t.starts_with('@') => field_value(def.kind, t, None),
            _ => json!(t.trim()),
        };
        c["value"] = if row.op == "in" {
            Value::Array(
                row.value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(typed)
                    .collect(),
            )
        } else {
            typed(&row.value)
        };
        c
    }

    fn body(&self) -> Value {
        let set = self.entity_set.parse::<EntitySet>().ok();
        let conditions: Vec<Value> = self
            .rows
            .iter()
            .map(|r| Builder::comparison(set, r))
            .collect();
        json!({
            "name": self.name,
            "entity_set": self.entity_set,
            "scope": "system",
            "condition": {self.combine.as_str(): conditions},
        })
    }

    /// Places core's refusal: by key ("name: ..."), by the row index in
    /// its path ("condition.all[1] ..."), or by the row's field name.
    fn place(&mut self, message: &str) -> (Option<String>, Option<String>, Option<String>) {
        if let Some(m) = message.strip_prefix("name:") {
            return (Some(m.trim().into()), None, None);
        }
        if let Some(m) = message.strip_prefix("entity_set:") {
            return (None, Some(m.trim().into()), None);
        }
        let indexed = message
            .strip_prefix(&format!("condition.{}[", self.combine))
            .and_then(|rest| rest.split(']').next())
            .and_then(|n| n.parse::<usize>().ok());
        let row = indexed.or_else(|| {
            let (field, _) = message.split_once(':')?;
            self.rows.iter().position(|r| r.field == field)
        });
        match row.and_then(|i| self.rows.get_mut(i)) {
            Some(r) => {
                let text = message.split_once(": ").map_or(message, |(_, m)| m);
                r.error = Some(text.to_string());
                (None, None, None)
            }
            None => (None, None, Some(message.to_string())),
        }
    }
}

/// What a kind of filter's admin page says and where it posts: system
/// sync filters (R-S6) decide what reaches mailboxes, offline filters
/// (R-O1) what offline copies keep.
pub struct FilterWords {
    kind: FilterKind,
    pub title: &'static str,
    pub path: &'static str,
    pub intro: &'static str,
    pub matches: &'static str,
}

const SYNC_FILTERS: FilterWords = FilterWords {
    kind: FilterKind::Sync,
    title: "System sync filters",
    path: "/admin/filters",
    intro: "A system filter decides, for every user, which records of a set are delivered to mailboxes.",
    matches: "Deliver a record when it matches",
};

const OFFLINE_FILTERS: FilterWords = FilterWords {
    kind: FilterKind::Offline,
    title: "Offline filters",
    path: "/admin/offline-filters",
    intro: "An offline filter decides, for every user allowed to go offline, which records their offline copy keeps. Without any, the defaults apply: the active records each user owns and the activities about them from the last 90 days.",
    matches: "Keep a record offline when it matches",
};

async fn filters_page(
    state: &AppState,
    user: &WebUser,
    words: &'static FilterWords,
    status: StatusCode,
    builder: Builder,
    errors: (Option<String>, Option<String>, Option<String>),
) -> Response {
    let filters = match crate::config::list_filters(&state.store, words.kind, user.caller).await {
        Ok(f) => f,
        Err(e) => return super::error_page_for(user, e),
    };
    let filters = filters
        .iter()
        .filter(|f| text(f, "scope") == "system")
        .map(|f| FilterRow {
            id: text(f, "id"),
            name: text(f, "name"),
            set: text(f, "entity_set")
                .parse::<EntitySet>()
                .map_or("", set_title),
            condition: f["condition"].to_string(),
            active: yes_no(&f["active"]),
        })
        .collect();
    let page = FiltersPage {
        layout: Layout::new(words.title, user, "/admin"),
        csrf: user.csrf.clone(),
        words,
        filters,
        sets: words
            .kind
            .sets()
            .into_iter()
            .map(|s| (s.to_string(), set_title(s)))
            .collect(),
        ops: OPS,
        name: builder.name,
        name_error: errors.0,
        entity_set: builder.entity_set,
        set_error: errors.1,
        combine: builder.combine,
        rows: builder.rows,
        error: errors.2,
    };
    (status, page).into_response()
}

pub async fn filters(State(state): State<AppState>, AdminUser(user): AdminUser) -> Response {
    let empty = Builder::empty();
    filters_page(
        &state,
        &user,
        &SYNC_FILTERS,
        StatusCode::OK,
        empty,
        Default::default(),
    )
    .await
}

pub async fn offline_filters(
    State(state): State<AppState>,
    AdminUser(user): AdminUser,
) -> Response {
    let empty = Builder::empty();
    filters_page(
        &state,
        &user,
        &OFFLINE_FILTERS,
        StatusCode::OK,
        empty,
        Default::default(),
    )
    .await
}

pub async fn build_filter(state: State<AppState>, posted: AdminPosted) -> Response {
    build(state, posted, &SYNC_FILTERS).await
}

pub async fn build_offline_filter(state: State<AppState>, posted: AdminPosted) -> Response {
    build(state, posted, &OFFLINE_FILTERS).await
}

pub async fn delete_filter(
    state: State<AppState>,
    id: Path<String>,
    posted: AdminPosted,
) -> Response {
    delete(state, id, posted, &SYNC_FILTERS).await
}

pub async fn delete_offline_filter(
    state: State<AppState>,
    id: Path<String>,
    posted: AdminPosted,
) -> Response {
    delete(state, id, posted, &OFFLINE_FILTERS).await
}

/// The builder's buttons: add a row, remove one, or save the filter.
async fn build(
    State(state): State<AppState>,
    AdminPosted(posted): AdminPosted,
    words: &'static FilterWords,
) -> Response {
    let user = &posted.user;
    let mut builder = Builder::from_form(&posted.form);
    let action = posted.form.get("_action").unwrap_or("save");
    if action == "add" {
        builder.rows.push(ConditionRow {
            field: String::new(),
            op: "eq".into(),
            value: String::new(),
            error: None,
        });
    } else if let Some(i) = action
        .strip_prefix("remove_")
        .and_then(|n| n.parse::<usize>().ok())
    {
        if i < builder.rows.len() {
            builder.rows.remove(i);
        }
    }
    if action != "save" {
        let kept = Default::default();
        return filters_page(&state, user, words, StatusCode::OK, builder, kept).await;
    }
    let body = builder.body();
    match crate::config::create_filter(&state.store, words.kind, user.caller, &body).await {
        Ok(_) => Redirect::to(words.path).into_response(),
        Err(e) if !e.status.is_server_error() => {
            let errors = builder.place(&e.message);
            filters_page(&state, user, words, e.status, builder, errors).await
        }
        Err(e) => super::error_page_for(user, e),
    }
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AdminPosted(posted): AdminPosted,
    words: &'static FilterWords,
) -> Response {
    let caller = posted.user.caller;
    delete_rule(&posted, &id, "filter", words.path, |id| {
        crate::config::delete_filter(&state.store, words.kind, caller, id)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(field: &str, op: &str, value: &str) -> ConditionRow {
        ConditionRow {
            field: field.into(),
            op: op.into(),
            value: value.into(),
            error: None,
        }
    }

    fn builder(rows: Vec<ConditionRow>) -> Builder {
        Builder {
            name: "F".into(),
            entity_set: "tasks".into(),
            combine: "any".into(),
            rows,
        }
    }

    #[test]
    fn r_s6_builder_rows_become_the_condition_tree_typed_by_field() {
        let b = builder(vec![
            row("percent_complete", "ge", "50"),
            row("state", "in", "open, completed"),
            row("due", "is_null", "ignored"),
            row("owner_id", "eq", "@me"),
        ]);
        assert_eq!(
            b.body()["condition"],
            json!({"any": [
                {"field": "percent_complete", "op": "ge", "value": 50},
                {"field": "state", "op": "in", "value": ["open", "completed"]},
                {"field": "due", "op": "is_null"},
                {"field": "owner_id", "op": "eq", "value": "@me"},
            ]})
        );
        assert_eq!(b.body()["scope"], "system");
    }

    #[test]
    fn r_w7_builder_refusals_land_on_their_row() {
        let mut b = builder(vec![row("subject", "eq", "x"), row("nope", "eq", "x")]);
        assert_eq!(
            b.place("condition.any[1]: 'nope' is not a field of tasks"),
            (None, None, None)
        );
        assert!(b.rows[1].error.as_deref().unwrap().contains("not a field"));
        let mut b = builder(vec![row("subject", "eq", "x")]);
        b.place("subject: value must be a string");
        assert_eq!(b.rows[0].error.as_deref(), Some("value must be a string"));
        let mut b = builder(vec![]);
        assert!(b.place("name: a filter needs a name").0.is_some());
        assert!(b.place("something else").2.is_some());
    }
}
