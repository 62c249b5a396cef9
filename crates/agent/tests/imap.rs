//! Email in the agent end to end on real IMAP servers (issue 6): the agent's
//! mail folders are `[mailbox.imap]`, a real CRM server runs in-process, and
//! "another mail client" changes the mailbox over its own IMAP connection
//! (APPEND, STORE, MOVE, EXPUNGE). Every test runs three times: on
//! Dovecot's default capabilities (CONDSTORE + QRESYNC, `qresync::`),
//! without either (`plain::`, the fallback), and on Cyrus (`cyrus::`). Named after the rules (SPEC §7 R-E5..
//! R-E10, §8 R-M1, R-M3..R-M8, §9 email rows, R-T2).
//!
//! Dovecot runs with its default `mail_max_keyword_length` (50): R-M7's
//! keyword `$CRMRegarding:<32 hex digits>` has 46 characters.

// The shared harness has helpers other test files use.
#![allow(dead_code)]

#[path = "../../imap/tests/support/mod.rs"]
mod imap_servers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crmsync_agent::commands as cmd;
use crmsync_agent::{Agent, Config, SyncOptions};
use crmsync_core::mapping::{parse_item, render_item, RenderOptions};
use imap_servers::{Dovecot, Flavor, ImapServer, Proxy, Raw};

include!("common/harness.rs");

const TRACKED: &str = "$CRMTracked";

macro_rules! both_configurations {
    ($($name:ident),* $(,)?) => {
        mod qresync {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Flavor::Qresync).await;
                }
            )*
        }
        mod plain {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Flavor::Plain).await;
                }
            )*
        }
        mod cyrus {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Flavor::Cyrus).await;
                }
            )*
        }
    };
}

both_configurations!(
    r_m1_keyword_set_by_another_client_tracks_and_removing_it_untracks,
    r_m1_untrack_delete_in_crm_by_command,
    r_m4_folder_tracking_with_fixed_regarding,
    r_e6_draft_not_tracked_until_sent,
    r_m5_reply_correlation_and_tracking_token_in_inbox_only,
    r_m6_auto_track_all_none_and_exclusion_list,
    r_m7_regarding_change_in_crm_reaches_message_as_keyword,
    r_e5_regarding_keyword_changed_by_another_client_changes_the_regarding,
    r_m7_regarding_keyword_fits_dovecot_default_limit,
    r_m7_former_regarding_keyword_is_read_and_replaced,
    r_m8_marked_message_moved_to_unsynchronized_folder_is_reported,
    r_e7_bulk_tracking_of_many_messages,
    r_e9_two_activities,
    r_e10_unapproved_user_refused_and_reported,
    section_9_crm_deletes_tracked_email_message_kept_keyword_removed,
    section_9_user_deletes_message_crm_activity_kept,
    r_t2_running_agent_tracks_at_once_and_defers_deletions,
    r_t2_running_agent_tracks_a_message_marked_after_its_append,
    r_t2_running_agent_tracks_a_message_marked_right_after_its_append,
    r_t2_running_agent_tracks_a_message_put_in_a_tracked_folder_within_5s,
    uidvalidity_change_relinks_by_message_id_without_duplicate,
    connection_dropped_mid_sync_is_an_error_then_next_sync_completes,
    malformed_no_message_id_8bit_and_huge_messages_reported_others_go_on,
    max_message_size_refuses_larger_messages_unread,
    r_t4_spooled_message_journaled_and_sent_after_a_failed_push,
    s13_mail_only_agent_tracks_email_and_is_sent_no_items,
);

/// A CRM user's mailbox on an IMAP server of its own, the agent on it, and
/// another mail client.
struct Mail {
    server: ImapServer,
    other: Raw,
    user_id: String,
    token: String,
    agent: Agent,
}

impl Mail {
    /// Another client APPENDs `raw` to `folder` with `flags`; returns its
    /// UID (the agent's href).
    async fn append(&mut self, folder: &str, raw: &[u8], flags: &str) -> u32 {
        self.other.append_flags(folder, flags, raw).await
    }

    /// Another client changes the keywords/flags of a message (`+FLAGS` or
    /// `-FLAGS`).
    async fn store(&mut self, folder: &str, uid: u32, how: &str, flags: &str) {
        self.other.select(folder).await;
        self.other
            .cmd(&format!("UID STORE {uid} {how} ({flags})"))
            .await;
    }

    /// The flags of a message as another client sees them.
    async fn flags(&mut self, folder: &str, uid: u32) -> String {
        let line = self.other.flags(folder, uid).await;
        assert!(line.contains("FETCH"), "no message {uid} in {folder}");
        line
    }

    async fn has(&mut self, folder: &str, uid: u32, keyword: &str) -> bool {
        let line = self.flags(folder, uid).await;
        line.split([' ', '(', ')'])
            .any(|f| f.eq_ignore_ascii_case(keyword))
    }

    /// Another client deletes a message (\Deleted, EXPUNGE).
    async fn expunge(&mut self, folder: &str, uid: u32) {
        self.store(folder, uid, "+FLAGS", "\\Deleted").await;
        self.other.cmd(&format!("UID EXPUNGE {uid}")).await;
    }

    /// Another client MOVEs a message; returns its UID in `to`.
    async fn move_to(&mut self, from: &str, to: &str, uid: u32) {
        self.other.select(from).await;
        self.other.cmd(&format!("UID MOVE {uid} \"{to}\"")).await;
    }
}

/// `email` as a user with an agent on a fresh IMAP server (the folders INBOX,
/// Sent, Drafts, CRM and `extra` exist), configuration changed by `edit`,
/// after one sync of the empty mailbox (so what arrives next is received
/// mail, R-M5).
async fn mailbox_of(
    w: &World,
    flavor: Flavor,
    email: &str,
    extra: &[&str],
    edit: impl FnOnce(&mut Config),
) -> Mail {
    mailbox_on(w, ImapServer::start(flavor).await, email, extra, edit).await
}

/// [`mailbox_of`] on a given server.
async fn mailbox_on(
    w: &World,
    server: ImapServer,
    email: &str,
    extra: &[&str],
    edit: impl FnOnce(&mut Config),
) -> Mail {
    let (user_id, token) = w.user(email).await;
    let mut other = server.client().await;
    for f in ["Sent", "Drafts", "CRM"].iter().chain(extra) {
        other.cmd(&format!("CREATE \"{f}\"")).await;
    }
    let name = email.split('@').next().unwrap();
    let agent = w
        .imap_agent(
            &token,
            name,
            &format!("{name}-cache"),
            server.port(),
            imap_servers::USER,
            imap_servers::PASSWORD,
            edit,
        )
        .await;
    sync(&agent).await;
    Mail {
        server,
        other,
        user_id,
        token,
        agent,
    }
}

async fn ann(w: &World, flavor: Flavor) -> Mail {
    mailbox_of(w, flavor, "ann@example.com", &[], |_| {}).await
}

fn lee(id: &str, subject: &str) -> Vec<u8> {
    rfc5322(
        Some(id),
        "lee@example.org",
        &["ann@example.com"],
        subject,
        "",
    )
}

