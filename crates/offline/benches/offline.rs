//! R-O1's figures (docs/benchmarks.md, "Offline copy"): a replica of N
//! matching records (default 100,000) made from nothing, refreshed after
//! 100 and 1,000 server changes, and 1,000 offline edits played back, with
//! the agent's own code (`crmsync_offline::OfflineCopy::go_online`) against a served
//! store on SQLite or PostgreSQL.
//!
//!   cargo bench -p crmsync-offline --bench offline -- [--db sqlite|postgres] [--records N] [--samples S]

#[path = "../../server/benches/support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use crmsync_agent::crm::CrmClient;
use crmsync_core::EntitySet;
use crmsync_server::auth::Caller;
use crmsync_server::replica::Replica;

/// The server's answer time for the feed page of the last `changed`
/// changes, over HTTP (loopback), `samples` times.
async fn feed_times(crm: &CrmClient, since: i64, samples: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let page = crm
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/offline/changes?since={since}&limit=1000"),
                None,
            )
            .await
            .unwrap();
        out.push(started.elapsed());
        assert!(page["records"].is_array(), "{page}");
    }
    out
}

/// Changes `n` of the seeded contacts on the server (through the store, as
/// the API writes them).
async fn change_on_server(
    store: &crmsync_server::Store,
    admin: Caller,
    ids: &[uuid::Uuid],
    n: usize,
    round: usize,
) {
    for id in ids.iter().take(n) {
        crmsync_server::records::update(
            store,
            admin,
            EntitySet::Contacts,
            *id,
            &json!({"job_title": format!("round {round}")}),
            None,
        )
        .await
        .unwrap();
    }
}

#[tokio::main]
async fn main() {
    let a = support::args(20);
    let records = if a.records == 1_000_000 {
        100_000
    } else {
        a.records
    };
    let db = support::BenchDb::create(&a.db).await;
    let store = crmsync_server::Store::connect(&db.url).await.unwrap();
    let (token, admin) = support::admin_of_new_organization(&store).await;
    let caller = Caller {
        user_id: admin.id,
        is_admin: true,
    };
    let ids = support::seed(&store, records, |_| admin.id).await;
    let base = support::serve(&store).await;
    let crm = CrmClient::new(&base, &token);
    let client = crm
        .request(
            reqwest::Method::POST,
            "/api/v1/sync/clients",
            Some(json!({"name": "bench", "kinds": ["mail"]})),
        )
        .await
        .unwrap();
    let client = client["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.offline.db");
    let mut copy = crmsync_offline::OfflineCopy::at(path.clone());
    println!(
        "offline copy, {} database, {records} matching contacts",
        a.db
    );

    // 1. The first copy.
    let started = Instant::now();
    let first = copy.go_online(&crm, &token, &client).await.unwrap();
    let first_copy = started.elapsed();
    let size = Replica::open(&path).await.unwrap().size().await.unwrap();
    assert_eq!(
        size.records as usize, records,
        "every matching record copied"
    );
    println!(
        "first copy: {:.1} s ({} records applied), {:.1} MB on disk ({:.0} bytes per record)",
        first_copy.as_secs_f64(),
        first.refreshed,
        size.bytes as f64 / 1e6,
        size.bytes as f64 / records as f64
    );

    // 2. Refreshes: the server's answer for 100 and 1,000 changes, and the
    // agent's whole refresh.
    for (round, changed) in [(1, 100), (2, 1000)] {
        let since = store.current_version().await.unwrap();
        change_on_server(&store, caller, &ids, changed, round).await;
        let times = feed_times(&crm, since, a.samples).await;
        support::report(
            &format!("feed page of {changed} changes (server, HTTP)"),
            times,
        );
        let started = Instant::now();
        let r = copy.go_online(&crm, &token, &client).await.unwrap();
        println!(
            "refresh with {changed} changes: {:.1} ms ({} applied)",
            started.elapsed().as_secs_f64() * 1e3,
            r.refreshed
        );
        assert_eq!(r.refreshed, changed);
    }

    // 3. 1,000 offline edits played back.
    let replica = Replica::open(&path).await.unwrap();
    for id in ids.iter().skip(records / 2).take(1000) {
        crmsync_server::records::update(
            &replica.store,
            caller,
            EntitySet::Contacts,
            *id,
            &json!({"city": "Offline"}),
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(replica.size().await.unwrap().waiting, 1000);
    let started = Instant::now();
    let r = copy.go_online(&crm, &token, &client).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.played_back, 1000, "{:?}", r.refused);
    println!(
        "playback of 1,000 offline edits: {:.2} s ({:.2} ms per edit, 50 per request), then {} refreshed",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / 1000.0,
        r.refreshed
    );
    db.drop_db().await;
}
