//! R-V6 benchmark (issue 14): mailboxes synchronized by the server. P
//! `crmsync serve` processes (4 sync workers each, the PostgreSQL default)
//! on one PostgreSQL database; N users, each with M messages in the tracked
//! folder `CRM` of one local Dovecot, an address book, a calendar and a task
//! list on one Radicale, and one contact of their own in the CRM; each
//! connects their mailbox (IMAP and DAV) through the API. The real binary,
//! each server its own process.
//!
//! 1. First full synchronization: from the first mailbox connected until
//!    every mailbox has a success; then all N×M messages must be CRM
//!    emails (each once) and every user's contact in their address book.
//! 2. Steady cycle, R runs: once no mailbox synchronizes, every mailbox is
//!    made due at once (its next run set to now, as the schedule does) and
//!    the bench waits until each has run again (nothing changed); then,
//!    in the same run, the mail servers' own floor for the same N
//!    mailboxes at the same concurrency (P × 4), with the project's own
//!    clients (crmsync_imap, crmsync_dav): per mailbox a login, one
//!    STATUS per folder (QRESYNC, nothing changed) and one sync-collection
//!    REPORT per DAV collection; and the same without the IMAP login (a
//!    session kept open, which the workers do not do).
//! 3. Per no-change cycle: database round trips (the Sync and Query
//!    messages of the servers, counted by a proxy in front of
//!    PostgreSQL) and transactions (`pg_stat_database`), the servers'
//!    idle polling measured over a quiet interval and subtracted; the
//!    servers' CPU (user + system) per mailbox; their peak RSS (VmHWM).
//!
//! `--statements`: also the statements of the last no-change cycle of all,
//! per mailbox, by SQL text (the servers' idle polling of that interval
//! included).
//!
//! `--kill`: one server is killed with SIGKILL as soon as the first
//! mailbox has synchronized; phase 1 then includes the takeover of its
//! mailboxes (90 s leases).
//!
//!   CRMSYNC_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo bench -p crmsync --bench hosted -- [--mailboxes N] [--messages M] [--processes P] [--runs R] [--statements] [--kill]
//!
//! Defaults (a smoke run of a few seconds): N = 20, M = 5, P = 3, R = 3.

// Both fixtures bring the Cyrus one along.
#![allow(clippy::duplicate_mod)]

mod common;
#[path = "../../dav/tests/common/mod.rs"]
mod dav_servers;
#[path = "../../imap/tests/support/mod.rs"]
mod imap_servers;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::median;
use common::pg_round_trips::PgRoundTrips;
use crmsync_dav::{DavConfig, DavMailbox, Url};
use crmsync_imap::{ImapConfig, ImapMailbox, Security};
use crmsync_mailbox::{Mailbox, SyncState};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use support::{
    connect_mailboxes, cpu_time, crm_users, postgres_admin, postgres_db, serve_processes,
    tracked_message, Server,
};

/// `serve --sync-workers`' default on PostgreSQL.
const WORKERS_PER_PROCESS: usize = 4;
const PASSWORD: &str = "pw";

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

/// Committed and rolled back transactions of the database so far. An idle
/// backend sends its statistics up to 10 s late (PostgreSQL 15), so wait
/// that long first.
async fn transactions(db_name: &str) -> i64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db_name)
    .fetch_one(&mut postgres_admin().await)
    .await
    .unwrap()
}

/// The servers' counters at one moment: database round trips (proxy),
/// transactions (statistics, read 11 s later), and when.
struct Counters {
    trips: u64,
    /// Of which ran no statement (pool checks, preparations).
    empty: u64,
    xacts: i64,
    at: Instant,
}

async fn counters(proxy: &PgRoundTrips, db_name: &str) -> Counters {
    let (trips, empty, at) = (proxy.count(), proxy.without_statement(), Instant::now());
    Counters {
        trips,
        empty,
        xacts: transactions(db_name).await,
        at,
    }
}