/// SPEC §13: `[mailbox.imap]` alone. The CRM holds a contact, an
/// appointment and a task of the user; the agent syncs without error,
/// tracks email, and says which kinds it does not synchronize.
async fn s13_mail_only_agent_tracks_email_and_is_sent_no_items(flavor: Flavor) {
    let w = world().await;
    let (_, token) = w.user("ann@example.com").await;
    w.contact(&token, "Person").await;
    for (set, body) in [
        (
            "appointments",
            json!({"subject": "Meet", "start": "2030-06-01T10:00:00Z", "end": "2030-06-01T11:00:00Z"}),
        ),
        ("tasks", json!({"subject": "Call back"})),
    ] {
        let (status, b) = w
            .call(&token, Method::POST, &format!("/api/v1/{set}"), Some(body))
            .await;
        assert_eq!(status, 201, "{b}");
    }
    let server = ImapServer::start(flavor).await;
    let mut other = server.client().await;
    let agent = w
        .imap_agent(
            &token,
            "ann",
            "cache",
            server.port(),
            imap_servers::USER,
            imap_servers::PASSWORD,
            |c| {
                c.local_root = None;
            },
        )
        .await;
    let r = sync(&agent).await;
    assert_eq!(r.written_to_mailbox, 0, "{r:?}");
    other
        .append_flags(
            "INBOX",
            &format!("\\Seen {TRACKED}"),
            &lee("only@example.org", "Mail only"),
        )
        .await;
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(w.email_by_mid("only@example.org").await.len(), 1);
    let status = agent.status().await.unwrap();
    assert_eq!(
        status.kinds_not_synchronized,
        vec!["contacts", "calendar", "tasks"],
        "{status:?}"
    );
    assert!(
        !w.dir.path().join("ann/contacts").exists(),
        "no local folder was made"
    );
}

async fn r_m1_keyword_set_by_another_client_tracks_and_removing_it_untracks(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let uid = m
        .append("INBOX", &lee("m1@example.org", "Offer"), "\\Seen")
        .await;
    let r = sync(&m.agent).await;
    assert!(r.pushed.is_empty(), "not marked, no correlation: {r:?}");
    assert!(w.emails().await.is_empty());
    assert_eq!(m.agent.status().await.unwrap().not_tracked, 1);

    m.store("INBOX", uid, "+FLAGS", TRACKED).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = w.email_by_mid("m1@example.org").await;
    assert_eq!(email.len(), 1);
    assert_eq!(email[0]["subject"], "Offer");
    assert_eq!(email[0]["direction"], "incoming");
    let s = m.agent.status().await.unwrap();
    assert_eq!((s.not_tracked, s.to_be_tracked, s.tracked), (0, 0, 1));
    assert!(sync(&m.agent).await.pushed.is_empty(), "nothing changed");
    assert!(m.has("INBOX", uid, "\\Seen").await, "flags kept");

    // Removing the keyword untracks; the CRM email stays (R-M1, §9).
    m.store("INBOX", uid, "-FLAGS", TRACKED).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("untrack"), Some(&1), "{r:?}");
    let id = email[0]["id"].as_str().unwrap();
    assert_eq!(
        w.get(&w.admin, &format!("/api/v1/emails/{id}")).await.0,
        200
    );
    assert!(!m.has("INBOX", uid, TRACKED).await);
    assert_eq!(m.agent.status().await.unwrap().tracked, 0);
    assert!(sync(&m.agent).await.pushed.is_empty());
}

async fn r_m1_untrack_delete_in_crm_by_command(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let acme = w.account(&m.token, "Acme").await;
    let uid = m
        .append("INBOX", &lee("cmd@example.org", "Command"), "\\Seen")
        .await;
    let item = "mid:<cmd@example.org>".to_string();
    let r = cmd::track(
        &m.agent,
        std::slice::from_ref(&item),
        Some(&format!("accounts/{acme}")),
    )
    .await
    .unwrap();
    let id = r.items[0].1.clone().expect("tracked");
    let email = &w.email_by_mid("cmd@example.org").await[0];
    assert_eq!(email["regarding"]["id"], acme.as_str());
    assert!(m.has("INBOX", uid, TRACKED).await);
    assert!(m.has("INBOX", uid, &regarding_kw(&acme)).await);
    // Untrack with --delete-in-crm: the CRM email goes, the message stays.
    cmd::untrack(&m.agent, std::slice::from_ref(&item), true)
        .await
        .unwrap();
    assert_eq!(
        w.get(&w.admin, &format!("/api/v1/emails/{id}")).await.0,
        404
    );
    assert!(!m.has("INBOX", uid, TRACKED).await);
    assert_eq!(cmd::item_status(&m.agent, &item).await.unwrap().link, 0);
    let r = sync(&m.agent).await;
    assert!(r.pushed.is_empty(), "{r:?}");
}

async fn r_m4_folder_tracking_with_fixed_regarding(flavor: Flavor) {
    let w = world().await;
    // The account exists before the agent is configured with it.
    let (_, boss) = w.user("boss@example.com").await;
    let acme = w.account(&boss, "Acme").await;
    let acme_id = uuid::Uuid::parse_str(&acme).unwrap();
    let mut m = mailbox_of(&w, flavor, "ann@example.com", &["Acme"], |c| {
        c.mail.tracked_folders = vec![crmsync_agent::config::TrackedFolder {
            name: "Acme".into(),
            regarding: Some(("accounts".into(), acme_id)),
        }];
    })
    .await;
    let uid = m
        .append("Acme", &lee("deal@example.org", "Deal"), "\\Seen")
        .await;
    // CRM is not a tracked folder of this configuration (R-M8).
    m.append("CRM", &lee("other@example.org", "Other"), "\\Seen")
        .await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = &w.email_by_mid("deal@example.org").await[0];
    assert_eq!(email["regarding"], json!({"set": "accounts", "id": acme}));
    assert!(m.has("Acme", uid, TRACKED).await);
    assert!(m.has("Acme", uid, &regarding_kw(&acme)).await);
    assert!(w.email_by_mid("other@example.org").await.is_empty());
    // The user removes the marker in the folder: untracked, and it stays so.
    m.store("Acme", uid, "-FLAGS", TRACKED).await;
    assert_eq!(sync(&m.agent).await.pushed.get("untrack"), Some(&1));
    assert!(sync(&m.agent).await.pushed.is_empty());
}

