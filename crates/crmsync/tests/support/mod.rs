//! Shared by the crash test and the agent benchmark: the real `crmsync`
//! binary serving a fresh SQLite organization as its own process.

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
    _process: Killed,
}

impl Server {
    /// `admin init` + `serve` on `dir/crm.db`; returns once /healthz answers.
    pub async fn start(dir: &Path) -> Server {
        let db = format!("sqlite://{}", dir.join("crm.db").display());
        let init = Command::new(BIN)
            .args([
                "admin",
                "init",
                "--db",
                &db,
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
        let token = String::from_utf8(init.stdout)
            .unwrap()
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap()
            .trim()
            .to_string();
        Server::serve(&db, token).await
    }

    /// `serve` on an organization's database `db` (a `sqlite://` or
    /// `postgres://` URL), with the admin's token; returns once /healthz
    /// answers.
    pub async fn serve(db: &str, token: String) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Killed(
            Command::new(BIN)
                .args([
                    "serve",
                    "--db",
                    db,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ])
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
            _process: process,
        }
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
