//! Prepare, get data, acknowledge (R-S1..R-S4): what a client's mailbox
//! must create, update or remove since its last sync, computed from the
//! change sequence (never a rescan of the organization, except the first
//! sync and after a reset).

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;
use uuid::Uuid;

use crmsync_core::kind::MailboxKind;
use crmsync_core::mass_delete::{Deletions, MassDeleteLimits};
use crmsync_core::settings::MAILBOX_TYPES;
use crmsync_core::sync_rules::{plan_delivery, Delivery, DeliveryFacts, Held};
use crmsync_core::time::{now_timestamp, parse_datetime};
use crmsync_core::{EntitySet, Record};

use super::clients::{own_client, own_client_status};
use super::context::MailboxOwner;
use super::store::{self as sync_store, BatchItem, Client};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, Store};

/// How often the time-relative conditions (relative dates in filters,
/// appointments becoming past) are evaluated again for a client's items.
pub const TIME_RECHECK_SECS: i64 = 3600;
/// Records are looked at in chunks of this many, so memory does not grow
/// with the number of changes.
const CHUNK: usize = 500;

fn uuid_field(body: &Value, key: &str) -> ApiResult<Uuid> {
    body.get(key)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::invalid(format!("{key}: required, the UUID the server gave")))
}

fn time_due(client: &Client, now: OffsetDateTime) -> bool {
    parse_datetime(&client.time_checked_at)
        .map_or(true, |t| (now - t).whole_seconds() >= TIME_RECHECK_SECS)
}

/// R-W6: a no-change prepare records the time of the client's last
/// synchronization at most once a minute, so that frequent idle syncs
/// stay read-only.
const SYNC_TIME_GRAIN_SECS: i64 = 60;

fn sync_time_stale(client: &Client, now: OffsetDateTime) -> bool {
    client
        .last_sync_at
        .as_deref()
        .and_then(|t| parse_datetime(t).ok())
        .is_none_or(|t| (now - t).whole_seconds() >= SYNC_TIME_GRAIN_SECS)
}

/// Does a record change concern mailboxes at all?
fn mailbox_set(set: EntitySet) -> bool {
    set == EntitySet::Emails || MAILBOX_TYPES.contains(&set)
}

/// An exception of a recurring series travels with its series (R-E2).
fn is_exception(r: &Record) -> bool {
    r.fields.contains_key("series_id")
}

/// Ids of live records of `set` that match the owner's filters, evaluated
/// in SQL, page by page (a client's first sync, or after a reset).
async fn filter_scan(
    conn: &mut sqlx::AnyConnection,
    kind: crate::db::DbKind,
    owner: &MailboxOwner,
    set: EntitySet,
    now: OffsetDateTime,
    out: &mut BTreeSet<Uuid>,
) -> ApiResult<()> {
    let conditions: Vec<_> = owner.filters_of(set).map(|f| &f.condition).collect();
    let ctx = owner.eval_context(now);
    let mut after = 0;
    loop {
        let page = super::filter_sql::matching_ids_in(
            &mut *conn,
            kind,
            set,
            &conditions,
            &ctx,
            after,
            CHUNK as i64,
        )
        .await?;
        let Some((_, last)) = page.last() else {
            return Ok(());
        };
        after = *last;
        out.extend(page.iter().map(|(id, _)| *id));
    }
}

fn counts(items: &[BatchItem]) -> Value {
    let mut counts: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for item in items {
        let entry = counts.entry(item.set.as_str()).or_default();
        let n = entry.get(&item.action).and_then(Value::as_i64).unwrap_or(0);
        entry.insert(item.action.clone(), json!(n + 1));
    }
    json!(counts)
}

