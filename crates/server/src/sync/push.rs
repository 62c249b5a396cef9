//! Push (R-S5): mailbox-side operations, each all or nothing in its own
//! transaction, each answered once and the answer kept, so a replayed
//! operation (same client, same `op_id`) changes nothing.

use serde_json::{json, Map, Value};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crmsync_core::mapping::Status;
use crmsync_core::merge::{merge, FieldConflict, Side};
use crmsync_core::sync_rules::{
    accepts_mailbox_edits, effect_of_mailbox_removal, is_closed_activity, CrmEffect,
};
use crmsync_core::time::{now_timestamp, parse_datetime};
use crmsync_core::{EntitySet, Record};

use super::clients::own_client;
use super::context::MailboxOwner;
use super::store::{self as sync_store, Client, ConflictRow};
use crate::auth::Caller;
use crate::changes::{Committed, Kinds};
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::store::{self, Store};

/// The most operations one push may carry.
pub const MAX_OPS: usize = 500;

/// A reasoned refusal of one operation (the batch goes on).
pub struct Refusal {
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) record: Option<Value>,
}

pub fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
        record: None,
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal {
            code: e.code,
            message: e.message,
            record: None,
        }
    }
}

/// An operation's outcome: a refusal, or the fields of a success.
pub type Outcome = Result<Value, Refusal>;

/// What every operation handler gets.
pub struct OpContext<'a> {
    pub client: &'a Client,
    pub owner: &'a MailboxOwner,
    /// The client's user, with the caller's admin right.
    pub actor: Caller,
    pub version: i64,
    pub now: OffsetDateTime,
}

pub(super) fn text<'a>(op: &'a Value, key: &str) -> Result<&'a str, Refusal> {
    op.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("invalid_operation", format!("'{key}' is required")))
}

pub(super) fn set_of(op: &Value) -> Result<EntitySet, Refusal> {
    text(op, "set")?
        .parse()
        .map_err(|e: crmsync_core::entity::UnknownEntitySet| {
            refuse("invalid_operation", e.to_string())
        })
}

pub(super) fn id_of(op: &Value) -> Result<Uuid, Refusal> {
    Uuid::parse_str(text(op, "id")?)
        .map_err(|_| refuse("invalid_operation", "'id' must be the record's UUID"))
}

pub(super) fn object(op: &Value, key: &str) -> Result<Map<String, Value>, Refusal> {
    match op.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(refuse(
            "invalid_operation",
            format!("'{key}' must be an object of fields"),
        )),
    }
}

/// R-C3/R-C4/R-C5 and R-T2: who may push what.
fn check_role(ctx: &OpContext, set: EntitySet) -> Result<(), Refusal> {
    if ctx.client.is_delegated() {
        return Err(refuse(
            "delegated_client",
            "a delegated client only marks items; the mailbox owner's primary client tracks them at its next sync",
        ));
    }
    if set != EntitySet::Emails && !ctx.owner.acts_as_primary(ctx.client) {
        return Err(refuse(
            "secondary_client",
            "only the primary client synchronizes contacts, appointments and tasks; make this client primary (crmsync client set-primary) or use the primary",
        ));
    }
    Ok(())
}

pub(super) async fn current(
    conn: &mut AnyConnection,
    set: EntitySet,
    id: Uuid,
) -> Result<Record, Refusal> {
    match store::get_record(conn, id).await.map_err(ApiError::from)? {
        Some(r) if r.set == set => Ok(r),
        _ => Err(refuse(
            "not_found",
            format!("{set} {id} no longer exists in the CRM; the next sync removes or unlinks it"),
        )),
    }
}

async fn held(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    id: Uuid,
) -> Result<sync_store::Entry, Refusal> {
    sync_store::entry(conn, ctx.client.id, id)
        .await
        .map_err(ApiError::from)?
        .filter(|e| !e.excluded)
        .ok_or_else(|| {
            refuse(
                "not_linked",
                format!("{id} is not linked to this client's mailbox; track it first"),
            )
        })
}