async fn r_e6_draft_not_tracked_until_sent(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let raw = rfc5322(
        Some("draft@example.com"),
        "ann@example.com",
        &["lee@example.org"],
        "Proposal",
        "",
    );
    let draft = m
        .append("Drafts", &raw, &format!("\\Draft {TRACKED}"))
        .await;
    let r = sync(&m.agent).await;
    assert!(r.pushed.is_empty(), "a draft is never tracked: {r:?}");
    assert!(w.emails().await.is_empty());
    assert_eq!(m.agent.status().await.unwrap().to_be_tracked, 1);
    let e = cmd::explain(&m.agent, Some("mid:draft@example.com"), None)
        .await
        .unwrap();
    assert!(e.reasons[0].contains("draft"), "{e:?}");
    // Sent: the client removes the draft and stores the sent copy (without
    // the keyword) in Sent.
    m.expunge("Drafts", draft).await;
    let sent = m.append("Sent", &raw, "\\Seen").await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = &w.email_by_mid("draft@example.com").await[0];
    assert_eq!(email["direction"], "outgoing");
    assert!(m.has("Sent", sent, TRACKED).await);
    let s = m.agent.status().await.unwrap();
    assert_eq!((s.to_be_tracked, s.tracked), (0, 1));
    assert!(s.reported.is_empty(), "{s:?}");
}

/// Ann's sent email `orig@example.com`, tracked regarding Acme by another
/// client's keywords; returns (Acme's id, the email).
async fn tracked_sent(w: &World, m: &mut Mail) -> (String, Value) {
    let acme = w.account(&m.token, "Acme").await;
    let raw = rfc5322(
        Some("orig@example.com"),
        "ann@example.com",
        &["lee@example.org", "kim@example.org"],
        "Quote 42",
        "",
    );
    let flags = format!("\\Seen {TRACKED} {}", regarding_kw(&acme));
    m.append("Sent", &raw, &flags).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = w.email_by_mid("orig@example.com").await.remove(0);
    assert_eq!(email["regarding"]["id"], acme.as_str());
    (acme, email)
}

async fn r_m5_reply_correlation_and_tracking_token_in_inbox_only(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let (acme, orig) = tracked_sent(&w, &mut m).await;
    let tok = orig["tracking_token"].as_str().unwrap().to_string();
    let reply = rfc5322(
        Some("reply@example.org"),
        "lee@example.org",
        &["ann@example.com"],
        "Re: Quote 42",
        "In-Reply-To: <orig@example.com>\r\nReferences: <orig@example.com>\r\n",
    );
    let reply_uid = m.append("INBOX", &reply, "").await;
    let unrelated = m
        .append("INBOX", &lee("news@example.org", "News"), "")
        .await;
    // No In-Reply-To: only the token in the subject ties it to the thread.
    let token_uid = m
        .append(
            "INBOX",
            &lee("token@example.org", &format!("About the quote [{tok}]")),
            "",
        )
        .await;
    // The same kind of message outside the Inbox is not correlated.
    let elsewhere = rfc5322(
        Some("elsewhere@example.org"),
        "ann@example.com",
        &["lee@example.org"],
        &format!("Re: About the quote [{tok}]"),
        "In-Reply-To: <orig@example.com>\r\n",
    );
    let elsewhere_uid = m.append("Sent", &elsewhere, "\\Seen").await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&2), "{r:?}");
    let email = &w.email_by_mid("reply@example.org").await[0];
    assert_eq!(email["regarding"]["id"], acme.as_str());
    assert_eq!(
        w.email_by_mid("token@example.org").await[0]["regarding"]["id"],
        acme.as_str()
    );
    assert!(m.has("INBOX", reply_uid, TRACKED).await);
    assert!(m.has("INBOX", reply_uid, &regarding_kw(&acme)).await);
    assert!(m.has("INBOX", token_uid, TRACKED).await);
    assert!(!m.has("INBOX", unrelated, TRACKED).await);
    assert!(!m.has("Sent", elsewhere_uid, TRACKED).await);
    assert!(w.email_by_mid("news@example.org").await.is_empty());
    assert!(w.email_by_mid("elsewhere@example.org").await.is_empty());
    let e = cmd::explain(&m.agent, Some("mid:reply@example.org"), None)
        .await
        .unwrap();
    assert!(
        e.reasons[0].contains("belongs to a tracked email") && e.reasons[0].contains("message_id"),
        "{e:?}"
    );
    let e = cmd::explain(&m.agent, Some("mid:token@example.org"), None)
        .await
        .unwrap();
    assert!(e.reasons[0].contains("tracking_token"), "{e:?}");
    assert!(sync(&m.agent).await.pushed.is_empty());
}

async fn r_m6_auto_track_all_none_and_exclusion_list(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    w.user("bob@example.com").await;
    w.org_settings(json!({"exclusions": ["noreply@*"]})).await;
    w.user_settings(
        &m.user_id,
        json!({"auto_track": "all", "exclusions": ["@hr.example.com"]}),
    )
    .await;
    let all = m
        .append("INBOX", &lee("all@example.org", "Hello"), "")
        .await;
    let shop = rfc5322(
        Some("shop@example.org"),
        "noreply@shop.example",
        &["ann@example.com"],
        "Receipt",
        "",
    );
    let shop_uid = m.append("INBOX", &shop, "").await;
    let hr = rfc5322(
        Some("hr@example.org"),
        "lee@example.org",
        &["ann@example.com", "pay@hr.example.com"],
        "Salary",
        "",
    );
    m.append("INBOX", &hr, "").await;
    let internal = rfc5322(
        Some("internal@example.com"),
        "bob@example.com",
        &["ann@example.com"],
        "Lunch",
        "",
    );
    m.append("INBOX", &internal, "").await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(w.email_by_mid("all@example.org").await.len(), 1);
    assert!(m.has("INBOX", all, TRACKED).await);
    assert!(w.email_by_mid("shop@example.org").await.is_empty());
    assert!(w.email_by_mid("hr@example.org").await.is_empty());
    assert!(w.email_by_mid("internal@example.com").await.is_empty());
    let agent = &m.agent;
    let why = |mid: &'static str| async move {
        cmd::explain(agent, Some(mid), None).await.unwrap().reasons[0].clone()
    };
    assert!(why("mid:shop@example.org").await.contains("'noreply@*'"));
    assert!(why("mid:hr@example.org")
        .await
        .contains("'@hr.example.com'"));
    assert!(why("mid:internal@example.com").await.contains("internal"));
    // Manual tracking still works for an excluded message.
    m.store("INBOX", shop_uid, "+FLAGS", TRACKED).await;
    assert_eq!(sync(&m.agent).await.pushed.get("track"), Some(&1));
    // Setting none: even a reply to a tracked email is not tracked.
    w.user_settings(&m.user_id, json!({"auto_track": "none"}))
        .await;
    let (_, orig) = tracked_sent(&w, &mut m).await;
    let reply = rfc5322(
        Some("reply-none@example.org"),
        "lee@example.org",
        &["ann@example.com"],
        "Re: Quote 42",
        &format!(
            "In-Reply-To: <{}>\r\n",
            orig["message_id"].as_str().unwrap()
        ),
    );
    let reply_uid = m.append("INBOX", &reply, "").await;
    let r = sync(&m.agent).await;
    assert!(r.pushed.is_empty(), "{r:?}");
    assert!(!m.has("INBOX", reply_uid, TRACKED).await);
    let agent = &m.agent;
    let why = |mid: &'static str| async move {
        cmd::explain(agent, Some(mid), None).await.unwrap().reasons[0].clone()
    };
    assert!(why("mid:reply-none@example.org").await.contains("none"));
}

