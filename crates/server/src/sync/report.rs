//! What a user reads about their sync: the conflict log (R-F6) and
//! `explain` (why a record does or does not reach a mailbox).

use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crmsync_core::sync_rules::is_past_appointment;
use crmsync_core::EntitySet;

use super::clients::own_client;
use super::context::MailboxOwner;
use super::store as sync_store;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, Store};

/// R-F6: the caller's conflicts (an admin may name another user), newest first.
pub async fn conflicts(
    store: &Store,
    caller: Caller,
    user: Option<Uuid>,
    record: Option<Uuid>,
) -> ApiResult<Value> {
    let user = match user {
        Some(u) if u != caller.user_id => {
            caller.require_admin()?;
            u
        }
        _ => caller.user_id,
    };
    let mut conn = store.pool.acquire().await?;
    let rows = sync_store::conflicts_of(&mut conn, user, record, 1000).await?;
    Ok(json!({"items": rows}))
}

/// Why a record does or does not go to a client's mailbox, in words,
/// naming the filter, rule or setting that decides.
pub async fn explain(
    store: &Store,
    caller: Caller,
    client_id: Uuid,
    set: EntitySet,
    id: Uuid,
) -> ApiResult<Value> {
    let client = own_client(store, caller, client_id).await?;
    let owner = MailboxOwner::load(store, client.mailbox_user_id).await?;
    let mut conn = store.pool.acquire().await?;
    let record = store::records_by_ids(&mut conn, &[id])
        .await?
        .into_iter()
        .next()
        .filter(|(r, _)| r.set == set);
    let Some((record, deleted)) = record else {
        return Err(ApiError::not_found(format!(
            "no record in {set} has id {id}"
        )));
    };
    let entry = sync_store::entry(&mut conn, client.id, id).await?;
    let now = OffsetDateTime::now_utc();
    let mut reasons = Vec::new();
    let mut delivered = false;
    if deleted {
        reasons.push(
            "the record was deleted in the CRM (the deletion rules decide what happens to the mailbox copy)"
                .to_string(),
        );
    } else if !client.holds(set) {
        // SPEC §13.
        reasons.push(format!(
            "this client's mailbox has no {} collection, so nothing of that kind is delivered to it; add one to the [mailbox] section of the agent configuration",
            crmsync_core::kind::MailboxKind::of_set(set).map_or("such", |k| k.as_str())
        ));
    } else if set == EntitySet::Emails {
        delivered = entry.is_some_and(|e| !e.excluded);
        reasons.push(if delivered {
            "the email is tracked from this mailbox; regarding changes reach it".into()
        } else {
            "emails reach a mailbox only when the user tracks them".into()
        });
    } else if !owner.acts_as_primary(&client) {
        reasons.push("this client is not the primary and roaming is off: only the primary synchronizes contacts, appointments and tasks".into());
    } else if entry.is_some_and(|e| e.excluded) {
        reasons.push(
            "the user deleted it in the mailbox; it is not sent again until `crmsync client reset`"
                .into(),
        );
    } else if entry.is_some_and(|e| e.manual) {
        delivered = true;
        reasons.push(
            "the user tracked it from the mailbox, so it stays whatever the filters say".into(),
        );
    } else {
        if !owner.may_sync_to_mailbox() {
            reasons.push("the user lacks the sync_to_mailbox privilege".into());
        } else if !owner.settings.entity_types.contains(&set) {
            reasons.push(format!(
                "{set} is unchecked in the user's settings (entity_types)"
            ));
        }
        match owner.matching_filter(&record, now) {
            Some(f) => reasons.push(
                format!(
                    "it matches the {:?} filter '{}': {}",
                    f.scope,
                    f.name,
                    f.condition.describe()
                )
                .to_lowercase(),
            ),
            None if owner.filters_of(set).next().is_none() => {
                reasons.push(format!("the user has no active {set} filter"))
            }
            None => {
                let names: Vec<String> = owner
                    .filters_of(set)
                    .map(|f| format!("'{}' ({})", f.name, f.condition.describe()))
                    .collect();
                reasons.push(format!(
                    "it matches none of the active filters: {}",
                    names.join("; ")
                ));
            }
        }
        if is_past_appointment(&record, now) && entry.is_none() {
            reasons.push(
                "the appointment has ended; past appointments are never sent to mailboxes".into(),
            );
        }
        delivered = owner.delivers(set)
            && owner.matching_filter(&record, now).is_some()
            && (entry.is_some() || !is_past_appointment(&record, now));
    }
    Ok(
        json!({"record": {"id": id, "set": set}, "delivered": delivered, "in_mailbox": entry.is_some_and(|e| !e.excluded), "reasons": reasons}),
    )
}
