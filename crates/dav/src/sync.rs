//! `changes_since` for one collection (R-T3).
//!
//! - With a sync-token: one RFC 6578 sync-collection REPORT (continued while
//!   the server truncates with 507), deletions included.
//! - Invalid token (403/409 `valid-sync-token`): a full listing compared
//!   with the stored href → etag map, so only real changes are reported.
//! - Servers without sync-collection: getctag (one PROPFIND, Depth 0); if
//!   it moved, a Depth 1 listing of etags compared with the map.

use std::collections::{BTreeMap, BTreeSet};

use crmsync_mailbox::{Changes, Error, Etag, Href, ItemRef, Result, SyncState};

use crate::client::{multistatus, status_error, Client};
use crate::collection::Coll;
use crate::state::DavState;
use crate::xml::{self, CALSERVER, DAV};

/// Most REPORT rounds followed after 507 truncations in one call.
const MAX_ROUNDS: usize = 10_000;

/// What one listing (full or incremental) found.
#[derive(Default)]
struct Listing {
    present: BTreeMap<Href, String>,
    gone: BTreeSet<Href>,
    failed: Vec<(Href, Error)>,
    token: Option<String>,
}

enum SyncError {
    /// 403/409 with `valid-sync-token`: the token is no longer known.
    InvalidToken,
    /// The server has no sync-collection REPORT.
    Unsupported,
    Failed(Error),
}

impl From<Error> for SyncError {
    fn from(e: Error) -> Self {
        SyncError::Failed(e)
    }
}

pub(crate) async fn changes_since(
    client: &Client,
    coll: &Coll,
    stored: Option<&SyncState>,
    use_sync_collection: bool,
) -> Result<Changes> {
    let url = coll.url.as_str();
    let old = match stored {
        Some(s) => Some(DavState::load(coll.id, url, s)?),
        None => None,
    };
    let incremental = old.as_ref().and_then(|s| s.token.clone());
    let mut state = old.unwrap_or_else(|| DavState::new(coll.id, url));

    if use_sync_collection && (stored.is_none() || incremental.is_some()) {
        if let Some(token) = &incremental {
            match sync_report(client, coll, token).await {
                Ok(listing) => return Ok(apply_delta(state, listing)),
                Err(SyncError::InvalidToken) => {
                    tracing::info!(
                        "{}: the server forgot sync-token {token}; listing the whole collection and comparing etags",
                        coll.id
                    );
                }
                Err(SyncError::Unsupported) => {}
                Err(SyncError::Failed(e)) => return Err(e),
            }
        }
        match sync_report(client, coll, "").await {
            Ok(listing) => return Ok(apply_full(state, listing)),
            Err(SyncError::Failed(e)) => return Err(e),
            Err(SyncError::InvalidToken | SyncError::Unsupported) => {
                tracing::info!(
                    "{}: no sync-collection on the server; using getctag and etags",
                    coll.id
                );
                state.token = None;
            }
        }
    }

    // Fallback: getctag, then etags.
    let ctag = collection_ctag(client, coll).await?;
    if ctag.is_some() && ctag == state.ctag && stored.is_some() {
        return Ok(Changes {
            changed: Vec::new(),
            deleted: Vec::new(),
            failed: Vec::new(),
            state: state.save(),
        });
    }
    let mut listing = list_etags(client, coll).await?;
    listing.token = None;
    state.ctag = ctag;
    Ok(apply_full(state, listing))
}

