//! REST benchmark (issue "CRM server", BENCHMARKS.md "Server (REST)"; issue
//! 17 §7: the GET beside a minimal axum + typed-sqlx floor in the same run):
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
use sqlx::Row;

#[path = "floor.rs"]
mod floor;
#[path = "support.rs"]
mod support;
use std::time::Instant;

use crmsync_server::Store;

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
    let a = support::args(2000);
    let db = support::BenchDb::create(&a.db).await;
    let url = db.url.clone();
    let store = Store::connect(&url).await.unwrap();
    let (token, admin) = support::admin_of_new_organization(&store).await;
    let ids = support::seed(&store, a.records, |_| admin.id).await;

    let base = support::serve(&store).await;
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
    // GET beside its floor and its parts, interleaved in blocks of 50 whose
    // order rotates, so that all meet the same machine load.
    let floor_base = floor::serve(&url).await;
    let mut direct = floor::Conn::open(&url).await;
    let hash = crmsync_server::auth::hash_token(&token);
    for i in 0..200 {
        http.get(format!("{floor_base}/floor/{}", pick(i)))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let typed_pool = floor::Pool::typed(&url).await;
    let any_pool = floor::Pool::Any(store.pool.clone());
    const PARTS: [&str; 9] = [
        "GET /api/v1/contacts/{id}",
        "floor: axum + typed sqlx, GET one row",
        "floor query alone (typed connection)",
        "store.user_by_token (the auth query)",
        "store.get (the record query)",
        "floor query on a typed pool (sqlx default options)",
        "floor query on the project's Any pool",
        "auth + record queries, a connection each (GET before)",
        "auth + record in one statement (the GET now)",
    ];
    let mut timed: Vec<Vec<std::time::Duration>> = vec![Vec::new(); PARTS.len()];
    for block in 0..a.samples.div_ceil(50) {
        for k in 0..PARTS.len() {
            let part = (k + block) % PARTS.len();
            for j in 0..50 {
                let id = pick(1000 + block * 50 + j);
                let t = Instant::now();
                match part {
                    0 => {
                        let r = http
                            .get(format!("{base}/api/v1/contacts/{id}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                    }
                    1 => {
                        let r = http
                            .get(format!("{floor_base}/floor/{id}"))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                    }
                    2 => {
                        direct.get(&id.to_string()).await.unwrap();
                    }
                    3 => {
                        store.user_by_token(&hash).await.unwrap().unwrap();
                    }
                    4 => {
                        store.get(id).await.unwrap().unwrap();
                    }
                    5 => {
                        typed_pool.get(&id.to_string()).await.unwrap();
                    }
                    6 => {
                        any_pool.get(&id.to_string()).await.unwrap();
                    }
                    7 => {
                        store.user_by_token(&hash).await.unwrap().unwrap();
                        store.get(id).await.unwrap().unwrap();
                    }
                    _ => {
                        let (_, r) = store.user_and_record(&hash, id).await.unwrap().unwrap();
                        r.unwrap();
                    }
                }
                timed[part].push(t.elapsed());
            }
        }
    }
    let p: Vec<(f64, f64)> = timed.into_iter().map(support::percentiles).collect();
    for (name, (p50, p99)) in PARTS.iter().zip(&p) {
        println!("{name:<48} p50 {p50:>9.1} µs   p99 {p99:>9.1} µs");
    }
    println!(
        "GET / floor: p50 {:.2}x, p99 {:.2}x",
        p[0].0 / p[1].0,
        p[0].1 / p[1].1
    );
    let get_p50 = p[0].0;

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
    support::report("PATCH /api/v1/contacts/{id}", patches);

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
    let feed_p50 = support::report("GET /api/v1/changes?since=V (100 changed)", feed);
    let mut direct = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        let c = store.changes_since(since, 1000).await.unwrap();
        direct.push(t.elapsed());
        assert_eq!(c.len(), 100);
    }
    let direct_p50 = support::report("changes_since(V) on the pool (100 changed)", direct);
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
    let floor_p50 = support::report("floor: bare SELECT id WHERE version > V", floor);
    let mut ping = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&store.pool).await.unwrap();
        ping.push(t.elapsed());
    }
    let ping_p50 = support::report("floor: SELECT 1", ping);
    println!(
        "ratios (p50): GET/SELECT-1 {:.1}x; changes-over-HTTP/bare-query {:.1}x; changes_since/bare-query {:.2}x",
        get_p50 / ping_p50,
        feed_p50 / floor_p50,
        direct_p50 / floor_p50
    );
    query_plan(&store, since).await;

    drop(store);
    db.drop_db().await;
}
