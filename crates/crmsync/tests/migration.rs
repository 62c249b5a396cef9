//! R-O2 as a user lives it: an organization whose agent has contacts, an
//! appointment and a task in its mailbox (one contact deleted there, which
//! R-S9 remembers) and a tracked email moves with `crmsync admin export` /
//! `import` from SQLite to PostgreSQL and back, each time served by a new
//! `crmsync serve` with the agent's `[crm] url` pointed at it. After each
//! move the agent keeps its client id, receives nothing twice, duplicates
//! nothing in the CRM, the raw message is served byte for byte, tracking
//! the same message from another machine links to the same email, and
//! changes on both sides still flow.
//!
//! The server, the commands and the agent are the real binary; the
//! mailbox is a local folder with a Maildir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{postgres_admin, postgres_db, Server, BIN};

use serde_json::{json, Value};

const MESSAGE_ID: &str = "offer-1@example.org";

fn message() -> Vec<u8> {
    format!(
        "Message-ID: <{MESSAGE_ID}>\r\nFrom: Lee <lee@example.org>\r\nTo: Me <me@example.com>\r\nSubject: Offer\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, here is the offer.\r\n"
    )
    .into_bytes()
}

/// A local mailbox folder with every kind of collection, the message in
/// its inbox.
fn mailbox(root: &Path) {
    for dir in [
        "contacts", "calendar", "tasks", "mail/cur", "mail/new", "mail/tmp",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("mail/cur/1764000000.offer.host:2,S"), message()).unwrap();
}

/// Runs `crmsync ARGS`; it must succeed. Returns its stdout.
fn crmsync(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "crmsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sync(config: &Path) -> Value {
    serde_json::from_str(&crmsync(&[
        "sync",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]))
    .unwrap()
}

