//! The `imap` mailbox backend (SPEC §13 `[mailbox.imap]`): mail folders on
//! an IMAP server behind the [`Mailbox`] trait, with the same conventions as
//! the local Maildir backend.
//!
//! - Collection ids `mail/<folder>` (`mail/INBOX`, `mail/Sent`, `mail/CRM`),
//!   only the configured folders (R-M8); no contacts, calendar or tasks.
//! - Href = the message's UID in decimal. Etag = `<uidvalidity>.<uid>.<modseq>`
//!   with CONDSTORE, else `<uidvalidity>.<uid>.f<hash of the flags>`: it
//!   changes whenever the flags do (messages themselves are immutable).
//! - `changes_since`: with CONDSTORE one `STATUS (UIDVALIDITY HIGHESTMODSEQ)`
//!   answers "nothing changed" in one round trip; with QRESYNC a
//!   `SELECT … (QRESYNC …)` gives changed flags, new messages and `VANISHED`
//!   UIDs. Without them, `UID FETCH 1:* (FLAGS)` is compared with the flags
//!   stored in the state. A new UIDVALIDITY reports every old UID deleted and
//!   every message changed (the agent re-links by Message-ID).
//! - Writes carry preconditions: keywords with `UNCHANGEDSINCE <modseq>`
//!   (a `MODIFIED` answer is [`Error::Conflict`]), else an etag check first;
//!   delete = `STORE \Deleted` + `UID EXPUNGE` of that UID only; create =
//!   `APPEND` (UID from `APPENDUID`); update is refused (immutable).
//! - One connection per mailbox handle, commands serialized; a broken
//!   connection fails the call with [`Error::Remote`] and the next call
//!   reconnects. `watch` runs its own connection (IDLE on INBOX, STATUS
//!   polling of the other folders, reconnecting with back-off).

mod changes;
mod config;
mod conn;
mod fetch;
mod ops;
mod state;
mod utf7;
mod watch;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use crmsync_mailbox::{
    Changes, Collection, Error, Etag, Href, Item, ItemRef, Keyword, Mailbox, Result, SyncState,
    Watch,
};
use tokio::sync::{Mutex, MutexGuard};

pub use config::{ImapConfig, Security, DEFAULT_POLL_INTERVAL};
pub use conn::Stats;

use conn::{Conn, ConnError};
use state::FolderState;

pub(crate) const MAIL_PREFIX: &str = "mail/";
/// A connection unused for longer is replaced before the next command.
const MAX_IDLE_REUSE: std::time::Duration = std::time::Duration::from_secs(240);
/// UIDs per `UID FETCH` of `get_many`/`message_flags`.
pub(crate) const FETCH_CHUNK: usize = 2000;

/// The IMAP backend. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct ImapMailbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: ImapConfig,
    conn: Mutex<Option<Conn>>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for ImapMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapMailbox")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// An operation's failure: the connection broke (drop it) or a mailbox error.
pub(crate) enum OpErr {
    Conn(ConnError),
    Mb(Error),
}

impl From<ConnError> for OpErr {
    fn from(e: ConnError) -> Self {
        OpErr::Conn(e)
    }
}

impl From<Error> for OpErr {
    fn from(e: Error) -> Self {
        OpErr::Mb(e)
    }
}

pub(crate) type OpResult<T> = std::result::Result<T, OpErr>;

impl ImapMailbox {
    /// A mailbox for `config`; it connects on first use.
    pub fn new(config: ImapConfig) -> Self {
        ImapMailbox {
            inner: Arc::new(Inner {
                config,
                conn: Mutex::new(None),
                stats: Arc::new(Stats::default()),
            }),
        }
    }

    /// Connects and logs in now, so a wrong host or password shows at start.
    pub async fn connect(config: ImapConfig) -> Result<Self> {
        if config.security == Security::None && !is_loopback(&config.host) {
            tracing::warn!(server = %config.url(), "IMAP without TLS to a host that is not this machine: the password and mail cross the network in clear; set security = \"tls\" or \"starttls\"");
        }
        let mailbox = ImapMailbox::new(config);
        drop(mailbox.session().await?);
        Ok(mailbox)
    }

