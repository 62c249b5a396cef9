//! A vdir collection: one folder, one `.vcf`/`.ics` file per item.
//!
//! Etag = a hash of the content. The sync state keeps each file's stamp
//! (size, mtime, ctime, inode) next to that hash, so `changes_since` reads
//! only the files whose stamp moved (or that were written so close to the
//! last listing that an in-place rewrite could have kept the same stamp).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::fsutil::{self, content_etag, read_with_stamp, PlaceError, Stamp};
use super::state::{LocalState, VdirEntry, VdirView};
use crate::error::{Error, Result};
use crate::types::{Changes, CollectionKind, Etag, Href, Item, ItemRef, SyncState};

/// Files written less than this long before a listing may be rewritten in
/// place within the same timestamp tick without changing their stamp (2 s is
/// FAT's mtime resolution; ext4 ticks in milliseconds). Such entries are
/// hashed again by the next `changes_since` (git's "racily clean" rule).
const RACY_NS: i64 = 2_000_000_000;

/// Longest file name produced from a name hint, in bytes (file systems allow 255).
const MAX_NAME: usize = 200;

pub(super) struct Vdir<'a> {
    pub id: &'a str,
    pub dir: PathBuf,
    pub kind: CollectionKind,
}

impl Vdir<'_> {
    pub fn ext(&self) -> &'static str {
        match self.kind {
            CollectionKind::Contacts => ".vcf",
            _ => ".ics",
        }
    }

    fn path_of(&self, href: &str) -> Result<PathBuf> {
        if !self.is_item_name(href) {
            return Err(self.not_found(href));
        }
        Ok(self.dir.join(href))
    }

    /// A file that holds an item: not hidden (temp files are), with the
    /// collection's extension, one path component.
    fn is_item_name(&self, name: &str) -> bool {
        !name.starts_with('.')
            && !name.contains('/')
            && !name.contains('\\')
            && name.len() > self.ext().len()
            && name.is_char_boundary(name.len() - self.ext().len())
            && name[name.len() - self.ext().len()..].eq_ignore_ascii_case(self.ext())
    }

    fn not_found(&self, href: &str) -> Error {
        Error::NotFound {
            collection: self.id.to_owned(),
            href: href.to_owned(),
        }
    }

    fn item_io(&self, href: &str, path: &Path, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            self.not_found(href)
        } else {
            Error::io(path, e)
        }
    }

    /// The item files of the folder with their `stat` (which may fail per file).
    fn list(&self) -> Result<Vec<(Href, io::Result<fs::Metadata>)>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(dir = %self.dir.display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            if !self.is_item_name(&name) {
                continue;
            }
            let file_type = entry.file_type();
            if file_type.as_ref().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // The directory entry's own stat avoids a path walk per file;
            // links are followed (a dangling link is an item that cannot be read).
            let meta = if file_type.is_ok_and(|t| t.is_symlink()) {
                fs::metadata(entry.path())
            } else {
                entry.metadata()
            };
            out.push((name, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Only the framing is checked (the first line), never the properties:
    /// parsing vCard/iCalendar is another module's job.
    fn check_framing(&self, href: &str, data: &[u8]) -> Result<()> {
        let begin: &[u8] = match self.kind {
            CollectionKind::Contacts => b"BEGIN:VCARD",
            _ => b"BEGIN:VCALENDAR",
        };
        let mut rest = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
        while let Some((first, tail)) = rest.split_first() {
            if first.is_ascii_whitespace() {
                rest = tail;
            } else {
                break;
            }
        }
        let ok = rest.len() >= begin.len() && rest[..begin.len()].eq_ignore_ascii_case(begin);
        if ok {
            Ok(())
        } else {
            let what = std::str::from_utf8(begin).unwrap_or_default();
            Err(Error::Malformed {
                collection: self.id.to_owned(),
                href: href.to_owned(),
                reason: if data.is_empty() {
                    "the file is empty".to_owned()
                } else {
                    format!("the file does not start with {what}")
                },
            })
        }
    }

    pub fn read(&self, href: &str) -> Result<Item> {
        let path = self.path_of(href)?;
        let (data, _) = read_with_stamp(&path).map_err(|e| self.item_io(href, &path, e))?;
        self.check_framing(href, &data)?;
        Ok(Item {
            href: href.to_owned(),
            etag: content_etag(&data),
            data,
            flags: None,
        })
    }

    pub fn changes_since(&self, state: Option<&SyncState>) -> Result<Changes> {
        let listed = self.list()?;
        let mut changes = Changes {
            changed: Vec::new(),
            deleted: Vec::new(),
            failed: Vec::new(),
            state: SyncState::new(""),
        };
        // The common case, nothing changed: one comparison of the listing
        // with the stored state, without decoding it into owned values.
        if let Some(s) = state {
            if self.unchanged(&listed, s) {
                changes.state = s.clone();
                return Ok(changes);
            }
        }
        let (old_scan, mut items) =
            match state.map(|s| LocalState::decode(self.id, s)).transpose()? {
                None => (0, BTreeMap::new()),
                Some(LocalState::Vdir { t, i }) => (t, i),
                Some(LocalState::Maildir { .. }) => {
                    return Err(Error::InvalidSyncState {
                        collection: self.id.to_owned(),
                        reason: "it is a Maildir state".to_owned(),
                    })
                }
            };
        let scan = fsutil::now_ns();
        // `items` starts as the old state and is edited in place: a clean,
        // unchanged entry costs one stamp comparison and no allocation.
        // While nothing at all moved (and nothing was racy), the stored state
        // is still exact and is returned as is, without re-encoding.
        let mut all_clean = true;
        for (href, meta) in &listed {
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) => {
                    all_clean = false;
                    let path = self.dir.join(href);
                    changes.failed.push((
                        href.clone(),
                        Error::io(&path, io::Error::new(e.kind(), e.to_string())),
                    ));
                    continue;
                }
            };
            let stamp = Stamp::of(meta);
            let previous = items.get(href);
            if let Some(p) = previous {
                let racy = p.stamp().latest_ns() + RACY_NS > old_scan;
                if p.stamp() == stamp && !racy {
                    continue;
                }
            }
            all_clean = false;
            let path = self.dir.join(href);
            match read_with_stamp(&path) {
                Ok((data, stamp)) => {
                    let etag = content_etag(&data);
                    if previous.map(VdirEntry::etag) != Some(&etag) {
                        changes.changed.push(ItemRef {
                            href: href.clone(),
                            etag: etag.clone(),
                            flags: None,
                        });
                    }
                    items.insert(href.clone(), VdirEntry::new(stamp, etag));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Deleted between the listing and the read: the next
                    // listing reports it.
                }
                Err(e) => changes.failed.push((href.clone(), Error::io(&path, e))),
            }
        }
        if items.len() != listed.len() || !all_clean {
            // Both sides are sorted by href: one merge finds the deletions.
            let mut present = listed.iter().map(|(h, _)| h).peekable();
            let mut gone = Vec::new();
            for href in items.keys() {
                while present.next_if(|h| *h < href).is_some() {}
                if present.peek() != Some(&href) {
                    gone.push(href.clone());
                }
            }
            for href in &gone {
                items.remove(href);
            }
            changes.deleted = gone;
        }
        changes.state = match state {
            Some(s) if all_clean && changes.deleted.is_empty() => s.clone(),
            _ => LocalState::encode_vdir(self.id, scan, &items),
        };
        Ok(changes)
    }

    /// True when every listed item has the stamp `state` recorded, long
    /// enough before that listing to be trusted, and nothing was added or
    /// removed.
    fn unchanged(&self, listed: &[(Href, io::Result<fs::Metadata>)], state: &SyncState) -> bool {
        let Some(view) = VdirView::read(self.id, state) else {
            return false;
        };
        listed.len() == view.entries.len()
            && listed
                .iter()
                .zip(&view.entries)
                .all(|((href, meta), (stored, stamp))| {
                    href == stored
                        && meta.as_ref().is_ok_and(|m| Stamp::of(m) == *stamp)
                        && stamp.latest_ns() + RACY_NS <= view.scanned_ns
                })
    }

    /// The file name for a name hint: the hint itself when it is a plain,
    /// safe file name (letters and digits of any script, `-_.@+=~,`), else
    /// a hash of it; a random one for an empty hint.
    pub fn file_name_for(&self, name: &str) -> String {
        let ext = self.ext();
        let mut stem = name.trim();
        if stem.len() > ext.len()
            && stem.is_char_boundary(stem.len() - ext.len())
            && stem[stem.len() - ext.len()..].eq_ignore_ascii_case(ext)
        {
            stem = &stem[..stem.len() - ext.len()];
        }
        let safe = !stem.is_empty()
            && !stem.starts_with('.')
            && stem.len() + ext.len() <= MAX_NAME
            && stem
                .chars()
                .all(|c| c.is_alphanumeric() || "-_.@+=~,".contains(c));
        if stem.is_empty() {
            format!("{}{ext}", uuid::Uuid::new_v4())
        } else if safe {
            format!("{stem}{ext}")
        } else {
            let hash = content_etag(stem.as_bytes());
            format!("{hash}{ext}")
        }
    }

    pub fn create(&self, name: &str, data: &[u8]) -> Result<ItemRef> {
        let href = self.file_name_for(name);
        self.check_framing(&href, data)?;
        let target = self.dir.join(&href);
        let tmp = fsutil::write_temp(&self.dir, data)?;
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
        fsutil::sync_dir(&self.dir);
        Ok(ItemRef {
            href,
            etag: content_etag(data),
            flags: None,
        })
    }

    /// Checks the precondition: the file still holds the version `expected`.
    /// Returns the stamp of the bytes checked, so the caller can make sure
    /// nothing touched the file between this check and its own write.
    fn check_expected(&self, href: &str, path: &Path, expected: &Etag) -> Result<Stamp> {
        let (data, stamp) = read_with_stamp(path).map_err(|e| self.item_io(href, path, e))?;
        let current = content_etag(&data);
        if &current != expected {
            return Err(Error::Conflict {
                collection: self.id.to_owned(),
                href: href.to_owned(),
                current,
            });
        }
        Ok(stamp)
    }

    /// Narrows the window between the check and the write to one `stat`:
    /// if the stamp moved since the check, someone wrote meanwhile.
    fn recheck_stamp(&self, href: &str, path: &Path, checked: Stamp) -> Result<()> {
        let now = fs::metadata(path).map_err(|e| self.item_io(href, path, e))?;
        if Stamp::of(&now) == checked {
            return Ok(());
        }
        let (data, _) = read_with_stamp(path).map_err(|e| self.item_io(href, path, e))?;
        Err(Error::Conflict {
            collection: self.id.to_owned(),
            href: href.to_owned(),
            current: content_etag(&data),
        })
    }

    pub fn update(&self, href: &str, expected: &Etag, data: &[u8]) -> Result<ItemRef> {
        let path = self.path_of(href)?;
        self.check_framing(href, data)?;
        let checked = self.check_expected(href, &path, expected)?;
        let tmp = fsutil::write_temp(&self.dir, data)?;
        if let Err(e) = self.recheck_stamp(href, &path, checked) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        fsutil::sync_dir(&self.dir);
        Ok(ItemRef {
            href: href.to_owned(),
            etag: content_etag(data),
            flags: None,
        })
    }

    pub fn delete(&self, href: &str, expected: &Etag) -> Result<()> {
        let path = self.path_of(href)?;
        let checked = self.check_expected(href, &path, expected)?;
        self.recheck_stamp(href, &path, checked)?;
        fs::remove_file(&path).map_err(|e| self.item_io(href, &path, e))?;
        fsutil::sync_dir(&self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state whose entry has the file's current stamp but another etag:
    /// what a same-size in-place rewrite within one timestamp tick leaves.
    fn forged_state(v: &Vdir<'_>, href: &str, scanned_ns: i64) -> SyncState {
        let meta = fs::metadata(v.dir.join(href)).unwrap();
        let mut items = BTreeMap::new();
        items.insert(
            href.to_owned(),
            VdirEntry::new(Stamp::of(&meta), Etag::new("etag-before-the-rewrite")),
        );
        LocalState::encode_vdir(v.id, scanned_ns, &items)
    }

    #[test]
    fn racily_clean_entries_are_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vdir {
            id: "contacts",
            dir: dir.path().to_path_buf(),
            kind: CollectionKind::Contacts,
        };
        let created = v.create("racy", b"BEGIN:VCARD\r\nEND:VCARD\r\n").unwrap();
        let written = Stamp::of(&fs::metadata(dir.path().join(&created.href)).unwrap());

        // Listed in the same tick as the write: the stamp proves nothing.
        let racy = forged_state(&v, &created.href, written.latest_ns());
        let changes = v.changes_since(Some(&racy)).unwrap();
        assert_eq!(changes.changed.len(), 1, "racy entry must be re-read");
        assert_eq!(changes.changed[0].etag, created.etag);

        // Listed well after the write: an equal stamp is trusted, nothing read.
        let settled = forged_state(&v, &created.href, written.latest_ns() + 3 * RACY_NS);
        assert!(v.changes_since(Some(&settled)).unwrap().is_empty());
    }

    #[test]
    fn name_hints_become_file_names() {
        let v = Vdir {
            id: "contacts",
            dir: PathBuf::from("/unused"),
            kind: CollectionKind::Contacts,
        };
        assert_eq!(v.file_name_for("abc@example.com"), "abc@example.com.vcf");
        assert_eq!(v.file_name_for("abc.VCF"), "abc.vcf");
        assert_eq!(v.file_name_for("zoë-日本"), "zoë-日本.vcf");
        let hashed = v.file_name_for("../x");
        assert!(
            hashed.ends_with(".vcf") && !hashed.contains('/'),
            "{hashed}"
        );
        assert_eq!(hashed, v.file_name_for("../x"), "stable for one hint");
        assert!(v.file_name_for("").ends_with(".vcf"));
    }
}
