//! The local backend's sync state: a map href → stamp that `changes_since`
//! compares a fresh directory listing against.
//!
//! Written by hand as tab-separated lines rather than JSON: a no-change sync
//! of 30,000 items decodes it on every call, and a line format sorted by href
//! decodes several times faster than serde's internally tagged JSON (which
//! buffers the whole document before dispatching on the tag). Hrefs, etags
//! and collection ids are percent-escaped for `%`, tab, CR and LF.
//!
//! ```text
//! crmsync-local 2 vdir <collection> <listing time ns>
//! <href> TAB <size> TAB <mtime ns> TAB <ctime ns> TAB <inode> TAB <etag>
//! ```
//! or `crmsync-local 2 maildir <collection>` followed by `<href> TAB <etag>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::fsutil::Stamp;
use crate::error::{Error, Result};
use crate::types::{Etag, SyncState};

const MAGIC: &str = "crmsync-local";
const VERSION: u32 = 2;

/// A vdir entry: the stamp seen and the content etag computed then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct VdirEntry(pub u64, pub i64, pub i64, pub u64, pub Etag);

impl VdirEntry {
    pub fn new(stamp: Stamp, etag: Etag) -> Self {
        VdirEntry(stamp.size, stamp.mtime_ns, stamp.ctime_ns, stamp.ino, etag)
    }

    pub fn stamp(&self) -> Stamp {
        Stamp {
            size: self.0,
            mtime_ns: self.1,
            ctime_ns: self.2,
            ino: self.3,
        }
    }

    pub fn etag(&self) -> &Etag {
        &self.4
    }
}

#[derive(Debug)]
pub(super) enum LocalState {
    /// `t` when the listing started (ns since the epoch), `i` items.
    Vdir {
        t: i64,
        i: BTreeMap<String, VdirEntry>,
    },
    /// Maildir: the etag is itself a stamp (folder, flags, size, mtime, inode).
    Maildir { i: BTreeMap<String, Etag> },
}

impl LocalState {
    /// Encodes a vdir state for `collection`.
    pub fn encode_vdir(
        collection: &str,
        scanned_ns: i64,
        items: &BTreeMap<String, VdirEntry>,
    ) -> SyncState {
        let mut out = String::with_capacity(64 + items.len() * 96);
        let _ = writeln!(
            out,
            "{MAGIC} {VERSION} vdir {} {scanned_ns}",
            escape(collection)
        );
        for (href, VdirEntry(size, mtime, ctime, ino, etag)) in items {
            let _ = writeln!(
                out,
                "{}\t{size}\t{mtime}\t{ctime}\t{ino}\t{}",
                escape(href),
                escape(etag.as_str())
            );
        }
        SyncState::new(out)
    }

    /// Encodes a Maildir state for `collection`.
    pub fn encode_maildir(collection: &str, items: &BTreeMap<String, Etag>) -> SyncState {
        let mut out = String::with_capacity(64 + items.len() * 80);
        let _ = writeln!(out, "{MAGIC} {VERSION} maildir {}", escape(collection));
        for (href, etag) in items {
            let _ = writeln!(out, "{}\t{}", escape(href), escape(etag.as_str()));
        }
        SyncState::new(out)
    }

