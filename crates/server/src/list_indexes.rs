//! The indexes behind list queries over large sets (R-W8): the text
//! search of the API's `q` and the web lists' sortable columns. They differ
//! per database, so they are created here at start rather than by the
//! portable migrations, and they follow the code: a sort index no list
//! uses any more is dropped.
//!
//! - Search: SQLite keeps an FTS5 table with the trigram tokenizer over
//!   `records.search_text` (external content, kept by triggers); PostgreSQL
//!   a `pg_trgm` GIN index. Both answer "contains" for three characters or
//!   more, so `q` stays a substring search, as it was with `LIKE`.
//! - Sort: one partial expression index per (set, sortable field) over live
//!   records, `(field value, version)`, the exact expression of
//!   [`crate::store::field_sql`], so a sorted page is an index range.

use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crmsync_core::EntitySet;

use crate::db::DbKind;
use crate::store::field_sql;

/// Prefix of the sort indexes' names: anything with it not wanted now is dropped.
const SORT_PREFIX: &str = "records_sort_";

/// The FTS5 table of SQLite's text search.
pub const SQLITE_SEARCH_TABLE: &str = "records_search";

/// Shortest query the trigram indexes can answer; shorter ones scan.
const MIN_INDEXED_QUERY: usize = 3;

/// A search matching more rows than this is answered by walking the set
/// newest first and keeping the matches (they are common, so a page fills
/// quickly) rather than by reading every match from the full-text index
/// and sorting them (measured at 1,000,000 records: a term in every record
/// took 208 ms through the index, 0.1 ms by the walk).
const FTS_ROWS_WORTH_READING: i64 = 5000;

/// The text search as one FTS5 phrase (its trigrams in a row: the
/// substring) when SQLite should answer it from its full-text index: long
/// enough for trigrams, and few matches there (counted up to a cap, which
/// is cheap). `None`: walk the set instead.
pub async fn sqlite_fts_phrase(pool: &AnyPool, text: &str) -> Result<Option<String>, sqlx::Error> {
    if text.chars().count() < MIN_INDEXED_QUERY {
        return Ok(None);
    }
    let phrase = format!("\"{}\"", text.replace('"', "\"\""));
    let matches: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM (SELECT rowid FROM {SQLITE_SEARCH_TABLE} WHERE {SQLITE_SEARCH_TABLE} MATCH $1 LIMIT {FTS_ROWS_WORTH_READING})"
    ))
    .bind(&phrase)
    .fetch_one(pool)
    .await?;
    Ok((matches < FTS_ROWS_WORTH_READING).then_some(phrase))
}

/// Creates what is missing and drops stale sort indexes. On PostgreSQL
/// under an advisory lock, so `serve` processes starting together on one
/// database do not race on the same `CREATE INDEX`.
pub async fn ensure(pool: &AnyPool, kind: DbKind) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    if kind == DbKind::Postgres {
        // Any constant shared by every process; "crmsync" in ASCII.
        sqlx::query("SELECT pg_advisory_xact_lock(7162109115121110)")
            .execute(&mut *tx)
            .await?;
        // Under the lock: DDL on PostgreSQL is transactional.
    }
    ensure_search(&mut tx, kind).await?;
    ensure_sort(&mut tx, kind).await?;
    tx.commit().await?;
    Ok(())
}

