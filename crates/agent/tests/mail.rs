//! Email in the agent end to end (SPEC §7 R-E5..R-E10, §8 R-M1, R-M3..R-M8,
//! §9 email rows): a real CRM server (in-process, SQLite in a temp folder)
//! and a real local Maildir++ changed as a mail client would. Each test is
//! named after the rule it checks.

// The shared harness has helpers other test files use.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crmsync_agent::commands as cmd;
use crmsync_agent::{Agent, Config, SyncOptions};
use crmsync_core::mapping::{parse_item, render_item, RenderOptions};

include!("common/harness.rs");

const TRACKED: &str = "$CRMTracked";

/// Ann with an agent that has scanned her (empty) mailbox once, so that
/// what arrives next is received mail (R-M5).
async fn ann(w: &World) -> (String, String, Agent) {
    let (id, token) = w.user("ann@example.com").await;
    let agent = w.agent(&token, "ann", "cache").await;
    for f in ["Sent", "Drafts", "CRM"] {
        w.mail_dir("ann", f);
    }
    sync(&agent).await;
    (id, token, agent)
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

#[tokio::test]
async fn r_m1_keyword_tracks_message_and_removing_it_untracks() {
    let w = world().await;
    let (_, _, agent) = ann(&w).await;
    let href = w.deliver("ann", "INBOX", &lee("m1@example.org", "Offer"), "S");
    let r = sync(&agent).await;
    assert!(r.pushed.is_empty(), "not marked, no correlation: {r:?}");
    assert!(w.emails().await.is_empty());
    assert_eq!(agent.status().await.unwrap().not_tracked, 1);

    w.keywords("ann", "INBOX", &href, &[TRACKED], &[]).await;
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = w.email_by_mid("m1@example.org").await;
    assert_eq!(email.len(), 1);
    assert_eq!(email[0]["subject"], "Offer");
    assert_eq!(email[0]["direction"], "incoming");
    let s = agent.status().await.unwrap();
    assert_eq!((s.not_tracked, s.to_be_tracked, s.tracked), (0, 0, 1));
    assert!(sync(&agent).await.pushed.is_empty(), "nothing changed");

    // Removing the keyword untracks; the CRM email stays (R-M1, §9).
    w.keywords("ann", "INBOX", &href, &[], &[TRACKED]).await;
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("untrack"), Some(&1), "{r:?}");
    let id = email[0]["id"].as_str().unwrap();
    assert_eq!(
        w.get(&w.admin, &format!("/api/v1/emails/{id}")).await.0,
        200
    );
    assert!(w.keywords_of("ann", "INBOX", &href).await.is_empty());
    assert_eq!(agent.status().await.unwrap().tracked, 0);
    assert!(sync(&agent).await.pushed.is_empty());
}

#[tokio::test]
async fn r_m4_folder_tracking_with_fixed_regarding() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let acme = w.account(&ann, "Acme").await;
    let acme_id = uuid::Uuid::parse_str(&acme).unwrap();
    let agent = w
        .agent_with(&ann, "ann", "cache", |c| {
            c.mail.tracked_folders = vec![crmsync_agent::config::TrackedFolder {
                name: "Acme".into(),
                regarding: Some(("accounts".into(), acme_id)),
            }];
        })
        .await;
    w.mail_dir("ann", "Acme");
    w.mail_dir("ann", "CRM");
    sync(&agent).await;
    let href = w.deliver("ann", "Acme", &lee("deal@example.org", "Deal"), "S");
    // CRM is not a tracked folder of this configuration (R-M8).
    w.deliver("ann", "CRM", &lee("other@example.org", "Other"), "S");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = &w.email_by_mid("deal@example.org").await[0];
    assert_eq!(email["regarding"], json!({"set": "accounts", "id": acme}));
    let kws = w.keywords_of("ann", "Acme", &href).await;
    assert!(kws.contains(&TRACKED.to_string()), "{kws:?}");
    assert!(kws.contains(&regarding_kw(&acme)), "{kws:?}");
    assert!(w.email_by_mid("other@example.org").await.is_empty());
    // The user removes the marker in the folder: untracked, and it stays so.
    w.keywords("ann", "Acme", &href, &[], &[TRACKED]).await;
    assert_eq!(sync(&agent).await.pushed.get("untrack"), Some(&1));
    assert!(sync(&agent).await.pushed.is_empty());
}

