//! The `local` backend (SPEC §13 `[mailbox.local] root = "…"`): a folder
//! holding `contacts/`, `calendar/` and `tasks/` as vdirs (one `.vcf`/`.ics`
//! per item) and `mail/` as a Maildir++ (INBOX at `mail/`, other folders at
//! `mail/.Sent`, `mail/.CRM`, ...).
//!
//! Collection ids: `contacts`, `calendar`, `tasks`, `mail/INBOX`,
//! `mail/<folder>`. Hrefs: the item's file name (`alice.vcf`) in a vdir, the
//! message file's base name (without `:2,<flags>`) in a Maildir.
//!
//! All file work runs on tokio's blocking pool. Writes from this process are
//! serialized by one lock; writes by other programs are caught by the
//! etag preconditions (see `vdir.rs`, `maildir.rs`).

mod fsutil;
mod keywords;
mod maildir;
mod state;
mod vdir;
mod watch;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use self::maildir::Maildir;
use self::vdir::Vdir;
use crate::error::{Error, Result};
use crate::mailbox::{Mailbox, Watch};
use crate::types::{
    Changes, Collection, CollectionKind, Etag, Href, Item, ItemRef, Keyword, SyncState,
};

const CONTACTS: &str = "contacts";
const CALENDAR: &str = "calendar";
const TASKS: &str = "tasks";
const MAIL: &str = "mail";
const INBOX: &str = "INBOX";

/// How long file-system events are collected before one notification per
/// collection goes out.
pub const DEFAULT_WATCH_WINDOW: Duration = Duration::from_millis(300);

/// `[mailbox.local]` of the agent configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The folder holding `contacts/`, `calendar/`, `tasks/` and `mail/`.
    pub root: PathBuf,
}

/// The local backend. Cheap to clone; clones share one write lock.
#[derive(Clone, Debug)]
pub struct LocalMailbox {
    inner: Arc<Inner>,
    window: Duration,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    writes: Mutex<()>,
}

enum Target<'a> {
    Vdir(Vdir<'a>),
    Maildir(Maildir<'a>),
}

impl Inner {
    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target<'a>(&self, id: &'a str) -> Result<Target<'a>> {
        let missing = || Error::NoSuchCollection {
            collection: id.to_owned(),
        };
        let target = match id {
            CONTACTS | CALENDAR | TASKS => {
                let kind = match id {
                    CONTACTS => CollectionKind::Contacts,
                    CALENDAR => CollectionKind::Calendar,
                    _ => CollectionKind::Tasks,
                };
                Target::Vdir(Vdir {
                    id,
                    dir: self.root.join(id),
                    kind,
                })
            }
            _ => {
                let folder = id
                    .strip_prefix(MAIL)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .ok_or_else(missing)?;
                let dir = mail_folder_dir(&self.root, folder).ok_or_else(missing)?;
                Target::Maildir(Maildir { id, dir })
            }
        };
        let dir = match &target {
            Target::Vdir(v) => v.dir.clone(),
            Target::Maildir(m) => m.dir.join("cur"),
        };
        if !dir.is_dir() {
            return Err(missing());
        }
        Ok(target)
    }

    fn collections(&self) -> Result<Vec<Collection>> {
        let mut out = Vec::new();
        for (id, kind) in [
            (CONTACTS, CollectionKind::Contacts),
            (CALENDAR, CollectionKind::Calendar),
            (TASKS, CollectionKind::Tasks),
        ] {
            if self.root.join(id).is_dir() {
                out.push(Collection {
                    id: id.to_owned(),
                    kind,
                    name: id.to_owned(),
                });
            }
        }
        let mail = self.root.join(MAIL);
        if mail.join("cur").is_dir() {
            out.push(mail_collection(INBOX));
        }
        if mail.is_dir() {
            let entries = fs::read_dir(&mail).map_err(|e| Error::io(&mail, e))?;
            let mut folders = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&mail, e))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let Some(folder) = name.strip_prefix('.') else {
                    continue;
                };
                if valid_folder_name(folder) && entry.path().join("cur").is_dir() {
                    folders.push(folder.to_owned());
                }
            }
            folders.sort();
            out.extend(folders.iter().map(|f| mail_collection(f)));
        }
        Ok(out)
    }
}

