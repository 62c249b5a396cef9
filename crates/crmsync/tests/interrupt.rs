//! R-T4 the way isync/mbsync's run-tests checks it: one scenario with work
//! on both sides, interrupted after every durable step of the agent's work
//! in turn (`CRMSYNC_TEST_FAULT_AFTER_STEP=k`, see `crates/agent/src/fault.rs`),
//! then resumed. After each resume both sides must equal what one
//! uninterrupted sync gives: no duplicate, no lost edit.
//!
//! Each run starts from a copy of one template (the server's SQLite
//! database, the agent's cache, the mailbox folder), served by the real
//! binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;
use support::{Server, BIN};

use serde_json::{json, Value};

const FAULT_ENV: &str = "CRMSYNC_TEST_FAULT_AFTER_STEP";
const AGENT: &str = "laptop";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `crmsync sync --json`, with `fault` as the step to stop after.
fn sync(config: &Path, fault: Option<u64>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["sync", "--json", "--config"])
        .arg(config)
        .env_remove(FAULT_ENV);
    if let Some(k) = fault {
        cmd.env(FAULT_ENV, k.to_string());
    }
    cmd.output().unwrap()
}

/// A sync without fault; it must succeed. Returns its report.
fn sync_ok(config: &Path, when: &str) -> Value {
    let out = sync(config, None);
    assert!(
        out.status.success(),
        "{when}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vcard(uid: &str, first: &str, last: &str, extra: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:{uid}\r\nFN:{first} {last}\r\nN:{last};{first};;;\r\n{extra}END:VCARD\r\n"
    )
}

/// The value of an item property (first line starting with `name:`).
fn property(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|s| s.trim().to_string())
}

/// The file in `dir` whose text contains `needle`.
fn file_with(dir: &Path, needle: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no item with {needle:?} in {}", dir.display()))
}

