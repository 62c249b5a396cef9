//! Opens the mailbox a configuration names (SPEC §13): contacts, calendar
//! and tasks from `[mailbox.dav]` or `[mailbox.local]`, mail folders from
//! `[mailbox.imap]` or `[mailbox.local]`, one [`RoutedMailbox`] when the two
//! sides are different backends.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use crmsync_dav::{DavConfig, DavMailbox, Url};
use crmsync_imap::{ImapConfig, ImapMailbox, Security};
use crmsync_mailbox::{LocalConfig, LocalMailbox, Mailbox, RoutedMailbox};

use crate::config::{Config, DavSettings, ImapSettings, MailFolders};

/// The opened mailbox, and the local folder its contacts, calendar and
/// tasks live in when they are local files (their modification times are
/// the mailbox side's for R-F5).
pub struct OpenedMailbox {
    pub mailbox: Arc<dyn Mailbox>,
    pub local_items_root: Option<PathBuf>,
}

/// `checked`: collection URLs an earlier run synced (from the cache), whose
/// start-up check is skipped (one request per collection on a no-change
/// sync, R-T3).
pub async fn open_mailbox(cfg: &Config, checked: &[Url]) -> anyhow::Result<OpenedMailbox> {
    let local: Option<Arc<dyn Mailbox>> = match &cfg.local_root {
        // The backend's errors name the path and the fix.
        Some(root) => Some(Arc::new(LocalMailbox::open(&LocalConfig {
            root: root.clone(),
        })?)),
        None => None,
    };
    let dav: Option<Arc<dyn Mailbox>> = match &cfg.dav {
        Some(d) => Some(Arc::new(open_dav(d, checked).await?)),
        None => None,
    };
    let imap: Option<Arc<dyn Mailbox>> = match &cfg.imap {
        Some(i) => Some(Arc::new(open_imap(i, cfg).await?)),
        None => None,
    };
    let local_items_root = if dav.is_none() {
        cfg.local_root.clone()
    } else {
        None
    };
    let mailbox: Arc<dyn Mailbox> = match (dav, imap, local) {
        (None, None, Some(local)) => local,
        (items, mail, local) => Arc::new(RoutedMailbox::new(
            items.or_else(|| local.clone()),
            mail.or(local),
        )),
    };
    Ok(OpenedMailbox {
        mailbox: crate::fault::counting_writes(mailbox),
        local_items_root,
    })
}

async fn open_dav(d: &DavSettings, checked: &[Url]) -> anyhow::Result<DavMailbox> {
    let mut c = dav_config(d)?;
    c.checked = checked.to_vec();
    DavMailbox::connect(&c)
        .await
        .context("[mailbox.dav]: the DAV server could not be used")
}

/// The DAV backend's configuration from `[mailbox.dav]` (or a server-side
/// mailbox's `dav` section).
pub fn dav_config(d: &DavSettings) -> anyhow::Result<DavConfig> {
    let url = |key: &str, v: &Option<String>| -> anyhow::Result<Option<Url>> {
        v.as_deref()
            .map(|u| {
                Url::parse(u).with_context(|| format!("[mailbox.dav] {key} = {u:?} is not a URL"))
            })
            .transpose()
    };
    let mut c = DavConfig::new(&d.username, &d.password);
    c.contacts = url("contacts", &d.contacts)?;
    c.calendar = url("calendar", &d.calendar)?;
    c.tasks = url("tasks", &d.tasks)?;
    c.server = url("server", &d.server)?;
    c.poll_interval = d.poll_interval;
    Ok(c)
}

async fn open_imap(i: &ImapSettings, cfg: &Config) -> anyhow::Result<ImapMailbox> {
    ImapMailbox::connect(imap_config(i, &cfg.mail))
        .await
        .context("[mailbox.imap]: the IMAP server could not be used")
}

/// The IMAP backend's configuration from `[mailbox.imap]` and its folders
/// (or a server-side mailbox's `imap` section).
pub fn imap_config(i: &ImapSettings, mail: &MailFolders) -> ImapConfig {
    let security = match i.security.as_str() {
        "none" => Security::None,
        "starttls" => Security::StartTls,
        _ => Security::Tls,
    };
    let tracked: Vec<String> = mail
        .tracked_folders
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let mut c = ImapConfig::new(&i.host, i.port, security, &i.username, &i.password).with_folders(
        &mail.inbox,
        &mail.sent,
        &mail.drafts,
        &tracked,
    );
    c.rescan_interval = i.rescan_interval;
    c.poll_interval = i.poll_interval;
    c
}
