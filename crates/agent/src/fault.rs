//! Test-only fault injection for R-T4, in the way of isync/mbsync's
//! run-tests: with `CRMSYNC_TEST_FAULT_AFTER_STEP=k` in its environment the
//! agent process stops abruptly (like a kill: no destructor, no flush, no
//! cleanup) right after the k-th durable step of its work. A step is each
//! write R-T4 relies on: a cache row, a journal entry, a write intent, a
//! mailbox write, a push answered, an acknowledgement. Without the
//! variable nothing is counted and the mailbox is not wrapped.
//! `crates/crmsync/tests/interrupt.rs` runs a scenario once per k.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use crmsync_mailbox::{
    Changes, Collection, Etag, Href, Item, ItemRef, Keyword, Mailbox, Result, SyncState, Watch,
};

/// The variable's name: long and explicit so that it is never set by accident.
pub const FAULT_ENV: &str = "CRMSYNC_TEST_FAULT_AFTER_STEP";

/// Steps done so far in this process.
static STEPS: AtomicU64 = AtomicU64::new(0);

/// The step to stop after, read once from the environment.
fn fault_step() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var(FAULT_ENV).ok()?.trim().parse().ok())
}

/// A durable step of the agent's work (`what` names it in the message
/// printed when the process stops there).
pub(crate) fn step(what: &str) {
    let Some(at) = fault_step() else { return };
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if n == at {
        eprintln!("{FAULT_ENV}: stopping after step {n} ({what})");
        std::process::abort();
    }
}

/// `mailbox`, with every write counted as a step when a fault is set.
pub(crate) fn counting_writes(mailbox: Arc<dyn Mailbox>) -> Arc<dyn Mailbox> {
    match fault_step() {
        Some(_) => Arc::new(StepCountingMailbox(mailbox)),
        None => mailbox,
    }
}

/// Passes every call through; a successful write is a step.
struct StepCountingMailbox(Arc<dyn Mailbox>);

#[async_trait]
impl Mailbox for StepCountingMailbox {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    async fn collections(&self) -> Result<Vec<Collection>> {
        self.0.collections().await
    }

    async fn changes_since(&self, collection: &str, state: Option<&SyncState>) -> Result<Changes> {
        self.0.changes_since(collection, state).await
    }

    async fn get_many(
        &self,
        collection: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<Item>)>> {
        self.0.get_many(collection, hrefs).await
    }

    async fn get(&self, collection: &str, href: &str) -> Result<Item> {
        self.0.get(collection, href).await
    }

    async fn create(&self, collection: &str, name: &str, data: &[u8]) -> Result<ItemRef> {
        let r = self.0.create(collection, name, data).await?;
        step("mailbox item created");
        Ok(r)
    }

    async fn update(
        &self,
        collection: &str,
        href: &str,
        expected: &Etag,
        data: &[u8],
    ) -> Result<ItemRef> {
        let r = self.0.update(collection, href, expected, data).await?;
        step("mailbox item updated");
        Ok(r)
    }

    async fn delete(&self, collection: &str, href: &str, expected: &Etag) -> Result<()> {
        self.0.delete(collection, href, expected).await?;
        step("mailbox item deleted");
        Ok(())
    }

    async fn message_flags(
        &self,
        folder: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<ItemRef>)>> {
        self.0.message_flags(folder, hrefs).await
    }

    async fn message_sizes(
        &self,
        folder: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<u64>)>> {
        self.0.message_sizes(folder, hrefs).await
    }

    async fn flags_of(&self, folder: &str, href: &str) -> Result<ItemRef> {
        self.0.flags_of(folder, href).await
    }

    async fn store_keywords(
        &self,
        folder: &str,
        href: &str,
        expected: &Etag,
        add: &[Keyword],
        remove: &[Keyword],
    ) -> Result<ItemRef> {
        let r = self
            .0
            .store_keywords(folder, href, expected, add, remove)
            .await?;
        step("message keywords stored");
        Ok(r)
    }

    async fn copy_message_to(&self, folder: &str, href: &str, to: &Path) -> Result<u64> {
        self.0.copy_message_to(folder, href, to).await
    }

    async fn search_message_id(&self, folder: &str, message_id: &str) -> Result<Option<Vec<Href>>> {
        self.0.search_message_id(folder, message_id).await
    }

    async fn mail_folders(&self) -> Result<Vec<Collection>> {
        self.0.mail_folders().await
    }

    async fn watch(&self) -> Result<Watch> {
        self.0.watch().await
    }
}
