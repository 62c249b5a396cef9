//! `/api/v1/sync/...`: the sync protocol of SPEC §5 (see docs/sync-protocol.md).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::{parse_id, parse_set, ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::sync::{clients, prepare, push, report, wait};
use crate::AppState;

fn optional_id(q: &ApiQuery, key: &str) -> ApiResult<Option<uuid::Uuid>> {
    q.get(key).map(parse_id).transpose()
}

pub async fn register(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (created, client) = clients::register(&s.store, caller, &body).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(client),
    ))
}

pub async fn list_clients(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["user"])?;
    Ok(Json(
        serde_json::json!({"items": clients::list(&s.store, caller, optional_id(&q, "user")?).await?}),
    ))
}

pub async fn set_primary(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        clients::set_primary(&s.store, caller, parse_id(&id)?).await?,
    ))
}

pub async fn reset(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        clients::reset(&s.store, caller, parse_id(&id)?).await?,
    ))
}

pub async fn set_problems(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        clients::set_problems(&s.store, caller, parse_id(&id)?, &body).await?,
    ))
}

pub async fn prepare(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(prepare::prepare(&s.store, caller, &body).await?))
}

pub async fn data(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["client_id", "batch", "cursor", "ids"])?;
    Ok(Json(prepare::data(&s.store, caller, &q.0).await?))
}

pub async fn ack(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(prepare::ack(&s.store, caller, &body).await?))
}

pub async fn push(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson,
) -> ApiResult<Json<Value>> {
    Ok(Json(push::push(&s.store, caller, &body).await?))
}

/// R-T7: `?client_id=C&since=V[&timeout=S]`.
pub async fn wait(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["client_id", "since", "timeout"])?;
    let client = parse_id(q.get("client_id").ok_or_else(|| {
        ApiError::bad_request(
            "bad_parameter",
            "client_id: required, the UUID the server gave",
        )
    })?)?;
    if q.get("since").is_none() {
        return Err(ApiError::bad_request(
            "bad_since",
            "since: required, the upto_version of the client's last prepare",
        ));
    }
    let since = q.since()?;
    let timeout = match q.get("timeout") {
        None => wait::MAX_WAIT,
        Some(t) => t
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|_| {
                ApiError::bad_request(
                    "bad_parameter",
                    "timeout: seconds to wait at most, a whole number (up to 60)",
                )
            })?,
    };
    Ok(Json(
        wait::wait(&s.store, caller, client, since, timeout).await?,
    ))
}

pub async fn conflicts(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["user", "record"])?;
    Ok(Json(
        report::conflicts(
            &s.store,
            caller,
            optional_id(&q, "user")?,
            optional_id(&q, "record")?,
        )
        .await?,
    ))
}

pub async fn explain(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["client_id", "set", "id"])?;
    let need = |k: &str| {
        q.get(k)
            .ok_or_else(|| ApiError::bad_request("bad_parameter", format!("{k}: required")))
    };
    let (client, set, id) = (
        parse_id(need("client_id")?)?,
        parse_set(need("set")?)?,
        parse_id(need("id")?)?,
    );
    Ok(Json(
        report::explain(&s.store, caller, client, set, id).await?,
    ))
}

pub async fn email_lookup(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["message_ids", "subject", "addresses"])?;
    Ok(Json(
        crate::sync::email::lookup(&s.store, caller, &q.0).await?,
    ))
}

pub async fn email_tagging(
    State(s): State<AppState>,
    caller: Caller,
    q: ApiQuery,
) -> ApiResult<Json<Value>> {
    q.only(&["since", "client_id"])?;
    let since = q.since()?;
    Ok(Json(
        crate::sync::email::tagging(&s.store, caller, since, optional_id(&q, "client_id")?).await?,
    ))
}

pub async fn email_raw(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let raw = crate::sync::email::raw_message(&s.store, caller, parse_id(&id)?).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "message/rfc822")], raw).into_response())
}
