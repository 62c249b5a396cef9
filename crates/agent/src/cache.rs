//! The engine's cache (SPEC R-T4, R-M3, R-V4, docs/sync-protocol.md "What
//! a client must persist"): the client id, per collection the mailbox sync
//! state, per item its href, etag, CRM id, set, link state, CRM version and
//! baseline fields, and a journal of push operations written before they
//! are sent (their `op_id`s are stable across retries, so a crash never
//! duplicates).
//!
//! One implementation, two places. The agent keeps its cache in a SQLite
//! file (tables `meta`, `items`, `journal`, ... as they always were); a
//! server keeps the caches of its connected mailboxes in its PostgreSQL
//! database (R-V4), in tables `mailbox_cache_*` whose rows all carry the
//! mailbox key first in their primary key, so any `serve` process continues
//! any mailbox. The SQL is written once for both: `$1` is always the
//! mailbox key (unused in a file, which holds one mailbox), and markers in
//! braces name the tables and the scope (see `render`). On PostgreSQL an
//! optional [`Fence`] makes every write conditional on the worker still
//! holding the mailbox's lease; a write under a stale lease fails with
//! [`LeaseLost`] and writes nothing.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Value};
use sqlx::any::{install_default_drivers, AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, Transaction};

/// The table holding the lease of each connected mailbox (R-V4), its key
/// column and its lease token column: the names a [`Fence`] checks.
pub const LEASE_TABLE: &str = "mailboxes";
pub const LEASE_KEY_COLUMN: &str = "id";
pub const LEASE_TOKEN_COLUMN: &str = "lease_token";

/// What the tables of a server's database are called: `mailbox_cache_`
/// and the file's table name (none of the server's tables starts so).
const SHARED_PREFIX: &str = "mailbox_cache_";

/// Written once for the file and the server's database (see `render`).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {meta} ({key_col}key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY ({key}key))",
    "CREATE TABLE IF NOT EXISTS {collections} ({key_col}id TEXT NOT NULL, state TEXT, PRIMARY KEY ({key}id))",
    "CREATE TABLE IF NOT EXISTS {items} (
        {key_col}collection TEXT NOT NULL,
        href TEXT NOT NULL,
        etag TEXT NOT NULL,
        uid TEXT NOT NULL,
        set_name TEXT NOT NULL,
        crm_id TEXT,
        link {int} NOT NULL,
        version {int} NOT NULL DEFAULT 0,
        baseline TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY ({key}collection, href))",
    "CREATE INDEX IF NOT EXISTS {items}_crm_id ON {items} ({key}crm_id)",
    // Every sync asks each collection for its items waiting to be tracked
    // (R-M3 state 1), in href order: without this index (href included, or
    // SQLite keeps the primary key for the order) that read every row of
    // the collection, 14 ms of a 30k-item no-change sync.
    "CREATE INDEX IF NOT EXISTS {items}_link ON {items} ({key}collection, link, href)",
    "CREATE TABLE IF NOT EXISTS {journal} (
        {key_col}op_id TEXT NOT NULL,
        collection TEXT NOT NULL,
        href TEXT NOT NULL,
        etag TEXT NOT NULL,
        op TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY ({key}op_id))",
    // Contacts/events/to-dos that cannot be read, until they change or go
    // (shown by `crmsync status`).
    "CREATE TABLE IF NOT EXISTS {item_problems} (
        {key_col}collection TEXT NOT NULL,
        href TEXT NOT NULL,
        problem TEXT NOT NULL,
        PRIMARY KEY ({key}collection, href))",
    // A CRM record about to be written into the mailbox (R-T4): if the agent
    // dies between the mailbox write and the item's row, the next scan takes
    // its baseline from here instead of guessing.
    "CREATE TABLE IF NOT EXISTS {write_intents} (
        {key_col}crm_id TEXT NOT NULL,
        collection TEXT NOT NULL,
        version {int} NOT NULL,
        baseline TEXT NOT NULL,
        old_etag TEXT,
        PRIMARY KEY ({key}crm_id))",
    // Messages of the synchronized mail folders (R-M3; `mail` module).
    "CREATE TABLE IF NOT EXISTS {messages} (
        {key_col}folder TEXT NOT NULL,
        href TEXT NOT NULL,
        etag TEXT NOT NULL,
        message_id TEXT,
        link {int} NOT NULL,
        crm_id TEXT,
        regarding TEXT,
        problem TEXT,
        rule TEXT,
        gone {int} NOT NULL DEFAULT 0,
        PRIMARY KEY ({key}folder, href))",
    "CREATE INDEX IF NOT EXISTS {messages}_crm_id ON {messages} ({key}crm_id)",
    "CREATE INDEX IF NOT EXISTS {messages}_message_id ON {messages} ({key}message_id)",
];