/// Another program edits an item: `line` added before its END line.
fn add_line(path: &Path, line: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let at = text.rfind("END:").unwrap();
    let edited = format!("{}{line}\r\n{}", &text[..at], &text[at..]);
    let tmp = path.with_extension("edit-tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

const MESSAGE: &str = "Message-ID: <offer-1@example.org>\r\nFrom: Lee <lee@example.org>\r\nTo: Me <me@example.com>\r\nSubject: Offer\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, here is the offer.\r\n";

/// The template of every run in `dir`: an organization and an agent that
/// synchronized once, then work on both sides. Returns the admin's token.
async fn template(dir: &Path) -> String {
    let server = Server::start(dir).await;
    let root = dir.join("mailbox");
    for sub in [
        "contacts", "calendar", "tasks", "mail/cur", "mail/new", "mail/tmp",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let post = |set: &'static str, body: Value| {
        let server = &server;
        async move {
            server
                .call(reqwest::Method::POST, &format!("/api/v1/{set}"), Some(body))
                .await["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let edited_in_crm = post(
        "contacts",
        json!({"first_name": "Crm", "last_name": "Edited"}),
    )
    .await;
    post(
        "contacts",
        json!({"first_name": "Mailbox", "last_name": "Edited", "email": "lee@example.org"}),
    )
    .await;
    let task = post("tasks", json!({"subject": "Deleted in the CRM"})).await;
    let config = server.agent_config(dir, AGENT, &root);
    let first = sync_ok(&config, "first sync");
    assert_eq!(first["written_to_mailbox"], 3, "{first}");

    // CRM: a contact created, a linked contact edited, a linked task deleted.
    post(
        "contacts",
        json!({"first_name": "Crm", "last_name": "Created"}),
    )
    .await;
    server
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/contacts/{edited_in_crm}"),
            Some(json!({"job_title": "Edited in the CRM"})),
        )
        .await;
    server
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tasks/{task}"),
            None,
        )
        .await;
    // Mailbox: a contact marked for tracking, a linked contact edited, an
    // email marked for tracking ($CRMTracked, Dovecot's keyword file).
    let contacts = root.join("contacts");
    std::fs::write(
        contacts.join("new-in-mailbox.vcf"),
        vcard(
            "new-in-mailbox",
            "Mailbox",
            "Created",
            "CATEGORIES:Tracked to CRM\r\n",
        ),
    )
    .unwrap();
    add_line(
        &file_with(&contacts, "FN:Mailbox Edited"),
        "NOTE:Edited in the mailbox",
    );
    std::fs::write(root.join("mail/dovecot-keywords"), "0 $CRMTracked\n").unwrap();
    std::fs::write(root.join("mail/cur/1764000000.offer.host:2,Sa"), MESSAGE).unwrap();
    server.token.clone()
}

/// Both sides of a run, without the ids and versions a run gives anew.
#[derive(Debug, PartialEq)]
struct Sides {
    /// CRM: per set, each record's user-visible fields (sorted, duplicates kept).
    crm: BTreeMap<&'static str, Vec<String>>,
    /// Mailbox: per collection, each item's properties and whether its
    /// X-CRM-ID names a CRM record of the run.
    mailbox: BTreeMap<String, Vec<String>>,
}

/// The fields of a record a user sees, in the set's order (ids, versions
/// and times left out).
fn shown(record: &Value) -> String {
    let obj = record.as_object().unwrap();
    let skip = [
        "id",
        "version",
        "created_at",
        "modified_at",
        "owner",
        "received_at",
    ];
    obj.iter()
        .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn sides(server: &Server, root: &Path) -> Sides {
    let mut crm = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for set in ["contacts", "tasks", "emails"] {
        let page = server
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/{set}?limit=1000"),
                None,
            )
            .await;
        let mut shown_records = Vec::new();
        for r in page["items"].as_array().unwrap() {
            ids.insert(r["id"].as_str().unwrap().to_string());
            shown_records.push(shown(r));
        }
        shown_records.sort();
        crm.insert(set, shown_records);
    }
    let mut mailbox = BTreeMap::new();
    let mut linked = BTreeSet::new();
    for collection in ["contacts", "tasks"] {
        let mut items = Vec::new();
        for entry in std::fs::read_dir(root.join(collection)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let crm_id = property(&text, "X-CRM-ID");
            if let Some(id) = &crm_id {
                assert!(linked.insert(id.clone()), "{id} linked twice: {text}");
            }
            let props: Vec<String> = ["FN", "TITLE", "NOTE", "SUMMARY", "CATEGORIES"]
                .iter()
                .filter_map(|p| Some(format!("{p}={}", property(&text, p)?)))
                .collect();
            let link = match crm_id {
                Some(id) if ids.contains(&id) => "linked",
                Some(_) => "linked to a missing record",
                None => "not linked",
            };
            items.push(format!("{} ({link})", props.join(" ")));
        }
        items.sort();
        mailbox.insert(collection.to_string(), items);
    }
    let mut messages = Vec::new();
    for sub in ["cur", "new"] {
        for entry in std::fs::read_dir(root.join("mail").join(sub)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let flags = name.split_once(":2,").map(|(_, f)| f.to_string());
            messages.push(format!("{sub} flags={flags:?}"));
        }
    }
    messages.sort();
    mailbox.insert("mail".to_string(), messages);
    Sides { crm, mailbox }
}

/// A copy of the template in `dir`, served; the server and the agent's
/// configuration.
async fn start_run(template: &Path, dir: &Path, token: &str) -> (Server, PathBuf) {
    copy_dir(template, dir);
    let db = format!("sqlite://{}", dir.join("crm.db").display());
    let server = Server::serve(&db, token.to_string()).await;
    let config = server.agent_config(dir, AGENT, &dir.join("mailbox"));
    (server, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_t4_interrupted_after_every_step_resumes_without_loss_or_duplicate_local() {
    let tmp = tempfile::tempdir().unwrap();
    let template_dir = tmp.path().join("template");
    std::fs::create_dir_all(&template_dir).unwrap();
    let token = template(&template_dir).await;

    // What one uninterrupted sync gives (a second one changes nothing).
    let (server, config) = start_run(&template_dir, &tmp.path().join("whole"), &token).await;
    let report = sync_ok(&config, "uninterrupted");
    assert_eq!(report["errors"], json!([]), "{report}");
    let expected = sides(&server, &config.parent().unwrap().join("mailbox")).await;
    assert_eq!(sync_ok(&config, "again")["written_to_mailbox"], 0);
    assert_eq!(
        sides(&server, &config.parent().unwrap().join("mailbox")).await,
        expected
    );
    drop(server);
    // The scenario did what it says, so that the runs below compare
    // something: both creations arrived on the other side, both edits
    // crossed, the task is gone, the email is in the CRM.
    let all = format!("{expected:?}");
    for seen in [
        "FN=Crm Created CATEGORIES=Tracked to CRM (linked)",
        "first_name=\\\"Mailbox\\\" last_name=\\\"Created\\\"",
        "TITLE=Edited in the CRM",
        "notes=\\\"Edited in the mailbox\\\"",
    ] {
        assert!(all.contains(seen), "{seen} missing from {all}");
    }
    assert_eq!(expected.mailbox["tasks"], Vec::<String>::new());
    assert_eq!(expected.crm["emails"].len(), 1, "{all}");

    let mut k = 1;
    loop {
        let dir = tmp.path().join(format!("k{k}"));
        let (server, config) = start_run(&template_dir, &dir, &token).await;
        let interrupted = sync(&config, Some(k));
        let stderr = String::from_utf8_lossy(&interrupted.stderr).into_owned();
        if interrupted.status.success() {
            assert!(!stderr.contains(FAULT_ENV), "{stderr}");
            break;
        }
        assert!(
            stderr.contains(&format!("{FAULT_ENV}: stopping after step {k} ")),
            "step {k}: the sync failed otherwise: {stderr}"
        );
        sync_ok(&config, &format!("resumed after {stderr}"));
        let last = sync_ok(&config, &format!("once more after {stderr}"));
        assert_eq!(last["errors"], json!([]), "after step {k}: {last}");
        let got = sides(&server, &dir.join("mailbox")).await;
        assert_eq!(got, expected, "interrupted after step {k}: {stderr}");
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
        k += 1;
    }
    // Every kind of step was interrupted at least once: the scenario has
    // more steps than its eight changes.
    assert!(k > 8, "only {} steps", k - 1);
    eprintln!("interrupted after each of {} steps", k - 1);
}