fn mail_collection(folder: &str) -> Collection {
    Collection {
        id: format!("{MAIL}/{folder}"),
        kind: CollectionKind::Mail,
        name: folder.to_owned(),
    }
}

/// A Maildir++ folder name as it appears on disk after the leading dot
/// (`Sent`, `Projects.Acme`). Not decoded from IMAP's modified UTF-7.
fn valid_folder_name(folder: &str) -> bool {
    !folder.is_empty()
        && folder != "."
        && !folder.starts_with('.')
        && !folder.contains('/')
        && !folder.contains('\\')
        && !folder.eq_ignore_ascii_case(INBOX)
}

fn mail_folder_dir(root: &Path, folder: &str) -> Option<PathBuf> {
    if folder == INBOX {
        Some(root.join(MAIL))
    } else if valid_folder_name(folder) {
        Some(root.join(MAIL).join(format!(".{folder}")))
    } else {
        None
    }
}

impl LocalMailbox {
    /// Opens the mailbox at `config.root`, which must exist. Missing
    /// `contacts/`, `calendar/`, `tasks/` and `mail/{cur,new,tmp}` are created.
    pub fn open(config: &LocalConfig) -> Result<Self> {
        let root = config.root.clone();
        if !root.is_dir() {
            return Err(Error::Io {
                path: root,
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the [mailbox.local] root is not a folder; create it or fix `root` in the agent configuration",
                ),
            });
        }
        for dir in [CONTACTS, CALENDAR, TASKS] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        maildir::create_layout(&root.join(MAIL))?;
        Ok(LocalMailbox {
            inner: Arc::new(Inner {
                root,
                writes: Mutex::new(()),
            }),
            window: DEFAULT_WATCH_WINDOW,
        })
    }

    /// The same mailbox with another notification window.
    pub fn with_watch_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Creates the Maildir++ folder `mail/.<folder>` (e.g. `CRM` for R-M4)
    /// if it does not exist, and returns its collection.
    pub fn ensure_mail_folder(&self, folder: &str) -> Result<Collection> {
        let dir =
            mail_folder_dir(&self.inner.root, folder).ok_or_else(|| Error::NoSuchCollection {
                collection: format!("{MAIL}/{folder}"),
            })?;
        maildir::create_layout(&dir)?;
        if folder != INBOX {
            // Maildir++ marks subfolders with this empty file (Courier, Dovecot).
            let marker = dir.join("maildirfolder");
            if !marker.exists() {
                fs::write(&marker, b"").map_err(|e| Error::io(&marker, e))?;
            }
        }
        Ok(mail_collection(folder))
    }

    /// Runs blocking file work on tokio's blocking pool.
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
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
impl Mailbox for LocalMailbox {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn collections(&self) -> Result<Vec<Collection>> {
        self.run(|inner| inner.collections()).await
    }

    async fn changes_since(&self, collection: &str, state: Option<&SyncState>) -> Result<Changes> {
        let id = collection.to_owned();
        let state = state.cloned();
        self.run(move |inner| match inner.target(&id)? {
            Target::Vdir(v) => v.changes_since(state.as_ref()),
            Target::Maildir(m) => m.changes_since(state.as_ref()),
        })
        .await
    }

    async fn get_many(
        &self,
        collection: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<Item>)>> {
        let id = collection.to_owned();
        let hrefs = hrefs.to_vec();
        self.run(move |inner| match inner.target(&id)? {
            Target::Vdir(v) => Ok(hrefs.iter().map(|h| (h.clone(), v.read(h))).collect()),
            Target::Maildir(m) => m.get_many(&hrefs),
        })
        .await
    }

