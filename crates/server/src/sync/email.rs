//! Tracked email on the server: the raw message kept as received, parsed
//! fields, deduplication by Message-ID, parties resolved (R-E8), two
//! activities (R-E9), approved users (R-E10), tracking tokens, and the
//! look-ups the agent needs for correlation (R-M5) and tagging (R-M7).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crmsync_core::email::{
    format_tracking_token, normalize_message_id, normalize_subject, parse_email, ParsedEmail,
};
use crmsync_core::field::{email as valid_address, MAX_LONG_TEXT, MAX_TEXT};
use crmsync_core::EntitySet;

use super::clients::own_client;
use super::context::MailboxOwner;
use super::push::{refuse, OpContext, Outcome};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::records;
use crate::store::{self, Store};

/// R-E8: only this many recipients (To, then Cc, then Bcc) are resolved
/// to CRM records when tracked; the sender is resolved besides.
pub const RESOLVED_RECIPIENTS: usize = 10;
/// The largest raw message accepted (the request body limit applies too).
pub const MAX_RAW: usize = 25 * 1024 * 1024;

/// Cuts text to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// R-E8: the first record holding this address, preferring users (so that
/// email between CRM users is recognized), then contacts, leads, accounts.
async fn resolve(conn: &mut AnyConnection, address: &str) -> ApiResult<Option<(EntitySet, Uuid)>> {
    let found = store::records_with_address(conn, address).await?;
    let rank = |s: &EntitySet| {
        [
            EntitySet::Users,
            EntitySet::Contacts,
            EntitySet::Leads,
            EntitySet::Accounts,
        ]
        .iter()
        .position(|x| x == s)
    };
    Ok(found
        .into_iter()
        .filter(|(s, _)| rank(s).is_some())
        .min_by_key(|(s, _)| rank(s)))
}

/// Parties in order (from, to, cc, bcc): the sender resolved, and the first
/// ten recipients (R-E8).
async fn parties(conn: &mut AnyConnection, p: &ParsedEmail) -> ApiResult<(Vec<Value>, Vec<Uuid>)> {
    let mut out = Vec::new();
    let mut users = Vec::new();
    let all = p
        .from
        .iter()
        .map(|a| ("from", a))
        .chain(p.to.iter().map(|a| ("to", a)))
        .chain(p.cc.iter().map(|a| ("cc", a)))
        .chain(p.bcc.iter().map(|a| ("bcc", a)))
        .filter(|(_, a)| valid_address(&json!(a)).is_ok());
    let mut recipients = 0;
    for (role, address) in all {
        let counted = role != "from";
        let resolved = if !counted || recipients < RESOLVED_RECIPIENTS {
            resolve(conn, address).await?
        } else {
            None
        };
        recipients += usize::from(counted);
        if let Some((EntitySet::Users, id)) = resolved {
            users.push(id);
        }
        out.push(json!({"address": address, "role": role, "resolved": resolved.map(|(s, id)| json!({"set": s, "id": id}))}));
    }
    Ok((out, users))
}

fn addresses(list: &[String]) -> Value {
    Value::Array(
        list.iter()
            .filter(|a| valid_address(&json!(a)).is_ok())
            .map(|a| json!(a))
            .collect(),
    )
}

async fn next_token(conn: &mut AnyConnection, prefix: &str) -> ApiResult<String> {
    let n: i64 = sqlx::query_scalar("UPDATE sequence_counter SET value = value + 1 WHERE name = 'tracking_token' RETURNING value")
        .fetch_one(conn)
        .await?;
    Ok(format_tracking_token(prefix, n as u64))
}

/// An email record already tracked for this message (per owner when each
/// user gets their own activity, R-E9; shared otherwise).
async fn existing(
    conn: &mut AnyConnection,
    message_id: &str,
    owner: Option<Uuid>,
) -> ApiResult<Option<Uuid>> {
    let rows = sqlx::query("SELECT m.record_id, m.owner_id FROM email_messages m JOIN records r ON r.id = m.record_id WHERE m.message_id = $1 AND r.deleted_at IS NULL ORDER BY r.version")
        .bind(message_id.to_string())
        .fetch_all(conn)
        .await?;
    for row in rows {
        let (id, o): (String, String) = (row.try_get("record_id")?, row.try_get("owner_id")?);
        if owner.is_none_or(|u| u.to_string() == o) {
            return Ok(Uuid::parse_str(&id).ok());
        }
    }
    Ok(None)
}

