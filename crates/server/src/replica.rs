//! R-O1: the offline replica. A laptop's copy of the CRM records that match
//! its user's offline filters is a database of this server's own schema
//! (SQLite, beside the agent's cache), so `crmsync offline` serves the same
//! API and web interface from it with the server's own code. Three things
//! are added to that schema:
//!
//! - a journal: SQLite triggers on `records` note every write made through
//!   the local server (not the ones that apply the server's changes), and
//!   keep the server's version of a record as it was before its first
//!   local change (`replica_base`: the R-F5 baseline of the playback);
//! - where the refresh stands in the server's change feed: the schema's
//!   own `config` table, kind `replica`;
//! - `replica_ops`: the op id of each change being played back, written
//!   before it is sent, so a playback cut off and repeated sends the same
//!   ids and the server applies each change once (R-S5's idempotency).
//!
//! What to send for a journaled record is a pure table
//! ([`playback_op`]); the agent's side (fetching, sending, reporting)
//! lives in the `crmsync` binary (`offline.rs`).

use serde_json::{json, Map, Value};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crmsync_core::{EntitySet, Record};

use crate::store::{self, Store};

/// The `config` kind of the replica's position in the feed.
const META_KIND: &str = "replica";

/// The replica's own tables and the journal's triggers. Users are never
/// journaled: the replica holds only its user's record, from the server.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS replica_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS replica_journal_by_record ON replica_journal (record_id, seq)",
    "CREATE TABLE IF NOT EXISTS replica_base (record_id TEXT PRIMARY KEY, version BIGINT NOT NULL, owner_id TEXT NOT NULL, state TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS replica_ops (record_id TEXT PRIMARY KEY, upto_seq BIGINT NOT NULL, op_id TEXT NOT NULL)",
    // 1 while the server's changes are applied: those are not journaled.
    "CREATE TABLE IF NOT EXISTS replica_applying (id INTEGER PRIMARY KEY CHECK (id = 1), applying INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO replica_applying (id, applying) VALUES (1, 0)",
    "CREATE TRIGGER IF NOT EXISTS replica_journal_insert AFTER INSERT ON records \
     WHEN NEW.entity_set <> 'users' AND (SELECT applying FROM replica_applying WHERE id = 1) = 0 \
     BEGIN INSERT INTO replica_journal (record_id) VALUES (NEW.id); END",
    // The base is the server's version before the first local change: a
    // record with journal rows already changed locally (or was created
    // here, and has no base).
    "CREATE TRIGGER IF NOT EXISTS replica_journal_update AFTER UPDATE ON records \
     WHEN NEW.entity_set <> 'users' AND (SELECT applying FROM replica_applying WHERE id = 1) = 0 \
     BEGIN \
       INSERT OR IGNORE INTO replica_base (record_id, version, owner_id, state, data) \
         SELECT OLD.id, OLD.version, OLD.owner_id, OLD.state, OLD.data \
         WHERE NOT EXISTS (SELECT 1 FROM replica_journal WHERE record_id = OLD.id); \
       INSERT INTO replica_journal (record_id) VALUES (NEW.id); \
     END",
];

/// The local copy of a user's offline records.
#[derive(Clone)]
pub struct Replica {
    pub store: Store,
    pub path: std::path::PathBuf,
}

/// A journaled record as it is now, with what the server had.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingChange {
    pub id: Uuid,
    pub set: EntitySet,
    /// The last journal row of the record: what a settled playback clears.
    pub upto_seq: i64,
    /// The record now: `None` deleted here (a tombstone) or never written.
    pub current: Option<Record>,
    /// The server's version before the first local change: `None` for a
    /// record created here.
    pub base: Option<Base>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub version: i64,
    pub fields: Map<String, Value>,
}

/// Where a replica's refresh stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPosition {
    /// Every server change up to this version was looked at.
    pub since: i64,
    /// The fingerprint of the offline filters it was looked at with.
    pub filters: Option<String>,
}

/// How big the replica is and what waits to be played back
/// (`crmsync status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSize {
    pub records: i64,
    pub bytes: u64,
    pub waiting: i64,
}

