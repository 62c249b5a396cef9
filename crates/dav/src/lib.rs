//! The CalDAV/CardDAV mailbox backend (SPEC §13 `[mailbox.dav]`): an address
//! book, a calendar and a task list on a groupware server, behind the
//! [`Mailbox`] trait with the fixed collection ids `contacts`, `calendar`
//! and `tasks`.
//!
//! - `client`: HTTP, Basic authentication, request counting, errors that name
//!   the URL and the fix.
//! - `collection`: one collection's URL, href ↔ URL mapping, framing check.
//! - `xml`: request bodies and the multistatus reader.
//! - `discovery`: collections from a server root.
//! - `sync`: `changes_since` (sync-collection, its 507 and invalid-token
//!   cases, the getctag + etag fallback).
//! - `state`: the opaque sync state.
//!
//! Hrefs are an item's last path segment, percent-decoded (`alice.vcf`,
//! `zoë.ics`); the item's URL is the collection URL plus that segment.
//!
//! ```no_run
//! # async fn run() -> crmsync_mailbox::Result<()> {
//! use crmsync_dav::{DavConfig, DavMailbox, Url};
//! let mut config = DavConfig::new("alice", "secret");
//! // Either the collections themselves ...
//! config.contacts = Some(Url::parse("https://dav.example.com/alice/contacts/").unwrap());
//! // ... or a server root to discover the ones not given.
//! config.server = Some(Url::parse("https://dav.example.com/").unwrap());
//! let mailbox = DavMailbox::connect(&config).await?; // discovers, then checks each URL
//! # Ok(()) }
//! ```

mod client;
mod collection;
mod discovery;
mod state;
mod sync;
pub mod xml;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_mailbox::{
    Changes, Collection, CollectionKind, Error, Etag, Href, Item, ItemRef, Keyword, Mailbox,
    Notification, Result, SyncState, Watch,
};
use percent_encoding::percent_decode_str;
use reqwest::{Method, StatusCode};
use tokio::sync::mpsc;

pub use discovery::Discovered;
pub use state::stored_state_url;
pub use url::Url;

use client::{status_error, Client};
use collection::{check_framing, with_slash, Coll};
use xml::{CALSERVER, DAV};

/// Items per calendar-/addressbook-multiget REPORT.
const MULTIGET_BATCH: usize = 100;

/// Where the collections are and how to log in (SPEC §13 `[mailbox.dav]`).
#[derive(Clone)]
pub struct DavConfig {
    /// Server root (or principal URL) to discover the collections not given
    /// below from: current-user-principal → addressbook-/calendar-home-set.
    pub server: Option<Url>,
    /// Address book URL (a collection: ends in `/`).
    pub contacts: Option<Url>,
    /// Calendar for appointments.
    pub calendar: Option<Url>,
    /// Calendar for to-dos (tasks, phone calls, letters, faxes).
    pub tasks: Option<Url>,
    pub username: String,
    pub password: String,
    /// How often [`Mailbox::watch`] polls each collection's sync-token.
    pub poll_interval: Duration,
    /// Time limit of one HTTP request.
    pub timeout: Duration,
    /// Use RFC 6578 sync-collection when the server has it (default). When
    /// false, changes are always found by getctag + etag comparison.
    pub use_sync_collection: bool,
    /// Collection URLs already checked by an earlier run (the caller holds a
    /// sync state taken from them): [`DavMailbox::connect`] does not send
    /// their resourcetype PROPFIND again, so a no-change sync costs one
    /// request per collection. Should one stop being a collection, its next
    /// sync's REPORT fails with an error naming the URL and the fix.
    pub checked: Vec<Url>,
}

impl DavConfig {
    /// A configuration without collections, with the default poll interval
    /// (2 s) and request timeout (60 s).
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        DavConfig {
            server: None,
            contacts: None,
            calendar: None,
            tasks: None,
            username: username.into(),
            password: password.into(),
            poll_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            use_sync_collection: true,
            checked: Vec::new(),
        }
    }
}

