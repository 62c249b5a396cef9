//! One mailbox made of two backends (SPEC §1.3: "a user's mailbox is a
//! combination"): contacts, calendar and tasks from one (local or DAV),
//! mail folders from another (local or IMAP). Calls are routed by the
//! collection id: mail folders are `mail/<folder>` on every backend.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::mailbox::{Mailbox, Watch};
use crate::types::{Changes, Collection, Etag, Href, Item, ItemRef, Keyword, SyncState};

/// Contacts/calendar/tasks from `items`, mail folders from `mail`.
pub struct RoutedMailbox {
    items: Option<Arc<dyn Mailbox>>,
    mail: Option<Arc<dyn Mailbox>>,
}

impl RoutedMailbox {
    /// Either side may be absent (a DAV-only or IMAP-only mailbox).
    pub fn new(items: Option<Arc<dyn Mailbox>>, mail: Option<Arc<dyn Mailbox>>) -> Self {
        RoutedMailbox { items, mail }
    }

    fn is_mail(collection: &str) -> bool {
        collection.starts_with("mail/")
    }

    fn route(&self, collection: &str) -> Result<&Arc<dyn Mailbox>> {
        let side = if Self::is_mail(collection) {
            &self.mail
        } else {
            &self.items
        };
        side.as_ref().ok_or_else(|| crate::Error::NoSuchCollection {
            collection: collection.to_owned(),
        })
    }
}

#[async_trait]
impl Mailbox for RoutedMailbox {
    fn backend(&self) -> &'static str {
        match (&self.items, &self.mail) {
            (Some(i), _) => i.backend(),
            (None, Some(m)) => m.backend(),
            (None, None) => "none",
        }
    }

    async fn collections(&self) -> Result<Vec<Collection>> {
        let mut out = Vec::new();
        if let Some(items) = &self.items {
            out.extend(
                items
                    .collections()
                    .await?
                    .into_iter()
                    .filter(|c| !c.kind.is_mail()),
            );
        }
        if let Some(mail) = &self.mail {
            out.extend(
                mail.collections()
                    .await?
                    .into_iter()
                    .filter(|c| c.kind.is_mail()),
            );
        }
        Ok(out)
    }

    async fn changes_since(&self, collection: &str, state: Option<&SyncState>) -> Result<Changes> {
        self.route(collection)?
            .changes_since(collection, state)
            .await
    }

    async fn get_many(
        &self,
        collection: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<Item>)>> {
        self.route(collection)?.get_many(collection, hrefs).await
    }

    async fn create(&self, collection: &str, name: &str, data: &[u8]) -> Result<ItemRef> {
        self.route(collection)?.create(collection, name, data).await
    }

    async fn update(
        &self,
        collection: &str,
        href: &str,
        expected: &Etag,
        data: &[u8],
    ) -> Result<ItemRef> {
        self.route(collection)?
            .update(collection, href, expected, data)
            .await
    }

    async fn delete(&self, collection: &str, href: &str, expected: &Etag) -> Result<()> {
        self.route(collection)?
            .delete(collection, href, expected)
            .await
    }

    async fn message_flags(
        &self,
        folder: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<ItemRef>)>> {
        self.route(folder)?.message_flags(folder, hrefs).await
    }

    async fn copy_message_to(&self, folder: &str, href: &str, to: &std::path::Path) -> Result<u64> {
        self.route(folder)?.copy_message_to(folder, href, to).await
    }

    async fn search_message_id(&self, folder: &str, message_id: &str) -> Result<Option<Vec<Href>>> {
        self.route(folder)?
            .search_message_id(folder, message_id)
            .await
    }

    async fn message_sizes(
        &self,
        folder: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<u64>)>> {
        self.route(folder)?.message_sizes(folder, hrefs).await
    }

    async fn store_keywords(
        &self,
        folder: &str,
        href: &str,
        expected: &Etag,
        add: &[Keyword],
        remove: &[Keyword],
    ) -> Result<ItemRef> {
        self.route(folder)?
            .store_keywords(folder, href, expected, add, remove)
            .await
    }

    /// Both backends' notifications in one stream.
    async fn watch(&self) -> Result<Watch> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut forwarders = Vec::new();
        for side in [&self.items, &self.mail].into_iter().flatten() {
            let mut watch = side.watch().await?;
            let tx = tx.clone();
            forwarders.push(AbortOnDrop(tokio::spawn(async move {
                while let Some(n) = watch.next().await {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
            })));
        }
        Ok(Watch::new(rx, forwarders))
    }
}

/// Stops a forwarding task when the combined watch is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
