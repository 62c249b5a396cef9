//! R-T4 the way isync/mbsync's run-tests checks it: one scenario with work
//! on both sides, interrupted after every durable step of the agent's work
//! in turn (`CRMSYNC_TEST_FAULT_AFTER_STEP=k`, see `crates/agent/src/fault.rs`),
//! then resumed. After each resume both sides must equal what one
//! uninterrupted sync gives: no duplicate, no lost edit.
//!
//! Each run starts from a copy of one template (the server's SQLite
//! database, the agent's cache, the mailbox folder, Radicale's storage),
//! served by the real binary (and a real Radicale for contacts and tasks in
//! the DAV variant; its mail stays a local Maildir).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{Killed, Server, BIN};

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

/// Where the agent keeps contacts and tasks.
#[derive(Clone, Copy)]
enum Items {
    /// vdir folders beside the Maildir.
    Local,
    /// A Radicale serving its storage folder in the run's folder.
    Radicale,
}

const DAV_USER: &str = "alice";
const DAV_PASSWORD: &str = "wonder land";

/// Radicale from the venv of `scripts/dav-servers.sh` (`CRMSYNC_DAV_VENV`),
/// serving `dir/radicale` until dropped.
struct Radicale {
    base: String,
    http: reqwest::Client,
    _process: Killed,
}

