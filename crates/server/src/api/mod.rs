//! The HTTP API of SPEC §4: routing, request extraction with JSON errors,
//! and the handlers (one module per resource group).

mod admin;
mod mailboxes;
mod offline;
pub mod openapi;
pub(crate) mod records;
mod sync;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crmsync_core::EntitySet;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The whole router: API, health, metrics, OpenAPI.
/// The smallest body limit of `/sync/push`: one raw message of the largest
/// accepted size, base64-encoded, and room for the rest of the operation.
const PUSH_BODY_MIN: usize = crate::sync::email::MAX_RAW / 3 * 4 + 1024 * 1024;

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/changes", get(records::changes))
        .route(
            "/settings",
            get(admin::get_org_settings).patch(admin::patch_org_settings),
        )
        .route(
            "/users/{id}/settings",
            get(admin::get_user_settings).patch(admin::patch_user_settings),
        )
        .route(
            "/sync-filters",
            get(admin::list_filters).post(admin::create_filter),
        )
        .route(
            "/sync-filters/{id}",
            get(admin::get_filter)
                .patch(admin::patch_filter)
                .delete(admin::delete_filter),
        )
        .route(
            "/offline-filters",
            get(admin::list_filters).post(admin::create_filter),
        )
        .route(
            "/offline-filters/{id}",
            get(admin::get_filter)
                .patch(admin::patch_filter)
                .delete(admin::delete_filter),
        )
        .route(
            "/users/{id}/offline-filters",
            get(admin::user_offline_filters),
        )
        .route("/offline/changes", get(offline::changes))
        .route("/offline/identity", get(offline::identity))
        .route(
            "/sync-fields/{set}",
            get(admin::get_sync_fields).patch(admin::patch_sync_fields),
        )
        .route(
            "/field-security",
            get(admin::list_field_security).post(admin::create_field_security),
        )
        .route(
            "/field-security/{id}",
            get(admin::get_field_security)
                .patch(admin::patch_field_security)
                .delete(admin::delete_field_security),
        )
        .route("/openapi.json", get(openapi::serve_openapi))
        .route("/mailboxes", get(mailboxes::list).post(mailboxes::create))
        .route(
            "/mailboxes/{id}",
            get(mailboxes::read)
                .patch(mailboxes::patch)
                .delete(mailboxes::delete),
        )
        .route("/mailboxes/{id}/test", axum::routing::post(mailboxes::test))
        .route(
            "/mailboxes/{id}/sync",
            axum::routing::post(mailboxes::resync),
        )
        .route(
            "/sync/clients",
            get(sync::list_clients).post(sync::register),
        )
        .route(
            "/sync/clients/{id}/primary",
            axum::routing::post(sync::set_primary),
        )
        .route("/sync/clients/{id}/reset", axum::routing::post(sync::reset))
        .route(
            "/sync/clients/{id}/problems",
            axum::routing::put(sync::set_problems),
        )
        .route("/sync/prepare", axum::routing::post(sync::prepare))
        .route("/sync/data", get(sync::data))
        .route("/sync/ack", axum::routing::post(sync::ack))
        // A tracked email travels in its push as base64 (R-E5, up to
        // `MAX_RAW` bytes): this route takes at least that much.
        .route(
            "/sync/push",
            axum::routing::post(sync::push)
                .layer(DefaultBodyLimit::max(max_body_bytes.max(PUSH_BODY_MIN))),
        )
        .route("/sync/wait", get(sync::wait))
        .route("/sync/conflicts", get(sync::conflicts))
        .route("/sync/explain", get(sync::explain))
        .route("/sync/emails/lookup", get(sync::email_lookup))
        .route("/sync/emails/tagging", get(sync::email_tagging))
        .route("/emails/{id}/raw", get(sync::email_raw))
        .route("/appointments/{id}/instances", get(records::instances))
        .route(
            "/serviceappointments/{id}/instances",
            get(records::instances),
        )
        .route("/{set}", get(records::list).post(records::create))
        .route(
            "/{set}/{id}",
            get(records::read)
                .patch(records::update)
                .delete(records::delete),
        );
    Router::new()
        .nest("/api/v1", api)
        .merge(crate::web::router())
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(crate::metrics::render))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// An unknown path: JSON under `/api/`, the web's own page elsewhere.
async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        ApiError::not_found("no such API path; see /api/v1/openapi.json").into_response()
    } else {
        crate::web::not_found().await
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method; see /api/v1/openapi.json",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the server failed; nothing was changed",
    )
    .into_response()
}

/// A JSON body, with malformed, oversized or mistyped bodies answered as
/// API errors (400, 413, 415).
pub struct ApiJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for ApiJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let (code, hint) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "send a smaller body (the server's limit is set by --max-body)",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send 'Content-Type: application/json'",
        ),
        _ => ("bad_json", "send a valid JSON object"),
    };
    ApiError::new(status, code, format!("{}; {hint}", rejection.body_text()))
}

/// Path parameters, with undecodable ones answered as 400.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request("bad_path", e.body_text()))
    }
}

/// Query parameters as strings; handlers parse and check each.
pub struct ApiQuery(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ApiQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request("bad_query", e.body_text()))
    }
}

impl ApiQuery {
    /// Refuses parameters the endpoint does not know (a typo would
    /// otherwise silently widen a query).
    pub fn only(&self, known: &[&str]) -> ApiResult<()> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown query parameter '{k}'; this endpoint takes: {}",
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `since`: a version of the change sequence, 0 when absent.
    pub fn since(&self) -> ApiResult<i64> {
        match self.get("since") {
            None => Ok(0),
            Some(s) => s.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                ApiError::bad_request("bad_since", "since must be a version number (0 or more)")
            }),
        }
    }
}

pub fn parse_set(s: &str) -> ApiResult<EntitySet> {
    Ok(s.parse::<EntitySet>()?)
}

pub fn parse_id(s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("'{}' is not a UUID", s.chars().take(60).collect::<String>()),
        )
    })
}

/// `If-Match: <version>` (quotes and `W/` accepted; `*` means any).
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(raw) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse::<i64>().map(Some).map_err(|_| {
        ApiError::bad_request(
            "bad_if_match",
            "If-Match must be the record's version, e.g. If-Match: \"12\"",
        )
    })
}
