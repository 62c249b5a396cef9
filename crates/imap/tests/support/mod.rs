//! A real Dovecot for the tests: one instance per test, in a TempDir, on a
//! free loopback port, with a passwd-file user, Maildir++ storage and either
//! Dovecot's default capabilities (CONDSTORE, QRESYNC) or a list without
//! them (the fallback). A real Cyrus IMAP the same way
//! (crates/mailbox/tests/servers/cyrus.rs): [`ImapServer`] starts either.
//! Plus "another client": a raw IMAP connection of its own, and a TCP proxy
//! that can cut connections.
//!
//! Dovecot comes from Debian's `dovecot-imapd` (scripts/dovecot.sh installs
//! it); `CRMSYNC_DOVECOT` names another binary.

#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmsync_imap::{ImapConfig, ImapMailbox, Security};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[path = "../../../mailbox/tests/servers/cyrus.rs"]
pub mod cyrus;
use cyrus::Cyrus;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret pässword \"quoted\"";
pub const FOLDERS: [&str; 4] = ["INBOX", "Sent", "Drafts", "CRM"];

/// The IMAP server a test runs on: Dovecot offering some capabilities, or
/// Cyrus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Dovecot's defaults: CONDSTORE and QRESYNC.
    Qresync,
    /// CONDSTORE without QRESYNC (mod-sequences, no VANISHED).
    Condstore,
    /// CONDSTORE and QRESYNC left out of the capability list.
    Plain,
    /// Cyrus IMAP with its defaults (CONDSTORE and QRESYNC); started by
    /// [`ImapServer::start`] only.
    Cyrus,
}

/// The IMAP server of a test, as [`Flavor`] says.
pub enum ImapServer {
    Dovecot(Dovecot),
    Cyrus(Cyrus),
}

impl ImapServer {
    pub async fn start(flavor: Flavor) -> ImapServer {
        match flavor {
            Flavor::Cyrus => ImapServer::Cyrus(Cyrus::start(USER, PASSWORD).await),
            _ => ImapServer::Dovecot(Dovecot::start(flavor).await),
        }
    }

    /// Cyrus as Debian's default `cyrus.conf` runs it, without `idled`.
    pub async fn start_cyrus_without_idled() -> ImapServer {
        ImapServer::Cyrus(Cyrus::start_without_idled(USER, PASSWORD).await)
    }

    pub fn port(&self) -> u16 {
        match self {
            ImapServer::Dovecot(d) => d.port,
            ImapServer::Cyrus(c) => c.imap_port,
        }
    }

    pub fn config(&self) -> ImapConfig {
        client_config(self.port())
    }

    /// Another mail client.
    pub async fn client(&self) -> Raw {
        Raw::connect(self.port()).await
    }
}

/// Capabilities after login for [`Flavor::Plain`]: Dovecot's list without
/// CONDSTORE and QRESYNC.
const PLAIN_CAPABILITIES: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT THREAD=REFERENCES MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH SEARCHRES WITHIN LIST-STATUS BINARY MOVE LITERAL+ SPECIAL-USE";

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub flavor: Flavor,
    /// With TLS: the implicit-TLS port and the CA certificate to trust.
    pub tls_port: Option<u16>,
    pub ca: Option<PathBuf>,
    mail_owner: (u32, u32),
    child: Child,
}

fn dovecot_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CRMSYNC_DOVECOT") {
        return PathBuf::from(path);
    }
    for p in ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("dovecot not found: run `. scripts/dovecot.sh && install_dovecot` (Debian's dovecot-imapd) or set CRMSYNC_DOVECOT");
}

fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// Who we are: the owner of a directory we just created.
fn owner_of(dir: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).unwrap();
    (meta.uid(), meta.gid())
}

fn user_name(uid: u32) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(':');
            let name = parts.next()?;
            let id: u32 = parts.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_owned())
        })
        .next()
        .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "nobody".into()))
}

/// A private CA and a certificate for 127.0.0.1/localhost signed by it
/// (openssl CLI): returns (ca.pem, cert.pem, key.pem).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=crmsync test CA",
    ]);
    run(&ca);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&req);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

fn group_name(gid: u32) -> String {
    fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(':');
            let name = parts.next()?;
            let id: u32 = parts.nth(1)?.parse().ok()?;
            (id == gid).then(|| name.to_owned())
        })
        .next()
        .unwrap_or_else(|| "nogroup".to_owned())
}

impl Dovecot {
    pub async fn start(flavor: Flavor) -> Dovecot {
        Self::start_with(flavor, false).await
    }

    /// With `tls`: STARTTLS on the IMAP port and TLS on a second port
    /// (`tls_port`), with a certificate from a private CA (`ca`).
    pub async fn start_with(flavor: Flavor, tls: bool) -> Dovecot {
        Self::launch(flavor, tls, "").await
    }