/// The record as the mailbox should now show it.
pub fn shown(ctx: &OpContext, r: &Record) -> Value {
    json!({"id": r.id, "set": r.set, "version": r.version, "state": r.state, "modified_at": r.modified_at, "fields": ctx.owner.mailbox_fields(r)})
}

/// [`shown`], and for a series its exceptions (R-E2), so that the mailbox
/// item gets their `X-CRM-ID`s and its baseline holds them.
async fn shown_item(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    r: &Record,
) -> Result<Value, Refusal> {
    let mut out = shown(ctx, r);
    if let Some(exceptions) = super::prepare::exceptions_json(conn, ctx.owner, r).await? {
        out["exceptions"] = exceptions;
    }
    Ok(out)
}

pub(super) async fn link(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    r: &Record,
    uid: Option<&str>,
) -> ApiResult<()> {
    sync_store::put_entry(
        conn,
        ctx.client.id,
        r.id,
        r.set,
        r.version,
        true,
        false,
        uid,
    )
    .await?;
    sync_store::set_pending(conn, ctx.client.id, r.id, false).await?;
    Ok(())
}

/// The mailbox now holds this version of the record (it got it in the answer).
async fn holds(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    id: Uuid,
    set: EntitySet,
    version: i64,
    manual: bool,
) -> ApiResult<()> {
    sync_store::put_entry(conn, ctx.client.id, id, set, version, manual, false, None).await?;
    Ok(())
}

/// `track`: create the CRM record, or link the item to an existing one
/// (its X-CRM-ID, or the same item tracked before).
async fn track(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    let set = set_of(op)?;
    check_role(ctx, set)?;
    if set == EntitySet::Emails {
        return super::email::track_email(conn, ctx, op).await;
    }
    if !crmsync_core::settings::MAILBOX_TYPES.contains(&set) {
        return Err(refuse(
            "not_trackable",
            format!("{set} cannot be tracked from a mailbox"),
        ));
    }
    if !ctx.owner.may_sync_to_mailbox() {
        return Err(refuse(
            "no_sync_privilege",
            "this user lacks the sync_to_mailbox privilege: only email can be tracked",
        ));
    }
    if ctx.owner.filters_of(set).next().is_none() {
        return Err(refuse("no_filter", format!("there is no active {set} filter for this user, so {set} cannot be tracked; ask an admin")));
    }
    let uid = op.get("item_uid").and_then(Value::as_str);
    let existing = match op
        .get("crm_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
    {
        Some(id) => Some(id),
        None => match uid {
            Some(u) => sync_store::entry_by_uid(conn, ctx.client.id, u)
                .await
                .map_err(ApiError::from)?,
            None => None,
        },
    };
    if let Some(id) = existing {
        if let Some(r) = store::get_record(conn, id)
            .await
            .map_err(ApiError::from)?
            .filter(|r| r.set == set)
        {
            // R-M2: a known item is linked again, never duplicated; the
            // CRM version is what the mailbox shows next.
            link(conn, ctx, &r, uid).await?;
            let record = shown_item(conn, ctx, &r).await?;
            return Ok(json!({"id": r.id, "version": r.version, "linked": true, "record": record}));
        }
    }
    let mut body = object(op, "fields")?;
    body.retain(|k, _| ctx.owner.to_crm(set, k) || set.field(k).is_some_and(|f| f.required));
    // A completed or cancelled item is tracked as such.
    if let Some(status) = status_of(op, "state") {
        body.insert("state".into(), json!(status.crm_state(set, None)));
    }
    let created =
        records::create_in(conn, ctx.actor, set, &Value::Object(body), ctx.version).await?;
    // R-E2: a series tracked from the mailbox arrives with its exceptions.
    let exceptions = exceptions_of_op(op)?;
    let record = if exceptions.is_empty() {
        created.record
    } else {
        write_exceptions(conn, ctx, &created.record, &exceptions, None, false).await?;
        current(conn, set, created.record.id).await?
    };
    link(conn, ctx, &record, uid).await?;
    let shown = shown_item(conn, ctx, &record).await?;
    Ok(json!({"id": record.id, "version": record.version, "linked": false, "record": shown}))
}

/// One exception of a series as the mailbox holds it (R-E2): an overridden
/// instance (moved, edited or cancelled), keyed by its original start.
struct MailboxException {
    recurrence_id: Value,
    crm_id: Option<Uuid>,
    status: Option<Status>,
    fields: Map<String, Value>,
}

/// The `exceptions` of a `track` or `update` of a series:
/// `[{"recurrence_id", "crm_id"?, "state"?, "fields"}]`.
fn exceptions_of_op(op: &Value) -> Result<Vec<MailboxException>, Refusal> {
    let list = match op.get("exceptions") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(refuse(
                "invalid_operation",
                "'exceptions' must be a list of {recurrence_id, crm_id, state, fields}",
            ))
        }
    };
    list.iter()
        .map(|e| {
            let rid = e
                .get("recurrence_id")
                .and_then(Value::as_str)
                .and_then(|t| parse_datetime(t).ok())
                .ok_or_else(|| {
                    refuse(
                        "invalid_operation",
                        "every exception needs 'recurrence_id': the instance's original start (RFC 3339)",
                    )
                })?;
            Ok(MailboxException {
                recurrence_id: json!(crmsync_core::time::format_datetime(rid)),
                crm_id: e
                    .get("crm_id")
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok()),
                status: status_of(e, "state"),
                fields: object(e, "fields")?,
            })
        })
        .collect()
}