    /// Decodes a state and checks it belongs to `collection`.
    pub fn decode(collection: &str, state: &SyncState) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSyncState {
            collection: collection.to_owned(),
            reason,
        };
        let mut lines = state.as_str().lines();
        let header = lines.next().unwrap_or("");
        let mut head = header.split(' ');
        if head.next() != Some(MAGIC) {
            return Err(invalid("not a local-backend state".to_owned()));
        }
        match head.next().and_then(|v| v.parse::<u32>().ok()) {
            Some(VERSION) => {}
            v => {
                return Err(invalid(format!(
                    "state version {}, expected {VERSION}",
                    v.map_or("?".to_owned(), |v| v.to_string())
                )))
            }
        }
        let format = head.next().unwrap_or("");
        let owner = unescape(head.next().unwrap_or(""));
        if owner != collection {
            return Err(invalid(format!("it belongs to collection {owner}")));
        }
        let bad_line = |n: usize| invalid(format!("line {} is damaged", n + 2));
        match format {
            "vdir" => {
                let t = head
                    .next()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| invalid("the listing time is missing".to_owned()))?;
                let mut items = Vec::new();
                for (n, line) in lines.enumerate() {
                    let f: Vec<&str> = line.split('\t').collect();
                    let [href, size, mtime, ctime, ino, etag] = f[..] else {
                        return Err(bad_line(n));
                    };
                    let entry = (|| {
                        Some(VdirEntry(
                            size.parse().ok()?,
                            mtime.parse().ok()?,
                            ctime.parse().ok()?,
                            ino.parse().ok()?,
                            Etag::new(unescape(etag)),
                        ))
                    })()
                    .ok_or_else(|| bad_line(n))?;
                    items.push((unescape(href), entry));
                }
                // Written sorted, so collecting builds the tree in bulk.
                Ok(LocalState::Vdir {
                    t,
                    i: items.into_iter().collect(),
                })
            }
            "maildir" => {
                let mut items = Vec::new();
                for (n, line) in lines.enumerate() {
                    let (href, etag) = line.split_once('\t').ok_or_else(|| bad_line(n))?;
                    items.push((unescape(href), Etag::new(unescape(etag))));
                }
                Ok(LocalState::Maildir {
                    i: items.into_iter().collect(),
                })
            }
            other => Err(invalid(format!("unknown state format '{other}'"))),
        }
    }
}

/// A vdir state read without copying: `(href as stored, stamp)` per line,
/// in the stored (sorted) order. The no-change path compares it with the
/// listing directly; anything else decodes the state in full.
pub(super) struct VdirView<'a> {
    pub scanned_ns: i64,
    pub entries: Vec<(&'a str, Stamp)>,
}

impl<'a> VdirView<'a> {
    /// `None` when the state is not a readable vdir state of `collection`
    /// (the full decode then says why).
    pub fn read(collection: &str, state: &'a SyncState) -> Option<Self> {
        let mut lines = state.as_str().lines();
        let mut head = lines.next()?.split(' ');
        let version = VERSION.to_string();
        if head.next()? != MAGIC || head.next()? != version || head.next()? != "vdir" {
            return None;
        }
        if unescape(head.next()?) != collection {
            return None;
        }
        let scanned_ns = head.next()?.parse().ok()?;
        let mut entries = Vec::new();
        for line in lines {
            let mut f = line.split('\t');
            let href = f.next()?;
            let stamp = Stamp {
                size: f.next()?.parse().ok()?,
                mtime_ns: f.next()?.parse().ok()?,
                ctime_ns: f.next()?.parse().ok()?,
                ino: f.next()?.parse().ok()?,
            };
            entries.push((href, stamp));
        }
        Some(VdirView {
            scanned_ns,
            entries,
        })
    }
}

fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['%', '\t', '\r', '\n', ' ']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\t' => out.push_str("%09"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out.into()
}

fn unescape(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    text.replace("%09", "\t")
        .replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%20", " ")
        .replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_names_its_collection() {
        let mut items = BTreeMap::new();
        items.insert(
            "a.vcf".to_owned(),
            VdirEntry(3, 10, 11, 42, Etag::new("abc")),
        );
        items.insert(
            "odd %\tname\n.vcf".to_owned(),
            VdirEntry(1, 2, 3, 4, Etag::new("e")),
        );
        let s = LocalState::encode_vdir("contacts", 99, &items);
        match LocalState::decode("contacts", &s).unwrap() {
            LocalState::Vdir { i, .. } => assert_eq!(i, items),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            LocalState::decode("contacts", &s).unwrap(),
            LocalState::Vdir { t: 99, .. }
        ));
        assert!(matches!(
            LocalState::decode("calendar", &s),
            Err(Error::InvalidSyncState { .. })
        ));
        assert!(LocalState::decode("contacts", &SyncState::new("garbage")).is_err());
    }
}