impl std::fmt::Debug for DavConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavConfig")
            .field("server", &self.server.as_ref().map(Url::as_str))
            .field("contacts", &self.contacts.as_ref().map(Url::as_str))
            .field("calendar", &self.calendar.as_ref().map(Url::as_str))
            .field("tasks", &self.tasks.as_ref().map(Url::as_str))
            .field("username", &self.username)
            .field("password", &"…")
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    collections: Vec<Coll>,
    poll_interval: Duration,
    use_sync_collection: bool,
}

/// The CalDAV/CardDAV backend. Cheap to clone (one shared HTTP client).
#[derive(Clone)]
pub struct DavMailbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DavMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavMailbox")
            .field("collections", &self.inner.collections)
            .finish_non_exhaustive()
    }
}

impl DavMailbox {
    /// The backend for the collection URLs in `config`, without any request
    /// (`config.server` is not used: see [`DavMailbox::connect`]).
    pub fn new(config: &DavConfig) -> Result<Self> {
        let client = Client::new(&config.username, &config.password, config.timeout)?;
        let mut collections = Vec::new();
        for (id, kind, url) in [
            ("contacts", CollectionKind::Contacts, &config.contacts),
            ("calendar", CollectionKind::Calendar, &config.calendar),
            ("tasks", CollectionKind::Tasks, &config.tasks),
        ] {
            if let Some(url) = url {
                collections.push(Coll {
                    id,
                    kind,
                    url: with_slash(url.clone()),
                });
            }
        }
        Ok(DavMailbox {
            inner: Arc::new(Inner {
                client,
                collections,
                poll_interval: config.poll_interval,
                use_sync_collection: config.use_sync_collection,
            }),
        })
    }

    /// Discovers the collections `config` does not name from
    /// `config.server` (if set), then checks that each one answers.
    pub async fn connect(config: &DavConfig) -> Result<Self> {
        let mut config = config.clone();
        if let Some(server) = &config.server {
            if config.contacts.is_none() || config.calendar.is_none() || config.tasks.is_none() {
                let found = Self::discover(&config, server).await?;
                config.contacts = config.contacts.take().or(found.contacts);
                config.calendar = config.calendar.take().or(found.calendar);
                config.tasks = config.tasks.take().or(found.tasks);
            }
        }
        let mailbox = DavMailbox::new(&config)?;
        mailbox.check_except(&config.checked).await?;
        Ok(mailbox)
    }

    /// The collections a server has for this user, from a server root or
    /// principal URL.
    pub async fn discover(config: &DavConfig, root: &Url) -> Result<Discovered> {
        let client = Client::new(&config.username, &config.password, config.timeout)?;
        discovery::discover(&client, root).await
    }

    /// One PROPFIND per collection: it exists, is the right kind and the
    /// credentials work. Errors name the URL and the fix.
    pub async fn check(&self) -> Result<()> {
        self.check_except(&[]).await
    }

    async fn check_except(&self, checked: &[Url]) -> Result<()> {
        for coll in &self.inner.collections {
            if checked.iter().any(|u| with_slash(u.clone()) == coll.url) {
                continue;
            }
            let answer = self
                .inner
                .client
                .propfind(&coll.url, 0, &[(DAV, "resourcetype")])
                .await?;
            let props = answer
                .responses
                .iter()
                .find(|r| coll.is_self(&r.href))
                .map(|r| r.props.clone())
                .unwrap_or_default();
            let ok = if coll.is_contacts() {
                props.is_addressbook
            } else {
                props.is_calendar
            };
            if !ok {
                return Err(Error::Remote {
                    url: coll.url.to_string(),
                    status: None,
                    reason: format!(
                        "this is not {} collection; set {} in [mailbox.dav] to one",
                        if coll.is_contacts() {
                            "a CardDAV address book"
                        } else {
                            "a CalDAV calendar"
                        },
                        coll.id
                    ),
                });
            }
        }
        Ok(())
    }

    /// HTTP requests sent so far by this mailbox and its clones.
    pub fn request_count(&self) -> u64 {
        self.inner.client.request_count()
    }

    /// The URL of a collection id (`contacts`, `calendar`, `tasks`).
    pub fn collection_url(&self, collection: &str) -> Option<&Url> {
        self.inner
            .collections
            .iter()
            .find(|c| c.id == collection)
            .map(|c| &c.url)
    }

