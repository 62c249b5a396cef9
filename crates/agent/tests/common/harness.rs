// The end-to-end harness shared by the agent's test files (included with
// `include!`): a real CRM server in-process and local mailboxes in a temp folder.

struct World {
    base: String,
    admin: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crm.db").display());
    let store = crmsync_server::Store::connect(&url).await.unwrap();
    let admin = crmsync_server::records::init_organization(&store, "admin@example.com", "Admin")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        crmsync_server::serve(store, listener, crmsync_server::DEFAULT_MAX_BODY, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    World {
        base,
        admin,
        http: reqwest::Client::new(),
        dir,
        _stop: stop,
    }
}

impl World {
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A user; returns (id, token).
    async fn user(&self, email: &str) -> (String, String) {
        let (status, body) = self
            .call(
                &self.admin,
                Method::POST,
                "/api/v1/users",
                Some(json!({"email": email, "name": email})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().into(),
            body["token"].as_str().unwrap().into(),
        )
    }

    /// A record created through the API (201 required).
    async fn create(&self, token: &str, set: &str, body: Value) -> Value {
        let (status, body) = self
            .call(token, Method::POST, &format!("/api/v1/{set}"), Some(body))
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    async fn contact(&self, token: &str, last: &str) -> String {
        let body = json!({"last_name": last, "email": format!("{}@example.com", last.to_lowercase())});
        self.create(token, "contacts", body).await["id"]
            .as_str()
            .unwrap()
            .into()
    }

    async fn my_contacts(&self, token: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                token,
                Method::GET,
                "/api/v1/contacts?owner=me&limit=500",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    /// An agent of `token` on the mailbox `name` with cache `cache`.
    async fn agent(&self, token: &str, name: &str, cache: &str) -> Agent {
        Agent::open(self.config(token, name, cache)).await.unwrap()
    }

    /// The configuration of an agent of `token` on the mailbox `name` with
    /// cache file `cache`.
    fn config(&self, token: &str, name: &str, cache: &str) -> Config {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let cfg_path = self.dir.path().join(format!("{name}-{cache}.toml"));
        let text = format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{token}\"\n[client]\nname = \"{name}\"\ncache = \"{cache}.db\"\n[mailbox.local]\nroot = \"{}\"\n",
            self.base,
            root.display()
        );
        std::fs::write(&cfg_path, text).unwrap();
        Config::load(&cfg_path).unwrap()
    }

    /// PATCHes a contact in the CRM; the change must be accepted.
    async fn patch_contact(&self, token: &str, id: &str, body: Value) {
        let (status, reply) = self
            .call(
                token,
                Method::PATCH,
                &format!("/api/v1/contacts/{id}"),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
    }

    fn contacts_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("contacts")
    }
}

/// The vCards of a mailbox: (file, parsed item).
fn vcards(dir: &Path) -> Vec<(PathBuf, crmsync_core::mapping::MailboxItem)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vcf"))
        .map(|p| {
            let item = parse_item(&std::fs::read(&p).unwrap()).unwrap();
            (p, item)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn find<'a>(
    items: &'a [(PathBuf, crmsync_core::mapping::MailboxItem)],
    crm_id: &str,
) -> Option<&'a (PathBuf, crmsync_core::mapping::MailboxItem)> {
    items
        .iter()
        .find(|(_, i)| i.crm_id.map(|u| u.to_string()).as_deref() == Some(crm_id))
}

/// Edits a vCard as a mail client would: one field changed, the rest kept.
fn edit(path: &Path, field: &str, value: &str) {
    let bytes = std::fs::read(path).unwrap();
    let mut item = parse_item(&bytes).unwrap();
    item.fields.insert(field.into(), json!(value));
    let mut opts = RenderOptions::new(time::OffsetDateTime::now_utc());
    opts.existing = Some(&bytes);
    std::fs::write(path, render_item(&item, &opts).unwrap()).unwrap();
}

async fn sync(agent: &Agent) -> crmsync_agent::SyncReport {
    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(r.refused.is_empty(), "{r:?}");
    r
}

// ---- mail (tests/mail.rs): a Maildir++ changed as a mail client or an MDA would.

/// An RFC 5322 message with a small text body.
#[allow(dead_code)] // used by tests/mail.rs only
fn rfc5322(id: Option<&str>, from: &str, to: &[&str], subject: &str, extra: &str) -> Vec<u8> {
    let mut m = String::new();
    if let Some(id) = id {
        m.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    m.push_str(&format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0100\r\n{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n",
        to.join(", ")
    ));
    m.into_bytes()
}

#[allow(dead_code)] // used by tests/mail.rs only
impl World {
    /// The local mailbox `name` as another mail client sees it.
    fn maildir(&self, name: &str) -> crmsync_mailbox::LocalMailbox {
        crmsync_mailbox::LocalMailbox::open(&crmsync_mailbox::LocalConfig {
            root: self.dir.path().join(name),
        })
        .unwrap()
    }

    /// The Maildir folder (`INBOX`, `Sent`, `CRM`, ...) of mailbox `name`,
    /// created if needed.
    fn mail_dir(&self, name: &str, folder: &str) -> PathBuf {
        if folder != "INBOX" {
            self.maildir(name).ensure_mail_folder(folder).unwrap();
        }
        let mail = self.dir.path().join(name).join("mail");
        if folder == "INBOX" {
            mail
        } else {
            mail.join(format!(".{folder}"))
        }
    }

    /// Delivers `raw` into `folder` with the Maildir flag letters `flags`
    /// (`S` seen, `D` draft); returns the message's href.
    fn deliver(&self, name: &str, folder: &str, raw: &[u8], flags: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.mail_dir(name, folder);
        let href = format!(
            "1764064800.M{}P{}.test",
            N.fetch_add(1, Ordering::SeqCst),
            std::process::id()
        );
        std::fs::write(dir.join("cur").join(format!("{href}:2,{flags}")), raw).unwrap();
        href
    }

    /// Adds and removes keywords as a mail client would (etag precondition).
    async fn keywords(&self, name: &str, folder: &str, href: &str, add: &[&str], remove: &[&str]) {
        use crmsync_mailbox::Mailbox;
        let mb = self.maildir(name);
        let id = format!("mail/{folder}");
        let now = mb.flags_of(&id, href).await.unwrap();
        let kw = |l: &[&str]| -> Vec<crmsync_mailbox::Keyword> {
            l.iter()
                .map(|k| crmsync_mailbox::Keyword::new(*k).unwrap())
                .collect()
        };
        mb.store_keywords(&id, href, &now.etag, &kw(add), &kw(remove))
            .await
            .unwrap();
    }

    /// The keywords of a message now.
    async fn keywords_of(&self, name: &str, folder: &str, href: &str) -> Vec<String> {
        use crmsync_mailbox::Mailbox;
        let now = self
            .maildir(name)
            .flags_of(&format!("mail/{folder}"), href)
            .await
            .unwrap();
        now.flags
            .unwrap_or_default()
            .keywords
            .iter()
            .map(|k| k.as_str().to_string())
            .collect()
    }

    /// Moves a message to another folder, keywords kept (as a mail
    /// client's MOVE).
    async fn move_message(&self, name: &str, from: &str, to: &str, href: &str) {
        let kept = self.keywords_of(name, from, href).await;
        let src = self.mail_dir(name, from);
        let dst = self.mail_dir(name, to);
        for sub in ["cur", "new"] {
            for e in std::fs::read_dir(src.join(sub)).unwrap() {
                let p = e.unwrap().path();
                let file = p.file_name().unwrap().to_string_lossy().into_owned();
                if file.split(':').next() == Some(href) {
                    // Keyword letters belong to the folder's dovecot-keywords:
                    // the system flags move, the keywords are set again.
                    let flags: String = file
                        .split_once(":2,")
                        .map(|(_, f)| f.chars().filter(|c| c.is_ascii_uppercase()).collect())
                        .unwrap_or_default();
                    std::fs::rename(&p, dst.join("cur").join(format!("{href}:2,{flags}"))).unwrap();
                    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
                    if !kept.is_empty() {
                        self.keywords(name, to, href, &kept, &[]).await;
                    }
                    return;
                }
            }
        }
        panic!("no message {href} in {from}");
    }

    /// Deletes a message file.
    fn delete_message(&self, name: &str, folder: &str, href: &str) {
        let dir = self.mail_dir(name, folder);
        for sub in ["cur", "new"] {
            for e in std::fs::read_dir(dir.join(sub)).unwrap() {
                let p = e.unwrap().path();
                if p.file_name().unwrap().to_string_lossy().split(':').next() == Some(href) {
                    std::fs::remove_file(p).unwrap();
                    return;
                }
            }
        }
        panic!("no message {href} in {folder}");
    }

    /// An agent as [`World::agent`], its configuration changed by `edit`.
    async fn agent_with(
        &self,
        token: &str,
        name: &str,
        cache: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Agent {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let cfg_path = self.dir.path().join(format!("{name}-{cache}.toml"));
        let text = format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{token}\"\n[client]\nname = \"{name}\"\ncache = \"{cache}.db\"\n[mailbox.local]\nroot = \"{}\"\n",
            self.base,
            root.display()
        );
        std::fs::write(&cfg_path, text).unwrap();
        let mut cfg = Config::load(&cfg_path).unwrap();
        edit(&mut cfg);
        Agent::open(cfg).await.unwrap()
    }
}

// ---- DAV (tests/dav.rs): contacts, calendar and tasks on a CalDAV/CardDAV server.

#[allow(dead_code)] // used by tests/dav.rs only
impl World {
    /// An agent of `token` whose mailbox is `[mailbox.dav]` with the
    /// collection URLs `urls` (contacts, calendar, tasks), with cache `cache`.
    async fn dav_agent(
        &self,
        token: &str,
        name: &str,
        cache: &str,
        urls: [&str; 3],
        username: &str,
        password: &str,
    ) -> Agent {
        let cfg_path = self.dir.path().join(format!("{name}-{cache}.toml"));
        let text = format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{token}\"\n[client]\nname = \"{name}\"\ncache = \"{cache}.db\"\n[mailbox.dav]\ncontacts = \"{}\"\ncalendar = \"{}\"\ntasks = \"{}\"\nusername = \"{username}\"\npassword = \"{password}\"\n",
            self.base, urls[0], urls[1], urls[2]
        );
        std::fs::write(&cfg_path, text).unwrap();
        Agent::open(Config::load(&cfg_path).unwrap()).await.unwrap()
    }
}

// ---- IMAP (tests/imap.rs): mail folders on a real Dovecot.

#[allow(dead_code)] // used by tests/imap.rs only
impl World {
    /// An agent of `token` whose mail folders are `[mailbox.imap]` on
    /// 127.0.0.1:`port` (security none, login `username`/`password`), with
    /// contacts, calendar and tasks in the local folder `name`; its
    /// configuration changed by `edit` before it is opened.
    #[allow(clippy::too_many_arguments)]
    async fn imap_agent(
        &self,
        token: &str,
        name: &str,
        cache: &str,
        port: u16,
        username: &str,
        password: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Agent {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let cfg_path = self.dir.path().join(format!("{name}-{cache}.toml"));
        let text = format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{token}\"\n[client]\nname = \"{name}\"\ncache = \"{cache}.db\"\n[mailbox.local]\nroot = \"{}\"\n[mailbox.imap]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\nusername = \"{username}\"\npassword = \"set below\"\n",
            self.base,
            root.display()
        );
        std::fs::write(&cfg_path, text).unwrap();
        let mut cfg = Config::load(&cfg_path).unwrap();
        // The password may hold quotes and non-ASCII: set as is.
        cfg.imap.as_mut().unwrap().password = password.to_string();
        edit(&mut cfg);
        Agent::open(cfg).await.unwrap()
    }
}

/// CRM look-ups and settings of the email tests (`mail.rs`, `imap.rs`).
#[allow(dead_code)]
impl World {
    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(token, Method::GET, path, None).await
    }

    /// Every email of the CRM.
    async fn emails(&self) -> Vec<Value> {
        let (status, body) = self.get(&self.admin, "/api/v1/emails?limit=500").await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    async fn email_by_mid(&self, mid: &str) -> Vec<Value> {
        self.emails()
            .await
            .into_iter()
            .filter(|e| e["message_id"] == mid)
            .collect()
    }

    async fn account(&self, token: &str, name: &str) -> String {
        self.create(token, "accounts", json!({"name": name})).await["id"]
            .as_str()
            .unwrap()
            .into()
    }

    async fn org_settings(&self, patch: Value) {
        let (status, body) = self
            .call(&self.admin, Method::PATCH, "/api/v1/settings", Some(patch))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn user_settings(&self, user: &str, patch: Value) {
        let (status, body) = self
            .call(
                &self.admin,
                Method::PATCH,
                &format!("/api/v1/users/{user}/settings"),
                Some(patch),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// R-M7: `$CRMRegarding:<the id as 32 lowercase hex digits>`.
#[allow(dead_code)]
fn regarding_kw(id: &str) -> String {
    format!("$CRMRegarding:{}", id.replace('-', "").to_ascii_lowercase())
}

/// R-M7: the former form, `$CRMRegarding:<set>:<uuid>`, still read.
#[allow(dead_code)]
fn former_regarding_kw(set: &str, id: &str) -> String {
    format!("$CRMRegarding:{set}:{id}")
}

// ---- a running agent (R-T2)

#[allow(dead_code)]
type Reports = tokio::sync::mpsc::UnboundedReceiver<Result<crmsync_agent::SyncReport, String>>;

/// The reports of a running agent's syncs until one satisfies `wanted`
/// (within 30 s: the DAV watch polls every 2 s, IMAP IDLE answers at once;
/// the schedule is 15 min).
#[allow(dead_code)] // used by tests/dav.rs and tests/imap.rs
async fn until(
    reports: &mut Reports,
    what: &str,
    wanted: impl Fn(&crmsync_agent::SyncReport) -> bool,
) -> crmsync_agent::SyncReport {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let r = tokio::time::timeout_at(deadline, reports.recv())
            .await
            .unwrap_or_else(|_| panic!("no sync with {what} within 30 s; syncs: {seen:?}"))
            .expect("the agent runs")
            .expect("the sync succeeds");
        if wanted(&r) {
            return r;
        }
        assert!(r.errors.is_empty(), "{r:?}");
        seen.push(r);
    }
}

/// `agent` running (`crmsync_agent::run::run`) until the returned sender
/// fires or is dropped: the loop's future, to be joined with the test, and
/// the reports of its syncs.
#[allow(dead_code)] // used by tests/dav.rs and tests/imap.rs
fn running(
    agent: &Agent,
) -> (
    impl std::future::Future<Output = anyhow::Result<()>> + '_,
    Reports,
    oneshot::Sender<()>,
) {
    let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop) = oneshot::channel::<()>();
    let run = crmsync_agent::run::run(
        agent,
        async {
            let _ = stop.await;
        },
        move |r| {
            let _ = reports_tx.send(match r {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(format!("{e:#}")),
            });
        },
    );
    (run, reports, stop_tx)
}

// ---- the real-world corpus of crates/core/tests/data/realworld (R-F7):
// other projects' calendar and address book files.

#[allow(dead_code)]
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data/realworld")
}

/// The corpus files that cannot be read (their names).
#[allow(dead_code)]
fn broken() -> Vec<String> {
    std::fs::read_to_string(corpus().join("broken.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// The item as a user marks it for tracking (R-M1): the category on each
/// component. UIDs get the file's name: the corpus comes from several
/// projects, and a collection holds one item per UID (RFC 4791 5.3.2).
#[allow(dead_code)]
fn marked(name: &str, text: &str) -> String {
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if matches!(bare, "END:VEVENT" | "END:VTODO" | "END:VCARD") {
            out.push_str(&format!("CATEGORIES:Tracked to CRM{eol}"));
        }
        match bare.strip_prefix("UID:") {
            Some(uid) => out.push_str(&format!("UID:{name}-{uid}{eol}")),
            None => out.push_str(line),
        }
    }
    out
}

/// The files of a mailbox folder, name → bytes.
#[allow(dead_code)]
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .map(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().to_string();
                    (name, std::fs::read(&p).unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[allow(dead_code)]
impl World {
    /// Every record of `set` the user owns, as the CRM holds it.
    async fn mine(&self, token: &str, set: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                token,
                Method::GET,
                &format!("/api/v1/{set}?owner=me&limit=500"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }
}

/// The collection a corpus file belongs in: vCards in contacts, to-do
/// calendars in tasks, the other calendars in calendar.
#[allow(dead_code)]
fn corpus_collection(path: &std::path::Path, text: &str) -> Option<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("vcf") => Some("contacts"),
        Some("ics") if text.contains("BEGIN:VTODO") && !text.contains("BEGIN:VEVENT") => {
            Some("tasks")
        }
        Some("ics") => Some("calendar"),
        _ => None,
    }
}

/// R-F7: a sync over unreadable items completed (no error) and reported
/// each of `broken` once, on its own, as skipped, and nothing else.
#[allow(dead_code)]
fn assert_each_skipped_once<S: AsRef<str> + std::fmt::Debug>(
    r: &crmsync_agent::SyncReport,
    broken: &[S],
) {
    assert!(r.errors.is_empty(), "{:#?}", r.errors);
    for name in broken {
        let reports = r
            .skipped
            .iter()
            .filter(|e| e.contains(name.as_ref()))
            .count();
        assert_eq!(reports, 1, "{name:?}: {:#?}", r.skipped);
    }
    assert_eq!(r.skipped.len(), broken.len(), "{:#?}", r.skipped);
}

// ---- R-E2: a recurring series as a calendar client writes it.

/// A weekly series (Mondays 09:00 UTC from 2030-01-07, ten times) and its
/// overridden instances, as a calendar client writes it, marked for
/// tracking.
#[allow(dead_code)]
fn weekly_series(uid: &str, overrides: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//other//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20291201T000000Z\r\n\
DTSTART:20300107T090000Z\r\nDTEND:20300107T100000Z\r\nRRULE:FREQ=WEEKLY;COUNT=10\r\nSUMMARY:Weekly\r\n\
CATEGORIES:Tracked to CRM\r\nEND:VEVENT\r\n{overrides}END:VCALENDAR\r\n"
    )
}

/// One overridden instance of [`weekly_series`]: `rid` its original start,
/// moved to `start`..`end` (all `YYYYMMDDTHHMMSSZ`).
#[allow(dead_code)]
fn instance(uid: &str, rid: &str, start: &str, end: &str, extra: &str) -> String {
    format!(
        "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20291201T000000Z\r\nRECURRENCE-ID:{rid}\r\nDTSTART:{start}\r\n\
DTEND:{end}\r\nSUMMARY:Weekly\r\n{extra}CATEGORIES:Tracked to CRM\r\nEND:VEVENT\r\n"
    )
}
