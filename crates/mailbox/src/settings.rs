//! How to reach a mailbox on a server: the `[mailbox.dav]` and
//! `[mailbox.imap]` sections of SPEC §13, read and checked once for their
//! two readers, the agent's TOML configuration and the server's connected
//! mailboxes (R-V1, a JSON body with the same keys). Errors start with the
//! section's name as the reader shows it (`[mailbox.imap]` in a file, `imap:`
//! in the API), then name the key and the fix.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the IMAP watch looks at every folder by default. R-T2 wants a
/// change tracked within seconds; IDLE covers one folder, and some servers
/// (Cyrus without `idled`, a Dovecot whose file notifications do not work)
/// announce nothing while idling, so every folder is looked at this often:
/// one round trip (STATUS of each folder, NOOP for the idled one).
pub const IMAP_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How often a DAV server's sync tokens are polled by default (R-T2).
pub const DAV_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// `[mailbox.dav]` (SPEC §13), checked. `server` (a server root to discover
/// the collections from) is an addition to §13; it fills in the ones not
/// named.
#[derive(Clone, PartialEq, Eq)]
pub struct DavSettings {
    pub contacts: Option<String>,
    pub calendar: Option<String>,
    pub tasks: Option<String>,
    pub server: Option<String>,
    pub username: String,
    pub password: String,
    /// How often the sync tokens are polled for change notifications (R-T2).
    pub poll_interval: Duration,
}

/// `[mailbox.imap]` (SPEC §13), checked; the folder roles are in [`MailFolders`].
#[derive(Clone, PartialEq, Eq)]
pub struct ImapSettings {
    pub host: String,
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub security: String,
    pub username: String,
    pub password: String,
    /// Without CONDSTORE: how often every flag is listed again although the
    /// one-round-trip check saw nothing change (an addition to §13).
    pub rescan_interval: Duration,
    /// How often the folders IDLE does not cover are looked at, and IDLE is
    /// renewed with a look at INBOX (R-T2; an addition to §13).
    pub poll_interval: Duration,
}

impl std::fmt::Debug for DavSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavSettings")
            .field("contacts", &self.contacts)
            .field("calendar", &self.calendar)
            .field("tasks", &self.tasks)
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ImapSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The mail folders synchronized (R-M8: only these) and their roles.
/// Folder names as the mail client shows them (`INBOX`, `Sent`); the
/// backend's collection id is `mail/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFolders {
    pub inbox: String,
    pub sent: String,
    pub drafts: String,
    /// R-M4: messages placed in these folders are tracked.
    pub tracked_folders: Vec<TrackedFolder>,
}

/// A folder-level tracking folder (R-M4), with an optional fixed regarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedFolder {
    pub name: String,
    /// `(entity set, id)` every message tracked from this folder is regarding.
    pub regarding: Option<(String, uuid::Uuid)>,
}

impl Default for MailFolders {
    fn default() -> Self {
        MailFolders {
            inbox: "INBOX".into(),
            sent: "Sent".into(),
            drafts: "Drafts".into(),
            tracked_folders: vec![TrackedFolder {
                name: "CRM".into(),
                regarding: None,
            }],
        }
    }
}

/// Where a section's password comes from, as written: inline, or (in the
/// agent's file only) a file or a command. Its reader turns it into the
/// password.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Secret {
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
}

/// The password keys every section has (the TOML and JSON readers need them
/// as plain fields: serde's `flatten` cannot refuse unknown keys).
macro_rules! secret_keys {
    ($section:ty) => {
        impl $section {
            /// Takes the password keys out of the section (what the server
            /// stores is the section without them).
            pub fn take_secret(&mut self) -> Secret {
                Secret {
                    password: self.password.take(),
                    password_file: self.password_file.take(),
                    password_command: self.password_command.take(),
                }
            }
        }
    };
}
secret_keys!(DavSection);
secret_keys!(ImapSection);

/// `[mailbox.dav]` as written (SPEC §13's keys). Serialized without the
/// absent keys, so the server stores it as given, its secret taken out.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DavSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_command: Option<String>,
}

/// `[mailbox.imap]` as written (SPEC §13's keys and this project's
/// additions: `folder_regarding`, `rescan_interval`, `poll_interval`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImapSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drafts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked_folders: Option<Vec<String>>,
    /// Folder → `SET/ID` every message tracked from it is regarding (R-M4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_regarding: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescan_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
}

/// `90s`, `15m`, `1h`, `2d` (the syntax of the CRM's settings, R-T1).
pub fn parse_interval(text: &str) -> Option<Duration> {
    crmsync_core::settings::parse_interval(text.trim())
        .ok()
        .map(Duration::from_secs)
}

fn check_url(label: &str, key: &str, url: &Option<String>) -> Result<(), String> {
    match url {
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => Err(format!("{label} {key} = {u:?} is not an http:// or https:// address; write the collection's URL, like \"https://dav.example.com/ann/contacts/\"")),
        _ => Ok(()),
    }
}

