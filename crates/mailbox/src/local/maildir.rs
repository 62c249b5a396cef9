//! One Maildir++ folder (`mail/` is INBOX, `mail/.Sent` is `Sent`, ...).
//!
//! Href = the message file's base name (before `:`), which stays the same
//! while flags change and the file moves from `new/` to `cur/`. Flags live
//! in the file name (`:2,<flags>`): upper-case letters are the system flags,
//! `a`..`z` keywords named in the folder's `dovecot-keywords`.
//!
//! Etag = a stamp of the file as listed: its folder (`new`/`cur`), the info
//! part of its name (so any flag change is a new etag), size, mtime and
//! inode. Messages are immutable (Maildir, RFC 9051), so a stamp is exact
//! and `changes_since` never reads message bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::fsutil::{self, DotLock, PlaceError, Stamp};
use super::keywords::{KeywordTable, LOCK_STALE, LOCK_WAIT, UIDLIST_LOCK};
use super::state::LocalState;
use crate::error::{Error, Result};
use crate::types::{
    Changes, Etag, Href, Item, ItemRef, Keyword, MessageFlags, SyncState, SystemFlag,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    New,
    Cur,
}

impl Sub {
    fn as_str(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// Where a message file is now.
#[derive(Clone, Debug)]
struct Located {
    sub: Sub,
    file_name: String,
}

impl Located {
    /// The part after the first `:` (`2,FSa`), empty when there is none.
    fn info(&self) -> &str {
        self.file_name
            .split_once(':')
            .map(|(_, info)| info)
            .unwrap_or("")
    }

    /// The letters of the standard flags field (`2,<letters>[,<extra>]`).
    fn letters(&self) -> &str {
        match self.info().strip_prefix("2,") {
            Some(flags) => flags.split(',').next().unwrap_or(""),
            None => "",
        }
    }

    /// Dovecot's non-standard fields after the flags (`,<extra>`), kept as is.
    fn extra(&self) -> &str {
        match self.info().strip_prefix("2,") {
            Some(flags) => flags.find(',').map(|i| &flags[i..]).unwrap_or(""),
            None => "",
        }
    }
}

fn base_of(file_name: &str) -> &str {
    file_name.split(':').next().unwrap_or(file_name)
}

fn system_flag(letter: char) -> Option<SystemFlag> {
    Some(match letter {
        'D' => SystemFlag::Draft,
        'F' => SystemFlag::Flagged,
        'P' => SystemFlag::Passed,
        'R' => SystemFlag::Answered,
        'S' => SystemFlag::Seen,
        'T' => SystemFlag::Deleted,
        _ => return None,
    })
}

pub(super) struct Maildir<'a> {
    pub id: &'a str,
    pub dir: PathBuf,
}

impl Maildir<'_> {
    fn not_found(&self, href: &str) -> Error {
        Error::NotFound {
            collection: self.id.to_owned(),
            href: href.to_owned(),
        }
    }

    fn path(&self, loc: &Located) -> PathBuf {
        self.dir.join(loc.sub.as_str()).join(&loc.file_name)
    }

    fn etag(loc: &Located, meta: &fs::Metadata) -> Etag {
        let s = Stamp::of(meta);
        Etag::new(format!(
            "{}:{}:{:x}:{:x}:{:x}",
            loc.sub.as_str(),
            loc.info(),
            s.size,
            s.mtime_ns,
            s.ino
        ))
    }

    fn flags(loc: &Located, table: &KeywordTable) -> MessageFlags {
        let mut flags = MessageFlags::default();
        for letter in loc.letters().chars() {
            if let Some(flag) = system_flag(letter) {
                flags.system.insert(flag);
            } else if let Some(keyword) = table.keyword_of(letter) {
                flags.keywords.insert(keyword);
            }
        }
        flags
    }