/// The email record's fields from the parsed message and the operation.
fn email_fields(
    p: &ParsedEmail,
    message_id: &str,
    owner_email: &str,
    op_fields: &Map<String, Value>,
) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("message_id".into(), json!(message_id));
    if let Some(v) = &p.in_reply_to {
        f.insert("in_reply_to".into(), json!(cut(v, MAX_TEXT)));
    }
    if let Some(v) = &p.subject {
        f.insert("subject".into(), json!(cut(v, MAX_TEXT)));
    }
    if let Some(v) = &p.body_text {
        f.insert("body_text".into(), json!(cut(v, MAX_LONG_TEXT)));
    }
    if let Some(v) = &p.body_html {
        f.insert("body_html".into(), json!(cut(v, MAX_LONG_TEXT)));
    }
    if let Some(from) = p.from.as_ref().filter(|a| valid_address(&json!(a)).is_ok()) {
        f.insert("from".into(), json!(from));
    }
    f.insert("to".into(), addresses(&p.to));
    f.insert("cc".into(), addresses(&p.cc));
    f.insert("bcc".into(), addresses(&p.bcc));
    if let Some(v) = &p.sent_at {
        f.insert("sent_at".into(), json!(v));
    }
    let outgoing = p
        .from
        .as_deref()
        .is_some_and(|a| a.eq_ignore_ascii_case(owner_email));
    let direction = op_fields
        .get("direction")
        .and_then(Value::as_str)
        .filter(|d| ["incoming", "outgoing"].contains(d));
    f.insert(
        "direction".into(),
        json!(direction.unwrap_or(if outgoing { "outgoing" } else { "incoming" })),
    );
    f
}

/// `track` of an email (SPEC §7, R-E5..R-E10).
pub async fn track_email(conn: &mut AnyConnection, ctx: &OpContext<'_>, op: &Value) -> Outcome {
    if op.get("draft").and_then(Value::as_bool) == Some(true) {
        return Err(refuse(
            "draft",
            "drafts are never tracked; it is tracked when it is sent",
        ));
    }
    if ctx.owner.org.approved_only && !ctx.owner.approved_email() {
        return Err(refuse(
            "not_approved",
            "this organization processes email only for approved users, and this user is not approved; an admin can set approved_email",
        ));
    }
    let raw = op.get("raw").and_then(Value::as_str).ok_or_else(|| {
        refuse(
            "invalid_operation",
            "'raw' is required: the RFC 5322 message, base64",
        )
    })?;
    let raw = STANDARD.decode(raw.trim()).map_err(|_| {
        refuse(
            "bad_message",
            "'raw' is not base64; send the message bytes base64-encoded",
        )
    })?;
    if raw.len() > MAX_RAW {
        return Err(refuse(
            "message_too_large",
            format!(
                "the message has {} bytes; at most {MAX_RAW} are accepted",
                raw.len()
            ),
        ));
    }
    let parsed = parse_email(&raw)
        .map_err(|e| refuse("bad_message", format!("the message cannot be read: {e}")))?;
    let message_id = op
        .get("message_id")
        .and_then(Value::as_str)
        .map(normalize_message_id)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| parsed.message_id.clone());
    let uid = op
        .get("item_uid")
        .and_then(Value::as_str)
        .unwrap_or(&message_id)
        .to_string();
    let two = ctx.owner.org.two_activities;
    let dedupe_owner = if two { Some(ctx.owner.id()) } else { None };
    if let Some(id) = existing(conn, &message_id, dedupe_owner).await? {
        // R-M2: the same message is linked, never tracked twice.
        let r = store::get_record(conn, id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| refuse("not_found", "the email vanished"))?;
        super::push::link(conn, ctx, &r, Some(&uid)).await?;
        return Ok(
            json!({"id": r.id, "version": r.version, "linked": true, "record": super::push::shown(ctx, &r)}),
        );
    }
    let op_fields = op
        .get("fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut fields = email_fields(&parsed, &message_id, &ctx.owner.email, &op_fields);
    let (party_list, users) = parties(conn, &parsed).await?;
    fields.insert("parties".into(), Value::Array(party_list));
    fields.insert("raw_size".into(), json!(raw.len()));
    let regarding = super::push::regarding_of(conn, op).await?;
    if !regarding.is_null() {
        fields.insert("regarding".into(), regarding);
    }
    // R-E9: with two activities, every CRM user party gets their own.
    let mut owners = vec![ctx.owner.id()];
    if two {
        owners.extend(users.into_iter().filter(|u| *u != ctx.owner.id()));
        owners.dedup();
    }
    let encoded = STANDARD.encode(&raw);
    let mut mine = None;
    for owner in owners {
        if owner != ctx.owner.id() && existing(conn, &message_id, Some(owner)).await?.is_some() {
            continue;
        }
        let token = next_token(conn, &ctx.owner.org.tracking_token_prefix).await?;
        let mut body = fields.clone();
        body.insert("tracking_token".into(), json!(token));
        body.insert("owner_id".into(), json!(owner));
        let system = Caller {
            user_id: ctx.actor.user_id,
            is_admin: true,
        };
        let created = records::create_in(
            conn,
            system,
            EntitySet::Emails,
            &Value::Object(body),
            ctx.version,
        )
        .await?;
        sqlx::query("INSERT INTO email_messages (record_id, owner_id, message_id, tracking_token, raw) VALUES ($1, $2, $3, $4, $5)")
            .bind(created.record.id.to_string())
            .bind(owner.to_string())
            .bind(message_id.clone())
            .bind(token)
            .bind(encoded.clone())
            .execute(&mut *conn)
            .await
            .map_err(ApiError::from)?;
        if mine.is_none() {
            mine = Some(created.record);
        }
    }
    let record = mine.expect("the tracking user's own activity is always created");
    super::push::link(conn, ctx, &record, Some(&uid)).await?;
    Ok(
        json!({"id": record.id, "version": record.version, "linked": false, "record": super::push::shown(ctx, &record),
        "tracking_token": record.fields.get("tracking_token"), "problems": parsed.problems}),
    )
}

