//! The server's storage layer: records with tombstones and the version
//! sequence, tokens, and configuration documents. Every statement is static
//! SQL with bound parameters; nothing here knows HTTP or access rules.

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use uuid::Uuid;

use crmsync_core::{EntitySet, Record};

use crate::changes::{ChangeFeed, Committed};
use crate::db::DbKind;

pub type Tx = Transaction<'static, Any>;

#[derive(Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub kind: DbKind,
    /// The connection URL (the PostgreSQL listener opens its own).
    pub url: String,
    /// What committed lately, for the clients waiting on `/sync/wait`.
    pub changes: ChangeFeed,
    /// R-V2: the key of the secrets at rest, which the database does not
    /// hold; without one, no secret is stored.
    pub secret_key: Option<std::sync::Arc<crate::secrets::SecretKey>>,
    /// R-V1: connects to a mailbox's servers (crmsync-hosted); without it
    /// the connection test answers that this process cannot.
    pub connection_test: Option<std::sync::Arc<dyn crate::mailboxes::ConnectionTest>>,
}

/// The PostgreSQL channel every `serve` process of one database listens on.
pub const CHANGES_CHANNEL: &str = "crmsync_changes";
/// The notification of a rule change (anything else is a `Committed`).
pub const RULES_CHANGED: &str = "rules";

/// One entry of "everything changed or deleted since version V".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub id: Uuid,
    pub set: EntitySet,
    pub version: i64,
    pub deleted: bool,
}

/// A tombstone: what remains of a deleted record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    pub id: Uuid,
    pub set: EntitySet,
    pub version: i64,
    pub owner_id: Uuid,
    pub state: String,
    pub created_at: String,
    pub deleted_at: String,
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// Filters of a list request; all optional.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub owner: Option<Uuid>,
    pub modified_since: Option<String>,
    /// Lower-cased text to find in the record's text fields.
    pub text: Option<String>,
    /// Only records with a version below this (the cursor).
    pub before_version: Option<i64>,
    pub limit: i64,
    /// Only records in this state.
    pub state: Option<String>,
    /// Another order than newest change first, with its keyset position
    /// (the web lists' sortable columns); `before_version` is then unused.
    pub order: Option<ListOrder>,
}

/// A list's order: by one of the set's text fields (missing values
/// first), the version breaking ties; or by version.
#[derive(Debug, Clone, Default)]
pub struct ListOrder {
    /// A field of the set's field table (never user text: it is written into the SQL).
    pub field: Option<&'static str>,
    pub descending: bool,
    /// Rows strictly after this (sort value, version) in the order.
    pub after: Option<(String, i64)>,
}

/// The SQL of a record's text field ('' when missing); `field` comes
/// from the core field tables only.
pub(crate) fn field_sql(kind: DbKind, field: &'static str) -> String {
    debug_assert!(field
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    match kind {
        DbKind::Sqlite => format!("COALESCE(json_extract(data, '$.{field}'), '')"),
        DbKind::Postgres => format!("COALESCE(CAST(data AS json) ->> '{field}', '')"),
    }
}

/// A record's sort value as [`field_sql`] computes it, for the next
/// page's position (text fields only, so both databases agree).
pub fn sort_value(r: &Record, field: &str) -> String {
    r.fields
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

const RECORD_COLUMNS: &str =
    "id, entity_set, version, owner_id, state, created_at, modified_at, data";

fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(
        format!("stored {what} is not valid; the database was changed outside crmsync").into(),
    )
}

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(&row.try_get::<String, _>(col)?).map_err(|_| corrupt(col))
}

fn set_col(row: &AnyRow, col: &str) -> Result<EntitySet, sqlx::Error> {
    row.try_get::<String, _>(col)?
        .parse()
        .map_err(|_| corrupt(col))
}

fn record_from_row(row: &AnyRow) -> Result<Record, sqlx::Error> {
    let data: String = row.try_get("data")?;
    let fields: Map<String, Value> =
        serde_json::from_str(&data).map_err(|_| corrupt("record data"))?;
    Ok(Record {
        id: uuid_col(row, "id")?,
        set: set_col(row, "entity_set")?,
        version: row.try_get("version")?,
        owner_id: uuid_col(row, "owner_id")?,
        state: row.try_get("state")?,
        created_at: row.try_get("created_at")?,
        modified_at: row.try_get("modified_at")?,
        fields,
    })
}