/// R-S2: prepares the next batch for a client.
pub async fn prepare(store: &Store, caller: Caller, body: &Value) -> ApiResult<Value> {
    let client_id = uuid_field(body, "client_id")?;
    let now = OffsetDateTime::now_utc();
    // Nothing changed: one query answers (plus the token check).
    let (client, upto, pending) = own_client_status(store, caller, client_id).await?;
    let recheck = time_due(&client, now);
    if !client.full_scan && client.scanned_version >= upto && pending == 0 && !recheck {
        if sync_time_stale(&client, now) {
            let mut conn = store.pool.acquire().await?;
            sync_store::record_sync(&mut conn, client.id, &now_timestamp()).await?;
        }
        return Ok(json!({"batch": null, "upto_version": upto, "counts": {}, "total": 0}));
    }

    let owner = MailboxOwner::load(store, client.mailbox_user_id).await?;
    let syncs_items = owner.acts_as_primary(&client);
    let mut tx = store.begin().await?;
    let upto = store::committed_version(&mut tx).await?;
    let mut candidates: BTreeSet<Uuid> = sync_store::pending_ids(&mut tx, client.id)
        .await?
        .into_iter()
        .collect();
    if client.full_scan || recheck {
        candidates.extend(sync_store::entry_ids(&mut tx, client.id).await?);
    }
    for set in MAILBOX_TYPES {
        // A first sync or reset evaluates every filter; an hourly re-check
        // evaluates those that time alone can make match (R-S6).
        let gains = recheck
            && owner
                .filters_of(set)
                .any(|f| f.condition.may_gain_matches_over_time());
        if syncs_items && client.holds(set) && owner.delivers(set) && (client.full_scan || gains) {
            filter_scan(&mut tx, store.kind, &owner, set, now, &mut candidates).await?;
        }
    }
    if !client.full_scan {
        let mut since = client.scanned_version;
        while since < upto {
            // On the transaction's connection: a second pooled one, taken
            // while holding this, deadlocks when many clients prepare at
            // once (as they do when a change wakes them all, R-T7).
            let page = store::changes_between(&mut tx, since, upto, CHUNK as i64).await?;
            let Some(last) = page.last() else { break };
            since = last.version;
            candidates.extend(page.iter().filter(|c| mailbox_set(c.set)).map(|c| c.id));
        }
    }

    let mut items = Vec::new();
    let candidates: Vec<Uuid> = candidates.into_iter().collect();
    let mut pending = Vec::new();
    for chunk in candidates.chunks(CHUNK) {
        let records = store::records_by_ids(&mut tx, chunk).await?;
        let entries = sync_store::entries_for(&mut tx, client.id, chunk).await?;
        for (record, deleted) in records {
            // Changes committed after `upto` are taken up next time.
            if record.version > upto || !mailbox_set(record.set) || is_exception(&record) {
                continue;
            }
            let held = entries.get(&record.id).map(|e| Held {
                delivered_version: e.delivered_version,
                manual: e.manual,
                excluded: e.excluded,
            });
            let facts = DeliveryFacts {
                deleted,
                held,
                filter_match: !deleted && owner.matching_filter(&record, now).is_some(),
                delivers_type: syncs_items && owner.delivers(record.set),
                syncs_items,
                tagging: owner.org.tagging,
                kind_held: client.holds(record.set),
            };
            let delivery = plan_delivery(&record, facts, owner.id(), now);
            if let Some(d) = delivery {
                let (action, removal) = match d {
                    Delivery::Create => ("create", None),
                    Delivery::Update => ("update", None),
                    Delivery::Remove(r) => (
                        "remove",
                        Some(json!(r).as_str().unwrap_or("delete").to_string()),
                    ),
                };
                items.push(BatchItem {
                    id: record.id,
                    set: record.set,
                    action: action.into(),
                    version: record.version,
                    removal,
                });
            }
            if delivery.is_some() {
                pending.push(record.id);
            }
        }
        sync_store::set_pending_many(&mut tx, client.id, chunk, &pending).await?;
        pending.clear();
    }
    sync_store::drop_batches(&mut tx, client.id).await?;
    let batch = if items.is_empty() {
        None
    } else {
        Some(Uuid::new_v4())
    };
    if let Some(b) = batch {
        sync_store::insert_batch(&mut tx, b, client.id, upto, &items, &now_timestamp()).await?;
    }
    let held = sync_store::held_by_set(&mut tx, client.id).await?;
    let mass_delete = mass_delete(&owner.org, &items, &held);
    let checked = if recheck || client.full_scan {
        now_timestamp()
    } else {
        client.time_checked_at.clone()
    };
    sync_store::advance_client(&mut tx, client.id, upto, &checked, batch, &now_timestamp()).await?;
    tx.commit().await?;
    Ok(json!({
        "batch": batch, "upto_version": upto, "counts": counts(&items), "total": items.len(),
        "mass_delete": mass_delete,
    }))
}

