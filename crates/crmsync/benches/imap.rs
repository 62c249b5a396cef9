//! IMAP benchmark (issue 6, BENCHMARKS.md "IMAP bulk tracking" and "IMAP
//! no-change sync"): the real `crmsync` binary (server and agent as
//! separate processes) and a real Dovecot on loopback (the test fixture of
//! crates/imap/tests/support).
//!
//! 1. Bulk tracking: N messages of about 20 KB, all marked `$CRMTracked` by
//!    another client, one `crmsync sync`: its wall time and peak RSS
//!    (the agent process's own VmHWM, read while it runs), against the floor of
//!    the same run: a plain `UID FETCH 1:* BODY.PEEK[]` of the folder plus
//!    the server storing the same raw bytes through its bulk API (track
//!    pushes of 100 from a client of its own, Message-IDs changed so
//!    nothing is deduplicated). Runs interleaved, the floor timed first in
//!    even runs and the agent first in odd ones; medians.
//! 2. No-change sync on an M-message folder, with CONDSTORE/QRESYNC and
//!    without: the engine's time (`elapsed_ms` of `crmsync sync --json`),
//!    the whole process, and every IMAP command the agent sent (through a
//!    counting proxy), against a bare SELECT of the folder.
//!
//!   cargo bench -p crmsync --bench imap -- [--sizes 2500,10000] [--runs 3] [--nochange 10000,50000] [--large 1,8,24]

mod common;
#[path = "../../imap/tests/support/mod.rs"]
mod dovecot;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use dovecot::{Dovecot, Flavor};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{arg_list, median};
use support::{Server, BIN};
const FOLDER: &str = "Bulk";

/// A message of about 20 KB; `domain` in its Message-ID (same length for
/// the agent's and the floor's copies).
fn message(i: usize, domain: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Lee <lee@example.org>\r\nTo: Me <me@example.com>\r\nSubject: Bulk message {i}\r\nMessage-ID: <bulk{i}@{domain}>\r\nDate: Mon, 04 Jan 2027 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let line =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    while m.len() < 20_000 {
        m.push_str(line);
    }
    m.into_bytes()
}

fn agent_config(dir: &Path, base: &str, token: &str, imap_port: u16) -> std::path::PathBuf {
    let root = dir.join("local");
    std::fs::create_dir_all(&root).unwrap();
    let pw_file = dir.join("imap-password");
    std::fs::write(&pw_file, dovecot::PASSWORD).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[crm]\nurl = \"{base}\"\ntoken = \"{token}\"\n[client]\nname = \"bench\"\ncache = \"{}\"\n[mailbox.local]\nroot = \"{}\"\n[mailbox.imap]\nhost = \"127.0.0.1\"\nport = {imap_port}\nsecurity = \"none\"\nusername = \"{}\"\npassword_file = \"{}\"\ninbox = \"{FOLDER}\"\ntracked_folders = []\n[sync]\ninterval = \"15m\"\n",
            dir.join("cache.db").display(),
            root.display(),
            dovecot::USER,
            pw_file.display()
        ),
    )
    .unwrap();
    config
}

/// `crmsync sync --json`: (wall time, report, the process's peak RSS in
/// MiB).
fn sync(config: &Path) -> (Duration, Value, f64) {
    let r = common::sync_process(BIN, config);
    (r.wall, r.report, r.peak_rss_mib)
}

/// Floor 1: a plain `UID FETCH 1:* BODY.PEEK[]` of the folder over a raw
/// connection, reading the answer as bytes.
async fn plain_fetch(port: u16) -> (Duration, usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let _ = s.read(&mut buf).await.unwrap();
    async fn until(s: &mut TcpStream, buf: &mut [u8], tag: &[u8]) -> usize {
        let mut total = 0usize;
        // Every answer starts a line: the tag may come first.
        let mut tail: Vec<u8> = b"\r\n".to_vec();
        loop {
            let n = s.read(buf).await.unwrap();
            assert!(n > 0, "closed");
            total += n;
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(tag.len()).any(|w| w == tag) {
                return total;
            }
            let keep = tail.len().saturating_sub(tag.len());
            tail.drain(..keep);
        }
    }
    let pw = dovecot::PASSWORD;
    s.write_all(format!("a LOGIN {} {{{}+}}\r\n{pw}\r\n", dovecot::USER, pw.len()).as_bytes())
        .await
        .unwrap();
    until(&mut s, &mut buf, b"\r\na OK").await;
    s.write_all(format!("b EXAMINE \"{FOLDER}\"\r\n").as_bytes())
        .await
        .unwrap();
    until(&mut s, &mut buf, b"\r\nb OK").await;
    let t = Instant::now();
    s.write_all(b"c UID FETCH 1:* BODY.PEEK[]\r\n")
        .await
        .unwrap();
    let bytes = until(&mut s, &mut buf, b"\r\nc OK").await;
    (t.elapsed(), bytes)
}