    /// The URL of an item.
    pub fn item_url(&self, collection: &str, href: &str) -> Option<Url> {
        self.coll(collection).ok().map(|c| c.item_url(href))
    }

    fn coll(&self, collection: &str) -> Result<&Coll> {
        self.inner
            .collections
            .iter()
            .find(|c| c.id == collection)
            .ok_or_else(|| Error::NoSuchCollection {
                collection: collection.to_owned(),
            })
    }

    /// The etag an item has now; `None` if it is gone. PROPFIND, as a HEAD
    /// does not always carry an ETag.
    async fn current_etag(&self, url: &Url) -> Result<Option<String>> {
        let answer = self
            .inner
            .client
            .send(
                Method::from_bytes(b"PROPFIND").expect("valid method"),
                url,
                &[("Depth", "0".to_owned())],
                Some((
                    "application/xml; charset=utf-8",
                    xml::propfind(&[(DAV, "getetag")]).into_bytes(),
                )),
            )
            .await?;
        match answer.status {
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
            StatusCode::MULTI_STATUS => {
                let ms = client::multistatus(url, &answer)?;
                match ms.responses.into_iter().next() {
                    Some(r) if r.status == 404 => Ok(None),
                    Some(r) => Ok(r.props.etag),
                    None => Ok(None),
                }
            }
            _ => Err(status_error(url, "PROPFIND getetag", &answer)),
        }
    }

    /// After a write that returned no ETag header: ask for it.
    async fn etag_after_write(&self, coll: &Coll, href: &str, url: &Url) -> Result<Etag> {
        match self.current_etag(url).await? {
            Some(etag) => Ok(Etag::new(etag)),
            None => Err(Error::NotFound {
                collection: coll.id.to_owned(),
                href: href.to_owned(),
            }),
        }
    }

    /// 412 on update/delete: a conflict naming the current etag, or
    /// NotFound if the item is gone.
    async fn precondition_failed(&self, coll: &Coll, href: &str, url: &Url) -> Error {
        match self.current_etag(url).await {
            Ok(Some(current)) => Error::Conflict {
                collection: coll.id.to_owned(),
                href: href.to_owned(),
                current: Etag::new(current),
            },
            Ok(None) => Error::NotFound {
                collection: coll.id.to_owned(),
                href: href.to_owned(),
            },
            Err(e) => e,
        }
    }

    /// A PUT the server refused: invalid data and UID clashes are said so.
    fn put_refused(&self, coll: &Coll, href: &str, url: &Url, answer: &client::Answer) -> Error {
        let conditions = xml::error_conditions(&answer.body);
        let has = |name: &str| conditions.iter().any(|c| c == name);
        // RFC 4791/6352's `no-uid-conflict`; Cyrus answers RFC 6638's
        // `unique-scheduling-object-resource` for a UID used anywhere in
        // the account's calendars.
        if has("no-uid-conflict")
            || has("unique-scheduling-object-resource")
            || answer.status == StatusCode::CONFLICT
        {
            return Error::Remote {
                url: url.to_string(),
                status: Some(answer.status.as_u16()),
                reason: format!(
                    "PUT refused: another item of this account already has this UID ({}); update that item instead",
                    answer.snippet()
                ),
            };
        }
        let invalid = has("valid-calendar-data")
            || has("valid-address-data")
            || has("supported-calendar-component")
            || has("supported-calendar-data")
            || has("supported-address-data")
            || matches!(answer.status.as_u16(), 400 | 415 | 422);
        if invalid {
            return Error::Malformed {
                collection: coll.id.to_owned(),
                href: href.to_owned(),
                reason: format!(
                    "the server refused it as not valid {} ({} {})",
                    if coll.is_contacts() {
                        "vCard"
                    } else {
                        "iCalendar"
                    },
                    answer.status.as_u16(),
                    answer.snippet()
                ),
            };
        }
        status_error(url, "PUT", answer)
    }

    async fn put(
        &self,
        coll: &Coll,
        href: &str,
        condition: (&'static str, String),
        data: &[u8],
    ) -> Result<client::Answer> {
        let url = coll.item_url(href);
        self.inner
            .client
            .send(
                Method::PUT,
                &url,
                &[condition],
                Some((coll.content_type(), data.to_vec())),
            )
            .await
    }
}

#[async_trait]
impl Mailbox for DavMailbox {
    fn backend(&self) -> &'static str {
        "dav"
    }