    /// With `settings` (lines of dovecot.conf) added: a server its
    /// administrator configured.
    pub async fn start_with_settings(flavor: Flavor, settings: &str) -> Dovecot {
        Self::launch(flavor, false, settings).await
    }

    async fn launch(flavor: Flavor, tls: bool, settings: &str) -> Dovecot {
        assert_ne!(flavor, Flavor::Cyrus, "start Cyrus with ImapServer::start");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (uid, gid) = owner_of(root);
        // Dovecot never gives mail access to root: as root the mail belongs
        // to `nobody` and the service users are Debian's dovecot/dovenull.
        let (mail_uid, mail_gid, internal, login, group) = if uid == 0 {
            (
                65534,
                65534,
                "dovecot".to_owned(),
                "dovenull".to_owned(),
                "dovecot".to_owned(),
            )
        } else {
            let me = user_name(uid);
            (uid, gid, me.clone(), me, group_name(gid))
        };
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["mail", "home", "run", "state"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        if uid == 0 {
            for sub in ["mail", "home"] {
                std::os::unix::fs::chown(root.join(sub), Some(mail_uid), Some(mail_gid)).unwrap();
            }
        }
        let users = root.join("users");
        fs::write(
            &users,
            format!(
                "{USER}:{{PLAIN}}{PASSWORD}:{mail_uid}:{mail_gid}::{}::\n",
                root.join("home").display()
            ),
        )
        .unwrap();
        let port = free_port();
        let (ssl, imaps, ca, tls_port) = if tls {
            let (ca, cert, key) = make_certificates(root);
            let tls_port = free_port();
            (
                format!(
                    "ssl = yes\nssl_cert = <{}\nssl_key = <{}\n",
                    cert.display(),
                    key.display()
                ),
                format!("port = {tls_port}\n    address = 127.0.0.1\n    ssl = yes"),
                Some(ca),
                Some(tls_port),
            )
        } else {
            ("ssl = no\n".to_owned(), "port = 0".to_owned(), None, None)
        };
        let capability = match flavor {
            Flavor::Qresync => String::new(),
            Flavor::Condstore => format!("imap_capability = {PLAIN_CAPABILITIES} CONDSTORE\n"),
            Flavor::Plain => format!("imap_capability = {PLAIN_CAPABILITIES}\n"),
            Flavor::Cyrus => unreachable!("refused above"),
        };
        let first_valid_uid = mail_uid.min(500);
        // Not root: no chroot and no user switching for the services.
        let unprivileged = if uid == 0 {
            ""
        } else {
            "service anvil {\n  chroot =\n}\nservice imap-login {\n  chroot =\n}\n"
        };
        let conf = format!(
            r#"# crmsync test Dovecot ({flavor:?})
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
first_valid_uid = {first_valid_uid}
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
mail_plugins =
{settings}
{capability}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
{unprivileged}service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"#,
            root = root.display(),
            users = users.display(),
        );
        let conf_path = root.join("dovecot.conf");
        fs::write(&conf_path, conf).unwrap();
        let log = fs::File::create(root.join("dovecot.stdout")).unwrap();
        let child = Command::new(dovecot_binary())
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dovecot");
        let mut dovecot = Dovecot {
            dir,
            port,
            flavor,
            tls_port,
            ca,
            mail_owner: (mail_uid, mail_gid),
            child,
        };
        dovecot.wait_ready().await;
        dovecot
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dovecot exited ({status}):\n{}", self.logs());
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                if tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
                    .await
                    .is_ok_and(|r| r.is_ok())
                    && line.starts_with("* OK")
                {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "dovecot did not answer on port {}:\n{}",
                    self.port,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Another mail user, `name` with `password` (Dovecot reads the
    /// passwd-file again when it changes).
    pub fn add_user(&self, name: &str, password: &str) {
        let users = self.dir.path().join("users");
        let first = fs::read_to_string(&users).unwrap();
        let rest = first
            .lines()
            .next()
            .unwrap()
            .splitn(3, ':')
            .nth(2)
            .unwrap()
            .to_string();
        let mut file = fs::OpenOptions::new().append(true).open(&users).unwrap();
        std::io::Write::write_all(
            &mut file,
            format!("{name}:{{PLAIN}}{password}:{rest}\n").as_bytes(),
        )
        .unwrap();
    }

    pub fn logs(&self) -> String {
        let root = self.dir.path();
        format!(
            "{}\n{}",
            fs::read_to_string(root.join("dovecot.log")).unwrap_or_default(),
            fs::read_to_string(root.join("dovecot.stdout")).unwrap_or_default()
        )
    }

    pub fn config(&self) -> ImapConfig {
        self.config_on(self.port)
    }

    /// The configuration of a client reaching this Dovecot through `port`
    /// (a proxy).
    pub fn config_on(&self, port: u16) -> ImapConfig {
        client_config(port)
    }

    /// Writes `count` small messages as Maildir++ files of `folder` (before
    /// Dovecot first opens it), owned like Dovecot's own files.
    pub fn seed_maildir(&self, folder: &str, count: usize) {
        self.seed_maildir_with(folder, count, |i| message(&format!("seed{i}"), "Seed"));
    }

    /// As [`Dovecot::seed_maildir`], message `i` being `make(i)`.
    pub fn seed_maildir_with(&self, folder: &str, count: usize, make: impl Fn(usize) -> Vec<u8>) {
        self.seed_maildir_of(USER, folder, count, make)
    }

    /// [`Dovecot::seed_maildir_with`] for another user (see [`Dovecot::add_user`]).
    pub fn seed_maildir_of(
        &self,
        user: &str,
        folder: &str,
        count: usize,
        make: impl Fn(usize) -> Vec<u8>,
    ) {
        let base = self.dir.path().join("mail").join(user);
        let dir = base.join(format!(".{folder}"));
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("maildirfolder"), b"").unwrap();
        let mut paths = vec![
            base.clone(),
            dir.clone(),
            dir.join("cur"),
            dir.join("new"),
            dir.join("tmp"),
            dir.join("maildirfolder"),
        ];
        for i in 0..count {
            let data = make(i);
            let name = format!("1700000000.M{i}P1.seed,S={}:2,", data.len());
            let path = dir.join("cur").join(name);
            fs::write(&path, data).unwrap();
            paths.push(path);
        }
        if self.mail_owner.0 != owner_of(self.dir.path()).0 {
            for p in paths {
                std::os::unix::fs::chown(&p, Some(self.mail_owner.0), Some(self.mail_owner.1))
                    .unwrap();
            }
        }
    }

    /// Another mail client.
    pub async fn client(&self) -> Raw {
        Raw::connect(self.port).await
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration of the test user's client of a server on `port`.
pub fn client_config(port: u16) -> ImapConfig {
    let mut c = ImapConfig::new("127.0.0.1", port, Security::None, USER, PASSWORD);
    c.folders = FOLDERS.iter().map(|f| f.to_string()).collect();
    c.poll_interval = Duration::from_millis(500);
    c.timeout = Duration::from_secs(20);
    c
}

/// A minimal IMAP client of its own (not the crate's code): line-based
/// answers, LOGIN, APPEND with LITERAL+.
pub struct Raw {
    r: BufReader<TcpStream>,
    n: u32,
}

impl Raw {
    pub async fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut raw = Raw {
            r: BufReader::new(stream),
            n: 0,
        };
        let mut greeting = String::new();
        raw.r.read_line(&mut greeting).await.unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        // The password has non-ASCII and quotes: send it as a literal.
        raw.cmd(&format!(
            "LOGIN {USER} {{{}+}}\r\n{}",
            PASSWORD.len(),
            PASSWORD
        ))
        .await;
        raw
    }

    /// Runs a command; returns the untagged lines and the tagged one.
    pub async fn try_cmd(&mut self, cmd: &str) -> (Vec<String>, String) {
        self.n += 1;
        let tag = format!("x{}", self.n);
        let s = self.r.get_mut();
        s.write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .await
            .unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut line))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "connection closed during {cmd}");
            if line.starts_with(&format!("{tag} ")) {
                return (lines, line.trim_end().to_owned());
            }
            lines.push(line.trim_end().to_owned());
        }
    }

