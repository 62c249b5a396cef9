//! The local backend's sync state: a compact JSON map href → stamp that
//! `changes_since` compares a fresh directory listing against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fsutil::Stamp;
use crate::error::{Error, Result};
use crate::types::{Etag, SyncState};

const VERSION: u32 = 1;

/// A vdir entry: the stamp seen and the content etag computed then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub(super) enum LocalState {
    /// `v` version, `c` collection, `t` when the listing started (ns since
    /// the epoch), `i` items.
    Vdir {
        v: u32,
        c: String,
        t: i64,
        i: BTreeMap<String, VdirEntry>,
    },
    /// Maildir: the etag is itself a stamp (folder, flags, size, mtime, inode).
    Maildir {
        v: u32,
        c: String,
        i: BTreeMap<String, Etag>,
    },
}

impl LocalState {
    pub fn vdir(collection: &str, scanned_ns: i64, items: BTreeMap<String, VdirEntry>) -> Self {
        LocalState::Vdir {
            v: VERSION,
            c: collection.to_owned(),
            t: scanned_ns,
            i: items,
        }
    }

    pub fn maildir(collection: &str, items: BTreeMap<String, Etag>) -> Self {
        LocalState::Maildir {
            v: VERSION,
            c: collection.to_owned(),
            i: items,
        }
    }

    pub fn encode(&self) -> SyncState {
        SyncState::new(serde_json::to_string(self).expect("sync state serializes"))
    }

    /// Decodes a state and checks it belongs to `collection`.
    pub fn decode(collection: &str, state: &SyncState) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSyncState {
            collection: collection.to_owned(),
            reason,
        };
        let decoded: LocalState = serde_json::from_str(state.as_str())
            .map_err(|e| invalid(format!("not a local-backend state: {e}")))?;
        let (v, c) = match &decoded {
            LocalState::Vdir { v, c, .. } | LocalState::Maildir { v, c, .. } => (*v, c),
        };
        if v != VERSION {
            return Err(invalid(format!("state version {v}, expected {VERSION}")));
        }
        if c != collection {
            return Err(invalid(format!("it belongs to collection {c}")));
        }
        Ok(decoded)
    }
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
        let s = LocalState::vdir("contacts", 99, items).encode();
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
