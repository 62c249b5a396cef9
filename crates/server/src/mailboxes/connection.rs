//! A connected mailbox as its servers see it: the sections with their
//! passwords decrypted (R-V2), for R-V1's connection test and R-V4's
//! workers. Connecting needs the mail backends, which live outside this
//! crate: `crmsync-hosted` implements [`ConnectionTest`] and the binary
//! hands it to the store.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crmsync_mailbox::settings::{DavSettings, ImapSettings, MailFolders};

use super::store::{self, Mailbox};
use super::{checked, key_of, own, unreadable, Passwords};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::Store;

/// What connecting to a mailbox needs.
#[derive(Debug, Clone)]
pub struct Connection {
    pub mailbox: Mailbox,
    pub dav: Option<DavSettings>,
    pub imap: Option<(ImapSettings, MailFolders)>,
}

/// One finding of a connection test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was tried, in words ("IMAP sign-in", "address book").
    pub what: String,
    pub status: CheckStatus,
    /// What was found, and for a warning or failure the fix.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    /// Works, less well (no CONDSTORE: every cycle reads all flags).
    Warning,
    /// Does not work: synchronization of that part fails until fixed.
    Failed,
}

/// Connects to a mailbox's servers and says what works (R-V1).
#[async_trait::async_trait]
pub trait ConnectionTest: Send + Sync {
    async fn test(&self, connection: &Connection) -> Vec<Check>;
}

/// The mailbox's sections with their passwords, checked as the agent
/// checks its configuration.
pub fn connection(store: &Store, mailbox: Mailbox) -> ApiResult<Connection> {
    let key = key_of(store)?;
    let passwords = Passwords::open(key, mailbox.id, &mailbox.secret).map_err(unreadable)?;
    let stored = |e: String| {
        ApiError::conflict(
            "settings_unusable",
            format!("{e}; change the mailbox's settings (PATCH) to fix it"),
        )
    };
    let (imap, dav) = checked(&mailbox.settings, &passwords, |p| {
        p.clone().ok_or_else(|| "no password is stored".to_string())
    })
    .map_err(stored)?;
    Ok(Connection { mailbox, dav, imap })
}

/// `POST /api/v1/mailboxes/{id}/test`.
pub async fn test(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Value> {
    let mailbox = own(store, caller, id).await?;
    let connection = connection(store, mailbox)?;
    let Some(tester) = store.connection_test.as_deref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "cannot_connect",
            "this server process cannot connect to mailboxes; run the `crmsync serve` command",
        ));
    };
    let checks = tester.test(&connection).await;
    let ok = checks.iter().all(|c| c.status != CheckStatus::Failed);
    Ok(json!({"id": id, "ok": ok, "checks": checks}))
}

/// `POST /api/v1/mailboxes/{id}/sync` ("Resync"): due now, whatever its
/// schedule or backoff. A mailbox waiting for new credentials stays so.
pub async fn resync(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Value> {
    let mailbox = own(store, caller, id).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut conn = store.pool.acquire().await?;
    store::set_next_run(&mut conn, mailbox.id, now).await?;
    Ok(json!({"id": id, "queued": true, "state": mailbox.state.as_str()}))
}
