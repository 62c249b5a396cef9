//! Admin forms over configuration documents (R-W7): organization and user
//! settings, a user's role and privileges, and sync-field directions. Each
//! form becomes the body of the API's PATCH and goes through the same
//! function (`crate::config`, `crate::records`), so core validates it once;
//! a refusal is shown next to the field it names and nothing is saved.

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crmsync_core::settings::MAILBOX_TYPES;
use crmsync_core::EntitySet;

use super::csrf::{FormData, Posted};
use super::forms::{Input, Widget};
use super::layout::{label, set_title, Layout};
use super::pages::page;
use super::session::WebUser;
use crate::error::ApiError;
use crate::AppState;

/// A form of labelled inputs (the record form's template).
#[derive(Template)]
#[template(path = "form.html")]
pub struct ConfigForm {
    layout: Layout,
    action: String,
    cancel: String,
    csrf: String,
    version: Option<i64>,
    inputs: Vec<Input>,
    errors: Vec<String>,
}

/// The mailbox sets whose sync-field directions can be chosen.
#[derive(Template)]
#[template(path = "sync_fields.html")]
pub struct SyncFieldSets {
    layout: Layout,
    sets: Vec<(String, &'static str)>,
}

page!(ConfigForm, SyncFieldSets);

fn not_admin(user: &WebUser) -> Response {
    super::error_page_for(
        user,
        ApiError::forbidden("Only an admin may open this page."),
    )
}

/// The signed-in user of an Admin page: a plain user gets the 403 page
/// (R-W7) before the handler runs.
pub struct AdminUser(pub WebUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let user = WebUser::from_request_parts(parts, state).await?;
        match user.caller.is_admin {
            true => Ok(AdminUser(user)),
            false => Err(not_admin(&user)),
        }
    }
}

/// A form posted from an Admin page: checked as every form is (session,
/// CSRF), then refused with the 403 page for a plain user.
pub struct AdminPosted(pub Posted);

impl FromRequest<AppState> for AdminPosted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let posted = Posted::from_request(req, state).await?;
        match posted.user.caller.is_admin {
            true => Ok(AdminPosted(posted)),
            false => Err(not_admin(&posted.user)),
        }
    }
}

const YES_NO: [(&str, &str); 2] = [("true", "Yes"), ("false", "No")];

fn options(pairs: &[(&str, &str)]) -> Widget {
    Widget::Select(
        pairs
            .iter()
            .map(|(v, t)| (v.to_string(), t.to_string()))
            .collect(),
    )
}

/// R-M6's choices, in words.
const AUTO_TRACK: [(&str, &str); 5] = [
    ("none", "None"),
    ("all", "All email"),
    ("replies_to_crm_email", "Replies to CRM email"),
    (
        "from_crm_contacts_leads_accounts",
        "From CRM contacts, leads and accounts",
    ),
    ("from_crm_records", "From any CRM record"),
];

/// One input per setting of a settings document, showing `shown` (the
/// stored document, or what was posted when it was refused).
fn setting_inputs(
    doc: &Map<String, Value>,
    shown: &Map<String, Value>,
    errors: &Map<String, Value>,
) -> Vec<Input> {
    doc.iter()
        .map(|(key, stored)| {
            let value = shown.get(key).unwrap_or(stored);
            let (widget, text, hint) = match stored {
                Value::Bool(_) => (options(&YES_NO), value.to_string(), None),
                Value::Number(_) => (Widget::Input("number"), plain(value), None),
                Value::Array(_) => (
                    Widget::Input("text"),
                    value
                        .as_array()
                        .map(|a| a.iter().map(plain).collect::<Vec<_>>().join(", "))
                        .unwrap_or_else(|| plain(value)),
                    Some(if key == "entity_types" {
                        format!(
                            "Separated by commas, from: {}",
                            MAILBOX_TYPES.map(|s| s.as_str()).join(", ")
                        )
                    } else {
                        "Separated by commas".to_string()
                    }),
                ),
                _ if key == "auto_track" => (options(&AUTO_TRACK), plain(value), None),
                _ => (Widget::Input("text"), plain(value), None),
            };
            Input {
                name: key.clone(),
                label: label(key),
                widget,
                value: text,
                required: false,
                hint,
                error: errors.get(key).map(plain),
            }
        })
        .collect()
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The PATCH body a settings form posts, typed as the stored document is;
/// a number that does not parse is refused here, next to its field.
fn settings_patch(
    doc: &Map<String, Value>,
    form: &FormData,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut patch = Map::new();
    let mut errors = Map::new();
    for (key, stored) in doc {
        let Some(text) = form.get(key) else { continue };
        let text = text.trim();
        let value = match stored {
            Value::Bool(_) => json!(text == "true"),
            Value::Number(_) => match text.parse::<u32>() {
                Ok(n) => json!(n),
                Err(_) => {
                    errors.insert(key.clone(), json!("must be a whole number, such as 20"));
                    json!(text)
                }
            },
            Value::Array(_) => Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| json!(s))
                    .collect(),
            ),
            _ => json!(text),
        };
        patch.insert(key.clone(), value);
    }
    (patch, errors)
}

