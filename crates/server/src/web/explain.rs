//! "Why isn't this in my mailbox?" (R-W5): for each of the user's sync
//! clients, the answer of `crmsync explain --crm` (the same
//! `sync::report::explain` behind `GET /api/v1/sync/explain`).

use askama::Template;
use axum::extract::{OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use super::forms::display_name;
use super::layout::Layout;
use super::pages::page;
use super::session::WebUser;
use crate::AppState;

pub struct Answer {
    pub client: String,
    pub delivered: bool,
    pub in_mailbox: bool,
    pub reasons: Vec<String>,
}

#[derive(Template)]
#[template(path = "explain.html")]
pub struct ExplainPage {
    layout: Layout,
    base: String,
    answers: Vec<Answer>,
}

page!(ExplainPage);

pub async fn page(
    State(state): State<AppState>,
    user: WebUser,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let set = super::set_of(&uri);
    let r = match super::record_pages::load(&state, &user, set, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let clients = match crate::sync::clients::list(&state.store, user.caller, None).await {
        Ok(c) => c,
        Err(e) => return super::error_page_for(&user, e),
    };
    let mut answers = Vec::new();
    for c in &clients {
        let Some(client_id) = c["id"].as_str().and_then(|i| Uuid::parse_str(i).ok()) else {
            continue;
        };
        let explained =
            match crate::sync::report::explain(&state.store, user.caller, client_id, set, r.id)
                .await
            {
                Ok(e) => e,
                Err(e) => return super::error_page_for(&user, e),
            };
        answers.push(Answer {
            client: c["name"].as_str().unwrap_or("").to_string(),
            delivered: explained["delivered"].as_bool() == Some(true),
            in_mailbox: explained["in_mailbox"].as_bool() == Some(true),
            reasons: explained["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        });
    }
    ExplainPage {
        layout: Layout::new(
            format!("Why isn't {} in my mailbox?", display_name(&r)),
            &user,
            "/sync",
        ),
        base: format!("/{set}/{}", r.id),
        answers,
    }
    .into_response()
}
