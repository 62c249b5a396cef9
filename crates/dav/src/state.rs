//! The sync state of one DAV collection, stored by the agent as opaque text:
//! JSON with the collection it belongs to, the server's sync-token (RFC 6578)
//! or ctag, and the href → etag map of the last listing.
//!
//! The map is what makes the two slow paths exact: after an invalid token
//! (403 `valid-sync-token`) and on servers without sync-collection, a full
//! listing is compared with it, so only real changes are reported (no
//! duplicates) and deletions are found.

use std::collections::BTreeMap;

use crmsync_mailbox::{Error, SyncState};
use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DavState {
    /// Format version.
    pub v: u32,
    /// The collection id (`contacts`, `calendar`, `tasks`).
    pub collection: String,
    /// The collection URL the state was taken from.
    pub url: String,
    /// RFC 6578 sync-token; `None` when the server has no sync-collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// getctag (or sync-token property) at the last listing, for the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctag: Option<String>,
    /// href → etag of every item at that state.
    #[serde(default)]
    pub items: BTreeMap<String, String>,
}

impl DavState {
    pub fn new(collection: &str, url: &str) -> Self {
        DavState {
            v: VERSION,
            collection: collection.to_owned(),
            url: url.to_owned(),
            ..DavState::default()
        }
    }

    /// Reads a stored state, refusing one of another collection or format.
    pub fn load(collection: &str, url: &str, stored: &SyncState) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidSyncState {
            collection: collection.to_owned(),
            reason,
        };
        let state: DavState = serde_json::from_str(stored.as_str())
            .map_err(|e| invalid(format!("not a DAV sync state: {e}")))?;
        if state.v != VERSION {
            return Err(invalid(format!("unknown format version {}", state.v)));
        }
        if state.collection != collection {
            return Err(invalid(format!(
                "it belongs to the collection {}",
                state.collection
            )));
        }
        if state.url != url {
            return Err(invalid(format!(
                "it was taken from {}, the collection is now {url}",
                state.url
            )));
        }
        Ok(state)
    }

    pub fn save(&self) -> SyncState {
        SyncState::new(serde_json::to_string(self).expect("a map of strings serializes"))
    }
}

/// The collection URL a stored state was taken from, if it is a DAV state
/// that has been synced (holds a sync-token or ctag): that collection
/// answered a listing before.
pub fn stored_state_url(stored: &str) -> Option<url::Url> {
    let state: DavState = serde_json::from_str(stored).ok()?;
    if state.v != VERSION || (state.token.is_none() && state.ctag.is_none()) {
        return None;
    }
    url::Url::parse(&state.url).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_refuses_other_collections() {
        let mut s = DavState::new("contacts", "http://h/c/");
        s.token = Some("t1".into());
        s.items.insert("a.vcf".into(), "\"1\"".into());
        let saved = s.save();
        assert_eq!(
            DavState::load("contacts", "http://h/c/", &saved).unwrap(),
            s
        );
        for (c, u) in [("calendar", "http://h/c/"), ("contacts", "http://h/other/")] {
            assert!(matches!(
                DavState::load(c, u, &saved),
                Err(Error::InvalidSyncState { .. })
            ));
        }
        assert_eq!(
            stored_state_url(saved.as_str()).map(String::from),
            Some("http://h/c/".to_owned()),
            "a synced state vouches for its URL"
        );
        let fresh = DavState::new("contacts", "http://h/c/").save();
        assert_eq!(
            stored_state_url(fresh.as_str()),
            None,
            "never listed: check it"
        );
        assert_eq!(stored_state_url("not a state"), None);
        assert!(DavState::load("contacts", "http://h/c/", &SyncState::new("not a state")).is_err());
        assert!(DavState::load("contacts", "http://h/c/", &SyncState::new("{\"v\":9}")).is_err());
    }
}