/// Places a refusal next to the setting it names ("key: ..." or "key ...");
/// one that names none is shown above the form.
fn place_refusal(
    doc: &Map<String, Value>,
    message: &str,
    errors: &mut Map<String, Value>,
) -> Vec<String> {
    let named = doc
        .keys()
        .filter(|k| {
            message
                .strip_prefix(k.as_str())
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with(' '))
        })
        .max_by_key(|k| k.len());
    match named {
        Some(k) => {
            let text = message[k.len()..].trim_start_matches(':').trim();
            errors.insert(k.clone(), json!(text));
            vec![]
        }
        None => vec![message.to_string()],
    }
}

fn as_object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Which settings document a form edits.
#[derive(Clone, Copy)]
enum Settings {
    Org,
    User(Uuid),
}

impl Settings {
    async fn read(self, state: &AppState, user: &WebUser) -> Result<Value, ApiError> {
        match self {
            Settings::Org => Ok(json!(crate::config::org_settings(&state.store).await?)),
            Settings::User(id) => Ok(json!(
                crate::config::user_settings(&state.store, user.caller, id).await?
            )),
        }
    }

    async fn patch(self, state: &AppState, user: &WebUser, body: &Value) -> Result<(), ApiError> {
        match self {
            Settings::Org => {
                crate::config::patch_org_settings(&state.store, user.caller, body).await?;
            }
            Settings::User(id) => {
                crate::config::patch_user_settings(&state.store, user.caller, id, body).await?;
            }
        }
        Ok(())
    }

    fn action(self) -> String {
        match self {
            Settings::Org => "/admin/settings".into(),
            Settings::User(id) => format!("/admin/users/{id}/settings"),
        }
    }

    async fn title(self, state: &AppState) -> String {
        match self {
            Settings::Org => "Organization settings".into(),
            Settings::User(id) => {
                let email = state
                    .store
                    .get(id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| {
                        r.fields
                            .get("email")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                format!("Settings of {email}")
            }
        }
    }
}

async fn settings_form(
    state: &AppState,
    user: &WebUser,
    which: Settings,
    status: StatusCode,
    shown: Map<String, Value>,
    mut errors: Map<String, Value>,
    refusal: Option<&str>,
) -> Response {
    let doc = match which.read(state, user).await {
        Ok(d) => as_object(d),
        Err(e) => return super::error_page_for(user, e),
    };
    let mut general = refusal.map_or_else(Vec::new, |m| place_refusal(&doc, m, &mut errors));
    if status != StatusCode::OK && general.is_empty() && !errors.is_empty() {
        general.push("The settings were not saved; see the fields marked below.".into());
    }
    let page = ConfigForm {
        layout: Layout::new(which.title(state).await, user, "/admin"),
        action: which.action(),
        cancel: "/admin".into(),
        csrf: user.csrf.clone(),
        version: None,
        inputs: setting_inputs(&doc, &shown, &errors),
        errors: general,
    };
    (status, page).into_response()
}

async fn show_settings(state: &AppState, user: &WebUser, which: Settings) -> Response {
    let none = Map::new();
    settings_form(state, user, which, StatusCode::OK, none.clone(), none, None).await
}

async fn save_settings(state: &AppState, posted: &Posted, which: Settings) -> Response {
    let user = &posted.user;
    let doc = match which.read(state, user).await {
        Ok(d) => as_object(d),
        Err(e) => return super::error_page_for(user, e),
    };
    let (patch, errors) = settings_patch(&doc, &posted.form);
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    if !errors.is_empty() {
        return settings_form(state, user, which, status, patch, errors, None).await;
    }
    match which
        .patch(state, user, &Value::Object(patch.clone()))
        .await
    {
        Ok(()) => Redirect::to(&which.action()).into_response(),
        Err(e) if !e.status.is_server_error() => {
            let refusal = Some(e.message.as_str());
            settings_form(state, user, which, e.status, patch, Map::new(), refusal).await
        }
        Err(e) => super::error_page_for(user, e),
    }
}

pub async fn org_settings(State(state): State<AppState>, AdminUser(user): AdminUser) -> Response {
    show_settings(&state, &user, Settings::Org).await
}

pub async fn save_org_settings(
    State(state): State<AppState>,
    AdminPosted(posted): AdminPosted,
) -> Response {
    save_settings(&state, &posted, Settings::Org).await
}

fn user_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("There is no such user."))
}

