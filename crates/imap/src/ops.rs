//! The folder operations behind the trait: running commands in a folder
//! (SELECT pipelined, or NOOP first), reading messages and flags, and the
//! writes with their preconditions.

use std::collections::HashMap;

use crmsync_mailbox::{
    Collection, CollectionKind, Error, Etag, Href, Item, ItemRef, Keyword, Result,
};

use crate::config::ImapConfig;
use crate::conn::{astring, Conn, ConnError, Done, DoneCode, Selected, Untagged};
use crate::fetch::{self, edit_flags, signature, uid_of_malformed, Fetched};
use crate::state::UidSet;
use crate::{utf7, OpErr, OpResult, FETCH_CHUNK, MAIL_PREFIX};
use imap_codec::imap_types::response::{Data, Response};

pub(crate) fn refused(collection: &str, what: &str, done: &Done) -> OpErr {
    if done.no_such_mailbox() {
        return OpErr::Mb(Error::NoSuchCollection {
            collection: collection.to_owned(),
        });
    }
    OpErr::Mb(Error::Remote {
        url: collection.to_owned(),
        status: None,
        reason: format!("{what} refused by the server: {done}"),
    })
}

pub(crate) fn not_found(collection: &str, href: &str) -> Error {
    Error::NotFound {
        collection: collection.to_owned(),
        href: href.to_owned(),
    }
}

pub(crate) fn mail_collection(folder: &str) -> Collection {
    Collection {
        id: format!("{MAIL_PREFIX}{folder}"),
        kind: CollectionKind::Mail,
        name: folder.to_owned(),
    }
}

/// The quoted, modified-UTF-7 name of a folder for commands.
pub(crate) fn mailbox_arg(collection: &str, folder: &str) -> OpResult<String> {
    astring(&utf7::encode(folder)).ok_or_else(|| {
        OpErr::Mb(Error::NoSuchCollection {
            collection: collection.to_owned(),
        })
    })
}

/// A UID href (`17`); `None` for anything that is not one of ours.
pub(crate) fn uid_of(href: &str) -> Option<u32> {
    let uid: u32 = href.parse().ok()?;
    (uid > 0 && uid.to_string() == href).then_some(uid)
}

pub(crate) fn item_ref(f: &Fetched, uid_validity: u32, uid: u32) -> ItemRef {
    ItemRef {
        href: uid.to_string(),
        etag: f.etag(uid_validity, uid),
        flags: Some(f.message_flags()),
    }
}

/// Merges the FETCH answers for one UID (a flags-only unsolicited answer and
/// the one carrying the body, say): later fields win, a body is kept.
pub(crate) fn merge(into: &mut HashMap<u32, Fetched>, f: Fetched) {
    let Some(uid) = f.uid else { return };
    let entry = into.entry(uid).or_default();
    entry.uid = Some(uid);
    entry.seq = f.seq;
    if f.flags.is_some() {
        entry.flags = f.flags;
    }
    if f.modseq.is_some() {
        entry.modseq = f.modseq;
    }
    if f.size.is_some() {
        entry.size = f.size;
    }
    if f.body.is_some() {
        entry.body = f.body;
    }
}

/// What the commands run in a folder returned.
pub(crate) struct InFolder {
    pub selected: Selected,
    pub done: Vec<Done>,
    pub fetched: HashMap<u32, Fetched>,
    pub malformed: Malformed,
}

/// FETCH answers that could not be parsed: the UIDs found in them, and how
/// many named none (those messages cannot be told apart, so a listing with
/// any of them reports no deletions).
#[derive(Default)]
pub(crate) struct Malformed {
    pub uids: Vec<u32>,
    pub unknown: usize,
}

impl Malformed {
    pub fn note(&mut self, frame: &[u8]) {
        match uid_of_malformed(frame) {
            Some(uid) => self.uids.push(uid),
            None if fetch::is_fetch(frame) => self.unknown += 1,
            None => {}
        }
    }