    async fn collections(&self) -> Result<Vec<Collection>> {
        Ok(self
            .inner
            .collections
            .iter()
            .map(|c| Collection {
                id: c.id.to_owned(),
                kind: c.kind,
                name: c
                    .url
                    .path_segments()
                    .and_then(|mut s| s.rfind(|s| !s.is_empty()))
                    .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                    .unwrap_or_else(|| c.id.to_owned()),
            })
            .collect())
    }

    async fn changes_since(&self, collection: &str, state: Option<&SyncState>) -> Result<Changes> {
        let coll = self.coll(collection)?;
        sync::changes_since(
            &self.inner.client,
            coll,
            state,
            self.inner.use_sync_collection,
        )
        .await
    }

    async fn get_many(
        &self,
        collection: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<Item>)>> {
        let coll = self.coll(collection)?;
        let mut out = Vec::with_capacity(hrefs.len());
        for batch in hrefs.chunks(MULTIGET_BATCH) {
            let paths: Vec<String> = batch
                .iter()
                .map(|h| coll.item_url(h).path().to_owned())
                .collect();
            let body = xml::multiget(coll.is_contacts(), &paths);
            let answer = self.inner.client.report(&coll.url, 1, body).await;
            let found = match answer {
                Ok(a) if a.status == StatusCode::MULTI_STATUS => client::multistatus(&coll.url, &a)
                    .map(|ms| {
                        let mut by_href = HashMap::new();
                        for r in ms.responses {
                            if let Some(h) = coll.href_of(&r.href) {
                                by_href.insert(h, r);
                            }
                        }
                        by_href
                    }),
                Ok(a) => Err(status_error(&coll.url, "REPORT multiget", &a)),
                Err(e) => Err(e),
            };
            let mut found = match found {
                Ok(found) => found,
                Err(e) => {
                    // The whole batch failed: each item says why, the other
                    // batches go on.
                    let reason = e.to_string();
                    for href in batch {
                        out.push((
                            href.clone(),
                            Err(Error::Remote {
                                url: coll.item_url(href).to_string(),
                                status: None,
                                reason: format!("not read: {reason}"),
                            }),
                        ));
                    }
                    continue;
                }
            };
            for href in batch {
                let result = match found.remove(href) {
                    None => Err(Error::NotFound {
                        collection: coll.id.to_owned(),
                        href: href.clone(),
                    }),
                    Some(r) if r.status == 404 || r.status == 410 => Err(Error::NotFound {
                        collection: coll.id.to_owned(),
                        href: href.clone(),
                    }),
                    Some(r) if r.status != 200 => Err(Error::Remote {
                        url: coll.item_url(href).to_string(),
                        status: Some(r.status),
                        reason: format!(
                            "the server could not read this item (status {}); it is retried at the next sync",
                            r.status
                        ),
                    }),
                    Some(r) => match (r.props.etag, r.props.data) {
                        (Some(etag), Some(data)) => match check_framing(coll, &data) {
                            Ok(()) => Ok(Item {
                                href: href.clone(),
                                etag: Etag::new(etag),
                                data: data.into_bytes(),
                                flags: None,
                            }),
                            Err(reason) => Err(Error::Malformed {
                                collection: coll.id.to_owned(),
                                href: href.clone(),
                                reason,
                            }),
                        },
                        _ => Err(Error::Malformed {
                            collection: coll.id.to_owned(),
                            href: href.clone(),
                            reason: "the server sent no data or no etag for it".to_owned(),
                        }),
                    },
                };
                out.push((href.clone(), result));
            }
        }
        Ok(out)
    }

    async fn create(&self, collection: &str, name: &str, data: &[u8]) -> Result<ItemRef> {
        let coll = self.coll(collection)?;
        let href = coll.href_for_name(name);
        let url = coll.item_url(&href);
        let answer = self
            .put(coll, &href, ("If-None-Match", "*".to_owned()), data)
            .await?;
        match answer.status.as_u16() {
            200..=299 => {
                let etag = match answer.etag() {
                    Some(e) => Etag::new(e),
                    None => self.etag_after_write(coll, &href, &url).await?,
                };
                Ok(ItemRef {
                    href,
                    etag,
                    flags: None,
                })
            }
            // Xandikos answers invalid data with 412 and a DAV:error body.
            412 if xml::error_conditions(&answer.body).is_empty() => Err(Error::AlreadyExists {
                collection: coll.id.to_owned(),
                href,
            }),
            _ => Err(self.put_refused(coll, &href, &url, &answer)),
        }
    }