    /// Every message of the folder by href, `cur/` winning over `new/` if a
    /// base name is in both (a copy caught mid-move).
    fn list(&self) -> Result<BTreeMap<Href, Located>> {
        let mut out = BTreeMap::new();
        for sub in [Sub::New, Sub::Cur] {
            let dir = self.dir.join(sub.as_str());
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let Ok(file_name) = entry.file_name().into_string() else {
                    tracing::warn!(dir = %dir.display(), "skipping a message whose file name is not UTF-8");
                    continue;
                };
                if file_name.starts_with('.') || entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let href = base_of(&file_name).to_owned();
                match out.get(&href) {
                    Some(Located {
                        sub: Sub::Cur,
                        file_name: seen,
                    }) if sub == Sub::Cur && seen.as_str() < file_name.as_str() => {}
                    _ => {
                        out.insert(href, Located { sub, file_name });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Finds one message without listing the whole folder when it is in `new/`.
    fn locate(&self, href: &str) -> Result<Option<Located>> {
        if href.is_empty() || href.contains('/') || href.contains(':') || href.starts_with('.') {
            return Ok(None);
        }
        let cur = self.dir.join("cur");
        let entries = fs::read_dir(&cur).map_err(|e| Error::io(&cur, e))?;
        let mut found: Option<String> = None;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&cur, e))?;
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            if base_of(&file_name) == href && found.as_ref().is_none_or(|f| *f > file_name) {
                found = Some(file_name);
            }
        }
        if let Some(file_name) = found {
            return Ok(Some(Located {
                sub: Sub::Cur,
                file_name,
            }));
        }
        let new = self.dir.join("new");
        let entries = fs::read_dir(&new).map_err(|e| Error::io(&new, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&new, e))?;
            if let Ok(file_name) = entry.file_name().into_string() {
                if base_of(&file_name) == href {
                    return Ok(Some(Located {
                        sub: Sub::New,
                        file_name,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The message as it is now, with its stamp etag.
    fn current(&self, href: &str) -> Result<(Located, Etag)> {
        let loc = self.locate(href)?.ok_or_else(|| self.not_found(href))?;
        let path = self.path(&loc);
        let meta = fs::metadata(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.not_found(href),
            _ => Error::io(&path, e),
        })?;
        let etag = Self::etag(&loc, &meta);
        Ok((loc, etag))
    }

    fn check_expected(&self, href: &str, expected: &Etag) -> Result<Located> {
        let (loc, current) = self.current(href)?;
        if &current != expected {
            return Err(Error::Conflict {
                collection: self.id.to_owned(),
                href: href.to_owned(),
                current,
            });
        }
        Ok(loc)
    }

    /// After a rename/unlink found the file gone: moved by someone else
    /// (conflict, with its etag now) or deleted.
    fn vanished(&self, href: &str) -> Error {
        match self.current(href) {
            Ok((_, current)) => Error::Conflict {
                collection: self.id.to_owned(),
                href: href.to_owned(),
                current,
            },
            Err(e) => e,
        }
    }

    fn read_loc(&self, href: &str, loc: &Located, table: &KeywordTable) -> Result<Item> {
        let path = self.path(loc);
        let mut file = fs::File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.not_found(href),
            _ => Error::io(&path, e),
        })?;
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let mut data = Vec::new();
        io::Read::read_to_end(&mut file, &mut data).map_err(|e| Error::io(&path, e))?;
        if data.is_empty() {
            return Err(Error::Malformed {
                collection: self.id.to_owned(),
                href: href.to_owned(),
                reason: "the message file is empty".to_owned(),
            });
        }
        Ok(Item {
            href: href.to_owned(),
            etag: Self::etag(loc, &meta),
            data,
            flags: Some(Self::flags(loc, table)),
        })
    }

    pub fn get_many(&self, hrefs: &[Href]) -> Result<Vec<(Href, Result<Item>)>> {
        let listed = self.list()?;
        let table = KeywordTable::read(&self.dir)?;
        Ok(hrefs
            .iter()
            .map(|href| {
                let item = match listed.get(href) {
                    Some(loc) => self.read_loc(href, loc, &table),
                    None => Err(self.not_found(href)),
                };
                (href.clone(), item)
            })
            .collect())
    }

    pub fn message_flags(&self, hrefs: &[Href]) -> Result<Vec<(Href, Result<ItemRef>)>> {
        self.read_metadata(hrefs, |href, loc, meta, table| ItemRef {
            href: href.clone(),
            etag: Self::etag(loc, meta),
            flags: Some(Self::flags(loc, table)),
        })
    }

    /// The message file copied to `to` (the kernel copies; never read whole).
    pub fn copy_message_to(&self, href: &Href, to: &Path) -> Result<u64> {
        let listed = self.list()?;
        let loc = listed.get(href).ok_or_else(|| self.not_found(href))?;
        let from = self.path(loc);
        fs::copy(&from, to).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.not_found(href),
            _ => Error::io(&from, e),
        })
    }

    pub fn message_sizes(&self, hrefs: &[Href]) -> Result<Vec<(Href, Result<u64>)>> {
        self.read_metadata(hrefs, |_, _, meta, _| meta.len())
    }

    /// One result per href, from the file's metadata (its content unread).
    fn read_metadata<T>(
        &self,
        hrefs: &[Href],
        read: impl Fn(&Href, &Located, &fs::Metadata, &KeywordTable) -> T,
    ) -> Result<Vec<(Href, Result<T>)>> {
        let listed = self.list()?;
        let table = KeywordTable::read(&self.dir)?;
        Ok(hrefs
            .iter()
            .map(|href| {
                let found = match listed.get(href) {
                    Some(loc) => {
                        let path = self.path(loc);
                        fs::metadata(&path)
                            .map(|meta| read(href, loc, &meta, &table))
                            .map_err(|e| match e.kind() {
                                io::ErrorKind::NotFound => self.not_found(href),
                                _ => Error::io(&path, e),
                            })
                    }
                    None => Err(self.not_found(href)),
                };
                (href.clone(), found)
            })
            .collect())
    }

    pub fn changes_since(&self, state: Option<&SyncState>) -> Result<Changes> {
        let old = match state.map(|s| LocalState::decode(self.id, s)).transpose()? {
            None => BTreeMap::new(),
            Some(LocalState::Maildir { i, .. }) => i,
            Some(LocalState::Vdir { .. }) => {
                return Err(Error::InvalidSyncState {
                    collection: self.id.to_owned(),
                    reason: "it is a vdir state".to_owned(),
                })
            }
        };
        let table = KeywordTable::read(&self.dir)?;
        let mut items = BTreeMap::new();
        let mut changes = Changes {
            changed: Vec::new(),
            deleted: Vec::new(),
            failed: Vec::new(),
            state: SyncState::new(""),
        };
        for (href, loc) in self.list()? {
            let path = self.path(&loc);
            match fs::metadata(&path) {
                Ok(meta) => {
                    let etag = Self::etag(&loc, &meta);
                    if old.get(&href) != Some(&etag) {
                        changes.changed.push(ItemRef {
                            href: href.clone(),
                            etag: etag.clone(),
                            flags: Some(Self::flags(&loc, &table)),
                        });
                    }
                    items.insert(href, etag);
                }
                // Renamed or deleted between listing and stat: the next
                // listing sees where it went.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(previous) = old.get(&href) {
                        items.insert(href, previous.clone());
                    }
                }
                Err(e) => {
                    if let Some(previous) = old.get(&href) {
                        items.insert(href.clone(), previous.clone());
                    }
                    changes.failed.push((href, Error::io(&path, e)));
                }
            }
        }
        changes.deleted = old
            .keys()
            .filter(|href| !items.contains_key(*href))
            .cloned()
            .collect();
        changes.state = LocalState::encode_maildir(self.id, &items);
        Ok(changes)
    }