    pub fn config(&self) -> &ImapConfig {
        &self.inner.config
    }

    /// Counters of this handle's connections (round trips, commands, logins).
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Round trips to the server so far (pipelined commands count once).
    pub fn round_trips(&self) -> u64 {
        self.inner.stats.round_trips.load(Ordering::Relaxed)
    }

    /// Whether the server's CONDSTORE (and QRESYNC) are in use; connects if needed.
    pub async fn uses_condstore(&self) -> Result<(bool, bool)> {
        let guard = self.session().await?;
        Ok(guard
            .as_ref()
            .map(|c| (c.condstore, c.qresync))
            .unwrap_or_default())
    }

    /// Creates the configured folders the server does not have (e.g. the
    /// tracked folder `CRM`, R-M4) and returns all of them.
    pub async fn ensure_folders(&self) -> Result<Vec<Collection>> {
        let mut guard = self.session().await?;
        let r = ops::ensure_folders(conn_of(&mut guard)?, &self.inner.config).await;
        self.finish(&mut guard, r)
    }

    async fn session(&self) -> Result<MutexGuard<'_, Option<Conn>>> {
        let mut guard = self.inner.conn.lock().await;
        // An interrupted command leaves answers in flight; an idle
        // connection may have been dropped by the server (Dovecot logs out
        // after 30 minutes) or a NAT: start afresh rather than fail.
        if guard
            .as_ref()
            .is_some_and(|c| c.poisoned || c.last_used.elapsed() > MAX_IDLE_REUSE)
        {
            *guard = None;
        }
        if guard.is_none() {
            let conn = Conn::open(&self.inner.config, self.inner.stats.clone())
                .await
                .map_err(|e| remote(&self.inner.config, "", e))?;
            *guard = Some(conn);
        }
        Ok(guard)
    }

    fn finish<T>(&self, guard: &mut MutexGuard<'_, Option<Conn>>, r: OpResult<T>) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(OpErr::Mb(e)) => Err(e),
            Err(OpErr::Conn(e)) => {
                **guard = None;
                Err(remote(&self.inner.config, "", e))
            }
        }
    }

    /// The folder of a collection id, if it is a configured one.
    fn folder<'a>(&'a self, collection: &str) -> Result<&'a str> {
        collection
            .strip_prefix(MAIL_PREFIX)
            .and_then(|name| {
                self.inner
                    .config
                    .folders
                    .iter()
                    .find(|f| f.as_str() == name)
            })
            .map(String::as_str)
            .ok_or_else(|| Error::NoSuchCollection {
                collection: collection.to_owned(),
            })
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn conn_of<'g>(guard: &'g mut MutexGuard<'_, Option<Conn>>) -> Result<&'g mut Conn> {
    guard
        .as_mut()
        .ok_or_else(|| Error::Task("IMAP connection missing".to_owned()))
}

fn remote(config: &ImapConfig, folder: &str, e: ConnError) -> Error {
    let url = if folder.is_empty() {
        config.url()
    } else {
        format!("{}/{folder}", config.url())
    };
    match e {
        ConnError::LoginFailed(_) => Error::AuthenticationFailed {
            url,
            reason: e.to_string(),
        },
        _ => Error::Remote {
            url,
            status: None,
            reason: format!("{e}; the next call reconnects"),
        },
    }
}

fn unsupported(collection: &str, operation: &'static str, reason: &'static str) -> Error {
    Error::Unsupported {
        collection: collection.to_owned(),
        operation,
        reason,
    }
}

