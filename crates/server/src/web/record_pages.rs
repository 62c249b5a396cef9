//! A record's page, its edit and create forms and its deletion (R-W4,
//! R-W5). Writes go through `crate::records` exactly as the API's do;
//! a save carries the version shown, and a record changed meanwhile gets
//! the stale-edit page with both values instead of being overwritten.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde_json::Value;
use uuid::Uuid;

use crmsync_core::{EntitySet, Record};

use super::csrf::Posted;
use super::forms::{self, display_name, Input, Shown};
use super::layout::{label, set_singular, Layout};
use super::pages::page;
use super::session::WebUser;
use super::timeline::{self, Timeline};
use crate::error::ApiError;
use crate::AppState;

/// The record of a page's path, or the page that says why there is none.
pub(super) async fn load(
    state: &AppState,
    user: &WebUser,
    set: EntitySet,
    id: &str,
) -> Result<Record, Response> {
    let not_found = || {
        super::error_page_for(
            user,
            ApiError::not_found(format!(
                "There is no {} with this id; it may have been deleted.",
                set_singular(set)
            )),
        )
    };
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    match state.store.get(id).await {
        Ok(Some(r)) if r.set == set => Ok(r),
        Ok(_) => Err(not_found()),
        Err(e) => Err(super::server_error(e.into())),
    }
}

/// Names of the records `ids` point to, in one query.
async fn names(state: &AppState, ids: Vec<Uuid>) -> Result<HashMap<Uuid, String>, Response> {
    let mut conn = state
        .store
        .pool
        .acquire()
        .await
        .map_err(|e| super::server_error(e.into()))?;
    let found = crate::store::records_by_ids(&mut conn, &ids)
        .await
        .map_err(|e| super::server_error(e.into()))?;
    Ok(found
        .into_iter()
        .filter(|(_, deleted)| !deleted)
        .map(|(r, _)| (r.id, display_name(&r)))
        .collect())
}

pub struct Address {
    pub address: String,
    pub href: Option<String>,
}

/// What the email view shows besides the fields.
pub struct EmailView {
    pub from: Option<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub subject: String,
    pub date: String,
    pub body: String,
    pub attachments: Vec<String>,
}

#[derive(Template)]
#[template(path = "record.html")]
pub struct RecordPage {
    layout: Layout,
    base: String,
    singular: &'static str,
    fields: Vec<Shown>,
    owner: String,
    state: String,
    created_at: String,
    modified_at: String,
    email: Option<EmailView>,
    timeline: Option<Timeline>,
    /// Links to "Set regarding" and "Why isn't this in my mailbox?".
    regarding_link: bool,
    explain_link: bool,
}

#[derive(Template)]
#[template(path = "form.html")]
pub struct FormPage {
    layout: Layout,
    action: String,
    cancel: String,
    csrf: String,
    version: Option<i64>,
    inputs: Vec<Input>,
    errors: Vec<String>,
}

pub struct Difference {
    pub label: String,
    pub yours: String,
    pub current: String,
}

#[derive(Template)]
#[template(path = "stale.html")]
pub struct StalePage {
    layout: Layout,
    base: String,
    differences: Vec<Difference>,
}

#[derive(Template)]
#[template(path = "delete.html")]
pub struct DeletePage {
    layout: Layout,
    base: String,
    csrf: String,
    version: i64,
    name: String,
    singular: &'static str,
}

page!(RecordPage, FormPage, StalePage, DeletePage);

fn nav_of(set: EntitySet) -> String {
    if super::WEB_SETS[..5].contains(&set) {
        format!("/{set}")
    } else {
        "/activities".into()
    }
}

/// The parties of an email by address, and the record each resolved to.
fn resolved_addresses(r: &Record) -> HashMap<String, String> {
    r.fields
        .get("parties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let address = p.get("address")?.as_str()?.to_lowercase();
            let resolved = p.get("resolved")?;
            let (set, id) = (
                resolved.get("set")?.as_str()?,
                resolved.get("id")?.as_str()?,
            );
            Some((address, format!("/{set}/{id}")))
        })
        .collect()
}