    pub fn failed(&self, collection: &str) -> Vec<(Href, Error)> {
        self.uids
            .iter()
            .map(|uid| {
                (
                    uid.to_string(),
                    Error::Malformed {
                        collection: collection.to_owned(),
                        href: uid.to_string(),
                        reason: "the server's FETCH answer for it could not be read; it is looked at again next time".to_owned(),
                    },
                )
            })
            .collect()
    }
}

/// Runs `commands` in `folder`. When the folder is not the selected one,
/// `SELECT` is pipelined before them (one round trip). When it is, a `NOOP`
/// goes first on its own: Dovecot runs pipelined UID commands in parallel
/// with a NOOP, before its sync, so a message another client just added
/// (or flags it just changed) would not be seen yet.
pub(crate) async fn in_folder(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    commands: &[String],
    want_body: bool,
) -> OpResult<InFolder> {
    let mbox = mailbox_arg(collection, folder)?;
    let reselect = conn.selected.as_ref().is_none_or(|s| s.folder != folder);
    let mut fetched = HashMap::new();
    let mut malformed = Malformed::default();
    let mut all = Vec::with_capacity(commands.len() + 1);
    if reselect {
        all.push(format!("SELECT {mbox}"));
    } else {
        let done = conn
            .run_one("NOOP", |u| {
                if let Untagged::Parsed(resp) = u {
                    if let Some(f) = Fetched::from_response(resp, want_body) {
                        merge(&mut fetched, f);
                    }
                }
            })
            .await?;
        if !done.is_ok() {
            conn.selected = None;
            return Err(refused(collection, "NOOP", &done));
        }
    }
    all.extend(commands.iter().cloned());
    let mut selected = if reselect {
        Selected {
            folder: folder.to_owned(),
            ..Selected::default()
        }
    } else {
        conn.selected.clone().unwrap_or_default()
    };
    let mut done = conn
        .run(&all, |u| match u {
            Untagged::Parsed(resp) => {
                if reselect {
                    selected.observe(resp);
                }
                if let Some(f) = Fetched::from_response(resp, want_body) {
                    merge(&mut fetched, f);
                }
            }
            Untagged::Malformed(frame) => malformed.note(frame),
        })
        .await?;
    if reselect {
        let first = done.remove(0);
        if !first.is_ok() {
            conn.selected = None;
            return Err(refused(collection, "SELECT", &first));
        }
        conn.selected = Some(selected.clone());
    }
    Ok(InFolder {
        selected,
        done,
        fetched,
        malformed,
    })
}

pub(crate) fn flag_items(conn: &Conn) -> &'static str {
    if conn.condstore {
        "(UID FLAGS MODSEQ)"
    } else {
        "(UID FLAGS)"
    }
}

/// The part of a message one partial FETCH reads: what the agent holds of
/// a large message at a time.
const PART: u64 = 1024 * 1024;

/// A message written to the file `to` a part at a time
/// (`BODY.PEEK[]<offset.PART>`), never held whole.
pub(crate) async fn copy_message_to(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    href: &str,
    to: &std::path::Path,
) -> OpResult<u64> {
    use std::io::Write;
    let uid = uid_of(href).ok_or_else(|| not_found(collection, href))?;
    let io = |e| {
        OpErr::Mb(Error::Io {
            path: to.to_path_buf(),
            error: e,
        })
    };
    let mut file = std::fs::File::create(to).map_err(io)?;
    let mut offset = 0u64;
    loop {
        let cmd = format!("UID FETCH {uid} (UID BODY.PEEK[]<{offset}.{PART}>)");
        let mut r = in_folder(conn, collection, folder, &[cmd], true).await?;
        if let Some(done) = r.done.first().filter(|d| !d.is_ok()) {
            return Err(refused(collection, "UID FETCH", done));
        }
        let part = match r.fetched.remove(&uid).and_then(|f| f.body) {
            Some(Some(part)) => part,
            // Past the end, some servers answer NIL.
            Some(None) if offset > 0 => Vec::new(),
            _ if offset == 0 => return Err(not_found(collection, href).into()),
            _ => Vec::new(),
        };
        file.write_all(&part).map_err(io)?;
        offset += part.len() as u64;
        if (part.len() as u64) < PART {
            break;
        }
    }
    file.sync_all().map_err(io)?;
    Ok(offset)
}

