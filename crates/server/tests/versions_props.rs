//! Property: any sequence of creates, updates and deletes keeps `version`
//! strictly increasing, and "changes since V" returns exactly the records
//! touched after V, deletes included (SPEC §2), on both databases.

mod common;

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use uuid::Uuid;

use crmsync_core::EntitySet;
use crmsync_server::auth::{hash_token, Caller};
use crmsync_server::records;

#[derive(Debug, Clone)]
enum Op {
    Create,
    /// Update the n-th record (modulo the live count) to a value; a value
    /// equal to the current one is a no-op that must not bump the version.
    Update(usize, u8),
    Delete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Create),
        4 => (any::<usize>(), 0u8..3).prop_map(|(i, v)| Op::Update(i, v)),
        2 => any::<usize>().prop_map(Op::Delete),
    ]
}

/// The model: per record id, the version of its last change and whether it is deleted.
type Model = BTreeMap<Uuid, (i64, bool)>;

async fn check(backend: common::Backend, ops: Vec<Op>) {
    let db = common::fresh_db(backend).await;
    let store = crmsync_server::Store::connect(&db.url).await.unwrap();
    let token = records::init_organization(&store, "admin@example.com", "Admin")
        .await
        .unwrap();
    let admin = store
        .user_by_token(&hash_token(&token))
        .await
        .unwrap()
        .unwrap();
    let caller = Caller {
        user_id: admin.id,
        is_admin: true,
    };
    let start = store.current_version().await.unwrap();

    let mut model: Model = BTreeMap::new();
    let mut values: BTreeMap<Uuid, u8> = BTreeMap::new();
    let mut last = start;
    let mut snapshots = vec![(start, model.clone())];
    for op in ops {
        let live: Vec<Uuid> = values.keys().copied().collect();
        let version = match op {
            Op::Create => {
                let c = records::create(
                    &store,
                    caller,
                    EntitySet::Contacts,
                    &json!({"last_name": "v0"}),
                )
                .await
                .unwrap();
                values.insert(c.record.id, 0);
                model.insert(c.record.id, (c.record.version, false));
                Some(c.record.version)
            }
            Op::Update(_, _) | Op::Delete(_) if live.is_empty() => None,
            Op::Update(i, v) => {
                let id = live[i % live.len()];
                let r = records::update(
                    &store,
                    caller,
                    EntitySet::Contacts,
                    id,
                    &json!({"last_name": format!("v{v}")}),
                    None,
                )
                .await
                .unwrap();
                if values[&id] == v {
                    assert_eq!(r.version, model[&id].0, "a no-op update keeps the version");
                    None
                } else {
                    values.insert(id, v);
                    model.insert(id, (r.version, false));
                    Some(r.version)
                }
            }
            Op::Delete(i) => {
                let id = live[i % live.len()];
                records::delete(&store, caller, EntitySet::Contacts, id, None)
                    .await
                    .unwrap();
                values.remove(&id);
                let v = store.current_version().await.unwrap();
                model.insert(id, (v, true));
                Some(v)
            }
        };
        if let Some(v) = version {
            assert!(v > last, "version {v} after {last}: strictly increasing");
            last = v;
            snapshots.push((v, model.clone()));
        }
    }
    // For every point in history, the feed since then is exactly the records
    // whose last change came later, with their deleted flag.
    for (since, _) in &snapshots {
        let expected: BTreeMap<Uuid, (i64, bool)> = model
            .iter()
            .filter(|(_, (v, _))| v > since)
            .map(|(id, e)| (*id, *e))
            .collect();
        let got = store.changes_since(*since, 100_000).await.unwrap();
        let versions: Vec<i64> = got.iter().map(|c| c.version).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "oldest first, no repeats"
        );
        let got: BTreeMap<Uuid, (i64, bool)> =
            got.iter().map(|c| (c.id, (c.version, c.deleted))).collect();
        assert_eq!(got, expected, "changes since {since}");
    }
}

fn run(backend: common::Backend, ops: Vec<Op>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(check(backend, ops));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn versions_increase_and_changes_since_is_exact_sqlite(ops in prop::collection::vec(op(), 1..40)) {
        run(common::Backend::Sqlite, ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn versions_increase_and_changes_since_is_exact_postgres(ops in prop::collection::vec(op(), 1..40)) {
        run(common::Backend::Postgres, ops);
    }
}