/// R-T5: how many mailbox items this batch deletes, per collection, against
/// the limits. The agent deletes nothing of a batch that exceeds them
/// unless the user allows it (`crmsync sync --allow-mass-delete`).
fn mass_delete(
    org: &crmsync_core::settings::OrgSettings,
    items: &[BatchItem],
    held: &[(EntitySet, i64)],
) -> Value {
    let limits = MassDeleteLimits::of(org);
    let per_kind: Vec<Deletions> = MailboxKind::ALL
        .iter()
        .map(|kind| Deletions {
            collection: kind.as_str().to_string(),
            deletes: items
                .iter()
                .filter(|i| i.removal.as_deref() == Some("delete"))
                .filter(|i| MailboxKind::of_set(i.set) == Some(*kind))
                .count() as u64,
            held: held
                .iter()
                .filter(|(set, _)| MailboxKind::of_set(*set) == Some(*kind))
                .map(|(_, n)| *n as u64)
                .sum(),
        })
        .collect();
    let reason = limits.exceeded(&per_kind);
    json!({"deletes": per_kind.iter().map(|d| d.deletes).sum::<u64>(),
        "held": per_kind.iter().map(|d| d.held).sum::<u64>(),
        "max_items": limits.max_items, "min_items": limits.min_items, "max_percent": limits.max_percent,
        "exceeded": reason.is_some(), "reason": reason})
}

async fn current_batch(
    store: &Store,
    caller: Caller,
    client_id: Uuid,
    batch: Uuid,
) -> ApiResult<Client> {
    let client = own_client(store, caller, client_id).await?;
    if client.current_batch != Some(batch) {
        return Err(ApiError::conflict(
            "stale_batch",
            "this batch is not the client's current one (a newer prepare replaced it); prepare again",
        ));
    }
    Ok(client)
}

/// The record as the mailbox receives it: only fields that go to the
/// mailbox (R-F1, R-F3), plus the company name (R-F4).
async fn delivered_record(
    conn: &mut sqlx::AnyConnection,
    owner: &MailboxOwner,
    r: &Record,
    manual: bool,
) -> ApiResult<Value> {
    let mut out = json!({
        "id": r.id, "set": r.set, "version": r.version, "state": r.state, "owner_id": r.owner_id,
        "modified_at": r.modified_at, "manual": manual, "fields": owner.mailbox_fields(r),
    });
    if r.set == EntitySet::Contacts && owner.settings.update_company_field {
        if let Some(account) = r
            .fields
            .get("account_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            if let Some(acc) = store::get_record(conn, account).await? {
                out["company"] = acc.fields.get("name").cloned().unwrap_or(Value::Null);
            }
        }
    }
    if let Some(exceptions) = exceptions_json(conn, owner, r).await? {
        out["exceptions"] = exceptions;
    }
    Ok(out)
}

/// R-E2: a series travels with its modified and cancelled instances, in
/// deliveries and in push answers alike. `None` for a record that is not a
/// series.
pub(super) async fn exceptions_json(
    conn: &mut sqlx::AnyConnection,
    owner: &MailboxOwner,
    r: &Record,
) -> ApiResult<Option<Value>> {
    if !r.fields.contains_key("recurrence") {
        return Ok(None);
    }
    let exceptions = store::exceptions_of(conn, r.id).await?;
    Ok(Some(Value::Array(
        exceptions
            .iter()
            .map(|e| json!({"id": e.id, "version": e.version, "state": e.state, "fields": owner.mailbox_fields(e),
                "recurrence_id": e.fields.get("recurrence_id").cloned().unwrap_or(Value::Null)}))
            .collect(),
    )))
}