/// `SELECT` pipelined with `UID SEARCH <criteria>`: one round trip. The
/// folder as SELECT described it, and the UIDs found (sorted; `None` if the
/// server refused the search).
pub(crate) async fn select_and_search(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    criteria: &str,
) -> OpResult<(Selected, Option<Vec<u32>>)> {
    let mbox = mailbox_arg(collection, folder)?;
    let commands = [format!("SELECT {mbox}"), format!("UID SEARCH {criteria}")];
    conn.selected = None;
    let mut selected = Selected {
        folder: folder.to_owned(),
        ..Selected::default()
    };
    let mut uids: Vec<u32> = Vec::new();
    let dones = conn
        .run(&commands, |u| {
            if let Untagged::Parsed(resp) = u {
                selected.observe(resp);
                if let Response::Data(Data::Search(found, ..)) = resp {
                    uids.extend(found.iter().map(|u| u.get()));
                }
            }
        })
        .await?;
    let (Some(select), Some(search)) = (dones.first(), dones.get(1)) else {
        return Err(ConnError::Protocol("no answer to SELECT and SEARCH".into()).into());
    };
    if !select.is_ok() {
        return Err(refused(collection, "SELECT", select));
    }
    conn.selected = Some(selected.clone());
    uids.sort_unstable();
    uids.dedup();
    Ok((selected, search.is_ok().then_some(uids)))
}

/// `UID SEARCH HEADER Message-ID "<id>"`: the server's candidates. `None`
/// for an id that cannot be sent as a quoted string (the caller then reads
/// the messages).
pub(crate) async fn search_message_id(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    message_id: &str,
) -> OpResult<Option<Vec<Href>>> {
    let Some(arg) = astring(&format!("<{message_id}>")) else {
        return Ok(None);
    };
    let criteria = format!("HEADER Message-ID {arg}");
    let (_, found) = select_and_search(conn, collection, folder, &criteria).await?;
    let uids = found.ok_or_else(|| {
        OpErr::Mb(Error::Remote {
            url: collection.to_owned(),
            status: None,
            reason: "UID SEARCH HEADER Message-ID refused by the server".to_owned(),
        })
    })?;
    Ok(Some(uids.iter().map(u32::to_string).collect()))
}

/// RFC822.SIZE of messages (their bodies unread); a UID the folder does not
/// hold is not found.
pub(crate) async fn fetch_sizes(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    hrefs: &[Href],
) -> OpResult<Vec<(Href, Result<u64>)>> {
    let mut uids: Vec<u32> = hrefs.iter().filter_map(|h| uid_of(h)).collect();
    uids.sort_unstable();
    uids.dedup();
    let mut sizes: HashMap<u32, u64> = HashMap::new();
    for chunk in uids.chunks(FETCH_CHUNK) {
        let set = UidSet::from_sorted_iter(chunk.iter().copied());
        let cmd = format!("UID FETCH {set} (UID RFC822.SIZE)");
        let r = in_folder(conn, collection, folder, &[cmd], false).await?;
        if let Some(done) = r.done.first().filter(|d| !d.is_ok()) {
            return Err(refused(collection, "UID FETCH", done));
        }
        sizes.extend(
            r.fetched
                .iter()
                .filter(|(uid, _)| set.contains(**uid))
                .filter_map(|(&uid, f)| Some((uid, f.size?))),
        );
    }
    Ok(hrefs
        .iter()
        .map(|h| {
            let size = uid_of(h).and_then(|uid| sizes.get(&uid).copied());
            (h.clone(), size.ok_or_else(|| not_found(collection, h)))
        })
        .collect())
}

/// One message's flags (and mod-sequence), selecting its folder if needed.
pub(crate) async fn fetch_one(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    uid: u32,
) -> OpResult<(Selected, Option<Fetched>)> {
    let cmd = format!("UID FETCH {uid} {}", flag_items(conn));
    let mut r = in_folder(conn, collection, folder, &[cmd], false).await?;
    Ok((
        r.selected,
        r.fetched.remove(&uid).filter(|f| f.flags.is_some()),
    ))
}

