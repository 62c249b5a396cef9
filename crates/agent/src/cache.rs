//! The agent's SQLite cache (SPEC R-T4, R-M3, docs/sync-protocol.md "What a
//! client must persist"): the client id, per collection the mailbox sync
//! state, per item its href, etag, CRM id, set, link state, CRM version and
//! baseline fields, and a journal of push operations written before they are
//! sent (their `op_id`s are stable across retries, so a crash never
//! duplicates).

use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS collections (id TEXT PRIMARY KEY, state TEXT)",
    "CREATE TABLE IF NOT EXISTS items (
        collection TEXT NOT NULL,
        href TEXT NOT NULL,
        etag TEXT NOT NULL,
        uid TEXT NOT NULL,
        set_name TEXT NOT NULL,
        crm_id TEXT,
        link INTEGER NOT NULL,
        version INTEGER NOT NULL DEFAULT 0,
        baseline TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (collection, href))",
    "CREATE INDEX IF NOT EXISTS items_crm_id ON items (crm_id)",
    "CREATE TABLE IF NOT EXISTS journal (
        op_id TEXT PRIMARY KEY,
        collection TEXT NOT NULL,
        href TEXT NOT NULL,
        etag TEXT NOT NULL,
        op TEXT NOT NULL,
        created_at TEXT NOT NULL)",
];

/// One mailbox item as the cache knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedItem {
    pub collection: String,
    pub href: String,
    pub etag: String,
    pub uid: String,
    pub set: String,
    pub crm_id: Option<String>,
    /// R-M3: 0 not tracked, 1 to be tracked, 2 tracked.
    pub link: u8,
    pub version: i64,
    /// `project_fields` of the last synchronized record (R-F5).
    pub baseline: Map<String, Value>,
}

/// A push operation recorded before it was sent (R-T4).
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub op_id: String,
    pub collection: String,
    pub href: String,
    /// The item's etag when the operation was built (the precondition for
    /// writing the answer back).
    pub etag: String,
    pub op: Value,
}

#[derive(Clone, Debug)]
pub struct Cache {
    pool: SqlitePool,
}

impl Cache {
    /// Opens (creating if needed) the cache file.
    pub async fn open(path: &Path) -> anyhow::Result<Cache> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "[client] cache = {}: cannot create its folder ({e}); choose a writable place",
                    path.display()
                )
            })?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "[client] cache = {}: cannot open the cache ({e}); choose a writable place",
                    path.display()
                )
            })?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        Ok(Cache { pool })
    }

    pub async fn meta(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<String, _>(0)))
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn sync_state(&self, collection: &str) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query("SELECT state FROM collections WHERE id = ?")
            .bind(collection)
            .fetch_optional(&self.pool)
            .await?
            .and_then(|r| r.get::<Option<String>, _>(0)))
    }

    pub async fn set_sync_state(&self, collection: &str, state: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO collections (id, state) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state")
            .bind(collection)
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn row(r: &sqlx::sqlite::SqliteRow) -> CachedItem {
        let baseline: String = r.get("baseline");
        CachedItem {
            collection: r.get("collection"),
            href: r.get("href"),
            etag: r.get("etag"),
            uid: r.get("uid"),
            set: r.get("set_name"),
            crm_id: r.get("crm_id"),
            link: r.get::<i64, _>("link") as u8,
            version: r.get("version"),
            baseline: serde_json::from_str(&baseline).unwrap_or_default(),
        }
    }

    pub async fn item(&self, collection: &str, href: &str) -> anyhow::Result<Option<CachedItem>> {
        Ok(
            sqlx::query("SELECT * FROM items WHERE collection = ? AND href = ?")
                .bind(collection)
                .bind(href)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| Cache::row(&r)),
        )
    }

    pub async fn item_by_crm_id(&self, crm_id: &str) -> anyhow::Result<Option<CachedItem>> {
        Ok(sqlx::query("SELECT * FROM items WHERE crm_id = ?")
            .bind(crm_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Cache::row(&r)))
    }

    pub async fn items(&self) -> anyhow::Result<Vec<CachedItem>> {
        Ok(sqlx::query("SELECT * FROM items ORDER BY collection, href")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Cache::row)
            .collect())
    }

    pub async fn put_item(&self, item: &CachedItem) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO items (collection, href, etag, uid, set_name, crm_id, link, version, baseline)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (collection, href) DO UPDATE SET etag = excluded.etag, uid = excluded.uid,
               set_name = excluded.set_name, crm_id = excluded.crm_id, link = excluded.link,
               version = excluded.version, baseline = excluded.baseline",
        )
        .bind(&item.collection)
        .bind(&item.href)
        .bind(&item.etag)
        .bind(&item.uid)
        .bind(&item.set)
        .bind(&item.crm_id)
        .bind(item.link as i64)
        .bind(item.version)
        .bind(Value::Object(item.baseline.clone()).to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_item(&self, collection: &str, href: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM items WHERE collection = ? AND href = ?")
            .bind(collection)
            .bind(href)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts per link state (R-M3): `[not tracked, to be tracked, tracked]`.
    pub async fn link_counts(&self) -> anyhow::Result<[i64; 3]> {
        let mut out = [0; 3];
        for r in sqlx::query("SELECT link, COUNT(*) FROM items GROUP BY link")
            .fetch_all(&self.pool)
            .await?
        {
            let link: i64 = r.get(0);
            if let Some(slot) = out.get_mut(link as usize) {
                *slot = r.get(1);
            }
        }
        Ok(out)
    }

    /// Records a push operation before it is sent (R-T4).
    pub async fn journal_add(&self, entry: &JournalEntry) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO journal (op_id, collection, href, etag, op, created_at) VALUES (?, ?, ?, ?, ?, datetime('now'))")
            .bind(&entry.op_id)
            .bind(&entry.collection)
            .bind(&entry.href)
            .bind(&entry.etag)
            .bind(entry.op.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Operations sent (or about to be) whose answer was not applied yet.
    pub async fn journal_pending(&self) -> anyhow::Result<Vec<JournalEntry>> {
        Ok(sqlx::query(
            "SELECT op_id, collection, href, etag, op FROM journal ORDER BY created_at, op_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| JournalEntry {
            op_id: r.get(0),
            collection: r.get(1),
            href: r.get(2),
            etag: r.get(3),
            op: serde_json::from_str(&r.get::<String, _>(4)).unwrap_or(Value::Null),
        })
        .collect())
    }

    /// The answer of `op_id` is applied: the operation is done.
    pub async fn journal_done(&self, op_id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM journal WHERE op_id = ?")
            .bind(op_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
