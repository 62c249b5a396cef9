//! The web interface of SPEC §14: server-rendered pages on the API's
//! listener. Every write goes through the same functions as the REST API
//! (`crate::records`, `crate::sync`), so validation, access rules (R-A)
//! and version checks exist once; this layer only turns forms into the
//! API's JSON bodies and the answers into pages.

mod admin_rules;
mod admin_settings;
pub mod csrf;
mod explain;
mod forms;
pub use forms::name_of;
pub mod layout;
mod lists;
mod mailboxes;
pub mod pages;
mod record_pages;
mod regarding;
pub mod session;
mod signin;
mod timeline;
mod work;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crmsync_core::EntitySet;

pub use lists::sortable_fields;

use crate::error::ApiError;
use crate::AppState;

/// The sets that have list and record pages: all but users (first in
/// `EntitySet::ALL`), who are managed under Admin.
pub const WEB_SETS: &[EntitySet] = EntitySet::ALL.split_at(1).1;

/// R-W1: a self-only policy with no inline script or style.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    let mut router = Router::new()
        .route("/", get(home))
        .route("/signin", get(signin::page).post(signin::submit))
        .route("/signin/link/{token}", get(signin::link))
        .route("/signout", post(signin::sign_out))
        .route("/assets/{file}", get(asset))
        .route("/favicon.ico", get(icon))
        .route("/activities", get(work::activities))
        .route("/sync", get(work::sync))
        .route("/sync/clients/{id}/primary", post(work::make_primary))
        .route("/sync/clients/{id}/reset", post(work::reset))
        .route("/sync/mailboxes", post(mailboxes::connect))
        .route("/sync/mailboxes/{id}/sync", post(mailboxes::resync))
        .route("/sync/mailboxes/{id}/test", post(mailboxes::test))
        .route("/sync/mailboxes/{id}/reconnect", post(mailboxes::reconnect))
        .route(
            "/sync/mailboxes/{id}/disconnect",
            post(mailboxes::disconnect),
        )
        .route("/admin", get(work::admin))
        .route("/admin/users", post(work::add_user))
        .route("/admin/users/{id}/password", post(work::set_password))
        .route(
            "/admin/users/{id}/access",
            post(admin_settings::save_access),
        )
        .route(
            "/admin/users/{id}/settings",
            get(admin_settings::user_settings).post(admin_settings::save_user_settings),
        )
        .route(
            "/admin/settings",
            get(admin_settings::org_settings).post(admin_settings::save_org_settings),
        )
        .route(
            "/admin/field-security",
            get(admin_rules::field_security).post(admin_rules::add_field_security),
        )
        .route(
            "/admin/field-security/{id}/delete",
            post(admin_rules::delete_field_security),
        )
        .route(
            "/admin/filters",
            get(admin_rules::filters).post(admin_rules::build_filter),
        )
        .route(
            "/admin/filters/{id}/delete",
            post(admin_rules::delete_filter),
        )
        .route(
            "/admin/offline-filters",
            get(admin_rules::offline_filters).post(admin_rules::build_offline_filter),
        )
        .route(
            "/admin/offline-filters/{id}/delete",
            post(admin_rules::delete_offline_filter),
        )
        .route("/admin/sync-fields", get(admin_settings::sync_field_sets))
        .route(
            "/admin/sync-fields/{set}",
            get(admin_settings::sync_fields).post(admin_settings::save_sync_fields),
        );
    // Static paths per set, so that no other path (e.g. under /api) is
    // taken for a set's page.
    for set in WEB_SETS {
        let base = format!("/{set}");
        router = router
            .route(&base, get(lists::list))
            .route(
                &format!("{base}/new"),
                get(record_pages::new_form).post(record_pages::create),
            )
            .route(&format!("{base}/{{id}}"), get(record_pages::show))
            .route(
                &format!("{base}/{{id}}/edit"),
                get(record_pages::edit_form).post(record_pages::save),
            )
            .route(
                &format!("{base}/{{id}}/delete"),
                get(record_pages::confirm_delete).post(record_pages::delete),
            );
        if set.syncs_to_mailbox() {
            router = router.route(&format!("{base}/{{id}}/explain"), get(explain::page));
        }
        if regarding::has_regarding(*set) {
            router = router.route(
                &format!("{base}/{{id}}/regarding"),
                get(regarding::page).post(regarding::save),
            );
        }
    }
    router.layer(axum::middleware::map_response(security_headers))
}

/// R-W1's headers on every page; pages are private, so not stored by caches
/// (the content-addressed stylesheet sets its own caching).
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it browsers send `Origin: null` with a form,
    // which the CSRF check must refuse; `same-origin` still tells other
    // sites nothing.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The page for a path that names no page (the router's fallback for
/// paths outside `/api/`), with the same headers as every page.
pub async fn not_found() -> Response {
    let page = pages::Message::public(
        "Not found",
        "There is no such page. Check the address, or start from the navigation.",
    );
    security_headers((StatusCode::NOT_FOUND, page).into_response()).await
}

async fn home(_user: session::WebUser) -> Redirect {
    Redirect::to("/activities")
}

/// The site's icon (browsers ask for `/favicon.ico` on every site).
async fn icon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        layout::ICON_SVG,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    if file == "icon.svg" {
        return icon().await;
    }
    if format!("/assets/{file}") == layout::style_path() {
        (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            layout::STYLE_CSS,
        )
            .into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            pages::Message::public("Not found", "There is no such file."),
        )
            .into_response()
    }
}

/// The set a page's path names (its first segment).
pub fn set_of(uri: &axum::http::Uri) -> EntitySet {
    let first = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    first
        .parse()
        .expect("web routes exist only for entity sets")
}

/// A failure of the server itself (the database): a page, not JSON.
pub fn server_error(e: ApiError) -> Response {
    error_page(e)
}

/// An API error as a page with the API's message and status, with the
/// navigation of the signed-in user.
pub fn error_page_for(user: &session::WebUser, e: ApiError) -> Response {
    let status = e.status;
    let page = pages::Message {
        layout: layout::Layout::new(error_title(&e), user, ""),
        text: e.message,
    };
    (status, page).into_response()
}

fn error_title(e: &ApiError) -> &'static str {
    match e.status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => "Changed meanwhile",
        s if s.is_server_error() => "Something went wrong",
        _ => "Refused",
    }
}

/// An API error as a page with the API's message and status.
pub fn error_page(e: ApiError) -> Response {
    (e.status, pages::Message::public(error_title(&e), e.message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_w4_every_set_but_users_has_pages() {
        assert!(!WEB_SETS.contains(&EntitySet::Users));
        assert_eq!(WEB_SETS.len(), EntitySet::ALL.len() - 1);
    }
}
