//! Test harness: a real server (in-process, on a loopback port) over a
//! fresh SQLite file or a fresh PostgreSQL database.
#![allow(dead_code)]

pub mod browser;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crmsync_server::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of the given kind; the guard keeps it alive.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// The same PostgreSQL database for a second server process (the
    /// first one's guard keeps a SQLite folder alive).
    pub fn again(&self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            _dir: None,
        }
    }
}

/// The PostgreSQL server the tests create databases on. `./scripts/test`
/// starts a throwaway one and sets CRMSYNC_TEST_PG_URL.
pub fn pg_admin_url() -> String {
    std::env::var("CRMSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub async fn fresh_db(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("crm.db").display());
            TestDb {
                url,
                _dir: Some(dir),
            }
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = pg_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!("cannot reach PostgreSQL at {admin} ({e}); run ./scripts/test, which starts one, or set CRMSYNC_TEST_PG_URL")
            });
            let name = format!("crmsync_test_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            TestDb {
                url: format!("{base}/{name}"),
                _dir: None,
            }
        }
    }
}

pub struct TestServer {
    pub base: String,
    pub admin: String,
    pub store: Store,
    pub http: reqwest::Client,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn start(backend: Backend) -> TestServer {
    start_with_limit(backend, crmsync_server::DEFAULT_MAX_BODY).await
}

pub async fn start_with_limit(backend: Backend, max_body: usize) -> TestServer {
    let db = fresh_db(backend).await;
    let store = Store::connect(&db.url)
        .await
        .unwrap()
        .with_secret_key(crmsync_server::secrets::SecretKey::generate());
    let admin = crmsync_server::records::init_organization(&store, "admin@example.com", "Admin")
        .await
        .unwrap();
    serve_store(store, admin, db, max_body).await
}

/// A server on a fresh database that has no secret key (R-V2: it stores
/// no secrets).
pub async fn start_without_key(backend: Backend) -> TestServer {
    let db = fresh_db(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    let admin = crmsync_server::records::init_organization(&store, "admin@example.com", "Admin")
        .await
        .unwrap();
    serve_store(store, admin, db, crmsync_server::DEFAULT_MAX_BODY).await
}

pub async fn serve_store(store: Store, admin: String, db: TestDb, max_body: usize) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = store.clone();
    tokio::spawn(async move {
        crmsync_server::serve(serving, listener, max_body, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        base,
        admin,
        store,
        http: reqwest::Client::new(),
        db,
        stop: Some(stop),
    }
}

/// A response's status and JSON body (Null when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        self.body
    }

    /// Asserts an error status and the JSON error shape; returns the code.
    #[track_caller]
    pub fn error(self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let message = self.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            !message.is_empty(),
            "an error names the problem: {}",
            self.body
        );
        self.body["error"]["code"]
            .as_str()
            .expect("error code")
            .to_string()
    }
}

impl TestServer {
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, token: &str, path: &str) -> Reply {
        self.call(token, Method::GET, path, None).await
    }
    pub async fn post(&self, token: &str, path: &str, body: Value) -> Reply {
        self.call(token, Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, token: &str, path: &str, body: Value) -> Reply {
        self.call(token, Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, token: &str, path: &str) -> Reply {
        self.call(token, Method::DELETE, path, None).await
    }

    /// Adds a non-admin user; returns (id, token).
    pub async fn add_user(&self, email: &str) -> (String, String) {
        let body = self
            .post(
                &self.admin,
                "/api/v1/users",
                json!({"email": email, "name": email}),
            )
            .await
            .expect(201);
        (
            body["id"].as_str().unwrap().to_string(),
            body["token"].as_str().unwrap().to_string(),
        )
    }

    pub async fn me(&self, token: &str) -> String {
        // The caller's id: the owner of a record it creates.
        let c = self
            .post(token, "/api/v1/accounts", json!({"name": "probe"}))
            .await
            .expect(201);
        c["owner_id"].as_str().unwrap().to_string()
    }

    pub async fn version(&self) -> i64 {
        self.store.current_version().await.unwrap()
    }
}

/// Runs one async test body against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! both_dbs {
    ($(async fn $name:ident($server:ident : TestServer) $body:block)*) => {$(
        mod $name {
            use super::*;
            async fn run($server: TestServer) $body
            #[tokio::test]
            async fn sqlite() { run(common::start(common::Backend::Sqlite).await).await }
            #[tokio::test]
            async fn postgres() { run(common::start(common::Backend::Postgres).await).await }
        }
    )*};
}

