//! REST benchmark (issue "CRM server", BENCHMARKS.md "Server (REST)"):
//! with N contacts stored, p50/p99 of a single GET and PATCH over HTTP on
//! loopback, and of "changes since V" when 100 records changed; beside the
//! floors measured in the same run (the bare indexed query on the same
//! pool; on PostgreSQL also a bare `SELECT 1`). Prints the query plan.
//!
//!   cargo bench -p crmsync-server --bench rest_api -- [--db sqlite|postgres] [--records N] [--samples N]
//!
//! PostgreSQL: a fresh database on CRMSYNC_TEST_PG_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres), dropped afterwards.

use serde_json::json;
use sqlx::{Connection, Row};
use std::time::{Duration, Instant};

use crmsync_core::time::now_timestamp;
use crmsync_server::Store;

struct Args {
    db: String,
    records: usize,
    samples: usize,
}

fn args() -> Args {
    let mut a = Args {
        db: "sqlite".into(),
        records: 1_000_000,
        samples: 2000,
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

fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let at = |p: f64| d[((d.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

fn report(what: &str, d: Vec<Duration>) -> f64 {
    let n = d.len();
    let (p50, p99) = percentiles(d);
    println!("{what:<44} p50 {p50:>9.1} µs   p99 {p99:>9.1} µs   (n={n})");
    p50
}

/// Bulk-loads contacts straight into the records table: 500 rows per
/// statement, one transaction per 20,000 rows.
async fn seed(store: &Store, owner: uuid::Uuid, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::with_capacity(n);
    let now = now_timestamp();
    let mut version: i64 =
        sqlx::query_scalar("SELECT value FROM sequence_counter WHERE name = 'version'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
    let started = Instant::now();
    for chunk_start in (0..n).step_by(20_000) {
        let mut tx = store.pool.begin().await.unwrap();
        let end = (chunk_start + 20_000).min(n);
        for batch_start in (chunk_start..end).step_by(500) {
            let batch_end = (batch_start + 500).min(end);
            let mut sql = String::from("INSERT INTO records (id, entity_set, version, owner_id, state, created_at, modified_at, search_text, data) VALUES ");
            for (k, _) in (batch_start..batch_end).enumerate() {
                let b = k * 5;
                if k > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, 'contacts', ${}, ${}, 'active', ${}, ${}, '', ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 4,
                    b + 5
                ));
            }
            let mut q = sqlx::query(&sql);
            for i in batch_start..batch_end {
                let id = uuid::Uuid::new_v4();
                ids.push(id);
                version += 1;
                let data = json!({"first_name": format!("First{i}"), "last_name": format!("Last{i}"), "email": format!("p{i}@example.com"), "city": "Berlin"});
                q = q
                    .bind(id.to_string())
                    .bind(version)
                    .bind(owner.to_string())
                    .bind(now.clone())
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
    eprintln!(
        "seeded {n} contacts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ids
}

async fn query_plan(store: &Store, since: i64) {
    let (sql, label) = match store.kind {
        crmsync_server::db::DbKind::Sqlite => ("EXPLAIN QUERY PLAN SELECT id, entity_set, version, deleted_at FROM records WHERE version > $1 ORDER BY version LIMIT 1000", "SQLite"),
        crmsync_server::db::DbKind::Postgres => ("EXPLAIN SELECT id, entity_set, version, deleted_at FROM records WHERE version > $1 ORDER BY version LIMIT 1000", "PostgreSQL"),
    };
    println!("query plan of \"changes since V\" on {label}:");
    for row in sqlx::query(sql)
        .bind(since)
        .fetch_all(&store.pool)
        .await
        .unwrap()
    {
        let line: String = row.try_get(row.len() - 1).unwrap();
        println!("    {line}");
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut dir = None;
    let mut pg_drop = None;
    let url = match a.db.as_str() {
        "sqlite" => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("bench.db").display());
            dir = Some(d);
            url
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
            pg_drop = Some((admin.clone(), name.clone()));
            format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
        }
        other => panic!("--db {other}: use sqlite or postgres"),
    };
    let store = Store::connect(&url).await.unwrap();
    let token = crmsync_server::records::init_organization(&store, "bench@example.com", "Bench")
        .await
        .unwrap();
    let admin = store
        .user_by_token(&crmsync_server::auth::hash_token(&token))
        .await
        .unwrap()
        .unwrap();
    let ids = seed(&store, admin.id, a.records).await;
    if store.kind == crmsync_server::db::DbKind::Postgres {
        sqlx::query("ANALYZE records")
            .execute(&store.pool)
            .await
            .unwrap();
    }

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
    // One keep-alive connection, as a sync client would use.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let pick = |i: usize| ids[(i * 7919) % ids.len()];

    println!(
        "== {} with {} contacts, {} samples each",
        a.db, a.records, a.samples
    );
    // Warm up the connection and the caches.
    for i in 0..200 {
        http.get(format!("{base}/api/v1/contacts/{}", pick(i)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let mut gets = Vec::new();
    for i in 0..a.samples {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/api/v1/contacts/{}", pick(i + 1000)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        gets.push(t.elapsed());
    }
    let get_p50 = report("GET /api/v1/contacts/{id}", gets);

    let mut patches = Vec::new();
    for i in 0..a.samples {
        let t = Instant::now();
        let r = http
            .patch(format!("{base}/api/v1/contacts/{}", pick(i + 5000)))
            .bearer_auth(&token)
            .json(&json!({"job_title": format!("title {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        patches.push(t.elapsed());
    }
    report("PATCH /api/v1/contacts/{id}", patches);

    // 100 records change after V.
    let since = store.current_version().await.unwrap();
    for i in 0..100 {
        let r = http
            .patch(format!("{base}/api/v1/contacts/{}", pick(i + 90_000)))
            .bearer_auth(&token)
            .json(&json!({"city": "Paris"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut feed = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/api/v1/changes?since={since}&limit=1000"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        feed.push(t.elapsed());
        assert_eq!(body["items"].as_array().unwrap().len(), 100);
    }
    let feed_p50 = report("GET /api/v1/changes?since=V (100 changed)", feed);
    let mut direct = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        let c = store.changes_since(since, 1000).await.unwrap();
        direct.push(t.elapsed());
        assert_eq!(c.len(), 100);
    }
    let direct_p50 = report("changes_since(V) on the pool (100 changed)", direct);
    let mut floor = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        let rows =
            sqlx::query("SELECT id FROM records WHERE version > $1 ORDER BY version LIMIT 1000")
                .bind(since)
                .fetch_all(&store.pool)
                .await
                .unwrap();
        floor.push(t.elapsed());
        assert_eq!(rows.len(), 100);
    }
    let floor_p50 = report("floor: bare SELECT id WHERE version > V", floor);
    let mut ping = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&store.pool).await.unwrap();
        ping.push(t.elapsed());
    }
    let ping_p50 = report("floor: SELECT 1", ping);
    println!(
        "ratios (p50): GET/SELECT-1 {:.1}x; changes-over-HTTP/bare-query {:.1}x; changes_since/bare-query {:.2}x",
        get_p50 / ping_p50,
        feed_p50 / floor_p50,
        direct_p50 / floor_p50
    );
    query_plan(&store, since).await;

    drop(store);
    drop(dir);
    if let Some((admin, name)) = pg_drop {
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}
