//! Property (R-S5): pushing the same batch twice changes nothing — the same
//! answers, the same stored organization, the same conflict log — whatever
//! the operations, including refused ones.

mod common;

use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
enum Op {
    Track(u8),
    Update(usize, u8, bool),
    Regarding(usize, bool),
    Delete(usize),
    Untrack(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Track),
        (any::<usize>(), any::<u8>(), any::<bool>())
            .prop_map(|(i, v, later)| Op::Update(i, v, later)),
        (any::<usize>(), any::<bool>()).prop_map(|(i, some)| Op::Regarding(i, some)),
        any::<usize>().prop_map(Op::Delete),
        (any::<usize>(), any::<bool>()).prop_map(|(i, d)| Op::Untrack(i, d)),
    ]
}

async fn dump(s: &common::TestServer) -> String {
    let mut out = Vec::new();
    crmsync_server::export::export(&s.store, &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

async fn run(ops: Vec<Op>) {
    let s = common::start(common::Backend::Sqlite).await;
    let (_, ann) = s.add_user("ann@example.com").await;
    let client = s.register(&ann, "laptop").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let acc = s
        .post(&ann, "/api/v1/accounts", json!({"name": "Acme"}))
        .await
        .expect(201);
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(
            s.post(
                &ann,
                "/api/v1/tasks",
                json!({"subject": format!("t{i}"), "description": "base"}),
            )
            .await
            .expect(201),
        );
    }
    s.sync_once(&ann, &client).await;
    let batch: Vec<Value> = ops
        .iter()
        .enumerate()
        .map(|(n, op)| {
            let t = |i: &usize| &tasks[i % tasks.len()];
            let op_id = format!("op{n}");
            match op {
                Op::Track(v) => json!({"op_id": op_id, "kind": "track", "set": "tasks", "fields": {"subject": format!("new {v}")}}),
                Op::Update(i, v, later) => json!({"op_id": op_id, "kind": "update", "set": "tasks", "id": t(i)["id"], "base_version": t(i)["version"],
                    "baseline": {"subject": t(i)["subject"], "description": "base"}, "fields": {"subject": format!("s{v}"), "description": format!("d{v}")},
                    "mailbox_modified_at": if *later { "2999-01-01T00:00:00Z" } else { "2000-01-01T00:00:00Z" }}),
                Op::Regarding(i, some) => json!({"op_id": op_id, "kind": "set_regarding", "set": "tasks", "id": t(i)["id"],
                    "regarding": if *some { json!({"set": "accounts", "id": acc["id"]}) } else { Value::Null }}),
                Op::Delete(i) => json!({"op_id": op_id, "kind": "delete", "set": "tasks", "id": t(i)["id"]}),
                Op::Untrack(i, d) => json!({"op_id": op_id, "kind": "untrack", "set": "tasks", "id": t(i)["id"], "delete_in_crm": d}),
            }
        })
        .collect();
    // A CRM edit before the push makes updates overlap (merges, conflicts).
    s.patch(
        &ann,
        &format!("/api/v1/tasks/{}", tasks[0]["id"].as_str().unwrap()),
        json!({"subject": "crm edit"}),
    )
    .await
    .expect(200);
    let first = s.push(&ann, &client, Value::Array(batch.clone())).await;
    let (state, version) = (dump(&s).await, s.version().await);
    let conflicts = s.get(&ann, "/api/v1/sync/conflicts").await.expect(200);
    let second = s.push(&ann, &client, Value::Array(batch)).await;
    assert_eq!(first, second, "the same answers");
    assert_eq!(dump(&s).await, state, "the same organization");
    assert_eq!(s.version().await, version);
    assert_eq!(
        s.get(&ann, "/api/v1/sync/conflicts").await.expect(200),
        conflicts
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn r_s5_pushing_a_batch_twice_changes_nothing(ops in prop::collection::vec(op(), 1..12)) {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(run(ops));
    }
}
