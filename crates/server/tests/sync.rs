//! The sync protocol (SPEC §3, §5, §6, §7, §9), each rule by name, each
//! test on SQLite and PostgreSQL.

mod common;

use base64::Engine;
use common::{ids, TestServer};
use serde_json::{json, Value};

const FUTURE: &str = "2030-06-01T10:00:00Z";
const FUTURE_END: &str = "2030-06-01T11:00:00Z";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// (id, action) pairs sorted as `common::ids` sorts deliveries.
fn ids_of(wanted: &[(&Value, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = wanted.iter().map(|(r, a)| (id(r), a.to_string())).collect();
    v.sort();
    v
}

async fn contact(s: &TestServer, token: &str, last: &str) -> Value {
    s.post(
        token,
        "/api/v1/contacts",
        json!({"last_name": last, "email": format!("{}@example.com", last.to_lowercase())}),
    )
    .await
    .expect(201)
}

both_dbs! {
    async fn r_c1_first_client_is_primary_and_the_role_moves(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let laptop = s.register(&ann, "laptop").await;
        assert_eq!(laptop["role"], "primary");
        let phone = s.register(&ann, "phone").await;
        assert_eq!(phone["role"], "secondary");
        // Registering again under the same name finds the same client.
        assert_eq!(id(&s.register(&ann, "laptop").await), id(&laptop));
        let moved = s.post(&ann, &format!("/api/v1/sync/clients/{}/primary", id(&phone)), json!({})).await.expect(200);
        assert_eq!(moved["role"], "primary");
        let list = s.get(&ann, "/api/v1/sync/clients").await.expect(200);
        let roles: Vec<(&str, &str)> = list["items"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap(), c["role"].as_str().unwrap())).collect();
        assert_eq!(roles, vec![("laptop", "secondary"), ("phone", "primary")]);
    }

    async fn r_c1_exactly_one_primary_under_concurrent_moves(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let mut clients = Vec::new();
        for n in 0..4 {
            clients.push(id(&s.register(&ann, &format!("c{n}")).await));
        }
        let mut tasks = Vec::new();
        for i in 0..16 {
            let url = format!("{}/api/v1/sync/clients/{}/primary", s.base, clients[i % 4]);
            let (http, token) = (s.http.clone(), ann.clone());
            tasks.push(tokio::spawn(async move { http.post(url).bearer_auth(token).json(&json!({})).send().await.unwrap().status().as_u16() }));
        }
        // A move may lose a race (409); the role must still have moved.
        let mut moved_to = std::collections::BTreeSet::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let status = t.await.unwrap();
            assert!(status == 200 || status == 409, "{status}");
            if status == 200 {
                moved_to.insert(clients[i % 4].clone());
            }
        }
        assert!(!moved_to.is_empty(), "every concurrent move failed");
        let primaries = |list: Value| -> Vec<String> {
            list["items"].as_array().unwrap().iter().filter(|c| c["role"] == "primary").map(id).collect()
        };
        let now = primaries(s.get(&ann, "/api/v1/sync/clients").await.expect(200));
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(moved_to.contains(&now[0]), "the primary is a client a successful move named: {now:?}, {moved_to:?}");
        // After the race a move goes through as usual.
        let other = clients.iter().find(|c| **c != now[0]).unwrap();
        s.post(&ann, &format!("/api/v1/sync/clients/{other}/primary"), json!({})).await.expect(200);
        assert_eq!(primaries(s.get(&ann, "/api/v1/sync/clients").await.expect(200)), vec![other.clone()]);
    }

    async fn r_c1_a_secondary_made_primary_receives_the_items_it_never_got(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let primary = id(&s.register(&ann, "laptop").await);
        let other = id(&s.register(&ann, "tablet").await);
        let c = contact(&s, &ann, "Lee").await;
        assert_eq!(ids(&s.sync_once(&ann, &primary).await), vec![(id(&c), "create".into())]);
        assert!(s.sync_once(&ann, &other).await.is_empty());
        s.post(&ann, &format!("/api/v1/sync/clients/{other}/primary"), json!({})).await.expect(200);
        assert_eq!(ids(&s.sync_once(&ann, &other).await), vec![(id(&c), "create".into())]);
    }

    async fn r_c3_r_c4_secondary_gets_no_items_and_cannot_push_or_track_them(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let primary = id(&s.register(&ann, "laptop").await);
        let secondary = id(&s.register(&ann, "phone").await);
        let c = contact(&s, &ann, "Lee").await;
        assert!(s.sync_once(&ann, &secondary).await.is_empty());
        assert_eq!(ids(&s.sync_once(&ann, &primary).await), vec![(id(&c), "create".into())]);
        let r = s.push(&ann, &secondary, json!([{"op_id": "1", "kind": "update", "set": "contacts", "id": id(&c), "base_version": c["version"], "baseline": {}, "fields": {"last_name": "X"}}])).await;
        assert_eq!(r[0]["code"], "secondary_client");
        // R-C4: nor track a new non-email item.
        let r = s.push(&ann, &secondary, json!([{"op_id": "2", "kind": "track", "set": "contacts", "fields": {"last_name": "New"}}])).await;
        assert_eq!(r[0]["status"], "refused");
        assert_eq!(r[0]["code"], "secondary_client");
        assert!(r[0]["message"].as_str().unwrap().contains("primary"));
    }

    async fn r_c2_roaming_makes_every_client_act_as_primary(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        s.register(&ann, "laptop").await;
        let phone = s.register(&ann, "phone").await;
        assert_eq!(phone["acts_as_primary"], false);
        s.patch(&ann, &format!("/api/v1/users/{ann_id}/settings"), json!({"roaming": true})).await.expect(200);
        let c = contact(&s, &ann, "Lee").await;
        assert_eq!(ids(&s.sync_once(&ann, &id(&phone)).await), vec![(id(&c), "create".into())]);
        let r = s.push(&ann, &id(&phone), json!([{"op_id": "t", "kind": "track", "set": "contacts", "fields": {"last_name": "FromPhone"}}])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
    }

    async fn r_c5_delegated_client_needs_delegation_and_never_syncs(s: TestServer) {
        let (boss_id, boss) = s.add_user("boss@example.com").await;
        let (_, assistant) = s.add_user("assistant@example.com").await;
        let (_, stranger) = s.add_user("stranger@example.com").await;
        let refused = s.post(&assistant, "/api/v1/sync/clients", json!({"name": "desk", "on_behalf_of": "boss@example.com"})).await;
        assert_eq!(refused.error(403), "forbidden");
        s.patch(&boss, &format!("/api/v1/users/{boss_id}/settings"), json!({"delegates": ["assistant@example.com"]})).await.expect(200);
        let delegated = s.post(&assistant, "/api/v1/sync/clients", json!({"name": "desk", "on_behalf_of": "boss@example.com"})).await.expect(201);
        assert_eq!(delegated["role"], "delegated");
        assert_eq!(delegated["mailbox_user_id"], boss_id.as_str());
        assert_eq!(s.post(&stranger, "/api/v1/sync/clients", json!({"name": "x", "on_behalf_of": boss_id})).await.error(403), "forbidden");
        contact(&s, &boss, "Client").await;
        assert!(s.sync_once(&assistant, &id(&delegated)).await.is_empty(), "a delegate never synchronizes");
        let r = s.push(&assistant, &id(&delegated), json!([{"op_id": "1", "kind": "track", "set": "contacts", "fields": {"last_name": "Marked"}}])).await;
        assert_eq!(r[0]["code"], "delegated_client");
        // The boss's own first client is still the primary.
        assert_eq!(s.register(&boss, "laptop").await["role"], "primary");
    }

    async fn r_s1_r_s2_r_s3_prepare_and_data_deliver_creates_updates_and_removals_incrementally(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let a = contact(&s, &ann, "Alpha").await;
        let b = contact(&s, &ann, "Beta").await;
        let first = s.sync_once(&ann, &client).await;
        assert_eq!(ids(&first), { let mut v = vec![(id(&a), "create".to_string()), (id(&b), "create".to_string())]; v.sort(); v });
        let rec = first.iter().find(|d| d.id == id(&a)).unwrap().record.clone().unwrap();
        assert_eq!(rec["fields"]["last_name"], "Alpha");
        assert!(s.sync_once(&ann, &client).await.is_empty(), "nothing changed, nothing delivered");
        s.patch(&ann, &format!("/api/v1/contacts/{}", id(&a)), json!({"city": "Oslo"})).await.expect(200);
        s.delete(&ann, &format!("/api/v1/contacts/{}", id(&b))).await;
        let next = s.sync_once(&ann, &client).await;
        assert_eq!(ids(&next), { let mut v = vec![(id(&a), "update".to_string()), (id(&b), "remove".to_string())]; v.sort(); v });
        // §9: the owner keeps a contact deleted in the CRM, unlinked.
        assert_eq!(next.iter().find(|d| d.id == id(&b)).unwrap().removal.as_deref(), Some("unlink"));
        // Other users' records and other sets do not show up.
        let (_, bob) = s.add_user("bob@example.com").await;
        contact(&s, &bob, "Bobs").await;
        s.post(&ann, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        assert!(s.sync_once(&ann, &client).await.is_empty());
    }

    async fn r_s4_unacknowledged_changes_come_again_and_acks_are_idempotent(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let a = contact(&s, &ann, "Alpha").await;
        let (batch, items) = s.prepare_and_fetch(&ann, &client).await;
        assert_eq!(items.len(), 1);
        // Not acknowledged: the next prepare delivers it again.
        let (batch2, again) = s.prepare_and_fetch(&ann, &client).await;
        assert_eq!(ids(&again), vec![(id(&a), "create".into())]);
        // The replaced batch cannot be acknowledged any more.
        let stale = s.post(&ann, "/api/v1/sync/ack", json!({"client_id": client, "batch": batch, "items": [{"id": id(&a), "version": a["version"]}]})).await;
        assert_eq!(stale.error(409), "stale_batch");
        let ack = json!({"client_id": client, "batch": batch2, "items": [{"id": id(&a), "version": a["version"]}]});
        s.post(&ann, "/api/v1/sync/ack", ack.clone()).await.expect(200);
        s.post(&ann, "/api/v1/sync/ack", ack).await.expect(200);
        assert!(s.sync_once(&ann, &client).await.is_empty());
        // An acknowledgement of something not delivered changes nothing.
        let b = contact(&s, &ann, "Beta").await;
        let (batch3, _) = s.prepare_and_fetch(&ann, &client).await;
        let bad = json!({"client_id": client, "batch": batch3, "items": [{"id": id(&b), "version": 999}]});
        assert_eq!(s.post(&ann, "/api/v1/sync/ack", bad).await.error(422), "invalid_input");
        assert_eq!(ids(&s.sync_once(&ann, &client).await), vec![(id(&b), "create".into())]);
    }

    async fn r_s6_default_filters_deliver_my_records(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (_, bob) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let mine = contact(&s, &ann, "Mine").await;
        contact(&s, &bob, "Bobs").await;
        let meeting = s.post(&bob, "/api/v1/appointments", json!({"subject": "Kickoff", "start": FUTURE, "end": FUTURE_END, "attendees": [{"email": "ANN@example.com"}]})).await.expect(201);
        s.post(&bob, "/api/v1/appointments", json!({"subject": "Not mine", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        let open_task = s.post(&ann, "/api/v1/tasks", json!({"subject": "Open"})).await.expect(201);
        let done = s.post(&ann, "/api/v1/tasks", json!({"subject": "Done recently", "state": "completed"})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        let mut expected = vec![id(&mine), id(&meeting), id(&open_task), id(&done)];
        expected.sort();
        let mut got: Vec<String> = got.into_iter().map(|d| d.id).collect();
        got.sort();
        assert_eq!(got, expected);
    }

    async fn r_s7_without_an_active_filter_nothing_of_the_type_syncs(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        // Control: with the default filter active, a new contact is delivered.
        let lee = contact(&s, &ann, "Lee").await;
        assert_eq!(ids(&s.sync_once(&ann, &client).await), vec![(id(&lee), "create".to_string())]);
        let filters = s.get(&s.admin, "/api/v1/sync-filters").await.expect(200);
        let contacts = filters["items"].as_array().unwrap().iter().find(|f| f["entity_set"] == "contacts").unwrap().clone();
        s.patch(&s.admin, &format!("/api/v1/sync-filters/{}", id(&contacts)), json!({"active": false})).await.expect(200);
        let kim = contact(&s, &ann, "Kim").await;
        let after = s.sync_once(&ann, &client).await;
        assert!(after.iter().all(|d| d.action == "remove" && d.id != id(&kim)), "nothing of the type is delivered: {:?}", ids(&after));
        let r = s.push(&ann, &client, json!([{"op_id": "1", "kind": "track", "set": "contacts", "fields": {"last_name": "X"}}])).await;
        assert_eq!(r[0]["code"], "no_filter");
        assert!(r[0]["message"].as_str().unwrap().contains("no active contacts filter"));
    }
    async fn r_s8_reassigned_contact_leaves_mailbox_unless_tracked(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (bob_id, _) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let filtered = contact(&s, &ann, "Filtered").await;
        s.sync_once(&ann, &client).await;
        let tracked = s.push(&ann, &client, json!([{"op_id": "t1", "kind": "track", "set": "contacts", "fields": {"last_name": "Tracked"}}])).await;
        let tracked_id = tracked[0]["id"].as_str().unwrap().to_string();
        for c in [id(&filtered), tracked_id.clone()] {
            s.patch(&ann, &format!("/api/v1/contacts/{c}"), json!({"owner_id": bob_id})).await.expect(200);
        }
        let next = s.sync_once(&ann, &client).await;
        let mut expected = vec![(id(&filtered), "remove".to_string()), (tracked_id, "update".to_string())];
        expected.sort();
        assert_eq!(ids(&next), expected);
        assert_eq!(next.iter().find(|d| d.id == id(&filtered)).unwrap().removal.as_deref(), Some("delete"));
    }

    async fn r_s9_deleted_in_mailbox_is_not_sent_again_until_reset(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let c = contact(&s, &ann, "Lee").await;
        s.sync_once(&ann, &client).await;
        let r = s.push(&ann, &client, json!([{"op_id": "d", "kind": "delete", "set": "contacts", "id": id(&c)}])).await;
        assert_eq!(r[0]["effect"], "unlink", "§9: a contact deleted in the mailbox stays in the CRM");
        s.get(&ann, &format!("/api/v1/contacts/{}", id(&c))).await.expect(200);
        s.patch(&ann, &format!("/api/v1/contacts/{}", id(&c)), json!({"city": "Rome"})).await.expect(200);
        assert!(s.sync_once(&ann, &client).await.is_empty(), "not sent again");
        let explained = s.get(&ann, &format!("/api/v1/sync/explain?client_id={client}&set=contacts&id={}", id(&c))).await.expect(200);
        assert!(explained["reasons"][0].as_str().unwrap().contains("deleted it in the mailbox"), "{explained}");
        s.post(&ann, &format!("/api/v1/sync/clients/{client}/reset"), json!({})).await.expect(200);
        assert_eq!(ids(&s.sync_once(&ann, &client).await), vec![(id(&c), "create".into())]);
    }

    async fn r_s10_unchecked_types_are_not_delivered_but_can_be_tracked(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        s.patch(&ann, &format!("/api/v1/users/{ann_id}/settings"), json!({"entity_types": ["appointments"]})).await.expect(200);
        let lee = contact(&s, &ann, "Lee").await;
        let meeting = s.post(&ann, "/api/v1/appointments", json!({"subject": "Review", "start": "2099-03-01T09:00:00Z", "end": "2099-03-01T10:00:00Z"})).await.expect(201);
        let got = ids(&s.sync_once(&ann, &client).await);
        assert_eq!(got, vec![(id(&meeting), "create".to_string())], "the checked type flows, the unchecked one does not");
        assert!(!got.iter().any(|(i, _)| *i == id(&lee)));
        let r = s.push(&ann, &client, json!([{"op_id": "1", "kind": "track", "set": "contacts", "fields": {"last_name": "Tracked"}}])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
    }
    async fn r_s11_without_the_privilege_no_items_but_email_still_works(s: TestServer) {
        // Control: Bob keeps the privilege and the same steps deliver to him.
        let (_, bob) = s.add_user("bob@example.com").await;
        let bob_client = id(&s.register(&bob, "desk").await);
        let bobs = contact(&s, &bob, "Lee").await;
        assert_eq!(ids(&s.sync_once(&bob, &bob_client).await), vec![(id(&bobs), "create".to_string())]);
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"sync_to_mailbox": false})).await.expect(200);
        let client = id(&s.register(&ann, "laptop").await);
        contact(&s, &ann, "Lee").await;
        assert!(s.sync_once(&ann, &client).await.is_empty());
        let r = s.push(&ann, &client, json!([{"op_id": "1", "kind": "track", "set": "contacts", "fields": {"last_name": "X"}}])).await;
        assert_eq!(r[0]["code"], "no_sync_privilege");
        // Email still works: tracking a message creates the email activity.
        let raw = "Message-ID: <s11@example.org>\r\nFrom: Lee <lee@example.org>\r\nTo: ann@example.com\r\nSubject: Still works\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\n\r\nHello\r\n";
        let r = s.push(&ann, &client, json!([{"op_id": "2", "kind": "track", "set": "emails", "raw": base64::engine::general_purpose::STANDARD.encode(raw)}])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        let email = s.get(&ann, &format!("/api/v1/emails/{}", r[0]["id"].as_str().unwrap())).await.expect(200);
        assert_eq!(email["subject"], "Still works");
    }
    async fn r_f1_field_directions_shape_what_syncs(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        s.patch(&s.admin, "/api/v1/sync-fields/contacts", json!({"notes": "none", "job_title": "to_mailbox", "city": "to_crm"})).await.expect(200);
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "notes": "secret", "job_title": "CTO", "city": "Oslo"})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        let fields = got[0].record.as_ref().unwrap()["fields"].clone();
        assert!(fields.get("notes").is_none() && fields.get("city").is_none());
        assert_eq!(fields["job_title"], "CTO");
        let op = json!({"op_id": "u", "kind": "update", "set": "contacts", "id": id(&c), "base_version": c["version"],
            "baseline": {"last_name": "Lee", "job_title": "CTO"}, "fields": {"last_name": "Lee", "job_title": "Intern", "city": "Paris", "notes": "mine"},
            "mailbox_modified_at": "2031-01-01T00:00:00Z"});
        let r = s.push(&ann, &client, json!([op])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        let now = s.get(&ann, &format!("/api/v1/contacts/{}", id(&c))).await.expect(200);
        assert_eq!(now["job_title"], "CTO", "to_mailbox: never pushed");
        assert_eq!(now["city"], "Paris", "to_crm: pushed");
        assert_eq!(now["notes"], "secret", "none: never synchronized");
    }

    async fn r_f3_field_security_hides_and_protects_fields(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        s.post(&s.admin, "/api/v1/field-security", json!({"entity_set": "contacts", "field": "mobile", "user_id": ann_id, "can_read": false, "can_update": false})).await.expect(201);
        s.post(&s.admin, "/api/v1/field-security", json!({"entity_set": "contacts", "field": "phone", "can_read": true, "can_update": false})).await.expect(201);
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "mobile": "+1 555", "phone": "+1 666"})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        let fields = got[0].record.as_ref().unwrap()["fields"].clone();
        assert!(fields.get("mobile").is_none(), "unreadable: never written to the mailbox");
        assert_eq!(fields["phone"], "+1 666");
        let op = json!({"op_id": "u", "kind": "update", "set": "contacts", "id": id(&c), "base_version": c["version"],
            "baseline": fields, "fields": {"last_name": "Lee", "phone": "+1 777", "mobile": "+1 000", "city": "Paris"}, "mailbox_modified_at": "2031-01-01T00:00:00Z"});
        let r = s.push(&ann, &client, json!([op])).await;
        assert_eq!(r[0]["status"], "ok", "the update is accepted, the protected fields left out: {}", r[0]);
        let now = s.get(&ann, &format!("/api/v1/contacts/{}", id(&c))).await.expect(200);
        assert_eq!(now["city"], "Paris", "an updatable field of the same push is applied");
        assert_eq!(now["phone"], "+1 666", "not updatable: never pushed");
        assert_eq!(now["mobile"], "+1 555");
    }

    async fn r_f4_company_field_written_when_the_setting_is_on(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let acc = s.post(&ann, "/api/v1/accounts", json!({"name": "Acme Corp"})).await.expect(201);
        s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "account_id": acc["id"]})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        assert_eq!(got[0].record.as_ref().unwrap()["company"], "Acme Corp");
        s.patch(&ann, &format!("/api/v1/users/{ann_id}/settings"), json!({"update_company_field": false})).await.expect(200);
        // Off: a contact of the same account, delivered after the change, has no company.
        let other = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Ng", "account_id": acc["id"]})).await.expect(201);
        let again = s.sync_once(&ann, &client).await;
        assert_eq!(ids(&again), vec![(id(&other), "create".into())]);
        let delivered = again[0].record.as_ref().unwrap();
        assert_eq!(delivered["fields"]["last_name"], "Ng");
        assert!(delivered.get("company").is_none(), "{delivered}");
    }

    async fn r_f5_overlapping_edits_merge_per_field_and_r_f6_logs_them(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        // Baseline (A, B, C) = (first_name, job_title, city).
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "first_name": "A", "job_title": "B", "city": "C"})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        let baseline = got[0].record.as_ref().unwrap()["fields"].clone();
        // CRM edits (A2, B2, C) at "10:05"; mailbox edits (A1, B1, C1) at "10:00".
        s.patch(&ann, &format!("/api/v1/contacts/{}", id(&c)), json!({"first_name": "A2", "job_title": "B2"})).await.expect(200);
        let op = json!({"op_id": "m", "kind": "update", "set": "contacts", "id": id(&c), "base_version": c["version"], "baseline": baseline,
            "fields": {"last_name": "Lee", "first_name": "A1", "job_title": "B1", "city": "C1"}, "mailbox_modified_at": "2000-01-01T10:00:00Z"});
        let r = s.push(&ann, &client, json!([op])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        let merged = &r[0]["record"]["fields"];
        assert_eq!((merged["first_name"].as_str(), merged["job_title"].as_str(), merged["city"].as_str()), (Some("A2"), Some("B2"), Some("C1")));
        let crm = s.get(&ann, &format!("/api/v1/contacts/{}", id(&c))).await.expect(200);
        assert_eq!((crm["first_name"].as_str(), crm["job_title"].as_str(), crm["city"].as_str()), (Some("A2"), Some("B2"), Some("C1")));
        let log = s.get(&ann, "/api/v1/sync/conflicts").await.expect(200);
        let mut fields: Vec<(String, String, String)> = log["items"].as_array().unwrap().iter()
            .map(|c| (c["field"].as_str().unwrap().into(), c["mailbox_value"].as_str().unwrap().into(), c["kept"].as_str().unwrap().into())).collect();
        fields.sort();
        assert_eq!(fields, vec![("first_name".into(), "A1".into(), "crm".into()), ("job_title".into(), "B1".into(), "crm".into())]);
        // The merged state is the new baseline: the next sync sends nothing for it.
        assert!(s.sync_once(&ann, &client).await.is_empty());
    }

    async fn r_e1_past_appointments_are_tracked_but_never_sent(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        s.post(&ann, "/api/v1/appointments", json!({"subject": "Old", "start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"})).await.expect(201);
        let future = s.post(&ann, "/api/v1/appointments", json!({"subject": "New", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        assert_eq!(ids(&s.sync_once(&ann, &client).await), vec![(id(&future), "create".into())]);
        let r = s.push(&ann, &client, json!([{"op_id": "p", "kind": "track", "set": "appointments",
            "fields": {"subject": "Past meeting", "start": "2020-02-01T10:00:00Z", "end": "2020-02-01T11:00:00Z"}}])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
    }

    async fn r_e3_service_appointment_edits_are_overwritten(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let v = s.post(&ann, "/api/v1/serviceappointments", json!({"subject": "Repair", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        assert_eq!(got.len(), 1);
        let op = json!({"op_id": "u", "kind": "update", "set": "serviceappointments", "id": id(&v), "base_version": v["version"],
            "baseline": got[0].record.as_ref().unwrap()["fields"], "fields": {"subject": "Changed", "start": FUTURE, "end": FUTURE_END}});
        let r = s.push(&ann, &client, json!([op])).await;
        assert_eq!(r[0]["code"], "one_way");
        assert_eq!(r[0]["record"]["fields"]["subject"], "Repair", "the CRM version to write back");
        assert_eq!(s.get(&ann, &format!("/api/v1/serviceappointments/{}", id(&v))).await.expect(200)["subject"], "Repair");
    }

    async fn r_e4_closed_task_edits_are_not_pushed(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let t = s.post(&ann, "/api/v1/tasks", json!({"subject": "Call", "state": "completed"})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        let op = json!({"op_id": "u", "kind": "update", "set": "tasks", "id": id(&t), "base_version": t["version"],
            "baseline": got[0].record.as_ref().unwrap()["fields"], "fields": {"subject": "Call again"}});
        assert_eq!(s.push(&ann, &client, json!([op])).await[0]["code"], "closed_activity");
        assert_eq!(s.get(&ann, &format!("/api/v1/tasks/{}", id(&t))).await.expect(200)["subject"], "Call");
    }

    async fn section_9_mailbox_deletions_reach_the_crm_by_the_table(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (_, bob) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let my_task = s.post(&ann, "/api/v1/tasks", json!({"subject": "Mine"})).await.expect(201);
        let my_meeting = s.post(&ann, "/api/v1/appointments", json!({"subject": "Mine", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        let their_meeting = s.post(&bob, "/api/v1/appointments", json!({"subject": "Theirs", "start": FUTURE, "end": FUTURE_END, "attendees": [{"email": "ann@example.com"}]})).await.expect(201);
        let my_contact = contact(&s, &ann, "Lee").await;
        s.sync_once(&ann, &client).await;
        let del = |set: &str, v: &Value, n: &str| json!({"op_id": n, "kind": "delete", "set": set, "id": id(v)});
        let r = s.push(&ann, &client, json!([del("tasks", &my_task, "1"), del("appointments", &my_meeting, "2"), del("appointments", &their_meeting, "3"), del("contacts", &my_contact, "4")])).await;
        let effects: Vec<&str> = r.iter().map(|x| x["effect"].as_str().unwrap()).collect();
        assert_eq!(effects, vec!["delete_in_crm", "delete_in_crm", "unlink", "unlink"]);
        assert_eq!(s.get(&ann, &format!("/api/v1/tasks/{}", id(&my_task))).await.status, 404);
        assert_eq!(s.get(&ann, &format!("/api/v1/appointments/{}", id(&my_meeting))).await.status, 404);
        s.get(&ann, &format!("/api/v1/appointments/{}", id(&their_meeting))).await.expect(200);
        s.get(&ann, &format!("/api/v1/contacts/{}", id(&my_contact))).await.expect(200);
        // Untracking a contact deletes it in the CRM only when asked.
        let c2 = contact(&s, &ann, "Kim").await;
        s.sync_once(&ann, &client).await;
        let r = s.push(&ann, &client, json!([{"op_id": "5", "kind": "untrack", "set": "contacts", "id": id(&c2), "delete_in_crm": true}])).await;
        assert_eq!(r[0]["effect"], "delete_in_crm");
        assert_eq!(s.get(&ann, &format!("/api/v1/contacts/{}", id(&c2))).await.status, 404);
    }

    async fn section_9_crm_deletions_reach_the_mailbox_by_the_table(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let open = s.post(&ann, "/api/v1/tasks", json!({"subject": "Open"})).await.expect(201);
        let done = s.post(&ann, "/api/v1/tasks", json!({"subject": "Done", "state": "completed"})).await.expect(201);
        let meeting = s.post(&ann, "/api/v1/appointments", json!({"subject": "Soon", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        s.sync_once(&ann, &client).await;
        for (set, v) in [("tasks", &open), ("tasks", &done), ("appointments", &meeting)] {
            s.delete(&ann, &format!("/api/v1/{set}/{}", id(v))).await;
        }
        let got = s.sync_once(&ann, &client).await;
        let removal = |v: &Value| got.iter().find(|d| d.id == id(v)).unwrap().removal.clone().unwrap();
        assert_eq!(removal(&open), "delete");
        assert_eq!(removal(&done), "unlink");
        assert_eq!(removal(&meeting), "delete");
        assert!(s.sync_once(&ann, &client).await.is_empty());
    }

    async fn r_s5_pushing_the_same_operations_twice_changes_nothing(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let ops = json!([{"op_id": "a", "kind": "track", "set": "contacts", "item_uid": "uid-1", "fields": {"last_name": "Once"}},
                         {"op_id": "b", "kind": "track", "set": "tasks", "fields": {"subject": "Once"}}]);
        let first = s.push(&ann, &client, ops.clone()).await;
        let version = s.version().await;
        let second = s.push(&ann, &client, ops).await;
        assert_eq!(first, second);
        assert_eq!(s.version().await, version);
        assert_eq!(s.get(&ann, "/api/v1/contacts?q=once").await.expect(200)["items"].as_array().unwrap().len(), 1);
        // A new operation for the same mailbox item links, not duplicates (R-M2).
        let again = s.push(&ann, &client, json!([{"op_id": "c", "kind": "track", "set": "contacts", "item_uid": "uid-1", "fields": {"last_name": "Once"}}])).await;
        assert_eq!(again[0]["linked"], true);
        assert_eq!(again[0]["id"], first[0]["id"]);
        let by_crm_id = s.push(&ann, &client, json!([{"op_id": "d", "kind": "track", "set": "contacts", "crm_id": first[0]["id"], "fields": {"last_name": "Once"}}])).await;
        assert_eq!(by_crm_id[0]["id"], first[0]["id"]);
        assert_eq!(s.get(&ann, "/api/v1/contacts?q=once").await.expect(200)["items"].as_array().unwrap().len(), 1);
    }

    async fn r_e2_series_tracked_with_exceptions_replayed_creates_no_duplicate(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let moved = json!({"recurrence_id": "2030-01-14T09:00:00Z", "state": "active",
            "fields": {"subject": "Weekly", "start": "2030-01-15T13:00:00Z", "end": "2030-01-15T14:00:00Z"}});
        let cancelled = json!({"recurrence_id": "2030-01-21T09:00:00Z", "state": "canceled",
            "fields": {"subject": "Weekly", "start": "2030-01-21T09:00:00Z", "end": "2030-01-21T10:00:00Z"}});
        let ops = json!([{"op_id": "t", "kind": "track", "set": "appointments", "item_uid": "weekly",
            "fields": {"subject": "Weekly", "start": "2030-01-07T09:00:00Z", "end": "2030-01-07T10:00:00Z",
                "recurrence": {"rrule": "FREQ=WEEKLY;COUNT=10", "exdates": []}},
            "exceptions": [moved, cancelled]}]);
        let first = s.push(&ann, &client, ops.clone()).await;
        assert_eq!(first[0]["status"], "ok", "{first:?}");
        let exceptions = first[0]["record"]["exceptions"].as_array().unwrap().clone();
        assert_eq!(exceptions.len(), 2, "{first:?}");
        let mut states: Vec<(&str, &str)> = exceptions.iter().map(|e| (e["recurrence_id"].as_str().unwrap(), e["state"].as_str().unwrap())).collect();
        states.sort();
        assert_eq!(states, [("2030-01-14T09:00:00Z", "open"), ("2030-01-21T09:00:00Z", "canceled")]);
        // R-T4: the answer lost, the same operation sent again.
        let version = s.version().await;
        assert_eq!(s.push(&ann, &client, ops).await, first);
        assert_eq!(s.version().await, version);
        let all = s.get(&ann, "/api/v1/appointments?owner=me").await.expect(200)["items"].as_array().unwrap().clone();
        assert_eq!(all.len(), 3, "the series and its two exceptions, once: {all:?}");
        // An update naming an exception already made creates none either.
        let series = &first[0]["record"];
        let baseline = json!({"subject": "Weekly", "start": "2030-01-07T09:00:00Z", "end": "2030-01-07T10:00:00Z",
            "recurrence": series["fields"]["recurrence"], "@exceptions": {}});
        let r = s.push(&ann, &client, json!([{"op_id": "u", "kind": "update", "set": "appointments", "id": series["id"],
            "base_version": series["version"], "baseline": baseline, "fields": baseline, "exceptions": [moved]}])).await;
        assert_eq!(r[0]["status"], "ok", "{r:?}");
        assert_eq!(s.get(&ann, "/api/v1/appointments?owner=me").await.expect(200)["items"].as_array().unwrap().len(), 3);
    }

    async fn sync_bad_input_is_refused_clearly(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (_, bob) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let ghost = uuid::Uuid::new_v4();
        assert_eq!(s.post(&ann, "/api/v1/sync/prepare", json!({"client_id": ghost})).await.error(404), "unknown_client");
        assert_eq!(s.post(&bob, "/api/v1/sync/prepare", json!({"client_id": client})).await.error(403), "forbidden");
        assert_eq!(s.post(&bob, "/api/v1/sync/push", json!({"client_id": client, "ops": []})).await.error(403), "forbidden");
        assert_eq!(s.post(&ann, "/api/v1/sync/prepare", json!({})).await.error(422), "invalid_input");
        assert_eq!(s.post(&ann, "/api/v1/sync/clients", json!({"name": ""})).await.error(422), "invalid_input");
        let many: Vec<Value> = (0..501).map(|i| json!({"op_id": i.to_string(), "kind": "track"})).collect();
        assert_eq!(s.post(&ann, "/api/v1/sync/push", json!({"client_id": client, "ops": many})).await.error(413), "too_many_operations");
        let before = s.version().await;
        let r = s.push(&ann, &client, json!([{"op_id": "x", "kind": "teleport"}, {"kind": "track"}, {"op_id": "y", "kind": "track", "set": "contacts", "fields": {"first_name": "no last name"}},
            {"op_id": "z", "kind": "update", "set": "contacts", "id": ghost, "base_version": 1, "baseline": {}, "fields": {}}])).await;
        let codes: Vec<&str> = r.iter().map(|x| x["code"].as_str().unwrap()).collect();
        assert_eq!(codes, vec!["invalid_operation", "invalid_operation", "invalid_input", "not_linked"]);
        assert_eq!(s.version().await, before, "refused operations change nothing");
    }
}

both_dbs! {
    async fn r_e2_a_series_travels_with_its_exceptions(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        // A weekly series with no end, started in the past: still delivered.
        let series = s.post(&ann, "/api/v1/appointments", json!({"subject": "Weekly", "start": "2025-01-06T09:00:00Z", "end": "2025-01-06T10:00:00Z",
            "time_zone": "Europe/Berlin", "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=MO", "exdates": ["2025-01-13T09:00:00Z"]}})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        assert_eq!(ids(&got), vec![(id(&series), "create".into())]);
        // A moved instance, however old, is an exception of the series:
        // the mailbox gets the series again, carrying it.
        let moved = s.post(&ann, "/api/v1/appointments", json!({"subject": "Weekly (moved)", "start": "2025-01-21T09:00:00Z", "end": "2025-01-21T10:00:00Z",
            "series_id": series["id"], "recurrence_id": "2025-01-20T09:00:00Z"})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        assert_eq!(ids(&got), vec![(id(&series), "update".into())], "never the exception on its own");
        let exceptions = got[0].record.as_ref().unwrap()["exceptions"].as_array().unwrap().clone();
        assert_eq!(exceptions.len(), 1);
        assert_eq!(exceptions[0]["id"], moved["id"]);
        assert_eq!(exceptions[0]["recurrence_id"], "2025-01-20T09:00:00Z");
        // Cancelling the instance changes the series too.
        s.patch(&ann, &format!("/api/v1/appointments/{}", id(&moved)), json!({"state": "canceled"})).await.expect(200);
        let got = s.sync_once(&ann, &client).await;
        assert_eq!(got[0].record.as_ref().unwrap()["exceptions"][0]["state"], "canceled");
        // A series that ended (UNTIL passed) is past: never created in a mailbox (R-E1).
        s.post(&ann, "/api/v1/appointments", json!({"subject": "Ended", "start": "2024-01-01T09:00:00Z", "end": "2024-01-01T10:00:00Z",
            "recurrence": {"rrule": "FREQ=DAILY;UNTIL=20240110T000000Z"}})).await.expect(201);
        assert!(s.sync_once(&ann, &client).await.is_empty());
    }
}

both_dbs! {
    async fn r_t5_prepare_reports_a_mass_deletion(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (bob_id, _) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let mut all = Vec::new();
        for i in 0..60 {
            all.push(contact(&s, &ann, &format!("C{i}")).await);
        }
        s.sync_once(&ann, &client).await;
        // A few leave the filter: within the limits.
        for c in &all[..5] {
            s.patch(&s.admin, &format!("/api/v1/contacts/{}", id(c)), json!({"owner_id": bob_id})).await.expect(200);
        }
        let prep = s.post(&ann, "/api/v1/sync/prepare", json!({"client_id": client})).await.expect(200);
        assert_eq!(prep["mass_delete"]["deletes"], 5);
        assert_eq!(prep["mass_delete"]["exceeded"], false);
        s.sync_once(&ann, &client).await;
        // A mistaken reassignment of everything: 55 deletions of 55 held.
        for c in &all[5..] {
            s.patch(&s.admin, &format!("/api/v1/contacts/{}", id(c)), json!({"owner_id": bob_id})).await.expect(200);
        }
        let prep = s.post(&ann, "/api/v1/sync/prepare", json!({"client_id": client})).await.expect(200);
        assert_eq!(prep["mass_delete"]["deletes"], 55);
        assert_eq!(prep["mass_delete"]["held"], 55);
        assert_eq!(prep["mass_delete"]["exceeded"], true);
        // The share limit alone: 20% is the default.
        s.patch(&s.admin, "/api/v1/settings", json!({"mass_delete_max_items": 1000, "mass_delete_max_percent": 100})).await.expect(200);
        let prep = s.post(&ann, "/api/v1/sync/prepare", json!({"client_id": client})).await.expect(200);
        assert_eq!(prep["mass_delete"]["exceeded"], false);
    }
}

both_dbs! {
    async fn r_t5_prepare_share_counts_only_above_five_items_per_collection(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (bob_id, _) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let meeting = s.post(&ann, "/api/v1/appointments", json!({"subject": "Only one", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        let mut contacts = Vec::new();
        for i in 0..10 {
            contacts.push(contact(&s, &ann, &format!("C{i}")).await);
        }
        s.sync_once(&ann, &client).await;
        // The one appointment of the calendar: 100% of it, but one item.
        s.delete(&ann, &format!("/api/v1/appointments/{}", id(&meeting))).await.expect(204);
        let prep = s.post(&ann, "/api/v1/sync/prepare", json!({"client_id": client})).await.expect(200);
        assert_eq!(prep["mass_delete"]["deletes"], 1);
        assert_eq!(prep["mass_delete"]["exceeded"], false, "{prep}");
        s.sync_once(&ann, &client).await;
        // Six of ten contacts: more than 5 and 60% of the contacts.
        for c in &contacts[..6] {
            s.patch(&s.admin, &format!("/api/v1/contacts/{}", id(c)), json!({"owner_id": bob_id})).await.expect(200);
        }
        let prep = s.post(&ann, "/api/v1/sync/prepare", json!({"client_id": client})).await.expect(200);
        assert_eq!(prep["mass_delete"]["exceeded"], true, "{prep}");
        assert!(prep["mass_delete"]["reason"].as_str().unwrap().contains("6 of the 10 items of contacts"), "{prep}");
        // The numbers are settings, and the registration tells the agent.
        s.patch(&s.admin, "/api/v1/settings", json!({"mass_delete_min_items": 6})).await.expect(200);
        let prep = s.post(&ann, "/api/v1/sync/prepare", json!({"client_id": client})).await.expect(200);
        assert_eq!(prep["mass_delete"]["exceeded"], false, "{prep}");
        let reg = s.register(&ann, "laptop").await;
        assert_eq!(reg["mass_delete_limits"], json!({"max_items": 50, "min_items": 6, "max_percent": 20}));
        let bad = s.patch(&s.admin, "/api/v1/settings", json!({"mass_delete_min_items": 51})).await;
        assert_eq!(bad.status, 422, "{}", bad.body);
    }
}

both_dbs! {
    async fn s13_a_mailbox_gets_only_the_kinds_it_holds(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let c = contact(&s, &ann, "Person").await;
        let m = s.post(&ann, "/api/v1/appointments", json!({"subject": "Meet", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        let t = s.post(&ann, "/api/v1/tasks", json!({"subject": "Call back"})).await.expect(201);
        let register = |kinds: Value| {
            let ann = ann.clone();
            let s = &s;
            async move {
                let mut body = json!({"name": "laptop"});
                if !kinds.is_null() {
                    body["kinds"] = kinds;
                }
                let r = s.post(&ann, "/api/v1/sync/clients", body).await;
                assert!(r.status == 200 || r.status == 201, "{}", r.body);
                r.body
            }
        };
        // A mail-only mailbox: nothing of contacts, calendar or tasks.
        let reg = register(json!(["mail"])).await;
        assert_eq!(reg["kinds"], json!(["mail"]));
        let client = id(&reg);
        assert!(s.sync_once(&ann, &client).await.is_empty());
        // Changes after the first sync (the change feed) neither.
        let later = contact(&s, &ann, "Later").await;
        s.patch(&ann, &format!("/api/v1/tasks/{}", id(&t)), json!({"subject": "Call back soon"})).await.expect(200);
        assert!(s.sync_once(&ann, &client).await.is_empty());
        let why = s.get(&ann, &format!("/api/v1/sync/explain?client_id={client}&set=contacts&id={}", id(&c))).await.expect(200);
        assert_eq!(why["delivered"], false);
        assert!(why["reasons"][0].as_str().unwrap().contains("no contacts collection"), "{why}");
        // Contacts added to the configuration: its records come now.
        register(json!(["contacts", "mail"])).await;
        assert_eq!(ids(&s.sync_once(&ann, &client).await), ids_of(&[(&c, "create"), (&later, "create")]));
        // Contacts gone, calendar added: no removal is sent for a kind the
        // mailbox does not have; the calendar's record comes.
        register(json!(["calendar", "mail"])).await;
        assert_eq!(ids(&s.sync_once(&ann, &client).await), vec![(id(&m), "create".into())]);
        // A client that says nothing holds every kind: the contact comes
        // again (not taken as delivered), the task too.
        let reg = register(Value::Null).await;
        assert_eq!(reg["kinds"], json!(["contacts", "calendar", "tasks", "mail"]));
        assert_eq!(ids(&s.sync_once(&ann, &client).await), ids_of(&[(&c, "create"), (&later, "create"), (&t, "create")]));
        let bad = s.post(&ann, "/api/v1/sync/clients", json!({"name": "laptop", "kinds": ["notes"]})).await;
        assert_eq!(bad.status, 422, "{}", bad.body);
        assert!(bad.body["error"]["message"].as_str().unwrap().contains("kinds: 'notes'"), "{}", bad.body);
    }
}

both_dbs! {
    async fn r_s6_a_new_or_changed_filter_takes_effect_at_the_next_sync(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (_, bob) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let berlin = s.post(&bob, "/api/v1/contacts", json!({"last_name": "Berliner", "city": "Berlin"})).await.expect(201);
        s.post(&bob, "/api/v1/contacts", json!({"last_name": "Roman", "city": "Rome"})).await.expect(201);
        assert!(s.sync_once(&ann, &client).await.is_empty());
        // Ann adds her own filter; the existing record now matches.
        let f = s.post(&ann, "/api/v1/sync-filters", json!({"name": "Berlin", "entity_set": "contacts", "condition": {"field": "city", "op": "eq", "value": "Berlin"}})).await.expect(201);
        assert_eq!(ids(&s.sync_once(&ann, &client).await), vec![(id(&berlin), "create".into())]);
        // Deactivated: it leaves the mailbox (R-S8).
        s.patch(&ann, &format!("/api/v1/sync-filters/{}", id(&f)), json!({"active": false})).await.expect(200);
        let got = s.sync_once(&ann, &client).await;
        assert_eq!(ids(&got), vec![(id(&berlin), "remove".into())]);
        assert!(s.sync_once(&ann, &client).await.is_empty());
    }

    async fn r_f1_a_direction_change_redelivers_held_records(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "notes": "private"})).await.expect(201);
        let got = s.sync_once(&ann, &client).await;
        assert_eq!(got[0].record.as_ref().unwrap()["fields"]["notes"], "private");
        s.patch(&s.admin, "/api/v1/sync-fields/contacts", json!({"notes": "none"})).await.expect(200);
        let again = s.sync_once(&ann, &client).await;
        assert_eq!(ids(&again), vec![(id(&c), "update".into())]);
        assert!(again[0].record.as_ref().unwrap()["fields"].get("notes").is_none());
    }

    async fn r_s11_losing_the_privilege_removes_synchronized_items(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let c = contact(&s, &ann, "Lee").await;
        s.sync_once(&ann, &client).await;
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"sync_to_mailbox": false})).await.expect(200);
        assert_eq!(ids(&s.sync_once(&ann, &client).await), vec![(id(&c), "remove".into())]);
    }
}

both_dbs! {
    async fn r_e2_the_crm_shows_a_series_instances_for_the_next_12_months(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let series = s.post(&ann, "/api/v1/appointments", json!({"subject": "Monthly review", "start": "2026-01-15T14:00:00Z", "end": "2026-01-15T15:00:00Z",
            "recurrence": {"rrule": "FREQ=MONTHLY"}})).await.expect(201);
        let exception = s.post(&ann, "/api/v1/appointments", json!({"subject": "Review (cancelled)", "start": "2026-02-15T14:00:00Z", "end": "2026-02-15T15:00:00Z",
            "series_id": series["id"], "recurrence_id": "2026-02-15T14:00:00Z", "state": "canceled"})).await.expect(201);
        let path = format!("/api/v1/appointments/{}/instances?from=2026-06-01T00:00:00Z", id(&series));
        let got = s.get(&ann, &path).await.expect(200);
        let items = got["items"].as_array().unwrap();
        // The February exception (before the window) plus 12 monthly instances.
        assert_eq!(items.len(), 13, "{got}");
        assert_eq!(items[0]["exception_id"], exception["id"]);
        assert_eq!(items[0]["state"], "canceled");
        assert_eq!(items[1]["start"], "2026-06-15T14:00:00Z");
        assert_eq!(items[12]["start"], "2027-05-15T14:00:00Z");
        assert_eq!(got["truncated"], false);
        let plain = s.post(&ann, "/api/v1/appointments", json!({"subject": "Once", "start": FUTURE, "end": FUTURE_END})).await.expect(201);
        assert_eq!(s.get(&ann, &format!("/api/v1/appointments/{}/instances", id(&plain))).await.error(422), "invalid_input");
        assert_eq!(s.get(&ann, &format!("{path}&to=2030-01-01T00:00:00Z")).await.error(400), "bad_window");
    }
}
