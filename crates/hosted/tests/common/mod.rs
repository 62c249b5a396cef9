//! The tests' server: `crmsync serve` in-process on a fresh SQLite file or
//! PostgreSQL database, with a secret key, the connection test and
//! (optionally) sync workers, as the binary runs them.
#![allow(dead_code)]

use std::sync::Arc;

use serde_json::{json, Value};

use crmsync_server::Store;

pub struct Server {
    pub base: String,
    pub admin: String,
    pub store: Store,
    _workers: Option<crmsync_hosted::Workers>,
    pub dir: tempfile::TempDir,
}

/// A server on a fresh SQLite file or PostgreSQL database, with two sync
/// workers when `workers`.
pub async fn serve(postgres: bool, workers: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = if postgres {
        let admin_url = std::env::var("CRMSYNC_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("crmsync_test_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::postgres::PgPool::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    } else {
        format!("sqlite://{}", dir.path().join("crm.db").display())
    };
    let store = Store::connect(&url)
        .await
        .unwrap()
        .with_secret_key(crmsync_server::secrets::SecretKey::generate())
        .with_connection_test(Arc::new(crmsync_hosted::MailboxTester));
    let admin = crmsync_server::records::init_organization(&store, "admin@example.com", "Admin")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let serving = store.clone();
    tokio::spawn(async move {
        crmsync_server::serve(
            serving,
            listener,
            crmsync_server::DEFAULT_MAX_BODY,
            std::future::pending(),
        )
        .await
        .unwrap()
    });
    let settings = crmsync_hosted::WorkerSettings {
        count: 2,
        crm_url: base.clone(),
        cache_dir: dir.path().join("mailbox-caches"),
        holder: "test".into(),
        connections_per_host: crmsync_hosted::DEFAULT_CONNECTIONS_PER_HOST,
    };
    let workers = match workers {
        true => Some(
            crmsync_hosted::start_workers(store.clone(), settings)
                .await
                .unwrap(),
        ),
        false => None,
    };
    Server {
        base,
        admin,
        store,
        _workers: workers,
        dir,
    }
}

impl Server {
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// A new user; returns their token.
    pub async fn user(&self, email: &str) -> String {
        let (status, user) = self
            .call(
                &self.admin,
                reqwest::Method::POST,
                "/api/v1/users",
                Some(json!({"email": email, "name": email})),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        user["token"].as_str().unwrap().to_string()
    }

    pub async fn mailbox(&self, token: &str, id: &str) -> Value {
        self.call(
            token,
            reqwest::Method::GET,
            &format!("/api/v1/mailboxes/{id}"),
            None,
        )
        .await
        .1
    }
}
