//! R-T7 across processes: every `serve` process attached to one PostgreSQL
//! database holds one listening connection on [`CHANGES_CHANNEL`] and
//! feeds what it hears (the notifications each commit sends, its own
//! included) to its waiters. When the connection drops it reconnects with
//! back-off, then takes everything up to the committed version as possibly
//! missed, which wakes the waiters behind it once.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::changes::Committed;
use crate::db::DbKind;
use crate::store::{committed_version, Store, CHANGES_CHANNEL, RULES_CHANGED};

const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Starts the listener of a PostgreSQL store (SQLite has one process: the
/// commit path tells the waiters directly).
pub fn spawn(store: &Store) -> Option<tokio::task::JoinHandle<()>> {
    (store.kind == DbKind::Postgres).then(|| tokio::spawn(listen(store.clone())))
}

async fn listen(store: Store) {
    let mut retry = FIRST_RETRY;
    loop {
        match connect(&store).await {
            Ok(mut listener) => {
                retry = FIRST_RETRY;
                hear(&store, &mut listener).await;
                tracing::warn!(
                    "lost the database connection that hears other servers' changes; reconnecting"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other servers' changes; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
}

/// Listens, then marks what committed before listening began as possibly
/// missed (notifications are not kept for absent listeners).
async fn connect(store: &Store) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(&store.url).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    let committed = committed_version(&mut *store.pool.acquire().await?).await?;
    store.changes.missed_up_to(committed);
    Ok(listener)
}

/// Feeds notifications to the waiters until the connection is lost.
async fn hear(store: &Store, listener: &mut PgListener) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) if n.payload() == RULES_CHANGED => store.changes.rules_changed(),
            Ok(Some(n)) => match Committed::from_payload(n.payload()) {
                Some(change) => store.changes.publish(change),
                None => tracing::warn!(payload = n.payload(), "unreadable change notification"),
            },
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the change listener failed");
                return;
            }
        }
    }
}
