//! `Mailbox::watch` for IMAP: its own connection, IDLE on INBOX (when the
//! server offers it and `idle` is on) and `STATUS` polling of the other
//! folders every `poll_interval`, when IDLE is also renewed with a NOOP (a
//! server that announces nothing while idling is still heard within that
//! interval, R-T2); on a broken connection it reconnects with back-off (1 s doubling
//! to 60 s) and sends [`Notification::Rescan`], since changes may have been
//! missed meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crmsync_mailbox::{Notification, Watch};
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::status::StatusDataItem;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ImapConfig;
use crate::conn::{astring, Conn, ConnError, Stats, Untagged};
use crate::{utf7, MAIL_PREFIX};

/// Longest IDLE before it is renewed (RFC 9051 asks for less than 30 minutes).
const MAX_IDLE: Duration = Duration::from_secs(25 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts watching; returns once the first connection watches (IDLE
/// accepted or the first STATUS snapshot taken), so a change made right
/// after is seen. A first connection that fails is an error.
pub(crate) async fn start(config: ImapConfig, stats: Arc<Stats>) -> Result<Watch, ConnError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = AbortOnDrop(tokio::spawn(run(config, stats, tx, ready_tx)));
    match ready_rx.await {
        Ok(Ok(())) => Ok(Watch::new(rx, task)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnError::Closed("the watcher stopped".into())),
    }
}

type Ready = Option<oneshot::Sender<Result<(), ConnError>>>;

async fn run(
    config: ImapConfig,
    stats: Arc<Stats>,
    tx: UnboundedSender<Notification>,
    ready: oneshot::Sender<Result<(), ConnError>>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut connected_before = false;
    let mut ready: Ready = Some(ready);
    loop {
        if tx.is_closed() {
            return;
        }
        match watch_once(
            &config,
            &stats,
            &tx,
            &mut connected_before,
            &mut backoff,
            &mut ready,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                tracing::warn!(server = %config.url(), error = %e, retry_in = ?backoff, "IMAP watch connection lost; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// An answer that may announce a change of the selected folder. One that
/// cannot be read counts: a needless sync costs one round trip, a missed
/// change waits for the next one.
fn is_change(u: &Untagged<'_, '_>) -> bool {
    matches!(
        u,
        Untagged::Malformed(_)
            | Untagged::Parsed(Response::Data(
                Data::Exists(_) | Data::Expunge(_) | Data::Fetch { .. } | Data::Vanished { .. }
            ))
    )
}

/// One connection's life: returns `Ok` when the watch was dropped.
async fn watch_once(
    config: &ImapConfig,
    stats: &Arc<Stats>,
    tx: &UnboundedSender<Notification>,
    connected_before: &mut bool,
    backoff: &mut Duration,
    ready: &mut Ready,
) -> Result<(), ConnError> {
    let mut conn = Conn::open(config, stats.clone()).await?;
    *backoff = Duration::from_secs(1);
    // After a reconnection: once watching again (so nothing falls between
    // the rescan and the watch), ask for a look at everything.
    let mut rescan = std::mem::replace(connected_before, true);
    let idle_folder = config
        .folders
        .iter()
        .find(|f| f.eq_ignore_ascii_case("INBOX"))
        .filter(|_| config.idle && conn.caps.has("IDLE"))
        .cloned();
    let others: Vec<String> = config
        .folders
        .iter()
        .filter(|f| Some(*f) != idle_folder.as_ref())
        .cloned()
        .collect();
    let inbox_id = idle_folder.as_ref().map(|f| format!("{MAIL_PREFIX}{f}"));
    let mut last = poll(&mut conn, &others).await?;
    if let Some(folder) = &idle_folder {
        let mbox = astring(&utf7::encode(folder))
            .ok_or_else(|| ConnError::Refused(format!("{folder}: not a usable folder name")))?;
        let done = conn.run_one(&format!("SELECT {mbox}"), |_| {}).await?;
        if !done.is_ok() {
            return Err(ConnError::Refused(format!("SELECT {folder}: {done}")));
        }
    }
    let interval = if config.poll_interval.is_zero() {
        crate::DEFAULT_POLL_INTERVAL
    } else {
        config.poll_interval
    };
    loop {
        if let Some(folder) = &idle_folder {
            let id = format!("{MAIL_PREFIX}{folder}");
            let tag = conn.idle_start().await?;
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            }
            if std::mem::take(&mut rescan) && tx.send(Notification::Rescan).is_err() {
                return Ok(());
            }
            let deadline = Instant::now() + interval.min(MAX_IDLE);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut changed = false;
                let got = conn
                    .idle_wait(left, &mut |u| changed |= is_change(&u))
                    .await?;
                if changed && tx.send(Notification::Changed(id.clone())).is_err() {
                    return Ok(());
                }
                if !got {
                    break;
                }
            }
            let mut changed = false;
            conn.idle_done(&tag, &mut |u| changed |= is_change(&u))
                .await?;
            if changed && tx.send(Notification::Changed(id.clone())).is_err() {
                return Ok(());
            }
        } else {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            }
            if std::mem::take(&mut rescan) && tx.send(Notification::Rescan).is_err() {
                return Ok(());
            }
            tokio::time::sleep(interval).await;
        }
        if tx.is_closed() {
            return Ok(());
        }
        let mut changed = false;
        let now = poll_noting(&mut conn, &others, idle_folder.is_some(), &mut changed).await?;
        if let Some(id) = inbox_id.as_ref().filter(|_| changed) {
            // Changes to the selected INBOX reported while not idling.
            if tx.send(Notification::Changed(id.clone())).is_err() {
                return Ok(());
            }
        }
        for (folder, values) in &now {
            if last.get(folder) != Some(values)
                && tx
                    .send(Notification::Changed(format!("{MAIL_PREFIX}{folder}")))
                    .is_err()
            {
                return Ok(());
            }
        }
        last = now;
    }
}

/// `STATUS` of each folder: the numbers that move when something changes.
async fn poll(conn: &mut Conn, folders: &[String]) -> Result<HashMap<String, Vec<u64>>, ConnError> {
    poll_noting(conn, folders, false, &mut false).await
}

/// [`poll`], with a NOOP first when a folder is selected (it asks the server
/// for that folder's news, whatever IDLE announced), noting in `changed`
/// whether the selected folder reported a change.
async fn poll_noting(
    conn: &mut Conn,
    folders: &[String],
    noop: bool,
    changed: &mut bool,
) -> Result<HashMap<String, Vec<u64>>, ConnError> {
    let mut out = HashMap::new();
    let items = if conn.condstore {
        "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)"
    } else {
        "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"
    };
    // One round trip for all folders (STATUS answers name their folder).
    let commands: Vec<String> = noop
        .then(|| "NOOP".to_owned())
        .into_iter()
        .chain(
            folders
                .iter()
                .filter_map(|f| astring(&utf7::encode(f)))
                .map(|mbox| format!("STATUS {mbox} {items}")),
        )
        .collect();
    if commands.is_empty() {
        return Ok(out);
    }
    conn.run(&commands, |u| {
        *changed |= is_change(&u);
        if let Untagged::Parsed(Response::Data(Data::Status { mailbox, items })) = u {
            let values = items
                .iter()
                .map(|item| match item {
                    StatusDataItem::Messages(n) => u64::from(*n),
                    StatusDataItem::UidNext(n) => u64::from(n.get()),
                    StatusDataItem::UidValidity(n) => u64::from(n.get()),
                    StatusDataItem::Unseen(n) => u64::from(*n),
                    StatusDataItem::HighestModSeq(n) => *n,
                    _ => 0,
                })
                .collect();
            out.insert(utf7::name_of(mailbox), values);
        }
    })
    .await?;
    Ok(out)
}
