//! The mailbox side of the crmsync agent: one [`Mailbox`] trait that every
//! backend implements, and the backends.
//!
//! - [`local`]: `contacts/`, `calendar/`, `tasks/` as vdir folders and
//!   `mail/` as a Maildir++ with Dovecot's `dovecot-keywords` convention.
//! - [`RoutedMailbox`]: contacts/calendar/tasks from one backend and mail
//!   folders from another (local, or the `crmsync-dav` and `crmsync-imap`
//!   crates, which implement the same trait and pass the same conformance
//!   suite, `tests/conformance/`).
//!
//! [`settings`] holds how a mailbox on a server is reached (SPEC §13's
//! `[mailbox.dav]` and `[mailbox.imap]`), checked the same way for the
//! agent's configuration and the server's connected mailboxes.
//!
//! Items are opaque bytes (`.vcf`, `.ics`, RFC 5322) plus metadata (href,
//! etag, message flags); parsing them is another crate's job.
//!
//! Invariant: every mailbox write carries a precondition. `create` never
//! replaces; `update`, `delete` and `store_keywords` take the etag the caller
//! last saw and return [`Error::Conflict`] instead of overwriting an edit the
//! user made meanwhile.

mod error;
pub mod local;
mod mailbox;
mod routed;
pub mod settings;
mod types;

pub use error::{Error, Result};
pub use local::{LocalConfig, LocalMailbox};
pub use mailbox::{Mailbox, Watch};
pub use routed::RoutedMailbox;
pub use types::{
    Changes, Collection, CollectionId, CollectionKind, Etag, Href, Item, ItemRef, Keyword,
    MessageFlags, Notification, SyncState, SystemFlag,
};