#[tokio::test]
async fn r_e6_draft_not_tracked_until_sent() {
    let w = world().await;
    let (_, _, agent) = ann(&w).await;
    let raw = rfc5322(
        Some("draft@example.com"),
        "ann@example.com",
        &["lee@example.org"],
        "Proposal",
        "",
    );
    let draft = w.deliver("ann", "Drafts", &raw, "D");
    w.keywords("ann", "Drafts", &draft, &[TRACKED], &[]).await;
    let r = sync(&agent).await;
    assert!(r.pushed.is_empty(), "a draft is never tracked: {r:?}");
    assert!(w.emails().await.is_empty());
    assert_eq!(agent.status().await.unwrap().to_be_tracked, 1);
    let e = cmd::explain(&agent, Some("mid:draft@example.com"), None)
        .await
        .unwrap();
    assert!(e.reasons[0].contains("draft"), "{e:?}");
    // Sent: the client removes the draft and stores the sent copy (without
    // the keyword) in Sent.
    w.delete_message("ann", "Drafts", &draft);
    let sent = w.deliver("ann", "Sent", &raw, "S");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = &w.email_by_mid("draft@example.com").await[0];
    assert_eq!(email["direction"], "outgoing");
    assert!(w
        .keywords_of("ann", "Sent", &sent)
        .await
        .contains(&TRACKED.to_string()));
    let s = agent.status().await.unwrap();
    assert_eq!((s.to_be_tracked, s.tracked), (0, 1));
    assert!(s.reported.is_empty(), "{s:?}");
}

/// Ann's sent email `orig@example.com`, tracked regarding Acme; returns
/// (Acme's id, the email).
async fn tracked_sent(w: &World, token: &str, agent: &Agent) -> (String, Value) {
    let acme = w.account(token, "Acme").await;
    let raw = rfc5322(
        Some("orig@example.com"),
        "ann@example.com",
        &["lee@example.org", "kim@example.org"],
        "Quote 42",
        "",
    );
    let href = w.deliver("ann", "Sent", &raw, "S");
    w.keywords("ann", "Sent", &href, &[TRACKED, &regarding_kw(&acme)], &[])
        .await;
    let r = sync(agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = w.email_by_mid("orig@example.com").await.remove(0);
    assert_eq!(email["regarding"]["id"], acme.as_str());
    (acme, email)
}

#[tokio::test]
async fn r_m5_reply_to_tracked_email_is_tracked_with_its_regarding() {
    let w = world().await;
    let (_, token, agent) = ann(&w).await;
    let (acme, _) = tracked_sent(&w, &token, &agent).await;
    let reply = rfc5322(
        Some("reply@example.org"),
        "lee@example.org",
        &["ann@example.com"],
        "Re: Quote 42",
        "In-Reply-To: <orig@example.com>\r\nReferences: <orig@example.com>\r\n",
    );
    let href = w.deliver("ann", "INBOX", &reply, "");
    let unrelated = w.deliver("ann", "INBOX", &lee("news@example.org", "News"), "");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = &w.email_by_mid("reply@example.org").await[0];
    assert_eq!(email["regarding"]["id"], acme.as_str());
    let kws = w.keywords_of("ann", "INBOX", &href).await;
    assert!(kws.contains(&TRACKED.to_string()), "{kws:?}");
    assert!(kws.contains(&regarding_kw(&acme)), "{kws:?}");
    assert!(w.keywords_of("ann", "INBOX", &unrelated).await.is_empty());
    assert!(w.email_by_mid("news@example.org").await.is_empty());
    let e = cmd::explain(&agent, Some("mid:reply@example.org"), None)
        .await
        .unwrap();
    assert!(
        e.reasons[0].contains("belongs to a tracked email") && e.reasons[0].contains("message_id"),
        "{e:?}"
    );
}

#[tokio::test]
async fn r_m5_tracking_token_in_subject() {
    let w = world().await;
    let (_, token, agent) = ann(&w).await;
    let (acme, orig) = tracked_sent(&w, &token, &agent).await;
    let tok = orig["tracking_token"].as_str().unwrap();
    // No In-Reply-To: only the token in the subject ties it to the thread.
    let href = w.deliver(
        "ann",
        "INBOX",
        &lee("token@example.org", &format!("About the quote [{tok}]")),
        "",
    );
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("token@example.org").await[0]["regarding"]["id"],
        acme.as_str()
    );
    let e = cmd::explain(&agent, Some("mid:token@example.org"), None)
        .await
        .unwrap();
    assert!(e.reasons[0].contains("tracking_token"), "{e:?}");
    assert!(w
        .keywords_of("ann", "INBOX", &href)
        .await
        .contains(&TRACKED.to_string()));
}