    /// Delivers a message: written in `tmp/`, then linked into `new/` under
    /// a unique name (the Maildir delivery protocol).
    pub fn create(&self, data: &[u8]) -> Result<ItemRef> {
        if data.is_empty() {
            return Err(Error::Malformed {
                collection: self.id.to_owned(),
                href: String::new(),
                reason: "the message is empty".to_owned(),
            });
        }
        let href = unique_name(data.len());
        let tmp = self.dir.join("tmp").join(&href);
        fsutil::write_file_new(&tmp, data).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(&tmp, e)
        })?;
        let target = self.dir.join("new").join(&href);
        match fsutil::place_new(&tmp, &target) {
            Ok(()) => {}
            Err(PlaceError::Exists) => {
                return Err(Error::AlreadyExists {
                    collection: self.id.to_owned(),
                    href,
                })
            }
            Err(PlaceError::Io(path, e)) => return Err(Error::io(path, e)),
        }
        fsutil::sync_dir(&self.dir.join("new"));
        let loc = Located {
            sub: Sub::New,
            file_name: href.clone(),
        };
        let meta = fs::metadata(&target).map_err(|e| Error::io(&target, e))?;
        Ok(ItemRef {
            etag: Self::etag(&loc, &meta),
            href,
            flags: Some(MessageFlags::default()),
        })
    }

    pub fn delete(&self, href: &str, expected: &Etag) -> Result<()> {
        let loc = self.check_expected(href, expected)?;
        let path = self.path(&loc);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.vanished(href)),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Sets and clears keywords by renaming the file to its new flags
    /// (moving it to `cur/`), holding the folder's `dovecot-uidlist.lock`
    /// as Dovecot does while it changes a Maildir.
    pub fn store_keywords(
        &self,
        href: &str,
        expected: &Etag,
        add: &[Keyword],
        remove: &[Keyword],
    ) -> Result<ItemRef> {
        let _uidlist = DotLock::acquire(
            &self.dir,
            self.dir.join(UIDLIST_LOCK),
            LOCK_STALE,
            LOCK_WAIT,
        )?;
        let loc = self.check_expected(href, expected)?;
        let mut table = KeywordTable::read(&self.dir)?;
        let mut letters: BTreeSet<char> = loc.letters().chars().collect();
        for keyword in remove {
            if let Some(letter) = table.letter_of(keyword) {
                letters.remove(&letter);
            }
        }
        let mut table_changed = false;
        for keyword in add {
            let letter = match table.letter_of(keyword) {
                Some(letter) => letter,
                None => {
                    table_changed = true;
                    table
                        .allocate(keyword)
                        .ok_or_else(|| Error::KeywordSlotsFull {
                            collection: self.id.to_owned(),
                            keyword: keyword.to_string(),
                        })?
                }
            };
            letters.insert(letter);
        }
        if table_changed {
            table.write(&self.dir)?;
        }
        let flags_field: String = letters.into_iter().collect();
        let new_loc = Located {
            sub: Sub::Cur,
            file_name: format!("{href}:2,{flags_field}{}", loc.extra()),
        };
        let old_path = self.path(&loc);
        let new_path = self.path(&new_loc);
        if old_path != new_path {
            match fs::rename(&old_path, &new_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.vanished(href)),
                Err(e) => return Err(Error::io(&old_path, e)),
            }
            fsutil::sync_dir(&self.dir.join("cur"));
        }
        let meta = fs::metadata(&new_path).map_err(|e| Error::io(&new_path, e))?;
        Ok(ItemRef {
            href: href.to_owned(),
            etag: Self::etag(&new_loc, &meta),
            flags: Some(Self::flags(&new_loc, &table)),
        })
    }
}