    async fn create(&self, collection: &str, name: &str, data: &[u8]) -> Result<ItemRef> {
        let id = collection.to_owned();
        let name = name.to_owned();
        let data = data.to_vec();
        self.run(move |inner| {
            let target = inner.target(&id)?;
            let _writes = inner.write_lock();
            match target {
                Target::Vdir(v) => v.create(&name, &data),
                Target::Maildir(m) => m.create(&data),
            }
        })
        .await
    }

    async fn update(
        &self,
        collection: &str,
        href: &str,
        expected: &Etag,
        data: &[u8],
    ) -> Result<ItemRef> {
        let id = collection.to_owned();
        let href = href.to_owned();
        let expected = expected.clone();
        let data = data.to_vec();
        self.run(move |inner| {
            let target = inner.target(&id)?;
            let _writes = inner.write_lock();
            match target {
                Target::Vdir(v) => v.update(&href, &expected, &data),
                Target::Maildir(_) => Err(unsupported(
                    &id,
                    "replacing a message",
                    "messages are immutable; create a new message and delete the old one",
                )),
            }
        })
        .await
    }

    async fn delete(&self, collection: &str, href: &str, expected: &Etag) -> Result<()> {
        let id = collection.to_owned();
        let href = href.to_owned();
        let expected = expected.clone();
        self.run(move |inner| {
            let target = inner.target(&id)?;
            let _writes = inner.write_lock();
            match target {
                Target::Vdir(v) => v.delete(&href, &expected),
                Target::Maildir(m) => m.delete(&href, &expected),
            }
        })
        .await
    }

    async fn message_flags(
        &self,
        folder: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<ItemRef>)>> {
        let id = folder.to_owned();
        let hrefs = hrefs.to_vec();
        self.run(move |inner| match inner.target(&id)? {
            Target::Maildir(m) => m.message_flags(&hrefs),
            Target::Vdir(_) => Err(unsupported(
                &id,
                "reading message flags",
                "it is not a mail folder",
            )),
        })
        .await
    }

    async fn copy_message_to(&self, folder: &str, href: &str, to: &std::path::Path) -> Result<u64> {
        let id = folder.to_owned();
        let href = href.to_owned();
        let to = to.to_path_buf();
        self.run(move |inner| match inner.target(&id)? {
            Target::Maildir(m) => m.copy_message_to(&href, &to),
            Target::Vdir(_) => Err(unsupported(
                &id,
                "copying a message",
                "it is not a mail folder",
            )),
        })
        .await
    }

    async fn message_sizes(
        &self,
        folder: &str,
        hrefs: &[Href],
    ) -> Result<Vec<(Href, Result<u64>)>> {
        let id = folder.to_owned();
        let hrefs = hrefs.to_vec();
        self.run(move |inner| match inner.target(&id)? {
            Target::Maildir(m) => m.message_sizes(&hrefs),
            Target::Vdir(_) => Err(unsupported(
                &id,
                "reading message sizes",
                "it is not a mail folder",
            )),
        })
        .await
    }

    async fn store_keywords(
        &self,
        folder: &str,
        href: &str,
        expected: &Etag,
        add: &[Keyword],
        remove: &[Keyword],
    ) -> Result<ItemRef> {
        let id = folder.to_owned();
        let href = href.to_owned();
        let expected = expected.clone();
        let add = add.to_vec();
        let remove = remove.to_vec();
        self.run(move |inner| {
            let target = inner.target(&id)?;
            let _writes = inner.write_lock();
            match target {
                Target::Maildir(m) => m.store_keywords(&href, &expected, &add, &remove),
                Target::Vdir(_) => Err(unsupported(
                    &id,
                    "setting keywords",
                    "it is not a mail folder (contacts, events and to-dos carry the CATEGORIES marker instead)",
                )),
            }
        })
        .await
    }

    async fn watch(&self) -> Result<Watch> {
        let root = self.inner.root.clone();
        let window = self.window;
        self.run(move |_| watch::watch(&root, window)).await
    }
}
