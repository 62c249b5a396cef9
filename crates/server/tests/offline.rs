//! R-O1, the server side of the offline replica: offline filters, the
//! go_offline privilege, the change feed, the identity, and the playback
//! operations of push, on SQLite and PostgreSQL.

mod common;

use serde_json::{json, Value};
use uuid::Uuid;

use common::TestServer;

/// Every page of the feed from `since`; returns (records, removed, next_since, fingerprint).
async fn feed(s: &TestServer, token: &str, since: i64) -> (Vec<Value>, Vec<Value>, i64, String) {
    let (mut records, mut removed, mut since) = (Vec::new(), Vec::new(), since);
    loop {
        let page = s
            .get(
                token,
                &format!("/api/v1/offline/changes?since={since}&limit=2"),
            )
            .await
            .expect(200);
        records.extend(page["records"].as_array().unwrap().iter().cloned());
        removed.extend(page["removed"].as_array().unwrap().iter().cloned());
        let next = page["next_since"].as_i64().unwrap();
        assert!(next >= since, "{page}");
        since = next;
        if page["more"] == false {
            return (
                records,
                removed,
                since,
                page["filters"].as_str().unwrap().into(),
            );
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

async fn client(s: &TestServer, token: &str) -> String {
    id(&s.register(token, "laptop").await)
}

both_dbs! {
    async fn r_o1_offline_filters_api_crud_and_defaults(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let (bob_id, bob) = s.add_user("bob@example.com").await;
        // The defaults of R-O1, as system filters.
        let list = s.get(&ann, "/api/v1/offline-filters").await.expect(200);
        let items = list["items"].as_array().unwrap();
        let sets: Vec<&str> = items.iter().map(|f| f["entity_set"].as_str().unwrap()).collect();
        for set in ["accounts", "contacts", "leads", "opportunities", "cases", "appointments",
                    "tasks", "phonecalls", "letters", "faxes", "emails"] {
            assert!(sets.contains(&set), "{set}: {list}");
        }
        assert!(items.iter().all(|f| f["scope"] == "system" && f["active"] == true));
        let leads = items.iter().find(|f| f["entity_set"] == "leads").unwrap();
        assert_eq!(leads["condition"]["all"][1], json!({"field": "state", "op": "eq", "value": "open"}));
        let tasks = items.iter().find(|f| f["entity_set"] == "tasks").unwrap();
        assert_eq!(tasks["condition"]["all"][0]["field"], "regarding.owner_id");
        // Listed again: the same documents, none added twice.
        assert_eq!(s.get(&bob, "/api/v1/offline-filters").await.expect(200), list);
        // Sync filters are apart.
        let sync = s.get(&ann, "/api/v1/sync-filters").await.expect(200);
        assert!(ids(sync["items"].as_array().unwrap()).iter().all(|i| !ids(items).contains(i)));

        // A user filter: create, read, change, delete.
        let body = json!({"name": "Berlin contacts", "entity_set": "contacts",
            "condition": {"field": "city", "op": "eq", "value": "Berlin"}});
        let f = s.post(&ann, "/api/v1/offline-filters", body).await.expect(201);
        assert_eq!((f["scope"].as_str(), f["user_id"].as_str()), (Some("user"), Some(ann_id.as_str())));
        let fid = id(&f);
        assert_eq!(s.get(&ann, &format!("/api/v1/offline-filters/{fid}")).await.expect(200), f);
        s.get(&bob, &format!("/api/v1/offline-filters/{fid}")).await.error(404);
        assert_eq!(s.get(&ann, &format!("/api/v1/sync-filters/{fid}")).await.error(404), "not_found");
        let patched = s.patch(&ann, &format!("/api/v1/offline-filters/{fid}"), json!({"name": "Berlin"})).await.expect(200);
        assert_eq!(patched["name"], "Berlin");
        // Applying to ann: the system filters and hers; not to bob.
        let mine = s.get(&ann, &format!("/api/v1/users/{ann_id}/offline-filters")).await.expect(200);
        assert_eq!(mine["items"].as_array().unwrap().len(), items.len() + 1);
        let his = s.get(&s.admin, &format!("/api/v1/users/{bob_id}/offline-filters")).await.expect(200);
        assert_eq!(his["items"].as_array().unwrap().len(), items.len());
        assert_eq!(s.get(&bob, &format!("/api/v1/users/{ann_id}/offline-filters")).await.error(403), "forbidden");
        // A system filter is the admin's.
        let sys = id(&items[0]);
        assert_eq!(s.patch(&ann, &format!("/api/v1/offline-filters/{sys}"), json!({"active": false})).await.error(403), "forbidden");
        s.delete(&ann, &format!("/api/v1/offline-filters/{fid}")).await.expect(204);
        s.get(&ann, &format!("/api/v1/offline-filters/{fid}")).await.error(404);

        // Users are never kept offline; the message names the sets allowed.
        let bad = s.post(&ann, "/api/v1/offline-filters", json!({"name": "people", "entity_set": "users",
            "condition": {"field": "owner_id", "op": "eq", "value": "@me"}})).await;
        assert_eq!(bad.status.as_u16(), 422, "{}", bad.body);
        assert!(bad.body["error"]["message"].as_str().unwrap().contains("accounts, contacts"), "{}", bad.body);
        // Any other set is allowed, unlike sync filters (accounts never go to mailboxes).
        let acc = json!({"name": "big", "entity_set": "accounts", "condition": {"field": "name", "op": "contains", "value": "Big"}});
        s.post(&ann, "/api/v1/offline-filters", acc.clone()).await.expect(201);
        s.post(&ann, "/api/v1/sync-filters", acc).await.error(422);
        // regarding.owner_id is an offline condition only.
        let regarding = json!({"name": "r", "entity_set": "tasks", "condition": {"field": "regarding.owner_id", "op": "eq", "value": "@me"}});
        s.post(&ann, "/api/v1/offline-filters", regarding.clone()).await.expect(201);
        s.post(&ann, "/api/v1/sync-filters", regarding).await.error(422);
    }

    async fn r_o1_offline_changes_follow_the_filters(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (bob_id, bob) = s.add_user("bob@example.com").await;
        let account = s.post(&ann, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        let contact = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "phone": "+49 1"})).await.expect(201);
        let inactive = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Old", "state": "inactive"})).await.expect(201);
        let task = s.post(&ann, "/api/v1/tasks", json!({"subject": "Call Acme",
            "regarding": {"set": "accounts", "id": id(&account)}})).await.expect(201);
        let bobs = s.post(&bob, "/api/v1/contacts", json!({"last_name": "Bob's"})).await.expect(201);
        // Ann's task regarding Bob's contact is not hers to keep.
        let about_bob = s.post(&ann, "/api/v1/tasks", json!({"subject": "About Bob's",
            "regarding": {"set": "contacts", "id": id(&bobs)}})).await.expect(201);
        // R-F3: a field ann may not read stays out of her copy.
        s.post(&s.admin, "/api/v1/field-security", json!({"entity_set": "contacts", "field": "phone",
            "can_read": false, "can_update": false})).await.expect(201);

        let (records, removed, since, fingerprint) = feed(&s, &ann, 0).await;
        let got = ids(&records);
        assert!(got.contains(&id(&account)) && got.contains(&id(&contact)) && got.contains(&id(&task)), "{records:?}");
        for other in [&inactive, &bobs, &about_bob] {
            assert!(!got.contains(&id(other)), "{other} is not ann's to keep");
        }
        // A first page has nothing to remove; later pages may name what
        // does not match (the copy holds none of it).
        let first = s.get(&ann, "/api/v1/offline/changes?since=0&limit=3").await.expect(200);
        assert_eq!(first["removed"], json!([]));
        assert!(ids(&removed).iter().all(|r| !got.contains(r)));
        assert!(records.iter().all(|r| r["set"] != "users"));
        let lee = records.iter().find(|r| r["id"] == contact["id"]).unwrap();
        assert_eq!((lee["set"].as_str(), lee["last_name"].as_str()), (Some("contacts"), Some("Lee")));
        assert!(lee.get("phone").is_none(), "{lee}");
        assert_eq!(lee["version"], contact["version"]);

        // Reassigned to Bob: it leaves ann's copy; a deleted record too.
        s.patch(&s.admin, &format!("/api/v1/contacts/{}", id(&contact)), json!({"owner_id": bob_id})).await.expect(200);
        s.delete(&ann, &format!("/api/v1/tasks/{}", id(&task))).await.expect(204);
        let (records, removed, _, again) = feed(&s, &ann, since).await;
        assert!(records.is_empty(), "{records:?}");
        assert_eq!(ids(&removed), { let mut v = vec![id(&contact), id(&task)]; v.sort(); v });
        assert!(removed.iter().any(|r| r["set"] == "contacts" && r["id"] == contact["id"]));
        assert_eq!(again, fingerprint);
        // Bob's copy gets it.
        let (bob_records, _, _, _) = feed(&s, &bob, 0).await;
        assert!(ids(&bob_records).contains(&id(&contact)));
        // A changed filter changes the fingerprint.
        s.post(&ann, "/api/v1/offline-filters", json!({"name": "all leads", "entity_set": "leads",
            "condition": {"field": "state", "op": "ne", "value": "disqualified"}})).await.expect(201);
        assert_ne!(feed(&s, &ann, since).await.3, fingerprint);
    }

    async fn r_o1_feed_cost_follows_changes(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let mut contacts = Vec::new();
        for i in 0..5 {
            contacts.push(s.post(&ann, "/api/v1/contacts", json!({"last_name": format!("C{i}")})).await.expect(201));
        }
        let (records, _, since, _) = feed(&s, &ann, 0).await;
        assert_eq!(ids(&records).len(), 5);
        assert_eq!(since, s.version().await);
        // Nothing changed: nothing to read.
        let quiet = s.get(&ann, &format!("/api/v1/offline/changes?since={since}")).await.expect(200);
        assert_eq!((quiet["records"].as_array().unwrap().len(), quiet["removed"].as_array().unwrap().len()), (0, 0));
        assert_eq!((quiet["next_since"].as_i64(), quiet["more"].as_bool()), (Some(since), Some(false)));
        // One change: that record alone.
        let changed = s.patch(&ann, &format!("/api/v1/contacts/{}", id(&contacts[3])), json!({"city": "Oslo"})).await.expect(200);
        let next = s.get(&ann, &format!("/api/v1/offline/changes?since={since}")).await.expect(200);
        assert_eq!(next["records"].as_array().unwrap().len(), 1, "{next}");
        assert_eq!(next["records"][0]["city"], "Oslo");
        assert_eq!(next["next_since"], changed["version"]);
        // Limits are checked.
        for bad in ["limit=0", "limit=5001", "limit=x", "since=-1", "until=3"] {
            let r = s.get(&ann, &format!("/api/v1/offline/changes?{bad}")).await;
            assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.body);
        }
    }

    async fn r_o1_without_go_offline_refused_with_the_privilege_named(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        // With the privilege (the default): the identity, password hash included.
        let me = s.get(&ann, "/api/v1/offline/identity").await.expect(200);
        assert_eq!((me["user"]["id"].as_str(), me["user"]["go_offline"].as_bool()), (Some(ann_id.as_str()), Some(true)));
        assert_eq!(me["user"]["email"], "ann@example.com");
        assert!(me["password_hash"].is_null());
        crmsync_server::passwords::set_password(&s.store, "ann@example.com", "a long password 1").await.unwrap();
        let me = s.get(&ann, "/api/v1/offline/identity").await.expect(200);
        let hash = me["password_hash"].as_str().unwrap();
        assert!(crmsync_server::passwords::verify_password(hash, "a long password 1"));

        let laptop = client(&s, &ann).await;
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"go_offline": false})).await.expect(200);
        for path in ["/api/v1/offline/changes", "/api/v1/offline/identity"] {
            let r = s.get(&ann, path).await;
            assert_eq!(r.status.as_u16(), 403, "{path}");
            assert_eq!(r.body["error"]["code"], "no_offline_privilege");
            let message = r.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("Go offline") && message.contains("administrator"), "{message}");
        }
        let results = s.push(&ann, &laptop, json!([{"op_id": "1", "kind": "offline_create", "set": "contacts",
            "id": Uuid::new_v4(), "fields": {"last_name": "Offline"}}])).await;
        assert_eq!((results[0]["status"].as_str(), results[0]["code"].as_str()), (Some("refused"), Some("no_offline_privilege")));
        assert!(results[0]["message"].as_str().unwrap().contains("Go offline"));
    }

    async fn r_o1_offline_update_merges_per_field_and_logs_the_conflict(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let laptop = client(&s, &ann).await;
        let base = json!({"first_name": "A", "job_title": "B", "city": "C"});
        let mut outcomes = Vec::new();
        for (offline_time, expected_title) in [("2099-01-01T00:00:00Z", "B-offline"), ("2000-01-01T00:00:00Z", "B-server")] {
            let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "first_name": "A", "job_title": "B", "city": "C"})).await.expect(201);
            let cid = id(&c);
            // The server edits A and B; offline, B and C were edited.
            s.patch(&ann, &format!("/api/v1/contacts/{cid}"), json!({"first_name": "A-server", "job_title": "B-server"})).await.expect(200);
            let r = s.push(&ann, &laptop, json!([{"op_id": format!("u-{cid}"), "kind": "offline_update", "set": "contacts", "id": cid,
                "base_version": c["version"], "baseline": base, "modified_at": offline_time,
                "fields": {"job_title": "B-offline", "city": "C-offline"}}])).await;
            assert_eq!(r[0]["status"], "ok", "{}", r[0]);
            let record = &r[0]["record"];
            assert_eq!((record["first_name"].as_str(), record["job_title"].as_str(), record["city"].as_str()),
                (Some("A-server"), Some(expected_title), Some("C-offline")), "{record}");
            let stored = s.get(&ann, &format!("/api/v1/contacts/{cid}")).await.expect(200);
            assert_eq!(stored["job_title"], expected_title);
            assert_eq!(stored["city"], "C-offline");
            assert_eq!(r[0]["conflicts"].as_array().unwrap().len(), 1, "{}", r[0]);
            assert_eq!(r[0]["conflicts"][0]["field"], "job_title");
            // R-F6: listed for the client.
            let log = s.get(&ann, &format!("/api/v1/sync/conflicts?record={cid}")).await.expect(200);
            let items = log["items"].as_array().unwrap();
            assert_eq!(items.len(), 1, "{log}");
            assert_eq!(items[0]["field"], "job_title");
            outcomes.push(items[0]["kept"].clone());
        }
        assert_eq!(outcomes, vec![json!("mailbox"), json!("crm")]);

        // R-A: another user's record is refused, with the server's version.
        let (_, bob) = s.add_user("bob@example.com").await;
        let bobs = s.post(&bob, "/api/v1/contacts", json!({"last_name": "Bob"})).await.expect(201);
        let r = s.push(&ann, &laptop, json!([{"op_id": "not-mine", "kind": "offline_update", "set": "contacts", "id": id(&bobs),
            "base_version": bobs["version"], "baseline": {"last_name": "Bob"}, "fields": {"last_name": "Robert"},
            "modified_at": "2099-01-01T00:00:00Z"}])).await;
        assert_eq!((r[0]["status"].as_str(), r[0]["record"]["last_name"].as_str()), (Some("refused"), Some("Bob")), "{}", r[0]);
        // R-F3: a field the user may not change is refused.
        s.post(&s.admin, "/api/v1/field-security", json!({"entity_set": "contacts", "field": "city",
            "can_read": true, "can_update": false})).await.expect(201);
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Kim", "city": "Rome"})).await.expect(201);
        let r = s.push(&ann, &laptop, json!([{"op_id": "fs", "kind": "offline_update", "set": "contacts", "id": id(&c),
            "base_version": c["version"], "baseline": {"last_name": "Kim", "city": "Rome"}, "fields": {"city": "Oslo"}}])).await;
        assert_eq!((r[0]["code"].as_str(), r[0]["record"]["city"].as_str()), (Some("field_security"), Some("Rome")), "{}", r[0]);
        // Deleted on the server: refused, and the record is null.
        s.delete(&ann, &format!("/api/v1/contacts/{}", id(&c))).await.expect(204);
        let r = s.push(&ann, &laptop, json!([{"op_id": "gone", "kind": "offline_update", "set": "contacts", "id": id(&c),
            "base_version": c["version"], "baseline": {}, "fields": {"last_name": "Kimm"}}])).await;
        assert_eq!((r[0]["status"].as_str(), r[0]["record"].clone()), (Some("refused"), Value::Null), "{}", r[0]);
    }

    async fn r_o1_offline_create_repeated_creates_once(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let laptop = client(&s, &ann).await;
        let new_id = Uuid::new_v4();
        let op = |op_id: &str| json!([{"op_id": op_id, "kind": "offline_create", "set": "contacts", "id": new_id,
            "fields": {"last_name": "Made offline"}}]);
        let first = s.push(&ann, &laptop, op("create-1")).await;
        assert_eq!(first[0]["status"], "ok", "{}", first[0]);
        assert_eq!(first[0]["id"], new_id.to_string());
        assert_eq!(first[0]["record"]["owner_id"], ann_id);
        // The playback was cut off and runs again, under a new op id.
        let again = s.push(&ann, &laptop, op("create-2")).await;
        assert_eq!(again[0]["status"], "ok");
        assert_eq!(again[0]["version"], first[0]["version"]);
        // The same op id: the stored answer.
        let replay = s.push(&ann, &laptop, op("create-1")).await;
        assert_eq!(replay[0], first[0]);
        let list = s.get(&ann, "/api/v1/contacts?q=made%20offline").await.expect(200);
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
        let stored = s.get(&ann, &format!("/api/v1/contacts/{new_id}")).await.expect(200);
        assert_eq!(stored["last_name"], "Made offline");
        // Invalid input is refused, naming the field.
        let bad = s.push(&ann, &laptop, json!([{"op_id": "bad", "kind": "offline_create", "set": "contacts",
            "id": Uuid::new_v4(), "fields": {"first_name": "no last name"}}])).await;
        assert_eq!((bad[0]["status"].as_str(), bad[0]["code"].as_str()), (Some("refused"), Some("invalid_input")), "{}", bad[0]);
        assert!(bad[0]["message"].as_str().unwrap().contains("last_name"));
    }

    async fn r_o1_offline_delete_of_a_record_changed_on_server_is_refused(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let laptop = client(&s, &ann).await;
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee"})).await.expect(201);
        let cid = id(&c);
        let changed = s.patch(&ann, &format!("/api/v1/contacts/{cid}"), json!({"city": "Oslo"})).await.expect(200);
        let del = |op_id: &str, base: &Value| json!([{"op_id": op_id, "kind": "offline_delete", "set": "contacts", "id": cid, "base_version": base}]);
        let r = s.push(&ann, &laptop, del("d1", &c["version"])).await;
        assert_eq!((r[0]["status"].as_str(), r[0]["code"].as_str()), (Some("refused"), Some("changed_on_server")), "{}", r[0]);
        assert_eq!(r[0]["record"]["city"], "Oslo");
        s.get(&ann, &format!("/api/v1/contacts/{cid}")).await.expect(200);
        // At the server's version it is deleted; once gone, deleting is done.
        let r = s.push(&ann, &laptop, del("d2", &changed["version"])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        s.get(&ann, &format!("/api/v1/contacts/{cid}")).await.error(404);
        let r = s.push(&ann, &laptop, del("d3", &changed["version"])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        // R-A: another user's record stays.
        let (_, bob) = s.add_user("bob@example.com").await;
        let bobs = s.post(&bob, "/api/v1/contacts", json!({"last_name": "Bob"})).await.expect(201);
        let r = s.push(&ann, &laptop, json!([{"op_id": "d4", "kind": "offline_delete", "set": "contacts", "id": id(&bobs), "base_version": bobs["version"]}])).await;
        assert_eq!((r[0]["status"].as_str(), r[0]["code"].as_str()), (Some("refused"), Some("forbidden")), "{}", r[0]);
        assert_eq!(r[0]["record"]["last_name"], "Bob");
    }
}