    async fn update(
        &self,
        collection: &str,
        href: &str,
        expected: &Etag,
        data: &[u8],
    ) -> Result<ItemRef> {
        let coll = self.coll(collection)?;
        let url = coll.item_url(href);
        let answer = self
            .put(coll, href, ("If-Match", expected.as_str().to_owned()), data)
            .await?;
        match answer.status.as_u16() {
            200..=299 => {
                let etag = match answer.etag() {
                    Some(e) => Etag::new(e),
                    None => self.etag_after_write(coll, href, &url).await?,
                };
                Ok(ItemRef {
                    href: href.to_owned(),
                    etag,
                    flags: None,
                })
            }
            412 if xml::error_conditions(&answer.body).is_empty() => {
                Err(self.precondition_failed(coll, href, &url).await)
            }
            404 | 410 => Err(Error::NotFound {
                collection: coll.id.to_owned(),
                href: href.to_owned(),
            }),
            _ => Err(self.put_refused(coll, href, &url, &answer)),
        }
    }

    async fn delete(&self, collection: &str, href: &str, expected: &Etag) -> Result<()> {
        let coll = self.coll(collection)?;
        let url = coll.item_url(href);
        let answer = self
            .inner
            .client
            .send(
                Method::DELETE,
                &url,
                &[("If-Match", expected.as_str().to_owned())],
                None,
            )
            .await?;
        match answer.status.as_u16() {
            200..=299 => Ok(()),
            412 => Err(self.precondition_failed(coll, href, &url).await),
            404 | 410 => Err(Error::NotFound {
                collection: coll.id.to_owned(),
                href: href.to_owned(),
            }),
            _ => Err(status_error(&url, "DELETE", &answer)),
        }
    }

    async fn message_flags(
        &self,
        folder: &str,
        _hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<ItemRef>)>> {
        Err(no_mail(folder, "reading message flags"))
    }

    async fn message_sizes(
        &self,
        folder: &str,
        _hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<u64>)>> {
        Err(no_mail(folder, "reading message sizes"))
    }

    async fn store_keywords(
        &self,
        folder: &str,
        _href: &str,
        _expected: &Etag,
        _add: &[Keyword],
        _remove: &[Keyword],
    ) -> Result<ItemRef> {
        Err(no_mail(folder, "storing keywords"))
    }

    async fn watch(&self) -> Result<Watch> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut last: Vec<(Coll, Option<String>)> = Vec::new();
        for coll in &self.inner.collections {
            let stamp = poll_stamp(&self.inner.client, coll).await.ok().flatten();
            last.push((coll.clone(), stamp));
        }
        let client = self.inner.client.clone();
        let interval = self.inner.poll_interval;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                for (coll, seen) in &mut last {
                    match poll_stamp(&client, coll).await {
                        Ok(stamp) if stamp != *seen => {
                            *seen = stamp;
                            if tx.send(Notification::Changed(coll.id.to_owned())).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("watching {}: {e}", coll.id),
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Watch::new(rx, AbortOnDrop(task)))
    }
}

fn no_mail(folder: &str, operation: &'static str) -> Error {
    Error::Unsupported {
        collection: folder.to_owned(),
        operation,
        reason: "a CalDAV/CardDAV server has no mail folders",
    }
}

/// The collection's sync-token (or ctag): one PROPFIND, Depth 0.
async fn poll_stamp(client: &Client, coll: &Coll) -> Result<Option<String>> {
    let ms = client
        .propfind(&coll.url, 0, &[(DAV, "sync-token"), (CALSERVER, "getctag")])
        .await?;
    Ok(ms
        .responses
        .into_iter()
        .find(|r| coll.is_self(&r.href))
        .and_then(|r| r.props.sync_token.or(r.props.ctag)))
}

/// Stops the watch's polling task when the [`Watch`] is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
