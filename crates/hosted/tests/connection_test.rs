//! R-V1: `POST /api/v1/mailboxes/{id}/test` connects to a mailbox's real
//! IMAP (Dovecot) and DAV (Radicale) servers and says what works, with
//! the fix; "Resync" makes the mailbox due now.

// Both test-server modules start Cyrus from the same file.
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "../../dav/tests/common/mod.rs"]
mod dav_servers;
#[path = "../../imap/tests/support/mod.rs"]
mod imap_servers;

use serde_json::{json, Value};

/// The status and detail of one check of a test's answer.
fn check<'a>(answer: &'a Value, what: &str) -> (&'a str, &'a str) {
    let found = answer["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == what)
        .unwrap_or_else(|| panic!("no {what} in {answer}"));
    (
        found["status"].as_str().unwrap(),
        found["detail"].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_v1_test_says_what_works_and_what_to_fix() {
    let s = common::serve(false, false).await;
    let admin = s.admin.clone();
    let dovecot = imap_servers::Dovecot::start(imap_servers::Flavor::Qresync).await;
    let radicale = dav_servers::Server::start(dav_servers::Kind::Radicale).await;
    let body = json!({"name": "work",
        "imap": {"host": "127.0.0.1", "port": dovecot.port, "security": "none",
                 "username": imap_servers::USER, "password": imap_servers::PASSWORD,
                 "tracked_folders": ["Deals"]},
        "dav": {"contacts": radicale.url_of("contacts").to_string(),
                "calendar": radicale.url_of("calendar").to_string(),
                "username": dav_servers::USER, "password": dav_servers::PASSWORD}});
    let (status, created) = s
        .call(
            &admin,
            reqwest::Method::POST,
            "/api/v1/mailboxes",
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let test = format!("/api/v1/mailboxes/{id}/test");
    let (status, answer) = s.call(&admin, reqwest::Method::POST, &test, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(check(&answer, "IMAP sign-in").0, "ok");
    assert_eq!(
        check(&answer, "IMAP change tracking").0,
        "ok",
        "Dovecot offers QRESYNC"
    );
    assert_eq!(check(&answer, "address book").0, "ok");
    assert_eq!(check(&answer, "calendar").0, "ok");
    // A tracked folder the server lacks is reported, not created (the
    // test changes nothing).
    let (status, detail) = check(&answer, "IMAP folders");
    assert_eq!(status, "warning", "{detail}");
    assert!(detail.contains("Deals"), "{detail}");
    let again = s.call(&admin, reqwest::Method::POST, &test, None).await.1;
    assert!(
        check(&again, "IMAP folders").1.contains("Deals"),
        "still missing: nothing was created"
    );
    assert!(
        !answer.to_string().contains(imap_servers::PASSWORD),
        "no password in the answer"
    );

    // A wrong password: a refused sign-in, said with the fix; the DAV side still works.
    let (status, _) = s
        .call(
            &admin,
            reqwest::Method::PATCH,
            &format!("/api/v1/mailboxes/{id}"),
            Some(json!({"imap": {"password": "wrong"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, answer) = s.call(&admin, reqwest::Method::POST, &test, None).await;
    assert_eq!(answer["ok"], false, "{answer}");
    let (status, detail) = check(&answer, "IMAP sign-in");
    assert_eq!(status, "failed");
    assert!(detail.contains("password"), "{detail}");
    assert_eq!(check(&answer, "address book").0, "ok");

    // Another user may not test it.
    let (status, user) = s
        .call(
            &admin,
            reqwest::Method::POST,
            "/api/v1/users",
            Some(json!({"email": "lee@example.com", "name": "Lee"})),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let (status, _) = s
        .call(
            user["token"].as_str().unwrap(),
            reqwest::Method::POST,
            &test,
            None,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_v1_resync_makes_the_mailbox_due_now() {
    let s = common::serve(false, false).await;
    let (admin, store) = (s.admin.clone(), s.store.clone());
    let (status, created) = s
        .call(
            &admin,
            reqwest::Method::POST,
            "/api/v1/mailboxes",
            Some(
                json!({"name": "work", "imap": {"host": "127.0.0.1", "port": 143, "username": "u",
                                             "password": "p", "security": "none"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let in_an_hour = unix_now() + 3600;
    sqlx::query("UPDATE mailboxes SET next_run_at = $1 WHERE id = $2")
        .bind(in_an_hour)
        .bind(&id)
        .execute(&store.pool)
        .await
        .unwrap();
    let (status, answer) = s
        .call(
            &admin,
            reqwest::Method::POST,
            &format!("/api/v1/mailboxes/{id}/sync"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let next: i64 = sqlx::query_scalar("SELECT next_run_at FROM mailboxes WHERE id = $1")
        .bind(&id)
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(next <= unix_now(), "due now, not in an hour");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_v1_test_of_a_server_that_never_answers_ends_in_seconds_with_the_fix() {
    let s = common::serve(false, false).await;
    // Accepts the connection and says nothing: no IMAP greeting ever.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let (status, created) = s
        .call(
            &s.admin,
            reqwest::Method::POST,
            "/api/v1/mailboxes",
            Some(
                json!({"name": "work", "imap": {"host": "127.0.0.1", "port": port, "username": "u",
                                                 "password": "p", "security": "none"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let test = format!("/api/v1/mailboxes/{}/test", created["id"].as_str().unwrap());
    let started = std::time::Instant::now();
    let (status, answer) = s.call(&s.admin, reqwest::Method::POST, &test, None).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(answer["ok"], false, "{answer}");
    let (status, detail) = check(&answer, "IMAP");
    assert_eq!(status, "failed");
    assert!(
        detail.contains("did not answer") && detail.contains("check the host, port"),
        "{detail}"
    );
    held.abort();
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
