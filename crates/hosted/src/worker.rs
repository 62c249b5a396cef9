//! R-V4/R-V5: the sync workers of `crmsync serve --sync-workers N`. Each
//! worker claims the due mailbox with the earliest next run (a lease,
//! `crmsync_server::mailboxes::lease`), runs one cycle of the agent's
//! engine on it, records the outcome and the next run, and frees it.
//!
//! A cycle is the agent's `sync_once` with the engine's state in the
//! server's database (PostgreSQL: the `mailbox_cache_*` tables, every
//! write fenced by the lease token) or, on a SQLite server (one process),
//! in a cache file per mailbox beside the database. The engine talks to
//! the CRM through this server's own API, as the mailbox's user, with a
//! token minted for the cycle and deleted after it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crmsync_agent::cache::{Cache, Fence, LeaseLost};
use crmsync_agent::config::{Config, MAX_MESSAGE_SIZE};
use crmsync_agent::engine::{Agent, SyncOptions, SyncReport};
use crmsync_server::changes::{Kinds, Look};
use crmsync_server::db::DbKind;
use crmsync_server::mailboxes::lease::{self, CycleEnd, Lease, RENEW_EVERY};
use crmsync_server::mailboxes::{self, Connection, MailboxState};
use crmsync_server::Store;

use crate::sweep;

/// How long one cycle may take; its progress is saved as it goes (every
/// item is committed), so the next cycle goes on from there.
const CYCLE_BUDGET: Duration = Duration::from_secs(300);
/// How often an idle worker looks for a due mailbox.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// R-V5: backoff after transient failures: 1 minute, doubling, at most 1 hour.
const BACKOFF_FIRST_SECS: i64 = 60;
const BACKOFF_MAX_SECS: i64 = 3600;
/// R-V5: the default cap of cycles at once against one mail or DAV server
/// (`serve --sync-connections-per-host`).
pub const DEFAULT_CONNECTIONS_PER_HOST: usize = 8;
/// The longest wait a server's `Retry-After` can impose (R-V5).
const RETRY_AFTER_MAX_SECS: i64 = 86_400;
/// The next run of a mailbox whose owner turned the scheduled sync off:
/// a daily look (a "Resync" runs it at once).
const UNSCHEDULED_SECS: i64 = 86_400;

/// Where the workers run and what they reach.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub count: usize,
    /// This server's API, as the engine calls it (`http://127.0.0.1:8480`).
    pub crm_url: String,
    /// The folder of the per-mailbox cache files (SQLite) and of the large
    /// messages spooled while they are sent (both databases; on PostgreSQL
    /// the journal keeps a copy, so any process can send them).
    pub cache_dir: PathBuf,
    /// Names this process in `lease_holder` (host and process id).
    pub holder: String,
    /// R-V5: at most this many cycles of this process at once against one
    /// mail or DAV server.
    pub connections_per_host: usize,
}

/// The running workers; dropping it stops them (a cycle cut off loses
/// nothing: its lease expires and its progress was committed).
pub struct Workers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    store: Store,
    settings: WorkerSettings,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Starts `settings.count` workers.
pub async fn start(store: Store, settings: WorkerSettings) -> anyhow::Result<Workers> {
    std::fs::create_dir_all(&settings.cache_dir)?;
    if store.kind == DbKind::Postgres {
        Cache::prepare_database(&store.pool).await?;
    }
    let shared = Arc::new(Shared {
        store,
        settings,
        hosts: Mutex::new(HashMap::new()),
    });
    let mut tasks: Vec<JoinHandle<()>> = (0..shared.settings.count)
        .map(|n| {
            let shared = shared.clone();
            tokio::spawn(async move { work(&shared, n).await })
        })
        .collect();
    let waker = shared.clone();
    tasks.push(tokio::spawn(
        async move { wake_on_crm_changes(&waker).await },
    ));
    let sweeper = shared.clone();
    tasks.push(tokio::spawn(async move { sweep_forever(&sweeper).await }));
    Ok(Workers { tasks })
}

/// R-V1: the caches of disconnected mailboxes go, whichever process
/// disconnected them.
async fn sweep_forever(shared: &Shared) {
    loop {
        match sweep::sweep(&shared.store, &shared.settings.cache_dir).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed the caches of disconnected mailboxes"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove the caches of disconnected mailboxes")
            }
        }
        tokio::time::sleep(sweep::SWEEP_EVERY).await;
    }
}

