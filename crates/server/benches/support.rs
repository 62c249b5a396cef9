//! Shared by the benchmarks: arguments, a throwaway database, bulk seeding
//! and percentile reports.
#![allow(dead_code)]

use serde_json::json;
use sqlx::Connection;
use std::time::{Duration, Instant};

use crmsync_core::time::now_timestamp;
use crmsync_server::Store;

pub struct Args {
    pub db: String,
    pub records: usize,
    pub samples: usize,
}

pub fn args(default_samples: usize) -> Args {
    let mut a = Args {
        db: "sqlite".into(),
        records: 1_000_000,
        samples: default_samples,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--db" => a.db = value,
            "--records" => a.records = value.parse().expect("--records N"),
            "--samples" => a.samples = value.parse().expect("--samples N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// A fresh database (SQLite in a temporary folder, or a new PostgreSQL
/// database on CRMSYNC_TEST_PG_URL) dropped when the benchmark ends.
pub struct BenchDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl BenchDb {
    pub async fn create(kind: &str) -> BenchDb {
        match kind {
            "sqlite" => {
                let d = tempfile::tempdir().unwrap();
                BenchDb {
                    url: format!("sqlite://{}", d.path().join("bench.db").display()),
                    _dir: Some(d),
                    pg: None,
                }
            }
            "postgres" => {
                let admin = std::env::var("CRMSYNC_TEST_PG_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let name = format!("crmsync_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
                BenchDb {
                    url,
                    _dir: None,
                    pg: Some((admin, name)),
                }
            }
            other => panic!("--db {other}: use sqlite or postgres"),
        }
    }

    pub async fn drop_db(self) {
        if let Some((admin, name)) = self.pg {
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}

pub fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let at = |p: f64| d[((d.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

/// Prints p50/p99 in µs and returns the p50.
pub fn report(what: &str, d: Vec<Duration>) -> f64 {
    let n = d.len();
    let (p50, p99) = percentiles(d);
    println!("{what:<48} p50 {p50:>9.1} µs   p99 {p99:>9.1} µs   (n={n})");
    p50
}

/// Bulk-loads contacts straight into the records table (500 rows per
/// statement, 20,000 per transaction); `owner(i)` picks each one's owner.
pub async fn seed(store: &Store, n: usize, owner: impl Fn(usize) -> uuid::Uuid) -> Vec<uuid::Uuid> {
    let mut ids = Vec::with_capacity(n);
    let now = now_timestamp();
    let mut version = store.current_version().await.unwrap();
    let started = Instant::now();
    for chunk_start in (0..n).step_by(20_000) {
        let mut tx = store.pool.begin().await.unwrap();
        let end = (chunk_start + 20_000).min(n);
        for batch_start in (chunk_start..end).step_by(500) {
            let batch_end = (batch_start + 500).min(end);
            let mut sql = String::from(
                "INSERT INTO records (id, entity_set, version, owner_id, state, created_at, modified_at, search_text, data) VALUES ",
            );
            for k in 0..batch_end - batch_start {
                let b = k * 6;
                if k > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, 'contacts', ${}, ${}, 'active', ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 4,
                    b + 5,
                    b + 6
                ));
            }
            let mut q = sqlx::query(&sql);
            for i in batch_start..batch_end {
                let id = uuid::Uuid::new_v4();
                ids.push(id);
                version += 1;
                let data = json!({"first_name": format!("First{i}"), "last_name": format!("Last{i}"), "email": format!("p{i}@example.com"), "city": "Berlin"});
                // What a write through the API stores, so that searches find it.
                let search = crmsync_core::record::search_text(
                    crmsync_core::EntitySet::Contacts,
                    data.as_object().unwrap(),
                );
                q = q
                    .bind(id.to_string())
                    .bind(version)
                    .bind(owner(i).to_string())
                    .bind(now.clone())
                    .bind(search)
                    .bind(data.to_string());
            }
            q.execute(&mut *tx).await.unwrap();
        }
        sqlx::query("UPDATE sequence_counter SET value = $1 WHERE name = 'version'")
            .bind(version)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    if store.kind == crmsync_server::db::DbKind::Postgres {
        sqlx::query("ANALYZE records")
            .execute(&store.pool)
            .await
            .unwrap();
    }
    eprintln!(
        "seeded {n} contacts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ids
}

/// The organization and its admin: (the admin's API token, the admin).
pub async fn admin_of_new_organization(store: &Store) -> (String, crmsync_core::Record) {
    let token = crmsync_server::records::init_organization(store, "bench@example.com", "Bench")
        .await
        .unwrap();
    let admin = store
        .user_by_token(&crmsync_server::auth::hash_token(&token))
        .await
        .unwrap()
        .unwrap();
    (token, admin)
}

/// Serves `store` on a free loopback port until the benchmark ends; its
/// base URL.
pub async fn serve(store: &Store) -> String {
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
        .unwrap();
    });
    base
}