pub async fn user_settings(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AdminUser(user): AdminUser,
) -> Response {
    match user_id(&id) {
        Ok(id) => show_settings(&state, &user, Settings::User(id)).await,
        Err(e) => super::error_page_for(&user, e),
    }
}

pub async fn save_user_settings(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AdminPosted(posted): AdminPosted,
) -> Response {
    match user_id(&id) {
        Ok(id) => save_settings(&state, &posted, Settings::User(id)).await,
        Err(e) => super::error_page_for(&posted.user, e),
    }
}

/// A user's role and privileges: the API's user update (core validates,
/// R-A rules apply), from checkboxes (an unticked box is not posted).
pub async fn save_access(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AdminPosted(posted): AdminPosted,
) -> Response {
    let user = &posted.user;
    let id = match user_id(&id) {
        Ok(id) => id,
        Err(e) => return super::error_page_for(user, e),
    };
    let ticked = |k: &str| posted.form.get(k) == Some("on");
    let body = json!({
        "role": if ticked("admin") { "admin" } else { "user" },
        "approved_email": ticked("approved_email"),
        "sync_to_mailbox": ticked("sync_to_mailbox"),
        "go_offline": ticked("go_offline"),
    });
    match crate::records::update(&state.store, user.caller, EntitySet::Users, id, &body, None).await
    {
        Ok(r) => {
            let email = r.fields.get("email").and_then(Value::as_str).unwrap_or("");
            let notice = format!("Saved the role and privileges of {email}.");
            super::work::admin_page(&state, user, StatusCode::OK, Some(notice), None, None).await
        }
        Err(e) if !e.status.is_server_error() => {
            super::work::admin_page(&state, user, e.status, None, Some(e.message), None).await
        }
        Err(e) => super::error_page_for(user, e),
    }
}

/// R-F1's directions, in words.
const DIRECTIONS: [(&str, &str); 4] = [
    ("both", "Both ways"),
    ("to_mailbox", "CRM to mailbox only"),
    ("to_crm", "Mailbox to CRM only"),
    ("none", "Not synchronized"),
];

pub async fn sync_field_sets(
    State(_state): State<AppState>,
    AdminUser(user): AdminUser,
) -> Response {
    SyncFieldSets {
        layout: Layout::new("Sync-field directions", &user, "/admin"),
        sets: EntitySet::ALL
            .into_iter()
            .filter(|s| s.syncs_to_mailbox())
            .map(|s| (s.to_string(), set_title(s)))
            .collect(),
    }
    .into_response()
}

fn mailbox_set(set: &str) -> Result<EntitySet, ApiError> {
    set.parse::<EntitySet>()
        .ok()
        .filter(|s| s.syncs_to_mailbox())
        .ok_or_else(|| ApiError::not_found("There is no such set of synchronized fields."))
}

