//! File-system notifications for the local backend: `notify` events on the
//! root, mapped to the collection they touch and coalesced over a short
//! window so that a burst (a mail client renaming 500 files) is one
//! notification per collection.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc as tmpsc;

use super::{CALENDAR, CONTACTS, MAIL, TASKS};
use crate::error::{Error, Result};
use crate::mailbox::Watch;
use crate::types::Notification;

pub(super) fn watch(root: &Path, window: Duration) -> Result<Watch> {
    let watch_error = |e: notify::Error| Error::Watch {
        path: root.to_path_buf(),
        reason: e.to_string(),
    };
    let (raw_tx, raw_rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(raw_tx).map_err(watch_error)?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(watch_error)?;
    let (tx, rx) = tmpsc::unbounded_channel();
    let root_owned = root.to_path_buf();
    std::thread::Builder::new()
        .name("crmsync-mailbox-watch".to_owned())
        .spawn(move || coalesce(root_owned, raw_rx, tx, window))
        .map_err(|e| Error::Watch {
            path: root.to_path_buf(),
            reason: e.to_string(),
        })?;
    // The watcher owns the sending end of `raw_rx`: dropping the Watch stops
    // notify, which ends the coalescing thread.
    Ok(Watch::new(rx, watcher))
}

/// Collects events for `window` after the first one, then sends one
/// notification per collection touched (latency at most `window`).
fn coalesce(
    root: PathBuf,
    raw: mpsc::Receiver<notify::Result<notify::Event>>,
    tx: tmpsc::UnboundedSender<Notification>,
    window: Duration,
) {
    loop {
        let Ok(first) = raw.recv() else { return };
        let mut pending: BTreeSet<Key> = BTreeSet::new();
        absorb(&root, first, &mut pending);
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match raw.recv_timeout(left) {
                Ok(event) => absorb(&root, event, &mut pending),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let notes: Vec<Notification> = if pending.contains(&Key::Rescan) {
            vec![Notification::Rescan]
        } else {
            pending
                .into_iter()
                .filter_map(|k| match k {
                    Key::Changed(id) => Some(Notification::Changed(id)),
                    Key::Rescan => None,
                })
                .collect()
        };
        for note in notes {
            if tx.send(note).is_err() {
                return;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Rescan,
    Changed(String),
}

fn absorb(root: &Path, event: notify::Result<notify::Event>, pending: &mut BTreeSet<Key>) {
    let event = match event {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, "file-system notification error; rescanning");
            pending.insert(Key::Rescan);
            return;
        }
    };
    if event.need_rescan() {
        pending.insert(Key::Rescan);
        return;
    }
    // Reads (ours included) are not changes; a file closed after writing is.
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return;
        }
    }
    for path in &event.paths {
        if let Some(key) = classify(root, path) {
            pending.insert(key);
        }
    }
}

/// Which collection a changed path belongs to; `None` for paths that are
/// not items (temp files, locks, `tmp/`, Dovecot's control files).
fn classify(root: &Path, path: &Path) -> Option<Key> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let (top, rest) = parts.split_first()?;
    match *top {
        CONTACTS | CALENDAR | TASKS => {
            if rest.last().is_some_and(|name| name.starts_with('.')) {
                return None;
            }
            Some(Key::Changed((*top).to_owned()))
        }
        MAIL => {
            let (folder, rest) = match rest.split_first() {
                Some((dir, tail)) if dir.starts_with('.') && dir.len() > 1 => (&dir[1..], tail),
                Some(_) => ("INBOX", rest),
                None => return Some(Key::Rescan),
            };
            match rest.first() {
                Some(&"cur") | Some(&"new") => {
                    if rest.len() > 2 || rest.get(1).is_some_and(|n| n.starts_with('.')) {
                        return None;
                    }
                    Some(Key::Changed(format!("{MAIL}/{folder}")))
                }
                // A folder created or removed: the list of collections changed.
                None => Some(Key::Rescan),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Option<Key> {
        classify(Path::new("/r"), Path::new(path))
    }

    #[test]
    fn paths_map_to_their_collection() {
        assert_eq!(
            key("/r/contacts/a.vcf"),
            Some(Key::Changed("contacts".into()))
        );
        assert_eq!(key("/r/contacts/.crmsync-x.tmp"), None);
        assert_eq!(
            key("/r/mail/new/123.host"),
            Some(Key::Changed("mail/INBOX".into()))
        );
        assert_eq!(
            key("/r/mail/.Sent/cur/1:2,S"),
            Some(Key::Changed("mail/Sent".into()))
        );
        assert_eq!(key("/r/mail/tmp/123.host"), None);
        assert_eq!(key("/r/mail/.Sent/dovecot-uidlist.lock"), None);
        assert_eq!(key("/r/mail/dovecot-keywords"), None);
        assert_eq!(key("/r/mail/.CRM"), Some(Key::Rescan));
        assert_eq!(key("/r/elsewhere/x"), None);
        assert_eq!(key("/other/contacts/a.vcf"), None);
    }
}
