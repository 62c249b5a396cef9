//! Connecting to SQLite or PostgreSQL through one sqlx `Any` pool, and the
//! versioned migrations applied at start.
//!
//! The SQL in this crate is written once for both databases: numbered `$N`
//! parameters (SQLite accepts them too), TEXT and BIGINT columns only.

use anyhow::{bail, Context};
use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};
use std::path::Path;
use std::time::Duration;

/// A pooled connection idle at least this long is pinged before use (the
/// database may have restarted meanwhile). sqlx's default pings on every
/// acquire: a PostgreSQL round trip (a SQLite worker hop) before each query,
/// which was a third of a REST GET's time.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// Turns what the user typed (`sqlite://path`, `sqlite:path`, a bare path
/// or a `postgres://` URL) into a connection URL, creating the SQLite
/// file's folder on first use.
pub fn normalize_url(url: &str) -> anyhow::Result<(DbKind, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((DbKind::Postgres, url.to_string()));
    }
    if url.contains("://") && !url.starts_with("sqlite://") {
        bail!("--db {url}: unsupported database URL; use sqlite://PATH or postgres://USER@HOST:PORT/DB");
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        bail!("--db {url}: give a file path, e.g. sqlite://./crmsync-data/crm.db (an in-memory database would lose everything)");
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--db {url}: cannot create folder {}", dir.display()))?;
    }
    Ok((DbKind::Sqlite, format!("sqlite://{path}?mode=rwc")))
}

/// `name` in the folder of a SQLite database; none for PostgreSQL, whose
/// server is elsewhere.
pub fn beside_sqlite(db_url: &str, name: &str) -> Option<std::path::PathBuf> {
    let (kind, url) = normalize_url(db_url).ok()?;
    if kind != DbKind::Sqlite {
        return None;
    }
    let path = url.strip_prefix("sqlite://")?.split('?').next()?;
    let dir = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(dir.join(name))
}

/// Opens the pool and brings the schema up to date.
pub async fn connect(url: &str) -> anyhow::Result<(DbKind, AnyPool)> {
    install_default_drivers();
    let (kind, url) = normalize_url(url)?;
    let options = AnyPoolOptions::new()
        .max_connections(if kind == DbKind::Sqlite { 8 } else { 16 })
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if kind == DbKind::Sqlite {
                    // WAL lets readers go on while one writer commits;
                    // NORMAL sync is durable across application crashes.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000")
                        .await?;
                }
                Ok(())
            })
        });
    let pool = options.connect(&url).await.with_context(|| {
        format!("cannot open the database {url}: check that it is reachable and that the user may connect")
    })?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("cannot apply database migrations")?;
    crate::store::backfill_links(&pool)
        .await
        .context("cannot index the records' links for timelines")?;
    Ok((kind, pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/crm.db");
        let (kind, url) = normalize_url(p.to_str().unwrap()).unwrap();
        assert_eq!(kind, DbKind::Sqlite);
        assert!(url.ends_with("crm.db?mode=rwc"));
        assert!(dir.path().join("a/b").is_dir());
        assert_eq!(
            normalize_url("postgres://u@h/db").unwrap().0,
            DbKind::Postgres
        );
        assert!(normalize_url("mysql://x")
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
        assert!(normalize_url("sqlite::memory:").is_err());
    }
}