/// R-T7 for connected mailboxes: a CRM change (committed by any process
/// of the database, heard through the change feed) makes the mailboxes it
/// may concern due now, as a running agent is woken.
async fn wake_on_crm_changes(shared: &Shared) {
    let feed = &shared.store.changes;
    let mut seen = feed.version();
    loop {
        let look = feed
            .wait(
                seen,
                feed.rules_seen(),
                Kinds::ALL,
                uuid::Uuid::nil(),
                Duration::from_secs(60),
            )
            .await;
        if look == Look::Closing {
            return;
        }
        // A burst of edits wakes each mailbox once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let upto = feed.version();
        if upto > seen {
            let pushed_by = feed.sole_origin(seen, upto);
            let woken =
                lease::wake_mailboxes_of_changes(&shared.store, seen, upto, unix_now(), pushed_by);
            match woken.await {
                Ok(_) => seen = upto,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make the mailboxes of changed records due")
                }
            }
        }
    }
}

async fn work(shared: &Shared, n: usize) {
    let holder = format!("{} worker {n}", shared.settings.holder);
    loop {
        match lease::claim(&shared.store, &holder, unix_now()).await {
            Ok(Some(claimed)) => run(shared, &claimed).await,
            Ok(None) => tokio::time::sleep(IDLE_POLL).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for due mailboxes; trying again");
                tokio::time::sleep(IDLE_POLL * 5).await;
            }
        }
    }
}

/// What ended a cycle early.
enum Failure {
    /// The mail or DAV server refused the credentials (R-V5).
    Credentials(String),
    /// Another worker holds the mailbox now (or it was deleted): nothing
    /// more may be written, the outcome included.
    LeaseLost(String),
    Transient(String),
    /// The server asked to be left alone this long (`Retry-After`).
    Throttled(String, Duration),
}

/// One cycle under the lease, renewed while it runs; then its outcome.
async fn run(shared: &Shared, claimed: &Lease) {
    let renewing = async {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            if let Err(e) = lease::renew(&shared.store, claimed, unix_now()).await {
                return e;
            }
        }
    };
    let outcome = tokio::select! {
        done = cycle(shared, claimed) => done,
        lost = renewing => Err(Failure::LeaseLost(lost.to_string())),
    };
    let label = match &outcome {
        Ok(_) => "ok",
        Err(Failure::Credentials(_)) => "needs_reconnect",
        Err(Failure::Transient(_)) | Err(Failure::Throttled(..)) => "failing",
        Err(Failure::LeaseLost(_)) => "lease_lost",
    };
    metrics::counter!("crmsync_mailbox_cycles_total", "outcome" => label).increment(1);
    if let Err(Failure::LeaseLost(why)) = &outcome {
        tracing::warn!(mailbox = %claimed.mailbox, why, "the cycle stopped: this worker no longer holds the mailbox");
        return;
    }
    let end = cycle_end(shared, claimed, outcome).await;
    match end {
        Ok(end) => {
            if let Err(e) = lease::finish(&shared.store, claimed, &end).await {
                tracing::warn!(mailbox = %claimed.mailbox, error = %e, "cannot record the cycle's end");
            }
        }
        Err(e) => {
            tracing::warn!(mailbox = %claimed.mailbox, error = %e, "cannot record the cycle's end")
        }
    }
}

/// The mailbox's state and next run after a cycle (R-V5).
async fn cycle_end(
    shared: &Shared,
    claimed: &Lease,
    outcome: Result<(SyncReport, i64), Failure>,
) -> anyhow::Result<CycleEnd> {
    let mut conn = shared.store.pool.acquire().await?;
    let failures = mailboxes::store::get(&mut conn, claimed.mailbox)
        .await?
        .map_or(0, |m| m.failures)
        + 1;
    Ok(end_of(outcome, unix_now(), failures))
}

/// R-V5 as a table: the state and next run after a cycle that ended at
/// `now` with `outcome`, `failures` being the failures in a row this one
/// included.
fn end_of(outcome: Result<(SyncReport, i64), Failure>, now: i64, failures: i64) -> CycleEnd {
    let failed = |state, next_run_at, error| CycleEnd {
        state,
        next_run_at,
        succeeded_at: None,
        error: Some(error),
        counts: None,
        failures,
    };
    match outcome {
        Ok((report, interval)) => CycleEnd {
            state: MailboxState::Active,
            next_run_at: now + interval,
            succeeded_at: Some(crmsync_core::time::now_timestamp()),
            error: None,
            counts: Some(counts(&report).to_string()),
            failures: 0,
        },
        // Not tried again until the credentials change (a PATCH makes it
        // active and due); the next run only orders it among the others.
        Err(Failure::Credentials(e)) => {
            failed(MailboxState::NeedsReconnect, now + BACKOFF_MAX_SECS, e)
        }
        Err(Failure::Transient(e)) | Err(Failure::LeaseLost(e)) => {
            failed(MailboxState::Failing, now + backoff(failures), e)
        }
        // R-V5: the server's word, not the backoff, says when to come back.
        Err(Failure::Throttled(e, after)) => {
            let wait = i64::try_from(after.as_secs()).unwrap_or(RETRY_AFTER_MAX_SECS);
            failed(
                MailboxState::Failing,
                now + wait.clamp(1, RETRY_AFTER_MAX_SECS),
                e,
            )
        }
    }
}

