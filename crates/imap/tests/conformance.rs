//! The mailbox conformance suite (crates/mailbox/tests/conformance) against
//! a real Dovecot (with CONDSTORE/QRESYNC, with CONDSTORE alone, and with
//! neither) and a real Cyrus IMAP.

#[path = "../../mailbox/tests/conformance/mod.rs"]
#[macro_use]
mod conformance;
mod support;

use std::sync::Arc;

use async_trait::async_trait;
use crmsync_imap::ImapMailbox;
use crmsync_mailbox::{CollectionKind, Href, Mailbox};
use support::{Flavor, ImapServer};

pub struct ImapFixture {
    server: ImapServer,
    mailbox: Arc<ImapMailbox>,
}

impl ImapFixture {
    async fn start(flavor: Flavor) -> Self {
        let server = ImapServer::start(flavor).await;
        let mailbox = Arc::new(ImapMailbox::new(server.config()));
        mailbox
            .ensure_folders()
            .await
            .expect("create the test folders");
        let (condstore, qresync) = mailbox.uses_condstore().await.unwrap();
        assert_eq!(
            (condstore, qresync),
            match flavor {
                Flavor::Qresync => (true, true),
                Flavor::Condstore => (true, false),
                Flavor::Plain => (false, false),
                Flavor::Cyrus => (true, true),
            },
            "the {flavor:?} server offers the wrong capabilities"
        );
        ImapFixture { server, mailbox }
    }

    fn folder(collection: &str) -> &str {
        collection.strip_prefix("mail/").expect("a mail collection")
    }
}

#[async_trait]
impl conformance::Fixture for ImapFixture {
    fn mailbox(&self) -> Arc<dyn Mailbox> {
        self.mailbox.clone()
    }

    async fn reopen(&self) -> Arc<dyn Mailbox> {
        Arc::new(ImapMailbox::new(self.server.config()))
    }

    fn collection(&self, kind: CollectionKind) -> Option<String> {
        (kind == CollectionKind::Mail).then(|| "mail/INBOX".to_owned())
    }

    async fn external_put(&self, collection: &str, _name: &str, _data: &[u8]) -> Href {
        panic!("{collection}: the IMAP backend has no item collections")
    }

    async fn external_delete(&self, collection: &str, href: &str) {
        let mut c = self.server.client().await;
        c.select(Self::folder(collection)).await;
        c.cmd(&format!("UID STORE {href} +FLAGS.SILENT (\\Deleted)"))
            .await;
        c.cmd(&format!("UID EXPUNGE {href}")).await;
        c.logout().await;
    }

    async fn external_deliver(&self, folder: &str, data: &[u8]) -> Href {
        let mut c = self.server.client().await;
        let uid = c.append(Self::folder(folder), data).await;
        c.logout().await;
        uid.to_string()
    }

    async fn external_mark_seen(&self, folder: &str, href: &str) {
        let mut c = self.server.client().await;
        c.select(Self::folder(folder)).await;
        c.cmd(&format!("UID STORE {href} +FLAGS (\\Seen)")).await;
        c.logout().await;
    }

    async fn plant_malformed(&self, _collection: &str) -> Option<Href> {
        None
    }

    async fn plant_unreadable(&self, _collection: &str) -> Option<Href> {
        None
    }
}

mod qresync {
    use super::*;

    async fn fixture() -> ImapFixture {
        ImapFixture::start(Flavor::Qresync).await
    }

    mailbox_conformance!(fixture; mail);
}

mod condstore {
    use super::*;

    async fn fixture() -> ImapFixture {
        ImapFixture::start(Flavor::Condstore).await
    }

    mailbox_conformance!(fixture; mail);
}

mod plain {
    use super::*;

    async fn fixture() -> ImapFixture {
        ImapFixture::start(Flavor::Plain).await
    }

    mailbox_conformance!(fixture; mail);
}

mod cyrus {
    use super::*;

    async fn fixture() -> ImapFixture {
        ImapFixture::start(Flavor::Cyrus).await
    }

    mailbox_conformance!(fixture; mail);
}
