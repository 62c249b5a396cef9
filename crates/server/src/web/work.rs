//! The pages around the records: Activities (the user's open work across
//! records), Sync (the user's clients and the conflict log) and Admin.
//! Each reads through the same functions as the API.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;
use uuid::Uuid;

use crmsync_core::EntitySet;

use super::csrf::Posted;
use super::forms::display_name;
use super::layout::{label, set_singular, Layout};
use super::pages::page;
use super::session::WebUser;
use crate::store::ListQuery;
use crate::AppState;

/// How many open items of each kind the Activities page lists.
const PER_KIND: i64 = 100;

pub struct Activity {
    pub kind: &'static str,
    pub href: String,
    pub title: String,
    pub when: String,
    pub state: String,
}

#[derive(Template)]
#[template(path = "activities.html")]
pub struct ActivitiesPage {
    layout: Layout,
    items: Vec<Activity>,
    capped: bool,
}

pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub kinds: String,
    /// When it last prepared a sync ("Never" before its first).
    pub last_sync: String,
    pub result: String,
    pub counts: crate::sync::store::EntryCounts,
    /// Items of its mailbox it cannot read, with the fix, as it last reported.
    pub problems: Vec<crate::sync::store::ClientProblem>,
}

pub struct ConflictView {
    pub when: String,
    pub href: String,
    pub field: String,
    pub crm: String,
    pub mailbox: String,
    pub kept: String,
}

#[derive(Template)]
#[template(path = "sync.html")]
pub struct SyncPage {
    layout: Layout,
    csrf: String,
    clients: Vec<ClientRow>,
    /// R-W6, R-V5: the mailboxes the server synchronizes.
    mailboxes: Vec<super::mailboxes::MailboxRow>,
    outcome: SyncOutcome,
    /// Some client reported items it cannot read.
    unreadable: bool,
    conflicts: Vec<ConflictView>,
}

pub struct UserRow {
    pub id: String,
    pub name: String,
    pub email: String,
    pub state: String,
    pub is_admin: bool,
    pub approved_email: &'static str,
    pub sync_to_mailbox: &'static str,
    pub go_offline: &'static str,
}

#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage {
    layout: Layout,
    csrf: String,
    users: Vec<UserRow>,
    /// What the last action did, or why it was refused.
    notice: Option<String>,
    error: Option<String>,
    /// A new user's API token, shown once.
    token: Option<String>,
}

page!(ActivitiesPage, SyncPage, AdminPage);

/// The open states of an activity set.
fn open_states(set: EntitySet) -> &'static [&'static str] {
    match set {
        EntitySet::Appointments | EntitySet::Serviceappointments => &["open", "scheduled"],
        _ => &["open"],
    }
}

pub async fn activities(State(state): State<AppState>, user: WebUser) -> Response {
    let mut items = Vec::new();
    let mut capped = false;
    for set in [
        EntitySet::Appointments,
        EntitySet::Serviceappointments,
        EntitySet::Tasks,
        EntitySet::Phonecalls,
        EntitySet::Letters,
        EntitySet::Faxes,
    ] {
        for open in open_states(set) {
            let query = ListQuery {
                owner: Some(user.caller.user_id),
                state: Some(open.to_string()),
                limit: PER_KIND,
                ..ListQuery::default()
            };
            let records = match state.store.list(set, &query).await {
                Ok(r) => r,
                Err(e) => return super::server_error(e.into()),
            };
            capped |= records.len() as i64 == PER_KIND;
            items.extend(records.iter().map(|r| {
                Activity {
                    kind: set_singular(set),
                    href: format!("/{set}/{}", r.id),
                    title: display_name(r),
                    when: ["start", "due"]
                        .iter()
                        .find_map(|k| r.fields.get(*k).and_then(Value::as_str))
                        .unwrap_or("")
                        .to_string(),
                    state: label(&r.state),
                }
            }));
        }
    }
    // Soonest first; those without a time last.
    items.sort_by(|a, b| (a.when.is_empty(), &a.when).cmp(&(b.when.is_empty(), &b.when)));
    ActivitiesPage {
        layout: Layout::new("My open activities", &user, "/activities"),
        items,
        capped,
    }
    .into_response()
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "(empty)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn sync(State(state): State<AppState>, user: WebUser) -> Response {
    sync_page(&state, &user, StatusCode::OK, SyncOutcome::default()).await
}

