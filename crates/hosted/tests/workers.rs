//! SPEC §15 end to end: `crmsync serve`'s sync workers synchronize the
//! mailboxes connected to it (R-V4) with the agent's engine, on a real
//! Dovecot and Radicale, over SQLite and PostgreSQL; their health follows
//! R-V5 (a refused password waits for new credentials while the other
//! mailboxes go on); a CRM change wakes them as it wakes an agent (R-T7).

// Both test-server modules start Cyrus from the same file.
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "../../dav/tests/common/mod.rs"]
mod dav_servers;
#[path = "../../imap/tests/support/mod.rs"]
mod imap_servers;

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::serve;
use crmsync_mailbox::Mailbox;

/// Polls `check` until it answers `Some`, for at most 60 s.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not within 60 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn message(id: &str, subject: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}>\r\nFrom: lee@example.org\r\nTo: ann@example.com\r\nSubject: {subject}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nHello\r\n"
    )
    .into_bytes()
}

fn imap_section(dovecot: &imap_servers::Dovecot, password: &str) -> Value {
    json!({"host": "127.0.0.1", "port": dovecot.port, "security": "none",
           "username": imap_servers::USER, "password": password})
}

async fn r_v4_a_connected_mailbox_is_synchronized_by_the_server(postgres: bool) {
    let s = serve(postgres, true).await;
    let ann = s.user("ann@example.com").await;
    let (status, _) = s
        .call(
            &ann,
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(json!({"first_name": "Lee", "last_name": "Jones", "email": "lee@example.org"})),
        )
        .await;
    assert_eq!(status, 201);
    let dovecot = imap_servers::Dovecot::start(imap_servers::Flavor::Qresync).await;
    let mut mail = dovecot.client().await;
    mail.append_flags(
        "INBOX",
        "$CRMTracked",
        &message("offer@example.org", "Offer"),
    )
    .await;
    let radicale = dav_servers::Server::start(dav_servers::Kind::Radicale).await;
    let body = json!({"name": "work", "imap": imap_section(&dovecot, imap_servers::PASSWORD),
        "dav": {"contacts": radicale.url_of("contacts").to_string(),
                "username": dav_servers::USER, "password": dav_servers::PASSWORD}});
    let (status, created) = s
        .call(&ann, reqwest::Method::POST, "/api/v1/mailboxes", Some(body))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // The tracked message becomes one CRM email; the user's contact reaches
    // the connected address book; the mailbox says it synchronized.
    let email = eventually("the tracked message in the CRM", || async {
        let (_, emails) = s
            .call(&ann, reqwest::Method::GET, "/api/v1/emails", None)
            .await;
        emails["items"].as_array().and_then(|e| {
            e.iter()
                .find(|e| e["message_id"] == "offer@example.org")
                .cloned()
        })
    })
    .await;
    assert_eq!(email["subject"], "Offer");
    let book = dav_servers::Server::config(&radicale);
    let dav = crmsync_dav::DavMailbox::new(&book).unwrap();
    eventually("the contact in the address book", || async {
        let listed = dav.changes_since("contacts", None).await.ok()?;
        (listed.changed.len() == 1).then_some(())
    })
    .await;
    let synced = eventually("a recorded success", || async {
        let m = s.mailbox(&ann, &id).await;
        m["last_success_at"].is_string().then_some(m)
    })
    .await;
    assert_eq!(synced["state"], "active", "{synced}");
    assert!(synced["last_error"].is_null(), "{synced}");
    assert!(
        synced["last_counts"].is_object() || synced["last_counts"].is_string(),
        "{synced}"
    );

    // "Resync" runs it again; the email stays one.
    let before = synced["last_success_at"].as_str().unwrap().to_string();
    let (status, _) = s
        .call(
            &ann,
            reqwest::Method::POST,
            &format!("/api/v1/mailboxes/{id}/sync"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    eventually("a second success after Resync", || async {
        let m = s.mailbox(&ann, &id).await;
        (m["last_success_at"].as_str() != Some(before.as_str())).then_some(())
    })
    .await;
    let (_, emails) = s
        .call(&ann, reqwest::Method::GET, "/api/v1/emails", None)
        .await;
    let copies = emails["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message_id"] == "offer@example.org")
        .count();
    assert_eq!(copies, 1, "tracked once, however many cycles");

    // The engine's state lives in the database on PostgreSQL (any process
    // continues the mailbox), in a file beside the database on SQLite.
    let cache_file = s.dir.path().join("mailbox-caches").join(format!("{id}.db"));
    if postgres {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM mailbox_cache_items WHERE mailbox_id = $1")
                .bind(&id)
                .fetch_one(&s.store.pool)
                .await
                .unwrap();
        assert!(rows >= 1, "the contact's baseline is in the database");
        assert!(!cache_file.exists());
    } else {
        assert!(cache_file.exists());
    }

    // R-V1: disconnected, the mailbox leaves no engine state behind once
    // the workers have swept (they do at start and every few minutes).
    let (status, _) = s
        .call(
            &ann,
            reqwest::Method::DELETE,
            &format!("/api/v1/mailboxes/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let removed = crmsync_hosted::sweep::sweep(&s.store, &s.dir.path().join("mailbox-caches"))
        .await
        .unwrap();
    assert!(removed >= 1, "something was swept");
    assert!(!cache_file.exists(), "the cache file went");
    if postgres {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM mailbox_cache_items WHERE mailbox_id = $1")
                .bind(&id)
                .fetch_one(&s.store.pool)
                .await
                .unwrap();
        assert_eq!(rows, 0, "the cache rows went");
    }
}

async fn r_v5_a_refused_password_waits_for_new_credentials_while_others_sync(postgres: bool) {
    let s = serve(postgres, true).await;
    let ann = s.user("ann@example.com").await;
    let dovecot = imap_servers::Dovecot::start(imap_servers::Flavor::Qresync).await;
    let create = |name: &str, password: &str| json!({"name": name, "imap": imap_section(&dovecot, password)});
    let (_, wrong) = s
        .call(
            &ann,
            reqwest::Method::POST,
            "/api/v1/mailboxes",
            Some(create("wrong", "not the password")),
        )
        .await;
    let (_, right) = s
        .call(
            &ann,
            reqwest::Method::POST,
            "/api/v1/mailboxes",
            Some(create("right", imap_servers::PASSWORD)),
        )
        .await;
    let (wrong, right) = (
        wrong["id"].as_str().unwrap().to_string(),
        right["id"].as_str().unwrap().to_string(),
    );
    let refused = eventually("needs_reconnect", || async {
        let m = s.mailbox(&ann, &wrong).await;
        (m["state"] == "needs_reconnect").then_some(m)
    })
    .await;
    assert!(
        refused["last_error"].as_str().unwrap().contains("password"),
        "{refused}"
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("crmsync_mailboxes{state=\"needs_reconnect\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("crmsync_mailbox_cycles_total{outcome=\"needs_reconnect\"}"),
        "{metrics}"
    );
    eventually("the other mailbox synchronized", || async {
        s.mailbox(&ann, &right).await["last_success_at"]
            .is_string()
            .then_some(())
    })
    .await;
    // New credentials: active again, and synchronized.
    let (status, patched) = s
        .call(
            &ann,
            reqwest::Method::PATCH,
            &format!("/api/v1/mailboxes/{wrong}"),
            Some(json!({"imap": {"password": imap_servers::PASSWORD}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let fixed = eventually("active after new credentials", || async {
        let m = s.mailbox(&ann, &wrong).await;
        (m["state"] == "active" && m["last_success_at"].is_string()).then_some(m)
    })
    .await;
    assert!(fixed["last_error"].is_null(), "{fixed}");
    // Deleting stops synchronizing and deletes nothing in the mailbox.
    let (status, _) = s
        .call(
            &ann,
            reqwest::Method::DELETE,
            &format!("/api/v1/mailboxes/{right}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        s.call(
            &ann,
            reqwest::Method::GET,
            &format!("/api/v1/mailboxes/{right}"),
            None
        )
        .await
        .0,
        404
    );
}

async fn r_t7_a_crm_change_reaches_a_connected_mailbox_without_waiting_for_the_schedule(
    postgres: bool,
) {
    let s = serve(postgres, true).await;
    let ann = s.user("ann@example.com").await;
    let radicale = dav_servers::Server::start(dav_servers::Kind::Radicale).await;
    let body = json!({"name": "work",
        "dav": {"contacts": radicale.url_of("contacts").to_string(),
                "calendar": radicale.url_of("calendar").to_string(),
                "username": dav_servers::USER, "password": dav_servers::PASSWORD}});
    let (status, created) = s
        .call(&ann, reqwest::Method::POST, "/api/v1/mailboxes", Some(body))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    eventually("a first success", || async {
        s.mailbox(&ann, &id).await["last_success_at"]
            .is_string()
            .then_some(())
    })
    .await;
    let dav = crmsync_dav::DavMailbox::new(&dav_servers::Server::config(&radicale)).unwrap();
    // The next scheduled cycle is 15 minutes away.
    let next = s.mailbox(&ann, &id).await["next_run_at"].clone();
    assert!(next.is_string(), "{next}");
    let (status, _) = s
        .call(
            &ann,
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(json!({"last_name": "Newer"})),
        )
        .await;
    assert_eq!(status, 201);
    let woken = Instant::now();
    eventually("the new contact in the address book", || async {
        let listed = dav.changes_since("contacts", None).await.ok()?;
        (listed.changed.len() == 1).then_some(())
    })
    .await;
    assert!(
        woken.elapsed() < Duration::from_secs(30),
        "woken by the change, not the schedule"
    );

    // A record the mailbox holds that someone else owns (an invitation,
    // fetched by a Resync), edited by its owner, wakes the mailbox too.
    let (status, meeting) = s
        .call(
            &s.admin,
            reqwest::Method::POST,
            "/api/v1/appointments",
            Some(json!({"subject": "Kick-off", "start": "2030-01-07T09:00:00Z", "end": "2030-01-07T10:00:00Z",
                        "attendees": [{"email": "ann@example.com"}]})),
        )
        .await;
    assert_eq!(status, 201, "{meeting}");
    let (status, _) = s
        .call(
            &ann,
            reqwest::Method::POST,
            &format!("/api/v1/mailboxes/{id}/sync"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let etag = eventually("the invitation in the calendar", || async {
        let listed = dav.changes_since("calendar", None).await.ok()?;
        listed.changed.first().map(|c| c.etag.clone())
    })
    .await;
    // Let the cycle that wrote it end, so that only the edit can wake it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let path = format!("/api/v1/appointments/{}", meeting["id"].as_str().unwrap());
    let (status, _) = s
        .call(
            &s.admin,
            reqwest::Method::PATCH,
            &path,
            Some(json!({"subject": "Kick-off, moved"})),
        )
        .await;
    assert_eq!(status, 200);
    let edited = Instant::now();
    eventually("the edit in the calendar", || async {
        let listed = dav.changes_since("calendar", None).await.ok()?;
        (listed.changed.first()?.etag != etag).then_some(())
    })
    .await;
    assert!(
        edited.elapsed() < Duration::from_secs(30),
        "an edit of a record the mailbox holds wakes it"
    );
}

macro_rules! both_dbs {
    ($($name:ident),*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name(false).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name(true).await }
        }
    )*};
}

both_dbs!(
    r_v4_a_connected_mailbox_is_synchronized_by_the_server,
    r_v5_a_refused_password_waits_for_new_credentials_while_others_sync,
    r_t7_a_crm_change_reaches_a_connected_mailbox_without_waiting_for_the_schedule
);
