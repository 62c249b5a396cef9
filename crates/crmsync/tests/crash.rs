//! The crash test of issue 4 (R-T4): `crmsync sync` is killed with SIGKILL
//! at random points of a 2,000-item synchronization, 20 times, with edits
//! on both sides in between; then it runs to completion. Afterwards there
//! is no duplicate on either side and no edit is lost.
//!
//! The server and the agent are the real binary, each its own process, on
//! a temporary SQLite database and a temporary local mailbox.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod support;
use std::time::{Duration, Instant};
use support::{Server, BIN};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Items created on each side: CRM contacts to deliver, and tracked vCards
/// in the mailbox to push.
const PER_SIDE: usize = 1_000;
const KILLS: usize = 20;

/// Every CRM contact, page by page.
async fn all_contacts(crm: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = "/api/v1/contacts?limit=1000".to_string();
    loop {
        let page = crm.call(reqwest::Method::GET, &path, None).await;
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/contacts?limit=1000&cursor={cursor}"),
            None => return out,
        }
    }
}

fn mailbox_card(i: usize) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:mb-{i}\r\nFN:Mailbox M{i}\r\nN:M{i};Mailbox;;;\r\nEMAIL:m{i}@example.com\r\nCATEGORIES:Tracked to CRM\r\nEND:VCARD\r\n"
    )
}

/// (file, X-CRM-ID) of every vCard in the mailbox.
fn mailbox_links(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "vcf") {
            let text = std::fs::read_to_string(&path).unwrap();
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("X-CRM-ID:"))
                .map(|s| s.trim().to_string());
            out.push((path, id));
        }
    }
    out.sort();
    out
}

/// The value of a vCard property (first line starting with `name:`).
fn property(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|s| s.trim().to_string())
}

/// Another program edits a vCard: NOTE set to `note`, written atomically.
fn edit_note(path: &Path, note: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.starts_with("NOTE:"))
        .collect();
    let end = lines.iter().position(|l| *l == "END:VCARD").unwrap();
    let new = format!("NOTE:{note}");
    lines.insert(end, &new);
    let tmp = path.with_extension("edit-tmp");
    std::fs::write(&tmp, lines.join("\r\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn run_sync(config: &Path) -> Child {
    Command::new(BIN)
        .args(["sync", "--json", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_t4_sigkill_during_a_2000_item_sync_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let crm = &server;

    // 1,000 contacts in the CRM, 1,000 tracked vCards in the mailbox.
    for chunk in (0..PER_SIDE).collect::<Vec<_>>().chunks(25) {
        let calls = chunk.iter().map(|i| {
            crm.call(
                reqwest::Method::POST,
                "/api/v1/contacts",
                Some(json!({"first_name": "Crm", "last_name": format!("C{i}")})),
            )
        });
        futures_util::future::join_all(calls).await;
    }
    let root = dir.path().join("mailbox");
    let contacts_dir = root.join("contacts");
    std::fs::create_dir_all(&contacts_dir).unwrap();
    for i in 0..PER_SIDE {
        std::fs::write(contacts_dir.join(format!("mb-{i}.vcf")), mailbox_card(i)).unwrap();
    }
    let config = server.agent_config(dir.path(), "crash", &root);

    // How long one uninterrupted sync of everything would take is unknown on
    // this machine: kill at random points up to a bound that grows while
    // syncs keep finishing before the kill.
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut bound_ms = 3_000u64;
    let mut crm_edits: BTreeMap<String, String> = BTreeMap::new(); // id -> job_title
    let mut mailbox_edits: BTreeMap<String, String> = BTreeMap::new(); // id -> notes
    let mut killed_mid_sync = 0;
    for k in 0..KILLS {
        let mut child = run_sync(&config);
        let at = Duration::from_millis(rng.gen_range(30..bound_ms));
        let t = Instant::now();
        let mut finished = false;
        while t.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if finished {
            bound_ms = (bound_ms / 2).max(100);
        } else {
            child.kill().unwrap(); // SIGKILL
            killed_mid_sync += 1;
        }
        let status = child.wait().unwrap();
        if finished {
            assert!(status.success(), "sync {k} failed");
        }

        // Edits on both sides between the runs, on items already linked,
        // each to its own field so that R-F5 keeps both.
        let linked: Vec<(PathBuf, String)> = mailbox_links(&contacts_dir)
            .into_iter()
            .filter_map(|(p, id)| Some((p, id?)))
            .collect();
        if linked.len() >= 2 {
            let (_, id) = &linked[rng.gen_range(0..linked.len())];
            let title = format!("crm-{k}");
            crm.call(
                reqwest::Method::PATCH,
                &format!("/api/v1/contacts/{id}"),
                Some(json!({"job_title": title})),
            )
            .await;
            crm_edits.insert(id.clone(), title);
            let (path, id) = &linked[rng.gen_range(0..linked.len())];
            let note = format!("mailbox-{k}");
            edit_note(path, &note);
            mailbox_edits.insert(id.clone(), note);
        }
    }
    assert!(
        killed_mid_sync >= KILLS / 2,
        "only {killed_mid_sync} of {KILLS} runs were killed mid-sync"
    );

    // Then to completion: until a sync has nothing left to do.
    let mut quiet = false;
    for _ in 0..6 {
        let out = run_sync(&config).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let pushed: u64 = report["pushed"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        if report["written_to_mailbox"] == 0 && pushed == 0 && report["errors"] == json!([]) {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "the agent kept finding work after the kills");

    // No duplicates in the CRM: every name once.
    let contacts = all_contacts(crm).await;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for c in &contacts {
        *names
            .entry(c["last_name"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let dupes: Vec<_> = names.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicated in the CRM: {dupes:?}");
    assert_eq!(contacts.len(), 2 * PER_SIDE, "CRM contacts");

    // No duplicates in the mailbox: every CRM contact exactly once, linked.
    let links = mailbox_links(&contacts_dir);
    assert_eq!(links.len(), 2 * PER_SIDE, "mailbox items");
    let ids: BTreeSet<String> = links.iter().filter_map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), 2 * PER_SIDE, "mailbox items linked once each");
    let by_id: BTreeMap<&str, &Value> = contacts
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c))
        .collect();
    for id in &ids {
        assert!(
            by_id.contains_key(id.as_str()),
            "{id} in the mailbox, not in the CRM"
        );
    }

    // No lost edit: the last edit of each side is on both sides.
    let file_of: BTreeMap<&str, &PathBuf> = links
        .iter()
        .filter_map(|(p, id)| Some((id.as_deref()?, p)))
        .collect();
    for (id, title) in &crm_edits {
        assert_eq!(
            by_id[id.as_str()]["job_title"],
            title.as_str(),
            "CRM edit of {id}"
        );
        let text = std::fs::read_to_string(file_of[id.as_str()]).unwrap();
        assert_eq!(
            property(&text, "TITLE").as_deref(),
            Some(title.as_str()),
            "CRM edit of {id} in the mailbox"
        );
    }
    for (id, note) in &mailbox_edits {
        assert_eq!(
            by_id[id.as_str()]["notes"],
            note.as_str(),
            "mailbox edit of {id} in the CRM"
        );
    }
}
