//! R-V6 benchmark (issue 14): mailboxes synchronized by the server. P
//! `crmsync serve` processes (default 4 sync workers each) on one
//! PostgreSQL database; N users on one local Dovecot, each with M messages
//! in the tracked folder `CRM`, each connecting their mailbox through the
//! API. The real binary, each server its own process.
//!
//! 1. First full synchronization: from the first mailbox connected until
//!    every mailbox has a success and all N×M messages are CRM emails.
//! 2. Steady cycle: once no mailbox synchronizes any more, "Resync" of
//!    every mailbox at once (nothing changed),
//!    until each has a newer success; the engine's time per cycle (the
//!    mailboxes' `last_counts.elapsed_ms`), and PostgreSQL transactions per
//!    cycle (`pg_stat_database.xact_commit`, every statement outside a
//!    transaction counting one; the servers' idle polling included).
//! 3. CPU (user + system) and peak memory (VmHWM) of the servers, per
//!    mailbox.
//!
//! `--kill`: one server is killed with SIGKILL as soon as the first email
//! arrives; phase 1 then includes the takeover of its mailboxes (90 s
//! leases).
//!
//!   cargo bench -p crmsync --bench hosted -- [--mailboxes N] [--messages M] [--processes P] [--kill]
//!
//! Defaults (a smoke run of a few seconds): N = 20, M = 5, P = 3.

#[path = "../../imap/tests/support/mod.rs"]
mod imap_servers;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    connect_mailboxes, cpu_time, crm_users, postgres_admin, postgres_db, serve_processes,
    tracked_message, Server,
};

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident memory of a process, in MiB.
fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn transactions(db_name: &str) -> i64 {
    // Statistics are flushed about once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db_name)
    .fetch_one(&mut postgres_admin().await)
    .await
    .unwrap()
}

#[tokio::main]
async fn main() {
    let (n, m, p) = (
        arg("--mailboxes", 20),
        arg("--messages", 5),
        arg("--processes", 3),
    );
    let kill = std::env::args().any(|a| a == "--kill");
    assert!(!kill || p > 1, "--kill needs two processes or more");
    let dir = tempfile::tempdir().unwrap();
    let (db_name, db) = postgres_db().await;
    let token = Server::init(&db);
    let mut servers = serve_processes(dir.path(), &db, &token, p, &[]).await;
    let dovecot = imap_servers::Dovecot::start(imap_servers::Flavor::Qresync).await;
    let http = reqwest::Client::new();
    let setup = Instant::now();
    for u in 0..n {
        let name = format!("user{u}");
        dovecot.add_user(&name, "pw");
        dovecot.seed_maildir_of(&name, "CRM", m, |i| tracked_message(u, i));
    }
    let users = crm_users(&servers[0], n).await;
    eprintln!(
        "{n} users with {m} messages each in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let cpu_before: Vec<Duration> = servers.iter().map(|s| cpu_time(s.pid())).collect();
    // Requests go to the last server, which is never the one killed.
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let base = |i: usize| bases[if kill { 1 + i % (p - 1) } else { i % p }].clone();
    let started = Instant::now();
    let ids = connect_mailboxes(&users, dovecot.port, base).await;
    // Phase 1: every mailbox synchronized once, every message an email.
    let asked = servers.last().unwrap().base.clone();
    let mailbox = |u: usize| {
        let (http, asked, t, id) = (
            http.clone(),
            asked.clone(),
            users[u].clone(),
            ids[u].clone(),
        );
        async move {
            http.get(format!("{asked}/api/v1/mailboxes/{id}"))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let mut killed = None;
    loop {
        let mut done = 0;
        for u in 0..n {
            if mailbox(u).await["last_success_at"].is_string() {
                done += 1;
            }
        }
        if kill && killed.is_none() && done > 0 {
            let victim = servers.remove(0);
            let pid = victim.pid();
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            eprintln!("killed server {pid} with {done} of {n} mailboxes synchronized");
            killed = Some(victim);
        }
        if done == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{done} of {n} after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = started.elapsed();
    let mut emails = HashSet::new();
    let mut total = 0;
    for t in &users {
        let page: Value = http
            .get(format!("{asked}/api/v1/emails?limit=500&owner=me"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in page["items"].as_array().unwrap() {
            total += 1;
            emails.insert(e["message_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        (emails.len(), total),
        (n * m, n * m),
        "every message tracked exactly once"
    );
    // Phase 2: one no-change cycle of every mailbox.
    // Quiet first: a cycle's own pushes wake its mailbox once more (R-T7),
    // so wait until no success changes for two seconds.
    let successes = || async {
        let mut all = Vec::new();
        for u in 0..n {
            all.push(
                mailbox(u).await["last_success_at"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        all
    };
    let mut before = successes().await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = successes().await;
        if now == before {
            break;
        }
        before = now;
    }
    let xact_before = transactions(&db_name).await;
    let steady = Instant::now();
    for u in 0..n {
        http.post(format!("{}/api/v1/mailboxes/{}/sync", base(u), ids[u]))
            .bearer_auth(&users[u])
            .send()
            .await
            .unwrap();
    }
    let mut elapsed_ms = Vec::new();
    for (u, before) in before.iter().enumerate() {
        loop {
            let now = mailbox(u).await;
            if now["last_success_at"].as_str() != Some(before.as_str()) {
                let counts: Value = now["last_counts"]
                    .as_str()
                    .and_then(|c| serde_json::from_str(c).ok())
                    .unwrap_or_else(|| now["last_counts"].clone());
                elapsed_ms.push(counts["elapsed_ms"].as_f64().unwrap_or(f64::NAN));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cycle_all = steady.elapsed();
    let xact = transactions(&db_name).await - xact_before;
    elapsed_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let cpu: Duration = servers
        .iter()
        .zip(cpu_before.iter().skip(usize::from(killed.is_some())))
        .map(|(s, b)| cpu_time(s.pid()).saturating_sub(*b))
        .sum();
    let memory: Vec<String> = servers
        .iter()
        .map(|s| format!("{:.0}", peak_mib(s.pid())))
        .collect();
    println!(
        "== {n} mailboxes × {m} messages, {} serve processes on PostgreSQL{}",
        p,
        if kill { ", one killed" } else { "" }
    );
    println!(
        "first full synchronization of all:   {:.1} s ({:.0} ms per mailbox)",
        first.as_secs_f64(),
        first.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "no-change cycle of all (Resync):     {:.1} s",
        cycle_all.as_secs_f64()
    );
    println!(
        "engine time per no-change cycle:     p50 {:.0} ms, p90 {:.0} ms",
        elapsed_ms[n / 2],
        elapsed_ms[n * 9 / 10]
    );
    println!(
        "database transactions per cycle:     {:.1} (all processes, idle polling included)",
        xact as f64 / n as f64
    );
    println!(
        "server CPU, both phases:             {:.1} ms per mailbox",
        cpu.as_secs_f64() * 1e3 / n as f64
    );
    println!("server peak memory (MiB):            {}", memory.join(", "));
    drop(killed);
}
