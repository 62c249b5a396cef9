//! SPEC §15 across processes (R-V4, R-V6): three `crmsync serve` processes
//! on one PostgreSQL database share the mailboxes connected to it; one is
//! killed with SIGKILL mid-run, and every tracked message still becomes
//! exactly one CRM email, its mailboxes taken over once their leases expire.

mod support;

#[path = "../../imap/tests/support/mod.rs"]
mod imap_servers;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{free_port, postgres_db, Server, BIN};

const USERS: usize = 12;
const MESSAGES: usize = 15;

fn message(user: usize, i: usize) -> Vec<u8> {
    format!(
        "Message-ID: <m{i}.u{user}@example.org>\r\nFrom: lee@example.org\r\nTo: user{user}@example.com\r\nSubject: Deal {i}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nHello\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_v4_three_serve_processes_one_killed_track_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, db) = postgres_db().await;
    let token = Server::init(&db);
    let key = dir.path().join("secret.key");
    let made = Command::new(BIN)
        .args(["admin", "gen-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let key = key.to_string_lossy().to_string();
    let args = ["--secret-key-file", key.as_str(), "--sync-workers", "2"];
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::serve_with(&db, token.clone(), free_port(), &args).await);
    }
    let dovecot = imap_servers::Dovecot::start(imap_servers::Flavor::Qresync).await;
    let mut tokens = Vec::new();
    for u in 0..USERS {
        let name = format!("user{u}");
        dovecot.add_user(&name, "pw");
        // Messages put in the tracked folder are tracked (R-M4).
        dovecot.seed_maildir_of(&name, "CRM", MESSAGES, |i| message(u, i));
        let user = servers[0]
            .call(
                reqwest::Method::POST,
                "/api/v1/users",
                Some(json!({"email": format!("{name}@example.com"), "name": name})),
            )
            .await;
        tokens.push(user["token"].as_str().unwrap().to_string());
    }
    let http = reqwest::Client::new();
    for (u, t) in tokens.iter().enumerate() {
        let body = json!({"name": "mail", "imap": {"host": "127.0.0.1", "port": dovecot.port,
            "security": "none", "username": format!("user{u}"), "password": "pw"}});
        let r = http
            .post(format!("{}/api/v1/mailboxes", servers[u % 3].base))
            .bearer_auth(t)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    // The tracked emails each user's API shows, by Message-ID, asked of a
    // process that stays.
    let asked = servers[2].base.clone();
    let emails = || async {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for t in &tokens {
            let mut cursor: Option<String> = None;
            loop {
                let url = match &cursor {
                    Some(c) => format!("{}/api/v1/emails?limit=500&owner=me&cursor={c}", asked),
                    None => format!("{}/api/v1/emails?limit=500&owner=me", asked),
                };
                let page: Value = http
                    .get(url)
                    .bearer_auth(t)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for e in page["items"].as_array().unwrap() {
                    *seen
                        .entry(e["message_id"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
        }
        seen
    };
    // Kill one process as soon as the work is under way.
    let started = Instant::now();
    while emails().await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no email within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = servers.remove(0);
    let status = Command::new("kill")
        .args(["-KILL", &killed.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    let want = USERS * MESSAGES;
    let seen = loop {
        let seen = emails().await;
        if seen.len() == want || killed_at.elapsed() > Duration::from_secs(150) {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tracked more than once: {twice:?}");
    assert_eq!(
        seen.len(),
        want,
        "every tracked message within two and a half minutes of the kill (a lease lasts 90 s)"
    );
    println!(
        "all {want} messages tracked {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    drop(killed);
}
