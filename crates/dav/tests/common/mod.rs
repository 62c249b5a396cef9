//! Real CalDAV/CardDAV servers for the tests: Radicale (Basic auth, plain
//! htpasswd), Xandikos (no auth) and Cyrus IMAP's httpd (Basic auth, an
//! sasldb user), each started on a free loopback port with its storage in a
//! temporary folder, and stopped when the [`Server`] is dropped. Radicale
//! and Xandikos come from the venv that `scripts/dav-servers.sh` installs,
//! Cyrus from Debian (`scripts/cyrus.sh`, crates/mailbox/tests/servers/cyrus.rs).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crmsync_dav::{DavConfig, DavMailbox, Url};
use tempfile::TempDir;

#[path = "../../../mailbox/tests/servers/cyrus.rs"]
mod cyrus;
use cyrus::Cyrus;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "wonder land";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Radicale,
    Xandikos,
    Cyrus,
}

pub struct Server {
    pub kind: Kind,
    process: Process,
    pub port: u16,
    http: reqwest::Client,
}

/// A running server: a Python child process with its folder, or Cyrus.
enum Process {
    Child { child: Child, dir: TempDir },
    Cyrus(Cyrus),
}

/// The venv with radicale, xandikos, caldav and vdirsyncer.
pub fn venv() -> PathBuf {
    let venv = match std::env::var_os("CRMSYNC_DAV_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .expect("HOME or XDG_CACHE_HOME is set");
            cache.join("crmsync").join("dav-venv")
        }
    };
    for bin in ["radicale", "xandikos", "python"] {
        if !venv.join("bin").join(bin).exists() {
            panic!(
                "{} not found: the DAV tests need Radicale and Xandikos; run ./scripts/test, or `. scripts/dav-servers.sh && install_dav_servers` (set CRMSYNC_DAV_VENV to use another venv)",
                venv.join("bin").join(bin).display()
            );
        }
    }
    venv
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

/// The HTTP client of "another client" (set-up, planting items): a fresh
/// connection per request, since a test server may close an idle
/// keep-alive connection just as a pooled one is reused (Xandikos under
/// load: `IncompleteMessage` on the MKCOL right after start).
fn another_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a plain HTTP client")
}

