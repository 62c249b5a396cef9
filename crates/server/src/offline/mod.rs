//! The server side of the offline replica (R-O1): who may keep one, the
//! change feed it follows, and the identity it signs its user in with.
//! Offline filters live with the sync filters (`crate::config`); the
//! playback of offline edits is a kind of push operation
//! (`crate::sync::push`).

pub mod feed;

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::Store;
use crate::sync::context::MailboxOwner;

/// The refusal of a user without the go_offline privilege.
pub fn no_offline_privilege() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "no_offline_privilege",
        "this user may not keep an offline copy; an administrator must grant \"Go offline\" to the user on the Admin page",
    )
}

/// The caller's context, refused without the go_offline privilege.
pub async fn offline_user(store: &Store, caller: Caller) -> ApiResult<MailboxOwner> {
    let user = MailboxOwner::load(store, caller.user_id).await?;
    if user.may_go_offline() {
        Ok(user)
    } else {
        Err(no_offline_privilege())
    }
}

/// `GET /offline/identity`: the caller's user record and stored password
/// hash, so that the offline server accepts the same password.
pub async fn identity(store: &Store, caller: Caller) -> ApiResult<Value> {
    let user = offline_user(store, caller).await?;
    let hash = crate::passwords::stored_hash(store, caller.user_id).await?;
    Ok(json!({"user": user.user.to_json(), "password_hash": hash}))
}