/// RFC 6578 REPORT from `token` (empty: everything), following 507s.
async fn sync_report(
    client: &Client,
    coll: &Coll,
    token: &str,
) -> std::result::Result<Listing, SyncError> {
    let mut listing = Listing::default();
    let mut token = token.to_owned();
    for _ in 0..MAX_ROUNDS {
        let answer = client
            .report(&coll.url, 0, xml::sync_collection(&token))
            .await?;
        match answer.status.as_u16() {
            207 => {}
            403 | 409 | 412 | 400 | 501 | 405 | 415 => {
                let conditions = xml::error_conditions(&answer.body);
                if conditions.iter().any(|c| c == "valid-sync-token") {
                    return Err(SyncError::InvalidToken);
                }
                if !token.is_empty() && matches!(answer.status.as_u16(), 403 | 409 | 412 | 400) {
                    // Servers that do not say which precondition failed.
                    return Err(SyncError::InvalidToken);
                }
                if conditions.iter().any(|c| c == "supported-report")
                    || matches!(answer.status.as_u16(), 400 | 405 | 415 | 501)
                {
                    return Err(SyncError::Unsupported);
                }
                return Err(status_error(&coll.url, "REPORT sync-collection", &answer).into());
            }
            _ => return Err(status_error(&coll.url, "REPORT sync-collection", &answer).into()),
        }
        let ms = multistatus(&coll.url, &answer)?;
        let mut truncated = false;
        for r in ms.responses {
            if coll.is_self(&r.href) {
                truncated |= r.status == 507;
                continue;
            }
            let Some(href) = coll.href_of(&r.href) else {
                continue; // not a member (a subcollection's item)
            };
            match (r.status, r.props.etag) {
                (404 | 410, _) => {
                    listing.present.remove(&href);
                    listing.gone.insert(href);
                }
                (200, Some(etag)) => {
                    listing.gone.remove(&href);
                    listing.present.insert(href, etag);
                }
                (status, _) => listing.failed.push((
                    href.clone(),
                    Error::Remote {
                        url: coll.item_url(&href).to_string(),
                        status: Some(status),
                        reason: format!(
                            "listed with status {status} and no etag; it is looked at again at the next sync"
                        ),
                    },
                )),
            }
        }
        let Some(new_token) = ms.sync_token else {
            return Err(SyncError::Failed(Error::Remote {
                url: coll.url.to_string(),
                status: Some(207),
                reason: "the sync-collection answer has no sync-token; the server does not follow RFC 6578".to_owned(),
            }));
        };
        let moved = new_token != token;
        token = new_token;
        listing.token = Some(token.clone());
        if !truncated {
            return Ok(listing);
        }
        if !moved {
            return Err(SyncError::Failed(Error::Remote {
                url: coll.url.to_string(),
                status: Some(507),
                reason: "the server truncated its sync-collection answer (507) without a new token; retried at the next sync".to_owned(),
            }));
        }
        tracing::debug!("{}: sync-collection truncated (507), continuing", coll.id);
    }
    Err(SyncError::Failed(Error::Remote {
        url: coll.url.to_string(),
        status: Some(507),
        reason: format!("more than {MAX_ROUNDS} truncated sync-collection answers in a row; retried at the next sync"),
    }))
}

/// The getctag (or, failing that, the sync-token property) of a collection.
async fn collection_ctag(client: &Client, coll: &Coll) -> Result<Option<String>> {
    let ms = client
        .propfind(&coll.url, 0, &[(CALSERVER, "getctag"), (DAV, "sync-token")])
        .await?;
    Ok(ms
        .responses
        .into_iter()
        .find(|r| coll.is_self(&r.href))
        .and_then(|r| r.props.ctag.or(r.props.sync_token)))
}

/// Every member's etag (PROPFIND, Depth 1).
async fn list_etags(client: &Client, coll: &Coll) -> Result<Listing> {
    let ms = client
        .propfind(&coll.url, 1, &[(DAV, "getetag"), (DAV, "resourcetype")])
        .await?;
    let mut listing = Listing::default();
    for r in ms.responses {
        if coll.is_self(&r.href) || r.props.is_collection {
            continue;
        }
        let Some(href) = coll.href_of(&r.href) else {
            continue;
        };
        match (r.status, r.props.etag) {
            (200, Some(etag)) => {
                listing.present.insert(href, etag);
            }
            (status, _) => listing.failed.push((
                href.clone(),
                Error::Remote {
                    url: coll.item_url(&href).to_string(),
                    status: Some(status),
                    reason: format!(
                        "listed with status {status} and no etag; it is looked at again at the next sync"
                    ),
                },
            )),
        }
    }
    Ok(listing)
}

