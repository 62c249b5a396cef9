//! `GET /offline/changes` (R-O1): the change feed an offline replica
//! follows. It walks the records table by version after `since` (one range
//! of the version index, so its cost grows with the changes, not with the
//! organization) and sorts each row it reads: a live record matching one
//! of the caller's offline filters is sent whole; a tombstone, or a record
//! that does not match (any more), is sent as removed.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

use crmsync_core::filter::{regarding_id, EvalContext};
use crmsync_core::{EntitySet, Record};

use crate::auth::Caller;
use crate::config::{self, Filter, FilterKind};
use crate::error::ApiResult;
use crate::store::{self, Store, StoredRecord};
use crate::sync::context::MailboxOwner;

pub const DEFAULT_LIMIT: i64 = 1000;
pub const MAX_LIMIT: i64 = 5000;
/// Rows read at a time to finish the page's last version.
const TAIL_CHUNK: i64 = 32;

/// The fingerprint of what decides the replica's content: the effective
/// filters, the field-security rules, and today's date when a filter
/// compares with a relative date (its matches change from day to day).
/// A client seeing another one refreshes from `since=0`.
fn fingerprint(user: &MailboxOwner, filters: &[Filter], now: OffsetDateTime) -> String {
    let mut hash = Sha256::new();
    for f in filters {
        hash.update(f.to_json().to_string());
    }
    for rule in &user.security {
        hash.update(json!(rule).to_string());
    }
    if filters.iter().any(|f| f.condition.uses_now()) {
        hash.update(now.date().to_string());
    }
    hex::encode(&hash.finalize()[..16])
}

/// The record as the replica keeps it: as `GET /{set}/{id}` shows it,
/// less the fields the user may not read (R-F3), plus its set.
pub(crate) fn replica_record(user: &MailboxOwner, r: &Record) -> Value {
    let mut out = r.to_json();
    let map: &mut Map<String, Value> = out.as_object_mut().expect("a record is an object");
    map.retain(|k, _| r.set.field(k).is_none() || user.may_read(r.set, k));
    map.insert("set".into(), json!(r.set));
    out
}

/// Rows after `since` in (version, id) order, at least `limit` of them if
/// there are, and never a version cut in two: versions repeat (one
/// transaction writes several records at its version; a series takes its
/// exception's), and `next_since` must not skip the rest of one.
async fn page(
    conn: &mut sqlx::AnyConnection,
    since: i64,
    limit: i64,
) -> ApiResult<(Vec<StoredRecord>, bool)> {
    let after_since = (since, Uuid::from_u128(u128::MAX));
    let mut rows = store::records_page(conn, Some(after_since), limit).await?;
    let full = rows.len() as i64 == limit;
    while let Some(last) = rows.last().filter(|_| full).map(StoredRecord::position) {
        let rest = store::records_page(conn, Some(last), TAIL_CHUNK).await?;
        let same: Vec<_> = rest
            .into_iter()
            .take_while(|r| r.position().0 == last.0)
            .collect();
        let done = (same.len() as i64) < TAIL_CHUNK;
        rows.extend(same);
        if done {
            break;
        }
    }
    Ok((rows, full))
}

/// The owners of the live records the rows' regardings point to.
async fn regarding_owners(
    conn: &mut sqlx::AnyConnection,
    rows: &[StoredRecord],
) -> ApiResult<HashMap<Uuid, Uuid>> {
    let mut ids: Vec<Uuid> = rows
        .iter()
        .filter_map(|r| match r {
            StoredRecord::Live(r) => regarding_id(r),
            StoredRecord::Deleted(_) => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    let mut out = HashMap::new();
    for chunk in ids.chunks(500) {
        for (r, deleted) in store::records_by_ids(conn, chunk).await? {
            if !deleted {
                out.insert(r.id, r.owner_id);
            }
        }
    }
    Ok(out)
}

pub async fn changes(store: &Store, caller: Caller, since: i64, limit: i64) -> ApiResult<Value> {
    let user = super::offline_user(store, caller).await?;
    let filters = config::filters_for(store, FilterKind::Offline, caller.user_id).await?;
    let now = OffsetDateTime::now_utc();
    let mut conn = store.pool.acquire().await?;
    // Read first: whatever commits later is at a higher version.
    let committed = store::committed_version(&mut conn).await?;
    let (rows, more) = page(&mut conn, since, limit).await?;
    let ctx = EvalContext {
        regarding_owners: regarding_owners(&mut conn, &rows).await?,
        ..user.eval_context(now)
    };
    let mut records = Vec::new();
    let mut removed = Vec::new();
    for row in &rows {
        let (set, id) = match row {
            StoredRecord::Live(r) => (r.set, r.id),
            StoredRecord::Deleted(t) => (t.set, t.id),
        };
        match row {
            _ if set == EntitySet::Users => {}
            StoredRecord::Live(r) if config::first_match(&filters, r, &ctx).is_some() => {
                records.push(replica_record(&user, r))
            }
            // A tombstone, or a record that does not match (any more); a
            // replica refreshed from 0 holds nothing to remove.
            _ if since > 0 => removed.push(json!({"set": set, "id": id})),
            _ => {}
        }
    }
    let last = rows.last().map_or(since, |r| r.position().0);
    let next_since = if more {
        last
    } else {
        last.max(committed).max(since)
    };
    Ok(json!({
        "records": records, "removed": removed, "next_since": next_since, "more": more,
        "filters": fingerprint(&user, &filters, now),
    }))
}