impl DavSection {
    /// Checks the section; `password` turns its [`Secret`] into the
    /// password (after every other key was found valid). `label` names
    /// the section in errors.
    pub fn check(
        mut self,
        label: &str,
        password: impl FnOnce(Secret) -> Result<String, String>,
    ) -> Result<DavSettings, String> {
        let secret = self.take_secret();
        check_url(label, "contacts", &self.contacts)?;
        check_url(label, "calendar", &self.calendar)?;
        check_url(label, "tasks", &self.tasks)?;
        check_url(label, "server", &self.server)?;
        if self.contacts.is_none()
            && self.calendar.is_none()
            && self.tasks.is_none()
            && self.server.is_none()
        {
            return Err(format!("{label} names no collection; set contacts, calendar and tasks to collection URLs (or server to the server's root URL)"));
        }
        let poll_interval = match self.poll_interval {
            None => DAV_POLL_INTERVAL,
            Some(text) => parse_interval(&text).ok_or_else(|| {
                format!("{label} poll_interval = {text:?} is not a duration; write it like \"2s\" or \"1m\"")
            })?,
        };
        Ok(DavSettings {
            poll_interval,
            contacts: self.contacts,
            calendar: self.calendar,
            tasks: self.tasks,
            server: self.server,
            username: self.username.unwrap_or_default(),
            password: password(secret)?,
        })
    }
}

impl ImapSection {
    /// Checks the section and returns it with the folders it names (the
    /// defaults of [`MailFolders`] for those it does not); `password` as
    /// for [`DavSection::check`].
    pub fn check(
        mut self,
        label: &str,
        password: impl FnOnce(Secret) -> Result<String, String>,
    ) -> Result<(ImapSettings, MailFolders), String> {
        let secret = self.take_secret();
        let host = self
            .host
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| format!("{label} host is missing; set host = \"imap.example.com\""))?;
        let security = self.security.unwrap_or_else(|| "tls".into());
        let default_port = match security.as_str() {
            "none" | "starttls" => 143,
            "tls" => 993,
            other => {
                return Err(format!(
                    "{label} security = {other:?} is not one of none, starttls, tls"
                ))
            }
        };
        let username = self.username.filter(|u| !u.is_empty()).ok_or_else(|| {
            format!("{label} username is missing; set username = \"…\" (the IMAP login)")
        })?;
        let mut mail = MailFolders::default();
        if let Some(v) = self.inbox {
            mail.inbox = v;
        }
        if let Some(v) = self.sent {
            mail.sent = v;
        }
        if let Some(v) = self.drafts {
            mail.drafts = v;
        }
        if let Some(list) = self.tracked_folders {
            mail.tracked_folders = list
                .into_iter()
                .map(|name| TrackedFolder {
                    name,
                    regarding: None,
                })
                .collect();
        }
        for (folder, target) in self.folder_regarding.unwrap_or_default() {
            let parsed = target
                .split_once('/')
                .and_then(|(set, id)| Some((set.to_string(), uuid::Uuid::parse_str(id).ok()?)));
            let Some(regarding) = parsed else {
                return Err(format!("{label} folder_regarding {folder:?} = {target:?} is not SET/ID; write it like \"opportunities/1b4e28ba-2fa1-11d2-883f-0016d3cca427\""));
            };
            match mail.tracked_folders.iter_mut().find(|f| f.name == folder) {
                Some(f) => f.regarding = Some(regarding),
                None => return Err(format!("{label} folder_regarding names {folder:?}, which is not in tracked_folders; add it there")),
            }
        }
        let rescan_interval = match self.rescan_interval {
            None => Duration::from_secs(300),
            // "0s": every sync lists every flag.
            Some(text) if text.trim().trim_end_matches(['s', 'm', 'h', 'd']) == "0" => {
                Duration::ZERO
            }
            Some(text) => parse_interval(&text).ok_or_else(|| {
                format!("{label} rescan_interval = {text:?} is not a duration; write it like \"5m\" or \"0s\" (list every flag at every sync)")
            })?,
        };
        let poll_interval = match self.poll_interval {
            None => IMAP_POLL_INTERVAL,
            Some(text) => parse_interval(&text).filter(|d| !d.is_zero()).ok_or_else(|| {
                format!("{label} poll_interval = {text:?} is not a duration; write it like \"2s\" or \"1m\"")
            })?,
        };
        let settings = ImapSettings {
            rescan_interval,
            poll_interval,
            host,
            port: self.port.unwrap_or(default_port),
            security,
            username,
            password: password(secret)?,
        };
        Ok((settings, mail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(s: Secret) -> Result<String, String> {
        Ok(s.password.unwrap_or_default())
    }

    #[test]
    fn a_section_stored_as_json_reads_back_the_same_without_its_secret() {
        let mut section: ImapSection = serde_json::from_value(serde_json::json!({
            "host": "h", "username": "u", "password": "pw", "tracked_folders": ["CRM", "Deals"]
        }))
        .unwrap();
        assert_eq!(section.take_secret().password.as_deref(), Some("pw"));
        let stored = serde_json::to_value(&section).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"host": "h", "username": "u", "tracked_folders": ["CRM", "Deals"]})
        );
        let (imap, mail) = serde_json::from_value::<ImapSection>(stored)
            .unwrap()
            .check("imap:", |_| Ok("pw".into()))
            .unwrap();
        assert_eq!((imap.port, imap.password.as_str()), (993, "pw"));
        assert_eq!(mail.tracked_folders.len(), 2);
    }

    #[test]
    fn errors_start_with_the_label_and_name_the_key() {
        let e = ImapSection::default().check("imap:", inline).unwrap_err();
        assert!(e.starts_with("imap: host is missing"), "{e}");
        let e = DavSection {
            tasks: Some("ftp://x".into()),
            ..Default::default()
        }
        .check("dav:", inline)
        .unwrap_err();
        assert!(e.starts_with("dav: tasks = "), "{e}");
        let unknown = serde_json::from_value::<DavSection>(serde_json::json!({"colour": 1}))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("colour"), "{unknown}");
    }
}