/// An incremental listing: what it names changed (if the etag differs from
/// the map) or deleted (if the map had it).
fn apply_delta(mut state: DavState, listing: Listing) -> Changes {
    let mut changed = Vec::new();
    let mut deleted = Vec::new();
    for (href, etag) in listing.present {
        if state.items.get(&href) != Some(&etag) {
            changed.push(item_ref(&href, &etag));
            state.items.insert(href, etag);
        }
    }
    for href in listing.gone {
        if state.items.remove(&href).is_some() {
            deleted.push(href);
        }
    }
    state.token = listing.token;
    Changes {
        changed,
        deleted,
        failed: listing.failed,
        state: state.save(),
    }
}

/// A full listing compared with the map: new or different etags are
/// changes, hrefs no longer listed (and not failed) are deletions.
fn apply_full(mut state: DavState, listing: Listing) -> Changes {
    let failed: BTreeSet<&Href> = listing.failed.iter().map(|(h, _)| h).collect();
    let mut changed = Vec::new();
    let mut deleted = Vec::new();
    let mut items = BTreeMap::new();
    for (href, etag) in &listing.present {
        if state.items.get(href) != Some(etag) {
            changed.push(item_ref(href, etag));
        }
        items.insert(href.clone(), etag.clone());
    }
    for (href, etag) in &state.items {
        if listing.present.contains_key(href) {
            continue;
        }
        if failed.contains(href) {
            items.insert(href.clone(), etag.clone()); // still there, unread
        } else {
            deleted.push(href.clone());
        }
    }
    state.items = items;
    state.token = listing.token;
    Changes {
        changed,
        deleted,
        failed: listing.failed,
        state: state.save(),
    }
}

fn item_ref(href: &str, etag: &str) -> ItemRef {
    ItemRef {
        href: href.to_owned(),
        etag: Etag::new(etag),
        flags: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(items: &[(&str, &str)]) -> DavState {
        let mut s = DavState::new("contacts", "http://h/c/");
        s.token = Some("old".into());
        for (h, e) in items {
            s.items.insert(h.to_string(), e.to_string());
        }
        s
    }

    fn listing(present: &[(&str, &str)], gone: &[&str]) -> Listing {
        Listing {
            present: present
                .iter()
                .map(|(h, e)| (h.to_string(), e.to_string()))
                .collect(),
            gone: gone.iter().map(|h| h.to_string()).collect(),
            failed: Vec::new(),
            token: Some("new".into()),
        }
    }

    fn hrefs(c: &Changes) -> (Vec<&str>, Vec<&str>) {
        (
            c.changed.iter().map(|r| r.href.as_str()).collect(),
            c.deleted.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn r_t3_full_resync_reports_only_real_changes_and_deletions() {
        let old = state(&[("a", "1"), ("b", "1"), ("gone", "1")]);
        let c = apply_full(old, listing(&[("a", "1"), ("b", "2"), ("new", "1")], &[]));
        assert_eq!(hrefs(&c), (vec!["b", "new"], vec!["gone"]));
        let s: DavState = serde_json::from_str(c.state.as_str()).unwrap();
        assert_eq!(s.token.as_deref(), Some("new"));
        assert_eq!(s.items.len(), 3);
    }

    #[test]
    fn r_t3_delta_deletes_only_known_items() {
        let old = state(&[("a", "1"), ("b", "1")]);
        let c = apply_delta(
            old,
            listing(&[("a", "1"), ("c", "1")], &["b", "never-seen"]),
        );
        assert_eq!(hrefs(&c), (vec!["c"], vec!["b"]));
    }

    #[test]
    fn failed_items_are_neither_changed_nor_deleted() {
        let old = state(&[("a", "1"), ("bad", "1")]);
        let mut l = listing(&[("a", "1")], &[]);
        l.failed.push((
            "bad".into(),
            Error::Remote {
                url: "u".into(),
                status: Some(500),
                reason: "x".into(),
            },
        ));
        let c = apply_full(old, l);
        assert_eq!(hrefs(&c), (vec![], vec![]));
        assert_eq!(c.failed.len(), 1);
        let s: DavState = serde_json::from_str(c.state.as_str()).unwrap();
        assert!(s.items.contains_key("bad"));
    }
}