/// The agent's configuration now points at `server` (what a user edits
/// when the CRM moves to another address).
fn point_at(config: &Path, server: &Server) {
    let text = std::fs::read_to_string(config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("url = ") {
                format!("url = \"{}\"", server.base)
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(config, text.join("\n") + "\n").unwrap();
}

/// Every file of the mailbox's item collections with its content.
fn items(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for dir in ["contacts", "calendar", "tasks"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.clone(), std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// Every record of `set` in the CRM (the tests' organizations are small).
async fn records(server: &Server, set: &str) -> Vec<Value> {
    server
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/{set}?limit=1000"),
            None,
        )
        .await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// `GET /api/v1/emails/{id}/raw`: the status and the body as text.
async fn raw(server: &Server, email: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/emails/{email}/raw", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What the organization and the mailbox hold before a move.
struct Before {
    client_id: String,
    items: BTreeMap<PathBuf, String>,
    counts: BTreeMap<&'static str, usize>,
    email: String,
}

const SETS: [&str; 4] = ["contacts", "appointments", "tasks", "emails"];

async fn counts(server: &Server) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for set in SETS {
        out.insert(set, records(server, set).await.len());
    }
    out
}

/// Moves the organization from `from` (stopped) to a new server on `to`.
fn export_import(dir: &Path, from: &str, to: &str, n: usize) {
    let file = dir.join(format!("move-{n}.jsonl"));
    let file = file.to_str().unwrap();
    crmsync(&["admin", "export", "--db", from, file]);
    crmsync(&["admin", "import", "--db", to, file]);
}

/// After a move: the agent carries on as if nothing happened, and the
/// organization serves what it served.
async fn check_after_move(
    dir: &Path,
    server: &Server,
    config: &Path,
    root: &Path,
    before: &Before,
    n: usize,
) {
    let report = sync(config);
    assert_eq!(
        report["client_id"],
        before.client_id.as_str(),
        "move {n}: the agent keeps its client (no new registration): {report}"
    );
    assert_eq!(
        report["written_to_mailbox"], 0,
        "move {n}: nothing delivered again: {report}"
    );
    assert_eq!(report["deleted_from_mailbox"], 0, "move {n}: {report}");
    assert_eq!(
        report["pushed"],
        json!({}),
        "move {n}: nothing pushed again: {report}"
    );
    assert_eq!(report["errors"], json!([]), "move {n}: {report}");
    assert_eq!(
        items(root),
        before.items,
        "move {n}: the mailbox holds the same items, none twice, the deleted contact not back"
    );
    assert_eq!(
        counts(server).await,
        before.counts,
        "move {n}: nothing duplicated in the CRM"
    );
    let clients = server
        .call(reqwest::Method::GET, "/api/v1/sync/clients", None)
        .await;
    assert!(
        clients.to_string().contains(&before.client_id),
        "move {n}: the client is listed: {clients}"
    );
    assert_eq!(
        raw(server, &before.email).await,
        (200, String::from_utf8(message()).unwrap()),
        "move {n}: the raw message is served as received"
    );

    // Another machine of the same user holds the same message and tracks
    // it: it is linked to the email the CRM has (Message-ID), not tracked twice.
    let other = dir.join(format!("machine-{n}"));
    mailbox(&other);
    let other_config = server.agent_config(dir, &format!("machine-{n}"), &other);
    crmsync(&[
        "track",
        "--config",
        other_config.to_str().unwrap(),
        &format!("mid:{MESSAGE_ID}"),
        "--wait",
    ]);
    let status: Value = serde_json::from_str(&crmsync(&[
        "status",
        "--json",
        "--config",
        other_config.to_str().unwrap(),
        &format!("mid:{MESSAGE_ID}"),
    ]))
    .unwrap();
    assert_eq!(
        status["crm_id"],
        before.email.as_str(),
        "move {n}: {status}"
    );
    assert_eq!(
        records(server, "emails").await.len(),
        1,
        "move {n}: one CRM email"
    );

    // Changes still flow both ways: a CRM edit reaches the mailbox.
    let lee = records(server, "contacts")
        .await
        .into_iter()
        .find(|c| c["last_name"] == "Lee")
        .unwrap();
    let title = format!("Buyer {n}");
    server
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/contacts/{}", lee["id"].as_str().unwrap()),
            Some(json!({"job_title": title})),
        )
        .await;
    let report = sync(config);
    assert_eq!(
        report["written_to_mailbox"], 1,
        "move {n}: the edit is delivered: {report}"
    );
    let (card, text) = items(root)
        .into_iter()
        .find(|(_, v)| v.contains(&format!("TITLE:{title}")))
        .expect("the edit is in the mailbox");
    // ... and a mailbox edit reaches the CRM.
    let note = format!("Met after move {n}");
    let edited: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.starts_with("NOTE:"))
        .collect();
    let edited = edited
        .join("\r\n")
        .replacen("END:VCARD", &format!("NOTE:{note}\r\nEND:VCARD"), 1);
    std::fs::write(&card, edited).unwrap();
    let report = sync(config);
    assert_eq!(report["pushed"], json!({"update": 1}), "move {n}: {report}");
    let lee = server
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/contacts/{}", lee["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        lee["notes"],
        note.as_str(),
        "move {n}: the mailbox edit is in the CRM"
    );
}

async fn snapshot(server: &Server, config: &Path, root: &Path, email: &str) -> Before {
    let report = sync(config);
    assert_eq!(
        report["written_to_mailbox"], 0,
        "settled before the move: {report}"
    );
    Before {
        client_id: report["client_id"].as_str().unwrap().to_string(),
        items: items(root),
        counts: counts(server).await,
        email: email.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_o2_agent_keeps_its_client_across_sqlite_postgres_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let sqlite = format!("sqlite://{}", dir.join("crm.db").display());
    let server = Server::start(dir).await;
    let token = server.token.clone();
    let post = |set: &'static str, body: Value| {
        let server = &server;
        async move {
            server
                .call(reqwest::Method::POST, &format!("/api/v1/{set}"), Some(body))
                .await
        }
    };
    post(
        "contacts",
        json!({"first_name": "Ann", "last_name": "Lee", "email": "lee@example.org"}),
    )
    .await;
    post("contacts", json!({"first_name": "Bo", "last_name": "Gone"})).await;
    let start = time_in_days(30);
    let end = time_in_days(31);
    post(
        "appointments",
        json!({"subject": "Review", "start": start, "end": end}),
    )
    .await;
    post("tasks", json!({"subject": "Send the offer"})).await;

    let root = dir.join("laptop-mailbox");
    mailbox(&root);
    let config = server.agent_config(dir, "laptop", &root);
    let first = sync(&config);
    assert_eq!(first["written_to_mailbox"], 4, "{first}");
    // The user deletes one contact in the mailbox: kept in the CRM, never
    // sent to this mailbox again (R-S9).
    let gone = items(&root)
        .into_iter()
        .find(|(_, text)| text.contains("Gone"))
        .unwrap()
        .0;
    std::fs::remove_file(&gone).unwrap();
    let deleted = sync(&config);
    assert_eq!(deleted["errors"], json!([]), "{deleted}");
    crmsync(&[
        "track",
        "--config",
        config.to_str().unwrap(),
        &format!("mid:{MESSAGE_ID}"),
        "--wait",
    ]);
    let emails = records(&server, "emails").await;
    assert_eq!(emails.len(), 1);
    let email = emails[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        raw(&server, &email).await,
        (200, String::from_utf8(message()).unwrap())
    );
    let before = snapshot(&server, &config, &root, &email).await;
    assert_eq!(
        before.counts["contacts"], 2,
        "the deleted contact is kept in the CRM"
    );
    assert!(!items(&root).contains_key(&gone));

    // SQLite -> PostgreSQL
    drop(server);
    let (pg_name, pg) = postgres_db().await;
    export_import(dir, &sqlite, &pg, 1);
    let server = Server::serve(&pg, token.clone()).await;
    point_at(&config, &server);
    check_after_move(dir, &server, &config, &root, &before, 1).await;

    // PostgreSQL -> SQLite
    let before = snapshot(&server, &config, &root, &email).await;
    drop(server);
    let back = format!("sqlite://{}", dir.join("back.db").display());
    export_import(dir, &pg, &back, 2);
    let server = Server::serve(&back, token).await;
    point_at(&config, &server);
    check_after_move(dir, &server, &config, &root, &before, 2).await;
    sqlx::query(&format!("DROP DATABASE {pg_name} WITH (FORCE)"))
        .execute(&mut postgres_admin().await)
        .await
        .unwrap();
}

/// An RFC 3339 time `days` from now.
fn time_in_days(days: i64) -> String {
    crmsync_core::time::format_datetime(
        time::OffsetDateTime::now_utc() + time::Duration::days(days),
    )
}
