//! The Sync page's mailboxes on the server (R-W6, SPEC §15): the user's
//! connected mailboxes with their health (R-V5), "Connect a mailbox",
//! "Test", "Resync", "Reconnect" and "Disconnect". Every action is the API's function
//! (`crate::mailboxes`); this module turns forms into its JSON bodies.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::csrf::Posted;
use super::session::WebUser;
use super::work::{sync_page, SyncOutcome};
use crate::error::{ApiError, ApiResult};
use crate::mailboxes::{self, CheckStatus};
use crate::AppState;

/// One connected mailbox as the Sync page lists it.
pub struct MailboxRow {
    pub id: String,
    pub name: String,
    /// The state in words, with what happens next.
    pub state: String,
    pub last_success: String,
    pub last_error: String,
    pub next_run: String,
    pub has_imap: bool,
    pub has_dav: bool,
}

/// A connection test's findings, shown above the list.
pub struct TestView {
    pub name: String,
    pub checks: Vec<CheckView>,
}

pub struct CheckView {
    pub what: String,
    pub status: &'static str,
    pub detail: String,
}

fn state_in_words(state: &str) -> String {
    match state {
        "active" => "Synchronized on schedule",
        "failing" => "Failing: tried again later",
        "needs_reconnect" => "The password was refused: use Reconnect",
        "disabled" => "Disabled",
        other => other,
    }
    .into()
}

/// The signed-in user's mailboxes.
pub async fn rows(state: &AppState, user: &WebUser) -> ApiResult<Vec<MailboxRow>> {
    let listed = mailboxes::list(&state.store, user.caller, None).await?;
    let text = |m: &Value, k: &str, none: &str| {
        m[k].as_str()
            .map_or_else(|| none.to_string(), str::to_string)
    };
    Ok(listed
        .iter()
        .map(|m| MailboxRow {
            id: text(m, "id", ""),
            name: text(m, "name", ""),
            state: state_in_words(m["state"].as_str().unwrap_or("")),
            last_success: text(m, "last_success_at", "Never"),
            last_error: text(m, "last_error", ""),
            next_run: text(m, "next_run_at", ""),
            has_imap: m["imap"].is_object(),
            has_dav: m["dav"].is_object(),
        })
        .collect())
}

/// The page again, with a notice or the refusal's message.
async fn after(state: &AppState, posted: &Posted, done: ApiResult<String>) -> Response {
    let user = &posted.user;
    match done {
        Ok(notice) => {
            let outcome = SyncOutcome {
                notice: Some(notice),
                ..SyncOutcome::default()
            };
            sync_page(state, user, StatusCode::OK, outcome).await
        }
        Err(e) if !e.status.is_server_error() => {
            let outcome = SyncOutcome {
                error: Some(e.message),
                ..SyncOutcome::default()
            };
            sync_page(state, user, e.status, outcome).await
        }
        Err(e) => super::error_page_for(user, e),
    }
}

/// The form's non-empty fields with these prefixes as a section's keys.
fn section(posted: &Posted, prefix: &str, keys: &[&str]) -> Option<Value> {
    let mut out = Map::new();
    for key in keys {
        let value = posted
            .form
            .get(&format!("{prefix}_{key}"))
            .unwrap_or("")
            .trim();
        if value.is_empty() {
            continue;
        }
        let value = match value.parse::<u16>() {
            Ok(port) if *key == "port" => json!(port),
            _ => json!(value),
        };
        out.insert((*key).to_string(), value);
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// "Connect a mailbox": the API's create (R-V1).
pub async fn connect(State(state): State<AppState>, posted: Posted) -> Response {
    let mut body = Map::new();
    body.insert(
        "name".into(),
        json!(posted.form.get("name").unwrap_or("").trim()),
    );
    let imap = section(
        &posted,
        "imap",
        &["host", "port", "security", "username", "password"],
    );
    let dav = section(&posted, "dav", &["server", "username", "password"]);
    if let Some(i) = imap {
        body.insert("imap".into(), i);
    }
    if let Some(d) = dav {
        body.insert("dav".into(), d);
    }
    let done = match (body.contains_key("imap"), body.contains_key("dav")) {
        (false, false) => Err(ApiError::invalid(
            "Fill in a mail server (IMAP) or an address book and calendar server (DAV), or both.",
        )),
        _ => mailboxes::create(&state.store, posted.user.caller, &Value::Object(body))
            .await
            .map(|m| {
                format!(
                    "Connected {}: the server synchronizes it now.",
                    m["name"].as_str().unwrap_or("the mailbox")
                )
            }),
    };
    after(&state, &posted, done).await
}

fn mailbox_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("There is no such mailbox."))
}

/// "Resync" (R-V1).
pub async fn resync(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let done = match mailbox_id(&id) {
        Ok(id) => mailboxes::resync(&state.store, posted.user.caller, id)
            .await
            .map(|_| "Queued: the server synchronizes it as soon as a worker is free.".to_string()),
        Err(e) => Err(e),
    };
    after(&state, &posted, done).await
}

/// "Reconnect": new passwords for the sections (R-V5 makes it active).
pub async fn reconnect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let mut body = Map::new();
    for section_name in ["imap", "dav"] {
        if let Some(s) = section(&posted, section_name, &["password"]) {
            body.insert(section_name.into(), s);
        }
    }
    let done = match (mailbox_id(&id), body.is_empty()) {
        (Err(e), _) => Err(e),
        (_, true) => Err(ApiError::invalid("Type the new password.")),
        (Ok(id), false) => {
            mailboxes::patch(&state.store, posted.user.caller, id, &Value::Object(body))
                .await
                .map(|_| "Saved: the server synchronizes it again now.".to_string())
        }
    };
    after(&state, &posted, done).await
}

/// "Disconnect": no longer synchronized; nothing in the CRM or the
/// mailbox is deleted (R-V1).
pub async fn disconnect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let done = match mailbox_id(&id) {
        Ok(id) => mailboxes::delete(&state.store, posted.user.caller, id)
            .await
            .map(|_| "Disconnected: the server no longer synchronizes it. Nothing in the CRM or the mailbox was deleted.".to_string()),
        Err(e) => Err(e),
    };
    after(&state, &posted, done).await
}

/// "Test": connects and shows what works (R-V1).
pub async fn test(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let tested = match mailbox_id(&id) {
        Ok(id) => mailboxes::test(&state.store, posted.user.caller, id).await,
        Err(e) => Err(e),
    };
    let answer = match tested {
        Ok(a) => a,
        Err(e) => return after(&state, &posted, Err(e)).await,
    };
    let checks: Vec<mailboxes::Check> =
        serde_json::from_value(answer["checks"].clone()).unwrap_or_default();
    let name = rows(&state, &posted.user)
        .await
        .ok()
        .and_then(|r| r.into_iter().find(|m| m.id == id))
        .map_or_else(|| "the mailbox".to_string(), |m| m.name);
    let outcome = SyncOutcome {
        test: Some(TestView {
            name,
            checks: checks
                .into_iter()
                .map(|c| CheckView {
                    what: c.what,
                    status: match c.status {
                        CheckStatus::Ok => "Works",
                        CheckStatus::Warning => "Works, with a warning",
                        CheckStatus::Failed => "Does not work",
                    },
                    detail: c.detail,
                })
                .collect(),
        }),
        ..SyncOutcome::default()
    };
    sync_page(&state, &posted.user, StatusCode::OK, outcome).await
}