/// R-E5: after tracking only the regarding changes, here by another mail
/// client swapping the `$CRMRegarding:` keyword. A keyword new to the folder
/// is seen at the next sync in both configurations; without CONDSTORE, a
/// swap to a keyword the folder already had is seen at the next full
/// listing (`rescan_interval`, 1 s here).
async fn r_e5_regarding_keyword_changed_by_another_client_changes_the_regarding(flavor: Flavor) {
    let w = world().await;
    let mut m = mailbox_of(&w, flavor, "ann@example.com", &[], |c| {
        c.imap.as_mut().unwrap().rescan_interval = Duration::from_secs(1);
    })
    .await;
    let acme = w.account(&m.token, "Acme").await;
    let globex = w.account(&m.token, "Globex").await;
    // Globex's keyword is already in the folder, on another message.
    m.append(
        "INBOX",
        &lee("other@example.org", "Other"),
        &regarding_kw(&globex),
    )
    .await;
    let uid = m
        .append("INBOX", &lee("e5@example.org", "Quote"), TRACKED)
        .await;
    sync(&m.agent).await;
    assert!(w.email_by_mid("e5@example.org").await[0]["regarding"].is_null());
    m.store("INBOX", uid, "+FLAGS", &regarding_kw(&acme)).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("set_regarding"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("e5@example.org").await[0]["regarding"]["id"],
        acme.as_str()
    );
    m.store("INBOX", uid, "-FLAGS", &regarding_kw(&acme)).await;
    m.store("INBOX", uid, "+FLAGS", &regarding_kw(&globex))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("set_regarding"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("e5@example.org").await[0]["regarding"]["id"],
        globex.as_str()
    );
    assert!(sync(&m.agent).await.pushed.is_empty());
}

/// R-M7 (issue 12): `crmsync regarding` on a Dovecot in its default
/// configuration (`mail_max_keyword_length` 50): the keyword,
/// `$CRMRegarding:<32 hex digits>`, is stored and the CRM email follows.
async fn r_m7_regarding_keyword_fits_dovecot_default_limit(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let acme = w.account(&m.token, "Acme").await;
    let uid = m
        .append("INBOX", &lee("m7-limit@example.org", "Quote"), TRACKED)
        .await;
    sync(&m.agent).await;
    cmd::set_regarding(
        &m.agent,
        &["mid:m7-limit@example.org".to_string()],
        &format!("accounts/{acme}"),
    )
    .await
    .unwrap();
    let keyword = regarding_kw(&acme);
    assert_eq!(keyword.len(), 46);
    assert!(
        m.has("INBOX", uid, &keyword).await,
        "{}",
        m.flags("INBOX", uid).await
    );
    assert_eq!(
        w.email_by_mid("m7-limit@example.org").await[0]["regarding"],
        json!({"set": "accounts", "id": acme})
    );
    assert!(sync(&m.agent).await.pushed.is_empty());
}

/// R-M7 (issue 12): a server whose keyword limit was raised holds keywords
/// of the former form `$CRMRegarding:<set>:<uuid>`. Read: the marked
/// message is tracked with that regarding, and a former keyword another
/// client puts on a tracked message changes its regarding (R-E5); each time
/// the keyword is replaced by the current form.
async fn r_m7_former_regarding_keyword_is_read_and_replaced(flavor: Flavor) {
    let w = world().await;
    // Cyrus has no short keyword limit to raise.
    let server = match flavor {
        Flavor::Cyrus => ImapServer::start(flavor).await,
        _ => ImapServer::Dovecot(
            Dovecot::start_with_settings(flavor, "mail_max_keyword_length = 200").await,
        ),
    };
    let mut m = mailbox_on(&w, server, "ann@example.com", &[], |_| {}).await;
    let acme = w.account(&m.token, "Acme").await;
    let globex = w.account(&m.token, "Globex").await;
    let former = former_regarding_kw("accounts", &acme);
    let uid = m
        .append(
            "INBOX",
            &lee("m7-former@example.org", "Quote"),
            &format!("{TRACKED} {former}"),
        )
        .await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("m7-former@example.org").await[0]["regarding"],
        json!({"set": "accounts", "id": acme})
    );
    assert!(m.has("INBOX", uid, &regarding_kw(&acme)).await);
    assert!(
        !m.has("INBOX", uid, &former).await,
        "{}",
        m.flags("INBOX", uid).await
    );

    // Another client (an older agent, say) swaps in a former keyword.
    let former = former_regarding_kw("accounts", &globex);
    m.store("INBOX", uid, "-FLAGS", &regarding_kw(&acme)).await;
    m.store("INBOX", uid, "+FLAGS", &former).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("set_regarding"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("m7-former@example.org").await[0]["regarding"],
        json!({"set": "accounts", "id": globex})
    );
    assert!(m.has("INBOX", uid, &regarding_kw(&globex)).await);
    assert!(
        !m.has("INBOX", uid, &former).await,
        "{}",
        m.flags("INBOX", uid).await
    );
    assert!(sync(&m.agent).await.pushed.is_empty());
}