/// R-V5: 1 minute after the first failure, doubling, at most an hour, with
/// up to a fifth of jitter so that mailboxes failing together spread out.
fn backoff(failures: i64) -> i64 {
    let base = (BACKOFF_FIRST_SECS << (failures - 1).clamp(0, 6)).min(BACKOFF_MAX_SECS);
    base + rand::Rng::gen_range(&mut rand::thread_rng(), 0..=base / 5)
}

/// The last cycle's counts, for the API, the Sync page and `/metrics`.
fn counts(r: &SyncReport) -> serde_json::Value {
    json!({
        "written_to_mailbox": r.written_to_mailbox,
        "deleted_from_mailbox": r.deleted_from_mailbox,
        "acknowledged": r.acknowledged,
        "pushed": r.pushed.values().sum::<usize>(),
        "skipped": r.skipped.len(),
        "errors": r.errors.len(),
        "elapsed_ms": r.elapsed_ms.round(),
    })
}

/// One synchronization of the mailbox: `(what it did, the owner's interval
/// in seconds)`.
async fn cycle(shared: &Shared, claimed: &Lease) -> Result<(SyncReport, i64), Failure> {
    let store = &shared.store;
    let mailbox = {
        let mut conn = store.pool.acquire().await.map_err(transient)?;
        mailboxes::store::get(&mut conn, claimed.mailbox)
            .await
            .map_err(transient)?
            .ok_or_else(|| Failure::LeaseLost("the mailbox was deleted".into()))?
    };
    let connection =
        mailboxes::connection(store, mailbox).map_err(|e| Failure::Transient(e.message))?;
    let _permits = host_permits(shared, &connection).await;
    let token = CycleToken::mint(store, connection.mailbox.user_id)
        .await
        .map_err(transient)?;
    // The budget bounds the engine only, so the token is revoked either way.
    let synced = tokio::time::timeout(
        CYCLE_BUDGET,
        sync_once(shared, claimed, &connection, &token.token),
    )
    .await;
    token.revoke(store).await;
    match synced {
        Ok(done) => done.map_err(classify),
        Err(_) => Err(Failure::Transient(format!(
            "the cycle took longer than {} s; it goes on from where it stopped at the next run",
            CYCLE_BUDGET.as_secs()
        ))),
    }
}

async fn sync_once(
    shared: &Shared,
    claimed: &Lease,
    connection: &Connection,
    token: &str,
) -> anyhow::Result<(SyncReport, i64)> {
    let m = &connection.mailbox;
    let id = m.id.to_string();
    let cache_file = shared.settings.cache_dir.join(format!("{id}.db"));
    let cache = match shared.store.kind {
        DbKind::Postgres => Cache::in_database(
            shared.store.pool.clone(),
            &id,
            Some(Fence {
                key: id.clone(),
                token: claimed.token,
            }),
        )?,
        DbKind::Sqlite => Cache::open(&cache_file).await?,
    };
    let config = Config {
        crm_url: shared.settings.crm_url.clone(),
        token: token.to_string(),
        client_name: m.name.clone(),
        cache: cache_file,
        on_behalf_of: None,
        local_root: None,
        // Replaced by the owner's R-T1 schedule at registration.
        interval: Duration::from_secs(UNSCHEDULED_SECS as u64),
        max_message_size: MAX_MESSAGE_SIZE,
        mail: connection
            .imap
            .as_ref()
            .map(|(_, folders)| folders.clone())
            .unwrap_or_default(),
        dav: connection.dav.clone(),
        imap: connection.imap.as_ref().map(|(imap, _)| imap.clone()),
        offline: None,
    };
    let agent = Agent::with_cache(config, cache).await?;
    let feed = &shared.store.changes;
    let rules = feed.rules_seen();
    let report = agent.sync_once(SyncOptions::default()).await?;
    // R-T7: a CRM change that concerns the mailbox, committed after this
    // cycle's prepare (not one of its own pushes), makes it due at once;
    // the waker's mark would be overwritten by this cycle's end.
    let changed_since = agent.crm_position().is_some_and(|(client, since)| {
        uuid::Uuid::parse_str(&client)
            .is_ok_and(|c| feed.look_now(since, rules, Kinds::ALL, c) == Look::Changed)
    });
    // R-T1 as the registration answered it (the owner's settings).
    let interval = match changed_since {
        true => 0,
        false => agent
            .scheduled_interval()
            .map_or(UNSCHEDULED_SECS, |d| d.as_secs() as i64),
    };
    Ok((report, interval))
}