/// What an action on the Sync page says above its mailboxes.
#[derive(Default)]
pub struct SyncOutcome {
    pub notice: Option<String>,
    pub error: Option<String>,
    pub test: Option<super::mailboxes::TestView>,
}

/// The Sync page (R-W6), with the outcome of an action on it.
pub(super) async fn sync_page(
    state: &AppState,
    user: &WebUser,
    status: StatusCode,
    outcome: SyncOutcome,
) -> Response {
    let mailboxes = match super::mailboxes::rows(state, user).await {
        Ok(m) => m,
        Err(e) => return super::error_page_for(user, e),
    };
    let clients = match crate::sync::clients::list(&state.store, user.caller, None).await {
        Ok(c) => c,
        Err(e) => return super::error_page_for(user, e),
    };
    let conflicts =
        match crate::sync::report::conflicts(&state.store, user.caller, None, None).await {
            Ok(c) => c,
            Err(e) => return super::error_page_for(user, e),
        };
    let counts = match state.store.pool.acquire().await {
        Ok(mut conn) => {
            crate::sync::store::entry_counts_of_user(&mut conn, user.caller.user_id).await
        }
        Err(e) => Err(e),
    };
    let counts = match counts {
        Ok(c) => c,
        Err(e) => return super::server_error(e.into()),
    };
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let unreadable = clients
        .iter()
        .any(|c| c["problems"].as_array().is_some_and(|p| !p.is_empty()));
    let page = SyncPage {
        unreadable,
        mailboxes,
        outcome,
        layout: Layout::new("Sync", user, "/sync"),
        csrf: user.csrf.clone(),
        clients: clients
            .iter()
            .map(|c| ClientRow {
                id: text(c, "id"),
                counts: Uuid::parse_str(&text(c, "id"))
                    .ok()
                    .and_then(|id| counts.get(&id).copied())
                    .unwrap_or_default(),
                name: text(c, "name"),
                problems: serde_json::from_value(c["problems"].clone()).unwrap_or_default(),
                last_sync: c["last_sync_at"].as_str().unwrap_or("Never").to_string(),
                result: sync_result(c),
                role: label(&text(c, "role")),
                kinds: match c.get("kinds").and_then(Value::as_array) {
                    Some(k) => k
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => "all".into(),
                },
            })
            .collect(),
        conflicts: conflicts["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| ConflictView {
                when: text(c, "at"),
                href: format!("/{}/{}", text(c, "set"), text(c, "record_id")),
                field: label(&text(c, "field")),
                crm: shown(&c["crm_value"]),
                mailbox: shown(&c["mailbox_value"]),
                kept: text(c, "kept"),
            })
            .collect(),
    };
    (status, page).into_response()
}

/// The last synchronization's result, from what the server saw: a batch
/// delivered and acknowledged, one still unconfirmed, or nothing to send.
fn sync_result(c: &Value) -> String {
    let items = c["last_ack_items"].as_i64().unwrap_or(0);
    let (sync, ack) = (c["last_sync_at"].as_str(), c["last_ack_at"].as_str());
    match (sync, ack) {
        (None, _) => "Not synchronized yet".into(),
        _ if c["awaiting_ack"] == true => {
            "Changes were sent to the mailbox and not yet confirmed: still running, or it failed (see crmsync status)".into()
        }
        (Some(s), Some(a)) if a >= s => {
            format!("Confirmed: {items} change(s) from the CRM applied in the mailbox")
        }
        _ => "Nothing new from the CRM".into(),
    }
}

