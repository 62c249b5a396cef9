//! The sync state of one folder (opaque text for the agent) and compact UID sets.

use std::collections::BTreeMap;
use std::fmt;

use crmsync_mailbox::{Error, Keyword, Result, SyncState};
use serde::{Deserialize, Serialize};

/// A set of UIDs as sorted, disjoint, non-adjacent inclusive ranges; written
/// as an IMAP sequence set (`1:5,7,9:12`), so a 50,000-message folder with a
/// few gaps is a few bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidSet(Vec<(u32, u32)>);

impl UidSet {
    pub fn from_sorted_iter(uids: impl IntoIterator<Item = u32>) -> Self {
        let mut set = UidSet::default();
        for uid in uids {
            set.push(uid);
        }
        set
    }

    /// Adds `uid`, which must not be below the largest present (else it is
    /// inserted the slow way).
    pub fn push(&mut self, uid: u32) {
        match self.0.last_mut() {
            Some((_, hi)) if *hi >= uid => self.insert(uid),
            Some((_, hi)) if *hi + 1 == uid => *hi = uid,
            _ => self.0.push((uid, uid)),
        }
    }

    pub fn insert(&mut self, uid: u32) {
        if self.contains(uid) {
            return;
        }
        let mut all: Vec<u32> = self.iter().collect();
        let at = all.partition_point(|&u| u < uid);
        all.insert(at, uid);
        *self = UidSet::from_sorted_iter(all);
    }

    pub fn contains(&self, uid: u32) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < uid);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= uid)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.iter().map(|&(lo, hi)| (hi - lo) as usize + 1).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|&(lo, hi)| lo..=hi)
    }

    /// The UIDs of this set that fall in `ranges`.
    pub fn within(&self, ranges: &[(u32, u32)]) -> Vec<u32> {
        self.iter()
            .filter(|&u| ranges.iter().any(|&(lo, hi)| lo <= u && u <= hi))
            .collect()
    }

    /// This set without `remove` and with `add`.
    pub fn edit(&self, remove: &[u32], add: &[u32]) -> UidSet {
        let mut all: Vec<u32> = self
            .iter()
            .filter(|u| !remove.contains(u))
            .chain(add.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        UidSet::from_sorted_iter(all)
    }

    pub fn parse(text: &str) -> Option<UidSet> {
        let mut out: Vec<u32> = Vec::new();
        let mut set = UidSet::default();
        if text.is_empty() {
            return Some(set);
        }
        for part in text.split(',') {
            let (lo, hi) = match part.split_once(':') {
                Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
                None => {
                    let v = part.parse::<u32>().ok()?;
                    (v, v)
                }
            };
            if lo == 0 || hi < lo {
                return None;
            }
            if set.0.last().is_some_and(|&(_, last)| lo <= last) {
                // Not sorted: rebuild from scratch (rare, never written by us).
                out.extend(set.iter());
                out.extend(lo..=hi);
                set = UidSet::default();
                continue;
            }
            set.0.push((lo, hi));
        }
        if !out.is_empty() {
            out.extend(set.iter());
            out.sort_unstable();
            out.dedup();
            set = UidSet::from_sorted_iter(out);
        }
        Some(set)
    }
}

impl fmt::Display for UidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}:{hi}")?;
            }
        }
        Ok(())
    }
}

/// What `changes_since` stores for a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderState {
    /// Format version.
    pub v: u32,
    /// The folder name (a state of another folder is refused).
    pub folder: String,
    pub uidvalidity: u32,
    /// CONDSTORE: the folder's HIGHESTMODSEQ when listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highestmodseq: Option<u64>,
    /// CONDSTORE: every UID present (a sequence set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uids: Option<String>,
    /// Without CONDSTORE: the UIDs of each flag combination (the canonical
    /// flag text, see `flags::signature`). Few combinations exist, so this
    /// stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<BTreeMap<String, String>>,
    /// Without CONDSTORE, what the quick check compares (see
    /// `changes::unchanged_without_condstore`): EXISTS and UIDNEXT at the
    /// listing (equal both ⇒ nothing appended or expunged since),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uidnext: Option<u32>,
    /// a hash of the folder's `$CRMRegarding:` keywords (a new regarding
    /// keyword in the folder shows in SELECT's FLAGS),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regarding_keywords: Option<u64>,
    /// and when every flag was last listed (seconds since 1970), so flag
    /// changes the quick check cannot see are caught within the rescan
    /// interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_at: Option<u64>,
}