/// R-E2: the exceptions the mailbox holds become the CRM's exception
/// records of `series`, as if the CRM had made them: a new one is created,
/// a known one merged with its baseline (R-F5, from `baselines`, the
/// update's `baseline["@exceptions"]` keyed by recurrence id), and one the
/// baseline had but the mailbox no longer holds (its override removed,
/// the instance back in the series) is deleted. Returns the merge conflicts.
async fn write_exceptions(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    series: &Record,
    mailbox: &[MailboxException],
    baselines: Option<&Map<String, Value>>,
    mailbox_is_later: bool,
) -> Result<Vec<FieldConflict>, Refusal> {
    let set = series.set;
    let crm = store::exceptions_of(conn, series.id)
        .await
        .map_err(ApiError::from)?;
    let rid_of = |r: &Record| r.fields.get("recurrence_id").cloned();
    let baseline_of = |rid: &Value| {
        baselines
            .and_then(|b| b.get(rid.as_str()?))
            .and_then(Value::as_object)
    };
    let mut conflicts = Vec::new();
    for ex in mailbox {
        let known = crm
            .iter()
            .find(|r| Some(r.id) == ex.crm_id || rid_of(r).as_ref() == Some(&ex.recurrence_id));
        match known {
            None => {
                let mut body = ex.fields.clone();
                body.retain(|k, _| {
                    k != "recurrence"
                        && (ctx.owner.to_crm(set, k) || set.field(k).is_some_and(|f| f.required))
                });
                body.insert("series_id".into(), json!(series.id));
                body.insert("recurrence_id".into(), ex.recurrence_id.clone());
                if let Some(status) = ex.status {
                    body.insert("state".into(), json!(status.crm_state(set, None)));
                }
                records::create_in(conn, ctx.actor, set, &Value::Object(body), ctx.version).await?;
            }
            Some(crm_ex) => {
                let crm_ex = crm_ex.clone();
                // No baseline (an exception the mailbox did not hold when
                // last synchronized): the mailbox's values are the change.
                let baseline = baseline_of(&ex.recurrence_id)
                    .cloned()
                    .unwrap_or_else(|| mapped(ctx, set, &crm_ex.fields));
                let base_state = baseline
                    .get("@state")
                    .and_then(Value::as_str)
                    .and_then(Status::parse);
                let mut fields = ex.fields.clone();
                fields.remove("recurrence");
                let (_, mut c) = merge_into(
                    conn,
                    ctx,
                    crm_ex,
                    &mapped(ctx, set, &baseline),
                    &mapped(ctx, set, &fields),
                    ex.status.zip(base_state),
                    mailbox_is_later,
                    Scope::Mailbox,
                )
                .await?;
                conflicts.append(&mut c);
            }
        }
    }
    // Overrides removed in the mailbox: the instance follows its series again.
    for r in &crm {
        let Some(rid) = rid_of(r) else { continue };
        let removed = baseline_of(&rid).is_some()
            && !mailbox
                .iter()
                .any(|m| m.recurrence_id == rid || m.crm_id == Some(r.id));
        if removed {
            records::delete_in(conn, ctx.actor, set, r.id, None, ctx.version).await?;
        }
    }
    Ok(conflicts)
}