/// `(round trips, of which without statement, transactions)` per second
/// of idle servers.
fn idle_rates(a: &Counters, b: &Counters) -> [f64; 3] {
    let secs = (b.at - a.at).as_secs_f64();
    [
        (b.trips - a.trips) as f64 / secs,
        (b.empty - a.empty) as f64 / secs,
        (b.xacts - a.xacts) as f64 / secs,
    ]
}

/// One mailbox as the mail servers' own floor sees it: its IMAP folders
/// and DAV collections with their current sync states, and an IMAP
/// session kept open for the floor without login.
struct Floor {
    imap: ImapConfig,
    dav: DavConfig,
    folders: Vec<(String, SyncState)>,
    collections: Vec<(String, SyncState)>,
    open_imap: ImapMailbox,
}

impl Floor {
    /// Lists the folders the engine synchronizes and reads every state
    /// (not timed).
    async fn of(imap: ImapConfig, dav: DavConfig) -> Floor {
        let open_imap = ImapMailbox::connect(imap.clone()).await.unwrap();
        let mut folders = Vec::new();
        for c in open_imap.collections().await.unwrap() {
            let state = open_imap.changes_since(&c.id, None).await.unwrap().state;
            folders.push((c.id, state));
        }
        let mut collections = Vec::new();
        for id in ["contacts", "calendar", "tasks"] {
            let state = DavMailbox::new(&dav)
                .unwrap()
                .changes_since(id, None)
                .await
                .unwrap()
                .state;
            collections.push((id.to_string(), state));
        }
        Floor {
            imap,
            dav,
            folders,
            collections,
            open_imap,
        }
    }

    /// One no-change pass: with `login`, a new IMAP session first (as each
    /// cycle of the workers does), else the open one. DAV has no session
    /// (Basic authentication on every request): a new HTTP client each
    /// time, as the workers. Its time, its DAV part and its requests
    /// after the login.
    async fn pass(&self, login: bool) -> (Duration, Duration, u64) {
        let t = Instant::now();
        let imap = if login {
            ImapMailbox::connect(self.imap.clone()).await.unwrap()
        } else {
            self.open_imap.clone()
        };
        let dav = DavMailbox::new(&self.dav).unwrap();
        let before = imap.round_trips() + dav.request_count();
        for (id, state) in &self.folders {
            let c = imap.changes_since(id, Some(state)).await.unwrap();
            assert!(c.is_empty(), "{id}: {c:?}");
        }
        let dav_started = Instant::now();
        for (id, state) in &self.collections {
            let c = dav.changes_since(id, Some(state)).await.unwrap();
            assert!(c.is_empty(), "{id}: {c:?}");
        }
        let requests = imap.round_trips() + dav.request_count() - before;
        (t.elapsed(), dav_started.elapsed(), requests)
    }
}

/// The floor for every mailbox, `concurrency` at a time: the wall time of
/// all, each mailbox's time and its DAV part (ms), requests per mailbox.
async fn floor_pass(
    floors: &[Floor],
    login: bool,
    concurrency: usize,
) -> (Duration, Vec<(f64, f64)>, f64) {
    let t = Instant::now();
    let done: Vec<(Duration, Duration, u64)> = futures_util::stream::iter(floors)
        .map(|f| f.pass(login))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = t.elapsed();
    let requests = done.iter().map(|d| d.2).sum::<u64>() as f64 / floors.len() as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        wall,
        done.iter().map(|d| (ms(d.0), ms(d.1))).collect(),
        requests,
    )
}

/// Each mailbox's lease token, whether a worker holds it, and its last
/// counts (one statement).
async fn mailbox_rows(db: &mut PgConnection) -> HashMap<String, (i64, bool, Option<String>)> {
    sqlx::query(
        "SELECT id, lease_token, lease_holder IS NOT NULL AS held, last_counts FROM mailboxes",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.get("id"),
            (r.get("lease_token"), r.get("held"), r.get("last_counts")),
        )
    })
    .collect()
}

