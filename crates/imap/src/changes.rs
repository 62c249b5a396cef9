//! `changes_since` for one folder: the one-round-trip "nothing changed"
//! check (STATUS HIGHESTMODSEQ, or without CONDSTORE SELECT + SEARCH of the
//! tracked messages), QRESYNC, and the full listing compared with the stored
//! state (no CONDSTORE and something moved, first sync, new UIDVALIDITY).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crmsync_mailbox::{Changes, Href, Keyword};
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::status::StatusDataItem;

use crate::conn::{self, Conn, ConnError, Selected, Untagged};
use crate::fetch::{fnv1a, signature, Fetched};
use crate::ops::{
    flag_items, in_folder, item_ref, mailbox_arg, merge, refused, select_and_search, Malformed,
};
use crate::state::{FolderState, UidSet};
use crate::OpResult;

pub(crate) async fn changes_since(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    old: Option<FolderState>,
    rescan: Duration,
) -> OpResult<Changes> {
    if !conn.condstore {
        if let Some(old) = old.as_ref().filter(|o| o.flags.is_some()) {
            if unchanged_without_condstore(conn, collection, folder, old, rescan).await? {
                return Ok(Changes {
                    changed: Vec::new(),
                    deleted: Vec::new(),
                    failed: Vec::new(),
                    state: old.encode(),
                });
            }
        }
    }
    if conn.condstore {
        if let Some(old) = old.as_ref().filter(|o| o.uids.is_some()) {
            if let Some(ms) = old.highestmodseq {
                let mbox = mailbox_arg(collection, folder)?;
                let (mut uv, mut hms) = (None, None);
                // STATUS of the selected folder answers from this session's
                // view, which lags behind other clients' changes: leave the
                // folder first (UNSELECT, pipelined) or bring the view up to
                // date (NOOP on its own).
                let mut commands = Vec::new();
                if conn.selected.as_ref().is_some_and(|s| s.folder == folder) {
                    if conn.caps.has("UNSELECT") {
                        commands.push("UNSELECT".to_owned());
                    } else {
                        conn.run_one("NOOP", |_| {}).await?;
                    }
                }
                commands.push(format!("STATUS {mbox} (UIDVALIDITY HIGHESTMODSEQ)"));
                if commands.len() > 1 {
                    conn.selected = None;
                }
                let mut dones = conn
                    .run(&commands, |u| {
                        if let Untagged::Parsed(Response::Data(Data::Status { items, .. })) = u {
                            for item in items.iter() {
                                match item {
                                    StatusDataItem::UidValidity(v) => uv = Some(v.get()),
                                    StatusDataItem::HighestModSeq(m) => hms = Some(*m),
                                    _ => {}
                                }
                            }
                        }
                    })
                    .await?;
                let done = dones
                    .pop()
                    .ok_or_else(|| ConnError::Protocol("no answer to STATUS".into()))?;
                if !done.is_ok() {
                    return Err(refused(collection, "STATUS", &done));
                }
                if uv == Some(old.uidvalidity) && hms == Some(ms) {
                    return Ok(Changes {
                        changed: Vec::new(),
                        deleted: Vec::new(),
                        failed: Vec::new(),
                        state: old.encode(),
                    });
                }
                if uv == Some(old.uidvalidity) && conn.qresync {
                    if let Some(changes) = qresync(conn, collection, folder, old, ms).await? {
                        return Ok(changes);
                    }
                }
            }
        }
    }
    full_scan(conn, collection, folder, old.as_ref()).await
}

/// Without CONDSTORE, the flags of every message cannot be asked "since"
/// anything, and listing them all costs about 4 µs a message (210 ms at
/// 50,000; BENCHMARKS.md). So one round trip, `SELECT` pipelined with
/// `UID SEARCH KEYWORD $CRMTracked`, decides whether the listing is needed:
/// the same UIDVALIDITY, EXISTS and UIDNEXT mean nothing was appended or
/// expunged; the same tracked UIDs mean no message was marked or unmarked
/// (R-M1); the same `$CRMRegarding:` keywords in FLAGS mean no new regarding
/// was set. What this cannot see (a tracked message switched to a regarding
/// keyword the folder already had, R-E5) is caught by the full listing done
/// at least every `rescan` (`[mailbox.imap] rescan_interval`), and at once
/// whenever anything else in the folder moved.
async fn unchanged_without_condstore(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    old: &FolderState,
    rescan: Duration,
) -> OpResult<bool> {
    let (Some(exists), Some(uid_next), Some(listed_at)) = (old.exists, old.uidnext, old.listed_at)
    else {
        return Ok(false);
    };
    if now_secs().saturating_sub(listed_at) >= rescan.as_secs() {
        return Ok(false);
    }
    let criteria = format!("KEYWORD {}", Keyword::TRACKED);
    let (selected, tracked) = select_and_search(conn, collection, folder, &criteria).await?;
    Ok(
        tracked.is_some_and(|t| UidSet::from_sorted_iter(t) == old.tracked_uids())
            && selected.uid_validity == old.uidvalidity
            && selected.exists == Some(exists)
            && selected.uid_next == Some(uid_next)
            && Some(regarding_keywords(&selected.known_flags)) == old.regarding_keywords,
    )
}

