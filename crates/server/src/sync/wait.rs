//! `GET /sync/wait` (R-T7): a long poll that answers as soon as a change
//! after the client's version may concern it, or after at most a minute
//! with nothing. One query checks the client and the version; then the
//! request parks on the process's change feed, holding no database
//! connection and using no CPU until something commits.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::clients::own_client_status;
use crate::auth::Caller;
use crate::changes::{Kinds, Look};
use crate::error::{ApiError, ApiResult};
use crate::store::Store;

/// The longest a wait lasts: below the idle timeouts of common proxies.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Answers `{"changed", "version"}`: `changed` when a change after `since`
/// may concern the client (its prepare may find work; a false alarm costs
/// one prepare that finds nothing), false on timeout or when the server
/// shuts down; `version` is the newest version the server knows of.
pub async fn wait(
    store: &Store,
    caller: Caller,
    client_id: Uuid,
    since: i64,
    timeout: Duration,
) -> ApiResult<Value> {
    let rules = store.changes.rules_seen();
    let (client, committed, _) = own_client_status(store, caller, client_id).await?;
    if since > committed {
        return Err(ApiError::invalid(format!(
            "since: version {since} is ahead of the server's ({committed}); pass the upto_version of the client's last prepare"
        )));
    }
    // Rules changed since its last prepare (a filter, a reset): work waits.
    // Rule changes made while it waits wake it through the feed.
    let changed = client.full_scan
        || store
            .changes
            .wait(
                since,
                rules,
                Kinds::of(&client.kinds),
                client.id,
                timeout.min(MAX_WAIT),
            )
            .await
            == Look::Changed;
    Ok(json!({
        "changed": changed,
        "version": committed.max(store.changes.version()),
    }))
}
