//! R-T7 benchmark (issue 16): how long a CRM edit takes to reach the
//! mailbox of a running agent, and what waiting clients cost the server.
//! The real `crmsync` binary: `serve` on SQLite and `agent` on a local
//! mailbox, or on Radicale (`--radicale`: the arrival is seen in Radicale's
//! storage folder), with a schedule of 15 minutes, each its own process.
//!
//! 1. E edits of one contact through the REST API, each timed until the
//!    agent has written it into the contact's vCard (polled every 2 ms),
//!    with the agent the only waiting client;
//! 2. W-1 more clients of the same user wait too (each prepares when
//!    answered and waits again, as an agent does: every edit wakes all
//!    of them, the worst case); the server's CPU over a few idle seconds
//!    (per waiting client), then the same E edits timed;
//! 3. the agent alone again (the first phase repeated, so a drift of the
//!    machine shows).
//!
//!   cargo bench -p crmsync --bench crm_changes -- [--edits E] [--waiters W] [--idle S] [--postgres] [--radicale]
//!
//! `--postgres`: the server on a new database of CRMSYNC_TEST_PG_URL's
//! server (default 127.0.0.1:5432) instead of SQLite.
//!
//! Defaults (a smoke run of a few seconds): E = 10, W = 200, S = 2.

mod common;
#[path = "../../dav/tests/common/mod.rs"]
mod dav;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;
use serde_json::{json, Value};
use support::{cpu_time, Killed, Server, BIN};

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// The contact file holding `text`, if any.
fn file_with(folder: &Path, text: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(folder)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            std::fs::read_to_string(e.path())
                .ok()
                .filter(|t| t.contains(text))
                .map(|_| e.path())
        })
}

/// E edits of `contact`, each timed until its vCard shows it (ms).
async fn timed_edits(
    server: &Server,
    folder: &Path,
    contact: &str,
    edits: usize,
    tag: &str,
) -> Vec<f64> {
    let file = file_with(folder, &format!("X-CRM-ID:{contact}")).expect("the contact's vCard");
    let mut out = Vec::new();
    for e in 0..edits {
        let name = format!("Edited{tag}{e}");
        let sent = Instant::now();
        server
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/contacts/{contact}"),
                Some(json!({"last_name": name})),
            )
            .await;
        while !std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains(&name)
        {
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "edit {name} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out.push(sent.elapsed().as_secs_f64() * 1e3);
        // Let the agent's sync finish and its next wait begin.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    out
}

fn report(what: &str, ms: &[f64]) {
    println!(
        "{what:<34} median {:>6.1} ms   p99 {:>6.1} ms   min {:>6.1}   max {:>6.1}   ({} edits)",
        percentile(ms, 0.5),
        percentile(ms, 0.99),
        percentile(ms, 0.0),
        percentile(ms, 1.0),
        ms.len()
    );
}

/// A client that waits, prepares when answered, and waits again.
fn synthetic_waiter(
    http: reqwest::Client,
    base: String,
    token: String,
    id: String,
    mut since: i64,
    wakes: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let answer: Option<Value> = async {
                http.get(format!(
                    "{base}/api/v1/sync/wait?client_id={id}&since={since}"
                ))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
            }
            .await;
            let Some(answer) = answer else {
                eprintln!("waiter {id}: the wait failed; asking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if answer["changed"] == true {
                wakes.fetch_add(1, Ordering::Relaxed);
                let prep: Option<Value> = async {
                    http.post(format!("{base}/api/v1/sync/prepare"))
                        .bearer_auth(&token)
                        .json(&json!({"client_id": id}))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()
                }
                .await;
                match prep.and_then(|p| p["upto_version"].as_i64()) {
                    Some(upto) => since = upto,
                    None => eprintln!("waiter {id}: a prepare failed"),
                }
            }
        }
    })
}

#[tokio::main]
async fn main() {
    let edits = arg("--edits", 10);
    let waiters = arg("--waiters", 200).max(1);
    let idle = Duration::from_secs(arg("--idle", 2) as u64);
    let postgres = std::env::args().any(|a| a == "--postgres");
    let dir = tempfile::tempdir().unwrap();
    let server = if postgres {
        let (_, db) = support::postgres_db().await;
        Server::serve(&db, Server::init(&db)).await
    } else {
        Server::start(dir.path()).await
    };
    let radicale = std::env::args().any(|a| a == "--radicale");
    let dav_server = match radicale {
        true => Some(dav::Server::start(dav::Kind::Radicale).await),
        false => None,
    };
    let (config, folder) = match &dav_server {
        Some(d) => {
            let urls = ["contacts", "calendar", "tasks"].map(|id| d.url_of(id));
            let config = common::dav_config(
                dir.path(),
                &server,
                "bench",
                &urls,
                dav::USER,
                dav::PASSWORD,
            );
            (config, d.folder_of("contacts"))
        }
        None => {
            let root = dir.path().join("mailbox");
            let config = server.agent_config(dir.path(), "bench", &root);
            (config, root.join("contacts"))
        }
    };
    let contact = server
        .call(
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(json!({"last_name": "Timed"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let _agent = Killed(
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while file_with(&folder, &contact).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent's first sync"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "R-T7 benchmark: {} server, agent on {} (release build)",
        if postgres { "PostgreSQL" } else { "SQLite" },
        if radicale {
            "Radicale"
        } else {
            "a local mailbox"
        }
    );

    let alone = timed_edits(&server, &folder, &contact, edits, "A").await;
    report("1 waiting client (the agent)", &alone);

    let http = reqwest::Client::new();
    let wakes = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 1..waiters {
        let c = server
            .call(
                reqwest::Method::POST,
                "/api/v1/sync/clients",
                Some(json!({"name": format!("waiter-{i}"), "kinds": ["contacts"]})),
            )
            .await;
        let id = c["id"].as_str().unwrap().to_string();
        let prep = server
            .call(
                reqwest::Method::POST,
                "/api/v1/sync/prepare",
                Some(json!({"client_id": id})),
            )
            .await;
        let since = prep["upto_version"].as_i64().unwrap();
        tasks.push(synthetic_waiter(
            http.clone(),
            server.base.clone(),
            server.token.clone(),
            id,
            since,
            wakes.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_time(server.pid());
    tokio::time::sleep(idle).await;
    let used = cpu_time(server.pid()) - before;
    println!(
        "{waiters} waiting clients, idle {} s: server CPU {} ms = {:.2} µs per waiter per second (clock tick {} ms)",
        idle.as_secs(),
        used.as_millis(),
        used.as_secs_f64() * 1e6 / waiters as f64 / idle.as_secs_f64(),
        1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
    );
    let crowded = timed_edits(&server, &folder, &contact, edits, "B").await;
    report(&format!("{waiters} waiting clients"), &crowded);
    println!(
        "  the other {} clients were woken {} times (each edit wakes each, which then prepares)",
        waiters - 1,
        wakes.load(Ordering::Relaxed)
    );
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = timed_edits(&server, &folder, &contact, edits, "C").await;
    report("1 waiting client, again", &again);
    println!(
        "ratio of medians, {waiters} waiters / 1 waiter: {:.2}",
        percentile(&crowded, 0.5) / percentile(&[alone, again].concat(), 0.5)
    );
}
