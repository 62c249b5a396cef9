//! The one error type of every backend. Each message says what failed, on
//! which collection/item, and what happens next or what to do (STYLE.md §8).

use std::path::PathBuf;
use std::time::Duration;

use crate::types::Etag;

/// Result of a mailbox operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a mailbox operation.
///
/// Whole-call failures (`NoSuchCollection`, `Io` on a folder, `Watch`) come
/// back as the `Err` of the call; per-item failures of bulk calls
/// (`get_many`, `message_flags`, `changes_since`) come back next to the items
/// that did work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{collection}: no such collection; check the [mailbox] section of the agent configuration"
    )]
    NoSuchCollection { collection: String },

    #[error("{collection}/{href}: not found (deleted or moved by another client); the next sync picks up the deletion")]
    NotFound { collection: String, href: String },

    /// The precondition failed: the item is no longer the version the caller
    /// read. Nothing was written; `current` is the etag the item has now.
    #[error("{collection}/{href}: changed by another client since it was read (now etag {current}); nothing was written, read it again and merge")]
    Conflict {
        collection: String,
        href: String,
        current: Etag,
    },

    /// `create` refused: the name is taken. Nothing was written.
    #[error("{collection}/{href}: already exists; nothing was written, read the existing item and update it instead")]
    AlreadyExists { collection: String, href: String },

    /// The item's bytes are not what the collection holds (e.g. a `.vcf`
    /// that is not a vCard). Only the framing is checked, never the fields.
    #[error("{collection}/{href}: {reason}; the item is skipped and listed in `crmsync status`")]
    Malformed {
        collection: String,
        href: String,
        reason: String,
    },

    #[error("{collection}: {operation} is not possible here: {reason}")]
    Unsupported {
        collection: String,
        operation: &'static str,
        reason: &'static str,
    },

    #[error("keyword {keyword:?}: {reason}")]
    InvalidKeyword {
        keyword: String,
        reason: &'static str,
    },

    #[error("{collection}: all 26 keyword letters of dovecot-keywords are taken, so {keyword} cannot be stored; remove keywords no message uses from that file")]
    KeywordSlotsFull { collection: String, keyword: String },

    #[error("{collection}: the stored sync state cannot be used ({reason}); the agent must list the whole collection again (`crmsync client reset`)")]
    InvalidSyncState { collection: String, reason: String },

    /// The message names the path and the system's reason; the I/O error
    /// is not also a `source`, so a printed chain says it once.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{}: timed out waiting for the lock {}; if no other program is writing this folder, delete the lock file", folder.display(), lock.display())]
    LockTimeout { folder: PathBuf, lock: PathBuf },

    #[error("watching {}: {reason}; changes are still found by the scheduled sync", path.display())]
    Watch { path: PathBuf, reason: String },

    /// A remote server (CalDAV/CardDAV, IMAP) refused or failed a request.
    /// `reason` says what the answer means and what to fix; `status` is the
    /// HTTP status when there was one (`None`: no answer, e.g. connection lost).
    #[error("{url}: {reason}")]
    Remote {
        url: String,
        status: Option<u16>,
        reason: String,
    },

    /// The mail or DAV server refused the credentials. Trying again with
    /// the same ones cannot help (a server-side mailbox waits for new ones,
    /// R-V5); `reason` says which settings to check.
    #[error("{url}: {reason}")]
    AuthenticationFailed { url: String, reason: String },

    /// The server is busy or limits requests (HTTP 429 or 503) and said
    /// when to come back (`Retry-After`); a server-side mailbox waits that
    /// long before its next cycle (R-V5).
    #[error("{url}: {reason}")]
    Throttled {
        url: String,
        reason: String,
        retry_after: Duration,
    },

    #[error("mailbox backend task failed: {0}")]
    Task(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// True when the server refused the user name or password.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(self, Error::AuthenticationFailed { .. })
    }

    /// How long the server asked to be left alone, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// True if the write was refused because another client changed the item.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// The item's current etag when the error is a [`Error::Conflict`].
    pub fn current_etag(&self) -> Option<&Etag> {
        match self {
            Error::Conflict { current, .. } => Some(current),
            _ => None,
        }
    }
}