async fn email_view(state: &AppState, r: &Record) -> EmailView {
    let resolved = resolved_addresses(r);
    let address = |a: &str| Address {
        address: a.to_string(),
        href: resolved.get(&a.to_lowercase()).cloned(),
    };
    let list = |k: &str| -> Vec<Address> {
        r.fields
            .get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(address)
            .collect()
    };
    let text = |k: &str| {
        r.fields
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // R-W1: the HTML body is never executed; without a text body its
    // source is shown as text.
    let body = match text("body_text") {
        t if !t.is_empty() => t,
        _ => text("body_html"),
    };
    let raw: Option<String> =
        sqlx::query_scalar("SELECT raw FROM email_messages WHERE record_id = $1")
            .bind(r.id.to_string())
            .fetch_optional(&state.store.pool)
            .await
            .unwrap_or(None);
    let attachments = raw
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|bytes| crmsync_core::email::attachment_names(&bytes))
        .unwrap_or_default();
    EmailView {
        from: r.fields.get("from").and_then(Value::as_str).map(address),
        to: list("to"),
        cc: list("cc"),
        subject: text("subject"),
        date: text("sent_at"),
        body,
        attachments,
    }
}

pub async fn show(
    State(state): State<AppState>,
    user: WebUser,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let set = super::set_of(&uri);
    let r = match load(&state, &user, set, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let mut ids = forms::referenced_ids(&r);
    ids.push(r.owner_id);
    let names = match names(&state, ids).await {
        Ok(n) => n,
        Err(page) => return page,
    };
    let timeline = if crmsync_core::entity::REGARDING_SETS.contains(&set) {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        match timeline::load(&state.store, &r, get("type"), get("cursor")).await {
            Ok(t) => Some(t),
            Err(e) => return super::server_error(e.into()),
        }
    } else {
        None
    };
    let email = if set == EntitySet::Emails {
        Some(email_view(&state, &r).await)
    } else {
        None
    };
    RecordPage {
        layout: Layout::new(display_name(&r), &user, &nav_of(set)),
        base: format!("/{set}/{}", r.id),
        singular: set_singular(set),
        fields: forms::shown_fields(&r, &names),
        owner: names
            .get(&r.owner_id)
            .cloned()
            .unwrap_or_else(|| r.owner_id.to_string()),
        state: label(&r.state),
        created_at: r.created_at.clone(),
        modified_at: r.modified_at.clone(),
        email,
        timeline,
        regarding_link: super::regarding::has_regarding(set),
        explain_link: set.syncs_to_mailbox(),
    }
    .into_response()
}

fn form_page(
    user: &WebUser,
    set: EntitySet,
    record: Option<&Record>,
    posted: Option<&super::csrf::FormData>,
    refusal: Option<&ApiError>,
) -> FormPage {
    let (field_errors, errors) = match refusal {
        Some(e) => forms::field_errors(set, &e.message),
        None => (HashMap::new(), vec![]),
    };
    let (title, action, cancel) = match record {
        Some(r) => (
            format!("Edit {}", display_name(r)),
            format!("/{set}/{}/edit", r.id),
            format!("/{set}/{}", r.id),
        ),
        None => (
            format!("New {}", set_singular(set)),
            format!("/{set}/new"),
            format!("/{set}"),
        ),
    };
    // The version shown is the one the form was built from, also when it
    // comes back refused.
    let version = posted
        .and_then(|f| f.get("_version"))
        .and_then(|v| v.parse().ok())
        .or(record.map(|r| r.version));
    FormPage {
        layout: Layout::new(title, user, &nav_of(set)),
        action,
        cancel,
        csrf: user.csrf.clone(),
        version,
        inputs: forms::inputs(set, record, posted, &field_errors),
        errors,
    }
}

/// A refused form again, with the API's messages and its status.
fn refused(
    user: &WebUser,
    set: EntitySet,
    record: Option<&Record>,
    posted: &super::csrf::FormData,
    e: ApiError,
) -> Response {
    if e.status.is_server_error() {
        return super::error_page_for(user, e);
    }
    (
        e.status,
        form_page(user, set, record, Some(posted), Some(&e)),
    )
        .into_response()
}

pub async fn new_form(user: WebUser, OriginalUri(uri): OriginalUri) -> Response {
    form_page(&user, super::set_of(&uri), None, None, None).into_response()
}

pub async fn create(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    posted: Posted,
) -> Response {
    let set = super::set_of(&uri);
    let body = forms::body_from_form(set, &posted.form, None);
    match crate::records::create(&state.store, posted.user.caller, set, &body).await {
        Ok(created) => Redirect::to(&format!("/{set}/{}", created.record.id)).into_response(),
        Err(e) => refused(&posted.user, set, None, &posted.form, e),
    }
}

pub async fn edit_form(
    State(state): State<AppState>,
    user: WebUser,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let set = super::set_of(&uri);
    match load(&state, &user, set, &id).await {
        Ok(r) => form_page(&user, set, Some(&r), None, None).into_response(),
        Err(page) => page,
    }
}

/// The fields where what was sent differs from the record as it is now.
fn differences(set: EntitySet, form: &super::csrf::FormData, current: &Record) -> Vec<Difference> {
    let mut out: Vec<Difference> = forms::form_fields(set)
        .filter_map(|def| {
            let yours = form.get(def.name)?.trim().replace("\r\n", "\n");
            let now = current
                .fields
                .get(def.name)
                .map(|v| forms::value_text(def.kind, v))
                .unwrap_or_default();
            (yours != now.trim()).then(|| Difference {
                label: label(def.name),
                yours,
                current: now,
            })
        })
        .collect();
    if let Some(yours) = form.get("state").filter(|s| *s != current.state) {
        out.push(Difference {
            label: "State".into(),
            yours: label(yours),
            current: label(&current.state),
        });
    }
    out
}

/// The record a posted form changes (by the page's set and `id`) and the
/// version the form showed; an error page when either is missing. `verb`
/// says what the form does ("edits", "deletes"...).
pub(super) async fn posted_record(
    state: &AppState,
    uri: &axum::http::Uri,
    id: &str,
    posted: &Posted,
    verb: &str,
) -> Result<(EntitySet, Record, i64), Response> {
    let set = super::set_of(uri);
    let current = load(state, &posted.user, set, id).await?;
    let Some(version) = posted
        .form
        .get("_version")
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return Err(super::error_page_for(&posted.user, ApiError::bad_request(
            "bad_form",
            format!("The form did not say which version of the record it {verb}; open the record again and try there."),
        )));
    };
    Ok((set, current, version))
}

