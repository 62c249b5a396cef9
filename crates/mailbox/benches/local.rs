//! Local mailbox benchmark (BENCHMARKS.md "Local mailbox"): a sync with
//! nothing changed over N contacts + N events + N to-dos, i.e. one
//! `changes_since` per collection from the stored state. Run at two sizes
//! to see the per-item cost.
//!
//!   cargo bench -p crmsync-mailbox --bench local -- [--items N] [--runs R]
//!
//! N per collection (default 10000); R no-change runs (default 7; raise it
//! to profile the no-change phase, e.g. under `perf record`).

use std::time::{Duration, Instant};

use crmsync_mailbox::{LocalConfig, LocalMailbox, Mailbox};

fn item(kind: &str, i: usize) -> String {
    match kind {
        "contacts" => format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:c{i}\r\nFN:Person {i}\r\nN:{i};Person;;;\r\nEMAIL:p{i}@example.com\r\nEND:VCARD\r\n"),
        "calendar" => format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nBEGIN:VEVENT\r\nUID:e{i}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20270101T090000Z\r\nDTEND:20270101T100000Z\r\nSUMMARY:Meeting {i}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"),
        _ => format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nBEGIN:VTODO\r\nUID:t{i}\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:Task {i}\r\nEND:VTODO\r\nEND:VCALENDAR\r\n"),
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let n: usize = argv
        .iter()
        .position(|a| a == "--items")
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let repeat: usize = argv
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let mailbox = LocalMailbox::open(&LocalConfig {
        root: dir.path().to_path_buf(),
    })
    .unwrap();
    let collections = ["contacts", "calendar", "tasks"];
    for c in collections {
        let ext = if c == "contacts" { "vcf" } else { "ics" };
        for i in 0..n {
            std::fs::write(dir.path().join(c).join(format!("{i}.{ext}")), item(c, i)).unwrap();
        }
    }
    let t = Instant::now();
    let mut states = Vec::new();
    for c in collections {
        let changes = mailbox.changes_since(c, None).await.unwrap();
        assert_eq!(changes.changed.len(), n);
        states.push(changes.state);
    }
    let first = t.elapsed();
    // Past the "racily clean" window, so that the no-change scans read nothing.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Like the agent, keep the state each scan returns: this one re-reads the
    // items that were racily clean at the first scan and stamps them clean.
    for (c, s) in collections.iter().zip(states.iter_mut()) {
        *s = mailbox.changes_since(c, Some(s)).await.unwrap().state;
    }
    let mut runs = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        for (c, s) in collections.iter().zip(&states) {
            let changes = mailbox.changes_since(c, Some(s)).await.unwrap();
            assert!(changes.changed.is_empty() && changes.deleted.is_empty());
        }
        runs.push(t.elapsed());
    }
    runs.sort();
    let median = runs[runs.len() / 2];
    // As the agent scans: the three collections side by side.
    let mut side_by_side = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        let scans = collections
            .iter()
            .zip(&states)
            .map(|(c, s)| mailbox.changes_since(c, Some(s)));
        for changes in futures_util::future::join_all(scans).await {
            assert!(changes.unwrap().is_empty());
        }
        side_by_side.push(t.elapsed());
    }
    side_by_side.sort();
    let concurrent = side_by_side[side_by_side.len() / 2];
    println!("local mailbox, {} items ({n} per collection)", 3 * n);
    println!(
        "first scan (reads every file):       {:>8.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "no-change sync, median of {repeat}:{:>14.1} ms  ({:.2} µs per item)",
        median.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / (3 * n) as f64
    );
    println!(
        "no-change sync, collections side by side (as the agent scans), median of {repeat}: {:.1} ms",
        concurrent.as_secs_f64() * 1e3
    );
}
