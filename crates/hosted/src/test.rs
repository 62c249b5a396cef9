//! R-V1's connection test: connects to a mailbox's IMAP and DAV servers as
//! a synchronization would, and says what works and what does not, with
//! the fix. It reads and changes nothing in the mailbox.

use std::time::Duration;

use tokio::time::timeout;

use crmsync_agent::backends::{dav_config, imap_config};
use crmsync_dav::DavMailbox;
use crmsync_imap::ImapMailbox;
use crmsync_mailbox::{Error, Mailbox};
use crmsync_server::mailboxes::{Check, CheckStatus, Connection, ConnectionTest};

/// The connection test of `crmsync serve`.
pub struct MailboxTester;

#[async_trait::async_trait]
impl ConnectionTest for MailboxTester {
    async fn test(&self, connection: &Connection) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Some((imap, folders)) = &connection.imap {
            let config = imap_config(imap, folders);
            let mut part = Vec::new();
            let finished = timeout(TEST_LIMIT, test_imap(&config, &mut part)).await;
            checks.append(&mut part);
            if finished.is_err() {
                checks.push(no_answer(
                    "IMAP",
                    &format!("the IMAP server {}", config.url()),
                ));
            }
        }
        if let Some(dav) = &connection.dav {
            let mut part = Vec::new();
            let finished = timeout(TEST_LIMIT, test_dav(dav, &mut part)).await;
            checks.append(&mut part);
            if finished.is_err() {
                checks.push(no_answer("DAV", "the DAV server"));
            }
        }
        checks
    }
}

/// How long one part of the test (IMAP, DAV) may take: the person who
/// pressed "Test" waits for the answer, and an unreachable host would
/// otherwise keep them until the connection's own timeout. What the part
/// found before is kept.
const TEST_LIMIT: Duration = Duration::from_secs(15);

fn no_answer(part: &str, server: &str) -> Check {
    check(
        part,
        CheckStatus::Failed,
        format!(
            "{server} did not answer within {} s; check the host, port and security settings, and that the server is running and reachable from the CRM server",
            TEST_LIMIT.as_secs()
        ),
    )
}

fn check(what: &str, status: CheckStatus, detail: impl Into<String>) -> Check {
    Check {
        what: what.into(),
        status,
        detail: detail.into(),
    }
}

/// Sign-in (which covers reaching the server and TLS), CONDSTORE/QRESYNC,
/// and the folders.
async fn test_imap(config: &crmsync_imap::ImapConfig, checks: &mut Vec<Check>) {
    let mailbox = match ImapMailbox::connect(config.clone()).await {
        Ok(m) => m,
        Err(e) => {
            checks.push(sign_in_failed("IMAP sign-in", &e));
            return;
        }
    };
    checks.push(check(
        "IMAP sign-in",
        CheckStatus::Ok,
        format!("signed in to {} as {}", config.url(), config.username),
    ));
    match mailbox.uses_condstore().await {
        Ok((_, true)) => checks.push(check(
            "IMAP change tracking",
            CheckStatus::Ok,
            "QRESYNC: each synchronization asks only for what changed",
        )),
        Ok((true, false)) => checks.push(check(
            "IMAP change tracking",
            CheckStatus::Ok,
            "CONDSTORE: each synchronization asks only for changed flags",
        )),
        Ok((false, false)) => checks.push(check(
            "IMAP change tracking",
            CheckStatus::Warning,
            "the server offers neither CONDSTORE nor QRESYNC, so synchronization lists every message's flags now and then; it works, more slowly on large folders (Dovecot and Cyrus offer both)",
        )),
        Err(e) => checks.push(check("IMAP change tracking", CheckStatus::Failed, e.to_string())),
    }
    match mailbox.collections().await {
        Ok(found) => {
            let missing: Vec<&String> = config
                .folders
                .iter()
                .filter(|f| !found.iter().any(|c| &c.name == *f))
                .collect();
            if missing.is_empty() {
                checks.push(check(
                    "IMAP folders",
                    CheckStatus::Ok,
                    format!("found {}", config.folders.join(", ")),
                ));
            } else {
                let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                checks.push(check(
                    "IMAP folders",
                    CheckStatus::Warning,
                    format!(
                        "not on the server: {}; the first synchronization creates them (for Sent or Drafts, name the folders the mail client uses in the imap section's sent and drafts)",
                        names.join(", ")
                    ),
                ));
            }
        }
        Err(e) => checks.push(check("IMAP folders", CheckStatus::Failed, e.to_string())),
    }
}

/// Each collection: reachable, the right kind, the credentials work, and
/// it can be listed.
async fn test_dav(settings: &crmsync_mailbox::settings::DavSettings, checks: &mut Vec<Check>) {
    let config = match dav_config(settings) {
        Ok(c) => c,
        Err(e) => {
            checks.push(check("DAV settings", CheckStatus::Failed, format!("{e:#}")));
            return;
        }
    };
    let mailbox = match DavMailbox::connect(&config).await {
        Ok(m) => m,
        Err(e) => {
            checks.push(sign_in_failed("DAV collections", &e));
            return;
        }
    };
    for (collection, what) in [
        ("contacts", "address book"),
        ("calendar", "calendar"),
        ("tasks", "task list"),
    ] {
        let Some(url) = mailbox.collection_url(collection).cloned() else {
            continue;
        };
        match mailbox.changes_since(collection, None).await {
            Ok(changes) => checks.push(check(
                what,
                CheckStatus::Ok,
                format!("{url}: {} items", changes.changed.len()),
            )),
            Err(e) => checks.push(check(what, CheckStatus::Failed, e.to_string())),
        }
    }
}

fn sign_in_failed(what: &str, e: &Error) -> Check {
    let detail = if e.is_authentication_failure() {
        format!("{e} (change the password with PATCH; the mailbox waits for it)")
    } else {
        e.to_string()
    };
    check(what, CheckStatus::Failed, detail)
}