/// "Make primary" and "Reset": the API's own client functions (R-C1, R-S9).
async fn client_action(state: &AppState, posted: &Posted, id: &str, primary: bool) -> Response {
    let Ok(id) = Uuid::parse_str(id) else {
        return super::error_page_for(
            &posted.user,
            crate::error::ApiError::not_found("There is no such sync client."),
        );
    };
    let caller = posted.user.caller;
    let done = if primary {
        crate::sync::clients::set_primary(&state.store, caller, id).await
    } else {
        crate::sync::clients::reset(&state.store, caller, id).await
    };
    match done {
        Ok(_) => Redirect::to("/sync").into_response(),
        Err(e) => super::error_page_for(&posted.user, e),
    }
}

pub async fn make_primary(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    client_action(&state, &posted, &id, true).await
}

pub async fn reset(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    client_action(&state, &posted, &id, false).await
}

use super::admin_settings::{AdminPosted, AdminUser};

/// The Admin page, with the outcome of an action on it.
pub(super) async fn admin_page(
    state: &AppState,
    user: &WebUser,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
    token: Option<String>,
) -> Response {
    let query = ListQuery {
        limit: 1000,
        ..ListQuery::default()
    };
    let users = match state.store.list(EntitySet::Users, &query).await {
        Ok(u) => u,
        Err(e) => return super::server_error(e.into()),
    };
    let yes_no = |r: &crmsync_core::Record, k: &str| {
        if r.fields.get(k).and_then(Value::as_bool) == Some(true) {
            "Yes"
        } else {
            "No"
        }
    };
    let page = AdminPage {
        layout: Layout::new("Admin", user, "/admin"),
        csrf: user.csrf.clone(),
        users: users
            .iter()
            .map(|u| UserRow {
                id: u.id.to_string(),
                name: display_name(u),
                email: u
                    .fields
                    .get("email")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                state: label(&u.state),
                is_admin: u.fields.get("role").and_then(Value::as_str) == Some("admin"),
                approved_email: yes_no(u, "approved_email"),
                sync_to_mailbox: yes_no(u, "sync_to_mailbox"),
                go_offline: yes_no(u, "go_offline"),
            })
            .collect(),
        notice,
        error,
        token,
    };
    (status, page).into_response()
}

pub async fn admin(State(state): State<AppState>, AdminUser(user): AdminUser) -> Response {
    admin_page(&state, &user, StatusCode::OK, None, None, None).await
}

/// "Add user": the API's user creation (admins only, core validation,
/// unique email); the new user's API token is shown once.
pub async fn add_user(State(state): State<AppState>, AdminPosted(posted): AdminPosted) -> Response {
    let user = &posted.user;
    let text = |k: &str| posted.form.get(k).unwrap_or("").trim().to_string();
    let body = serde_json::json!({
        "email": text("email"),
        "name": text("name"),
        "role": if text("role") == "admin" { "admin" } else { "user" },
    });
    match crate::records::create(&state.store, user.caller, EntitySet::Users, &body).await {
        Ok(created) => {
            let notice = format!("Added {}.", text("email"));
            admin_page(
                &state,
                user,
                StatusCode::OK,
                Some(notice),
                None,
                created.token,
            )
            .await
        }
        Err(e) if !e.status.is_server_error() => {
            admin_page(&state, user, e.status, None, Some(e.message), None).await
        }
        Err(e) => super::error_page_for(&posted.user, e),
    }
}

/// "Set password": the same function as `crmsync admin user passwd`.
pub async fn set_password(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AdminPosted(posted): AdminPosted,
) -> Response {
    let user = &posted.user;
    let target = match Uuid::parse_str(&id) {
        Ok(id) => state.store.get(id).await.ok().flatten(),
        Err(_) => None,
    };
    let Some(email) = target.filter(|t| t.set == EntitySet::Users).and_then(|t| {
        t.fields
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_string)
    }) else {
        return super::error_page_for(
            &posted.user,
            crate::error::ApiError::not_found("There is no such user."),
        );
    };
    let password = posted.form.get("password").unwrap_or("");
    match crate::passwords::set_password(&state.store, &email, password).await {
        Ok(()) => {
            let notice = format!("Set a new password for {email}.");
            admin_page(&state, user, StatusCode::OK, Some(notice), None, None).await
        }
        Err(e) => {
            let error = format!("The password for {email} was not set: {e}.");
            admin_page(
                &state,
                user,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(error),
                None,
            )
            .await
        }
    }
}