/// A mailbox status (`active`, `completed`, `canceled`) in an operation.
fn status_of(op: &Value, key: &str) -> Option<Status> {
    op.get(key).and_then(Value::as_str).and_then(Status::parse)
}

/// Which fields a merge (R-F5) looks at, and which it may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// The fields a mailbox maps, written where their direction (R-F1)
    /// and field security (R-F3) allow.
    Mailbox,
    /// Every field of the set an offline replica holds (R-O1), with the
    /// record's state and owner, written where field security allows.
    Offline,
}

/// The common columns an offline replica edits like fields.
const OFFLINE_COLUMNS: [&str; 2] = ["state", "owner_id"];

impl Scope {
    fn holds(self, owner: &MailboxOwner, set: EntitySet, field: &str) -> bool {
        match self {
            Scope::Mailbox => owner.to_mailbox(set, field) || owner.to_crm(set, field),
            Scope::Offline => {
                OFFLINE_COLUMNS.contains(&field)
                    || set.field(field).is_some() && owner.may_read(set, field)
            }
        }
    }

    pub(super) fn writes(self, owner: &MailboxOwner, set: EntitySet, field: &str) -> bool {
        match self {
            Scope::Mailbox => owner.to_crm(set, field),
            Scope::Offline => OFFLINE_COLUMNS.contains(&field) || owner.may_update(set, field),
        }
    }