impl FolderState {
    pub const VERSION: u32 = 1;

    pub fn decode(collection: &str, folder: &str, state: &SyncState) -> Result<FolderState> {
        let invalid = |reason: String| Error::InvalidSyncState {
            collection: collection.to_owned(),
            reason,
        };
        let parsed: FolderState = serde_json::from_str(state.as_str())
            .map_err(|e| invalid(format!("not an IMAP folder state: {e}")))?;
        if parsed.v != Self::VERSION {
            return Err(invalid(format!("unknown state version {}", parsed.v)));
        }
        if parsed.folder != folder {
            return Err(invalid(format!(
                "it is the state of folder {:?}",
                parsed.folder
            )));
        }
        if let Some(uids) = &parsed.uids {
            UidSet::parse(uids).ok_or_else(|| invalid("bad UID set".to_owned()))?;
        }
        if let Some(map) = &parsed.flags {
            for uids in map.values() {
                UidSet::parse(uids).ok_or_else(|| invalid("bad UID set".to_owned()))?;
            }
        }
        Ok(parsed)
    }

    pub fn encode(&self) -> SyncState {
        SyncState::new(serde_json::to_string(self).unwrap_or_default())
    }

    /// Every UID the state knows, whichever mode it was written in.
    pub fn all_uids(&self) -> UidSet {
        if let Some(uids) = &self.uids {
            return UidSet::parse(uids).unwrap_or_default();
        }
        let mut all: Vec<u32> = Vec::new();
        for uids in self.flags.iter().flat_map(|m| m.values()) {
            all.extend(UidSet::parse(uids).unwrap_or_default().iter());
        }
        all.sort_unstable();
        all.dedup();
        UidSet::from_sorted_iter(all)
    }

    /// Without CONDSTORE: the UIDs whose flags include `$CRMTracked`.
    pub fn tracked_uids(&self) -> UidSet {
        let tracked = Keyword::TRACKED.to_ascii_lowercase();
        let mut all: Vec<u32> = Vec::new();
        for (sig, uids) in self.flags.iter().flat_map(|m| m.iter()) {
            if sig.split(' ').any(|f| f == tracked) {
                all.extend(UidSet::parse(uids).unwrap_or_default().iter());
            }
        }
        all.sort_unstable();
        UidSet::from_sorted_iter(all)
    }

    /// Without CONDSTORE: uid → flag signature.
    pub fn flag_map(&self) -> BTreeMap<u32, &str> {
        let mut out = BTreeMap::new();
        for (sig, uids) in self.flags.iter().flat_map(|m| m.iter()) {
            for uid in UidSet::parse(uids).unwrap_or_default().iter() {
                out.insert(uid, sig.as_str());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets() {
        let s = UidSet::from_sorted_iter([1, 2, 3, 5, 7, 8]);
        assert_eq!(s.to_string(), "1:3,5,7:8");
        assert_eq!(UidSet::parse("1:3,5,7:8"), Some(s.clone()));
        assert!(s.contains(2) && s.contains(5) && !s.contains(4) && !s.contains(9));
        assert_eq!(s.len(), 6);
        assert_eq!(s.edit(&[5], &[4, 10]).to_string(), "1:4,7:8,10");
        assert_eq!(UidSet::parse("5,1:2").unwrap().to_string(), "1:2,5");
        assert_eq!(UidSet::parse("0"), None);
        assert_eq!(UidSet::parse("x"), None);
        assert_eq!(UidSet::parse("").unwrap().len(), 0);
        assert_eq!(s.within(&[(2, 5)]), vec![2, 3, 5]);
    }
}
