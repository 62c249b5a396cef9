//! The one trait every mailbox backend implements (local now; DAV and IMAP
//! later). The sync engine sees collections, hrefs, etags and bytes, never
//! paths, HTTP or IMAP: backend quirks stay inside the backend.

use std::any::Any;
use std::path::Path;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::types::{
    Changes, Collection, CollectionKind, Etag, Href, Item, ItemRef, Keyword, Notification,
    SyncState,
};

/// A user's mailbox: address book, calendar, task list and mail folders.
///
/// Invariant: every write that replaces or removes something carries a
/// precondition. `create` never replaces an existing item; `update`,
/// `delete` and `store_keywords` take the etag the caller last saw and fail
/// with [`Error::Conflict`] (carrying the current etag) instead of
/// overwriting a change another client made in between.
///
/// The trait is object-safe: the agent holds an `Arc<dyn Mailbox>`.
#[async_trait]
pub trait Mailbox: Send + Sync {
    /// The backend's name for messages (`local`, `dav`, `imap`).
    fn backend(&self) -> &'static str;

    /// Every collection: contacts, calendar, tasks and each mail folder.
    async fn collections(&self) -> Result<Vec<Collection>>;

    /// What was created, changed or deleted in `collection` since `state`
    /// (`None`: everything, as on a first sync). Deletions made while the
    /// agent was not running are included (R-T3). Items that cannot be
    /// examined are reported in [`Changes::failed`] without stopping the others.
    async fn changes_since(&self, collection: &str, state: Option<&SyncState>) -> Result<Changes>;

    /// The items named by `hrefs`, in that order, each with its own result:
    /// one missing or unreadable item never hides the others. For mail
    /// folders the data is the raw RFC 5322 message and `flags` is set.
    async fn get_many(&self, collection: &str, hrefs: &[Href])
        -> Result<Vec<(Href, Result<Item>)>>;

    /// One item; [`Error::NotFound`] if it is not there.
    async fn get(&self, collection: &str, href: &str) -> Result<Item> {
        let mut found = self.get_many(collection, &[href.to_owned()]).await?;
        match found.pop() {
            Some((_, item)) => item,
            None => Err(Error::NotFound {
                collection: collection.to_owned(),
                href: href.to_owned(),
            }),
        }
    }

    /// Adds a new item; never replaces one. `name` is a hint for the href
    /// (a UID): backends that name items themselves (Maildir, IMAP) ignore
    /// it. If the href is taken the call fails with
    /// [`Error::AlreadyExists`] and writes nothing.
    async fn create(&self, collection: &str, name: &str, data: &[u8]) -> Result<ItemRef>;

    /// Replaces an item's content if it still has the etag `expected`;
    /// otherwise [`Error::Conflict`] and nothing is written. Mail folders
    /// refuse ([`Error::Unsupported`]): messages are immutable (RFC 9051).
    async fn update(
        &self,
        collection: &str,
        href: &str,
        expected: &Etag,
        data: &[u8],
    ) -> Result<ItemRef>;

    /// Removes an item if it still has the etag `expected`; otherwise
    /// [`Error::Conflict`] and nothing is removed.
    async fn delete(&self, collection: &str, href: &str, expected: &Etag) -> Result<()>;

    /// Flags and keywords of messages in a mail folder, without their bodies;
    /// one result per href, in order.
    async fn message_flags(
        &self,
        folder: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<ItemRef>)>>;

    /// The size in bytes of messages in a mail folder, without reading them,
    /// so the agent can refuse a message above its limit before reading it
    /// and read the others in batches of bounded memory. One result per
    /// href, in order.
    async fn message_sizes(&self, folder: &str, hrefs: &[Href])
        -> Result<Vec<(Href, Result<u64>)>>;

    /// One message's flags and keywords; [`Error::NotFound`] if it is not there.
    async fn flags_of(&self, folder: &str, href: &str) -> Result<ItemRef> {
        let mut found = self.message_flags(folder, &[href.to_owned()]).await?;
        match found.pop() {
            Some((_, flags)) => flags,
            None => Err(Error::NotFound {
                collection: folder.to_owned(),
                href: href.to_owned(),
            }),
        }
    }

    /// Removes the keywords `remove`, then adds `add`, on one message, if it
    /// still has the etag `expected` (else [`Error::Conflict`], nothing
    /// changed). One call can swap `$CRMRegarding:…` keywords (R-M7).
    /// Returns the message's new etag and flags.
    async fn store_keywords(
        &self,
        folder: &str,
        href: &str,
        expected: &Etag,
        add: &[Keyword],
        remove: &[Keyword],
    ) -> Result<ItemRef>;

    /// Writes a message's raw bytes to the file `to` a part at a time, so a
    /// large message is never held whole in memory (IMAP: partial FETCH;
    /// Maildir: the file copied). Returns the number of bytes written.
    async fn copy_message_to(&self, folder: &str, href: &str, to: &Path) -> Result<u64> {
        let item = self.get(folder, href).await?;
        std::fs::write(to, &item.data).map_err(|e| Error::io(to, e))?;
        Ok(item.data.len() as u64)
    }

    /// The messages of a mail folder whose Message-ID header contains
    /// `<message_id>`, found by the server (IMAP `SEARCH HEADER`), so a
    /// command naming a message need not read the folder; candidates, to be
    /// checked by the caller. `None`: the backend cannot search, the caller
    /// reads the messages itself.
    async fn search_message_id(
        &self,
        _folder: &str,
        _message_id: &str,
    ) -> Result<Option<Vec<Href>>> {
        Ok(None)
    }

    /// The mail folders (the collections of kind [`CollectionKind::Mail`]).
    async fn mail_folders(&self) -> Result<Vec<Collection>> {
        let mut all = self.collections().await?;
        all.retain(|c| c.kind == CollectionKind::Mail);
        Ok(all)
    }

    /// Change notifications until the returned [`Watch`] is dropped (R-T2).
    /// They are hints, coalesced per collection; the agent answers one with
    /// `changes_since`. Changes the agent itself made are reported too.
    async fn watch(&self) -> Result<Watch>;
}

/// A stream of [`Notification`]s. Dropping it stops watching.
pub struct Watch {
    rx: mpsc::UnboundedReceiver<Notification>,
    _guard: Box<dyn Any + Send>,
}

impl Watch {
    /// A watch fed by `rx`; `guard` (the backend's watcher) lives as long as
    /// the watch and is dropped with it.
    pub fn new(rx: mpsc::UnboundedReceiver<Notification>, guard: impl Any + Send) -> Self {
        Watch {
            rx,
            _guard: Box::new(guard),
        }
    }

    /// The next notification; `None` once the backend stopped watching.
    pub async fn next(&mut self) -> Option<Notification> {
        self.rx.recv().await
    }

    /// A notification if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Notification> {
        self.rx.try_recv().ok()
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}
