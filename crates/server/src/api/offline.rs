//! `/api/v1/offline/...`: the change feed and identity of an offline
//! replica (R-O1; see docs/sync-protocol.md).

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use super::ApiQuery;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::offline::{self, feed};
use crate::AppState;

pub async fn changes(
    State(s): State<AppState>,
    caller: Caller,
    query: ApiQuery,
) -> ApiResult<Json<Value>> {
    query.only(&["since", "limit"])?;
    let since = query.since()?;
    let limit = match query.get("limit") {
        None => feed::DEFAULT_LIMIT,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=feed::MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_limit",
                    format!("limit must be a whole number from 1 to {}", feed::MAX_LIMIT),
                )
            })?,
    };
    Ok(Json(feed::changes(&s.store, caller, since, limit).await?))
}

pub async fn identity(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(offline::identity(&s.store, caller).await?))
}