async fn ensure_search(conn: &mut AnyConnection, kind: DbKind) -> anyhow::Result<()> {
    match kind {
        DbKind::Sqlite => {
            let exists = sqlx::query("SELECT 1 FROM sqlite_master WHERE name = $1")
                .bind(SQLITE_SEARCH_TABLE)
                .fetch_optional(&mut *conn)
                .await?
                .is_some();
            if exists {
                return Ok(());
            }
            // The records' implicit rowid links the two tables (records has
            // a TEXT key); crmsync never runs VACUUM, which could renumber it.
            conn.execute(
                "CREATE VIRTUAL TABLE records_search USING fts5(search_text, content='records', content_rowid='rowid', tokenize='trigram');
                 CREATE TRIGGER records_search_insert AFTER INSERT ON records BEGIN
                   INSERT INTO records_search (rowid, search_text) VALUES (new.rowid, new.search_text);
                 END;
                 CREATE TRIGGER records_search_delete AFTER DELETE ON records BEGIN
                   INSERT INTO records_search (records_search, rowid, search_text) VALUES ('delete', old.rowid, old.search_text);
                 END;
                 CREATE TRIGGER records_search_update AFTER UPDATE OF search_text ON records BEGIN
                   INSERT INTO records_search (records_search, rowid, search_text) VALUES ('delete', old.rowid, old.search_text);
                   INSERT INTO records_search (rowid, search_text) VALUES (new.rowid, new.search_text);
                 END;
                 INSERT INTO records_search (records_search) VALUES ('rebuild');",
            )
            .await?;
        }
        DbKind::Postgres => {
            // pg_trgm ships with PostgreSQL (contrib) and is a trusted
            // extension: a database owner may create it. Without it search
            // still works, by a scan.
            let created = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                .execute(&mut *conn)
                .await;
            if let Err(e) = created {
                tracing::warn!(
                    error = %e,
                    "search over large lists will be slow: the pg_trgm extension cannot be created; install PostgreSQL's contrib package or ask the database owner to run CREATE EXTENSION pg_trgm"
                );
                return Ok(());
            }
            conn.execute(
                "CREATE INDEX IF NOT EXISTS records_search_trgm ON records USING gin (search_text gin_trgm_ops) WHERE deleted_at IS NULL",
            )
            .await?;
        }
    }
    Ok(())
}

/// The sort indexes wanted now: `(name, CREATE statement)`.
fn sort_indexes(kind: DbKind) -> Vec<(String, String)> {
    crate::web::WEB_SETS
        .iter()
        .flat_map(|&set| {
            crate::web::sortable_fields(set)
                .into_iter()
                .map(move |field| (set, field))
        })
        .map(|(set, field)| {
            let name = sort_index_name(set, field);
            let create = format!(
                "CREATE INDEX IF NOT EXISTS {name} ON records (({}), version) WHERE {}",
                field_sql(kind, field),
                live_in(set)
            );
            (name, create)
        })
        .collect()
}

fn sort_index_name(set: EntitySet, field: &str) -> String {
    format!("{SORT_PREFIX}{set}_{field}")
}

/// How a list query names `records` on SQLite, so that it reads the index
/// that answers it: SQLite's planner, without statistics, prefers the
/// set's version index and then sorts or filters all of its rows.
/// - A search reads the rows the full-text index found, by rowid.
/// - A sort by a column over the whole set walks that column's index.
///
/// Other queries (a sort within one owner's records, say) are left to the
/// planner; PostgreSQL's planner has statistics and needs no help.
pub fn sqlite_table_clause(
    set: EntitySet,
    indexed_search: bool,
    sort: Option<&str>,
    owner_filter: bool,
) -> String {
    match sort {
        _ if indexed_search => "records NOT INDEXED".into(),
        Some(field) if !owner_filter && crate::web::sortable_fields(set).contains(&field) => {
            format!("records INDEXED BY {}", sort_index_name(set, field))
        }
        _ => "records".into(),
    }
}

/// The partial indexes' condition; a list query must contain it word for
/// word (the set as a literal, not a parameter) for SQLite to use them.
pub fn live_in(set: EntitySet) -> String {
    format!("entity_set = '{set}' AND deleted_at IS NULL")
}

async fn ensure_sort(conn: &mut AnyConnection, kind: DbKind) -> anyhow::Result<()> {
    let existing_sql = match kind {
        DbKind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'"
        }
        DbKind::Postgres => {
            "SELECT CAST(indexname AS TEXT) AS name FROM pg_indexes WHERE tablename = 'records'"
        }
    };
    let existing: Vec<String> = sqlx::query(existing_sql)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.get("name"))
        .filter(|n: &String| n.starts_with(SORT_PREFIX))
        .collect();
    let wanted = sort_indexes(kind);
    for stale in existing
        .iter()
        .filter(|n| !wanted.iter().any(|(w, _)| w == *n))
    {
        conn.execute(format!("DROP INDEX IF EXISTS {stale}").as_str())
            .await?;
    }
    for (name, create) in &wanted {
        if !existing.contains(name) {
            conn.execute(create.as_str()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_index_names_are_plain_identifiers() {
        for kind in [DbKind::Sqlite, DbKind::Postgres] {
            let wanted = sort_indexes(kind);
            assert!(wanted
                .iter()
                .any(|(n, _)| n == "records_sort_contacts_last_name"));
            for (name, _) in wanted {
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{name}"
                );
                // PostgreSQL truncates identifiers at 63 bytes.
                assert!(name.len() <= 63, "{name}");
            }
        }
    }
}