#[async_trait]
impl Mailbox for ImapMailbox {
    fn backend(&self) -> &'static str {
        "imap"
    }

    async fn collections(&self) -> Result<Vec<Collection>> {
        let mut guard = self.session().await?;
        let r = ops::list_folders(conn_of(&mut guard)?).await;
        let existing = self.finish(&mut guard, r)?;
        Ok(self
            .inner
            .config
            .folders
            .iter()
            .filter(|f| ops::exists(&existing, f))
            .map(|f| ops::mail_collection(f))
            .collect())
    }

    async fn changes_since(&self, collection: &str, state: Option<&SyncState>) -> Result<Changes> {
        let folder = self.folder(collection)?;
        let old = state
            .map(|s| FolderState::decode(collection, folder, s))
            .transpose()?;
        let mut guard = self.session().await?;
        let rescan = self.config().rescan_interval;
        let r = changes::changes_since(conn_of(&mut guard)?, collection, folder, old, rescan).await;
        self.finish(&mut guard, r)
    }

    async fn get_many(
        &self,
        collection: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<Item>)>> {
        let folder = self.folder(collection)?;
        let mut guard = self.session().await?;
        let r = ops::fetch_many(conn_of(&mut guard)?, collection, folder, hrefs, true).await;
        self.finish(&mut guard, r)
    }

    async fn create(&self, collection: &str, _name: &str, data: &[u8]) -> Result<ItemRef> {
        let folder = self.folder(collection)?;
        let mut guard = self.session().await?;
        let r = ops::create(conn_of(&mut guard)?, collection, folder, data).await;
        self.finish(&mut guard, r)
    }

    async fn update(
        &self,
        collection: &str,
        _href: &str,
        _expected: &Etag,
        _data: &[u8],
    ) -> Result<ItemRef> {
        self.folder(collection)?;
        Err(unsupported(
            collection,
            "update",
            "messages are immutable (RFC 9051); only flags and keywords change",
        ))
    }

    async fn delete(&self, collection: &str, href: &str, expected: &Etag) -> Result<()> {
        let folder = self.folder(collection)?;
        let mut guard = self.session().await?;
        let r = ops::delete(conn_of(&mut guard)?, collection, folder, href, expected).await;
        self.finish(&mut guard, r)
    }

    async fn message_flags(
        &self,
        folder_id: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<ItemRef>)>> {
        let folder = self.folder(folder_id)?;
        let mut guard = self.session().await?;
        let r = ops::fetch_many(conn_of(&mut guard)?, folder_id, folder, hrefs, false).await;
        let items = self.finish(&mut guard, r)?;
        Ok(items
            .into_iter()
            .map(|(href, item)| (href, item.map(|i| i.as_ref())))
            .collect())
    }

    async fn copy_message_to(
        &self,
        folder_id: &str,
        href: &str,
        to: &std::path::Path,
    ) -> Result<u64> {
        let folder = self.folder(folder_id)?;
        let mut guard = self.session().await?;
        let r = ops::copy_message_to(conn_of(&mut guard)?, folder_id, folder, href, to).await;
        self.finish(&mut guard, r)
    }

    async fn search_message_id(
        &self,
        folder_id: &str,
        message_id: &str,
    ) -> Result<Option<Vec<Href>>> {
        let folder = self.folder(folder_id)?;
        let mut guard = self.session().await?;
        let r = ops::search_message_id(conn_of(&mut guard)?, folder_id, folder, message_id).await;
        self.finish(&mut guard, r)
    }

    async fn message_sizes(
        &self,
        folder_id: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<u64>)>> {
        let folder = self.folder(folder_id)?;
        let mut guard = self.session().await?;
        let r = ops::fetch_sizes(conn_of(&mut guard)?, folder_id, folder, hrefs).await;
        self.finish(&mut guard, r)
    }

    async fn store_keywords(
        &self,
        folder_id: &str,
        href: &str,
        expected: &Etag,
        add: &[Keyword],
        remove: &[Keyword],
    ) -> Result<ItemRef> {
        let folder = self.folder(folder_id)?;
        let mut guard = self.session().await?;
        let r = ops::store_keywords(
            conn_of(&mut guard)?,
            folder_id,
            folder,
            href,
            expected,
            add,
            remove,
        )
        .await;
        self.finish(&mut guard, r)
    }

    async fn watch(&self) -> Result<Watch> {
        watch::start(self.inner.config.clone(), self.inner.stats.clone())
            .await
            .map_err(|e| remote(&self.inner.config, "", e))
    }
}