#[tokio::test]
async fn r_m6_auto_track_setting_none_and_exclusion_list() {
    let w = world().await;
    let (ann_id, token, agent) = ann(&w).await;
    w.user("bob@example.com").await;
    w.org_settings(json!({"exclusions": ["noreply@*"]})).await;
    w.user_settings(
        &ann_id,
        json!({"auto_track": "all", "exclusions": ["@hr.example.com"]}),
    )
    .await;
    w.deliver("ann", "INBOX", &lee("all@example.org", "Hello"), "");
    let shop = rfc5322(
        Some("shop@example.org"),
        "noreply@shop.example",
        &["ann@example.com"],
        "Receipt",
        "",
    );
    let shop_href = w.deliver("ann", "INBOX", &shop, "");
    let hr = rfc5322(
        Some("hr@example.org"),
        "lee@example.org",
        &["ann@example.com", "pay@hr.example.com"],
        "Salary",
        "",
    );
    w.deliver("ann", "INBOX", &hr, "");
    let internal = rfc5322(
        Some("internal@example.com"),
        "bob@example.com",
        &["ann@example.com"],
        "Lunch",
        "",
    );
    w.deliver("ann", "INBOX", &internal, "");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(w.email_by_mid("all@example.org").await.len(), 1);
    assert!(w.email_by_mid("shop@example.org").await.is_empty());
    assert!(w.email_by_mid("hr@example.org").await.is_empty());
    assert!(w.email_by_mid("internal@example.com").await.is_empty());
    let why = |mid: &'static str| {
        let agent = &agent;
        async move { cmd::explain(agent, Some(mid), None).await.unwrap().reasons[0].clone() }
    };
    assert!(why("mid:shop@example.org").await.contains("'noreply@*'"));
    assert!(why("mid:hr@example.org")
        .await
        .contains("'@hr.example.com'"));
    assert!(why("mid:internal@example.com").await.contains("internal"));
    // Manual tracking still works for an excluded message.
    w.keywords("ann", "INBOX", &shop_href, &[TRACKED], &[])
        .await;
    assert_eq!(sync(&agent).await.pushed.get("track"), Some(&1));
    // Setting none: even a reply to a tracked email is not tracked.
    w.user_settings(&ann_id, json!({"auto_track": "none"}))
        .await;
    let (_, orig) = tracked_sent(&w, &token, &agent).await;
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
    w.deliver("ann", "INBOX", &reply, "");
    let r = sync(&agent).await;
    assert!(r.pushed.is_empty(), "{r:?}");
    assert!(why("mid:reply-none@example.org").await.contains("none"));
}

