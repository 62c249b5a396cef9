//! R-V4: the work queue of server-side synchronization is the `mailboxes`
//! table itself. A worker claims the due mailbox with the earliest next run
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so claimers never wait on each
//! other; SQLite's single writer serializes claims). A claim is a lease:
//! 90 s, renewed every 30 s while the worker works, with a token that
//! increases at every claim. Every write of a cycle first checks that the
//! token is still the row's (the engine's cache does it in each write
//! transaction, `crmsync_agent::cache::Fence`; `renew` and `finish` here),
//! so a worker that lost its lease (paused, cut off, too slow) writes
//! nothing; a dead holder's lease expires and the next claim takes the
//! mailbox.

use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::MailboxState;
use crate::db::DbKind;
use crate::store::Store;

/// How long a claim holds without renewal.
pub const LEASE_FOR: Duration = Duration::from_secs(90);
/// How often a working holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(30);

/// A worker's claim on one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mailbox: Uuid,
    /// The fencing token: the row's `lease_token` when this claim took it.
    pub token: i64,
    /// The row's `settings_generation` when this claim took it: a PATCH of
    /// the connection settings meanwhile wins over the cycle's outcome.
    pub generation: i64,
}

/// The lease was taken by another claim (or the mailbox deleted): the
/// holder must stop and write nothing more.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("this worker no longer holds mailbox {0}'s lease; another worker has it")]
    Lost(Uuid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The states whose mailboxes are synchronized on schedule (R-V5):
/// `needs_reconnect` waits for new credentials, `disabled` for its user.
const CLAIMABLE: &str = "state IN ('active', 'failing')";

/// Claims the due mailbox (next run at or before `now`, Unix seconds) with
/// the earliest next run whose lease is free or expired, for `holder`. The
/// outer condition repeats the free-lease test: PostgreSQL checks it again
/// on the row as committed by a concurrent claim.
pub async fn claim(store: &Store, holder: &str, now: i64) -> Result<Option<Lease>, sqlx::Error> {
    let skip_locked = match store.kind {
        DbKind::Postgres => " FOR UPDATE SKIP LOCKED",
        DbKind::Sqlite => "",
    };
    let sql = format!(
        "UPDATE mailboxes SET lease_token = lease_token + 1, lease_holder = $1, lease_expires_at = $2 \
         WHERE (lease_expires_at IS NULL OR lease_expires_at < $3) \
           AND id = (SELECT id FROM mailboxes WHERE {CLAIMABLE} AND next_run_at <= $3 \
           AND (lease_expires_at IS NULL OR lease_expires_at < $3) \
           ORDER BY next_run_at LIMIT 1{skip_locked}) \
         RETURNING id, lease_token, settings_generation"
    );
    // Idle workers ask often: look first without taking SQLite's write lock.
    let due = sqlx::query(&format!(
        "SELECT 1 FROM mailboxes WHERE {CLAIMABLE} AND next_run_at <= $1 \
         AND (lease_expires_at IS NULL OR lease_expires_at < $1) LIMIT 1"
    ))
    .bind(now)
    .fetch_optional(&store.pool)
    .await?;
    if due.is_none() {
        return Ok(None);
    }
    let mut tx = store.begin().await?;
    let row = sqlx::query(&sql)
        .bind(holder)
        .bind(now + LEASE_FOR.as_secs() as i64)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    row.map(|r| {
        let id: String = r.try_get("id")?;
        Ok(Lease {
            mailbox: Uuid::parse_str(&id)
                .map_err(|_| sqlx::Error::Decode("stored mailbox id is not a UUID".into()))?,
            token: r.try_get("lease_token")?,
            generation: r.try_get("settings_generation")?,
        })
    })
    .transpose()
}

/// Extends the lease to `now` + [`LEASE_FOR`]; `Lost` when another claim
/// took it meanwhile.
pub async fn renew(store: &Store, lease: &Lease, now: i64) -> Result<(), LeaseError> {
    let done = sqlx::query(
        "UPDATE mailboxes SET lease_expires_at = $3 WHERE id = $1 AND lease_token = $2",
    )
    .bind(lease.mailbox.to_string())
    .bind(lease.token)
    .bind(now + LEASE_FOR.as_secs() as i64)
    .execute(&store.pool)
    .await?;
    match done.rows_affected() {
        1 => Ok(()),
        _ => Err(LeaseError::Lost(lease.mailbox)),
    }
}

/// How a cycle ended (R-V5): the mailbox's health and next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleEnd {
    pub state: MailboxState,
    /// Unix seconds.
    pub next_run_at: i64,
    /// Set when the cycle succeeded (else the last success is kept).
    pub succeeded_at: Option<String>,
    /// What failed, with the fix; `None` after a success.
    pub error: Option<String>,
    /// The cycle's counts (JSON), when it got that far.
    pub counts: Option<String>,
    /// Transient failures in a row.
    pub failures: i64,
}

