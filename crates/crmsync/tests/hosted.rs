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

use serde_json::Value;

use support::{
    connect_mailboxes, crm_users, postgres_db, serve_processes, tracked_message, Server,
};

const USERS: usize = 12;
const MESSAGES: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_v6_three_serve_processes_one_killed_track_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, db) = postgres_db().await;
    let token = Server::init(&db);
    let servers = serve_processes(dir.path(), &db, &token, 3, &["--sync-workers", "2"]).await;
    let dovecot = imap_servers::Dovecot::start(imap_servers::Flavor::Qresync).await;
    for u in 0..USERS {
        let name = format!("user{u}");
        dovecot.add_user(&name, "pw");
        // Messages put in the tracked folder are tracked (R-M4).
        dovecot.seed_maildir_of(&name, "CRM", MESSAGES, |i| tracked_message(u, i));
    }
    let tokens = crm_users(&servers[0], USERS).await;
    let http = reqwest::Client::new();
    connect_mailboxes(
        &tokens,
        dovecot.port,
        |_| None,
        |u| servers[u % 3].base.clone(),
    )
    .await;
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
    let mut servers = servers;
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