impl Server {
    pub async fn start(kind: Kind) -> Server {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(kind).await {
                Ok(server) => return server,
                Err(log) => last = log,
            }
        }
        panic!("{kind:?} did not start:\n{last}");
    }

    async fn try_start(kind: Kind) -> Result<Server, String> {
        if kind == Kind::Cyrus {
            let cyrus = Cyrus::start(USER, PASSWORD).await;
            let server = Server {
                kind,
                port: cyrus.http_port,
                process: Process::Cyrus(cyrus),
                http: another_client(),
            };
            server.create_collections().await;
            return Ok(server);
        }
        let venv = venv();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd;
        match kind {
            Kind::Radicale => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{USER}:{PASSWORD}\n")).unwrap();
                cmd = Command::new(venv.join("bin/radicale"));
                cmd.arg("--config")
                    .arg("")
                    .arg("--server-hosts")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--auth-type")
                    .arg("htpasswd")
                    .arg("--auth-htpasswd-filename")
                    .arg(&htpasswd)
                    .arg("--auth-htpasswd-encryption")
                    .arg("plain")
                    .arg("--storage-filesystem-folder")
                    .arg(dir.path().join("storage"))
                    .arg("--logging-level")
                    .arg("warning");
            }
            Kind::Cyrus => unreachable!("started above"),
            Kind::Xandikos => {
                cmd = Command::new(venv.join("bin/xandikos"));
                cmd.arg("serve")
                    .arg("--defaults")
                    .arg("-d")
                    .arg(dir.path().join("storage"))
                    .arg("--state-dir")
                    .arg(dir.path().join("state"))
                    .arg("-l")
                    .arg("127.0.0.1")
                    .arg("-p")
                    .arg(port.to_string())
                    .arg("--no-detect-systemd");
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        let mut server = Server {
            kind,
            process: Process::Child { child, dir },
            port,
            http: another_client(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Process::Child { child, .. } = &mut server.process {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("exited with {status}:\n{}", server.log()));
                }
            }
            let answer = server
                .raw("PROPFIND", server.root(), &[("Depth", "0")], None)
                .await;
            if matches!(answer, Ok((207, _))) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within 30 s:\n{}", server.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.create_collections().await;
        Ok(server)
    }

    pub fn log(&self) -> String {
        match &self.process {
            Process::Child { dir, .. } => {
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            }
            Process::Cyrus(cyrus) => cyrus.logs(),
        }
    }

    pub fn root(&self) -> Url {
        Url::parse(&format!("http://127.0.0.1:{}/", self.port)).unwrap()
    }

    /// The collection URL of `contacts`, `calendar` or `tasks`.
    pub fn url_of(&self, id: &str) -> Url {
        let path = match (self.kind, id) {
            (Kind::Radicale, _) => format!("/{USER}/{id}/"),
            (Kind::Xandikos, "contacts") => "/user/contacts/addressbook/".to_owned(),
            (Kind::Xandikos, "calendar") => "/user/calendars/calendar/".to_owned(),
            (Kind::Xandikos, _) => "/user/calendars/tasks/".to_owned(),
            // Cyrus makes a `Default` address book and calendar for a user.
            (Kind::Cyrus, "contacts") => format!("/dav/addressbooks/user/{USER}/Default/"),
            (Kind::Cyrus, "calendar") => format!("/dav/calendars/user/{USER}/Default/"),
            (Kind::Cyrus, _) => format!("/dav/calendars/user/{USER}/tasks/"),
        };
        self.root().join(&path).unwrap()
    }

    /// The folder on disk that holds a collection's items.
    pub fn folder_of(&self, id: &str) -> PathBuf {
        let Process::Child { dir, .. } = &self.process else {
            panic!("Cyrus keeps items in its mail spool, not in a folder of files");
        };
        let storage = dir.path().join("storage");
        let url = self.url_of(id);
        let path = url.path().trim_matches('/');
        match self.kind {
            Kind::Radicale => storage.join("collection-root").join(path),
            Kind::Xandikos | Kind::Cyrus => storage.join(path),
        }
    }

    pub fn config(&self) -> DavConfig {
        let mut config = DavConfig::new(USER, PASSWORD);
        config.contacts = Some(self.url_of("contacts"));
        config.calendar = Some(self.url_of("calendar"));
        config.tasks = Some(self.url_of("tasks"));
        config.poll_interval = Duration::from_millis(200);
        config.timeout = Duration::from_secs(10);
        config
    }

    pub fn mailbox(&self) -> DavMailbox {
        DavMailbox::new(&self.config()).unwrap()
    }

    /// One request as another client: (status, body).
    pub async fn raw(
        &self,
        method: &str,
        url: Url,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Vec<u8>), reqwest::Error> {
        self.raw_as((USER, PASSWORD), method, url, headers, body)
            .await
    }

    /// [`Server::raw`] logged in as `login` (user, password).
    async fn raw_as(
        &self,
        login: (&str, &str),
        method: &str,
        url: Url,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .basic_auth(login.0, Some(login.1));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some((ct, b)) = body {
            req = req.header("Content-Type", ct).body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    /// The URL of an item (`href` one path segment, encoded here).
    pub fn item_url(&self, collection: &str, href: &str) -> Url {
        let mut url = self.url_of(collection);
        url.path_segments_mut().unwrap().pop_if_empty().push(href);
        url
    }

    /// Another client writes an item, unconditionally.
    pub async fn put(&self, collection: &str, href: &str, data: &[u8]) -> u16 {
        let ct = if collection == "contacts" {
            "text/vcard; charset=utf-8"
        } else {
            "text/calendar; charset=utf-8"
        };
        self.raw(
            "PUT",
            self.item_url(collection, href),
            &[],
            Some((ct, data.to_vec())),
        )
        .await
        .unwrap()
        .0
    }

    pub async fn delete(&self, collection: &str, href: &str) -> u16 {
        self.raw("DELETE", self.item_url(collection, href), &[], None)
            .await
            .unwrap()
            .0
    }

    /// Radicale only: another user of the server (a line of its htpasswd
    /// file, which Radicale reads at every login) with their own
    /// `contacts`, `calendar` and `tasks`; their URLs in that order (the
    /// R-V6 benchmark's many mailboxes on one server).
    pub async fn add_user(&self, user: &str, password: &str) -> [Url; 3] {
        let Process::Child { dir, .. } = &self.process else {
            panic!("add_user is for Radicale");
        };
        assert_eq!(self.kind, Kind::Radicale, "add_user is for Radicale");
        let mut htpasswd = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("htpasswd"))
            .unwrap();
        std::io::Write::write_all(&mut htpasswd, format!("{user}:{password}\n").as_bytes())
            .unwrap();
        let urls = ["contacts", "calendar", "tasks"]
            .map(|id| self.root().join(&format!("/{user}/{id}/")).unwrap());
        self.create_collections_as((user, password), &urls).await;
        urls
    }

    async fn create_collections(&self) {
        let wanted: Vec<Url> = match self.kind {
            Kind::Radicale => ["contacts", "calendar", "tasks"]
                .map(|id| self.url_of(id))
                .to_vec(),
            Kind::Xandikos | Kind::Cyrus => vec![self.url_of("tasks")],
        };
        self.create_collections_as((USER, PASSWORD), &wanted).await;
    }

    /// MKCOL of each URL: an address book when it ends in `contacts/`, a
    /// VEVENT calendar in `calendar/`, a VTODO one otherwise.
    async fn create_collections_as(&self, login: (&str, &str), urls: &[Url]) {
        let cal = |comp: &str| {
            format!(
                r#"<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop><D:resourcetype><D:collection/><C:calendar/></D:resourcetype><C:supported-calendar-component-set><C:comp name="{comp}"/></C:supported-calendar-component-set></D:prop></D:set></D:mkcol>"#
            )
        };
        let book = r#"<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:A="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/><A:addressbook/></D:resourcetype></D:prop></D:set></D:mkcol>"#.to_owned();
        for url in urls {
            let body = match url.path() {
                p if p.ends_with("contacts/") => book.clone(),
                p if p.ends_with("calendar/") => cal("VEVENT"),
                _ => cal("VTODO"),
            };
            let (status, answer) = self
                .raw_as(
                    login,
                    "MKCOL",
                    url.clone(),
                    &[],
                    Some(("application/xml", body.into_bytes())),
                )
                .await
                .unwrap();
            assert_eq!(
                status,
                201,
                "MKCOL {url} on {:?}: {}",
                self.kind,
                String::from_utf8_lossy(&answer)
            );
        }
    }

    /// Stops the server at once (a crash, as far as clients can tell).
    pub fn kill(&mut self) {
        match &mut self.process {
            Process::Child { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Process::Cyrus(cyrus) => cyrus.stop(),
        }
    }

    /// Xandikos keeps each collection in a git work tree: commits a file
    /// there behind the server's back (how invalid data gets in, since its
    /// PUT validates).
    pub fn xandikos_commit(&self, collection: &str, name: &str, data: &[u8]) {
        assert_eq!(self.kind, Kind::Xandikos);
        let folder = self.folder_of(collection);
        std::fs::write(folder.join(name), data).unwrap();
        for args in [
            vec!["add", name],
            vec![
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.com",
                "commit",
                "-q",
                "-m",
                "planted by a test",
            ],
        ] {
            let status = Command::new("git")
                .arg("-C")
                .arg(&folder)
                .args(&args)
                .status()
                .expect("git runs");
            assert!(status.success(), "git {args:?} in {}", folder.display());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Content lines of a vCard/iCalendar object, unfolded and sorted: servers
/// re-serialize what they store (Radicale sorts properties, Xandikos
/// reorders VEVENT properties), so items are compared by their lines.
pub fn content_lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data).replace("\r\n", "\n");
    let unfolded = text.replace("\n ", "").replace("\n\t", "");
    let mut lines: Vec<String> = unfolded
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

pub fn same_item(stored: &[u8], written: &[u8]) -> bool {
    content_lines(stored) == content_lines(written)
}

// ---------------------------------------------------------------- scripted

/// How a [`Scripted`] server answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete answer: status, body.
    Full(u16, String),
    /// The status line and headers promise a body, then the connection drops.
    DropMidBody(u16, String),
}

/// A loopback HTTP/1.1 responder that plays canned replies in order (the
/// last one repeats) and records each request's first line and body. For
/// what real servers do not do on demand: truncate a sync-collection answer
/// (507), fail with 500, drop the connection mid-answer.
pub struct Scripted {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    pub async fn start(replies: Vec<Reply>) -> Scripted {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                // One request per connection: read the head, then the body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                let first = head.lines().next().unwrap_or_default().to_owned();
                seen.lock().unwrap().push((first, body));
                let reply = replies[next.min(replies.len() - 1)].clone();
                next += 1;
                let bytes = match reply {
                    Reply::Full(status, body) => format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Reply::DropMidBody(status, body) => format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        body.len() * 2,
                        body
                    ),
                };
                let _ = sock.write_all(bytes.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        Scripted {
            port,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:{}{path}", self.port)).unwrap()
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `#[tokio::test]` per server (Radicale, Xandikos, Cyrus) for `async
/// fn body(kind: Kind)`, in a module named after the body
/// (`crates/dav/tests/dav.rs`, `crates/agent/tests/dav.rs`).
#[allow(unused_macros)]
macro_rules! on_every_server {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn radicale() {
                    super::$name(Kind::Radicale).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn xandikos() {
                    super::$name(Kind::Xandikos).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cyrus() {
                    super::$name(Kind::Cyrus).await
                }
            }
        )*
    };
}