/// A row of the records table as an export carries it.
#[derive(Debug, Clone)]
pub enum StoredRecord {
    Live(Record),
    Deleted(Tombstone),
}

impl StoredRecord {
    /// Where the next page starts: versions repeat (a series takes its
    /// exception's version, R-E2), so the id breaks ties.
    pub fn position(&self) -> (i64, Uuid) {
        match self {
            StoredRecord::Live(r) => (r.version, r.id),
            StoredRecord::Deleted(t) => (t.version, t.id),
        }
    }
}

/// Records and tombstones after `after` in (version, id) order, at most
/// `limit` (export, a page at a time).
pub async fn records_page(
    conn: &mut AnyConnection,
    after: Option<(i64, Uuid)>,
    limit: i64,
) -> Result<Vec<StoredRecord>, sqlx::Error> {
    let (version, id) = after.unwrap_or((i64::MIN, Uuid::nil()));
    let sql = format!(
        "SELECT {RECORD_COLUMNS}, deleted_at FROM records WHERE (version, id) > ($1, $2) ORDER BY version, id LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(version)
        .bind(id.to_string())
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let r = record_from_row(row)?;
            Ok(match row.try_get::<Option<String>, _>("deleted_at")? {
                None => StoredRecord::Live(r),
                Some(deleted_at) => StoredRecord::Deleted(Tombstone {
                    id: r.id,
                    set: r.set,
                    version: r.version,
                    owner_id: r.owner_id,
                    state: r.state,
                    created_at: r.created_at,
                    deleted_at,
                    fields: r.fields,
                }),
            })
        })
        .collect()
}

/// Reserves the next version. Updating the counter row first also takes
/// the write lock, so concurrent writers commit in version order.
pub async fn next_version(conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE sequence_counter SET value = value + 1 WHERE name = 'version' RETURNING value",
    )
    .fetch_one(conn)
    .await
}

/// [`Store::changes_between`] on a connection the caller holds.
pub async fn changes_between(
    conn: &mut AnyConnection,
    since: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<Change>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, entity_set, version, deleted_at FROM records WHERE version > $1 AND version <= $2 ORDER BY version LIMIT $3",
    )
    .bind(since)
    .bind(upto)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Change {
                id: uuid_col(row, "id")?,
                set: set_col(row, "entity_set")?,
                version: row.try_get("version")?,
                deleted: row.try_get::<Option<String>, _>("deleted_at")?.is_some(),
            })
        })
        .collect()
}

/// The last committed version of the change sequence.
pub async fn committed_version(conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM sequence_counter WHERE name = 'version'")
        .fetch_one(conn)
        .await
}

/// Takes the organization's write lock without using a version: for rare
/// writes that must not interleave (moving the primary role).
pub async fn lock_writes(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sequence_counter SET value = value WHERE name = 'version'")
        .execute(conn)
        .await?;
    Ok(())
}

/// A live (not deleted) record by id.
pub async fn get_record(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Record>, sqlx::Error> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = $1 AND deleted_at IS NULL");
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(record_from_row).transpose()
}

/// Records by id, live or tombstone (`true` when deleted), in one query.
pub async fn records_by_ids(
    conn: &mut AnyConnection,
    ids: &[Uuid],
) -> Result<Vec<(Record, bool)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT {RECORD_COLUMNS}, deleted_at FROM records WHERE id IN ({})",
        placeholders.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id.to_string());
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            Ok((
                record_from_row(row)?,
                row.try_get::<Option<String>, _>("deleted_at")?.is_some(),
            ))
        })
        .collect()
}

