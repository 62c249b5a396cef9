//! Settings, sync and offline filters, sync fields, field security and health.

use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{parse_id, parse_set, ApiJson, ApiPath};
use crate::auth::Caller;
use crate::config::{self, FilterKind};
use crate::error::ApiResult;
use crate::AppState;

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match sqlx::query("SELECT 1").execute(&state.store.pool).await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "database unavailable", "error": e.to_string()})),
        ),
    }
}

pub async fn get_org_settings(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(config::org_settings(&state.store).await?)))
}

pub async fn patch_org_settings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        config::patch_org_settings(&state.store, caller, &body).await?
    )))
}

pub async fn get_user_settings(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        config::user_settings(&state.store, caller, parse_id(&id)?).await?
    )))
}

pub async fn patch_user_settings(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        config::patch_user_settings(&state.store, caller, parse_id(&id)?, &body).await?
    )))
}

/// Sync filters (`/sync-filters`) and offline filters (`/offline-filters`)
/// share their handlers; the path says which.
fn filter_kind(uri: &OriginalUri) -> FilterKind {
    if uri.path().contains("/offline-filters") {
        FilterKind::Offline
    } else {
        FilterKind::Sync
    }
}

pub async fn list_filters(
    State(state): State<AppState>,
    uri: OriginalUri,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let items = config::list_filters(&state.store, filter_kind(&uri), caller).await?;
    Ok(Json(json!({ "items": items })))
}

pub async fn create_filter(
    State(state): State<AppState>,
    uri: OriginalUri,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let kind = filter_kind(&uri);
    Ok((
        StatusCode::CREATED,
        Json(config::create_filter(&state.store, kind, caller, &body).await?),
    ))
}

pub async fn get_filter(
    State(state): State<AppState>,
    uri: OriginalUri,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let kind = filter_kind(&uri);
    Ok(Json(
        config::get_filter(&state.store, kind, caller, parse_id(&id)?).await?,
    ))
}

pub async fn patch_filter(
    State(state): State<AppState>,
    uri: OriginalUri,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    let kind = filter_kind(&uri);
    Ok(Json(
        config::patch_filter(&state.store, kind, caller, parse_id(&id)?, &body).await?,
    ))
}

pub async fn delete_filter(
    State(state): State<AppState>,
    uri: OriginalUri,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let kind = filter_kind(&uri);
    config::delete_filter(&state.store, kind, caller, parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/users/{id}/offline-filters`: the active filters that apply to a user.
pub async fn user_offline_filters(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let items =
        config::filters_of_user(&state.store, FilterKind::Offline, caller, parse_id(&id)?).await?;
    Ok(Json(json!({ "items": items })))
}

pub async fn get_sync_fields(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(set): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let set = parse_set(&set)?;
    Ok(Json(
        json!({"entity_set": set, "fields": config::sync_fields(&state.store, set).await?}),
    ))
}

pub async fn patch_sync_fields(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(set): ApiPath<String>,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    let set = parse_set(&set)?;
    let fields = config::patch_sync_fields_of(&state.store, caller, set, &body).await?;
    Ok(Json(json!({"entity_set": set, "fields": fields})))
}

pub async fn list_field_security(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"items": config::list_field_security(&state.store, caller).await?}),
    ))
}

pub async fn create_field_security(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(config::create_field_security(&state.store, caller, &body).await?),
    ))
}

pub async fn get_field_security(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        config::get_field_security(&state.store, caller, parse_id(&id)?).await?,
    ))
}

pub async fn patch_field_security(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        config::patch_field_security(&state.store, caller, parse_id(&id)?, &body).await?,
    ))
}

pub async fn delete_field_security(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    config::delete_field_security(&state.store, caller, parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