/// R-V5: waits for a free connection slot on each server the mailbox
/// uses (its IMAP host, its DAV hosts), taken in name order so that two
/// cycles never wait on each other.
async fn host_permits(shared: &Shared, c: &Connection) -> Vec<tokio::sync::OwnedSemaphorePermit> {
    let mut hosts: Vec<String> = c.imap.iter().map(|(i, _)| i.host.clone()).collect();
    if let Some(dav) = &c.dav {
        let urls = [&dav.contacts, &dav.calendar, &dav.tasks, &dav.server];
        hosts.extend(
            urls.into_iter()
                .flatten()
                .filter_map(|u| url::Url::parse(u).ok()?.host_str().map(str::to_string)),
        );
    }
    hosts.sort();
    hosts.dedup();
    let mut permits = Vec::with_capacity(hosts.len());
    for host in hosts {
        let slots = shared
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host)
            .or_insert_with(|| {
                Arc::new(Semaphore::new(shared.settings.connections_per_host.max(1)))
            })
            .clone();
        permits.extend(slots.acquire_owned().await.ok());
    }
    permits
}

fn transient(e: impl std::fmt::Display) -> Failure {
    Failure::Transient(e.to_string())
}

/// A refused password stops the mailbox until new credentials come; a
/// lost lease ends the cycle; anything else is retried with backoff.
fn classify(e: anyhow::Error) -> Failure {
    let mailbox_errors = || {
        e.chain()
            .filter_map(|c| c.downcast_ref::<crmsync_mailbox::Error>())
    };
    let refused = mailbox_errors().any(|m| m.is_authentication_failure());
    let retry_after = mailbox_errors().find_map(|m| m.retry_after());
    if refused {
        Failure::Credentials(format!("{e:#}"))
    } else if let Some(after) = retry_after {
        Failure::Throttled(format!("{e:#}"), after)
    } else if e.is::<LeaseLost>() {
        Failure::LeaseLost(format!("{e:#}"))
    } else {
        Failure::Transient(format!("{e:#}"))
    }
}

/// An API token of the mailbox's user for one cycle: the engine reaches
/// the CRM through this server's API like an agent. Only its hash is
/// stored, and it is deleted when the cycle ends.
struct CycleToken {
    token: String,
}

impl CycleToken {
    async fn mint(store: &Store, user: uuid::Uuid) -> Result<CycleToken, sqlx::Error> {
        let token = crmsync_server::auth::new_token();
        let mut conn = store.pool.acquire().await?;
        crmsync_server::store::insert_token(
            &mut conn,
            &crmsync_server::auth::hash_token(&token),
            user,
            &crmsync_core::time::now_timestamp(),
        )
        .await?;
        Ok(CycleToken { token })
    }

    async fn revoke(self, store: &Store) {
        let hash = crmsync_server::auth::hash_token(&self.token);
        let deleted = match store.pool.acquire().await {
            Ok(mut conn) => crmsync_server::store::delete_token(&mut conn, &hash).await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "cannot delete a sync worker's token");
        }
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(e: crmsync_mailbox::Error) -> Failure {
        classify(anyhow::Error::new(e).context("synchronizing the address book"))
    }

    #[test]
    fn r_v5_a_server_asking_to_wait_is_left_alone_that_long() {
        let busy = failure(crmsync_mailbox::Error::Throttled {
            url: "http://dav.example/".into(),
            reason: "429 Too Many Requests".into(),
            retry_after: Duration::from_secs(600),
        });
        let end = end_of(Err(busy), 1_000, 1);
        assert_eq!((end.state, end.next_run_at), (MailboxState::Failing, 1_600));
        // Without a Retry-After the backoff applies: 1 minute (+ jitter).
        let lost = failure(crmsync_mailbox::Error::Remote {
            url: "http://dav.example/".into(),
            status: None,
            reason: "cannot connect".into(),
        });
        let end = end_of(Err(lost), 1_000, 1);
        assert!(
            (1_060..=1_072).contains(&end.next_run_at),
            "{}",
            end.next_run_at
        );
    }

    #[test]
    fn r_v5_refused_credentials_wait_for_new_ones() {
        let refused = failure(crmsync_mailbox::Error::AuthenticationFailed {
            url: "imap://mail.example".into(),
            reason: "the server refused the password".into(),
        });
        let end = end_of(Err(refused), 1_000, 3);
        assert_eq!(end.state, MailboxState::NeedsReconnect);
        assert!(end.error.unwrap().contains("refused the password"));
    }

    #[test]
    fn r_v5_backoff_doubles_from_a_minute_to_at_most_an_hour() {
        for (failures, base) in [(1, 60), (2, 120), (3, 240), (7, 3600), (30, 3600)] {
            let wait = backoff(failures);
            assert!(
                (base..=base + base / 5).contains(&wait),
                "{failures}: {wait}"
            );
        }
    }
}