/// Replaces the indexed email addresses of a record (R-E8 resolution).
pub async fn set_addresses(
    conn: &mut AnyConnection,
    r: &Record,
    live: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM record_addresses WHERE record_id = $1")
        .bind(r.id.to_string())
        .execute(&mut *conn)
        .await?;
    if !live {
        return Ok(());
    }
    let mut addresses: Vec<String> = ["email", "email2"]
        .iter()
        .filter_map(|f| r.fields.get(*f).and_then(Value::as_str))
        .map(|a| a.to_ascii_lowercase())
        .collect();
    addresses.sort();
    addresses.dedup();
    for a in addresses {
        sqlx::query(
            "INSERT INTO record_addresses (address, record_id, entity_set) VALUES ($1, $2, $3)",
        )
        .bind(a)
        .bind(r.id.to_string())
        .bind(r.set.as_str())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Live records (of the indexed sets) holding an address, oldest first.
pub async fn records_with_address(
    conn: &mut AnyConnection,
    address: &str,
) -> Result<Vec<(EntitySet, Uuid)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.entity_set, a.record_id FROM record_addresses a JOIN records r ON r.id = a.record_id \
         WHERE a.address = $1 AND r.deleted_at IS NULL ORDER BY r.version",
    )
    .bind(address.to_ascii_lowercase())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| Ok((set_col(row, "entity_set")?, uuid_col(row, "record_id")?)))
        .collect()
}

/// Whether a live record of `set` with this id exists.
pub async fn record_exists(
    conn: &mut AnyConnection,
    set: EntitySet,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM records WHERE id = $1 AND entity_set = $2 AND deleted_at IS NULL",
    )
    .bind(id.to_string())
    .bind(set.as_str())
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// Whether any row (live or tombstone) has this id.
pub async fn id_taken(conn: &mut AnyConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE id = $1")
        .bind(id.to_string())
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Inserts a new record row.
pub async fn insert_record(
    conn: &mut AnyConnection,
    r: &Record,
    unique_key: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO records (id, entity_set, version, owner_id, state, created_at, modified_at, deleted_at, unique_key, search_text, data, parent_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9, $10, $11)",
    )
    .bind(r.id.to_string())
    .bind(r.set.as_str())
    .bind(r.version)
    .bind(r.owner_id.to_string())
    .bind(r.state.clone())
    .bind(r.created_at.clone())
    .bind(r.modified_at.clone())
    .bind(unique_key.map(str::to_string))
    .bind(r.search_text())
    .bind(Value::Object(r.fields.clone()).to_string())
    .bind(parent_of(r).map(|p| p.to_string()))
    .execute(&mut *conn)
    .await?;
    set_links(conn, r, false, true).await
}

