//! Agent benchmark (issue 4, BENCHMARKS.md "Local mailbox"): the real
//! `crmsync` binary, a server on SQLite and an agent on a local mailbox,
//! each a separate process.
//!
//! 1. initial sync of N contacts + N appointments + N to-dos into an empty
//!    mailbox (`crmsync sync`), with its wall time and peak RSS (the
//!    process's own VmHWM, read while it runs);
//! 2. syncs with nothing changed: the engine's own time (`elapsed_ms` of
//!    `crmsync sync --json`) and the whole process;
//! 3. `crmsync agent` running: one edit of a contact file until the CRM has
//!    it (the notification path of R-T2), and the agent's RSS (VmHWM) with
//!    3N items.
//!
//!   cargo bench -p crmsync --bench agent -- [--items N] [--edits E] [--compare BIN]
//!
//! N per kind (default 10000), E edits timed (default 5). `--compare BIN`
//! runs the no-change syncs alternately with this build and another
//! `crmsync` binary (e.g. one built from an earlier commit) on the same
//! mailbox, cache and server, and reports both medians and their ratio.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
#[path = "../tests/support/mod.rs"]
mod support;
use std::time::{Duration, Instant};
use support::{Killed, Server, BIN};

use common::median;
use serde_json::Value;

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

fn sync(config: &Path) -> common::SyncRun {
    common::sync_process(BIN, config)
}

#[tokio::main]
async fn main() {
    let n = arg("--items", 10_000);
    let edits = arg("--edits", 5);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (base, token) = (server.base.clone(), server.token.clone());
    let http = reqwest::Client::new();

    let (seed, first_contact) = common::seed_crm(&base, &token, n).await;

    let root = dir.path().join("mailbox");
    let config = server.agent_config(dir.path(), "bench", &root);

    println!(
        "agent benchmark: {} items ({n} per kind); seeding the CRM took {:.1} s",
        3 * n,
        seed.as_secs_f64()
    );
    let run = sync(&config);
    let (initial, report) = (run.wall, run.report);
    let written = report["written_to_mailbox"].as_u64().unwrap();
    assert_eq!(written as usize, 3 * n, "{report}");
    println!(
        "initial sync (crmsync sync, whole process): {:>9.2} s  ({:.0} µs per item), peak RSS {:.1} MiB",
        initial.as_secs_f64(),
        initial.as_secs_f64() * 1e6 / (3 * n) as f64,
        run.peak_rss_mib
    );
    // Past the local backend's "racily clean" window, then one sync to stamp
    // every file clean, as a running agent would.
    std::thread::sleep(Duration::from_millis(2100));
    sync(&config);
    let other: Option<String> = std::env::args().skip_while(|a| a != "--compare").nth(1);
    let mut bins = vec![BIN.to_string()];
    bins.extend(other);
    let mut engine = vec![Vec::new(); bins.len()];
    let mut process = vec![Vec::new(); bins.len()];
    for _ in 0..7 {
        // Alternated, so both binaries see the same machine load.
        for (i, bin) in bins.iter().enumerate() {
            let common::SyncRun {
                wall: took, report, ..
            } = common::sync_process(bin, &config);
            assert_eq!(report["written_to_mailbox"], 0, "{report}");
            engine[i].push(report["elapsed_ms"].as_f64().unwrap());
            process[i].push(took.as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<(f64, f64)> = engine
        .into_iter()
        .zip(process)
        .map(|(e, p)| (median(e), median(p)))
        .collect();
    for (bin, (e, p)) in bins.iter().zip(&medians) {
        println!(
            "no-change sync, median of 7: engine {e:>7.1} ms, whole process {p:>7.1} ms  ({bin})"
        );
    }
    if let [(this, _), (that, _)] = medians[..] {
        println!(
            "no-change sync, engine: this build / the other = {:.2}",
            this / that
        );
    }
    // Where a no-change sync spends its time (the engine's debug events).
    let out = Command::new(BIN)
        .args(["sync", "--config"])
        .arg(&config)
        .env("CRMSYNC_LOG", "crmsync_agent=debug")
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.contains("crmsync_agent::engine") {
            println!("  {}", strip_ansi(line).trim());
        }
    }

    // A running agent: edit one contact file, wait until the CRM has it.
    let agent = Killed(
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let contact = first_contact;
    let file = find_contact_file(&root, &contact);
    // Let the agent's start-up sync finish before timing edits.
    std::thread::sleep(Duration::from_secs(3));
    let mut latencies = Vec::new();
    for e in 0..edits {
        let title = format!("Edit {e}");
        let text = std::fs::read_to_string(&file).unwrap();
        let edited = text.replace("END:VCARD", &format!("TITLE:{title}\r\nEND:VCARD"));
        let edited = strip_title_except(&edited, &title);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, edited).unwrap();
        let t = Instant::now();
        std::fs::rename(&tmp, &file).unwrap();
        loop {
            let v: Value = http
                .get(format!("{base}/api/v1/contacts/{contact}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["job_title"] == title.as_str() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "edit {e} never reached the CRM: {v}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(700));
    }
    println!(
        "edit in the mailbox -> CRM (agent running), median of {edits}: {:.0} ms (min {:.0}, max {:.0})",
        median(latencies.clone()),
        latencies.iter().cloned().fold(f64::MAX, f64::min),
        latencies.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "agent peak RSS with {} items (VmHWM of crmsync agent): {:.1} MiB",
        3 * n,
        vm_hwm_mib(agent.0.id())
    );
}

/// The log line without its colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The mailbox file of a CRM contact (its X-CRM-ID line).
fn find_contact_file(root: &Path, id: &str) -> PathBuf {
    for entry in std::fs::read_dir(root.join("contacts")).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::read_to_string(&path).unwrap().contains(id) {
            return path;
        }
    }
    panic!("contact {id} not in the mailbox");
}

/// Drops TITLE lines other than the one just added.
fn strip_title_except(text: &str, keep: &str) -> String {
    text.split("\r\n")
        .filter(|l| !l.starts_with("TITLE:") || *l == format!("TITLE:{keep}"))
        .collect::<Vec<_>>()
        .join("\r\n")
}
