//! A real Cyrus IMAP for the tests: one instance per test, serving IMAP and
//! CalDAV/CardDAV (its httpd) on two free loopback ports, with its
//! configuration, databases and mail spool in a temporary folder and one
//! user in an sasldb there. Shared by the IMAP tests (crates/imap/tests/support)
//! and the DAV tests (crates/dav/tests/common).
//!
//! Cyrus comes from Debian: `master` and `httpd` from cyrus-common and
//! cyrus-caldav, `saslpasswd2` from sasl2-bin, and `imapd`/`idled` from
//! cyrus-imapd, which conflicts with Dovecot's package, so scripts/cyrus.sh
//! unpacks it to [`UNPACKED`] instead of installing it (`CRMSYNC_CYRUS_IMAPD`
//! names another `imapd`, with `idled` beside it).
//!
//! Cyrus runs as the `cyrus` user: as root, the folder is handed to that
//! user and `master` drops to it; otherwise the instance runs as whoever
//! runs the tests (`cyrus_user`). Cyrus logs to syslog only; `master.log`
//! holds what `master` itself prints.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Where scripts/cyrus.sh puts `imapd` and `idled`.
pub const UNPACKED: &str = "/usr/local/lib/crmsync/cyrus";
const DEBIAN_BIN: &str = "/usr/lib/cyrus/bin";

pub struct Cyrus {
    pub dir: tempfile::TempDir,
    pub imap_port: u16,
    pub http_port: u16,
    master: Child,
}

/// The folder holding `imapd` and `idled`.
fn imapd_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("CRMSYNC_CYRUS_IMAPD") {
        let path = PathBuf::from(path);
        return path.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    [Path::new(DEBIAN_BIN), Path::new(UNPACKED)]
        .into_iter()
        .find(|dir| dir.join("imapd").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!("Cyrus imapd not found in {DEBIAN_BIN} or {UNPACKED}: run `. scripts/cyrus.sh && install_cyrus` (or ./scripts/test), or set CRMSYNC_CYRUS_IMAPD")
        })
}

fn debian_binary(name: &str, package: &str) -> PathBuf {
    let path = Path::new(DEBIAN_BIN).join(name);
    if !path.exists() {
        panic!(
            "{} not found: install Debian's {package} (`. scripts/cyrus.sh && install_cyrus`)",
            path.display()
        );
    }
    path
}

fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// The uid and gid of a user in /etc/passwd.
fn passwd_entry(user: &str) -> Option<(u32, u32)> {
    fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&user) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
        })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

impl Cyrus {
    /// Starts Cyrus with `user` (password `password`) whose INBOX exists.
    /// Retries on new ports if another process took one meanwhile.
    pub async fn start(user: &str, password: &str) -> Cyrus {
        Self::start_idled(user, password, true).await
    }

    /// [`Cyrus::start`] as Debian's default `cyrus.conf` runs it: without
    /// `idled`, `imapd` announces nothing while in IDLE and looks at the
    /// mailbox only every `imapidlepoll` (60 s).
    pub async fn start_without_idled(user: &str, password: &str) -> Cyrus {
        Self::start_idled(user, password, false).await
    }

