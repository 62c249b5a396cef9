//! The agent's SQLite cache (SPEC R-T4, R-M3, docs/sync-protocol.md "What a
//! client must persist"): the client id, per collection the mailbox sync
//! state, per item its href, etag, CRM id, set, link state, CRM version and
//! baseline fields, and a journal of push operations written before they are
//! sent (their `op_id`s are stable across retries, so a crash never
//! duplicates).

use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
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
    // Every sync asks each collection for its items waiting to be tracked
    // (R-M3 state 1), in href order: without this index (href included, or
    // SQLite keeps the primary key for the order) that read every row of
    // the collection, 14 ms of a 30k-item no-change sync.
    "CREATE INDEX IF NOT EXISTS items_link ON items (collection, link, href)",
    "CREATE TABLE IF NOT EXISTS journal (
        op_id TEXT PRIMARY KEY,
        collection TEXT NOT NULL,
        href TEXT NOT NULL,
        etag TEXT NOT NULL,
        op TEXT NOT NULL,
        created_at TEXT NOT NULL)",
    // Contacts/events/to-dos that cannot be read, until they change or go
    // (shown by `crmsync status`).
    "CREATE TABLE IF NOT EXISTS item_problems (
        collection TEXT NOT NULL,
        href TEXT NOT NULL,
        problem TEXT NOT NULL,
        PRIMARY KEY (collection, href))",
    // A CRM record about to be written into the mailbox (R-T4): if the agent
    // dies between the mailbox write and the item's row, the next scan takes
    // its baseline from here instead of guessing.
    "CREATE TABLE IF NOT EXISTS write_intents (
        crm_id TEXT PRIMARY KEY,
        collection TEXT NOT NULL,
        version INTEGER NOT NULL,
        baseline TEXT NOT NULL,
        old_etag TEXT)",
    // Messages of the synchronized mail folders (R-M3; `mail` module).
    "CREATE TABLE IF NOT EXISTS messages (
        folder TEXT NOT NULL,
        href TEXT NOT NULL,
        etag TEXT NOT NULL,
        message_id TEXT,
        link INTEGER NOT NULL,
        crm_id TEXT,
        regarding TEXT,
        problem TEXT,
        rule TEXT,
        gone INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (folder, href))",
    "CREATE INDEX IF NOT EXISTS messages_crm_id ON messages (crm_id)",
    "CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id)",
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

/// A CRM record the agent is about to write into the mailbox (R-T4).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteIntent {
    pub crm_id: String,
    pub collection: String,
    /// The version and baseline the item has once the write is done.
    pub version: i64,
    pub baseline: Map<String, Value>,
    /// The item's etag before the write (`None`: a new item). An item still
    /// at this etag was not written.
    pub old_etag: Option<String>,
}