    pub async fn cmd(&mut self, cmd: &str) -> Vec<String> {
        let (lines, tagged) = self.try_cmd(cmd).await;
        assert!(
            tagged.split(' ').nth(1) == Some("OK"),
            "{cmd:?} failed: {tagged}"
        );
        lines
    }

    pub async fn select(&mut self, folder: &str) -> Vec<String> {
        self.cmd(&format!("SELECT \"{folder}\"")).await
    }

    /// APPENDs a message, returns its UID (from APPENDUID).
    pub async fn append(&mut self, folder: &str, data: &[u8]) -> u32 {
        self.append_flags(folder, "", data).await
    }

    pub async fn append_flags(&mut self, folder: &str, flags: &str, data: &[u8]) -> u32 {
        self.n += 1;
        let tag = format!("x{}", self.n);
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" ({flags})")
        };
        let s = self.r.get_mut();
        s.write_all(format!("{tag} APPEND \"{folder}\"{flags} {{{}+}}\r\n", data.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(data).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).await.unwrap();
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "APPEND failed: {rest}");
                let at = rest.find("APPENDUID ").expect("APPENDUID");
                let uid = rest[at + 10..]
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .trim_end_matches(']');
                return uid.parse().unwrap();
            }
        }
    }

    /// The flags of a message as this client sees them.
    pub async fn flags(&mut self, folder: &str, uid: u32) -> String {
        self.select(folder).await;
        let lines = self.cmd(&format!("UID FETCH {uid} (FLAGS)")).await;
        lines
            .into_iter()
            .find(|l| l.contains("FETCH"))
            .unwrap_or_default()
    }

    pub async fn logout(mut self) {
        let _ = self.try_cmd("LOGOUT").await;
    }
}