/// Waits until no mailbox has been claimed for `quiet` (a cycle's own
/// pushes wake its mailbox once more, R-T7).
async fn wait_quiet(db: &mut PgConnection, quiet: Duration) {
    let mut before = mailbox_rows(db).await;
    loop {
        tokio::time::sleep(quiet).await;
        let now = mailbox_rows(db).await;
        let same = now
            .iter()
            .all(|(id, r)| !r.1 && before.get(id).map(|b| b.0) == Some(r.0));
        if same {
            return;
        }
        before = now;
    }
}

/// One no-change cycle of every mailbox: all made due at once, then
/// waited for. Its wall time, each mailbox's engine time (ms), and the
/// statements the bench sent meanwhile (they count in the statistics).
async fn cycle_all(db: &mut PgConnection) -> (Duration, Vec<f64>, i64) {
    let before = mailbox_rows(db).await;
    let t = Instant::now();
    sqlx::query("UPDATE mailboxes SET next_run_at = 0")
        .execute(&mut *db)
        .await
        .unwrap();
    let mut statements = 1;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = mailbox_rows(db).await;
        statements += 1;
        let done = now.iter().all(|(id, r)| !r.1 && r.0 > before[id].0);
        if !done {
            continue;
        }
        let wall = t.elapsed();
        let engine_ms = now
            .values()
            .map(|r| {
                let counts: Value = serde_json::from_str(r.2.as_deref().unwrap_or("{}")).unwrap();
                assert_eq!(
                    counts["written_to_mailbox"], 0,
                    "a no-change cycle: {counts}"
                );
                counts["elapsed_ms"].as_f64().unwrap_or(f64::NAN)
            })
            .collect();
        return (wall, engine_ms, statements);
    }
}