async fn sync_fields_form(
    state: &AppState,
    user: &WebUser,
    set: EntitySet,
    status: StatusCode,
    shown: &Map<String, Value>,
    refusal: Option<&str>,
) -> Response {
    let fields = match crate::config::sync_fields(&state.store, set).await {
        Ok(f) => as_object(json!(f)),
        Err(e) => return super::error_page_for(user, e),
    };
    let mut errors = Map::new();
    let general = refusal.map_or_else(Vec::new, |m| place_refusal(&fields, m, &mut errors));
    let inputs = fields
        .iter()
        .map(|(name, stored)| Input {
            name: name.clone(),
            label: label(name),
            widget: options(&DIRECTIONS),
            value: plain(shown.get(name).unwrap_or(stored)),
            required: false,
            hint: None,
            error: errors.get(name).map(plain),
        })
        .collect();
    let page = ConfigForm {
        layout: Layout::new(
            format!("Sync-field directions: {}", set_title(set)),
            user,
            "/admin",
        ),
        action: format!("/admin/sync-fields/{set}"),
        cancel: "/admin/sync-fields".into(),
        csrf: user.csrf.clone(),
        version: None,
        inputs,
        errors: general,
    };
    (status, page).into_response()
}

pub async fn sync_fields(
    State(state): State<AppState>,
    Path(set): Path<String>,
    AdminUser(user): AdminUser,
) -> Response {
    match mailbox_set(&set) {
        Ok(set) => sync_fields_form(&state, &user, set, StatusCode::OK, &Map::new(), None).await,
        Err(e) => super::error_page_for(&user, e),
    }
}

/// The directions posted, as the API's PATCH body (core checks each).
pub async fn save_sync_fields(
    State(state): State<AppState>,
    Path(set): Path<String>,
    AdminPosted(posted): AdminPosted,
) -> Response {
    let user = &posted.user;
    let set = match mailbox_set(&set) {
        Ok(s) => s,
        Err(e) => return super::error_page_for(user, e),
    };
    let patch: Map<String, Value> = posted
        .form
        .0
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let body = Value::Object(patch.clone());
    match crate::config::patch_sync_fields_of(&state.store, user.caller, set, &body).await {
        Ok(_) => Redirect::to(&format!("/admin/sync-fields/{set}")).into_response(),
        Err(e) if !e.status.is_server_error() => {
            sync_fields_form(&state, user, set, e.status, &patch, Some(&e.message)).await
        }
        Err(e) => super::error_page_for(user, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Map<String, Value> {
        as_object(json!(crmsync_core::settings::OrgSettings::default()))
    }

    #[test]
    fn r_w7_refusals_are_placed_at_the_setting_they_name() {
        let mut errors = Map::new();
        let rest = place_refusal(
            &doc(),
            "sync_interval_min: '0m' must be more than 0",
            &mut errors,
        );
        assert!(rest.is_empty());
        assert_eq!(errors["sync_interval_min"], "'0m' must be more than 0");
        let mut errors = Map::new();
        place_refusal(
            &doc(),
            "tracking_token_prefix must be 1 to 16 letters or digits",
            &mut errors,
        );
        assert_eq!(
            errors["tracking_token_prefix"],
            "must be 1 to 16 letters or digits"
        );
        let mut errors = Map::new();
        assert_eq!(
            place_refusal(&doc(), "the body must be a JSON object", &mut errors).len(),
            1
        );
        assert!(errors.is_empty());
    }

    #[test]
    fn r_w7_settings_forms_post_values_typed_as_the_document() {
        let form = FormData(vec![
            ("tagging".into(), "false".into()),
            ("mass_delete_max_items".into(), "12".into()),
            ("exclusions".into(), " @a.example, ,noreply@* ".into()),
            ("mass_delete_min_items".into(), "few".into()),
        ]);
        let (patch, errors) = settings_patch(&doc(), &form);
        assert_eq!(patch["tagging"], json!(false));
        assert_eq!(patch["mass_delete_max_items"], json!(12));
        assert_eq!(patch["exclusions"], json!(["@a.example", "noreply@*"]));
        assert!(errors.contains_key("mass_delete_min_items"));
        assert!(
            !patch.contains_key("sync_interval"),
            "what was not posted is not changed"
        );
    }
}
