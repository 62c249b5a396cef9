//! R-O2: an organization moves from SQLite to PostgreSQL and back with
//! every id, version, tombstone, token and setting intact.

mod common;

use serde_json::json;

use crmsync_server::{export, Store};

async fn dump(store: &Store) -> String {
    let mut out = Vec::new();
    export::export(store, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn r_o2_export_import_sqlite_to_postgres_and_back_keeps_everything() {
    let s = common::start(common::Backend::Sqlite).await;
    let (ann_id, ann) = s.add_user("ann@example.com").await;
    let acc = s
        .post(&ann, "/api/v1/accounts", json!({"name": "Acme"}))
        .await
        .expect(201);
    let c = s
        .post(
            &ann,
            "/api/v1/contacts",
            json!({"last_name": "Lee", "account_id": acc["id"], "notes": "multi\nline ✓"}),
        )
        .await
        .expect(201);
    let gone = s
        .post(&ann, "/api/v1/tasks", json!({"subject": "gone"}))
        .await
        .expect(201);
    s.delete(
        &ann,
        &format!("/api/v1/tasks/{}", gone["id"].as_str().unwrap()),
    )
    .await;
    s.patch(
        &s.admin,
        "/api/v1/settings",
        json!({"two_activities": true}),
    )
    .await
    .expect(200);
    s.patch(
        &ann,
        &format!("/api/v1/users/{ann_id}/settings"),
        json!({"roaming": true}),
    )
    .await
    .expect(200);
    s.patch(
        &s.admin,
        "/api/v1/sync-fields/contacts",
        json!({"notes": "to_mailbox"}),
    )
    .await
    .expect(200);
    let rule =
        json!({"entity_set": "contacts", "field": "mobile", "can_read": true, "can_update": false});
    s.post(&s.admin, "/api/v1/field-security", rule)
        .await
        .expect(201);
    let original = dump(&s.store).await;

    // SQLite -> PostgreSQL
    let pg = common::fresh_db(common::Backend::Postgres).await;
    let pg_store = Store::connect(&pg.url).await.unwrap();
    export::import(&pg_store, original.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        dump(&pg_store).await,
        original,
        "PostgreSQL holds exactly what SQLite held"
    );
    let on_pg = common::serve_store(
        pg_store.clone(),
        s.admin.clone(),
        pg,
        crmsync_server::DEFAULT_MAX_BODY,
    )
    .await;
    // Same ids, same versions, same tokens: a client notices nothing.
    let path = format!("/api/v1/contacts/{}", c["id"].as_str().unwrap());
    assert_eq!(on_pg.get(&ann, &path).await.expect(200), c);
    let changes = on_pg
        .get(&ann, &format!("/api/v1/changes?since={}", c["version"]))
        .await
        .expect(200);
    assert_eq!(
        changes["items"][0]["deleted"], true,
        "tombstones survive the move"
    );
    // New versions continue above the old ones.
    let next = on_pg
        .post(&ann, "/api/v1/contacts", json!({"last_name": "New"}))
        .await
        .expect(201);
    assert!(next["version"].as_i64().unwrap() > s.version().await);

    // ... and back to a new SQLite file.
    let moved = dump(&pg_store).await;
    let back = common::fresh_db(common::Backend::Sqlite).await;
    let back_store = Store::connect(&back.url).await.unwrap();
    export::import(&back_store, moved.as_bytes()).await.unwrap();
    assert_eq!(dump(&back_store).await, moved);

    // Importing twice, or into a database with an organization, is refused.
    let err = export::import(&back_store, moved.as_bytes())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
}

#[tokio::test]
async fn r_o2_a_bad_line_imports_nothing() {
    let s = common::start(common::Backend::Sqlite).await;
    s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee"}))
        .await
        .expect(201);
    let mut text = dump(&s.store).await;
    text.push_str("{\"type\": \"record\", \"entity_set\": \"contacts\"}\n");
    let target = common::fresh_db(common::Backend::Sqlite).await;
    let store = Store::connect(&target.url).await.unwrap();
    let err = export::import(&store, text.as_bytes()).await.unwrap_err();
    assert!(format!("{err:#}").contains("line"), "{err:#}");
    assert!(
        store.organization().await.unwrap().is_none(),
        "all or nothing"
    );
    assert_eq!(store.current_version().await.unwrap(), 0);
}