impl Radicale {
    async fn start(dir: &Path) -> Radicale {
        let venv = std::env::var_os("CRMSYNC_DAV_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(&std::env::var_os("HOME").expect("HOME is set"))
                    .join(".cache/crmsync/dav-venv")
            });
        let bin = venv.join("bin/radicale");
        assert!(
            bin.exists(),
            "{} not found: run ./scripts/test, or `. scripts/dav-servers.sh && install_dav_servers`",
            bin.display()
        );
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{DAV_USER}:{DAV_PASSWORD}\n")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Killed(
            Command::new(bin)
                .args(["--config", "", "--server-hosts"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--auth-type", "htpasswd", "--auth-htpasswd-filename"])
                .arg(&htpasswd)
                .args(["--auth-htpasswd-encryption", "plain"])
                .arg("--storage-filesystem-folder")
                .arg(dir.join("radicale"))
                .args(["--logging-level", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let radicale = Radicale {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _process: process,
        };
        let started = Instant::now();
        while radicale.request("PROPFIND", "/", None).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Radicale did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        radicale
    }

    /// A request as the user; `None` when Radicale does not answer (yet).
    async fn request(&self, method: &str, path: &str, body: Option<String>) -> Option<u16> {
        let mut req = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .basic_auth(DAV_USER, Some(DAV_PASSWORD));
        if method == "PROPFIND" {
            req = req.header("Depth", "0");
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        Some(req.send().await.ok()?.status().as_u16())
    }

    fn url(&self, collection: &str) -> String {
        format!("{}/{DAV_USER}/{collection}/", self.base)
    }

    /// The user's collections: an address book, a calendar, a task list.
    async fn make_collections(&self) {
        let cal = |comp: &str| {
            format!(
                r#"<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop><D:resourcetype><D:collection/><C:calendar/></D:resourcetype><C:supported-calendar-component-set><C:comp name="{comp}"/></C:supported-calendar-component-set></D:prop></D:set></D:mkcol>"#
            )
        };
        let book = r#"<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:A="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/><A:addressbook/></D:resourcetype></D:prop></D:set></D:mkcol>"#;
        for (collection, body) in [
            ("contacts", book.to_string()),
            ("calendar", cal("VEVENT")),
            ("tasks", cal("VTODO")),
        ] {
            let path = format!("/{DAV_USER}/{collection}/");
            assert_eq!(self.request("MKCOL", &path, Some(body)).await, Some(201));
        }
    }

    /// `[mailbox.dav]` for the agent's configuration.
    fn config(&self) -> String {
        format!(
            "[mailbox.dav]\nusername = \"{DAV_USER}\"\npassword = \"{DAV_PASSWORD}\"\ncontacts = \"{}\"\ncalendar = \"{}\"\ntasks = \"{}\"\n",
            self.url("contacts"),
            self.url("calendar"),
            self.url("tasks")
        )
    }
}

/// The folder holding a collection's items, as files, in a run's folder.
fn items_dir(dir: &Path, items: Items, collection: &str) -> PathBuf {
    match items {
        Items::Local => dir.join("mailbox").join(collection),
        Items::Radicale => dir
            .join("radicale/collection-root")
            .join(DAV_USER)
            .join(collection),
    }
}

/// The item files of `dir` (Radicale keeps its caches in dot-folders).
fn item_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
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
    item_files(dir)
        .into_iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no item with {needle:?} in {}", dir.display()))
}

const MESSAGE: &str = "Message-ID: <offer-1@example.org>\r\nFrom: Lee <lee@example.org>\r\nTo: Me <me@example.com>\r\nSubject: Offer\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, here is the offer.\r\n";

/// The user's other client writes an item (a new one, or over the old).
async fn client_writes(
    dir: &Path,
    items: Items,
    dav: Option<&Radicale>,
    collection: &str,
    name: &str,
    text: &str,
) {
    match (items, dav) {
        (Items::Radicale, Some(dav)) => {
            let path = format!("/{DAV_USER}/{collection}/{name}");
            let status = dav.request("PUT", &path, Some(text.to_string())).await;
            assert!(matches!(status, Some(201 | 204)), "PUT {path}: {status:?}");
        }
        _ => {
            let path = items_dir(dir, items, collection).join(name);
            let tmp = path.with_extension("edit-tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(tmp, path).unwrap();
        }
    }
}

/// The template of every run in `dir`: an organization and an agent that
/// synchronized once, then work on both sides. Returns the admin's token.
async fn template(dir: &Path, items: Items) -> String {
    let server = Server::start(dir).await;
    let root = dir.join("mailbox");
    for sub in [
        "contacts", "calendar", "tasks", "mail/cur", "mail/new", "mail/tmp",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let dav = match items {
        Items::Radicale => {
            let dav = Radicale::start(dir).await;
            dav.make_collections().await;
            Some(dav)
        }
        Items::Local => None,
    };
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
    let config = agent_config(&server, dir, dav.as_ref());
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
    client_writes(
        dir,
        items,
        dav.as_ref(),
        "contacts",
        "new-in-mailbox.vcf",
        &vcard(
            "new-in-mailbox",
            "Mailbox",
            "Created",
            "CATEGORIES:Tracked to CRM\r\n",
        ),
    )
    .await;
    let edited = file_with(&items_dir(dir, items, "contacts"), "FN:Mailbox Edited");
    let text = std::fs::read_to_string(&edited).unwrap();
    let at = text.rfind("END:").unwrap();
    client_writes(
        dir,
        items,
        dav.as_ref(),
        "contacts",
        &edited.file_name().unwrap().to_string_lossy(),
        &format!(
            "{}NOTE:Edited in the mailbox\r\n{}",
            &text[..at],
            &text[at..]
        ),
    )
    .await;
    std::fs::write(root.join("mail/dovecot-keywords"), "0 $CRMTracked\n").unwrap();
    std::fs::write(root.join("mail/cur/1764000000.offer.host:2,Sa"), MESSAGE).unwrap();
    server.token.clone()
}

/// The agent's configuration in `dir`: the local mailbox there, and its
/// contacts and tasks on `dav` when given.
fn agent_config(server: &Server, dir: &Path, dav: Option<&Radicale>) -> PathBuf {
    let config = server.agent_config(dir, AGENT, &dir.join("mailbox"));
    if let Some(dav) = dav {
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&dav.config());
        std::fs::write(&config, text).unwrap();
    }
    config
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

async fn sides(server: &Server, dir: &Path, items: Items) -> Sides {
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
        let mut held = Vec::new();
        for file in item_files(&items_dir(dir, items, collection)) {
            let text = std::fs::read_to_string(file).unwrap();
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
            held.push(format!("{} ({link})", props.join(" ")));
        }
        held.sort();
        mailbox.insert(collection.to_string(), held);
    }
    let mut messages = Vec::new();
    for sub in ["cur", "new"] {
        for entry in std::fs::read_dir(dir.join("mailbox/mail").join(sub)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let flags = name.split_once(":2,").map(|(_, f)| f.to_string());
            messages.push(format!("{sub} flags={flags:?}"));
        }
    }
    messages.sort();
    mailbox.insert("mail".to_string(), messages);
    Sides { crm, mailbox }
}

/// One run: a copy of the template, served.
struct Run {
    dir: PathBuf,
    server: Server,
    config: PathBuf,
    _dav: Option<Radicale>,
}

impl Run {
    async fn start(template: &Path, dir: &Path, token: &str, items: Items) -> Run {
        copy_dir(template, dir);
        let db = format!("sqlite://{}", dir.join("crm.db").display());
        let server = Server::serve(&db, token.to_string()).await;
        let dav = match items {
            Items::Radicale => Some(Radicale::start(dir).await),
            Items::Local => None,
        };
        let config = agent_config(&server, dir, dav.as_ref());
        Run {
            dir: dir.to_path_buf(),
            server,
            config,
            _dav: dav,
        }
    }
}

/// The scenario of this file on `items`, interrupted after every step in
/// turn; returns the number of steps.
async fn interrupted_after_every_step(items: Items) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let template_dir = tmp.path().join("template");
    std::fs::create_dir_all(&template_dir).unwrap();
    let token = template(&template_dir, items).await;

    // What one uninterrupted sync gives (a second one changes nothing).
    let whole = Run::start(&template_dir, &tmp.path().join("whole"), &token, items).await;
    let report = sync_ok(&whole.config, "uninterrupted");
    assert_eq!(report["errors"], json!([]), "{report}");
    let expected = sides(&whole.server, &whole.dir, items).await;
    assert_eq!(sync_ok(&whole.config, "again")["written_to_mailbox"], 0);
    assert_eq!(sides(&whole.server, &whole.dir, items).await, expected);
    drop(whole);
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
        let run = Run::start(&template_dir, &dir, &token, items).await;
        let interrupted = sync(&run.config, Some(k));
        let stderr = String::from_utf8_lossy(&interrupted.stderr).into_owned();
        if interrupted.status.success() {
            assert!(!stderr.contains(FAULT_ENV), "{stderr}");
            break;
        }
        assert!(
            stderr.contains(&format!("{FAULT_ENV}: stopping after step {k} ")),
            "step {k}: the sync failed otherwise: {stderr}"
        );
        sync_ok(&run.config, &format!("resumed after {stderr}"));
        let last = sync_ok(&run.config, &format!("once more after {stderr}"));
        assert_eq!(last["errors"], json!([]), "after step {k}: {last}");
        let got = sides(&run.server, &run.dir, items).await;
        assert_eq!(got, expected, "interrupted after step {k}: {stderr}");
        drop(run);
        std::fs::remove_dir_all(&dir).unwrap();
        k += 1;
    }
    // Every kind of step was interrupted at least once: the scenario has
    // more steps than its eight changes.
    assert!(k > 8, "only {} steps", k - 1);
    k - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_t4_interrupted_after_every_step_resumes_without_loss_or_duplicate_local() {
    let steps = interrupted_after_every_step(Items::Local).await;
    eprintln!("interrupted after each of {steps} steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_t4_interrupted_after_every_step_resumes_without_loss_or_duplicate_radicale() {
    let steps = interrupted_after_every_step(Items::Radicale).await;
    eprintln!("interrupted after each of {steps} steps");
}