/// The raw message of a tracked email, as received.
pub async fn raw_message(store: &Store, _caller: Caller, id: Uuid) -> ApiResult<Vec<u8>> {
    let raw: Option<String> =
        sqlx::query_scalar("SELECT raw FROM email_messages WHERE record_id = $1")
            .bind(id.to_string())
            .fetch_optional(&store.pool)
            .await?;
    let raw = raw.ok_or_else(|| ApiError::not_found(format!("no tracked email has id {id}")))?;
    STANDARD.decode(raw).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "corrupt_message",
            "the stored message cannot be decoded",
        )
    })
}

fn summary(r: &crmsync_core::Record) -> Value {
    json!({"id": r.id, "owner_id": r.owner_id, "version": r.version, "message_id": r.fields.get("message_id"),
        "tracking_token": r.fields.get("tracking_token"), "subject": r.fields.get("subject"), "regarding": r.fields.get("regarding")})
}

/// R-M5: tracked emails a received message belongs to, tried in order:
/// (1) Message-IDs from In-Reply-To/References, (2) a tracking token,
/// (3) smart matching when the organization turned it on.
pub async fn lookup(
    store: &Store,
    caller: Caller,
    q: &std::collections::HashMap<String, String>,
) -> ApiResult<Value> {
    let owner = MailboxOwner::load(store, caller.user_id).await?;
    let mut conn = store.pool.acquire().await?;
    if let Some(list) = q.get("message_ids") {
        for mid in list
            .split(',')
            .map(normalize_message_id)
            .filter(|m| !m.is_empty())
        {
            if let Some(id) = existing(&mut conn, &mid, None).await? {
                let r = store::get_record(&mut conn, id).await?;
                return Ok(json!({"matched_by": "message_id", "email": r.as_ref().map(summary)}));
            }
        }
    }
    if let Some(subject) = q.get("subject") {
        let prefix = &owner.org.tracking_token_prefix;
        if let Some(token) = crmsync_core::email::find_tracking_token(subject, prefix) {
            let id: Option<String> = sqlx::query_scalar(
                "SELECT record_id FROM email_messages WHERE tracking_token = $1",
            )
            .bind(token)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(id) = id.and_then(|i| Uuid::parse_str(&i).ok()) {
                if let Some(r) = store::get_record(&mut conn, id).await? {
                    return Ok(json!({"matched_by": "tracking_token", "email": summary(&r)}));
                }
            }
        }
        if owner.org.smart_matching {
            let wanted = normalize_subject(subject);
            let given: Vec<String> = q
                .get("addresses")
                .map(|a| {
                    a.split(',')
                        .map(|x| x.trim().to_ascii_lowercase())
                        .collect()
                })
                .unwrap_or_default();
            let list = store
                .list(
                    EntitySet::Emails,
                    &store::ListQuery {
                        text: Some(wanted.clone()),
                        limit: 200,
                        ..Default::default()
                    },
                )
                .await?;
            for r in list {
                let same_subject = r
                    .fields
                    .get("subject")
                    .and_then(Value::as_str)
                    .is_some_and(|s| normalize_subject(s) == wanted);
                let theirs = crmsync_core::filter::list_addresses(
                    r.fields.get("parties").unwrap_or(&Value::Null),
                )
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect::<Vec<_>>();
                let shared = given.iter().filter(|a| theirs.contains(a)).count();
                if same_subject && shared >= 2 {
                    return Ok(json!({"matched_by": "smart_matching", "email": summary(&r)}));
                }
            }
        }
    }
    Ok(json!({"matched_by": null, "email": null}))
}

/// R-M7: emails whose regarding changed after `since` and to which the
/// caller is a party (or owner), oldest first.
pub async fn tagging(
    store: &Store,
    caller: Caller,
    since: i64,
    client: Option<Uuid>,
) -> ApiResult<Value> {
    if let Some(c) = client {
        own_client(store, caller, c).await?;
    }
    let owner = MailboxOwner::load(store, caller.user_id).await?;
    let changes = store.changes_since(since, 1000).await?;
    let next = changes.last().map_or(since, |c| c.version);
    let ids: Vec<Uuid> = changes
        .iter()
        .filter(|c| c.set == EntitySet::Emails && !c.deleted)
        .map(|c| c.id)
        .collect();
    let mut conn = store.pool.acquire().await?;
    let mut items = Vec::new();
    for chunk in ids.chunks(500) {
        for (r, _) in store::records_by_ids(&mut conn, chunk).await? {
            let party = crmsync_core::filter::list_addresses(
                r.fields.get("parties").unwrap_or(&Value::Null),
            )
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&owner.email));
            if party || r.owner_id == owner.id() {
                items.push(summary(&r));
            }
        }
    }
    Ok(json!({"items": items, "next_since": next, "tagging": owner.org.tagging}))
}