    async fn start_idled(user: &str, password: &str, idled: bool) -> Cyrus {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(user, password, idled).await {
                Ok(cyrus) => return cyrus,
                Err(log) => last = log,
            }
        }
        panic!("Cyrus did not start:\n{last}");
    }

    async fn try_start(user: &str, password: &str, idled: bool) -> Result<Cyrus, String> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        for sub in [
            "db", "socket", "proc", "lock", "log", "quota", "user", "sieve",
        ] {
            fs::create_dir_all(root.join("config").join(sub)).unwrap();
        }
        fs::create_dir_all(root.join("spool")).unwrap();

        use std::os::unix::fs::MetadataExt;
        let as_root = fs::metadata(root).unwrap().uid() == 0;
        // Cyrus never runs as root: `master` drops to `cyrus_user`.
        let cyrus_user = if as_root {
            String::new()
        } else {
            format!(
                "cyrus_user: {}\n",
                user_name(fs::metadata(root).unwrap().uid())
            )
        };
        let (imap_port, http_port) = (free_port(), free_port());
        let conf = root.join("imapd.conf");
        fs::write(
            &conf,
            format!(
                "configdirectory: {root}/config
defaultpartition: default
partition-default: {root}/spool
servername: localhost
{cyrus_user}allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {root}/sasldb2
sasl_mech_list: PLAIN LOGIN
autocreate_quota: 0
httpmodules: caldav carddav
idlesocket: {root}/config/socket/idle
notifysocket: {root}/config/socket/notify
lmtpsocket: {root}/config/socket/lmtp
syslog_prefix: crmsync-test-cyrus
",
                root = root.display()
            ),
        )
        .unwrap();
        let bin = imapd_dir();
        let conf_arg = conf.display();
        fs::write(
            root.join("cyrus.conf"),
            format!(
                r#"DAEMON {{
{idled}
}}
SERVICES {{
  imap cmd="{imapd} -C {conf_arg}" listen="127.0.0.1:{imap_port}" prefork=0
  http cmd="{httpd} -C {conf_arg}" listen="127.0.0.1:{http_port}" prefork=0
}}
EVENTS {{
}}
"#,
                idled = if idled {
                    format!(
                        "  idled cmd=\"{} -C {conf_arg}\"",
                        bin.join("idled").display()
                    )
                } else {
                    String::new()
                },
                imapd = bin.join("imapd").display(),
                httpd = debian_binary("httpd", "cyrus-caldav").display(),
            ),
        )
        .unwrap();
        add_sasl_user(root, user, password);
        if as_root {
            let (uid, gid) = passwd_entry("cyrus")
                .expect("no `cyrus` user: install Debian's cyrus-common (scripts/cyrus.sh)");
            chown_tree(root, uid, gid);
        }

        // Its own process group: `master` ends its services by signalling
        // its group, which would otherwise reach the other tests' instances.
        use std::os::unix::process::CommandExt;
        let master = Command::new(debian_binary("master", "cyrus-common"))
            .process_group(0)
            .arg("-C")
            .arg(&conf)
            .arg("-M")
            .arg(root.join("cyrus.conf"))
            .arg("-p")
            .arg(root.join("master.pid"))
            .arg("-L")
            .arg(root.join("master.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run Cyrus master: {e}"))?;
        let mut cyrus = Cyrus {
            dir,
            imap_port,
            http_port,
            master,
        };
        cyrus.wait_ready().await?;
        cyrus.create_inbox(user, password).await?;
        Ok(cyrus)
    }

    /// Waits for Cyrus to answer on both ports.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.master.try_wait() {
                return Err(format!("master exited ({status}):\n{}", self.logs()));
            }
            if cyrus_greets(self.imap_port).await && cyrus_serves_http(self.http_port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer on ports {}/{} within 20 s:\n{}",
                    self.imap_port,
                    self.http_port,
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The user's first IMAP login creates the INBOX (`autocreate_quota`);
    /// Cyrus's httpd answers 500 to a user who has none yet.
    async fn create_inbox(&self, user: &str, password: &str) -> Result<(), String> {
        let stream = TcpStream::connect(("127.0.0.1", self.imap_port))
            .await
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        let login = format!(
            "a LOGIN {{{}+}}\r\n{user} {{{}+}}\r\n{password}\r\nb LOGOUT\r\n",
            user.len(),
            password.len()
        );
        r.get_mut()
            .write_all(login.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed during LOGIN".to_owned());
            }
            if let Some(answer) = line.strip_prefix("a ") {
                return if answer.starts_with("OK") {
                    Ok(())
                } else {
                    Err(format!("LOGIN {user}: {answer}"))
                };
            }
        }
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    /// Stops Cyrus: SIGTERM makes `master` end every process it started;
    /// whatever is left after 10 s is killed with its process group.
    pub fn stop(&mut self) {
        if !matches!(self.master.try_wait(), Ok(None)) {
            return;
        }
        let group = self.master.id().to_string();
        let signal = |sig: &str, target: &str| {
            let _ = Command::new("kill").arg(sig).arg("--").arg(target).status();
        };
        signal("-TERM", &group);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.master.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL", &format!("-{group}"));
        let _ = self.master.wait();
    }
}

impl Drop for Cyrus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> String {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_owned())
        })
        .unwrap_or_else(|| panic!("uid {uid} has no name in /etc/passwd: Cyrus needs one"))
}

/// Adds `user` to the instance's sasldb, in the realm of `servername`.
fn add_sasl_user(root: &Path, user: &str, password: &str) {
    let mut child = Command::new("saslpasswd2")
        .arg("-p")
        .arg("-c")
        .arg("-f")
        .arg(root.join("sasldb2"))
        .arg("-u")
        .arg("localhost")
        .arg(user)
        .stdin(Stdio::piped())
        .spawn()
        .expect("saslpasswd2 not found: install Debian's sasl2-bin (scripts/cyrus.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "saslpasswd2 failed");
}

/// Whether Cyrus greets an IMAP client on `port` (not another server that
/// took the port meanwhile).
async fn cyrus_greets(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
    matches!(read, Ok(Ok(_))) && line.starts_with("* OK") && line.contains("Cyrus")
}

/// Whether Cyrus's httpd answers on `port`: its error pages name it.
async fn cyrus_serves_http(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && String::from_utf8_lossy(&answer).contains("Cyrus-HTTP")
}