/// In a server's database only: the messages of journaled operations that
/// wait in a spool file (`raw_file`, over 1 MiB, `mail/`), so that another
/// process can send them (R-V4). An agent's file has its spool beside it.
const SHARED_SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS {spool} (
        mailbox_id TEXT NOT NULL,
        op_id TEXT NOT NULL,
        raw BYTEA NOT NULL,
        PRIMARY KEY (mailbox_id, op_id))"];

const TABLES: &[&str] = &[
    "spool",
    "meta",
    "collections",
    "items",
    "journal",
    "item_problems",
    "write_intents",
    "messages",
];

/// Turns SQL written once into the file's or the server database's SQL.
/// Markers: a table name in braces (`{items}`); `{scope}` before a
/// condition and `{where}` alone (the rows of this mailbox); `{key}` and
/// `{val}` leading a column and a value list (the mailbox key);
/// `{key_col}` leading a table's columns; `{int}` an integer column;
/// `{now}` the time of the write.
/// Anything else in braces (`'{}'`) is kept.
fn render(template: &str, shared: bool) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let marker = after
            .find('}')
            .and_then(|end| Some((marker(&after[..end], shared)?, end)));
        match marker {
            Some((text, end)) => {
                out.push_str(&text);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn marker(name: &str, shared: bool) -> Option<Cow<'static, str>> {
    if let Some(table) = TABLES.iter().find(|t| **t == name) {
        return Some(if shared {
            Cow::Owned(format!("{SHARED_PREFIX}{table}"))
        } else {
            Cow::Borrowed(table)
        });
    }
    let (file, server) = match name {
        "scope" => ("", "mailbox_id = $1 AND "),
        "where" => ("", "WHERE mailbox_id = $1"),
        "key" => ("", "mailbox_id, "),
        "val" => ("", "$1, "),
        "key_col" => ("", "mailbox_id TEXT NOT NULL, "),
        "int" => ("INTEGER", "BIGINT"),
        "now" => (
            "datetime('now')",
            "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
        ),
        _ => return None,
    };
    Some(Cow::Borrowed(if shared { server } else { file }))
}

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

/// R-V4: the lease a server worker holds on a mailbox. Every write of a
/// cache with a fence first checks, in its transaction, that the row
/// `key` of [`LEASE_TABLE`] still has `token` (and locks it against a new
/// claim until the write commits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub token: i64,
}

/// A write refused because the worker's lease on the mailbox was taken
/// over or removed (R-V4); nothing of that write was stored.
#[derive(Debug, thiserror::Error)]
#[error("mailbox {key}: lease token {token} is no longer current (another worker took the mailbox, or it was removed); this cycle stops without writing")]
pub struct LeaseLost {
    pub key: String,
    pub token: i64,
}

impl LeaseLost {
    /// R-V4: an item's error that is a lost lease ends the whole cycle
    /// (every later write would be refused too); any other stays the
    /// item's, reported while the others go on.
    pub(crate) fn stops(e: anyhow::Error) -> anyhow::Result<anyhow::Error> {
        if e.is::<LeaseLost>() {
            Err(e)
        } else {
            Ok(e)
        }
    }
}

#[derive(Clone, Debug)]
pub struct Cache {
    pool: AnyPool,
    /// The mailbox key in a server's database; empty in a file.
    mailbox: String,
    shared: bool,
    fence: Option<Fence>,
}

type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