#[tokio::test]
async fn r_m7_regarding_change_reaches_party_mailbox_as_keyword() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let (_, bob) = w.user("bob@example.com").await;
    // Sent exists when the agent starts (a folder created later is
    // found from the second sync on: the first uses the start's listing).
    std::fs::create_dir_all(w.dir.path().join("ann")).unwrap();
    w.mail_dir("ann", "Sent");
    let ann_agent = w.agent(&ann, "ann", "ann-cache").await;
    let bob_agent = w.agent(&bob, "bob", "bob-cache").await;
    let raw = rfc5322(
        Some("shared@example.com"),
        "ann@example.com",
        &["bob@example.com", "lee@example.org"],
        "Shared",
        "",
    );
    let a = w.deliver("ann", "Sent", &raw, "S");
    let b = w.deliver("bob", "INBOX", &raw, "");
    w.keywords("ann", "Sent", &a, &[TRACKED], &[]).await;
    w.keywords("bob", "INBOX", &b, &[TRACKED], &[]).await;
    sync(&ann_agent).await;
    sync(&bob_agent).await;
    let emails = w.email_by_mid("shared@example.com").await;
    assert_eq!(emails.len(), 1, "R-E9 off: one shared activity");
    let email_id = emails[0]["id"].as_str().unwrap().to_string();
    // Ann sets the regarding by command.
    let acme = w.account(&ann, "Acme").await;
    cmd::set_regarding(
        &ann_agent,
        &["mid:shared@example.com".to_string()],
        &format!("accounts/{acme}"),
    )
    .await
    .unwrap();
    assert_eq!(
        w.email_by_mid("shared@example.com").await[0]["regarding"]["id"],
        acme.as_str()
    );
    assert!(w
        .keywords_of("ann", "Sent", &a)
        .await
        .contains(&regarding_kw(&acme)));
    // It reaches Bob's mailbox as a keyword.
    let r = sync(&bob_agent).await;
    assert_eq!(r.written_to_mailbox, 1, "{r:?}");
    assert!(r.pushed.is_empty(), "no echo: {r:?}");
    assert!(w
        .keywords_of("bob", "INBOX", &b)
        .await
        .contains(&regarding_kw(&acme)));
    // Changed in the CRM: the old keyword is replaced.
    let globex = w.account(&ann, "Globex").await;
    let (status, body) = w
        .call(
            &ann,
            Method::PATCH,
            &format!("/api/v1/emails/{email_id}"),
            Some(json!({"regarding": {"set": "accounts", "id": globex}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync(&bob_agent).await;
    let kws = w.keywords_of("bob", "INBOX", &b).await;
    assert!(kws.contains(&regarding_kw(&globex)), "{kws:?}");
    assert!(!kws.contains(&regarding_kw(&acme)), "{kws:?}");
    assert!(sync(&bob_agent).await.pushed.is_empty());
    let r = sync(&ann_agent).await;
    assert!(r.pushed.is_empty(), "{r:?}");
    assert!(w
        .keywords_of("ann", "Sent", &a)
        .await
        .contains(&regarding_kw(&globex)));
}

/// R-M7 (issue 12) in a Maildir (`dovecot-keywords`): a keyword of the
/// former form `$CRMRegarding:<set>:<uuid>` is read (the message is tracked
/// with that regarding; on a tracked message it changes the regarding,
/// R-E5) and replaced by `$CRMRegarding:<32 hex digits>`.
#[tokio::test]
async fn r_m7_former_regarding_keyword_in_a_maildir_is_read_and_replaced() {
    let w = world().await;
    let (_, token, agent) = ann(&w).await;
    let acme = w.account(&token, "Acme").await;
    let globex = w.account(&token, "Globex").await;
    let href = w.deliver("ann", "INBOX", &lee("m7-former@example.org", "Quote"), "S");
    let former = former_regarding_kw("accounts", &acme);
    w.keywords("ann", "INBOX", &href, &[TRACKED, &former], &[])
        .await;
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("m7-former@example.org").await[0]["regarding"],
        json!({"set": "accounts", "id": acme})
    );
    let kws = w.keywords_of("ann", "INBOX", &href).await;
    assert!(kws.contains(&regarding_kw(&acme)), "{kws:?}");
    assert!(!kws.contains(&former), "{kws:?}");

    let former = former_regarding_kw("accounts", &globex);
    w.keywords("ann", "INBOX", &href, &[&former], &[&regarding_kw(&acme)])
        .await;
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("set_regarding"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("m7-former@example.org").await[0]["regarding"],
        json!({"set": "accounts", "id": globex})
    );
    let kws = w.keywords_of("ann", "INBOX", &href).await;
    assert!(kws.contains(&regarding_kw(&globex)), "{kws:?}");
    assert_eq!(
        kws.len(),
        2,
        "only $CRMTracked and the current keyword: {kws:?}"
    );
    assert!(sync(&agent).await.pushed.is_empty());
}

#[tokio::test]
async fn r_m8_marked_message_moved_elsewhere_is_reported() {
    let w = world().await;
    let (ann_id, _, agent) = ann(&w).await;
    let kept = w.deliver("ann", "INBOX", &lee("kept@example.org", "Kept"), "");
    w.keywords("ann", "INBOX", &kept, &[TRACKED], &[]).await;
    sync(&agent).await;
    // Tracking of the next one is refused (R-E10): it stays "to be tracked".
    w.org_settings(json!({"approved_only": true})).await;
    let href = w.deliver("ann", "INBOX", &lee("moved@example.org", "Moved"), "");
    w.keywords("ann", "INBOX", &href, &[TRACKED], &[]).await;
    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert_eq!(r.refused.len(), 1, "{r:?}");
    // Both move to a folder that is not synchronized.
    w.move_message("ann", "INBOX", "Archive", &href).await;
    w.move_message("ann", "INBOX", "Archive", &kept).await;
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("delete"), Some(&1), "{r:?}");
    assert!(
        r.reported
            .iter()
            .any(|m| m.contains("moved@example.org") && m.contains("moved out of the synchronized")),
        "{r:?}"
    );
    let s = agent.status().await.unwrap();
    assert!(
        s.reported
            .iter()
            .any(|m| m.contains("moved@example.org") && m.contains("moved out of the synchronized")),
        "{s:?}"
    );
    assert_eq!(s.tracked, 0);
    // The tracked one stays in the CRM.
    assert_eq!(w.email_by_mid("kept@example.org").await.len(), 1);
    let _ = ann_id;
}

#[tokio::test]
async fn r_e7_bulk_tracking_of_many_messages() {
    let w = world().await;
    let (_, _, agent) = ann(&w).await;
    let mut mids = Vec::new();
    for i in 0..250 {
        let mid = format!("bulk{i}@example.org");
        w.deliver("ann", "INBOX", &lee(&mid, &format!("Bulk {i}")), "S");
        mids.push(format!("mid:{mid}"));
    }
    sync(&agent).await;
    let started = std::time::Instant::now();
    let r = cmd::track(&agent, &mids, None).await.unwrap();
    assert_eq!(r.items.len(), 250);
    assert!(r.items.iter().all(|(_, id)| id.is_some()));
    assert_eq!(r.sync.as_ref().unwrap().pushed.get("track"), Some(&250));
    assert_eq!(w.emails().await.len(), 250);
    assert_eq!(agent.status().await.unwrap().tracked, 250);
    eprintln!("bulk tracking of 250 messages: {:?}", started.elapsed());
    // Bulk-tracked messages are untracked one at a time.
    let e = cmd::untrack(&agent, &mids[..2], false).await.unwrap_err();
    assert!(e.downcast_ref::<cmd::UsageError>().is_some(), "{e}");
    cmd::untrack(&agent, &mids[..1], false).await.unwrap();
    assert_eq!(agent.status().await.unwrap().tracked, 249);
}

#[tokio::test]
async fn r_e9_two_activities() {
    let w = world().await;
    let (ann_id, ann) = w.user("ann@example.com").await;
    let (bob_id, bob) = w.user("bob@example.com").await;
    let ann_agent = w.agent(&ann, "ann", "ann-cache").await;
    let bob_agent = w.agent(&bob, "bob", "bob-cache").await;
    w.org_settings(json!({"two_activities": true})).await;
    let raw = rfc5322(
        Some("two@example.com"),
        "ann@example.com",
        &["bob@example.com"],
        "Two",
        "",
    );
    let a = w.deliver("ann", "Sent", &raw, "S");
    let b = w.deliver("bob", "INBOX", &raw, "");
    w.keywords("ann", "Sent", &a, &[TRACKED], &[]).await;
    w.keywords("bob", "INBOX", &b, &[TRACKED], &[]).await;
    sync(&ann_agent).await;
    sync(&bob_agent).await;
    let mut owners: Vec<String> = w
        .email_by_mid("two@example.com")
        .await
        .iter()
        .map(|e| e["owner_id"].as_str().unwrap().to_string())
        .collect();
    owners.sort();
    let mut expected = vec![ann_id, bob_id.clone()];
    expected.sort();
    assert_eq!(owners, expected, "one activity per CRM user party");
    let bobs = cmd::item_status(&bob_agent, "mid:two@example.com")
        .await
        .unwrap();
    let (_, mine) = w
        .get(&bob, &format!("/api/v1/emails/{}", bobs.crm_id.unwrap()))
        .await;
    assert_eq!(
        mine["owner_id"],
        bob_id.as_str(),
        "Bob's copy links to his own"
    );
}

#[tokio::test]
async fn r_e10_unapproved_user_refused_reported() {
    let w = world().await;
    let (ann_id, _, agent) = ann(&w).await;
    w.org_settings(json!({"approved_only": true})).await;
    let href = w.deliver("ann", "INBOX", &lee("e10@example.org", "Hi"), "");
    w.keywords("ann", "INBOX", &href, &[TRACKED], &[]).await;
    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert!(
        r.refused.iter().any(|m| m.contains("not_approved")),
        "{r:?}"
    );
    assert!(w.emails().await.is_empty());
    let s = agent.status().await.unwrap();
    assert_eq!(s.to_be_tracked, 1);
    assert!(
        s.reported.iter().any(|m| m.contains("not_approved")),
        "{s:?}"
    );
    // Not retried at every sync while nothing changes.
    assert!(sync(&agent).await.refused.is_empty());
    // Approved: `crmsync track` tries again.
    let (status, body) = w
        .call(
            &w.admin,
            Method::PATCH,
            &format!("/api/v1/users/{ann_id}"),
            Some(json!({"approved_email": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = cmd::track(&agent, &["mid:e10@example.org".to_string()], None)
        .await
        .unwrap();
    assert!(r.items[0].1.is_some(), "{r:?}");
    assert!(agent.status().await.unwrap().reported.is_empty());
}

#[tokio::test]
async fn malformed_messages_are_tracked_or_reported_without_blocking_others() {
    let w = world().await;
    let (_, _, agent) = ann(&w).await;
    let no_id = rfc5322(None, "lee@example.org", &["ann@example.com"], "No id", "");
    let mut eight_bit = b"Message-ID: <latin1@example.org>\r\nFrom: <lee@example.org>\r\nTo: ann@example.com\r\nSubject: Gr\xfc\xdfe\r\n\r\nHallo\r\n".to_vec();
    eight_bit.extend_from_slice(b"\xe9t\xe9\r\n");
    let broken = b"Message-ID: <broken@example.org>\r\nFrom: lee@example.org\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\nno boundary here\r\n".to_vec();
    let blank = b"   \r\n\r\n".to_vec();
    let good = lee("good@example.org", "Good");
    let mut hrefs = Vec::new();
    for raw in [&no_id, &eight_bit, &broken, &blank, &good] {
        let h = w.deliver("ann", "INBOX", raw, "S");
        w.keywords("ann", "INBOX", &h, &[TRACKED], &[]).await;
        hrefs.push(h);
    }
    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert_eq!(r.pushed.get("track"), Some(&4), "{r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert!(
        r.skipped[0].contains(&hrefs[3]),
        "the blank one is reported: {r:?}"
    );
    let emails = w.emails().await;
    assert_eq!(emails.len(), 4);
    assert!(emails.iter().any(|e| e["message_id"]
        .as_str()
        .unwrap()
        .ends_with("@synthetic.invalid")));
    let latin = &w.email_by_mid("latin1@example.org").await[0];
    assert_eq!(latin["subject"], "Grüße");
    assert_eq!(w.email_by_mid("broken@example.org").await.len(), 1);
    let s = agent.status().await.unwrap();
    assert_eq!(s.tracked, 4);
    assert!(s.reported.iter().any(|m| m.contains(&hrefs[3])), "{s:?}");
    // The synthetic Message-ID is stable: the next sync changes nothing.
    assert!(sync(&agent).await.pushed.is_empty());
}

#[tokio::test]
async fn section_9_crm_deletes_tracked_email_message_kept_keyword_removed() {
    let w = world().await;
    let (_, token, agent) = ann(&w).await;
    let href = w.deliver("ann", "INBOX", &lee("gone@example.org", "Gone"), "S");
    w.keywords("ann", "INBOX", &href, &[TRACKED], &[]).await;
    sync(&agent).await;
    let id = w.email_by_mid("gone@example.org").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = w
        .call(
            &token,
            Method::DELETE,
            &format!("/api/v1/emails/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let r = sync(&agent).await;
    assert_eq!(r.unlinked_in_mailbox, 1, "{r:?}");
    assert!(w.keywords_of("ann", "INBOX", &href).await.is_empty());
    let s = agent.status().await.unwrap();
    assert_eq!((s.not_tracked, s.tracked), (1, 0));
    assert!(sync(&agent).await.pushed.is_empty(), "no untrack echo");
}

#[tokio::test]
async fn section_9_user_deletes_message_crm_activity_kept() {
    let w = world().await;
    let (_, _, agent) = ann(&w).await;
    let href = w.deliver("ann", "INBOX", &lee("del@example.org", "Delete me"), "S");
    w.keywords("ann", "INBOX", &href, &[TRACKED], &[]).await;
    sync(&agent).await;
    w.delete_message("ann", "INBOX", &href);
    // R-T2: a notification-triggered sync leaves the deletion for later.
    let r = agent
        .sync_once(SyncOptions {
            defer_deletions: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.deferred_deletions, 1, "{r:?}");
    assert!(r.pushed.is_empty());
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("delete"), Some(&1), "{r:?}");
    let email = w.email_by_mid("del@example.org").await;
    assert_eq!(email.len(), 1, "the CRM activity is kept");
    assert_eq!(agent.status().await.unwrap().tracked, 0);
}

#[tokio::test]
async fn commands_work_on_messages_by_message_id() {
    let w = world().await;
    let (_, token, agent) = ann(&w).await;
    let acme = w.account(&token, "Acme").await;
    let href = w.deliver("ann", "INBOX", &lee("cmd@example.org", "Command"), "S");
    let item = "mid:<cmd@example.org>".to_string();
    let before = cmd::item_status(&agent, &item).await.unwrap();
    assert_eq!((before.link, before.set.as_str()), (0, "emails"));
    let r = cmd::track(
        &agent,
        std::slice::from_ref(&item),
        Some(&format!("accounts/{acme}")),
    )
    .await
    .unwrap();
    let id = r.items[0].1.clone().expect("tracked");
    let email = &w.email_by_mid("cmd@example.org").await[0];
    assert_eq!(email["regarding"]["id"], acme.as_str());
    let s = cmd::item_status(&agent, &item).await.unwrap();
    assert_eq!((s.link, s.crm_id.as_deref()), (2, Some(id.as_str())));
    assert!(s.marker);
    let e = cmd::explain(&agent, Some(&item), None).await.unwrap();
    assert!(e.delivered && e.id == id, "{e:?}");
    let e = cmd::track(&agent, &["mid:nowhere@example.org".to_string()], None)
        .await
        .unwrap_err();
    assert!(e.downcast_ref::<cmd::UsageError>().is_some(), "{e}");
    // Untrack with --delete-in-crm: the CRM email goes, the message stays.
    cmd::untrack(&agent, std::slice::from_ref(&item), true)
        .await
        .unwrap();
    assert_eq!(
        w.get(&w.admin, &format!("/api/v1/emails/{id}")).await.0,
        404
    );
    assert!(w.keywords_of("ann", "INBOX", &href).await.is_empty());
    assert_eq!(cmd::item_status(&agent, &item).await.unwrap().link, 0);
    let r = sync(&agent).await;
    assert!(r.pushed.is_empty(), "{r:?}");
}

#[tokio::test]
async fn r_m6_from_crm_contacts_setting_tracks_mail_from_known_contacts() {
    let w = world().await;
    let (ann_id, token, agent) = ann(&w).await;
    w.user_settings(
        &ann_id,
        json!({"auto_track": "from_crm_contacts_leads_accounts"}),
    )
    .await;
    w.create(
        &token,
        "contacts",
        json!({"last_name": "Carol", "email": "carol@example.org"}),
    )
    .await;
    let from_carol = rfc5322(
        Some("carol1@example.org"),
        "Carol@Example.org",
        &["ann@example.com"],
        "Hi Ann",
        "",
    );
    w.deliver("ann", "INBOX", &from_carol, "");
    w.deliver("ann", "INBOX", &lee("stranger@example.org", "Hi"), "");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(w.email_by_mid("carol1@example.org").await.len(), 1);
    assert!(w.email_by_mid("stranger@example.org").await.is_empty());
}

#[tokio::test]
async fn r_t4_journaled_email_operation_is_replayed_without_duplicate() {
    use base64::Engine;
    let w = world().await;
    let (_, _, agent) = ann(&w).await;
    let raw = lee("crash@example.org", "Crash");
    let href = w.deliver("ann", "INBOX", &raw, "S");
    w.keywords("ann", "INBOX", &href, &[TRACKED], &[]).await;
    // Killed after journaling the track, before sending it (or after
    // sending it, before its answer was applied: the same entry again).
    let entry = crmsync_agent::cache::JournalEntry {
        op_id: uuid::Uuid::new_v4().to_string(),
        collection: "mail/INBOX".into(),
        href: href.clone(),
        etag: String::new(),
        op: json!({"kind": "track", "set": "emails", "draft": false, "fields": {},
            "raw": base64::engine::general_purpose::STANDARD.encode(&raw),
            "item_uid": "crash@example.org", "message_id": "crash@example.org"}),
    };
    let mut entry = entry;
    entry.op["op_id"] = json!(entry.op_id);
    agent.cache().journal_add(&entry).await.unwrap();
    let r = sync(&agent).await;
    assert_eq!(
        r.pushed.get("track"),
        Some(&1),
        "replayed, not tracked twice: {r:?}"
    );
    agent.cache().journal_add(&entry).await.unwrap();
    sync(&agent).await;
    assert_eq!(w.email_by_mid("crash@example.org").await.len(), 1);
    let s = agent.status().await.unwrap();
    assert_eq!((s.tracked, s.pending_operations), (1, 0));
    assert!(sync(&agent).await.pushed.is_empty());
}

#[tokio::test]
async fn r_c4_secondary_client_tracks_email() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let laptop = w.agent(&ann, "laptop", "laptop-cache").await;
    sync(&laptop).await;
    let phone = w.agent(&ann, "phone", "phone-cache").await;
    let r = sync(&phone).await;
    assert_eq!(r.role, "secondary");
    let href = w.deliver(
        "phone",
        "INBOX",
        &lee("c4@example.org", "From the phone"),
        "S",
    );
    w.keywords("phone", "INBOX", &href, &[TRACKED], &[]).await;
    let r = sync(&phone).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(r.left_for_primary, 0);
    assert_eq!(w.email_by_mid("c4@example.org").await.len(), 1);
    w.keywords("phone", "INBOX", &href, &[], &[TRACKED]).await;
    assert_eq!(sync(&phone).await.pushed.get("untrack"), Some(&1));
}

#[tokio::test]
async fn r_c5_delegated_client_only_marks_messages() {
    let w = world().await;
    let (boss_id, boss) = w.user("boss@example.com").await;
    let (_, assistant) = w.user("assistant@example.com").await;
    w.user_settings(&boss_id, json!({"delegates": ["assistant@example.com"]}))
        .await;
    let primary = w.agent(&boss, "boss", "boss-cache").await;
    sync(&primary).await;
    let cfg_path = w.dir.path().join("assistant.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{assistant}\"\n[client]\nname = \"assistant\"\ncache = \"{}\"\non_behalf_of = \"boss@example.com\"\n[mailbox.local]\nroot = \"{}\"\n",
            w.base,
            w.dir.path().join("assistant.db").display(),
            w.dir.path().join("boss").display()
        ),
    )
    .unwrap();
    let delegated = Agent::open(Config::load(&cfg_path).unwrap()).await.unwrap();
    let href = w.deliver("boss", "INBOX", &lee("c5@example.org", "For the boss"), "S");
    let r = cmd::track(&delegated, &["mid:c5@example.org".into()], None)
        .await
        .unwrap();
    assert!(r.waiting_for_owner && r.sync.is_none(), "{r:?}");
    assert!(w
        .keywords_of("boss", "INBOX", &href)
        .await
        .contains(&TRACKED.to_string()));
    let r = delegated.sync_once(SyncOptions::default()).await.unwrap();
    assert!(r.pushed.is_empty(), "{r:?}");
    assert!(w.emails().await.is_empty());
    // The owner's primary tracks it.
    let r = sync(&primary).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(w.email_by_mid("c5@example.org").await.len(), 1);
}

#[tokio::test]
async fn r_m5_smart_matching_only_when_the_organization_turns_it_on() {
    let w = world().await;
    let (_, token, agent) = ann(&w).await;
    let (acme, _) = tracked_sent(&w, &token, &agent).await;
    let thread = |id: &str| {
        rfc5322(
            Some(id),
            "lee@example.org",
            &["ann@example.com", "kim@example.org"],
            "AW: Quote 42",
            "",
        )
    };
    w.deliver("ann", "INBOX", &thread("smart-off@example.org"), "");
    assert!(sync(&agent).await.pushed.is_empty(), "off by default");
    w.org_settings(json!({"smart_matching": true})).await;
    w.deliver("ann", "INBOX", &thread("smart-on@example.org"), "");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(
        w.email_by_mid("smart-on@example.org").await[0]["regarding"]["id"],
        acme.as_str()
    );
    let e = cmd::explain(&agent, Some("mid:smart-on@example.org"), None)
        .await
        .unwrap();
    assert!(e.reasons[0].contains("smart_matching"), "{e:?}");
}

#[tokio::test]
async fn r_e8_message_with_thousands_of_recipients_is_tracked_and_correlated() {
    let w = world().await;
    let (_, token, agent) = ann(&w).await;
    let (acme, _) = tracked_sent(&w, &token, &agent).await;
    let to: Vec<String> = (0..3000).map(|i| format!("r{i}@example.net")).collect();
    let mut to: Vec<&str> = to.iter().map(String::as_str).collect();
    to.insert(0, "ann@example.com");
    let raw = rfc5322(
        Some("many@example.org"),
        "lee@example.org",
        &to,
        "Re: Quote 42",
        "In-Reply-To: <orig@example.com>\r\n",
    );
    w.deliver("ann", "INBOX", &raw, "");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let email = &w.email_by_mid("many@example.org").await[0];
    assert_eq!(email["regarding"]["id"], acme.as_str());
    assert_eq!(email["parties"].as_array().unwrap().len(), 3002);
}
