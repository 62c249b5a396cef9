//! Prepare benchmark (issue "Sync protocol", BENCHMARKS.md "Prepare"):
//! with N records in the organization, the time of a prepare when 100 of
//! the client's records changed, and of prepares with nothing changed for
//! 1,000 clients. Calls the server's prepare in-process (no HTTP), so the
//! figures are the database work.
//!
//!   cargo bench -p crmsync-server --bench prepare -- [--db sqlite|postgres] [--records N] [--samples N]

use serde_json::{json, Value};
use std::time::Instant;

#[path = "support.rs"]
mod support;

use crmsync_core::EntitySet;
use crmsync_server::auth::{hash_token, Caller};
use crmsync_server::sync::{clients, prepare};
use crmsync_server::{records, Store};

const MINE: usize = 1000;

async fn ack_all(store: &Store, caller: Caller, client: &str, prep: &Value) -> usize {
    let Some(batch) = prep["batch"].as_str() else {
        return 0;
    };
    let mut items = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let mut q = std::collections::HashMap::from([
            ("client_id".to_string(), client.to_string()),
            ("batch".to_string(), batch.to_string()),
        ]);
        if let Some(c) = cursor {
            q.insert("cursor".into(), c.to_string());
        }
        let page = prepare::data(store, caller, &q).await.unwrap();
        items.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| json!({"id": i["id"], "version": i["version"]})),
        );
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let n = items.len();
    prepare::ack(
        store,
        caller,
        &json!({"client_id": client, "batch": batch, "items": items}),
    )
    .await
    .unwrap();
    n
}

#[tokio::main]
async fn main() {
    let a = support::args(20);
    let db = support::BenchDb::create(&a.db).await;
    let store = Store::connect(&db.url).await.unwrap();
    let token = records::init_organization(&store, "admin@example.com", "Admin")
        .await
        .unwrap();
    let admin_id = store
        .user_by_token(&hash_token(&token))
        .await
        .unwrap()
        .unwrap()
        .id;
    let admin = Caller {
        user_id: admin_id,
        is_admin: true,
    };
    let mut users = Vec::new();
    for i in 0..10 {
        let u = records::create(
            &store,
            admin,
            EntitySet::Users,
            &json!({"email": format!("u{i}@example.com"), "name": format!("U{i}")}),
        )
        .await
        .unwrap();
        users.push(u.record.id);
    }
    let ann = Caller {
        user_id: users[0],
        is_admin: false,
    };
    let ids = support::seed(&store, a.records, |i| {
        if i < MINE {
            users[0]
        } else {
            users[1 + i % 9]
        }
    })
    .await;
    let client = clients::register(&store, ann, &json!({"name": "laptop"}))
        .await
        .unwrap()
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();

    println!(
        "== {} with {} records, {} of them the client's",
        a.db, a.records, MINE
    );
    let t = Instant::now();
    let first = prepare::prepare(&store, ann, &json!({"client_id": client}))
        .await
        .unwrap();
    let first_time = t.elapsed();
    let delivered = ack_all(&store, ann, &client, &first).await;
    assert_eq!(delivered, MINE);
    println!(
        "first prepare (evaluates the filters over all contacts): {:.1} ms, {delivered} deliveries",
        first_time.as_secs_f64() * 1e3
    );

    let mut changed = Vec::new();
    for s in 0..a.samples {
        for (k, id) in ids[..MINE]
            .iter()
            .skip((s * 100) % MINE)
            .take(100)
            .enumerate()
        {
            records::update(
                &store,
                ann,
                EntitySet::Contacts,
                *id,
                &json!({"city": format!("c{s}-{k}")}),
                None,
            )
            .await
            .unwrap();
        }
        let t = Instant::now();
        let prep = prepare::prepare(&store, ann, &json!({"client_id": client}))
            .await
            .unwrap();
        changed.push(t.elapsed());
        assert_eq!(prep["total"], 100, "{prep}");
        ack_all(&store, ann, &client, &prep).await;
    }
    support::report("prepare, 100 of the client's records changed", changed);

    let mut quiet = Vec::new();
    let mut others = Vec::new();
    for n in 0..999 {
        let c = clients::register(&store, ann, &json!({"name": format!("c{n}")}))
            .await
            .unwrap()
            .1["id"]
            .as_str()
            .unwrap()
            .to_string();
        let prep = prepare::prepare(&store, ann, &json!({"client_id": c}))
            .await
            .unwrap();
        ack_all(&store, ann, &c, &prep).await;
        others.push(c);
    }
    others.push(client);
    for c in &others {
        let t = Instant::now();
        let prep = prepare::prepare(&store, ann, &json!({"client_id": c}))
            .await
            .unwrap();
        quiet.push(t.elapsed());
        assert_eq!(prep["total"], 0);
    }
    support::report("prepare, nothing changed (1,000 clients)", quiet);
    drop(store);
    db.drop_db().await;
}
