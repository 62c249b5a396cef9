//! The mailbox conformance suite against real servers: Radicale, Xandikos
//! and Cyrus IMAP's httpd, each on contacts and on calendar, each test on a
//! freshly started server.

#[path = "../../mailbox/tests/conformance/mod.rs"]
#[macro_use]
mod conformance;
mod common;

use std::sync::Arc;

use async_trait::async_trait;
use crmsync_dav::DavMailbox;
use crmsync_mailbox::{CollectionKind, Href, Mailbox};

use common::{Kind, Server};
use conformance::Fixture;

pub struct DavFixture {
    server: Server,
    mailbox: DavMailbox,
    /// The item collection the suite uses: `contacts` or `calendar`.
    items: &'static str,
}

async fn fixture(kind: Kind, items: &'static str) -> DavFixture {
    let server = Server::start(kind).await;
    let mailbox = server.mailbox();
    DavFixture {
        server,
        mailbox,
        items,
    }
}

pub async fn radicale_contacts() -> DavFixture {
    fixture(Kind::Radicale, "contacts").await
}

pub async fn radicale_calendar() -> DavFixture {
    fixture(Kind::Radicale, "calendar").await
}

pub async fn xandikos_calendar() -> DavFixture {
    fixture(Kind::Xandikos, "calendar").await
}

pub async fn xandikos_contacts() -> DavFixture {
    fixture(Kind::Xandikos, "contacts").await
}

pub async fn cyrus_contacts() -> DavFixture {
    fixture(Kind::Cyrus, "contacts").await
}

pub async fn cyrus_calendar() -> DavFixture {
    fixture(Kind::Cyrus, "calendar").await
}

#[async_trait]
impl Fixture for DavFixture {
    fn mailbox(&self) -> Arc<dyn Mailbox> {
        Arc::new(self.mailbox.clone())
    }

    async fn reopen(&self) -> Arc<dyn Mailbox> {
        Arc::new(self.server.mailbox())
    }

    fn collection(&self, kind: CollectionKind) -> Option<String> {
        let id = match kind {
            CollectionKind::Contacts if self.items == "contacts" => "contacts",
            CollectionKind::Calendar if self.items == "calendar" => "calendar",
            CollectionKind::Tasks => "tasks",
            _ => return None,
        };
        Some(id.to_owned())
    }

    async fn external_put(&self, collection: &str, name: &str, data: &[u8]) -> Href {
        let status = self.server.put(collection, name, data).await;
        assert!((200..300).contains(&status), "PUT {name}: {status}");
        name.to_owned()
    }

    async fn external_delete(&self, collection: &str, href: &str) {
        let status = self.server.delete(collection, href).await;
        assert!((200..300).contains(&status), "DELETE {href}: {status}");
    }

    async fn external_deliver(&self, _folder: &str, _data: &[u8]) -> Href {
        unreachable!("a DAV server has no mail folders")
    }

    async fn external_mark_seen(&self, _folder: &str, _href: &str) {
        unreachable!("a DAV server has no mail folders")
    }

    /// Every server refuses invalid data on PUT. Xandikos serves what is
    /// committed to its git store; Radicale skips broken files on disk
    /// (they are invisible to clients), so it cannot hold one; Cyrus keeps
    /// items as messages of its mail spool, checked when stored.
    async fn plant_malformed(&self, collection: &str) -> Option<Href> {
        match self.server.kind {
            Kind::Xandikos => {
                let name = if collection == "contacts" {
                    "planted-bad.vcf"
                } else {
                    "planted-bad.ics"
                };
                self.server.xandikos_commit(
                    collection,
                    name,
                    b"this is not a vCard nor an iCalendar\r\n",
                );
                Some(name.to_owned())
            }
            Kind::Radicale | Kind::Cyrus => None,
        }
    }

    async fn plant_unreadable(&self, _collection: &str) -> Option<Href> {
        None
    }

    fn same_item(&self, stored: &[u8], written: &[u8]) -> bool {
        common::same_item(stored, written)
    }
}

mod radicale_contacts {
    use super::*;
    // Radicale cannot hold a bad item (see `plant_malformed`).
    mailbox_conformance!(radicale_contacts; items);
}

mod radicale_calendar {
    use super::*;
    mailbox_conformance!(radicale_calendar; items);
}

mod xandikos_calendar {
    use super::*;
    mailbox_conformance!(xandikos_calendar; items, bad_items);
}

mod xandikos_contacts {
    use super::*;
    mailbox_conformance!(xandikos_contacts; items, bad_items);
}

mod cyrus_contacts {
    use super::*;
    mailbox_conformance!(cyrus_contacts; items);
}

mod cyrus_calendar {
    use super::*;
    mailbox_conformance!(cyrus_calendar; items);
}