/// [`LeaseLost`] unless the lease row still has the fence's token;
/// `lock` (` FOR SHARE`) keeps it so until the transaction ends.
async fn check_lease(conn: &mut AnyConnection, fence: &Fence, lock: &str) -> anyhow::Result<()> {
    let held = sqlx::query(&format!(
        "SELECT 1 FROM {LEASE_TABLE} WHERE {LEASE_KEY_COLUMN} = $1 AND {LEASE_TOKEN_COLUMN} = $2{lock}"
    ))
    .bind(fence.key.clone())
    .bind(fence.token)
    .fetch_optional(conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(LeaseLost {
            key: fence.key.clone(),
            token: fence.token,
        }
        .into()),
    }
}

impl Cache {
    /// Opens (creating if needed) the agent's cache file.
    pub async fn open(path: &Path) -> anyhow::Result<Cache> {
        let fail = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "[client] cache = {}: cannot open the cache ({e}); choose a writable place",
                path.display()
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "[client] cache = {}: cannot create its folder ({e}); choose a writable place",
                    path.display()
                )
            })?;
        }
        // An absolute path, so that the URL's path is the file's.
        let absolute = std::path::absolute(path).map_err(|e| fail(&e))?;
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL + NORMAL: a commit survives the agent being
                    // killed (R-T4); only a power cut can lose the last
                    // commits, never corrupt the file, and the next scan
                    // relinks by X-CRM-ID (R-M2). FULL would cost an fsync
                    // per item on a first sync.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
                        .await?;
                    Ok(())
                })
            })
            .connect(&format!("sqlite://{}?mode=rwc", url_path(&absolute)))
            .await
            .map_err(|e| fail(&e))?;
        let cache = Cache {
            pool,
            mailbox: String::new(),
            shared: false,
            fence: None,
        };
        for stmt in SCHEMA {
            sqlx::query(&cache.sql(stmt)).execute(&cache.pool).await?;
        }
        Ok(cache)
    }

    /// Creates the tables of the mailbox caches in a server's PostgreSQL
    /// database (R-V4), if they are not there yet: once per process before
    /// [`Cache::in_database`]. Processes starting together wait for one
    /// another.
    pub async fn prepare_database(pool: &AnyPool) -> anyhow::Result<()> {
        Cache::require_postgres(pool)?;
        let mut tx = pool.begin().await?;
        // Concurrent CREATE TABLE IF NOT EXISTS can collide in PostgreSQL's
        // catalog; one process at a time.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('crmsync mailbox cache schema'))")
            .execute(&mut *tx)
            .await?;
        for stmt in SCHEMA.iter().chain(SHARED_SCHEMA) {
            sqlx::query(&render(stmt, true)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes from a server's PostgreSQL database the caches of mailboxes
    /// that are no longer connected (R-V1: a deleted mailbox leaves no
    /// state behind). They are found by their `meta` rows (a few per
    /// mailbox; the client id is the first thing a cycle writes), then
    /// removed table by table by their key, so a sweep with nothing to
    /// remove reads only the small table. Returns the rows removed.
    pub async fn forget_disconnected(pool: &AnyPool) -> anyhow::Result<u64> {
        Cache::require_postgres(pool)?;
        let gone: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT mailbox_id FROM {SHARED_PREFIX}meta WHERE mailbox_id NOT IN \
             (SELECT {LEASE_KEY_COLUMN} FROM {LEASE_TABLE})"
        ))
        .fetch_all(pool)
        .await?;
        let mut removed = 0;
        for mailbox in &gone {
            for table in TABLES {
                let sql = format!("DELETE FROM {SHARED_PREFIX}{table} WHERE mailbox_id = $1");
                removed += sqlx::query(&sql)
                    .bind(mailbox.clone())
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
        }
        Ok(removed)
    }

    /// The cache of the mailbox `mailbox` in a server's PostgreSQL database
    /// (prepared by [`Cache::prepare_database`]); with `fence`, every write
    /// is made only while that lease is held (R-V4).
    pub fn in_database(
        pool: AnyPool,
        mailbox: &str,
        fence: Option<Fence>,
    ) -> anyhow::Result<Cache> {
        Cache::require_postgres(&pool)?;
        Ok(Cache {
            pool,
            mailbox: mailbox.to_string(),
            shared: true,
            fence,
        })
    }

    fn require_postgres(pool: &AnyPool) -> anyhow::Result<()> {
        let scheme = pool.connect_options().database_url.scheme().to_string();
        if scheme != "postgres" && scheme != "postgresql" {
            anyhow::bail!("mailbox caches in a database need PostgreSQL, not {scheme}: use --db postgres://USER@HOST:PORT/DB");
        }
        Ok(())
    }

    /// `template` as this cache's SQL (see `render`).
    fn sql(&self, template: &str) -> String {
        render(template, self.shared)
    }

    /// A query of this mailbox: `$1` is the mailbox key.
    fn query<'q>(&self, sql: &'q str) -> AnyQuery<'q> {
        sqlx::query(sql).bind(self.mailbox.clone())
    }

    /// A transaction for writes: with a fence, it first checks (and locks)
    /// the lease, failing with [`LeaseLost`] when it moved (R-V4).
    async fn begin(&self) -> anyhow::Result<Transaction<'static, Any>> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = &self.fence {
            check_lease(&mut tx, fence, " FOR SHARE").await?;
        }
        Ok(tx)
    }

    /// R-V4: fails with [`LeaseLost`] unless the lease is still held (no
    /// check without a fence). Called before a mailbox write that no
    /// fenced cache write precedes, so that a worker that lost its lease
    /// does not write into the mailbox either. One statement: a lock taken
    /// here would be released as soon as it was taken.
    pub async fn hold_lease(&self) -> anyhow::Result<()> {
        if let Some(fence) = &self.fence {
            check_lease(&mut *self.pool.acquire().await?, fence, "").await?;
        }
        Ok(())
    }

    /// One write: in a fenced transaction when there is a fence, else
    /// straight on the pool (the file).
    async fn write(&self, query: AnyQuery<'_>) -> anyhow::Result<()> {
        if self.fence.is_some() {
            let mut tx = self.begin().await?;
            query.execute(&mut *tx).await?;
            tx.commit().await?;
        } else {
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    pub async fn meta(&self, key: &str) -> anyhow::Result<Option<String>> {
        let sql = self.sql("SELECT value FROM {meta} WHERE {scope}key = $2");
        Ok(self
            .query(&sql)
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<String, _>(0)))
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let sql = self.sql("INSERT INTO {meta} ({key}key, value) VALUES ({val}$2, $3) ON CONFLICT ({key}key) DO UPDATE SET value = excluded.value");
        self.write(
            self.query(&sql)
                .bind(key.to_string())
                .bind(value.to_string()),
        )
        .await
    }

    pub async fn sync_state(&self, collection: &str) -> anyhow::Result<Option<String>> {
        let sql = self.sql("SELECT state FROM {collections} WHERE {scope}id = $2");
        Ok(self
            .query(&sql)
            .bind(collection.to_string())
            .fetch_optional(&self.pool)
            .await?
            .and_then(|r| r.get::<Option<String>, _>(0)))
    }

    pub async fn set_sync_state(&self, collection: &str, state: &str) -> anyhow::Result<()> {
        let sql = self.sql("INSERT INTO {collections} ({key}id, state) VALUES ({val}$2, $3) ON CONFLICT ({key}id) DO UPDATE SET state = excluded.state");
        self.write(
            self.query(&sql)
                .bind(collection.to_string())
                .bind(state.to_string()),
        )
        .await?;
        crate::fault::step("mailbox sync state written");
        Ok(())
    }

    fn row(r: &AnyRow) -> CachedItem {
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

    /// The item rows `template` selects, `binds` after the mailbox key.
    async fn item_rows(&self, template: &str, binds: &[&str]) -> anyhow::Result<Vec<CachedItem>> {
        let sql = self.sql(template);
        let mut q = self.query(&sql);
        for b in binds {
            q = q.bind(b.to_string());
        }
        Ok(q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(Cache::row)
            .collect())
    }

    pub async fn item(&self, collection: &str, href: &str) -> anyhow::Result<Option<CachedItem>> {
        Ok(self
            .item_rows(
                "SELECT * FROM {items} WHERE {scope}collection = $2 AND href = $3",
                &[collection, href],
            )
            .await?
            .pop())
    }

    /// The items of `collection` in link state `link` (R-M3).
    pub async fn items_with_link(
        &self,
        collection: &str,
        link: u8,
    ) -> anyhow::Result<Vec<CachedItem>> {
        let sql = self
            .sql("SELECT * FROM {items} WHERE {scope}collection = $2 AND link = $3 ORDER BY href");
        Ok(self
            .query(&sql)
            .bind(collection.to_string())
            .bind(link as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Cache::row)
            .collect())
    }

    pub async fn item_by_crm_id(&self, crm_id: &str) -> anyhow::Result<Option<CachedItem>> {
        let sql = self.sql("SELECT * FROM {items} WHERE {scope}crm_id = $2");
        Ok(self
            .query(&sql)
            .bind(crm_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Cache::row(&r)))
    }

    pub async fn items(&self) -> anyhow::Result<Vec<CachedItem>> {
        self.item_rows(
            "SELECT * FROM {items} {where} ORDER BY collection, href",
            &[],
        )
        .await
    }

    pub async fn put_item(&self, item: &CachedItem) -> anyhow::Result<()> {
        let sql = self.sql(
            "INSERT INTO {items} ({key}collection, href, etag, uid, set_name, crm_id, link, version, baseline)
             VALUES ({val}$2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT ({key}collection, href) DO UPDATE SET etag = excluded.etag, uid = excluded.uid,
               set_name = excluded.set_name, crm_id = excluded.crm_id, link = excluded.link,
               version = excluded.version, baseline = excluded.baseline",
        );
        self.write(
            self.query(&sql)
                .bind(item.collection.clone())
                .bind(item.href.clone())
                .bind(item.etag.clone())
                .bind(item.uid.clone())
                .bind(item.set.clone())
                .bind(item.crm_id.clone())
                .bind(item.link as i64)
                .bind(item.version)
                .bind(Value::Object(item.baseline.clone()).to_string()),
        )
        .await?;
        crate::fault::step("cache row written");
        Ok(())
    }

    pub async fn remove_item(&self, collection: &str, href: &str) -> anyhow::Result<()> {
        let sql = self.sql("DELETE FROM {items} WHERE {scope}collection = $2 AND href = $3");
        self.write(
            self.query(&sql)
                .bind(collection.to_string())
                .bind(href.to_string()),
        )
        .await?;
        crate::fault::step("cache row removed");
        Ok(())
    }

    /// Counts per link state of `rows` (`link`, `COUNT(*)` rows):
    /// `[not tracked, to be tracked, tracked]`.
    async fn per_link(&self, template: &str) -> anyhow::Result<[i64; 3]> {
        let sql = self.sql(template);
        let mut out = [0; 3];
        for r in self.query(&sql).fetch_all(&self.pool).await? {
            let link: i64 = r.get(0);
            if let Some(slot) = out.get_mut(link as usize) {
                *slot = r.get(1);
            }
        }
        Ok(out)
    }

    /// Counts per link state (R-M3): `[not tracked, to be tracked, tracked]`.
    pub async fn link_counts(&self) -> anyhow::Result<[i64; 3]> {
        self.per_link("SELECT link, COUNT(*) FROM {items} {where} GROUP BY link")
            .await
    }

    /// Items linked to a CRM record in one collection (R-T5's denominator
    /// on the CRM side).
    pub async fn tracked_count(&self, collection: &str) -> anyhow::Result<u64> {
        let sql =
            self.sql("SELECT COUNT(*) FROM {items} WHERE {scope}collection = $2 AND link = 2");
        let n: i64 = self
            .query(&sql)
            .bind(collection.to_string())
            .fetch_one(&self.pool)
            .await?
            .get(0);
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
    /// the entries `done` removed. In a server's database the spool file
    /// of an added entry is kept with it (see [`Cache::spooled`]).
    async fn journal_write(
        &self,
        added: &[JournalEntry],
        rows: &[CachedMessage],
        done: &[String],
    ) -> anyhow::Result<()> {
        if added.is_empty() && rows.is_empty() && done.is_empty() {
            return Ok(());
        }
        let add = self.sql("INSERT INTO {journal} ({key}op_id, collection, href, etag, op, created_at) VALUES ({val}$2, $3, $4, $5, $6, {now})");
        let put = self.sql(PUT_MESSAGE);
        let remove = self.sql("DELETE FROM {journal} WHERE {scope}op_id = $2");
        let spool = self.sql("INSERT INTO {spool} (mailbox_id, op_id, raw) VALUES ($1, $2, $3) ON CONFLICT (mailbox_id, op_id) DO UPDATE SET raw = excluded.raw");
        let unspool = self.sql("DELETE FROM {spool} WHERE mailbox_id = $1 AND op_id = $2");
        let mut tx = self.begin().await?;
        for entry in added {
            self.query(&add)
                .bind(entry.op_id.clone())
                .bind(entry.collection.clone())
                .bind(entry.href.clone())
                .bind(entry.etag.clone())
                .bind(entry.op.to_string())
                .execute(&mut *tx)
                .await?;
            if let (true, Some(file)) = (self.shared, entry.op["raw_file"].as_str()) {
                // A file that is gone is sent as no `raw` (crm.rs), as on
                // the machine that spooled it.
                if let Ok(raw) = tokio::fs::read(file).await {
                    self.query(&spool)
                        .bind(entry.op_id.clone())
                        .bind(raw)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for m in rows {
            self.put_message_query(&put, m).execute(&mut *tx).await?;
        }
        for op_id in done {
            self.query(&remove)
                .bind(op_id.clone())
                .execute(&mut *tx)
                .await?;
            if self.shared {
                self.query(&unspool)
                    .bind(op_id.clone())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        crate::fault::step("journal written");
        Ok(())
    }

    /// Operations sent (or about to be) whose answer was not applied yet.
    pub async fn journal_pending(&self) -> anyhow::Result<Vec<JournalEntry>> {
        let sql = self.sql(
            "SELECT op_id, collection, href, etag, op FROM {journal} {where} ORDER BY created_at, op_id",
        );
        Ok(self
            .query(&sql)
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

    /// The message of the journaled operation `op_id` whose spool file is
    /// not on this machine: kept in a server's database (R-V4); `None` in
    /// an agent's file, whose spool is beside it.
    pub async fn spooled(&self, op_id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if !self.shared {
            return Ok(None);
        }
        let sql = self.sql("SELECT raw FROM {spool} WHERE mailbox_id = $1 AND op_id = $2");
        Ok(self
            .query(&sql)
            .bind(op_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<Vec<u8>, _>(0)))
    }

    /// The items whose UID is `uid` (normally one).
    pub async fn items_by_uid(&self, uid: &str) -> anyhow::Result<Vec<(String, String)>> {
        let sql = self.sql(
            "SELECT collection, href FROM {items} WHERE {scope}uid = $2 ORDER BY collection, href",
        );
        let rows = self
            .query(&sql)
            .bind(uid.to_string())
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
        let sql = self.sql(
            "INSERT INTO {item_problems} ({key}collection, href, problem) VALUES ({val}$2, $3, $4)
             ON CONFLICT ({key}collection, href) DO UPDATE SET problem = excluded.problem",
        );
        self.write(
            self.query(&sql)
                .bind(collection.to_string())
                .bind(href.to_string())
                .bind(problem.to_string()),
        )
        .await
    }

    pub async fn clear_item_problem(&self, collection: &str, href: &str) -> anyhow::Result<()> {
        let sql =
            self.sql("DELETE FROM {item_problems} WHERE {scope}collection = $2 AND href = $3");
        self.write(
            self.query(&sql)
                .bind(collection.to_string())
                .bind(href.to_string()),
        )
        .await
    }

    /// `(collection, href, problem)` of every item that cannot be read.
    pub async fn item_problems(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let sql = self.sql(
            "SELECT collection, href, problem FROM {item_problems} {where} ORDER BY collection, href",
        );
        let rows = self.query(&sql).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("collection"), r.get("href"), r.get("problem")))
            .collect())
    }

    /// Records a mailbox write before it is made.
    pub async fn write_intent_put(&self, w: &WriteIntent) -> anyhow::Result<()> {
        let sql = self.sql(
            "INSERT INTO {write_intents} ({key}crm_id, collection, version, baseline, old_etag)
             VALUES ({val}$2, $3, $4, $5, $6)
             ON CONFLICT ({key}crm_id) DO UPDATE SET collection = excluded.collection,
               version = excluded.version, baseline = excluded.baseline, old_etag = excluded.old_etag",
        );
        self.write(
            self.query(&sql)
                .bind(w.crm_id.clone())
                .bind(w.collection.clone())
                .bind(w.version)
                .bind(Value::Object(w.baseline.clone()).to_string())
                .bind(w.old_etag.clone()),
        )
        .await?;
        crate::fault::step("write intent recorded");
        Ok(())
    }

    /// The write intended for `crm_id`, if one was left unfinished.
    pub async fn write_intent(&self, crm_id: &str) -> anyhow::Result<Option<WriteIntent>> {
        let sql = self.sql("SELECT * FROM {write_intents} WHERE {scope}crm_id = $2");
        let row = self
            .query(&sql)
            .bind(crm_id.to_string())
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
        let sql = self.sql("DELETE FROM {write_intents} WHERE {scope}crm_id = $2");
        self.write(self.query(&sql).bind(crm_id.to_string()))
            .await?;
        crate::fault::step("write intent done");
        Ok(())
    }

    /// The collections that hold write intents, so that a sync clears only
    /// those (one read instead of a fenced write per collection, R-V6).
    pub async fn write_intent_collections(&self) -> anyhow::Result<HashSet<String>> {
        let sql = self.sql("SELECT DISTINCT collection FROM {write_intents} {where}");
        Ok(self
            .query(&sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect())
    }

    /// Forgets the intents of `collection` once a complete scan has looked
    /// at every item it could concern.
    pub async fn write_intents_clear(&self, collection: &str) -> anyhow::Result<()> {
        let sql = self.sql("DELETE FROM {write_intents} WHERE {scope}collection = $2");
        self.write(self.query(&sql).bind(collection.to_string()))
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

    fn message_row(r: &AnyRow) -> CachedMessage {
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

    /// The message rows `template` selects, `binds` after the mailbox key.
    async fn message_rows(
        &self,
        template: &str,
        binds: &[&str],
    ) -> anyhow::Result<Vec<CachedMessage>> {
        let sql = self.sql(template);
        let mut q = self.query(&sql);
        for b in binds {
            q = q.bind(b.to_string());
        }
        Ok(q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(Cache::message_row)
            .collect())
    }

    pub async fn message(&self, folder: &str, href: &str) -> anyhow::Result<Option<CachedMessage>> {
        Ok(self
            .message_rows(
                "SELECT * FROM {messages} WHERE {scope}folder = $2 AND href = $3",
                &[folder, href],
            )
            .await?
            .pop())
    }

    fn put_message_query<'q>(&self, sql: &'q str, m: &CachedMessage) -> AnyQuery<'q> {
        self.query(sql)
            .bind(m.folder.clone())
            .bind(m.href.clone())
            .bind(m.etag.clone())
            .bind(m.message_id.clone())
            .bind(m.link as i64)
            .bind(m.crm_id.clone())
            .bind(m.regarding.clone())
            .bind(m.problem.clone())
            .bind(m.rule.clone())
            .bind(m.gone as i64)
    }

    pub async fn put_message(&self, m: &CachedMessage) -> anyhow::Result<()> {
        let sql = self.sql(PUT_MESSAGE);
        self.write(self.put_message_query(&sql, m)).await?;
        crate::fault::step("message row written");
        Ok(())
    }

    /// Every message row of `folder`.
    pub async fn messages_in(&self, folder: &str) -> anyhow::Result<Vec<CachedMessage>> {
        self.message_rows(
            "SELECT * FROM {messages} WHERE {scope}folder = $2",
            &[folder],
        )
        .await
    }

    pub async fn remove_message(&self, folder: &str, href: &str) -> anyhow::Result<()> {
        let sql = self.sql("DELETE FROM {messages} WHERE {scope}folder = $2 AND href = $3");
        self.write(
            self.query(&sql)
                .bind(folder.to_string())
                .bind(href.to_string()),
        )
        .await?;
        crate::fault::step("message row removed");
        Ok(())
    }

    /// The messages linked to (or found by) the CRM email `crm_id`.
    pub async fn messages_by_crm_id(&self, crm_id: &str) -> anyhow::Result<Vec<CachedMessage>> {
        self.message_rows(
            "SELECT * FROM {messages} WHERE {scope}crm_id = $2 AND gone = 0 ORDER BY folder, href",
            &[crm_id],
        )
        .await
    }

    /// The messages with this Message-ID (gone ones included).
    pub async fn messages_by_message_id(
        &self,
        message_id: &str,
    ) -> anyhow::Result<Vec<CachedMessage>> {
        self.message_rows(
            "SELECT * FROM {messages} WHERE {scope}message_id = $2 ORDER BY gone, folder, href",
            &[message_id],
        )
        .await
    }

    /// Messages per link state (R-M3), those gone (R-M8) left out:
    /// `[not tracked, to be tracked, tracked]`.
    pub async fn message_link_counts(&self) -> anyhow::Result<[i64; 3]> {
        self.per_link("SELECT link, COUNT(*) FROM {messages} WHERE {scope}gone = 0 GROUP BY link")
            .await
    }

    /// Messages to report: refused or failed tracking, or marked and moved
    /// out of the synchronized folders before they were tracked (R-M8).
    pub async fn message_problems(&self) -> anyhow::Result<Vec<CachedMessage>> {
        self.message_rows(
            "SELECT * FROM {messages} WHERE {scope}(gone = 1 OR problem IS NOT NULL) ORDER BY folder, href",
            &[],
        )
        .await
    }

    /// Messages of `folder` in link state `link`, those gone left out.
    pub async fn message_count(&self, folder: &str, link: u8) -> anyhow::Result<i64> {
        let sql = self.sql(
            "SELECT COUNT(*) FROM {messages} WHERE {scope}folder = $2 AND link = $3 AND gone = 0",
        );
        Ok(self
            .query(&sql)
            .bind(folder.to_string())
            .bind(link as i64)
            .fetch_one(&self.pool)
            .await?
            .get(0))
    }

    /// Messages of `folder` whose row was reset (empty etag) so that the
    /// next scan plans them again (`crmsync track mid:…`).
    pub async fn messages_to_replan(&self, folder: &str) -> anyhow::Result<Vec<String>> {
        let sql = self.sql(
            "SELECT href FROM {messages} WHERE {scope}folder = $2 AND etag = '' AND gone = 0 ORDER BY href",
        );
        Ok(self
            .query(&sql)
            .bind(folder.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

/// A file path as a `sqlite://` URL's path: the characters a URL gives a
/// meaning to escaped (sqlx decodes them), spaces left to the URL parser.
fn url_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23")
}

const PUT_MESSAGE: &str =
    "INSERT INTO {messages} ({key}folder, href, etag, message_id, link, crm_id, regarding, problem, rule, gone)
     VALUES ({val}$2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT ({key}folder, href) DO UPDATE SET etag = excluded.etag,
       message_id = excluded.message_id, link = excluded.link, crm_id = excluded.crm_id,
       regarding = excluded.regarding, problem = excluded.problem, rule = excluded.rule,
       gone = excluded.gone";

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn one_text_two_databases() {
        let t = "SELECT * FROM {items} WHERE {scope}crm_id = $2 AND baseline <> '{}'";
        assert_eq!(
            render(t, false),
            "SELECT * FROM items WHERE crm_id = $2 AND baseline <> '{}'"
        );
        assert_eq!(
            render(t, true),
            "SELECT * FROM mailbox_cache_items WHERE mailbox_id = $1 AND crm_id = $2 AND baseline <> '{}'"
        );
        assert_eq!(render("{items} {where}", false), "items ");
    }
}