    /// The fields of `fields` this scope looks at.
    pub(super) fn select(
        self,
        owner: &MailboxOwner,
        set: EntitySet,
        fields: &Map<String, Value>,
    ) -> Map<String, Value> {
        fields
            .iter()
            .filter(|(k, _)| self.holds(owner, set, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The CRM side of a merge: the record's fields in scope.
    fn crm_side(self, owner: &MailboxOwner, r: &Record) -> Map<String, Value> {
        let mut out = self.select(owner, r.set, &r.fields);
        if self == Scope::Offline {
            out.insert("state".into(), json!(r.state));
            out.insert("owner_id".into(), json!(r.owner_id));
        }
        out
    }
}

/// The fields the mailbox maps for a set: merging looks at these only.
fn mapped(ctx: &OpContext, set: EntitySet, fields: &Map<String, Value>) -> Map<String, Value> {
    Scope::Mailbox.select(ctx.owner, set, fields)
}

/// `update`: the item changed in the mailbox. Merged per field against the
/// baseline (R-F5); the answer carries the merged record for the mailbox.
async fn update(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    let (set, id) = (set_of(op)?, id_of(op)?);
    check_role(ctx, set)?;
    if set == EntitySet::Emails {
        return Err(refuse(
            "read_only_email",
            "a tracked email cannot change except its regarding; use set_regarding",
        ));
    }
    let entry = held(conn, ctx, id).await?;
    let crm = current(conn, set, id).await?;
    let with_record = |mut r: Refusal, rec: &Record| {
        r.record = Some(shown(ctx, rec));
        r
    };
    if !accepts_mailbox_edits(set) {
        return Err(with_record(refuse("one_way", "service appointments synchronize CRM to mailbox only; the mailbox copy is overwritten"), &crm));
    }
    if is_closed_activity(&crm) {
        return Err(refuse(
            "closed_activity",
            "the activity is completed or canceled in the CRM; mailbox edits are not pushed",
        ));
    }
    let base_version = op
        .get("base_version")
        .and_then(Value::as_i64)
        .ok_or_else(|| refuse("invalid_operation", "'base_version' is required"))?;
    if base_version > crm.version {
        return Err(refuse(
            "bad_base_version",
            format!(
                "base_version {base_version} is newer than the CRM's {}",
                crm.version
            ),
        ));
    }
    let baseline_op = object(op, "baseline")?;
    let baseline = mapped(ctx, set, &baseline_op);
    let mailbox = mapped(ctx, set, &object(op, "fields")?);
    let mailbox_time = op
        .get("mailbox_modified_at")
        .and_then(Value::as_str)
        .and_then(|s| parse_datetime(s).ok());
    let crm_time = parse_datetime(&crm.modified_at).ok();
    // CRM wins ties and unknown times (R-F5).
    let mailbox_is_later = matches!((mailbox_time, crm_time), (Some(m), Some(c)) if m > c);
    let states = status_of(op, "state").zip(status_of(op, "base_state"));
    let (record, mut conflicts) = match merge_into(
        conn,
        ctx,
        crm.clone(),
        &baseline,
        &mailbox,
        states,
        mailbox_is_later,
        Scope::Mailbox,
    )
    .await
    {
        Ok(merged) => merged,
        Err(mut r) => {
            // The CRM version, for the mailbox to show instead.
            r.record = Some(shown_item(conn, ctx, &crm).await?);
            return Err(r);
        }
    };
    // R-E2: the series' exceptions as the mailbox holds them.
    let exceptions = exceptions_of_op(op)?;
    let baselines = baseline_op.get("@exceptions").and_then(Value::as_object);
    let record = if exceptions.is_empty() && baselines.is_none_or(|b| b.is_empty()) {
        record
    } else {
        let mut c =
            write_exceptions(conn, ctx, &record, &exceptions, baselines, mailbox_is_later).await?;
        conflicts.append(&mut c);
        // Changed exceptions changed their series' version.
        current(conn, set, id).await?
    };
    holds(conn, ctx, id, set, record.version, entry.manual).await?;
    let shown = shown_item(conn, ctx, &record).await?;
    Ok(json!({"id": id, "version": record.version, "record": shown, "conflicts": conflicts}))
}

/// R-F5: merges the client's fields (a mailbox's, with its status given
/// as (mailbox, baseline); or an offline replica's) into the CRM record
/// `crm` against the baseline, writes what differs, and logs the values
/// discarded (R-F6). A series and each of its exceptions are merged alike.
#[allow(clippy::too_many_arguments)]
pub(super) async fn merge_into(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    crm: Record,
    baseline: &Map<String, Value>,
    mailbox: &Map<String, Value>,
    states: Option<(Status, Status)>,
    mailbox_is_later: bool,
    scope: Scope,
) -> Result<(Record, Vec<FieldConflict>), Refusal> {
    let (set, id) = (crm.set, crm.id);
    let crm_side = scope.crm_side(ctx.owner, &crm);
    let merged = merge(baseline, &crm_side, mailbox, mailbox_is_later, |f| {
        scope.writes(ctx.owner, set, f)
    });
    // The CRM write: every field in scope that differs from the CRM now.
    let mut patch = Map::new();
    for name in crm_side.keys().chain(merged.fields.keys()) {
        let new = merged.fields.get(name).cloned().unwrap_or(Value::Null);
        if crm_side.get(name).cloned().unwrap_or(Value::Null) != new
            && scope.writes(ctx.owner, set, name)
        {
            patch.insert(name.clone(), new);
        }
    }
    // The item's status (a to-do completed or cancelled, an event
    // cancelled in the mail client) is merged like a field: the mailbox's
    // change applies unless the CRM changed it too and is later.
    if let Some((mine, base)) = states {
        let crm_status = Status::from_crm_state(set, &crm.state);
        if mine != base && mine != crm_status && (crm_status == base || mailbox_is_later) {
            patch.insert("state".into(), json!(mine.crm_state(set, Some(&crm.state))));
        }
    }
    let record = if patch.is_empty() {
        crm
    } else {
        if crm.owner_id != ctx.actor.user_id && !ctx.actor.is_admin {
            return Err(refuse("not_owner", "only the owner may change this record in the CRM (R-A); the mailbox shows the CRM version"));
        }
        records::update_in(
            conn,
            ctx.actor,
            set,
            id,
            &Value::Object(patch),
            None,
            ctx.version,
        )
        .await?
        .0
    };
    for c in &merged.conflicts {
        let row = ConflictRow {
            id: Uuid::new_v4(),
            user_id: ctx.owner.id(),
            client_id: ctx.client.id,
            record_id: id,
            set,
            field: c.field.clone(),
            crm_value: c.crm_value.clone(),
            mailbox_value: c.mailbox_value.clone(),
            kept: if c.kept == Side::Crm {
                "crm".into()
            } else {
                "mailbox".into()
            },
            at: now_timestamp(),
        };
        sync_store::insert_conflict(conn, &row)
            .await
            .map_err(ApiError::from)?;
    }
    Ok((record, merged.conflicts))
}

/// `untrack` and `delete`: §9 mailbox → CRM.
async fn remove(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    op: &Value,
    untracked: bool,
) -> Outcome {
    let (set, id) = (set_of(op)?, id_of(op)?);
    check_role(ctx, set)?;
    held(conn, ctx, id).await?;
    let delete_in_crm = op
        .get("delete_in_crm")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let effect = match current(conn, set, id).await {
        Ok(r) => effect_of_mailbox_removal(
            &r,
            ctx.owner.id(),
            &ctx.owner.email,
            untracked,
            delete_in_crm,
            ctx.now,
        ),
        // Already gone in the CRM: only the link remains to drop.
        Err(_) => CrmEffect::Unlink,
    };
    if effect == CrmEffect::DeleteInCrm {
        // The §9 table decides; it already checked ownership where it matters.
        let system = Caller {
            user_id: ctx.actor.user_id,
            is_admin: true,
        };
        let asked = untracked && delete_in_crm;
        let actor = if asked { ctx.actor } else { system };
        records::delete_in(conn, actor, set, id, None, ctx.version).await?;
    }
    // R-S9: remembered, not sent to this mailbox again until reset or
    // tracked again. An untracked record is remembered too: the user's copy
    // stays in the mailbox unlinked, and sending the record again (it may
    // still match the filters) would put a second, tracked copy beside it.
    sync_store::put_entry(conn, ctx.client.id, id, set, 0, false, true, None)
        .await
        .map_err(ApiError::from)?;
    sync_store::set_pending(conn, ctx.client.id, id, false)
        .await
        .map_err(ApiError::from)?;
    Ok(json!({"id": id, "effect": effect}))
}

/// An operation's `regarding`: null, `{"set", "id"}`, or `{"id"}` alone,
/// as a mailbox's `$CRMRegarding:` keyword names it (R-M7): the set is then
/// the record's. Anything else is returned as is, for the record's
/// validation to explain.
pub(super) async fn regarding_of(conn: &mut AnyConnection, op: &Value) -> Result<Value, Refusal> {
    let regarding = op.get("regarding").cloned().unwrap_or(Value::Null);
    let Some(only_id) = regarding
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("id"))
    else {
        return Ok(regarding);
    };
    let id = only_id
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| refuse("invalid_input", "regarding: 'id' must be a record's UUID"))?;
    let record = store::get_record(conn, id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| refuse("invalid_input", format!("regarding: no record has id {id}")))?;
    Ok(json!({"set": record.set.as_str(), "id": id}))
}

/// `set_regarding`: links an activity or email to an account, contact,
/// lead, opportunity or case.
async fn set_regarding(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    let (set, id) = (set_of(op)?, id_of(op)?);
    check_role(ctx, set)?;
    if set.field("regarding").is_none() {
        return Err(refuse(
            "invalid_operation",
            format!("{set} has no regarding"),
        ));
    }
    let entry = held(conn, ctx, id).await?;
    let regarding = regarding_of(conn, op).await?;
    let (record, _) = records::update_in(
        conn,
        ctx.actor,
        set,
        id,
        &json!({"regarding": regarding}),
        None,
        ctx.version,
    )
    .await?;
    holds(conn, ctx, id, set, record.version, entry.manual).await?;
    Ok(json!({"id": id, "version": record.version, "record": shown(ctx, &record)}))
}

async fn apply(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    match text(op, "kind")? {
        "track" => track(conn, ctx, op).await,
        "update" => update(conn, ctx, op).await,
        "untrack" => remove(conn, ctx, op, true).await,
        "delete" => remove(conn, ctx, op, false).await,
        "set_regarding" => set_regarding(conn, ctx, op).await,
        "offline_create" => super::push_offline::create(conn, ctx, op).await,
        "offline_update" => super::push_offline::update(conn, ctx, op).await,
        "offline_delete" => super::push_offline::delete(conn, ctx, op).await,
        other => Err(refuse(
            "invalid_operation",
            format!("unknown kind '{other}'; use track, update, untrack, delete, set_regarding, offline_create, offline_update or offline_delete"),
        )),
    }
}

/// What a pushed operation may concern (R-T7): its set's kind of
/// collection (every kind when the set is not one), for every client but
/// the one that pushed it.
fn pushed_change(version: i64, client: &Client, op: &Value) -> Committed {
    let kinds = op
        .get("set")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<EntitySet>().ok())
        .map_or(Kinds::ALL, Kinds::of_set);
    Committed {
        version,
        kinds,
        origin: Some(client.id),
    }
}