// ------------------------------------------------------------------ reads

/// `UID FETCH <uids> (...)` for the hrefs that are UIDs; one result per href.
pub(crate) async fn fetch_many(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    hrefs: &[Href],
    want_body: bool,
) -> OpResult<Vec<(Href, Result<Item>)>> {
    let mut uids: Vec<u32> = hrefs.iter().filter_map(|h| uid_of(h)).collect();
    uids.sort_unstable();
    uids.dedup();
    let mut results: HashMap<u32, Result<Item>> = HashMap::new();
    let mut refusal = None;
    let items = match (conn.condstore, want_body) {
        (true, true) => "(UID FLAGS MODSEQ BODY.PEEK[])",
        (false, true) => "(UID FLAGS BODY.PEEK[])",
        (true, false) => "(UID FLAGS MODSEQ)",
        (false, false) => "(UID FLAGS)",
    };
    // Command lines stay far below servers' limits (Dovecot: 64 KB).
    for chunk in uids.chunks(FETCH_CHUNK) {
        let set = UidSet::from_sorted_iter(chunk.iter().copied());
        let cmd = format!("UID FETCH {set} {items}");
        let r = in_folder(conn, collection, folder, &[cmd], want_body).await?;
        if let Some(done) = r.done.first().filter(|d| !d.is_ok()) {
            refusal = Some(done.clone());
        }
        let uv = r.selected.uid_validity;
        for uid in r.malformed.uids {
            if set.contains(uid) {
                results.insert(
                    uid,
                    Err(Error::Malformed {
                        collection: collection.to_owned(),
                        href: uid.to_string(),
                        reason: "the server's answer for this message could not be read".to_owned(),
                    }),
                );
            }
        }
        for (uid, mut f) in r.fetched {
            if !set.contains(uid) || f.flags.is_none() && f.body.is_none() {
                continue;
            }
            let href = uid.to_string();
            let item = if want_body {
                match f.body.take() {
                    Some(Some(data)) if !data.is_empty() => Ok(Item {
                        etag: f.etag(uv, uid),
                        flags: Some(f.message_flags()),
                        data,
                        href,
                    }),
                    Some(_) => Err(Error::Malformed {
                        collection: collection.to_owned(),
                        href,
                        reason: "the server sent no message body".to_owned(),
                    }),
                    // Flags only (a change reported by the way): not the answer.
                    None => continue,
                }
            } else {
                Ok(Item {
                    etag: f.etag(uv, uid),
                    flags: Some(f.message_flags()),
                    data: Vec::new(),
                    href,
                })
            };
            results.insert(uid, item);
        }
    }
    let mut wanted: HashMap<u32, usize> = HashMap::new();
    for uid in hrefs.iter().filter_map(|h| uid_of(h)) {
        *wanted.entry(uid).or_default() += 1;
    }
    Ok(hrefs
        .iter()
        .map(|href| {
            let uid = uid_of(href);
            // The last request for a UID takes the item, earlier ones copy it.
            let taken = uid.and_then(|uid| {
                let left = wanted.get_mut(&uid)?;
                *left -= 1;
                if *left == 0 {
                    results.remove(&uid)
                } else {
                    results.get(&uid).map(|r| match r {
                        Ok(item) => Ok(item.clone()),
                        Err(e) => Err(copy_err(e)),
                    })
                }
            });
            let found = match taken {
                Some(result) => result,
                None => match &refusal {
                    Some(done) => Err(Error::Remote {
                        url: format!("{collection}/{href}"),
                        status: None,
                        reason: format!("the server refused to fetch it: {done}"),
                    }),
                    None => Err(not_found(collection, href)),
                },
            };
            (href.clone(), found)
        })
        .collect())
}

/// Per-item errors are built here, so copying the few kinds used is enough.
pub(crate) fn copy_err(e: &Error) -> Error {
    match e {
        Error::Malformed {
            collection,
            href,
            reason,
        } => Error::Malformed {
            collection: collection.clone(),
            href: href.clone(),
            reason: reason.clone(),
        },
        Error::NotFound { collection, href } => Error::NotFound {
            collection: collection.clone(),
            href: href.clone(),
        },
        other => Error::Task(other.to_string()),
    }
}