fn percentile(mut v: Vec<f64>, p: usize) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[tokio::main]
async fn main() {
    let (n, m, p, runs) = (
        arg("--mailboxes", 20),
        arg("--messages", 5),
        arg("--processes", 3),
        arg("--runs", 3).max(1),
    );
    let kill = std::env::args().any(|a| a == "--kill");
    let show_statements = std::env::args().any(|a| a == "--statements");
    assert!(!kill || p > 1, "--kill needs two processes or more");
    let dir = tempfile::tempdir().unwrap();
    let (db_name, db) = postgres_db().await;
    let token = Server::init(&db);
    let proxy = PgRoundTrips::start(&db).await;
    let mut servers = serve_processes(dir.path(), &proxy.url(&db), &token, p, &[]).await;
    let mut sql = PgConnection::connect(&db).await.unwrap();
    let dovecot = imap_servers::Dovecot::start(imap_servers::Flavor::Qresync).await;
    let radicale = dav_servers::Server::start(dav_servers::Kind::Radicale).await;
    let http = reqwest::Client::new();
    let setup = Instant::now();
    let mut books: Vec<[Url; 3]> = Vec::new();
    for u in 0..n {
        let name = format!("user{u}");
        dovecot.add_user(&name, PASSWORD);
        dovecot.seed_maildir_of(&name, "CRM", m, |i| tracked_message(u, i));
        books.push(radicale.add_user(&name, PASSWORD).await);
    }
    let users = crm_users(&servers[0], n).await;
    // Each user's own contact: R-S6's default filter sends it to their
    // address book.
    for (u, t) in users.iter().enumerate() {
        let r = http
            .post(format!("{}/api/v1/contacts", servers[0].base))
            .bearer_auth(t)
            .json(
                &json!({"first_name": "Friend", "last_name": format!("Of User {u}"),
                          "email": format!("friend{u}@example.net")}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    eprintln!(
        "{n} users with {m} messages, 3 DAV collections and 1 contact each in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let cpu_start: Vec<Duration> = servers.iter().map(|s| cpu_time(s.pid())).collect();
    // Requests go to the servers that are never killed.
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let base = |i: usize| bases[if kill { 1 + i % (p - 1) } else { i % p }].clone();
    let started = Instant::now();
    let dav_section = |u: usize| {
        Some(
            json!({"contacts": books[u][0].to_string(), "calendar": books[u][1].to_string(),
                    "tasks": books[u][2].to_string(), "username": format!("user{u}"), "password": PASSWORD}),
        )
    };
    connect_mailboxes(&users, dovecot.port, dav_section, base).await;

    // Phase 1: every mailbox synchronized once.
    let mut killed = None;
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM mailboxes WHERE last_success_at IS NOT NULL")
                .fetch_one(&mut sql)
                .await
                .unwrap();
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
        if done as usize == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{done} of {n} after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = started.elapsed();
    let cpu_after_first: Vec<Duration> = servers.iter().map(|s| cpu_time(s.pid())).collect();
    let cpu_first: Duration = servers
        .iter()
        .zip(cpu_start.iter().skip(usize::from(killed.is_some())))
        .zip(&cpu_after_first)
        .map(|((_, b), a)| a.saturating_sub(*b))
        .sum();
    let asked = servers.last().unwrap().base.clone();
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
    // Every user's contact is in their address book, and the floor's
    // states are read (not timed).
    let mut floors = Vec::new();
    for (u, urls) in books.iter().enumerate() {
        let mut dav = DavConfig::new(format!("user{u}"), PASSWORD);
        dav.contacts = Some(urls[0].clone());
        dav.calendar = Some(urls[1].clone());
        dav.tasks = Some(urls[2].clone());
        let book = DavMailbox::new(&dav).unwrap();
        let listed = book.changes_since("contacts", None).await.unwrap();
        let hrefs: Vec<_> = listed.changed.iter().map(|i| i.href.clone()).collect();
        let cards = book.get_many("contacts", &hrefs).await.unwrap();
        let wanted = format!("friend{u}@example.net");
        assert!(
            cards.iter().any(|(_, c)| c
                .as_ref()
                .is_ok_and(|c| String::from_utf8_lossy(&c.data).contains(&wanted))),
            "user{u}'s contact in their address book"
        );
        let imap = ImapConfig::new(
            "127.0.0.1",
            dovecot.port,
            Security::None,
            format!("user{u}"),
            PASSWORD,
        );
        floors.push(Floor::of(imap, dav).await);
    }

    // Phase 2: R no-change cycles of all, each beside the floor.
    let concurrency = servers.len() * WORKERS_PER_PROCESS;
    wait_quiet(&mut sql, Duration::from_secs(2)).await;
    let idle_a = counters(&proxy, &db_name).await;
    let idle_b = counters(&proxy, &db_name).await;
    let [idle_trips, idle_empty, idle_xacts] = idle_rates(&idle_a, &idle_b);
    let mut engine_all = Vec::new();
    let mut engine_ms = Vec::new();
    let mut floor_all = Vec::new();
    let mut floor_ms = Vec::new();
    let mut open_all = Vec::new();
    let mut open_ms = Vec::new();
    let mut floor_dav_ms = Vec::new();
    let mut open_dav_ms = Vec::new();
    let mut trips = Vec::new();
    let mut empty = Vec::new();
    let mut xacts = Vec::new();
    let mut cpu_cycle = Vec::new();
    let mut floor_requests = 0.0;
    let mut open_requests = 0.0;
    let mut statements = Vec::new();
    for run in 0..runs {
        wait_quiet(&mut sql, Duration::from_secs(2)).await;
        let before = counters(&proxy, &db_name).await;
        let cpu_before: Vec<Duration> = servers.iter().map(|s| cpu_time(s.pid())).collect();
        let ran_before = proxy.statements();
        let (wall, ms, own) = cycle_all(&mut sql).await;
        let ran = proxy.statements();
        statements = ran
            .into_iter()
            .map(|(sql, k)| (k - ran_before.get(&sql).copied().unwrap_or(0), sql))
            .filter(|(k, _)| *k > 0)
            .collect();
        let cpu: Duration = servers
            .iter()
            .zip(&cpu_before)
            .map(|(s, b)| cpu_time(s.pid()).saturating_sub(*b))
            .sum();
        let after = counters(&proxy, &db_name).await;
        let secs = (after.at - before.at).as_secs_f64();
        trips.push(((after.trips - before.trips) as f64 - idle_trips * secs) / n as f64);
        empty.push(((after.empty - before.empty) as f64 - idle_empty * secs) / n as f64);
        xacts.push(((after.xacts - before.xacts - own) as f64 - idle_xacts * secs) / n as f64);
        cpu_cycle.push(cpu.as_secs_f64() * 1e3 / n as f64);
        engine_all.push(wall.as_secs_f64());
        engine_ms.extend(ms);
        let (wall, ms, requests) = floor_pass(&floors, true, concurrency).await;
        floor_all.push(wall.as_secs_f64());
        floor_ms.extend(ms.iter().map(|m| m.0));
        floor_dav_ms.extend(ms.iter().map(|m| m.1));
        floor_requests = requests;
        let (wall, ms, requests) = floor_pass(&floors, false, concurrency).await;
        open_all.push(wall.as_secs_f64());
        open_ms.extend(ms.iter().map(|m| m.0));
        open_dav_ms.extend(ms.iter().map(|m| m.1));
        open_requests = requests;
        eprintln!(
            "run {}: engine {:.2} s, floor {:.2} s, without login {:.2} s",
            run + 1,
            engine_all[run],
            floor_all[run],
            open_all[run]
        );
    }
    let memory: Vec<String> = servers
        .iter()
        .map(|s| format!("{:.0}", peak_mib(s.pid())))
        .collect();

    let (e_all, f_all, o_all) = (
        median(engine_all.clone()),
        median(floor_all.clone()),
        median(open_all.clone()),
    );
    println!(
        "== {n} mailboxes (IMAP: {m} messages in CRM; DAV: 3 collections, 1 contact) × {p} serve processes on PostgreSQL{}; {runs} runs, medians",
        if kill { ", one killed" } else { "" }
    );
    println!(
        "first full synchronization of all:   {:.1} s ({:.0} ms per mailbox); server CPU {:.1} ms per mailbox",
        first.as_secs_f64(),
        first.as_secs_f64() * 1e3 / n as f64,
        cpu_first.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "no-change cycle of all:              engine {e_all:.2} s; floor {f_all:.2} s (without login {o_all:.2} s); engine/floor {:.2} (without login {:.2})",
        e_all / f_all,
        e_all / o_all
    );
    println!(
        "per mailbox, p50 / p90 (ms):         engine {:.0} / {:.0}; floor {:.1} / {:.1}; without login {:.1} / {:.1}",
        percentile(engine_ms.clone(), 50),
        percentile(engine_ms, 90),
        percentile(floor_ms.clone(), 50),
        percentile(floor_ms, 90),
        percentile(open_ms.clone(), 50),
        percentile(open_ms, 90)
    );
    println!(
        "floor's DAV part, p50 / p90 (ms):    {:.1} / {:.1}; without login {:.1} / {:.1}",
        percentile(floor_dav_ms.clone(), 50),
        percentile(floor_dav_ms, 90),
        percentile(open_dav_ms.clone(), 50),
        percentile(open_dav_ms, 90)
    );
    println!(
        "floor requests per mailbox:          {floor_requests:.1} after the login ({:.1} without login), at {concurrency} at a time",
        open_requests
    );
    println!(
        "per no-change cycle:                 {:.1} database round trips ({:.1} of them without statement: pool checks, preparations), {:.1} transactions (idle polling of {idle_trips:.1} round trips/s, {idle_xacts:.1} transactions/s subtracted); runs {:?}",
        median(trips.clone()),
        median(empty),
        median(xacts.clone()),
        trips.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>()
    );
    println!(
        "server CPU per mailbox per cycle:    {:.1} ms (runs {:?})",
        median(cpu_cycle.clone()),
        cpu_cycle
            .iter()
            .map(|c| format!("{c:.1}"))
            .collect::<Vec<_>>()
    );
    println!("server peak memory (MiB):            {}", memory.join(", "));
    if show_statements {
        statements.sort_by(|a, b| b.cmp(a));
        println!("statements of the last cycle of all, per mailbox:");
        for (k, sql) in statements {
            let sql: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let sql: String = sql.chars().take(150).collect();
            println!("  {:>6.2}  {sql}", k as f64 / n as f64);
        }
    }
    drop(killed);
}