/// R-S5: applies a batch of operations, each on its own.
pub async fn push(store: &Store, caller: Caller, body: &Value) -> ApiResult<Value> {
    let client_id = body
        .get("client_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::invalid("client_id: required, the UUID the server gave"))?;
    let ops = body
        .get("ops")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("ops: required, a list of operations"))?;
    if ops.len() > MAX_OPS {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_operations",
            format!("a push carries at most {MAX_OPS} operations; send the rest in further pushes"),
        ));
    }
    let client = own_client(store, caller, client_id).await?;
    let owner = MailboxOwner::load(store, client.mailbox_user_id).await?;
    let actor = Caller {
        user_id: client.user_id,
        is_admin: caller.is_admin,
    };
    let mut results = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let Some(op_id) = op
            .get("op_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 200)
        else {
            results.push(json!({"index": i, "status": "refused", "code": "invalid_operation", "message": "'op_id' is required: a unique string per operation"}));
            continue;
        };
        let mut tx = store.begin().await?;
        if let Some(done) = sync_store::op_result(&mut tx, client.id, op_id).await? {
            tx.rollback().await?;
            results.push(done);
            continue;
        }
        let version = store::next_version(&mut tx).await?;
        let ctx = OpContext {
            client: &client,
            owner: &owner,
            actor,
            version,
            now: OffsetDateTime::now_utc(),
        };
        let result = match apply(&mut tx, &ctx, op).await {
            Ok(mut ok) => {
                ok["op_id"] = json!(op_id);
                ok["status"] = json!("ok");
                ok
            }
            Err(refusal) => {
                // All or nothing: nothing of a refused operation stays.
                tx.rollback().await?;
                tx = store.begin().await?;
                let mut r = json!({"op_id": op_id, "status": "refused", "code": refusal.code, "message": refusal.message});
                if let Some(rec) = refusal.record {
                    r["record"] = rec;
                }
                r
            }
        };
        sync_store::save_op_result(&mut tx, client.id, op_id, &result, &now_timestamp()).await?;
        if result["status"] == "ok" {
            store
                .commit_change(tx, pushed_change(version, &client, op))
                .await?;
        } else {
            tx.commit().await?;
        }
        results.push(result);
    }
    Ok(json!({"results": results}))
}
