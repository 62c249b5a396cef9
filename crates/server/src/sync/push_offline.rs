//! The playback of an offline replica's edits (R-O1): `offline_create`,
//! `offline_update` and `offline_delete`, push operations with the same
//! transaction and `op_id` answer of every push operation (R-S5). They are
//! edits of the CRM's records as the §4 API makes them, so no mailbox rule
//! applies (sync filters, R-S7, the primary client); they need the
//! go_offline privilege, follow R-A and field security (R-F3), merge per
//! field (R-F5) and log what they discard (R-F6). They create no sync
//! entries: the replica follows the offline change feed.

use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use crmsync_core::time::parse_datetime;
use crmsync_core::{EntitySet, Record};

use super::push::{
    current, id_of, merge_into, object, refuse, set_of, OpContext, Outcome, Refusal, Scope,
};
use crate::error::ApiError;
use crate::offline::feed::replica_record;
use crate::records;
use crate::store;

/// Who may play back: the user's own clients, with go_offline.
fn check_offline(ctx: &OpContext, set: EntitySet) -> Result<(), Refusal> {
    if ctx.client.is_delegated() {
        return Err(refuse(
            "delegated_client",
            "a delegated client keeps no offline copy; play the changes back from the user's own client",
        ));
    }
    if !ctx.owner.may_go_offline() {
        let e = crate::offline::no_offline_privilege();
        return Err(refuse(e.code, e.message));
    }
    if set == EntitySet::Users {
        return Err(refuse(
            "invalid_operation",
            "users are never kept offline; change them online",
        ));
    }
    Ok(())
}

/// A refusal that hands the replica the server's version to take.
fn with_record(ctx: &OpContext, mut refusal: Refusal, r: &Record) -> Refusal {
    refusal.record = Some(replica_record(ctx.owner, r));
    refusal
}

/// R-F3: the first field the replica sets that the user may not change.
fn forbidden_field(
    ctx: &OpContext,
    set: EntitySet,
    changed: &Map<String, Value>,
) -> Result<(), Refusal> {
    match changed
        .keys()
        .find(|k| set.field(k).is_some() && !ctx.owner.may_update(set, k))
    {
        Some(k) => Err(refuse(
            "field_security",
            format!("this user may not change {set} field '{k}'; the offline copy takes the server's version"),
        )),
        None => Ok(()),
    }
}

/// The server's version the replica's change was made on.
fn base_version(op: &Value) -> Result<i64, Refusal> {
    op.get("base_version")
        .and_then(Value::as_i64)
        .ok_or_else(|| refuse("invalid_operation", "'base_version' is required"))
}

fn ok(r: &Record, ctx: &OpContext) -> Value {
    json!({"id": r.id, "version": r.version, "record": replica_record(ctx.owner, r)})
}

/// `offline_create`: the record under the id the replica gave it. A
/// playback cut off after this committed sends it again (with another
/// op_id): the record exists, so it is answered and nothing is created.
pub(super) async fn create(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    let (set, id) = (set_of(op)?, id_of(op)?);
    check_offline(ctx, set)?;
    let existing = store::records_by_ids(conn, &[id])
        .await
        .map_err(ApiError::from)?;
    match existing.into_iter().next() {
        Some((r, false)) if r.set == set => return Ok(ok(&r, ctx)),
        Some((r, false)) => {
            return Err(refuse(
                "invalid_operation",
                format!("id {id} belongs to a record in {}, not {set}", r.set),
            ))
        }
        Some((_, true)) => {
            let mut r = refuse(
                "not_found",
                format!(
                    "{set} {id} was created and then deleted in the CRM; the offline copy drops it"
                ),
            );
            r.record = Some(Value::Null);
            return Err(r);
        }
        None => {}
    }
    let fields = object(op, "fields")?;
    forbidden_field(ctx, set, &fields)?;
    let created = records::create_with_id_in(
        conn,
        ctx.actor,
        set,
        &Value::Object(fields),
        ctx.version,
        id,
    )
    .await?;
    Ok(ok(&created.record, ctx))
}

/// `offline_update`: the replica's changes since `base_version`, merged
/// per field with the CRM's (R-F5).
pub(super) async fn update(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    let (set, id) = (set_of(op)?, id_of(op)?);
    check_offline(ctx, set)?;
    let crm = current(conn, set, id).await.map_err(|mut r| {
        r.record = Some(Value::Null);
        r
    })?;
    let base_version = base_version(op)?;
    if base_version > crm.version {
        return Err(with_record(
            ctx,
            refuse(
                "bad_base_version",
                format!(
                    "base_version {base_version} is newer than the CRM's {}",
                    crm.version
                ),
            ),
            &crm,
        ));
    }
    let baseline = Scope::Offline.select(ctx.owner, set, &object(op, "baseline")?);
    let changes = object(op, "fields")?;
    let changed: Map<String, Value> = changes
        .iter()
        .filter(|(k, v)| baseline.get(*k).unwrap_or(&Value::Null) != *v)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    forbidden_field(ctx, set, &changed).map_err(|r| with_record(ctx, r, &crm))?;
    // The replica's side: its baseline with its changes (null: removed).
    let mut offline = baseline.clone();
    for (k, v) in Scope::Offline.select(ctx.owner, set, &changes) {
        if v.is_null() {
            offline.remove(&k);
        } else {
            offline.insert(k, v);
        }
    }
    let offline_time = op
        .get("modified_at")
        .and_then(Value::as_str)
        .and_then(|s| parse_datetime(s).ok());
    // The CRM wins ties and unknown times (R-F5).
    let offline_is_later = matches!(
        (offline_time, parse_datetime(&crm.modified_at).ok()),
        (Some(o), Some(c)) if o > c
    );
    let (record, conflicts) = merge_into(
        conn,
        ctx,
        crm.clone(),
        &baseline,
        &offline,
        None,
        offline_is_later,
        Scope::Offline,
    )
    .await
    .map_err(|r| with_record(ctx, r, &crm))?;
    let mut out = ok(&record, ctx);
    out["conflicts"] = json!(conflicts);
    Ok(out)
}

/// `offline_delete`: applied only if the CRM's record is still the one
/// the replica deleted; a record changed on the server meanwhile stays.
pub(super) async fn delete(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    let (set, id) = (set_of(op)?, id_of(op)?);
    check_offline(ctx, set)?;
    let base_version = base_version(op)?;
    let Ok(crm) = current(conn, set, id).await else {
        return Ok(json!({"id": id, "deleted": true}));
    };
    if crm.version > base_version {
        return Err(with_record(
            ctx,
            refuse(
                "changed_on_server",
                format!("{set} {id} changed in the CRM after the offline copy deleted it, so it was kept; the offline copy takes the server's version"),
            ),
            &crm,
        ));
    }
    records::delete_in(conn, ctx.actor, set, id, None, ctx.version)
        .await
        .map_err(|e| with_record(ctx, e.into(), &crm))?;
    Ok(json!({"id": id, "deleted": true}))
}