/// One message of a synchronized mail folder as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CachedMessage {
    /// The mail folder's collection id (`mail/INBOX`).
    pub folder: String,
    pub href: String,
    /// The etag the agent last planned the message at.
    pub etag: String,
    /// Without angle brackets; known once the message was read.
    pub message_id: Option<String>,
    /// R-M3: 0 not tracked, 1 to be tracked, 2 tracked.
    pub link: u8,
    pub crm_id: Option<String>,
    /// `<set>:<uuid>` of the CRM email's regarding as last synchronized.
    pub regarding: Option<String>,
    /// Why tracking was refused or failed (shown by `crmsync status`).
    pub problem: Option<String>,
    /// The rule that decided the message's state, in words (`explain`).
    pub rule: Option<String>,
    /// R-M8: marked but not yet tracked, then moved out of the
    /// synchronized folders; kept to be reported.
    pub gone: bool,
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
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives the agent being killed (R-T4);
            // only a power cut can lose the last commits, never corrupt the
            // file, and the next scan relinks by X-CRM-ID (R-M2). FULL would
            // cost an fsync per item on a first sync.
            .synchronous(SqliteSynchronous::Normal);
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
        crate::fault::step("mailbox sync state written");
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

    /// The items of `collection` in link state `link` (R-M3).
    pub async fn items_with_link(
        &self,
        collection: &str,
        link: u8,
    ) -> anyhow::Result<Vec<CachedItem>> {
        Ok(
            sqlx::query("SELECT * FROM items WHERE collection = ? AND link = ? ORDER BY href")
                .bind(collection)
                .bind(link as i64)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(Cache::row)
                .collect(),
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
        crate::fault::step("cache row written");
        Ok(())
    }

    pub async fn remove_item(&self, collection: &str, href: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM items WHERE collection = ? AND href = ?")
            .bind(collection)
            .bind(href)
            .execute(&self.pool)
            .await?;
        crate::fault::step("cache row removed");
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

    /// Items linked to a CRM record in one collection (R-T5's denominator
    /// on the CRM side).
    pub async fn tracked_count(&self, collection: &str) -> anyhow::Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE collection = ? AND link = 2")
                .bind(collection)
                .fetch_one(&self.pool)
                .await?;
        Ok(n as u64)
    }

    /// Records a push operation before it is sent (R-T4).
    pub async fn journal_add(&self, entry: &JournalEntry) -> anyhow::Result<()> {
        self.journal_add_with_messages(std::slice::from_ref(entry), &[])
            .await
    }

    /// Records push operations and the message rows they move on (to the
    /// etag the operations were built at) in one transaction: the entries
    /// are durable before they are sent and no later than their rows (R-T4).
    pub async fn journal_add_with_messages(
        &self,
        entries: &[JournalEntry],
        rows: &[CachedMessage],
    ) -> anyhow::Result<()> {
        self.journal_write(entries, rows, &[]).await
    }

    /// One transaction: `added` journal entries, message `rows` written,
    /// the entries `done` removed.
    async fn journal_write(
        &self,
        added: &[JournalEntry],
        rows: &[CachedMessage],
        done: &[String],
    ) -> anyhow::Result<()> {
        if added.is_empty() && rows.is_empty() && done.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for entry in added {
            sqlx::query("INSERT INTO journal (op_id, collection, href, etag, op, created_at) VALUES (?, ?, ?, ?, ?, datetime('now'))")
                .bind(&entry.op_id)
                .bind(&entry.collection)
                .bind(&entry.href)
                .bind(&entry.etag)
                .bind(entry.op.to_string())
                .execute(&mut *tx)
                .await?;
        }
        for m in rows {
            Cache::put_message_query(m).execute(&mut *tx).await?;
        }
        for op_id in done {
            sqlx::query("DELETE FROM journal WHERE op_id = ?")
                .bind(op_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        crate::fault::step("journal written");
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

    /// The items whose UID is `uid` (normally one).
    pub async fn items_by_uid(&self, uid: &str) -> anyhow::Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT collection, href FROM items WHERE uid = ? ORDER BY collection, href",
        )
        .bind(uid)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("collection"), r.get("href")))
            .collect())
    }

    /// An item that could not be read, and why.
    pub async fn set_item_problem(
        &self,
        collection: &str,
        href: &str,
        problem: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO item_problems (collection, href, problem) VALUES (?, ?, ?)",
        )
        .bind(collection)
        .bind(href)
        .bind(problem)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn clear_item_problem(&self, collection: &str, href: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM item_problems WHERE collection = ? AND href = ?")
            .bind(collection)
            .bind(href)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `(collection, href, problem)` of every item that cannot be read.
    pub async fn item_problems(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT collection, href, problem FROM item_problems ORDER BY collection, href",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("collection"), r.get("href"), r.get("problem")))
            .collect())
    }

    /// Records a mailbox write before it is made.
    pub async fn write_intent_put(&self, w: &WriteIntent) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO write_intents (crm_id, collection, version, baseline, old_etag)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&w.crm_id)
        .bind(&w.collection)
        .bind(w.version)
        .bind(Value::Object(w.baseline.clone()).to_string())
        .bind(&w.old_etag)
        .execute(&self.pool)
        .await?;
        crate::fault::step("write intent recorded");
        Ok(())
    }

    /// The write intended for `crm_id`, if one was left unfinished.
    pub async fn write_intent(&self, crm_id: &str) -> anyhow::Result<Option<WriteIntent>> {
        let row = sqlx::query("SELECT * FROM write_intents WHERE crm_id = ?")
            .bind(crm_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| {
            let baseline: String = r.get("baseline");
            WriteIntent {
                crm_id: r.get("crm_id"),
                collection: r.get("collection"),
                version: r.get("version"),
                baseline: serde_json::from_str(&baseline).unwrap_or_default(),
                old_etag: r.get("old_etag"),
            }
        }))
    }

    /// The write for `crm_id` is done (or failed without writing).
    pub async fn write_intent_done(&self, crm_id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM write_intents WHERE crm_id = ?")
            .bind(crm_id)
            .execute(&self.pool)
            .await?;
        crate::fault::step("write intent done");
        Ok(())
    }

    /// Forgets the intents of `collection` once a complete scan has looked
    /// at every item it could concern.
    pub async fn write_intents_clear(&self, collection: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM write_intents WHERE collection = ?")
            .bind(collection)
            .execute(&self.pool)
            .await?;
        crate::fault::step("write intents cleared");
        Ok(())
    }

    /// The answer of `op_id` is applied: the operation is done.
    pub async fn journal_done(&self, op_id: &str) -> anyhow::Result<()> {
        self.journal_done_with_messages(&[op_id.to_string()], &[])
            .await
    }

    /// The answers of `op_ids` are applied, their message rows written:
    /// both in one transaction (a batch of answers).
    pub async fn journal_done_with_messages(
        &self,
        op_ids: &[String],
        rows: &[CachedMessage],
    ) -> anyhow::Result<()> {
        self.journal_write(&[], rows, op_ids).await
    }

    fn message_row(r: &sqlx::sqlite::SqliteRow) -> CachedMessage {
        CachedMessage {
            folder: r.get("folder"),
            href: r.get("href"),
            etag: r.get("etag"),
            message_id: r.get("message_id"),
            link: r.get::<i64, _>("link") as u8,
            crm_id: r.get("crm_id"),
            regarding: r.get("regarding"),
            problem: r.get("problem"),
            rule: r.get("rule"),
            gone: r.get::<i64, _>("gone") != 0,
        }
    }

    pub async fn message(&self, folder: &str, href: &str) -> anyhow::Result<Option<CachedMessage>> {
        Ok(
            sqlx::query("SELECT * FROM messages WHERE folder = ? AND href = ?")
                .bind(folder)
                .bind(href)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| Cache::message_row(&r)),
        )
    }

    fn put_message_query(
        m: &CachedMessage,
    ) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
        sqlx::query(
            "INSERT INTO messages (folder, href, etag, message_id, link, crm_id, regarding, problem, rule, gone)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (folder, href) DO UPDATE SET etag = excluded.etag,
               message_id = excluded.message_id, link = excluded.link, crm_id = excluded.crm_id,
               regarding = excluded.regarding, problem = excluded.problem, rule = excluded.rule,
               gone = excluded.gone",
        )
        .bind(&m.folder)
        .bind(&m.href)
        .bind(&m.etag)
        .bind(&m.message_id)
        .bind(m.link as i64)
        .bind(&m.crm_id)
        .bind(&m.regarding)
        .bind(&m.problem)
        .bind(&m.rule)
        .bind(m.gone as i64)
    }

    pub async fn put_message(&self, m: &CachedMessage) -> anyhow::Result<()> {
        Cache::put_message_query(m).execute(&self.pool).await?;
        crate::fault::step("message row written");
        Ok(())
    }

    /// Every message row of `folder`.
    pub async fn messages_in(&self, folder: &str) -> anyhow::Result<Vec<CachedMessage>> {
        Ok(sqlx::query("SELECT * FROM messages WHERE folder = ?")
            .bind(folder)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Cache::message_row)
            .collect())
    }

    pub async fn remove_message(&self, folder: &str, href: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM messages WHERE folder = ? AND href = ?")
            .bind(folder)
            .bind(href)
            .execute(&self.pool)
            .await?;
        crate::fault::step("message row removed");
        Ok(())
    }

    /// The messages linked to (or found by) the CRM email `crm_id`.
    pub async fn messages_by_crm_id(&self, crm_id: &str) -> anyhow::Result<Vec<CachedMessage>> {
        Ok(sqlx::query(
            "SELECT * FROM messages WHERE crm_id = ? AND gone = 0 ORDER BY folder, href",
        )
        .bind(crm_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(Cache::message_row)
        .collect())
    }

    /// The messages with this Message-ID (gone ones included).
    pub async fn messages_by_message_id(
        &self,
        message_id: &str,
    ) -> anyhow::Result<Vec<CachedMessage>> {
        Ok(
            sqlx::query("SELECT * FROM messages WHERE message_id = ? ORDER BY gone, folder, href")
                .bind(message_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(Cache::message_row)
                .collect(),
        )
    }

    /// Messages per link state (R-M3), those gone (R-M8) left out:
    /// `[not tracked, to be tracked, tracked]`.
    pub async fn message_link_counts(&self) -> anyhow::Result<[i64; 3]> {
        let mut out = [0; 3];
        for r in sqlx::query("SELECT link, COUNT(*) FROM messages WHERE gone = 0 GROUP BY link")
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

    /// Messages to report: refused or failed tracking, or marked and moved
    /// out of the synchronized folders before they were tracked (R-M8).
    pub async fn message_problems(&self) -> anyhow::Result<Vec<CachedMessage>> {
        Ok(sqlx::query(
            "SELECT * FROM messages WHERE gone = 1 OR problem IS NOT NULL ORDER BY folder, href",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(Cache::message_row)
        .collect())
    }

    /// Messages of `folder` in link state `link`, those gone left out.
    pub async fn message_count(&self, folder: &str, link: u8) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE folder = ? AND link = ? AND gone = 0",
        )
        .bind(folder)
        .bind(link as i64)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Messages of `folder` whose row was reset (empty etag) so that the
    /// next scan plans them again (`crmsync track mid:…`).
    pub async fn messages_to_replan(&self, folder: &str) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT href FROM messages WHERE folder = ? AND etag = '' AND gone = 0 ORDER BY href",
        )
        .bind(folder)
        .fetch_all(&self.pool)
        .await?)
    }
}