pub(crate) async fn ensure_folders(
    conn: &mut Conn,
    config: &ImapConfig,
) -> OpResult<Vec<Collection>> {
    let existing = list_folders(conn).await?;
    for folder in &config.folders {
        if !exists(&existing, folder) {
            let mbox = mailbox_arg(&format!("{MAIL_PREFIX}{folder}"), folder)?;
            let done = conn.run_one(&format!("CREATE {mbox}"), |_| {}).await?;
            if !done.is_ok() && !done.text.to_ascii_lowercase().contains("exists") {
                return Err(refused(&format!("{MAIL_PREFIX}{folder}"), "CREATE", &done));
            }
        }
    }
    Ok(config.folders.iter().map(|f| mail_collection(f)).collect())
}

pub(crate) fn exists(existing: &[String], folder: &str) -> bool {
    existing.iter().any(|e| {
        e == folder || (e.eq_ignore_ascii_case("INBOX") && folder.eq_ignore_ascii_case("INBOX"))
    })
}

pub(crate) async fn list_folders(conn: &mut Conn) -> OpResult<Vec<String>> {
    let mut names = Vec::new();
    let done = conn
        .run_one("LIST \"\" \"*\"", |u| {
            if let Untagged::Parsed(Response::Data(Data::List { mailbox, .. })) = u {
                names.push(utf7::name_of(mailbox));
            }
        })
        .await?;
    if !done.is_ok() {
        return Err(OpErr::Conn(ConnError::Refused(format!("LIST: {done}"))));
    }
    Ok(names)
}

// ------------------------------------------------------------------ writes

pub(crate) async fn store_keywords(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    href: &str,
    expected: &Etag,
    add: &[Keyword],
    remove: &[Keyword],
) -> OpResult<ItemRef> {
    let uid = uid_of(href).ok_or_else(|| not_found(collection, href))?;
    let (sel, current) = fetch_one(conn, collection, folder, uid).await?;
    let current = current.ok_or_else(|| not_found(collection, href))?;
    let uv = sel.uid_validity;
    let etag = current.etag(uv, uid);
    if &etag != expected {
        return Err(OpErr::Mb(Error::Conflict {
            collection: collection.to_owned(),
            href: href.to_owned(),
            current: etag,
        }));
    }
    let flags = current.flags.clone().unwrap_or_default();
    let new = edit_flags(&flags, add, remove);
    if signature(&new) == signature(&flags) {
        return Ok(item_ref(&current, uv, uid));
    }
    for k in add {
        let known = sel
            .known_flags
            .iter()
            .any(|f| f.eq_ignore_ascii_case(k.as_str()));
        if !known && !sel.new_keywords {
            return Err(OpErr::Mb(Error::Unsupported {
                collection: collection.to_owned(),
                operation: "store_keywords",
                reason: "the folder does not accept new keywords (its PERMANENTFLAGS lack \\*)",
            }));
        }
    }
    let mut commands = Vec::new();
    match current.modseq.filter(|_| conn.condstore) {
        // One atomic STORE of the whole new flag list, only if nothing
        // changed since the mod-sequence the etag names.
        Some(ms) => commands.push(format!(
            "UID STORE {uid} (UNCHANGEDSINCE {ms}) FLAGS ({})",
            new.join(" ")
        )),
        None => {
            let removed: Vec<&str> = remove
                .iter()
                .map(Keyword::as_str)
                .filter(|k| flags.iter().any(|f| f.eq_ignore_ascii_case(k)))
                .collect();
            if !removed.is_empty() {
                commands.push(format!("UID STORE {uid} -FLAGS ({})", removed.join(" ")));
            }
            let added: Vec<&str> = add.iter().map(Keyword::as_str).collect();
            if !added.is_empty() {
                commands.push(format!("UID STORE {uid} +FLAGS ({})", added.join(" ")));
            }
        }
    }
    commands.push(format!("UID FETCH {uid} {}", flag_items(conn)));
    let mut fetched = HashMap::new();
    let done = conn
        .run(&commands, |u| {
            if let Untagged::Parsed(resp) = u {
                if let Some(f) = Fetched::from_response(resp, false) {
                    merge(&mut fetched, f);
                }
            }
        })
        .await?;
    let after = fetched.remove(&uid).filter(|f| f.flags.is_some());
    for d in &done[..done.len().saturating_sub(1)] {
        if matches!(d.code, DoneCode::Modified(_)) {
            let current = after
                .as_ref()
                .map(|f| f.etag(uv, uid))
                .unwrap_or_else(|| Etag::new("gone"));
            return Err(OpErr::Mb(Error::Conflict {
                collection: collection.to_owned(),
                href: href.to_owned(),
                current,
            }));
        }
        if !d.is_ok() {
            return Err(refused(collection, "STORE", d));
        }
    }
    let after = after.ok_or_else(|| not_found(collection, href))?;
    Ok(item_ref(&after, uv, uid))
}