/// A hash of the folder's `$CRMRegarding:` keywords, in any order or case.
fn regarding_keywords(known_flags: &[String]) -> u64 {
    let prefix = Keyword::REGARDING_PREFIX.to_ascii_lowercase();
    let mut all: Vec<String> = known_flags
        .iter()
        .map(|f| f.to_ascii_lowercase())
        .filter(|f| f.starts_with(&prefix))
        .collect();
    all.sort();
    all.dedup();
    fnv1a(all.join(" ").as_bytes())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `SELECT folder (QRESYNC (uidvalidity modseq))`: changed and new messages
/// as FETCH answers, expunged ones as `VANISHED (EARLIER)`. `None` if the
/// folder's UIDVALIDITY turned out to differ (the caller lists everything).
pub(crate) async fn qresync(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    old: &FolderState,
    ms: u64,
) -> OpResult<Option<Changes>> {
    let mbox = mailbox_arg(collection, folder)?;
    let mut selected = Selected {
        folder: folder.to_owned(),
        ..Selected::default()
    };
    let mut fetched = HashMap::new();
    let mut vanished: Vec<(u32, u32)> = Vec::new();
    let mut malformed = Malformed::default();
    let done = conn
        .run_one(
            &format!("SELECT {mbox} (QRESYNC ({} {ms}))", old.uidvalidity),
            |u| match u {
                Untagged::Parsed(resp) => {
                    selected.observe(resp);
                    if let Response::Data(Data::Vanished { known_uids, .. }) = resp {
                        vanished.extend(conn::ranges(known_uids));
                    }
                    if let Some(f) = Fetched::from_response(resp, false) {
                        merge(&mut fetched, f);
                    }
                }
                Untagged::Malformed(frame) => malformed.note(frame),
            },
        )
        .await?;
    if !done.is_ok() {
        conn.selected = None;
        return Err(refused(collection, "SELECT", &done));
    }
    conn.selected = Some(selected.clone());
    if selected.uid_validity != old.uidvalidity {
        return Ok(None);
    }
    let Some(highest) = selected.highest_modseq else {
        return Ok(None);
    };
    let known = old.all_uids();
    let deleted: Vec<u32> = known.within(&vanished);
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut uids: Vec<&u32> = fetched.keys().collect();
    uids.sort();
    for &uid in uids {
        let f = &fetched[&uid];
        if deleted.contains(&uid) || f.flags.is_none() {
            continue;
        }
        added.push(uid);
        changed.push(item_ref(f, selected.uid_validity, uid));
    }
    let failed = malformed.failed(collection);
    added.extend(malformed.uids.iter().filter(|u| !deleted.contains(u)));
    let now = known.edit(&deleted, &added);
    Ok(Some(Changes {
        changed,
        deleted: deleted.iter().map(u32::to_string).collect(),
        failed,
        state: FolderState {
            v: FolderState::VERSION,
            folder: folder.to_owned(),
            uidvalidity: selected.uid_validity,
            highestmodseq: Some(highest),
            uids: Some(now.to_string()),
            ..FolderState::default()
        }
        .encode(),
    }))
}

/// Lists every message's flags (`UID FETCH 1:*`) and compares with `old`.
pub(crate) async fn full_scan(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    old: Option<&FolderState>,
) -> OpResult<Changes> {
    // Always SELECT: its UIDVALIDITY/HIGHESTMODSEQ come before the listing.
    conn.selected = None;
    let cmd = format!("UID FETCH 1:* {}", flag_items(conn));
    let r = in_folder(conn, collection, folder, &[cmd], false).await?;
    let sel = &r.selected;
    if let Some(done) = r.done.first().filter(|d| !d.is_ok()) {
        // Some servers refuse `1:*` in an empty folder; anything else
        // would look like every message deleted, so it is an error.
        if sel.exists != Some(0) {
            return Err(refused(collection, "UID FETCH", done));
        }
    }
    let mut current: Vec<(u32, &Fetched)> = r
        .fetched
        .iter()
        .filter(|(_, f)| f.flags.is_some())
        .map(|(&u, f)| (u, f))
        .collect();
    current.sort_by_key(|(u, _)| *u);
    let condstore = conn.condstore && sel.highest_modseq.is_some();
    let same = old.filter(|o| o.uidvalidity == sel.uid_validity);
    let old_flags = same.and_then(|o| o.flags.as_ref().map(|_| o.flag_map()));
    let old_uids = same.map(|o| o.all_uids());
    let old_ms = same.and_then(|o| o.highestmodseq.filter(|_| o.uids.is_some()));

    let mut changed = Vec::new();
    for &(uid, f) in &current {
        let is_changed = match (condstore, &old_flags, old_ms, &old_uids) {
            // Same mode as stored: compare precisely.
            (false, Some(map), _, _) => {
                map.get(&uid).copied()
                    != Some(signature(f.flags.as_deref().unwrap_or(&[])).as_str())
            }
            (true, _, Some(ms), Some(uids)) => {
                !uids.contains(uid) || f.modseq.is_none_or(|m| m > ms)
            }
            // First listing, new UIDVALIDITY or a different mode: everything.
            _ => true,
        };
        if is_changed {
            changed.push(item_ref(f, sel.uid_validity, uid));
        }
    }
    // Present: listed, or there but unreadable (looked at again next time).
    let mut present_uids: Vec<u32> = current.iter().map(|(u, _)| *u).collect();
    present_uids.extend(&r.malformed.uids);
    if r.malformed.unknown > 0 {
        // Unreadable answers naming no UID: keep every old UID rather than
        // report a message deleted that may still be there.
        present_uids.extend(old_uids.iter().flat_map(|u| u.iter()));
    }
    present_uids.sort_unstable();
    present_uids.dedup();
    let present = UidSet::from_sorted_iter(present_uids);
    let deleted: Vec<Href> = match old {
        None => Vec::new(),
        // A new UIDVALIDITY: every old UID is gone (R-M2: re-linked by Message-ID).
        Some(o) if o.uidvalidity != sel.uid_validity => {
            o.all_uids().iter().map(|u| u.to_string()).collect()
        }
        Some(o) => o
            .all_uids()
            .iter()
            .filter(|u| !present.contains(*u))
            .map(|u| u.to_string())
            .collect(),
    };
    let failed = r.malformed.failed(collection);
    let state = if condstore {
        FolderState {
            v: FolderState::VERSION,
            folder: folder.to_owned(),
            uidvalidity: sel.uid_validity,
            highestmodseq: sel.highest_modseq,
            uids: Some(present.to_string()),
            ..FolderState::default()
        }
    } else {
        let mut by_sig: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        let listed: HashMap<u32, &Fetched> = current.iter().copied().collect();
        for uid in present.iter() {
            let sig = match listed.get(&uid) {
                Some(f) => signature(f.flags.as_deref().unwrap_or(&[])),
                // Not readable now: keep what was stored, so it is neither
                // deleted nor changed until it can be read.
                None => match old_flags.as_ref().and_then(|m| m.get(&uid)) {
                    Some(sig) => (*sig).to_owned(),
                    None => continue,
                },
            };
            by_sig.entry(sig).or_default().push(uid);
        }
        FolderState {
            v: FolderState::VERSION,
            folder: folder.to_owned(),
            uidvalidity: sel.uid_validity,
            flags: Some(
                by_sig
                    .into_iter()
                    .map(|(sig, uids)| (sig, UidSet::from_sorted_iter(uids).to_string()))
                    .collect(),
            ),
            exists: sel.exists,
            uidnext: sel.uid_next,
            regarding_keywords: Some(regarding_keywords(&sel.known_flags)),
            listed_at: Some(now_secs()),
            ..FolderState::default()
        }
    };
    Ok(Changes {
        changed,
        deleted,
        failed,
        state: state.encode(),
    })
}
