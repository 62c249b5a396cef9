//! `[mailbox.imap]` of the agent configuration (SPEC §13).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How the connection is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain TCP (loopback or a trusted network only).
    None,
    /// Plain TCP, then `STARTTLS` before logging in (port 143).
    StartTls,
    /// TLS from the first byte (port 993).
    #[default]
    Tls,
}

/// How often the watch looks at every folder by default (why: at
/// [`crmsync_mailbox::settings::IMAP_POLL_INTERVAL`], shared with the
/// settings of `[mailbox.imap]`).
pub use crmsync_mailbox::settings::IMAP_POLL_INTERVAL as DEFAULT_POLL_INTERVAL;

/// The IMAP backend's configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct ImapConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: String,
    pub password: String,
    /// The folders synchronized (collections `mail/<folder>`), e.g. INBOX,
    /// Sent, Drafts and the tracked folders (R-M4, R-M8).
    pub folders: Vec<String>,
    /// Watch INBOX with IDLE (when the server offers it); otherwise poll.
    pub idle: bool,
    /// How often `watch` looks at the folders IDLE does not cover and
    /// renews IDLE with a look at the idled folder (which catches servers
    /// that announce nothing while idling).
    pub poll_interval: Duration,
    /// Without CONDSTORE: how often every message's flags are listed again
    /// even though the quick check (EXISTS, UIDNEXT, the `$CRMTracked`
    /// messages, the regarding keywords) saw nothing change.
    pub rescan_interval: Duration,
    /// How long one answer from the server may take.
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), for servers with a private CA;
    /// Mozilla's roots are always trusted.
    pub tls_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ImapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &"…")
            .field("folders", &self.folders)
            .field("idle", &self.idle)
            .field("poll_interval", &self.poll_interval)
            .field("rescan_interval", &self.rescan_interval)
            .field("timeout", &self.timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl ImapConfig {
    /// A configuration with the default folders (`INBOX`, `Sent`, `Drafts`,
    /// `CRM`), IDLE on, polling every [`DEFAULT_POLL_INTERVAL`], every flag listed again every
    /// 5 minutes without CONDSTORE, and a 60 s answer timeout.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        security: Security,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        ImapConfig {
            host: host.into(),
            port,
            security,
            username: username.into(),
            password: password.into(),
            folders: Self::folder_list("INBOX", "Sent", "Drafts", &["CRM".to_owned()]),
            idle: true,
            poll_interval: DEFAULT_POLL_INTERVAL,
            rescan_interval: Duration::from_secs(300),
            timeout: Duration::from_secs(60),
            tls_ca_file: None,
        }
    }

    /// Sets the folders from SPEC §13's `inbox`, `sent`, `drafts` and
    /// `tracked_folders` (duplicates and empty names dropped).
    pub fn with_folders(
        mut self,
        inbox: &str,
        sent: &str,
        drafts: &str,
        tracked: &[String],
    ) -> Self {
        self.folders = Self::folder_list(inbox, sent, drafts, tracked);
        self
    }

    fn folder_list(inbox: &str, sent: &str, drafts: &str, tracked: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in [inbox, sent, drafts]
            .into_iter()
            .chain(tracked.iter().map(String::as_str))
        {
            if !f.is_empty() && !out.iter().any(|o| o == f) {
                out.push(f.to_owned());
            }
        }
        out
    }

    /// `imap://user@host:port`, for messages.
    pub fn url(&self) -> String {
        format!("imap://{}@{}:{}", self.username, self.host, self.port)
    }

    pub(crate) fn timeout(&self) -> Duration {
        if self.timeout.is_zero() {
            Duration::from_secs(60)
        } else {
            self.timeout
        }
    }
}