/// Floor 2: the server storing the same raw bytes through its bulk API
/// (track pushes of 100 from a client of its own).
async fn server_store(base: &str, admin: &str, n: usize) -> Duration {
    let http = reqwest::Client::new();
    let user: Value = http
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(admin)
        .json(&json!({"email": "floor@example.com", "name": "Floor"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = user["token"].as_str().unwrap().to_string();
    let reg: Value = http
        .post(format!("{base}/api/v1/sync/clients"))
        .bearer_auth(&token)
        .json(&json!({"name": "floor"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = reg["client_id"]
        .as_str()
        .or(reg["id"].as_str())
        .unwrap_or_else(|| panic!("{reg}"))
        .to_string();
    let bodies: Vec<Value> = (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            let ops: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    let mid = format!("bulk{i}@floor-b.example");
                    json!({"op_id": uuid_like(i), "kind": "track", "set": "emails",
                        "raw": base64::engine::general_purpose::STANDARD.encode(message(i, "floor-b.example")),
                        "item_uid": mid, "message_id": mid, "draft": false, "fields": {}})
                })
                .collect();
            json!({"client_id": client, "ops": ops})
        })
        .collect();
    let t = Instant::now();
    for body in &bodies {
        let r = http
            .post(format!("{base}/api/v1/sync/push"))
            .bearer_auth(&token)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["status"] == "ok"),
            "{v}"
        );
    }
    t.elapsed()
}

fn uuid_like(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

struct BulkRun {
    agent: f64,
    rss: f64,
    fetch: f64,
    store: f64,
}

/// One run: the floor (FETCH, then the server storing the same bytes) and
/// the agent, in the order given, so that runs can alternate which one
/// meets a fresher machine and an emptier CRM database.
async fn bulk_run(n: usize, agent_first: bool) -> BulkRun {
    let dir = tempfile::tempdir().unwrap();
    let dovecot = Dovecot::start(Flavor::Qresync).await;
    dovecot.seed_maildir_with(FOLDER, n, |i| message(i, "bench-a.example"));
    let mut other = dovecot.client().await;
    other.select(FOLDER).await;
    other.cmd("UID STORE 1:* +FLAGS.SILENT ($CRMTracked)").await;
    other.logout().await;
    let server = Server::start(dir.path()).await;
    let (base, admin) = (server.base.clone(), server.token.clone());
    let config = agent_config(dir.path(), &base, &admin, dovecot.port);
    let agent = || {
        let (took, report, rss) = sync(&config);
        assert_eq!(
            report["pushed"]["track"].as_u64(),
            Some(n as u64),
            "{report}"
        );
        (took, rss)
    };
    let floor = || async {
        let (fetch, bytes) = plain_fetch(dovecot.port).await;
        assert!(bytes > n * 20_000, "{bytes}");
        (fetch, server_store(&base, &admin, n).await)
    };
    let ((took, rss), (fetch, store)) = if agent_first {
        let a = agent();
        (a, floor().await)
    } else {
        let f = floor().await;
        (agent(), f)
    };
    BulkRun {
        agent: took.as_secs_f64(),
        rss,
        fetch: fetch.as_secs_f64(),
        store: store.as_secs_f64(),
    }
}

/// A message of about `mib` MiB: a text part and a base64 attachment.
fn large_message(mib: usize) -> Vec<u8> {
    let mut m = b"From: Lee <lee@example.org>\r\nTo: Me <me@example.com>\r\nSubject: Large\r\nMessage-ID: <large@bench.example>\r\nDate: Mon, 04 Jan 2027 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n".to_vec();
    let line = [b'Q'; 76];
    while m.len() < mib * 1024 * 1024 {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}

/// One marked message of `mib` MiB tracked by `crmsync sync`: (seconds,
/// the agent's peak RSS in MiB).
async fn large_run(mib: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let dovecot = Dovecot::start(Flavor::Qresync).await;
    dovecot.seed_maildir_with(FOLDER, 1, |_| large_message(mib));
    let mut other = dovecot.client().await;
    other.select(FOLDER).await;
    other.cmd("UID STORE 1:* +FLAGS.SILENT ($CRMTracked)").await;
    other.logout().await;
    let server = Server::start(dir.path()).await;
    let config = agent_config(dir.path(), &server.base, &server.token, dovecot.port);
    let (took, report, rss) = sync(&config);
    assert_eq!(report["pushed"]["track"].as_u64(), Some(1), "{report}");
    (took.as_secs_f64(), rss)
}

/// The IMAP command name of a line a client sends (`SELECT`, `UID FETCH`, …).
fn imap_command(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let _tag = words.next();
    let verb = words.next()?.to_ascii_uppercase();
    let name = if verb == "UID" {
        format!("UID {}", words.next().unwrap_or("").to_uppercase())
    } else {
        verb
    };
    name.chars()
        .all(|c| c.is_ascii_alphabetic() || c == ' ')
        .then_some(name)
}

async fn no_change(flavor: Flavor, m: usize) {
    let dir = tempfile::tempdir().unwrap();
    let dovecot = Dovecot::start(flavor).await;
    dovecot.seed_maildir_with(FOLDER, m, |i| dovecot::message(&format!("seed{i}"), "Seed"));
    for f in ["Sent", "Drafts"] {
        dovecot.seed_maildir(f, 0);
    }
    let mut other = dovecot.client().await;
    // Dovecot indexes the folder once (as any first client would).
    let t = Instant::now();
    other.select(FOLDER).await;
    let first_select = t.elapsed();
    let server = Server::start(dir.path()).await;
    let (base, admin) = (server.base.clone(), server.token.clone());
    let (port, seen) = common::counting_proxy(dovecot.port, imap_command).await;
    let config = agent_config(dir.path(), &base, &admin, port);
    let (first, _, first_rss) = sync(&config);
    let mut engine = Vec::new();
    let mut process = Vec::new();
    let mut commands = Vec::new();
    for _ in 0..5 {
        seen.lock().unwrap().clear();
        let (took, report, _) = sync(&config);
        assert!(report["pushed"].as_object().is_none_or(|p| p.is_empty()));
        engine.push(report["elapsed_ms"].as_f64().unwrap());
        process.push(took.as_secs_f64() * 1e3);
        commands = seen.lock().unwrap().clone();
    }
    let mut selects = Vec::new();
    for _ in 0..5 {
        other.cmd("UNSELECT").await;
        let t = Instant::now();
        other.select(FOLDER).await;
        selects.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "no-change sync, {flavor:?}, {m} messages: engine {:.1} ms ({:.2} µs per message), whole process {:.1} ms; a bare SELECT {:.1} ms (first, indexing: {:.0} ms); first sync {:.1} s, peak RSS {first_rss:.1} MiB",
        median(engine.clone()),
        median(engine) * 1e3 / m as f64,
        median(process),
        median(selects),
        first_select.as_secs_f64() * 1e3,
        first.as_secs_f64()
    );
    println!(
        "  IMAP commands of one no-change sync: {}",
        commands.join(", ")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = arg_list("--sizes", &[2_500, 10_000]);
    let runs = arg_list("--runs", &[3])[0];
    let nochange = arg_list("--nochange", &[10_000, 50_000]);
    println!("IMAP benchmark: bulk tracking of {sizes:?} messages of about 20 KB, {runs} interleaved runs");
    let mut results: Vec<Vec<BulkRun>> = sizes.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (k, &n) in sizes.iter().enumerate() {
            // Odd runs time the agent first, even runs the floor first.
            let agent_first = run % 2 == 1;
            let r = bulk_run(n, agent_first).await;
            println!(
                "  run {run}, {n} ({} first): agent {:.2} s (peak RSS {:.1} MiB); floor: FETCH {:.2} s + server store {:.2} s = {:.2} s; ratio {:.2}",
                if agent_first { "agent" } else { "floor" },
                r.agent,
                r.rss,
                r.fetch,
                r.store,
                r.fetch + r.store,
                r.agent / (r.fetch + r.store)
            );
            results[k].push(r);
        }
    }
    for (k, &n) in sizes.iter().enumerate() {
        let rs = &results[k];
        let agent = median(rs.iter().map(|r| r.agent).collect());
        let fetch = median(rs.iter().map(|r| r.fetch).collect());
        let store = median(rs.iter().map(|r| r.store).collect());
        let ratio = median(rs.iter().map(|r| r.agent / (r.fetch + r.store)).collect());
        let rss = rs.iter().map(|r| r.rss).fold(0.0, f64::max);
        println!(
            "bulk tracking {n}: agent {agent:.2} s ({:.0} µs per message), floor FETCH {fetch:.2} s + store {store:.2} s, median ratio {ratio:.2}; peak RSS {rss:.1} MiB",
            agent * 1e6 / n as f64
        );
    }
    for &m in &nochange {
        for flavor in [Flavor::Qresync, Flavor::Plain] {
            no_change(flavor, m).await;
        }
    }
    for &mib in &arg_list("--large", &[1, 8, 24]) {
        let (took, rss) = large_run(mib).await;
        println!(
            "one {mib} MiB message tracked: {took:.2} s, agent peak RSS {rss:.1} MiB ({:.1}x the message)",
            rss / mib as f64
        );
    }
}