async fn r_m7_regarding_change_in_crm_reaches_message_as_keyword(flavor: Flavor) {
    let w = world().await;
    let mut ann = mailbox_of(&w, flavor, "ann@example.com", &[], |_| {}).await;
    let mut bob = mailbox_of(&w, flavor, "bob@example.com", &[], |_| {}).await;
    let raw = rfc5322(
        Some("shared@example.com"),
        "ann@example.com",
        &["bob@example.com", "lee@example.org"],
        "Shared",
        "",
    );
    let flags = format!("\\Seen {TRACKED}");
    let a = ann.append("Sent", &raw, &flags).await;
    let b = bob.append("INBOX", &raw, TRACKED).await;
    sync(&ann.agent).await;
    sync(&bob.agent).await;
    let emails = w.email_by_mid("shared@example.com").await;
    assert_eq!(emails.len(), 1, "R-E9 off: one shared activity");
    let email_id = emails[0]["id"].as_str().unwrap().to_string();
    // Ann sets the regarding by command.
    let acme = w.account(&ann.token, "Acme").await;
    cmd::set_regarding(
        &ann.agent,
        &["mid:shared@example.com".to_string()],
        &format!("accounts/{acme}"),
    )
    .await
    .unwrap();
    assert_eq!(
        w.email_by_mid("shared@example.com").await[0]["regarding"]["id"],
        acme.as_str()
    );
    assert!(ann.has("Sent", a, &regarding_kw(&acme)).await);
    // It reaches Bob's mailbox as a keyword (email tagging).
    let r = sync(&bob.agent).await;
    assert_eq!(r.written_to_mailbox, 1, "{r:?}");
    assert!(r.pushed.is_empty(), "no echo: {r:?}");
    assert!(bob.has("INBOX", b, &regarding_kw(&acme)).await);
    // Changed in the CRM: the old keyword is replaced.
    let globex = w.account(&ann.token, "Globex").await;
    let (status, body) = w
        .call(
            &ann.token,
            Method::PATCH,
            &format!("/api/v1/emails/{email_id}"),
            Some(json!({"regarding": {"set": "accounts", "id": globex}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync(&bob.agent).await;
    assert!(bob.has("INBOX", b, &regarding_kw(&globex)).await);
    assert!(!bob.has("INBOX", b, &regarding_kw(&acme)).await);
    assert!(bob.has("INBOX", b, TRACKED).await);
    assert!(sync(&bob.agent).await.pushed.is_empty());
    let r = sync(&ann.agent).await;
    assert!(r.pushed.is_empty(), "{r:?}");
    assert!(ann.has("Sent", a, &regarding_kw(&globex)).await);
}

async fn r_m8_marked_message_moved_to_unsynchronized_folder_is_reported(flavor: Flavor) {
    let w = world().await;
    let mut m = mailbox_of(&w, flavor, "ann@example.com", &["Archive"], |_| {}).await;
    let kept = m
        .append("INBOX", &lee("kept@example.org", "Kept"), TRACKED)
        .await;
    sync(&m.agent).await;
    // Tracking of the next one is refused (R-E10): it stays "to be tracked".
    w.org_settings(json!({"approved_only": true})).await;
    let moved = m
        .append("INBOX", &lee("moved@example.org", "Moved"), TRACKED)
        .await;
    let r = m.agent.sync_once(SyncOptions::default()).await.unwrap();
    assert_eq!(r.refused.len(), 1, "{r:?}");
    // Another client moves both to a folder that is not synchronized.
    m.move_to("INBOX", "Archive", moved).await;
    m.move_to("INBOX", "Archive", kept).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("delete"), Some(&1), "{r:?}");
    assert!(
        r.reported
            .iter()
            .any(|x| x.contains("moved@example.org") && x.contains("moved out of the synchronized")),
        "{r:?}"
    );
    let s = m.agent.status().await.unwrap();
    assert!(
        s.reported
            .iter()
            .any(|x| x.contains("moved@example.org") && x.contains("moved out of the synchronized")),
        "{s:?}"
    );
    assert_eq!(s.tracked, 0);
    // The tracked one stays in the CRM.
    assert_eq!(w.email_by_mid("kept@example.org").await.len(), 1);
}

async fn r_e7_bulk_tracking_of_many_messages(flavor: Flavor) {
    const N: usize = 150;
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    for i in 0..N {
        m.append(
            "INBOX",
            &lee(&format!("bulk{i}@example.org"), &format!("Bulk {i}")),
            "\\Seen",
        )
        .await;
    }
    sync(&m.agent).await;
    // Another client marks them all at once; one sync tracks them.
    m.other.select("INBOX").await;
    m.other
        .cmd(&format!("UID STORE 1:* +FLAGS ({TRACKED})"))
        .await;
    let started = std::time::Instant::now();
    let r = sync(&m.agent).await;
    eprintln!("bulk tracking of {N} messages: {:?}", started.elapsed());
    assert_eq!(r.pushed.get("track"), Some(&N), "{r:?}");
    assert_eq!(w.emails().await.len(), N);
    assert_eq!(m.agent.status().await.unwrap().tracked, N as i64);
    assert!(sync(&m.agent).await.pushed.is_empty());
    // And by command: a second batch marked by `crmsync track`.
    let mut mids = Vec::new();
    for i in 0..20 {
        let mid = format!("cmd{i}@example.org");
        m.append("INBOX", &lee(&mid, "Cmd"), "\\Seen").await;
        mids.push(format!("mid:{mid}"));
    }
    sync(&m.agent).await;
    let r = cmd::track(&m.agent, &mids, None).await.unwrap();
    assert_eq!(r.items.len(), 20, "{r:?}");
    assert!(r.items.iter().all(|(_, id)| id.is_some()), "{r:?}");
    assert_eq!(w.emails().await.len(), N + 20);
}

async fn r_e9_two_activities(flavor: Flavor) {
    let w = world().await;
    let mut ann = mailbox_of(&w, flavor, "ann@example.com", &[], |_| {}).await;
    let mut bob = mailbox_of(&w, flavor, "bob@example.com", &[], |_| {}).await;
    w.org_settings(json!({"two_activities": true})).await;
    let raw = rfc5322(
        Some("two@example.com"),
        "ann@example.com",
        &["bob@example.com"],
        "Two",
        "",
    );
    ann.append("Sent", &raw, &format!("\\Seen {TRACKED}")).await;
    bob.append("INBOX", &raw, TRACKED).await;
    sync(&ann.agent).await;
    sync(&bob.agent).await;
    let mut owners: Vec<String> = w
        .email_by_mid("two@example.com")
        .await
        .iter()
        .map(|e| e["owner_id"].as_str().unwrap().to_string())
        .collect();
    owners.sort();
    let mut expected = vec![ann.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(owners, expected, "one activity per CRM user party");
    let bobs = cmd::item_status(&bob.agent, "mid:two@example.com")
        .await
        .unwrap();
    let (_, mine) = w
        .get(
            &bob.token,
            &format!("/api/v1/emails/{}", bobs.crm_id.unwrap()),
        )
        .await;
    assert_eq!(mine["owner_id"], bob.user_id.as_str());
}

async fn r_e10_unapproved_user_refused_and_reported(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    w.org_settings(json!({"approved_only": true})).await;
    m.append("INBOX", &lee("e10@example.org", "Hi"), TRACKED)
        .await;
    let r = m.agent.sync_once(SyncOptions::default()).await.unwrap();
    assert!(
        r.refused.iter().any(|x| x.contains("not_approved")),
        "{r:?}"
    );
    assert!(w.emails().await.is_empty());
    let s = m.agent.status().await.unwrap();
    assert_eq!(s.to_be_tracked, 1);
    assert!(
        s.reported.iter().any(|x| x.contains("not_approved")),
        "{s:?}"
    );
    // Not retried at every sync while nothing changes.
    assert!(sync(&m.agent).await.refused.is_empty());
    let (status, body) = w
        .call(
            &w.admin,
            Method::PATCH,
            &format!("/api/v1/users/{}", m.user_id),
            Some(json!({"approved_email": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = cmd::track(&m.agent, &["mid:e10@example.org".to_string()], None)
        .await
        .unwrap();
    assert!(r.items[0].1.is_some(), "{r:?}");
    assert_eq!(w.email_by_mid("e10@example.org").await.len(), 1);
    assert!(m.agent.status().await.unwrap().reported.is_empty());
}

async fn section_9_crm_deletes_tracked_email_message_kept_keyword_removed(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let uid = m
        .append(
            "INBOX",
            &lee("gone@example.org", "Gone"),
            &format!("\\Seen {TRACKED}"),
        )
        .await;
    sync(&m.agent).await;
    let id = w.email_by_mid("gone@example.org").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = w
        .call(
            &m.token,
            Method::DELETE,
            &format!("/api/v1/emails/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let r = sync(&m.agent).await;
    assert_eq!(r.unlinked_in_mailbox, 1, "{r:?}");
    assert!(!m.has("INBOX", uid, TRACKED).await, "keyword removed");
    assert!(m.has("INBOX", uid, "\\Seen").await, "message kept");
    let s = m.agent.status().await.unwrap();
    assert_eq!((s.not_tracked, s.tracked), (1, 0));
    assert!(sync(&m.agent).await.pushed.is_empty(), "no untrack echo");
}

async fn section_9_user_deletes_message_crm_activity_kept(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let uid = m
        .append(
            "INBOX",
            &lee("del@example.org", "Delete me"),
            &format!("\\Seen {TRACKED}"),
        )
        .await;
    sync(&m.agent).await;
    m.expunge("INBOX", uid).await;
    // R-T2: a notification-triggered sync leaves the deletion for later.
    let r = m
        .agent
        .sync_once(SyncOptions {
            defer_deletions: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.deferred_deletions, 1, "{r:?}");
    assert!(r.pushed.is_empty());
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("delete"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("del@example.org").await.len(),
        1,
        "the CRM activity is kept"
    );
    assert_eq!(m.agent.status().await.unwrap().tracked, 0);
    assert!(sync(&m.agent).await.pushed.is_empty());
}

/// R-T2's email columns on a running agent: a message marked by another
/// client is tracked at once (IDLE on the inbox wakes the agent; the
/// schedule is 15 minutes), its deletion waits for the next scheduled or
/// manual sync.
async fn r_t2_running_agent_tracks_at_once_and_defers_deletions(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    // The agent runs while another client works: disjoint borrows.
    let (agent, other) = (&m.agent, &mut m.other);
    assert_eq!(agent.config().interval, Duration::from_secs(900));
    let (running, mut reports, stop_tx) = running(agent);
    let test = async {
        reports.recv().await.unwrap().unwrap();
        let uid = other
            .append_flags("INBOX", "\\Seen", &lee("t2@example.org", "Now"))
            .await;
        other.select("INBOX").await;
        other
            .cmd(&format!("UID STORE {uid} +FLAGS ({TRACKED})"))
            .await;
        until(&mut reports, "the track pushed", |r| {
            r.pushed.get("track") == Some(&1)
        })
        .await;
        assert_eq!(w.email_by_mid("t2@example.org").await.len(), 1);
        other
            .cmd(&format!("UID STORE {uid} +FLAGS (\\Deleted)"))
            .await;
        other.cmd(&format!("UID EXPUNGE {uid}")).await;
        let r = until(&mut reports, "the deletion deferred", |r| {
            r.deferred_deletions == 1
        })
        .await;
        assert!(r.pushed.is_empty(), "{r:?}");
        let _ = stop_tx.send(());
    };
    let (ran, ()) = tokio::join!(running, test);
    ran.unwrap();
    // The manual sync applies it (§9: the CRM activity itself is kept).
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("delete"), Some(&1), "{r:?}");
    assert_eq!(m.agent.status().await.unwrap().tracked, 0);
}

/// R-T2 (issue 12): another client APPENDs a message, the running agent
/// sees it (a sync of the new, unmarked message), then the client marks it
/// `$CRMTracked`: tracked within 5 s, whatever the server's capabilities.
async fn r_t2_running_agent_tracks_a_message_marked_after_its_append(flavor: Flavor) {
    let w = world().await;
    let m = ann(&w, flavor).await;
    marked_after_its_append(&w, m, &format!("{flavor:?}")).await;
}

async fn marked_after_its_append(w: &World, mut m: Mail, flavor: &str) {
    let (agent, other) = (&m.agent, &mut m.other);
    let (running, mut reports, stop_tx) = running(agent);
    let test = async {
        reports.recv().await.unwrap().unwrap();
        let uid = other
            .append_flags("INBOX", "\\Seen", &lee("t2-late@example.org", "Later"))
            .await;
        // The agent syncs on the append and finds nothing to track.
        until(&mut reports, "the append seen", |r| r.pushed.is_empty()).await;
        other.select("INBOX").await;
        let marked = std::time::Instant::now();
        other
            .cmd(&format!("UID STORE {uid} +FLAGS ({TRACKED})"))
            .await;
        in_crm_within_5s(
            w,
            "t2-late@example.org",
            marked,
            &format!("{flavor}: marked after its append"),
        )
        .await;
        let _ = stop_tx.send(());
    };
    let (ran, ()) = tokio::join!(running, test);
    ran.unwrap();
}

/// R-T2: waits until the message `mid` is a CRM email, failing 5 s after
/// `since`; prints how long it took.
async fn in_crm_within_5s(w: &World, mid: &str, since: std::time::Instant, what: &str) {
    let deadline = since + Duration::from_secs(5);
    while w.email_by_mid(mid).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not in the CRM 5 s later"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{what}: in the CRM after {:?}", since.elapsed());
}

/// R-T2 (issue 12): another client APPENDs a message and marks it
/// `$CRMTracked` moments later, while the running agent may be in the middle
/// of the sync the append started. Each delay puts the mark at another point
/// of that sync; every message is tracked within 5 s.
async fn r_t2_running_agent_tracks_a_message_marked_right_after_its_append(flavor: Flavor) {
    let w = world().await;
    let m = ann(&w, flavor).await;
    marked_right_after_its_append(&w, m, &format!("{flavor:?}")).await;
}

async fn marked_right_after_its_append(w: &World, mut m: Mail, flavor: &str) {
    let (agent, other) = (&m.agent, &mut m.other);
    let (running, mut reports, stop_tx) = running(agent);
    let test = async {
        reports.recv().await.unwrap().unwrap();
        for (i, delay_ms) in [0u64, 20, 60, 120, 250, 500].into_iter().enumerate() {
            let mid = format!("t2-quick-{i}@example.org");
            let uid = other
                .append_flags("INBOX", "\\Seen", &lee(&mid, "Quick"))
                .await;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            other.select("INBOX").await;
            let marked = std::time::Instant::now();
            other
                .cmd(&format!("UID STORE {uid} +FLAGS ({TRACKED})"))
                .await;
            let what = format!("{flavor}: marked {delay_ms} ms after its append");
            in_crm_within_5s(w, &mid, marked, &what).await;
            while reports.try_recv().is_ok() {}
        }
        let _ = stop_tx.send(());
    };
    let (ran, ()) = tokio::join!(running, test);
    ran.unwrap();
}

/// R-T2 with R-M4: another client puts a message in a tracked folder (not
/// the idled INBOX) while the agent runs: tracked within 5 s.
async fn r_t2_running_agent_tracks_a_message_put_in_a_tracked_folder_within_5s(flavor: Flavor) {
    let w = world().await;
    let m = ann(&w, flavor).await;
    put_in_a_tracked_folder(&w, m, &format!("{flavor:?}")).await;
}

async fn put_in_a_tracked_folder(w: &World, mut m: Mail, flavor: &str) {
    let (agent, other) = (&m.agent, &mut m.other);
    let (running, mut reports, stop_tx) = running(agent);
    let test = async {
        reports.recv().await.unwrap().unwrap();
        let put = std::time::Instant::now();
        other
            .append_flags("CRM", "\\Seen", &lee("t2-folder@example.org", "Filed"))
            .await;
        let what = format!("{flavor}: put in the tracked folder");
        in_crm_within_5s(w, "t2-folder@example.org", put, &what).await;
        let _ = stop_tx.send(());
    };
    let (ran, ()) = tokio::join!(running, test);
    ran.unwrap();
}

/// Debian's default `cyrus.conf` starts no `idled`: `imapd` then announces
/// nothing while in IDLE, and the watch's regular look at every folder
/// (NOOP on the idled INBOX) is what keeps R-T2's seconds.
mod cyrus_without_idled {
    use super::*;

    async fn ann(w: &World) -> Mail {
        let server = ImapServer::start_cyrus_without_idled().await;
        mailbox_on(w, server, "ann@example.com", &[], |_| {}).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r_t2_running_agent_tracks_a_message_marked_after_its_append() {
        let w = world().await;
        let m = ann(&w).await;
        marked_after_its_append(&w, m, "Cyrus without idled").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r_t2_running_agent_tracks_a_message_marked_right_after_its_append() {
        let w = world().await;
        let m = ann(&w).await;
        marked_right_after_its_append(&w, m, "Cyrus without idled").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r_t2_running_agent_tracks_a_message_put_in_a_tracked_folder_within_5s() {
        let w = world().await;
        let m = ann(&w).await;
        put_in_a_tracked_folder(&w, m, "Cyrus without idled").await;
    }
}

async fn uidvalidity_change_relinks_by_message_id_without_duplicate(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let raw = lee("uv@example.org", "Kept across UIDVALIDITY");
    let flags = format!("\\Seen {TRACKED}");
    m.append("CRM", &lee("uv-other@example.org", "Other"), "\\Seen")
        .await;
    m.append("CRM", &raw, &flags).await;
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&2), "{r:?}");
    // Another client deletes and recreates the folder: new UIDVALIDITY, the
    // same message comes back (under the same UID numbers).
    m.other.cmd("DELETE \"CRM\"").await;
    m.other.cmd("CREATE \"CRM\"").await;
    let uid = m.append("CRM", &raw, &flags).await;
    let r = sync(&m.agent).await;
    assert!(r.pushed.get("track").is_none_or(|n| *n <= 1), "{r:?}");
    let emails = w.email_by_mid("uv@example.org").await;
    assert_eq!(emails.len(), 1, "no duplicate CRM email");
    assert_eq!(w.emails().await.len(), 2, "{:?}", w.emails().await);
    let s = cmd::item_status(&m.agent, "mid:uv@example.org")
        .await
        .unwrap();
    assert_eq!(s.link, 2, "{s:?}");
    assert_eq!(s.crm_id.as_deref(), emails[0]["id"].as_str(), "re-linked");
    assert!(m.has("CRM", uid, TRACKED).await);
    assert!(sync(&m.agent).await.pushed.is_empty());
}

/// Ann's agent on a fresh IMAP server reached through a `Proxy` (which can cut
/// the connection), after one sync of the empty mailbox.
async fn behind_proxy(
    w: &World,
    flavor: Flavor,
    edit: impl FnOnce(&mut Config),
) -> (ImapServer, Raw, Proxy, Agent) {
    let (_, token) = w.user("ann@example.com").await;
    let server = ImapServer::start(flavor).await;
    let mut other = server.client().await;
    for f in ["Sent", "Drafts", "CRM"] {
        other.cmd(&format!("CREATE \"{f}\"")).await;
    }
    let proxy = Proxy::start(server.port()).await;
    let agent = w
        .imap_agent(
            &token,
            "ann",
            "ann-cache",
            proxy.port,
            imap_servers::USER,
            imap_servers::PASSWORD,
            edit,
        )
        .await;
    sync(&agent).await;
    (server, other, proxy, agent)
}

async fn connection_dropped_mid_sync_is_an_error_then_next_sync_completes(flavor: Flavor) {
    const N: usize = 30;
    let w = world().await;
    let (_server, mut other, proxy, agent) = behind_proxy(&w, flavor, |_| {}).await;
    let body = "x".repeat(4000);
    for i in 0..N {
        let raw = rfc5322(
            Some(&format!("drop{i}@example.org")),
            "lee@example.org",
            &["ann@example.com"],
            "Drop",
            &format!("X-Padding: {body}\r\n"),
        );
        other
            .append_flags("INBOX", &format!("\\Seen {TRACKED}"), &raw)
            .await;
    }
    // The connection is cut once 60 KB of answers passed: in the middle of
    // the FETCH of the bodies.
    proxy.cut_after(60_000);
    let failed = agent.sync_once(SyncOptions::default()).await;
    match &failed {
        Ok(r) => assert!(!r.errors.is_empty(), "the cut is reported: {r:?}"),
        Err(e) => eprintln!("sync failed as expected: {e:#}"),
    }
    let before = w.emails().await.len();
    assert!(before < N, "the cut stopped the sync part way ({before})");
    // The next sync completes; nothing lost, nothing duplicated.
    let r = sync(&agent).await;
    assert_eq!(
        r.pushed.get("track").copied().unwrap_or(0) + before,
        N,
        "{r:?}"
    );
    let emails = w.emails().await;
    assert_eq!(emails.len(), N);
    let mut mids: Vec<&str> = emails
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    mids.sort();
    mids.dedup();
    assert_eq!(mids.len(), N, "no duplicates");
    assert_eq!(agent.status().await.unwrap().tracked, N as i64);
    assert!(sync(&agent).await.pushed.is_empty());
}

/// R-T4 for a large message (read a part at a time into a spool file):
/// the push is cut off (the CRM becomes unreachable while it is sent); the
/// journal keeps the operation and the file, the next sync sends it from
/// the file with the bytes unchanged, and the file goes.
async fn r_t4_spooled_message_journaled_and_sent_after_a_failed_push(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let crm_port: u16 = w.base.rsplit(':').next().unwrap().parse().unwrap();
    let crm = Proxy::start(crm_port).await;
    let through_proxy = w
        .imap_agent(
            &m.token,
            "ann",
            "ann-cache",
            m.server.port(),
            imap_servers::USER,
            imap_servers::PASSWORD,
            |c| c.crm_url = format!("http://127.0.0.1:{}", crm.port),
        )
        .await;
    let raw = padded("spooled@example.org", 2_500_000);
    m.append("INBOX", &raw, TRACKED).await;
    let (held, release) = crm.hold_next("POST /api/v1/sync/push");
    let cut = async {
        held.await.unwrap();
        crm.refuse(true);
        crm.cut_all();
        drop(release);
    };
    let (failed, ()) = tokio::join!(through_proxy.sync_once(SyncOptions::default()), cut);
    assert!(
        failed.as_ref().map_or(true, |r| !r.errors.is_empty()),
        "{failed:?}"
    );
    assert!(w.emails().await.is_empty());
    assert_eq!(through_proxy.status().await.unwrap().pending_operations, 1);
    let spool = through_proxy.config().cache.with_extension("spool");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 1);
    drop(through_proxy);
    let r = sync(&m.agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = &w.email_by_mid("spooled@example.org").await[0];
    assert!(
        raw_in_crm(&w, email).await == raw,
        "the raw message changed"
    );
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    assert!(sync(&m.agent).await.pushed.is_empty());
}

/// The raw message the CRM stored for `email` (`GET /emails/{id}/raw`).
async fn raw_in_crm(w: &World, email: &Value) -> Vec<u8> {
    let id = email["id"].as_str().unwrap();
    w.http
        .get(format!("{}/api/v1/emails/{id}/raw", w.base))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// A message of `size` bytes or a little more.
fn padded(id: &str, size: usize) -> Vec<u8> {
    let mut raw = lee(id, "Padded");
    let line = [b'A'; 76];
    while raw.len() < size {
        raw.extend_from_slice(&line);
        raw.extend_from_slice(b"\r\n");
    }
    raw
}

/// `[sync] max_message_size`: a message above it is never read (the
/// connection would be cut if it were), a marked one is refused and
/// reported once, an unmarked one is only noted; the others are tracked.
async fn max_message_size_refuses_larger_messages_unread(flavor: Flavor) {
    let w = world().await;
    let (_server, mut other, proxy, agent) =
        behind_proxy(&w, flavor, |c| c.max_message_size = 1024 * 1024).await;
    let marked = format!("\\Seen {TRACKED}");
    let big_marked = other
        .append_flags(
            "INBOX",
            &marked,
            &padded("big-marked@example.org", 3_000_000),
        )
        .await;
    other
        .append_flags("INBOX", "", &padded("big-received@example.org", 3_000_000))
        .await;
    other
        .append_flags("INBOX", &marked, &padded("fits@example.org", 900_000))
        .await;
    // Reading either big message would pass more than this.
    proxy.cut_after(2_500_000);
    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert!(
        r.errors.is_empty(),
        "nothing was read past the limit: {r:?}"
    );
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(r.refused.len(), 1, "{r:?}");
    let refusal = &r.refused[0];
    assert!(
        refusal.contains(&format!("INBOX/{big_marked}"))
            && refusal.contains("max_message_size is 1048576"),
        "{refusal}"
    );
    assert_eq!(w.email_by_mid("fits@example.org").await.len(), 1);
    assert_eq!(w.emails().await.len(), 1);
    // Not looked at again while they do not change.
    let r = sync(&agent).await;
    assert!(r.pushed.is_empty() && r.refused.is_empty(), "{r:?}");
}

async fn malformed_no_message_id_8bit_and_huge_messages_reported_others_go_on(flavor: Flavor) {
    let w = world().await;
    let mut m = ann(&w, flavor).await;
    let no_id = rfc5322(None, "lee@example.org", &["ann@example.com"], "No id", "");
    let mut eight_bit = b"Message-ID: <latin1@example.org>\r\nFrom: <lee@example.org>\r\nTo: ann@example.com\r\nSubject: Gr\xfc\xdfe\r\n\r\nHallo\r\n".to_vec();
    eight_bit.extend_from_slice(b"\xe9t\xe9\r\n");
    let broken = b"Message-ID: <broken@example.org>\r\nFrom: lee@example.org\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\nno boundary here\r\n".to_vec();
    // Over the server's 25 MB limit for a raw message.
    let mut huge = lee("huge@example.org", "Huge");
    huge.truncate(huge.len() - 2);
    let line = [b'A'; 76];
    while huge.len() < 26 * 1024 * 1024 {
        huge.extend_from_slice(&line);
        huge.extend_from_slice(b"\r\n");
    }
    // Under that limit, and over the server's general request body limit
    // (10 MiB) once base64-encoded: the push route takes it (a tracked
    // email may be up to 25 MB).
    let mut large = lee("large@example.org", "Large");
    large.truncate(large.len() - 2);
    while large.len() < 9 * 1024 * 1024 {
        large.extend_from_slice(&line);
        large.extend_from_slice(b"\r\n");
    }
    let to: Vec<String> = (0..3000).map(|i| format!("r{i}@example.net")).collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let crowd = rfc5322(Some("crowd@example.org"), "lee@example.org", &to, "All", "");
    // A spool file no journaled operation names (a kill between a copy and
    // its journal entry): removed by the next sync.
    let spool = m.agent.config().cache.with_extension("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("stray.eml"), b"left over").unwrap();
    let flags = format!("\\Seen {TRACKED}");
    let mut uids = Vec::new();
    for raw in [&no_id, &eight_bit, &broken, &huge, &crowd, &large] {
        uids.push(m.append("INBOX", raw, &flags).await);
    }
    let r = m.agent.sync_once(SyncOptions::default()).await.unwrap();
    assert_eq!(r.pushed.get("track"), Some(&5), "{r:?}");
    let huge_href = uids[3].to_string();
    let problems: Vec<&String> = r.errors.iter().chain(&r.refused).collect();
    assert!(
        problems
            .iter()
            .any(|x| x.contains(&huge_href) && x.contains("too large")),
        "the huge one is refused clearly: {r:?}"
    );
    let emails = w.emails().await;
    assert_eq!(emails.len(), 5);
    assert!(emails.iter().any(|e| e["message_id"]
        .as_str()
        .unwrap()
        .ends_with("@synthetic.invalid")));
    let latin = &w.email_by_mid("latin1@example.org").await[0];
    // Cyrus stores 8-bit header bytes as `X` (its `munge8bit`, on by
    // default): the CRM gets what the server holds.
    let subject = if flavor == Flavor::Cyrus {
        "GrXXe"
    } else {
        "Grüße"
    };
    assert_eq!(latin["subject"], subject);
    assert_eq!(w.email_by_mid("broken@example.org").await.len(), 1);
    assert!(w.email_by_mid("huge@example.org").await.is_empty());
    let large_email = &w.email_by_mid("large@example.org").await[0];
    assert_eq!(large_email["raw_size"], large.len(), "kept whole");
    // Read a part at a time into a spool file and streamed from it into the
    // push: the CRM has the very same bytes, and the spool file is gone.
    assert!(
        raw_in_crm(&w, large_email).await == large,
        "the raw message changed"
    );
    let left = std::fs::read_dir(&spool).map_or(0, |d| d.count());
    assert_eq!(left, 0, "spool files left in {}", spool.display());
    let crowd_email = &w.email_by_mid("crowd@example.org").await[0];
    assert_eq!(crowd_email["parties"].as_array().unwrap().len(), 3001);
    let s = m.agent.status().await.unwrap();
    assert_eq!(s.tracked, 5);
    assert!(s.reported.iter().any(|x| x.contains("too large")), "{s:?}");
    for uid in [uids[0], uids[1], uids[2], uids[4], uids[5]] {
        assert!(m.has("INBOX", uid, TRACKED).await);
    }
    // The synthetic Message-ID is stable and the huge one is not sent again
    // while it does not change: the next sync changes nothing.
    let r = m.agent.sync_once(SyncOptions::default()).await.unwrap();
    assert!(r.pushed.is_empty(), "{r:?}");
    assert!(r.refused.is_empty() && r.errors.is_empty(), "{r:?}");
}
