//! Property: any sequence of creates, updates and deletes keeps `version`
//! strictly increasing, and "changes since V" returns exactly the records
//! touched after V, deletes included (SPEC §2), on both databases; and a
//! reader polling the feed beside concurrent writers never misses a
//! committed change nor sees versions go backwards.

mod common;

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crmsync_core::EntitySet;
use crmsync_server::auth::{hash_token, Caller};
use crmsync_server::{records, store};

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

/// ARCHITECTURE.md: every write first takes the next version, and the lock
/// that comes with it makes versions commit in order. Writers run at once,
/// one of them holding its transaction open after taking its version (so
/// without that lock a later version would commit first), while a reader
/// pages through `changes_since`, continuing from the last version it saw,
/// as a client's prepare does. The reader must never see a version at or
/// below one it already saw, and must end up having seen every committed
/// change: a change committed below the reader's position would be lost.
async fn reader_beside_out_of_order_writers(backend: common::Backend) {
    const WRITERS: usize = 3;
    const WRITES: usize = 16;
    let db = common::fresh_db(backend).await;
    let store = Arc::new(crmsync_server::Store::connect(&db.url).await.unwrap());
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
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = start;
            let mut seen: BTreeMap<Uuid, i64> = BTreeMap::new();
            let mut polls_with_news_while_writing = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = store.changes_since(last, 4).await.unwrap();
                for c in &page {
                    assert!(
                        c.version > last,
                        "the feed went back: version {} after {last}",
                        c.version
                    );
                    last = c.version;
                    seen.insert(c.id, c.version);
                }
                if !page.is_empty() && !finished {
                    polls_with_news_while_writing += 1;
                }
                if page.is_empty() && finished {
                    return (seen, polls_with_news_while_writing);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            // (record, version) of every committed write.
            let mut committed: Vec<(Uuid, i64)> = Vec::new();
            // Records the fast writes create and update; a slow write takes
            // one out for good, so its change stays the record's last and a
            // reader that skipped it cannot catch up with a later one.
            let mut open: Vec<Uuid> = Vec::new();
            for k in 0..WRITES {
                if (w + k) % 3 == 0 && !open.is_empty() {
                    // A slow write: takes its version, holds it, commits late.
                    let id = open.swap_remove(k % open.len());
                    let mut tx = store.begin().await.unwrap();
                    let v = store::next_version(&mut tx).await.unwrap();
                    sqlx::query("UPDATE records SET version = $1 WHERE id = $2")
                        .bind(v)
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5 + (k as u64 % 3) * 5)).await;
                    tx.commit().await.unwrap();
                    committed.push((id, v));
                } else if k % 2 == 0 || open.is_empty() {
                    let c = records::create(
                        &store,
                        caller,
                        EntitySet::Contacts,
                        &json!({"last_name": format!("w{w}k{k}")}),
                    )
                    .await
                    .unwrap();
                    open.push(c.record.id);
                    committed.push((c.record.id, c.record.version));
                } else {
                    let id = open[(k * 7) % open.len()];
                    let r = records::update(
                        &store,
                        caller,
                        EntitySet::Contacts,
                        id,
                        &json!({"last_name": format!("w{w}k{k}u")}),
                        None,
                    )
                    .await
                    .unwrap();
                    committed.push((id, r.version));
                }
            }
            committed
        }));
    }
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let (seen, polls) = reader.await.unwrap();

    assert!(
        polls >= 2,
        "the reader must have read while the writers wrote ({polls} polls with news)"
    );
    // Every committed change is seen: its record at that version or later,
    // and each record at the version of its last change.
    let mut latest: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (id, v) in &committed {
        let got = seen.get(id).copied();
        assert!(
            got.is_some_and(|s| s >= *v),
            "change {id}@{v} committed, the reader saw {got:?}"
        );
        let l = latest.entry(*id).or_insert(*v);
        *l = (*l).max(*v);
    }
    let seen: BTreeMap<Uuid, i64> = seen
        .into_iter()
        .filter(|(id, _)| latest.contains_key(id))
        .collect();
    assert_eq!(seen, latest, "the reader ends at each record's last change");
}

fn run_concurrent(backend: common::Backend) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(reader_beside_out_of_order_writers(backend));
}

#[test]
fn versions_reader_beside_out_of_order_writers_misses_nothing_sqlite() {
    run_concurrent(common::Backend::Sqlite);
}

#[test]
fn versions_reader_beside_out_of_order_writers_misses_nothing_postgres() {
    run_concurrent(common::Backend::Postgres);
}