/// A TCP proxy in front of Dovecot that can cut every connection, or cut
/// the next answer after a number of bytes (a connection dropped mid-FETCH).
pub struct Proxy {
    pub port: u16,
    cut_all: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    refuse: Arc<AtomicBool>,
    hold: Hold,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut_all = Arc::new(AtomicU64::new(0));
        let cut_after = Arc::new(AtomicU64::new(u64::MAX));
        let refuse = Arc::new(AtomicBool::new(false));
        let hold: Hold = Arc::new(std::sync::Mutex::new(None));
        let (ca, cf, rf, hd) = (
            cut_all.clone(),
            cut_after.clone(),
            refuse.clone(),
            hold.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if rf.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) =
                    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target))).await
                else {
                    continue;
                };
                tokio::spawn(pipe(client, server, ca.clone(), cf.clone(), hd.clone()));
            }
        });
        Proxy {
            port,
            cut_all,
            cut_after,
            refuse,
            hold,
            task,
        }
    }

    /// Holds the next client data containing `pattern` (a command) before
    /// it reaches the server: the returned receiver fires once it is held,
    /// and sending on the returned sender lets it through. Lets a test act
    /// as another client between two commands of the backend.
    pub fn hold_next(
        &self,
        pattern: &str,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        *self.hold.lock().unwrap() = Some((pattern.as_bytes().to_vec(), held_tx, release_rx));
        (held_rx, release_tx)
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.cut_all.fetch_add(1, Ordering::SeqCst);
    }

    /// Cuts a connection once it has passed `bytes` more bytes from the server.
    pub fn cut_after(&self, bytes: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
    }

    /// New connections are closed at once.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Hold = Arc<
    std::sync::Mutex<
        Option<(
            Vec<u8>,
            tokio::sync::oneshot::Sender<()>,
            tokio::sync::oneshot::Receiver<()>,
        )>,
    >,
>;

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    cut_all: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    hold: Hold,
) {
    let generation = cut_all.load(Ordering::SeqCst);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let ca = cut_all.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match tokio::time::timeout(Duration::from_millis(50), cr.read(&mut buf)).await {
                Err(_) => {
                    if ca.load(Ordering::SeqCst) != generation {
                        return;
                    }
                    continue;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => n,
            };
            let held = {
                let mut slot = hold.lock().unwrap();
                let hit = slot
                    .as_ref()
                    .is_some_and(|(p, _, _)| buf[..n].windows(p.len()).any(|w| w == p.as_slice()));
                if hit {
                    slot.take()
                } else {
                    None
                }
            };
            if let Some((_, held_tx, release_rx)) = held {
                let _ = held_tx.send(());
                let _ = release_rx.await;
            }
            if ca.load(Ordering::SeqCst) != generation || sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(50), sr.read(&mut buf)).await {
            Err(_) => {
                if cut_all.load(Ordering::SeqCst) != generation {
                    break;
                }
                continue;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        if cut_all.load(Ordering::SeqCst) != generation {
            break;
        }
        let budget = cut_after.load(Ordering::SeqCst);
        if budget != u64::MAX {
            let pass = (n as u64).min(budget) as usize;
            let _ = cw.write_all(&buf[..pass]).await;
            cut_after.store(budget - pass as u64, Ordering::SeqCst);
            if (pass as u64) < n as u64 || budget == pass as u64 {
                // Budget spent: drop this connection, let later ones through.
                cut_after.store(u64::MAX, Ordering::SeqCst);
                break;
            }
            continue;
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

/// A mailbox on this Dovecot with the test folders created.
pub async fn mailbox(dovecot: &Dovecot) -> ImapMailbox {
    let mb = ImapMailbox::new(dovecot.config());
    mb.ensure_folders().await.expect("create the test folders");
    mb
}

pub fn message(id: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.com>\r\nSubject: {subject}\r\nMessage-ID: <{id}@example.com>\r\nDate: Mon, 04 Jan 2027 10:00:00 +0000\r\n\r\nHello {subject}\r\n"
    )
    .into_bytes()
}

/// Counts of one mailbox's round trips between two points.
pub struct Trips<'a>(&'a ImapMailbox, u64);

impl<'a> Trips<'a> {
    pub fn start(mb: &'a ImapMailbox) -> Self {
        Trips(mb, mb.round_trips())
    }

    pub fn count(&self) -> u64 {
        self.0.round_trips() - self.1
    }
}