/// One delivery a client received and acknowledged.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub id: String,
    pub set: String,
    pub action: String,
    pub version: i64,
    pub removal: Option<String>,
    pub record: Option<Value>,
}

impl TestServer {
    /// Registers a sync client; returns its JSON.
    pub async fn register(&self, token: &str, name: &str) -> Value {
        let r = self
            .post(token, "/api/v1/sync/clients", json!({"name": name}))
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
        r.body
    }

    /// prepare + data (ids, then records) without acknowledging.
    pub async fn prepare_and_fetch(
        &self,
        token: &str,
        client: &str,
    ) -> (Option<String>, Vec<Delivered>) {
        let prep = self
            .post(token, "/api/v1/sync/prepare", json!({"client_id": client}))
            .await
            .expect(200);
        let Some(batch) = prep["batch"].as_str().map(str::to_string) else {
            return (None, vec![]);
        };
        let mut items = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .get(
                    token,
                    &format!("/api/v1/sync/data?client_id={client}&batch={batch}{cursor}"),
                )
                .await
                .expect(200);
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_i64() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(items.len() as i64, prep["total"].as_i64().unwrap());
        let wanted: Vec<&str> = items
            .iter()
            .filter(|i| i["action"] != "remove")
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        let mut records = std::collections::HashMap::new();
        if !wanted.is_empty() {
            let got = self
                .get(
                    token,
                    &format!(
                        "/api/v1/sync/data?client_id={client}&batch={batch}&ids={}",
                        wanted.join(",")
                    ),
                )
                .await
                .expect(200);
            for r in got["records"].as_array().unwrap() {
                records.insert(r["id"].as_str().unwrap().to_string(), r.clone());
            }
        }
        let delivered = items
            .iter()
            .map(|i| Delivered {
                id: i["id"].as_str().unwrap().into(),
                set: i["set"].as_str().unwrap().into(),
                action: i["action"].as_str().unwrap().into(),
                version: i["version"].as_i64().unwrap(),
                removal: i["removal"].as_str().map(str::to_string),
                record: records.get(i["id"].as_str().unwrap()).cloned(),
            })
            .collect();
        (Some(batch), delivered)
    }

    /// A whole sync: prepare, fetch, acknowledge everything.
    pub async fn sync_once(&self, token: &str, client: &str) -> Vec<Delivered> {
        let (batch, items) = self.prepare_and_fetch(token, client).await;
        if let Some(batch) = batch {
            let prep_items: Vec<Value> = items
                .iter()
                .map(|d| json!({"id": d.id, "version": d.version}))
                .collect();
            self.post(
                token,
                "/api/v1/sync/ack",
                json!({"client_id": client, "batch": batch, "items": prep_items}),
            )
            .await
            .expect(200);
        }
        items
    }

    /// Pushes operations; returns the per-operation results.
    pub async fn push(&self, token: &str, client: &str, ops: Value) -> Vec<Value> {
        let r = self
            .post(
                token,
                "/api/v1/sync/push",
                json!({"client_id": client, "ops": ops}),
            )
            .await
            .expect(200);
        r["results"].as_array().unwrap().clone()
    }
}

pub fn ids(items: &[Delivered]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = items
        .iter()
        .map(|d| (d.id.clone(), d.action.clone()))
        .collect();
    v.sort();
    v
}