/// R-S3: pages of a batch's deliveries (`cursor`), or the full records of
/// the ids asked for (`ids`).
pub async fn data(
    store: &Store,
    caller: Caller,
    query: &std::collections::HashMap<String, String>,
) -> ApiResult<Value> {
    let get = |k: &str| query.get(k).map(String::as_str);
    let parse = |k: &str| {
        get(k)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ApiError::bad_request("bad_parameter", format!("{k}: required, a UUID")))
    };
    let (client_id, batch) = (parse("client_id")?, parse("batch")?);
    let client = current_batch(store, caller, client_id, batch).await?;
    let mut conn = store.pool.acquire().await?;
    if let Some(ids) = get("ids") {
        let ids: Vec<Uuid> = ids
            .split(',')
            .map(|s| {
                Uuid::parse_str(s.trim()).map_err(|_| {
                    ApiError::bad_request("bad_parameter", format!("ids: '{s}' is not a UUID"))
                })
            })
            .collect::<ApiResult<_>>()?;
        if ids.is_empty() || ids.len() > 500 {
            return Err(ApiError::bad_request(
                "bad_parameter",
                "ids: ask for 1 to 500 records at a time",
            ));
        }
        let owner = MailboxOwner::load(store, client.mailbox_user_id).await?;
        let entries = sync_store::entries_for(&mut conn, client.id, &ids).await?;
        let mut out = Vec::new();
        for id in &ids {
            let Some(item) = sync_store::batch_item(&mut conn, batch, *id).await? else {
                return Err(ApiError::invalid(format!("ids: {id} is not in this batch")));
            };
            if item.action == "remove" {
                return Err(ApiError::invalid(format!(
                    "ids: {id} is a removal; it has no record to send"
                )));
            }
            let Some(r) = store::get_record(&mut conn, *id).await? else {
                continue;
            };
            out.push(
                delivered_record(
                    &mut conn,
                    &owner,
                    &r,
                    entries.get(id).is_some_and(|e| e.manual),
                )
                .await?,
            );
        }
        return Ok(json!({"records": out}));
    }
    let cursor = match get("cursor") {
        None => 0,
        Some(c) => c.parse::<i64>().map_err(|_| {
            ApiError::bad_request(
                "bad_cursor",
                "cursor: use the next_cursor of the previous page",
            )
        })?,
    };
    let page = sync_store::batch_items(&mut conn, batch, cursor, 500).await?;
    let next = if page.len() == 500 {
        page.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    Ok(json!({"items": page.into_iter().map(|(_, i)| i).collect::<Vec<_>>(), "next_cursor": next}))
}

/// R-S4: the client confirms what it applied. All or nothing; replaying an
/// acknowledgement changes nothing.
pub async fn ack(store: &Store, caller: Caller, body: &Value) -> ApiResult<Value> {
    let (client_id, batch) = (uuid_field(body, "client_id")?, uuid_field(body, "batch")?);
    let items = body.get("items").and_then(Value::as_array).ok_or_else(|| {
        ApiError::invalid("items: required, a list of {\"id\", \"version\"} the client applied")
    })?;
    let client = current_batch(store, caller, client_id, batch).await?;
    let mut tx = store.begin().await?;
    for (i, item) in items.iter().enumerate() {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok());
        let version = item.get("version").and_then(Value::as_i64);
        let (Some(id), Some(version)) = (id, version) else {
            return Err(ApiError::invalid(format!(
                "items[{i}]: needs 'id' (UUID) and 'version' (number)"
            )));
        };
        let delivered = sync_store::batch_item(&mut tx, batch, id).await?;
        let Some(delivered) = delivered.filter(|d| d.version == version) else {
            return Err(ApiError::invalid(format!("items[{i}]: {id} at version {version} is not in this batch; nothing was acknowledged")));
        };
        let existing = sync_store::entry(&mut tx, client.id, id).await?;
        match delivered.action.as_str() {
            "remove" => sync_store::delete_entry(&mut tx, client.id, id).await?,
            _ => {
                let manual = existing.is_some_and(|e| e.manual);
                sync_store::put_entry(
                    &mut tx,
                    client.id,
                    id,
                    delivered.set,
                    version,
                    manual,
                    false,
                    None,
                )
                .await?
            }
        }
        sync_store::set_pending(&mut tx, client.id, id, false).await?;
    }
    sync_store::record_ack(&mut tx, client.id, &now_timestamp(), items.len() as i64).await?;
    tx.commit().await?;
    Ok(json!({"acknowledged": items.len()}))
}