/// R-E2: the series an exception belongs to.
pub fn parent_of(r: &Record) -> Option<Uuid> {
    r.fields
        .get("series_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// The records a record points to for timelines: its `regarding`, and the
/// records its attendees or parties resolved to.
pub fn link_targets(r: &Record) -> Vec<Uuid> {
    use crmsync_core::field::FieldKind;
    let id_of = |v: &Value| {
        v.get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    let mut out = Vec::new();
    for def in r.set.fields() {
        let Some(value) = r.fields.get(def.name) else {
            continue;
        };
        match def.kind {
            FieldKind::Regarding => out.extend(id_of(value)),
            FieldKind::Attendees | FieldKind::Parties => out.extend(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|item| item.get("resolved").and_then(id_of)),
            ),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether records of this set can point to others for timelines.
fn has_links(set: EntitySet) -> bool {
    use crmsync_core::field::FieldKind;
    set.fields().iter().any(|f| {
        matches!(
            f.kind,
            FieldKind::Regarding | FieldKind::Attendees | FieldKind::Parties
        )
    })
}

/// Replaces a record's rows in `record_links` (none when it is deleted).
async fn set_links(
    conn: &mut AnyConnection,
    r: &Record,
    replace: bool,
    live: bool,
) -> Result<(), sqlx::Error> {
    if !has_links(r.set) {
        return Ok(());
    }
    if replace {
        sqlx::query("DELETE FROM record_links WHERE record_id = $1")
            .bind(r.id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    if live {
        for target in link_targets(r) {
            sqlx::query("INSERT INTO record_links (target_id, record_id) VALUES ($1, $2)")
                .bind(target.to_string())
                .bind(r.id.to_string())
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Fills `record_links` for a database that had records before the
/// table existed (once: a table with rows is left alone).
pub async fn backfill_links(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let any: Option<String> = sqlx::query_scalar("SELECT record_id FROM record_links LIMIT 1")
        .fetch_optional(pool)
        .await?;
    if any.is_some() {
        return Ok(());
    }
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE deleted_at IS NULL AND data LIKE '%\"id\":\"%'"
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    let mut conn = pool.acquire().await?;
    for row in &rows {
        let r = record_from_row(row)?;
        set_links(&mut conn, &r, false, true).await?;
    }
    Ok(())
}

/// Gives a record a new version without changing it, so that the change
/// feed shows it (a series whose exception changed, R-E2).
pub async fn touch(conn: &mut AnyConnection, id: Uuid, version: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE records SET version = $2 WHERE id = $1 AND deleted_at IS NULL AND version < $2",
    )
    .bind(id.to_string())
    .bind(version)
    .execute(conn)
    .await?;
    Ok(())
}

/// The live exceptions of a recurring series (R-E2).
pub async fn exceptions_of(
    conn: &mut AnyConnection,
    series: Uuid,
) -> Result<Vec<Record>, sqlx::Error> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM records WHERE parent_id = $1 AND deleted_at IS NULL ORDER BY version");
    let rows = sqlx::query(&sql)
        .bind(series.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(record_from_row).collect()
}

/// Overwrites a live record's row with its new state.
pub async fn update_record(
    conn: &mut AnyConnection,
    r: &Record,
    unique_key: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE records SET version = $2, owner_id = $3, state = $4, modified_at = $5, unique_key = $6, search_text = $7, data = $8, parent_id = $9 \
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(r.id.to_string())
    .bind(r.version)
    .bind(r.owner_id.to_string())
    .bind(r.state.clone())
    .bind(r.modified_at.clone())
    .bind(unique_key.map(str::to_string))
    .bind(r.search_text())
    .bind(Value::Object(r.fields.clone()).to_string())
    .bind(parent_of(r).map(|p| p.to_string()))
    .execute(&mut *conn)
    .await?;
    set_links(conn, r, true, true).await
}

/// Turns a live record into a tombstone at `version`. The tombstone keeps
/// the last fields: the CRM -> mailbox rules of §9 look at them (an
/// appointment's start, a task's state).
pub async fn tombstone_record(
    conn: &mut AnyConnection,
    id: Uuid,
    version: i64,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE records SET version = $2, modified_at = $3, deleted_at = $3, unique_key = NULL, search_text = '' \
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id.to_string())
    .bind(version)
    .bind(at.to_string())
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM record_links WHERE record_id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether a live record other than `except` holds this unique key.
pub async fn unique_key_taken(
    conn: &mut AnyConnection,
    key: &str,
    except: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let holder: Option<String> = sqlx::query_scalar("SELECT id FROM records WHERE unique_key = $1")
        .bind(key.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(holder.is_some_and(|h| Some(h) != except.map(|e| e.to_string())))
}

impl Store {
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        let (kind, pool) = crate::db::connect(url).await?;
        crate::list_indexes::ensure(&pool, kind)
            .await
            .map_err(|e| e.context("cannot create the indexes of search and sorted lists"))?;
        let committed = committed_version(&mut *pool.acquire().await?).await?;
        Ok(Store {
            pool,
            kind,
            url: crate::db::normalize_url(url)?.1,
            changes: ChangeFeed::new(committed),
            secret_key: None,
            connection_test: None,
        })
    }

    /// This store with the key of the secrets at rest (R-V2).
    pub fn with_connection_test(
        mut self,
        test: std::sync::Arc<dyn crate::mailboxes::ConnectionTest>,
    ) -> Store {
        self.connection_test = Some(test);
        self
    }

    pub fn with_secret_key(mut self, key: crate::secrets::SecretKey) -> Store {
        self.secret_key = Some(std::sync::Arc::new(key));
        self
    }

    /// Commits a write that took `change.version` ([`next_version`]) and
    /// tells the waiting clients (R-T7): on PostgreSQL through a
    /// notification sent by the commit itself (every `serve` process of
    /// the database hears it), and to this process's waiters at once.
    pub async fn commit_change(&self, mut tx: Tx, change: Committed) -> Result<(), sqlx::Error> {
        if self.kind == DbKind::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(change.to_payload())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.changes.publish(change);
        Ok(())
    }

    /// Tells every waiting client, after a committed rule change (filters,
    /// settings, field rules, a reset, a new primary), that its next
    /// prepare may find work (R-T7); on PostgreSQL every `serve` process.
    pub async fn rules_changed(&self) -> Result<(), sqlx::Error> {
        if self.kind == DbKind::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(RULES_CHANGED)
                .execute(&self.pool)
                .await?;
        }
        self.changes.rules_changed();
        Ok(())
    }

    /// A write transaction. On SQLite it takes the write lock at BEGIN
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout): a deferred
    /// transaction that reads, then writes after another connection
    /// committed, fails at once with SQLITE_BUSY (no wait is possible:
    /// its snapshot is stale), which surfaced as a 500 under concurrent
    /// syncs and settings changes.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.kind {
            DbKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            DbKind::Postgres => self.pool.begin().await,
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Record>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        get_record(&mut conn, id).await
    }

    /// Live records of one set, newest change first.
    pub async fn list(&self, set: EntitySet, q: &ListQuery) -> Result<Vec<Record>, sqlx::Error> {
        // The WHERE clause is assembled from fixed fragments, the set's
        // name and field names of the core tables; every value is bound.
        // The set is written as a literal so that the partial indexes of
        // `list_indexes` apply (R-W8).
        let fts_phrase = match (self.kind, q.text.as_deref()) {
            (DbKind::Sqlite, Some(text)) => {
                crate::list_indexes::sqlite_fts_phrase(&self.pool, text).await?
            }
            _ => None,
        };
        let indexed_search = fts_phrase.is_some();
        let table = match self.kind {
            DbKind::Sqlite => crate::list_indexes::sqlite_table_clause(
                set,
                indexed_search,
                q.order.as_ref().and_then(|o| o.field),
                q.owner.is_some(),
            ),
            DbKind::Postgres => "records".into(),
        };
        let mut sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {table} WHERE {}",
            crate::list_indexes::live_in(set)
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.owner.is_some() {
            sql += &format!(" AND owner_id = {}", next());
        }
        if q.modified_since.is_some() {
            sql += &format!(" AND modified_at >= {}", next());
        }
        if indexed_search {
            sql += &format!(
                " AND rowid IN (SELECT rowid FROM {} WHERE {0} MATCH {})",
                crate::list_indexes::SQLITE_SEARCH_TABLE,
                next()
            );
        }
        if q.text.is_some() {
            sql += &format!(" AND search_text LIKE {} ESCAPE '\\'", next());
        }
        if q.state.is_some() {
            sql += &format!(" AND state = {}", next());
        }
        match &q.order {
            None => {
                if q.before_version.is_some() {
                    sql += &format!(" AND version < {}", next());
                }
                sql += &format!(" ORDER BY version DESC LIMIT {}", next());
            }
            Some(order) => {
                let (cmp, dir) = if order.descending {
                    ("<", "DESC")
                } else {
                    (">", "ASC")
                };
                match (order.field, &order.after) {
                    (Some(field), Some(_)) => {
                        let expr = field_sql(self.kind, field);
                        let (a, b, c) = (next(), next(), next());
                        // The first term bounds the index range; the row
                        // value picks the rows after the position in it.
                        sql += &format!(
                            " AND {expr} {cmp}= {a} AND ({expr}, version) {cmp} ({b}, {c})"
                        );
                        sql += &format!(" ORDER BY {expr} {dir}, version {dir} LIMIT {}", next());
                    }
                    (Some(field), None) => {
                        let expr = field_sql(self.kind, field);
                        sql += &format!(" ORDER BY {expr} {dir}, version {dir} LIMIT {}", next());
                    }
                    (None, after) => {
                        if after.is_some() {
                            sql += &format!(" AND version {cmp} {}", next());
                        }
                        sql += &format!(" ORDER BY version {dir} LIMIT {}", next());
                    }
                }
            }
        }
        let mut query = sqlx::query(&sql);
        if let Some(owner) = q.owner {
            query = query.bind(owner.to_string());
        }
        if let Some(since) = &q.modified_since {
            query = query.bind(since.clone());
        }
        if let Some(text) = &q.text {
            if let Some(phrase) = &fts_phrase {
                query = query.bind(phrase.clone());
            }
            let escaped = text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            query = query.bind(format!("%{escaped}%"));
        }
        if let Some(state) = &q.state {
            query = query.bind(state.clone());
        }
        match &q.order {
            None => {
                if let Some(v) = q.before_version {
                    query = query.bind(v);
                }
            }
            Some(order) => match (order.field, &order.after) {
                (Some(_), Some((value, version))) => {
                    query = query.bind(value.clone()).bind(value.clone()).bind(*version);
                }
                (None, Some((_, version))) => query = query.bind(*version),
                (_, None) => {}
            },
        }
        let rows = query.bind(q.limit).fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// The activities and emails pointing to `target` (their regarding, or
    /// a resolved attendee or party), newest first, at most `limit`, after
    /// the keyset position `(created_at, id)`: one range of `record_links`.
    pub async fn timeline(
        &self,
        target: Uuid,
        sets: &[EntitySet],
        after: Option<(String, Uuid)>,
        limit: i64,
    ) -> Result<Vec<Record>, sqlx::Error> {
        if sets.is_empty() {
            return Ok(vec![]);
        }
        let set_params: Vec<String> = (0..sets.len()).map(|i| format!("${}", i + 2)).collect();
        let mut n = sets.len() + 1;
        let mut sql = format!(
            "SELECT {RECORD_COLUMNS} FROM record_links l JOIN records r ON r.id = l.record_id \
             WHERE l.target_id = $1 AND r.deleted_at IS NULL AND r.entity_set IN ({})",
            set_params.join(", ")
        );
        if after.is_some() {
            sql += &format!(
                " AND (r.created_at < ${a} OR (r.created_at = ${a} AND r.id < ${b}))",
                a = n + 1,
                b = n + 2
            );
            n += 2;
        }
        sql += &format!(" ORDER BY r.created_at DESC, r.id DESC LIMIT ${}", n + 1);
        let mut query = sqlx::query(&sql).bind(target.to_string());
        for set in sets {
            query = query.bind(set.as_str());
        }
        if let Some((created, id)) = after {
            query = query.bind(created).bind(id.to_string());
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Everything changed or deleted after `since`, oldest first: one range
    /// scan of the covering index `records_by_version`.
    pub async fn changes_since(&self, since: i64, limit: i64) -> Result<Vec<Change>, sqlx::Error> {
        self.changes_between(since, i64::MAX, limit).await
    }

    /// Changes in `(since, upto]`, oldest first (prepare reads the sequence
    /// only up to the version it saw committed).
    pub async fn changes_between(
        &self,
        since: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Change>, sqlx::Error> {
        changes_between(&mut *self.pool.acquire().await?, since, upto, limit).await
    }

    /// The highest version handed out so far.
    pub async fn current_version(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM sequence_counter WHERE name = 'version'")
            .fetch_one(&self.pool)
            .await
    }

    /// The user a token hash belongs to, if the user still exists.
    pub async fn user_by_token(&self, hash: &str) -> Result<Option<Record>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT r.id, r.entity_set, r.version, r.owner_id, r.state, r.created_at, r.modified_at, r.data \
             FROM tokens t JOIN records r ON r.id = t.user_id WHERE t.hash = $1 AND r.deleted_at IS NULL",
        )
        .bind(hash.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// A GET by id in one statement: the token's user and the live record
    /// `id` (`None` inside when there is none). `None` when no live user
    /// holds the token. The token is checked against the database on every
    /// call, as `user_by_token` does, so a revoked token or a deleted or
    /// disabled user is refused at once, by every process sharing the
    /// database; it only saves the second round trip (and, on SQLite, the
    /// second hand-off to the connection's thread).
    pub async fn user_and_record(
        &self,
        token_hash: &str,
        id: Uuid,
    ) -> Result<Option<(Record, Option<Record>)>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT u.id AS user_id, u.entity_set AS user_entity_set, u.version AS user_version, \
                    u.owner_id AS user_owner_id, u.state AS user_state, \
                    u.created_at AS user_created_at, u.modified_at AS user_modified_at, \
                    u.data AS user_data, \
                    r.id, r.entity_set, r.version, r.owner_id, r.state, r.created_at, \
                    r.modified_at, r.data \
             FROM tokens t JOIN records u ON u.id = t.user_id AND u.deleted_at IS NULL \
             LEFT JOIN records r ON r.id = $2 AND r.deleted_at IS NULL \
             WHERE t.hash = $1",
        )
        .bind(token_hash.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let data: String = row.try_get("user_data")?;
        let user = Record {
            id: uuid_col(&row, "user_id")?,
            set: set_col(&row, "user_entity_set")?,
            version: row.try_get("user_version")?,
            owner_id: uuid_col(&row, "user_owner_id")?,
            state: row.try_get("user_state")?,
            created_at: row.try_get("user_created_at")?,
            modified_at: row.try_get("user_modified_at")?,
            fields: serde_json::from_str(&data).map_err(|_| corrupt("user data"))?,
        };
        let record = match row.try_get::<Option<String>, _>("id")? {
            Some(_) => Some(record_from_row(&row)?),
            None => None,
        };
        Ok(Some((user, record)))
    }

    pub async fn organization(&self) -> Result<Option<(Uuid, String)>, sqlx::Error> {
        let row = sqlx::query("SELECT id, name FROM organization")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((uuid_col(&r, "id")?, r.try_get("name")?)))
            .transpose()
    }

    pub async fn get_config(&self, kind: &str, key: &str) -> Result<Option<Value>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        get_config(&mut conn, kind, key).await
    }

    pub async fn list_config(&self, kind: &str) -> Result<Vec<(String, Value)>, sqlx::Error> {
        let rows = sqlx::query("SELECT key, data FROM config WHERE kind = $1 ORDER BY key")
            .bind(kind.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get("data")?;
                Ok((
                    r.try_get("key")?,
                    serde_json::from_str(&data).map_err(|_| corrupt("config"))?,
                ))
            })
            .collect()
    }
}

pub async fn get_config(
    conn: &mut AnyConnection,
    kind: &str,
    key: &str,
) -> Result<Option<Value>, sqlx::Error> {
    let data: Option<String> =
        sqlx::query_scalar("SELECT data FROM config WHERE kind = $1 AND key = $2")
            .bind(kind.to_string())
            .bind(key.to_string())
            .fetch_optional(conn)
            .await?;
    data.map(|d| serde_json::from_str(&d).map_err(|_| corrupt("config")))
        .transpose()
}

pub async fn put_config(
    conn: &mut AnyConnection,
    kind: &str,
    key: &str,
    data: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO config (kind, key, data) VALUES ($1, $2, $3) \
         ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data",
    )
    .bind(kind.to_string())
    .bind(key.to_string())
    .bind(data.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_config(
    conn: &mut AnyConnection,
    kind: &str,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM config WHERE kind = $1 AND key = $2")
        .bind(kind.to_string())
        .bind(key.to_string())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn insert_token(
    conn: &mut AnyConnection,
    hash: &str,
    user: Uuid,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO tokens (hash, user_id, created_at) VALUES ($1, $2, $3)")
        .bind(hash.to_string())
        .bind(user.to_string())
        .bind(at.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete_token(conn: &mut AnyConnection, hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM tokens WHERE hash = $1")
        .bind(hash.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete_tokens(conn: &mut AnyConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM tokens WHERE user_id = $1")
        .bind(user.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_organization(
    conn: &mut AnyConnection,
    id: Uuid,
    name: &str,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO organization (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(id.to_string())
        .bind(name.to_string())
        .bind(at.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Restores a tombstone row as exported (import only), still pointing
/// to its series like the row it was exported from (R-E2).
pub async fn insert_tombstone(conn: &mut AnyConnection, t: &Tombstone) -> Result<(), sqlx::Error> {
    let series = t
        .fields
        .get("series_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    sqlx::query(
        "INSERT INTO records (id, entity_set, version, owner_id, state, created_at, modified_at, deleted_at, unique_key, search_text, data, parent_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, NULL, '', $8, $9)",
    )
    .bind(t.id.to_string())
    .bind(t.set.as_str())
    .bind(t.version)
    .bind(t.owner_id.to_string())
    .bind(t.state.clone())
    .bind(t.created_at.clone())
    .bind(t.deleted_at.clone())
    .bind(Value::Object(t.fields.clone()).to_string())
    .bind(series)
    .execute(conn)
    .await?;
    Ok(())
}
