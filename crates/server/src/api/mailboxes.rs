//! `/api/v1/mailboxes`: mailboxes connected to the server (SPEC §15, R-V1).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{parse_id, ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::mailboxes;
use crate::AppState;

pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(mailboxes::create(&s.store, caller, &body).await?),
    ))
}

/// `?user_id=` (an admin, for another user).
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["user_id"])?;
    let user = q.get("user_id").map(parse_id).transpose()?;
    Ok(Json(
        json!({"items": mailboxes::list(&s.store, caller, user).await?}),
    ))
}

pub async fn read(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        mailboxes::read(&s.store, caller, parse_id(&id)?).await?,
    ))
}

pub async fn patch(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        mailboxes::patch(&s.store, caller, parse_id(&id)?, &body).await?,
    ))
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    mailboxes::delete(&s.store, caller, parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// R-V1: connects and says what works, with the fix.
pub async fn test(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        mailboxes::test(&s.store, caller, parse_id(&id)?).await?,
    ))
}

/// R-V1: "Resync", a synchronization now.
pub async fn resync(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        mailboxes::resync(&s.store, caller, parse_id(&id)?).await?,
    ))
}