/// R-O1 as a table: the push operation that plays a journaled record back,
/// or `None` when there is nothing to send (created and deleted offline).
/// An update sends the fields changed since the base, with the base as the
/// baseline of R-F5's merge on the server.
pub fn playback_op(change: &PendingChange, op_id: &str) -> Option<Value> {
    let set = change.set.as_str();
    let id = change.id.to_string();
    match (&change.base, &change.current) {
        (None, None) => None,
        (None, Some(r)) => Some(json!({"kind": "offline_create", "op_id": op_id, "set": set,
            "id": id, "fields": with_common(r)})),
        (Some(base), None) => Some(json!({"kind": "offline_delete", "op_id": op_id, "set": set,
            "id": id, "base_version": base.version})),
        (Some(base), Some(r)) => {
            let now = with_common(r);
            let changed: Map<String, Value> = now
                .iter()
                .filter(|(k, v)| base.fields.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(
                    // A field emptied here: sent as null.
                    base.fields
                        .keys()
                        .filter(|k| !now.contains_key(*k))
                        .map(|k| (k.clone(), Value::Null)),
                )
                .collect();
            Some(
                json!({"kind": "offline_update", "op_id": op_id, "set": set, "id": id,
                "base_version": base.version, "baseline": base.fields, "fields": changed,
                "modified_at": r.modified_at}),
            )
        }
    }
}

/// A record's fields with its owner and state, which an offline edit may
/// change like any field.
fn with_common(r: &Record) -> Map<String, Value> {
    let mut out = r.fields.clone();
    out.insert("owner_id".into(), r.owner_id.to_string().into());
    out.insert("state".into(), r.state.clone().into());
    out
}

/// The stored data of a base, with its owner and state as `with_common`.
fn base_fields(data: &str, owner: String, state: String) -> Map<String, Value> {
    let mut out: Map<String, Value> = serde_json::from_str(data).unwrap_or_default();
    out.insert("owner_id".into(), owner.into());
    out.insert("state".into(), state.into());
    out
}

/// A server record as the feed and push answers carry it (the API's JSON,
/// with its set), checked as an import checks it.
pub fn record_from_server(set: EntitySet, v: &Value) -> anyhow::Result<Record> {
    let mut line = v.clone();
    if let Some(o) = line.as_object_mut() {
        o.remove("set");
        o.insert("entity_set".into(), set.as_str().into());
    }
    crate::export::record_from_line(&line)
}

impl Replica {
    /// Opens (or makes) the replica at `path`.
    pub async fn open(path: &std::path::Path) -> anyhow::Result<Replica> {
        let store = Store::connect(&format!("sqlite://{}", path.display())).await?;
        let mut conn = store.pool.acquire().await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&mut *conn).await?;
        }
        Ok(Replica {
            store,
            path: path.to_path_buf(),
        })
    }

    pub async fn position(&self) -> anyhow::Result<FeedPosition> {
        let mut conn = self.store.pool.acquire().await?;
        let stored = store::get_config(&mut conn, META_KIND, "position").await?;
        let stored = stored.unwrap_or_default();
        Ok(FeedPosition {
            since: stored["since"].as_i64().unwrap_or(0),
            filters: stored["filters"].as_str().map(str::to_string),
        })
    }

    /// Makes the replica's user the server's: their record, their password
    /// hash (the web interface's sign-in) and the agent's token (the API).
    pub async fn set_identity(
        &self,
        user: &Value,
        password_hash: Option<&str>,
        token: &str,
    ) -> anyhow::Result<()> {
        let user = record_from_server(EntitySet::Users, user)?;
        let mut tx = self.store.begin().await?;
        if sqlx::query("SELECT id FROM organization LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            let now = crmsync_core::time::now_timestamp();
            store::insert_organization(&mut tx, Uuid::new_v4(), "Offline copy", &now).await?;
        }
        put_record(&mut tx, &user).await?;
        // The replica signs in exactly what the server does now: the
        // current password (none if it was removed) and the agent's token
        // (an older one, revoked since, no longer works here either).
        match password_hash {
            Some(hash) => crate::passwords::put_hash(&mut tx, user.id, hash).await?,
            None => {
                sqlx::query("DELETE FROM user_passwords WHERE user_id = $1")
                    .bind(user.id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        store::delete_tokens(&mut tx, user.id).await?;
        let hash = crate::auth::hash_token(token);
        store::insert_token(&mut tx, &hash, user.id, &user.modified_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies a page of the server's change feed: `records` written as the
    /// server has them, `removed` dropped, in one transaction that is not
    /// journaled. A record changed here and not yet played back is left as
    /// it is (its playback merges with the server's version). Returns how
    /// many records were kept for that reason.
    pub async fn apply(
        &self,
        records: &[Record],
        removed: &[Uuid],
        position: &FeedPosition,
    ) -> anyhow::Result<usize> {
        let mut tx = self.store.begin().await?;
        set_applying(&mut tx, true).await?;
        let waiting = journaled(&mut tx).await?;
        let mut kept = 0;
        let mut newest = 0;
        for r in records {
            newest = newest.max(r.version);
            if waiting.contains(&r.id) {
                kept += 1;
                continue;
            }
            put_record(&mut tx, r).await?;
        }
        for id in removed {
            if waiting.contains(id) {
                kept += 1;
                continue;
            }
            drop_record(&mut tx, *id).await?;
        }
        // Local writes take versions after every server version seen.
        sqlx::query("UPDATE sequence_counter SET value = $1 WHERE name = 'version' AND value < $1")
            .bind(newest)
            .execute(&mut *tx)
            .await?;
        let stored = json!({"since": position.since, "filters": position.filters});
        store::put_config(&mut tx, META_KIND, "position", &stored).await?;
        set_applying(&mut tx, false).await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// Drops every record not in `keep` and not waiting to be played back
    /// (a full refresh after the offline filters changed).
    pub async fn retain(&self, keep: &std::collections::HashSet<Uuid>) -> anyhow::Result<usize> {
        let mut tx = self.store.begin().await?;
        set_applying(&mut tx, true).await?;
        let rows = sqlx::query(
            "SELECT id FROM records WHERE entity_set <> 'users' \
             AND id NOT IN (SELECT record_id FROM replica_journal)",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut dropped = 0;
        for row in rows {
            let id = Uuid::parse_str(&row.try_get::<String, _>("id")?)?;
            if !keep.contains(&id) {
                drop_record(&mut tx, id).await?;
                dropped += 1;
            }
        }
        set_applying(&mut tx, false).await?;
        tx.commit().await?;
        Ok(dropped)
    }

    /// The journaled records, in the order of their first local change.
    pub async fn pending(&self) -> anyhow::Result<Vec<PendingChange>> {
        let mut conn = self.store.pool.acquire().await?;
        let rows = sqlx::query(
            "SELECT j.record_id, MIN(j.seq) AS first_seq, MAX(j.seq) AS upto_seq, \
               b.version AS base_version, b.owner_id AS base_owner, b.state AS base_state, b.data AS base_data \
             FROM replica_journal j LEFT JOIN replica_base b ON b.record_id = j.record_id \
             GROUP BY j.record_id, b.version, b.owner_id, b.state, b.data ORDER BY first_seq",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = Uuid::parse_str(&row.try_get::<String, _>("record_id")?)?;
            let Some(stored) = store_row(&mut conn, id).await? else {
                continue;
            };
            let base = match row.try_get::<Option<i64>, _>("base_version")? {
                Some(version) => Some(Base {
                    version,
                    fields: base_fields(
                        &row.try_get::<String, _>("base_data")?,
                        row.try_get("base_owner")?,
                        row.try_get("base_state")?,
                    ),
                }),
                None => None,
            };
            out.push(PendingChange {
                id,
                set: stored.set,
                upto_seq: row.try_get("upto_seq")?,
                current: stored.live,
                base,
            });
        }
        Ok(out)
    }

    /// The op ids of changes being played back, in one transaction: for
    /// each, the one stored for it when the change is the same (a repeated
    /// playback), else a new one, stored before it is sent.
    pub async fn op_ids(&self, changes: &[PendingChange]) -> anyhow::Result<Vec<String>> {
        let mut tx = self.store.begin().await?;
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            out.push(op_id_in(&mut tx, change).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Settles played-back changes, in one transaction: each record takes
    /// the server's version after its change (`None`: the server has none)
    /// and its journal up to the change is forgotten. Changes made here
    /// meanwhile stay journaled, against the server's new version as their
    /// base.
    pub async fn settle(&self, settled: &[(&PendingChange, Option<Record>)]) -> anyhow::Result<()> {
        let mut tx = self.store.begin().await?;
        set_applying(&mut tx, true).await?;
        for (change, server) in settled {
            settle_in(&mut tx, change, server.as_ref()).await?;
        }
        set_applying(&mut tx, false).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The replica's records, size on disk and changes waiting.
    pub async fn size(&self) -> anyhow::Result<ReplicaSize> {
        let mut conn = self.store.pool.acquire().await?;
        let records: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM records WHERE entity_set <> 'users' AND deleted_at IS NULL",
        )
        .fetch_one(&mut *conn)
        .await?;
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(DISTINCT record_id) FROM replica_journal")
                .fetch_one(&mut *conn)
                .await?;
        let bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum();
        Ok(ReplicaSize {
            records,
            bytes,
            waiting,
        })
    }
}

async fn op_id_in(conn: &mut AnyConnection, change: &PendingChange) -> anyhow::Result<String> {
    let stored = sqlx::query("SELECT upto_seq, op_id FROM replica_ops WHERE record_id = $1")
        .bind(change.id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = stored {
        if row.try_get::<i64, _>("upto_seq")? == change.upto_seq {
            return Ok(row.try_get("op_id")?);
        }
    }
    let op_id = format!("offline-{}", Uuid::new_v4());
    sqlx::query("DELETE FROM replica_ops WHERE record_id = $1")
        .bind(change.id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO replica_ops (record_id, upto_seq, op_id) VALUES ($1, $2, $3)")
        .bind(change.id.to_string())
        .bind(change.upto_seq)
        .bind(op_id.clone())
        .execute(&mut *conn)
        .await?;
    Ok(op_id)
}

async fn settle_in(
    conn: &mut AnyConnection,
    change: &PendingChange,
    server: Option<&Record>,
) -> anyhow::Result<()> {
    let id = change.id.to_string();
    let later: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(seq) FROM replica_journal WHERE record_id = $1 AND seq > $2",
    )
    .bind(id.clone())
    .bind(change.upto_seq)
    .fetch_one(&mut *conn)
    .await?;
    for sql in [
        "DELETE FROM replica_journal WHERE record_id = $1 AND seq <= $2",
        "DELETE FROM replica_ops WHERE record_id = $1 AND upto_seq <= $2",
    ] {
        sqlx::query(sql)
            .bind(id.clone())
            .bind(change.upto_seq)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM replica_base WHERE record_id = $1")
        .bind(id.clone())
        .execute(&mut *conn)
        .await?;
    match (server, later) {
        (Some(r), Some(_)) => {
            sqlx::query(
                "INSERT INTO replica_base (record_id, version, owner_id, state, data) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.clone())
            .bind(r.version)
            .bind(r.owner_id.to_string())
            .bind(r.state.clone())
            .bind(Value::Object(r.fields.clone()).to_string())
            .execute(&mut *conn)
            .await?;
        }
        (Some(r), None) => put_record(conn, r).await?,
        (None, None) => drop_record(conn, change.id).await?,
        // Edited here again after the server dropped it: played back as a
        // new record.
        (None, Some(_)) => {}
    }
    Ok(())
}

/// A record's set and, unless deleted here, the record.
struct StoredRow {
    set: EntitySet,
    live: Option<Record>,
}

async fn store_row(conn: &mut AnyConnection, id: Uuid) -> anyhow::Result<Option<StoredRow>> {
    let row = sqlx::query("SELECT entity_set, deleted_at FROM records WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let set: EntitySet = row.try_get::<String, _>("entity_set")?.parse()?;
    let live = match row.try_get::<Option<String>, _>("deleted_at")? {
        Some(_) => None,
        None => store::get_record(conn, id).await?,
    };
    Ok(Some(StoredRow { set, live }))
}

/// The records waiting to be played back (the journal is small: what
/// was changed offline).
async fn journaled(conn: &mut AnyConnection) -> anyhow::Result<std::collections::HashSet<Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT record_id FROM replica_journal")
        .fetch_all(conn)
        .await?;
    Ok(ids
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect())
}

/// Writes a server record as the server has it (insert or overwrite,
/// tombstone included), with its derived keys.
async fn put_record(conn: &mut AnyConnection, r: &Record) -> anyhow::Result<()> {
    drop_record(conn, r.id).await?;
    crate::records::insert_as_is(conn, r).await
}

/// Removes a record from the replica altogether (no tombstone: the server
/// keeps those).
async fn drop_record(conn: &mut AnyConnection, id: Uuid) -> Result<(), sqlx::Error> {
    for sql in [
        "DELETE FROM record_links WHERE record_id = $1",
        "DELETE FROM record_addresses WHERE record_id = $1",
        "DELETE FROM records WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn set_applying(conn: &mut AnyConnection, on: bool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE replica_applying SET applying = $1 WHERE id = 1")
        .bind(i64::from(on))
        .execute(conn)
        .await?;
    Ok(())
}
