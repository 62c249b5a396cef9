//! "Set regarding" on an activity's or email's page (R-W5): pick a set,
//! search it, choose a record. The change is the API's own: an update of
//! `regarding` through `records::update` with the version shown; R-M7
//! then tags the mailboxes at their next sync.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};

use crmsync_core::entity::REGARDING_SETS;
use crmsync_core::EntitySet;

use super::csrf::Posted;
use super::forms::display_name;
use super::layout::{set_singular, set_title, Layout};
use super::pages::page;
use super::session::WebUser;
use crate::api::records::search_text;
use crate::error::ApiError;
use crate::store::ListQuery;
use crate::AppState;

/// How many matches the search shows.
const MATCHES: i64 = 20;

pub struct Choice {
    pub value: String,
    pub name: String,
    pub href: String,
}

#[derive(Template)]
#[template(path = "regarding.html")]
pub struct RegardingPage {
    layout: Layout,
    base: String,
    csrf: String,
    version: i64,
    current: Option<Choice>,
    sets: Vec<(String, &'static str, bool)>,
    target: String,
    q: String,
    choices: Vec<Choice>,
    error: Option<String>,
}

page!(RegardingPage);

/// Whether records of this set have a regarding.
pub fn has_regarding(set: EntitySet) -> bool {
    set.field("regarding").is_some()
}

pub async fn page(
    State(state): State<AppState>,
    user: WebUser,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let set = super::set_of(&uri);
    let r = match super::record_pages::load(&state, &user, set, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let target = REGARDING_SETS
        .iter()
        .copied()
        .find(|s| s.as_str() == get("target"))
        .unwrap_or(EntitySet::Accounts);
    let mut error = None;
    let text = search_text(Some(get("q"))).unwrap_or_else(|e| {
        error = Some(e.message);
        None
    });
    let query = ListQuery {
        text,
        limit: MATCHES,
        ..ListQuery::default()
    };
    let found = match state.store.list(target, &query).await {
        Ok(f) => f,
        Err(e) => return super::server_error(e.into()),
    };
    let current = match r.fields.get("regarding") {
        Some(v) => {
            let (rset, rid) = (
                v.get("set").and_then(Value::as_str).unwrap_or(""),
                v.get("id").and_then(Value::as_str).unwrap_or(""),
            );
            let name = match uuid::Uuid::parse_str(rid) {
                Ok(u) => state
                    .store
                    .get(u)
                    .await
                    .ok()
                    .flatten()
                    .map(|x| display_name(&x)),
                Err(_) => None,
            };
            Some(Choice {
                value: format!("{rset}/{rid}"),
                name: name.unwrap_or_else(|| format!("{rset}/{rid}")),
                href: format!("/{rset}/{rid}"),
            })
        }
        None => None,
    };
    RegardingPage {
        layout: Layout::new(
            format!("Set regarding of {}", display_name(&r)),
            &user,
            "/activities",
        ),
        base: format!("/{set}/{}", r.id),
        csrf: user.csrf.clone(),
        version: r.version,
        current,
        sets: REGARDING_SETS
            .iter()
            .map(|s| (s.to_string(), set_title(*s), *s == target))
            .collect(),
        target: set_singular(target).to_string(),
        q: get("q").to_string(),
        choices: found
            .iter()
            .map(|c| Choice {
                value: format!("{}/{}", c.set, c.id),
                name: display_name(c),
                href: format!("/{}/{}", c.set, c.id),
            })
            .collect(),
        error,
    }
    .into_response()
}

pub async fn save(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let (set, r, version) =
        match super::record_pages::posted_record(&state, &uri, &id, &posted, "changes").await {
            Ok(found) => found,
            Err(page) => return page,
        };
    let regarding = match posted.form.get("regarding").unwrap_or("").split_once('/') {
        Some((s, i)) => json!({"set": s, "id": i}),
        None => Value::Null,
    };
    let body = json!({ "regarding": regarding });
    match crate::records::update(&state.store, posted.user.caller, set, r.id, &body, Some(version)).await {
        Ok(_) => Redirect::to(&format!("/{set}/{}", r.id)).into_response(),
        Err(e) if e.code == "version_mismatch" => super::error_page_for(&posted.user, ApiError::conflict(
            "version_mismatch",
            format!(
                "This {} was changed after you opened it, so its regarding was not changed. Open it again and set its regarding there.",
                set_singular(set)
            ),
        )),
        Err(e) => super::error_page_for(&posted.user, e),
    }
}