/// `<seconds>.M<microseconds>P<pid>Q<counter>R<random>.<host>,S=<size>`:
/// unique per host, process and call (Maildir's naming rule), with Dovecot's
/// `S=` size field.
fn unique_name(size: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static HOST: OnceLock<String> = OnceLock::new();
    let host = HOST.get_or_init(fsutil::maildir_hostname);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let random = uuid::Uuid::new_v4().as_u128() as u32;
    format!(
        "{}.M{}P{}Q{}R{random:08x}.{host},S={size}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    )
}

/// Creates the `cur/`, `new/` and `tmp/` folders of a Maildir at `dir`.
pub(super) fn create_layout(dir: &Path) -> Result<()> {
    for sub in ["cur", "new", "tmp"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_parts() {
        let loc = Located {
            sub: Sub::Cur,
            file_name: "123.M4P5.host,S=10:2,FSab,Xextra".to_owned(),
        };
        assert_eq!(base_of(&loc.file_name), "123.M4P5.host,S=10");
        assert_eq!(loc.info(), "2,FSab,Xextra");
        assert_eq!(loc.letters(), "FSab");
        assert_eq!(loc.extra(), ",Xextra");
        let new = Located {
            sub: Sub::New,
            file_name: "123.M4P5.host".to_owned(),
        };
        assert_eq!(new.letters(), "");
        assert_eq!(new.extra(), "");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name(3), unique_name(3));
        assert!(!unique_name(3).contains('/'));
    }
}
