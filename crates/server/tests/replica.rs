//! R-O1: the offline replica's journal. Records come from a real server
//! (SQLite and PostgreSQL); the replica is its own SQLite database, written
//! through the server's own record code as `crmsync offline` writes it.

mod common;

use serde_json::{json, Value};
use uuid::Uuid;

use common::TestServer;
use crmsync_core::{EntitySet, Record};
use crmsync_server::auth::Caller;
use crmsync_server::records;
use crmsync_server::replica::{playback_op, FeedPosition, Replica};

async fn server_record(s: &TestServer, id: &Value) -> Record {
    let id = Uuid::parse_str(id.as_str().unwrap()).unwrap();
    s.store.get(id).await.unwrap().unwrap()
}

/// A replica of Ann's two contacts, as the feed would bring them.
async fn replica_of_ann(
    s: &TestServer,
    dir: &std::path::Path,
) -> (Replica, Caller, Record, Record) {
    let (ann_id, ann) = s.add_user("ann@example.com").await;
    let keep = s
        .post(
            &ann,
            "/api/v1/contacts",
            json!({"first_name": "Kim", "last_name": "Keep"}),
        )
        .await
        .expect(201);
    let gone = s
        .post(&ann, "/api/v1/contacts", json!({"last_name": "Gone"}))
        .await
        .expect(201);
    let (keep, gone) = (
        server_record(s, &keep["id"]).await,
        server_record(s, &gone["id"]).await,
    );
    let replica = Replica::open(&dir.join("offline.db")).await.unwrap();
    let user = server_record(s, &json!(ann_id)).await;
    replica
        .set_identity(&user.to_json(), None, &ann)
        .await
        .unwrap();
    let at = FeedPosition {
        since: gone.version,
        filters: Some("f1".into()),
    };
    replica
        .apply(&[keep.clone(), gone.clone()], &[], &at)
        .await
        .unwrap();
    (
        replica,
        Caller {
            user_id: user.id,
            is_admin: false,
        },
        keep,
        gone,
    )
}

both_dbs! {
    async fn r_o1_offline_writes_are_journaled_and_played_back_in_order(s: TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let (replica, ann, keep, gone) = replica_of_ann(&s, dir.path()).await;
        assert!(replica.pending().await.unwrap().is_empty(), "the server's records are not journaled");
        assert_eq!(replica.position().await.unwrap(), FeedPosition { since: gone.version, filters: Some("f1".into()) });

        // Offline: an edit, a delete, a create, through the server's own code.
        let store = &replica.store;
        records::update(store, ann, EntitySet::Contacts, keep.id, &json!({"first_name": "Kimberly"}), None).await.unwrap();
        records::update(store, ann, EntitySet::Contacts, keep.id, &json!({"job_title": "CFO"}), None).await.unwrap();
        records::delete(store, ann, EntitySet::Contacts, gone.id, None).await.unwrap();
        let new = records::create(store, ann, EntitySet::Contacts, &json!({"last_name": "New"})).await.unwrap();
        let new_id = new.record.id;

        let pending = replica.pending().await.unwrap();
        let ids: Vec<Uuid> = pending.iter().map(|c| c.id).collect();
        assert_eq!(ids, [keep.id, gone.id, new_id], "in the order of their first change");
        assert_eq!(replica.size().await.unwrap().waiting, 3);

        let op_ids = replica.op_ids(&pending).await.unwrap();
        assert_eq!(replica.op_ids(&pending).await.unwrap(), op_ids, "a repeated playback sends the same op ids");
        let op_id = op_ids[0].clone();
        let update = playback_op(&pending[0], &op_id).unwrap();
        assert_eq!(update["kind"], "offline_update");
        assert_eq!(update["base_version"], keep.version, "the server's version before the first offline change");
        assert_eq!(update["fields"], json!({"first_name": "Kimberly", "job_title": "CFO"}));
        assert_eq!(update["baseline"]["first_name"], "Kim");
        let delete = playback_op(&pending[1], "d").unwrap();
        assert_eq!((delete["kind"].clone(), delete["base_version"].clone()), (json!("offline_delete"), json!(gone.version)));
        let create = playback_op(&pending[2], "c").unwrap();
        assert_eq!((create["kind"].clone(), create["id"].clone(), create["fields"]["last_name"].clone()),
            (json!("offline_create"), json!(new_id.to_string()), json!("New")));

        // The server's answer settles a change; the replica takes its version.
        let mut merged = keep.clone();
        merged.version = keep.version + 100;
        merged.fields.insert("first_name".into(), json!("Kimberly"));
        replica.settle(&[(&pending[0], Some(merged.clone()))]).await.unwrap();
        assert_eq!(replica.store.get(keep.id).await.unwrap().unwrap(), merged);
        let left: Vec<Uuid> = replica.pending().await.unwrap().iter().map(|c| c.id).collect();
        assert_eq!(left, [gone.id, new_id]);
        assert!(replica.pending().await.unwrap().iter().all(|c| c.id != keep.id));
    }

    async fn r_o1_the_replica_signs_in_the_current_token_only(s: TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let (replica, ann, _, _) = replica_of_ann(&s, dir.path()).await;
        let user = s.store.get(ann.user_id).await.unwrap().unwrap();
        let signs_in = |token: &'static str| {
            let store = replica.store.clone();
            async move { store.user_by_token(&crmsync_server::auth::hash_token(token)).await.unwrap().is_some() }
        };
        replica.set_identity(&user.to_json(), None, "first-token").await.unwrap();
        assert!(signs_in("first-token").await);
        replica.set_identity(&user.to_json(), None, "rotated-token").await.unwrap();
        assert!(signs_in("rotated-token").await);
        assert!(!signs_in("first-token").await, "a token revoked since no longer signs in offline");
        assert!(replica.pending().await.unwrap().is_empty(), "the user's record is never journaled");
    }

    async fn r_o1_the_feed_never_overwrites_a_change_waiting_to_be_played_back(s: TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let (replica, ann, keep, gone) = replica_of_ann(&s, dir.path()).await;
        records::update(&replica.store, ann, EntitySet::Contacts, keep.id, &json!({"first_name": "Offline"}), None).await.unwrap();
        // The server changed both meanwhile, and the second left the filters.
        let mut newer = keep.clone();
        newer.version += 10;
        newer.fields.insert("first_name".into(), json!("Server"));
        let at = FeedPosition { since: newer.version, filters: Some("f1".into()) };
        let kept = replica.apply(&[newer], &[gone.id], &at).await.unwrap();
        assert_eq!(kept, 1, "the offline edit is kept for its playback");
        let local = replica.store.get(keep.id).await.unwrap().unwrap();
        assert_eq!(local.fields["first_name"], "Offline");
        assert!(replica.store.get(gone.id).await.unwrap().is_none(), "a record that left the filters leaves the replica");
        // Its base is still the version the offline edit was made on.
        let pending = replica.pending().await.unwrap();
        assert_eq!(pending[0].base.as_ref().unwrap().version, keep.version);
        // A full refresh keeps only what the feed sent again, and the waiting change.
        let dropped = replica.retain(&Default::default()).await.unwrap();
        assert_eq!(dropped, 0);
        assert!(replica.store.get(keep.id).await.unwrap().is_some());
    }
}