pub async fn save(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let (set, current, version) = match posted_record(&state, &uri, &id, &posted, "edits").await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let body = forms::body_from_form(set, &posted.form, Some(&current));
    match crate::records::update(
        &state.store,
        posted.user.caller,
        set,
        current.id,
        &body,
        Some(version),
    )
    .await
    {
        Ok(r) => Redirect::to(&format!("/{set}/{}", r.id)).into_response(),
        Err(e) if e.code == "version_mismatch" => (
            StatusCode::CONFLICT,
            StalePage {
                layout: Layout::new(
                    format!("{} was changed meanwhile", display_name(&current)),
                    &posted.user,
                    &nav_of(set),
                ),
                base: format!("/{set}/{}", current.id),
                differences: differences(set, &posted.form, &current),
            },
        )
            .into_response(),
        Err(e) => refused(&posted.user, set, Some(&current), &posted.form, e),
    }
}

pub async fn confirm_delete(
    State(state): State<AppState>,
    user: WebUser,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let set = super::set_of(&uri);
    match load(&state, &user, set, &id).await {
        Ok(r) => DeletePage {
            layout: Layout::new(format!("Delete {}?", display_name(&r)), &user, &nav_of(set)),
            base: format!("/{set}/{}", r.id),
            csrf: user.csrf.clone(),
            version: r.version,
            name: display_name(&r),
            singular: set_singular(set),
        }
        .into_response(),
        Err(page) => page,
    }
}

pub async fn delete(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let (set, current, version) = match posted_record(&state, &uri, &id, &posted, "deletes").await {
        Ok(found) => found,
        Err(page) => return page,
    };
    match crate::records::delete(&state.store, posted.user.caller, set, current.id, Some(version)).await {
        Ok(()) => Redirect::to(&format!("/{set}")).into_response(),
        Err(e) if e.code == "version_mismatch" => super::error_page_for(&posted.user, ApiError::conflict(
            "version_mismatch",
            format!(
                "This {} was changed after you opened it, so it was not deleted. Open it again, check the changes, and delete it then if you still want to.",
                set_singular(set)
            ),
        )),
        Err(e) => super::error_page_for(&posted.user, e),
    }
}
