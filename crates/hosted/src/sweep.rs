//! R-V1: a disconnected mailbox leaves no engine state behind. The server
//! deletes the mailbox's row and its sync client at once; the engine's
//! cache (rows in PostgreSQL, or the cache file and spool folder of a
//! SQLite server) belongs to the workers, who sweep it here: at start and
//! then every few minutes, whatever process deleted the mailbox.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crmsync_agent::cache::Cache;
use crmsync_server::db::DbKind;
use crmsync_server::Store;
use uuid::Uuid;

/// How often the workers look for the caches of disconnected mailboxes.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Removes the caches of mailboxes that are no longer connected; returns
/// how many files, folders and rows went.
pub async fn sweep(store: &Store, cache_dir: &Path) -> anyhow::Result<u64> {
    // Files first, then the mailboxes: a cache file is only made by a cycle
    // of a mailbox that exists, so a file listed before the ids were read
    // whose id is not among them belongs to a deleted mailbox.
    let files = cache_files(cache_dir);
    let live: HashSet<Uuid> = {
        let mut conn = store.pool.acquire().await?;
        crmsync_server::mailboxes::store::ids(&mut conn)
            .await?
            .into_iter()
            .collect()
    };
    let mut removed = 0;
    for (id, path) in files.into_iter().filter(|(id, _)| !live.contains(id)) {
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(mailbox = %id, path = %path.display(), error = %e,
                "cannot remove the cache of a disconnected mailbox"),
        }
    }
    if store.kind == DbKind::Postgres {
        removed += Cache::forget_disconnected(&store.pool).await?;
    }
    Ok(removed)
}

/// The cache files and spool folders in `dir`, by the mailbox id their
/// names start with (`<id>.db`, `<id>.db-wal`, `<id>.spool`, ...).
fn cache_files(dir: &Path) -> Vec<(Uuid, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = Uuid::parse_str(name.to_str()?.get(..36)?).ok()?;
            Some((id, e.path()))
        })
        .collect()
}