/// Ends the cycle: records its outcome, sets the next run and frees the
/// lease, if the lease is still this holder's (else `Lost`, and nothing
/// changes). When the connection settings changed during the cycle (a new
/// password, say), the state, error and next run the change set stay: the
/// outcome was reached with the old settings.
pub async fn finish(store: &Store, lease: &Lease, end: &CycleEnd) -> Result<(), LeaseError> {
    let done = sqlx::query(
        "UPDATE mailboxes SET lease_holder = NULL, lease_expires_at = NULL, \
           next_run_at = CASE WHEN settings_generation = $9 THEN $3 ELSE next_run_at END, \
           state = CASE WHEN settings_generation = $9 THEN $4 ELSE state END, \
           last_success_at = COALESCE($5, last_success_at), \
           last_error = CASE WHEN settings_generation = $9 THEN $6 ELSE last_error END, \
           last_counts = COALESCE($7, last_counts), \
           failures = CASE WHEN settings_generation = $9 THEN $8 ELSE failures END \
         WHERE id = $1 AND lease_token = $2",
    )
    .bind(lease.mailbox.to_string())
    .bind(lease.token)
    .bind(end.next_run_at)
    .bind(end.state.as_str())
    .bind(end.succeeded_at.clone())
    .bind(end.error.clone())
    .bind(end.counts.clone())
    .bind(end.failures)
    .bind(lease.generation)
    .execute(&store.pool)
    .await?;
    match done.rows_affected() {
        1 => Ok(()),
        _ => Err(LeaseError::Lost(lease.mailbox)),
    }
}

/// R-T7 for connected mailboxes: the active mailboxes that a record
/// changed after version `after` (up to `upto`) may concern are due at
/// `now`: its owner's, and those whose mailbox holds it (`sync_entries`,
/// say an appointment Ann was invited to, edited by its organizer). Each
/// is a range of the version index (joined by an index), so the cost
/// follows the changes. A record new to a mailbox through another user's
/// filter match (a new invitation) waits for the schedule. The mailbox of
/// `pushed_by`, the client whose pushes made all these changes, already
/// shows them and is left alone.
pub async fn wake_mailboxes_of_changes(
    store: &Store,
    after: i64,
    upto: i64,
    now: i64,
    pushed_by: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE mailboxes SET next_run_at = $1 WHERE state = 'active' AND next_run_at > $1 AND client_id <> $4 AND ( \
           user_id IN (SELECT owner_id FROM records WHERE version > $2 AND version <= $3) \
           OR client_id IN (SELECT e.client_id FROM records r JOIN sync_entries e ON e.record_id = r.id \
                            WHERE r.version > $2 AND r.version <= $3))",
    )
    .bind(now)
    .bind(after)
    .bind(upto)
    // No client id is empty: nobody is left out.
    .bind(pushed_by.map(|c| c.to_string()).unwrap_or_default())
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected())
}
