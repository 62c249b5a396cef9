//! Shared by the crash, migration and CRM-change tests and the agent
//! benchmarks: the real `crmsync` binary serving a fresh organization (on
//! SQLite, or on a fresh PostgreSQL database) as its own process.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_crmsync");

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `crmsync serve` on a loopback port, with the admin's token.
pub struct Server {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
    process: Killed,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CRMSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub async fn postgres_admin() -> sqlx::PgConnection {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {admin} ({e}); run ./scripts/test, which starts one, or set CRMSYNC_TEST_PG_URL")
    })
}

/// A new, empty PostgreSQL database: its name and URL.
pub async fn postgres_db() -> (String, String) {
    let name = format!("crmsync_test_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut postgres_admin().await)
        .await
        .unwrap();
    let admin = postgres_admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    (name.clone(), format!("{base}/{name}"))
}

/// CPU time (user + system) a process has used so far (/proc/PID/stat).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// `admin init` + `serve` on `dir/crm.db`; returns once /healthz answers.
    pub async fn start(dir: &Path) -> Server {
        let db = format!("sqlite://{}", dir.join("crm.db").display());
        let token = Server::init(&db);
        Server::serve(&db, token).await
    }

    /// `admin init` of a new organization in `db`; the admin's token.
    pub fn init(db: &str) -> String {
        let init = Command::new(BIN)
            .args([
                "admin",
                "init",
                "--db",
                db,
                "--email",
                "me@example.com",
                "--name",
                "Me",
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        String::from_utf8(init.stdout)
            .unwrap()
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap()
            .trim()
            .to_string()
    }

    /// `serve` on an organization's database `db` (a `sqlite://` or
    /// `postgres://` URL), with the admin's token; returns once /healthz
    /// answers.
    pub async fn serve(db: &str, token: String) -> Server {
        Server::serve_on(db, token, free_port()).await
    }

    /// [`Server::serve`] on a given port (a server started again where its
    /// clients expect it).
    pub async fn serve_on(db: &str, token: String, port: u16) -> Server {
        Server::serve_with(db, token, port, &[]).await
    }

    /// [`Server::serve_on`] with more arguments of `serve`.
    pub async fn serve_with(db: &str, token: String, port: u16, extra: &[&str]) -> Server {
        let process = Killed(
            Command::new(BIN)
                .args([
                    "serve",
                    "--db",
                    db,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ])
                .args(extra)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            base,
            token,
            http,
            process,
        }
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Stops the server as an operator does (SIGTERM) and waits until it
    /// has exited; returns how long that took.
    pub fn terminate(mut self) -> Duration {
        let started = Instant::now();
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.process.0.wait().unwrap();
        started.elapsed()
    }

    /// A REST call as the admin; it must succeed. Returns the JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// An agent configuration for a local mailbox at `root`.
    pub fn agent_config(&self, dir: &Path, name: &str, root: &Path) -> std::path::PathBuf {
        std::fs::create_dir_all(root).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[crm]\nurl = \"{}\"\ntoken = \"{}\"\n[client]\nname = \"{name}\"\ncache = \"{}\"\n[mailbox.local]\nroot = \"{}\"\n[sync]\ninterval = \"15m\"\n",
                self.base,
                self.token,
                dir.join(format!("{name}-cache.db")).display(),
                root.display()
            ),
        )
        .unwrap();
        config
    }
}

/// Server-side synchronization across processes (R-V4, R-V6; the
/// `hosted` test and bench): `p` `serve` processes on one database sharing
/// a new secret key (made in `dir`), each with `extra` arguments.
pub async fn serve_processes(
    dir: &Path,
    db: &str,
    token: &str,
    p: usize,
    extra: &[&str],
) -> Vec<Server> {
    let key = dir.join("secret.key");
    let made = Command::new(BIN)
        .args(["admin", "gen-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let key = key.to_string_lossy().to_string();
    let mut args = vec!["--secret-key-file", key.as_str()];
    args.extend_from_slice(extra);
    let mut servers = Vec::new();
    for _ in 0..p {
        servers.push(Server::serve_with(db, token.to_string(), free_port(), &args).await);
    }
    servers
}

/// Message `i` of mail user `user{user}`, from lee@example.org.
pub fn tracked_message(user: usize, i: usize) -> Vec<u8> {
    format!(
        "Message-ID: <m{i}.u{user}@example.org>\r\nFrom: lee@example.org\r\nTo: user{user}@example.com\r\nSubject: Deal {i}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nHello\r\n"
    )
    .into_bytes()
}

/// CRM users `user0`…: their tokens.
pub async fn crm_users(server: &Server, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for u in 0..n {
        let name = format!("user{u}");
        let user = server
            .call(
                reqwest::Method::POST,
                "/api/v1/users",
                Some(serde_json::json!({"email": format!("{name}@example.com"), "name": name})),
            )
            .await;
        tokens.push(user["token"].as_str().unwrap().to_string());
    }
    tokens
}

/// Each user connects mail user `user{u}` (password `pw`) of the IMAP
/// server on `imap_port`, and the `dav` section `dav(u)` if any, through
/// the server `base(u)`: the mailboxes' ids.
pub async fn connect_mailboxes(
    tokens: &[String],
    imap_port: u16,
    dav: impl Fn(usize) -> Option<serde_json::Value>,
    base: impl Fn(usize) -> String,
) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (u, t) in tokens.iter().enumerate() {
        let mut body = serde_json::json!({"name": "mail", "imap": {"host": "127.0.0.1", "port": imap_port,
            "security": "none", "username": format!("user{u}"), "password": "pw"}});
        if let Some(section) = dav(u) {
            body["dav"] = section;
        }
        let r = http
            .post(format!("{}/api/v1/mailboxes", base(u)))
            .bearer_auth(t)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let created: serde_json::Value = r.json().await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    ids
}
