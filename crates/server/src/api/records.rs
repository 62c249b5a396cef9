//! `/api/v1/{set}` and `/api/v1/{set}/{id}`: create, read, update, delete
//! and list records; `/api/v1/changes`: what changed since a version.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use uuid::Uuid;

use crmsync_core::time::{format_timestamp, parse_datetime};
use crmsync_core::Record;

use super::{if_match, parse_id, parse_set, ApiJson, ApiPath, ApiQuery};
use crate::auth::{unknown_token, BearerToken, Caller};
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::store::ListQuery;
use crate::AppState;

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 1000;

fn with_etag(status: StatusCode, record: &Record, body: Value) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", record.version))
        .expect("digits are a valid header");
    (status, [(header::ETAG, etag)], Json(body)).into_response()
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(set): ApiPath<String>,
    ApiJson(body): ApiJson,
) -> ApiResult<Response> {
    let set = parse_set(&set)?;
    let created = records::create(&state.store, caller, set, &body).await?;
    let mut out = created.record.to_json();
    if let Some(token) = created.token {
        // Shown once: only its hash is stored.
        out["token"] = json!(token);
    }
    Ok(with_etag(StatusCode::CREATED, &created.record, out))
}

/// One statement checks the token and reads the record (the same
/// refusals, in the same order, as the `Caller` extractor and a read).
pub async fn read(
    State(state): State<AppState>,
    token: BearerToken,
    ApiPath((set, id)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let parsed = parse_set(&set).and_then(|set| Ok((set, parse_id(&id)?)));
    let (set, id) = match parsed {
        Ok(p) => p,
        Err(e) => {
            // An unknown token is refused before a bad path is reported.
            token.caller(&state).await?;
            return Err(e);
        }
    };
    let (user, record) = state
        .store
        .user_and_record(&token.hash(), id)
        .await?
        .ok_or_else(unknown_token)?;
    Caller::of_user(&user)?;
    match record {
        Some(r) if r.set == set => Ok(with_etag(StatusCode::OK, &r, r.to_json())),
        _ => Err(ApiError::not_found(format!(
            "no record in {set} has id {id}"
        ))),
    }
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((set, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson,
) -> ApiResult<Response> {
    let (set, id) = (parse_set(&set)?, parse_id(&id)?);
    let record = records::update(&state.store, caller, set, id, &body, if_match(&headers)?).await?;
    Ok(with_etag(StatusCode::OK, &record, record.to_json()))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((set, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let (set, id) = (parse_set(&set)?, parse_id(&id)?);
    records::delete(&state.store, caller, set, id, if_match(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_limit(q: &ApiQuery) -> ApiResult<i64> {
    match q.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "bad_limit",
                format!("limit must be a whole number from 1 to {MAX_PAGE}"),
            )),
        },
    }
}

/// The `q` of a list (API and web): at most 200 characters, matched
/// lower-cased against the record's text fields.
pub fn search_text(q: Option<&str>) -> ApiResult<Option<String>> {
    match q {
        Some(q) if q.chars().count() > 200 => Err(ApiError::bad_request(
            "bad_q",
            "q must be at most 200 characters",
        )),
        Some(q) if !q.trim().is_empty() => Ok(Some(q.trim().to_lowercase())),
        _ => Ok(None),
    }
}

/// Cursors are opaque to clients: the version of the last item shown.
fn encode_cursor(version: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v{version}"))
}

fn decode_cursor(s: &str) -> ApiResult<i64> {
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.strip_prefix('v').and_then(|v| v.parse().ok()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_cursor",
                "cursor is not one this server handed out; start again without it",
            )
        })
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(set): ApiPath<String>,
    query: ApiQuery,
) -> ApiResult<Json<Value>> {
    let set = parse_set(&set)?;
    query.only(&["owner", "modified_since", "q", "limit", "cursor"])?;
    let owner = match query.get("owner") {
        None => None,
        Some("me") => Some(caller.user_id),
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| {
            ApiError::bad_request("bad_owner", "owner must be 'me' or a user's UUID")
        })?),
    };
    let modified_since = query
        .get("modified_since")
        .map(|s| {
            parse_datetime(s).map(format_timestamp).map_err(|e| {
                ApiError::bad_request("bad_modified_since", format!("modified_since: {e}"))
            })
        })
        .transpose()?;
    let text = search_text(query.get("q"))?;
    let limit = parse_limit(&query)?;
    let before_version = query.get("cursor").map(decode_cursor).transpose()?;
    let list = ListQuery {
        owner,
        modified_since,
        text,
        before_version,
        limit: limit + 1,
        ..ListQuery::default()
    };
    let mut rows = state.store.list(set, &list).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| encode_cursor(r.version))
    } else {
        None
    };
    Ok(Json(json!({
        "items": rows.iter().map(Record::to_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// Everything changed or deleted after `since` (ids, sets, versions), oldest first.
pub async fn changes(
    State(state): State<AppState>,
    _caller: Caller,
    query: ApiQuery,
) -> ApiResult<Json<Value>> {
    query.only(&["since", "limit"])?;
    let since = query.since()?;
    let limit = parse_limit(&query)?;
    let changes = state.store.changes_since(since, limit).await?;
    let next = changes.last().map_or(since, |c| c.version);
    Ok(Json(
        json!({"items": changes, "next_since": next, "complete": (changes.len() as i64) < limit}),
    ))
}

/// R-E2: the instances of a recurring series in a window (default: the
/// next 12 months), with its exceptions whatever their date.
pub async fn instances(
    State(state): State<AppState>,
    _caller: Caller,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    ApiPath(id): ApiPath<String>,
    query: ApiQuery,
) -> ApiResult<Json<Value>> {
    query.only(&["from", "to"])?;
    let set = if uri.path().contains("/serviceappointments/") {
        crmsync_core::EntitySet::Serviceappointments
    } else {
        crmsync_core::EntitySet::Appointments
    };
    let id = parse_id(&id)?;
    let time = |k: &str| {
        query
            .get(k)
            .map(|s| {
                parse_datetime(s)
                    .map_err(|e| ApiError::bad_request("bad_time", format!("{k}: {e}")))
            })
            .transpose()
    };
    let from = time("from")?.unwrap_or_else(time::OffsetDateTime::now_utc);
    let to = time("to")?.unwrap_or(from + time::Duration::days(365));
    if to <= from || to - from > time::Duration::days(731) {
        return Err(ApiError::bad_request(
            "bad_window",
            "'to' must be after 'from', at most 2 years later",
        ));
    }
    let series = match state.store.get(id).await? {
        Some(r) if r.set == set => r,
        _ => {
            return Err(ApiError::not_found(format!(
                "no record in {set} has id {id}"
            )))
        }
    };
    let mut conn = state.store.pool.acquire().await?;
    let exceptions = crate::store::exceptions_of(&mut conn, id).await?;
    let (items, truncated) = crmsync_core::recurrence::instances(&series, &exceptions, from, to)
        .map_err(ApiError::invalid)?;
    Ok(Json(
        json!({"series_id": id, "from": crmsync_core::time::format_datetime(from),
        "to": crmsync_core::time::format_datetime(to), "items": items, "truncated": truncated}),
    ))
}