pub(crate) async fn delete(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    href: &str,
    expected: &Etag,
) -> OpResult<()> {
    let uid = uid_of(href).ok_or_else(|| not_found(collection, href))?;
    if !conn.caps.has("UIDPLUS") {
        return Err(OpErr::Mb(Error::Unsupported {
            collection: collection.to_owned(),
            operation: "delete",
            reason: "the server lacks UIDPLUS, so one message cannot be expunged alone",
        }));
    }
    let (sel, current) = fetch_one(conn, collection, folder, uid).await?;
    let current = current.ok_or_else(|| not_found(collection, href))?;
    let etag = current.etag(sel.uid_validity, uid);
    if &etag != expected {
        return Err(OpErr::Mb(Error::Conflict {
            collection: collection.to_owned(),
            href: href.to_owned(),
            current: etag,
        }));
    }
    let store = match current.modseq.filter(|_| conn.condstore) {
        Some(ms) => format!("UID STORE {uid} (UNCHANGEDSINCE {ms}) +FLAGS.SILENT (\\Deleted)"),
        None => format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"),
    };
    let done = conn.run_one(&store, |_| {}).await?;
    if matches!(done.code, DoneCode::Modified(_)) {
        let (sel, now) = fetch_one(conn, collection, folder, uid).await?;
        let now = now.ok_or_else(|| not_found(collection, href))?;
        return Err(OpErr::Mb(Error::Conflict {
            collection: collection.to_owned(),
            href: href.to_owned(),
            current: now.etag(sel.uid_validity, uid),
        }));
    }
    if !done.is_ok() {
        return Err(refused(collection, "STORE", &done));
    }
    let done = conn.run_one(&format!("UID EXPUNGE {uid}"), |_| {}).await?;
    if !done.is_ok() {
        return Err(refused(collection, "UID EXPUNGE", &done));
    }
    Ok(())
}

pub(crate) async fn create(
    conn: &mut Conn,
    collection: &str,
    folder: &str,
    data: &[u8],
) -> OpResult<ItemRef> {
    if data.is_empty() {
        return Err(OpErr::Mb(Error::Malformed {
            collection: collection.to_owned(),
            href: String::new(),
            reason: "the message is empty".to_owned(),
        }));
    }
    let mbox = mailbox_arg(collection, folder)?;
    let done = conn.append(&mbox, data).await?;
    if !done.is_ok() {
        return Err(refused(collection, "APPEND", &done));
    }
    let DoneCode::AppendUid { uid_validity, uid } = done.code else {
        return Err(OpErr::Mb(Error::Remote {
            url: collection.to_owned(),
            status: None,
            reason: "the message was stored but the server did not say under which UID (no APPENDUID: the server lacks UIDPLUS); the next sync finds it".to_owned(),
        }));
    };
    let (sel, fetched) = fetch_one(conn, collection, folder, uid).await?;
    match fetched {
        Some(f) if sel.uid_validity == uid_validity => Ok(item_ref(&f, uid_validity, uid)),
        _ => Err(OpErr::Mb(not_found(collection, &uid.to_string()))),
    }
}
