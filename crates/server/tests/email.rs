//! Tracked email on the server (SPEC §7 R-E5..R-E10, §8 R-M5, R-M7), on
//! SQLite and PostgreSQL.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::TestServer;
use serde_json::{json, Value};

fn message(id: Option<&str>, from: &str, to: &[&str], subject: &str, extra: &str) -> Vec<u8> {
    let mut m = String::new();
    if let Some(id) = id {
        m.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    m.push_str(&format!("From: Sender <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\n{extra}", to.join(", ")));
    m.push_str("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello there\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"q.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n");
    m.into_bytes()
}

fn track(op_id: &str, raw: &[u8]) -> Value {
    json!({"op_id": op_id, "kind": "track", "set": "emails", "raw": STANDARD.encode(raw)})
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

both_dbs! {
    async fn tracked_email_keeps_the_raw_message_and_is_deduplicated(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let raw = message(Some("m1@example.org"), "lee@example.org", &["ann@example.com"], "Offer", "");
        let r = s.push(&ann, &client, json!([track("1", &raw)])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        let email = s.get(&ann, &format!("/api/v1/emails/{}", id(&r[0]))).await.expect(200);
        assert_eq!(email["message_id"], "m1@example.org");
        assert_eq!(email["subject"], "Offer");
        assert_eq!(email["direction"], "incoming");
        assert_eq!(email["body_text"].as_str().unwrap().trim(), "Hello there");
        assert_eq!(email["sent_at"], "2026-11-24T09:00:00Z");
        assert!(email["tracking_token"].as_str().unwrap().starts_with("CRM:"));
        let stored = s.http.get(format!("{}/api/v1/emails/{}/raw", s.base, id(&r[0]))).bearer_auth(&ann).send().await.unwrap();
        assert_eq!(stored.headers()["content-type"], "message/rfc822");
        assert_eq!(stored.bytes().await.unwrap().to_vec(), raw, "the raw message is kept as received, attachment included");
        // The same message again (another operation, even another client): linked.
        let phone = id(&s.register(&ann, "phone").await);
        let again = s.push(&ann, &phone, json!([track("2", &raw)])).await;
        assert_eq!(again[0]["linked"], true);
        assert_eq!(again[0]["id"], r[0]["id"]);
        assert_eq!(s.get(&ann, "/api/v1/emails").await.expect(200)["items"].as_array().unwrap().len(), 1);
    }

    async fn a_message_without_message_id_gets_a_stable_synthetic_one(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let raw = message(None, "lee@example.org", &["ann@example.com"], "No id", "");
        let a = s.push(&ann, &client, json!([track("1", &raw)])).await;
        let b = s.push(&ann, &client, json!([track("2", &raw)])).await;
        assert_eq!(a[0]["id"], b[0]["id"]);
        let email = s.get(&ann, &format!("/api/v1/emails/{}", id(&a[0]))).await.expect(200);
        assert!(email["message_id"].as_str().unwrap().ends_with("@synthetic.invalid"));
    }

    async fn malformed_messages_are_refused_clearly(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let before = s.version().await;
        let r = s.push(&ann, &client, json!([
            {"op_id": "1", "kind": "track", "set": "emails", "raw": "***not base64***"},
            {"op_id": "2", "kind": "track", "set": "emails", "raw": STANDARD.encode(b"")},
            {"op_id": "3", "kind": "track", "set": "emails"},
        ])).await;
        let codes: Vec<&str> = r.iter().map(|x| x["code"].as_str().unwrap()).collect();
        assert_eq!(codes, vec!["bad_message", "bad_message", "invalid_operation"]);
        assert!(r[1]["message"].as_str().unwrap().contains("empty"));
        assert_eq!(s.version().await, before);
        // Broken MIME is still a message: stored raw with what could be read.
        let broken = b"Message-ID: <x@y>\r\nFrom: a@b.c\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\nno boundary here\r\n";
        let ok = s.push(&ann, &client, json!([track("4", broken)])).await;
        assert_eq!(ok[0]["status"], "ok", "{}", ok[0]);
        assert!(!ok[0]["problems"].as_array().unwrap().is_empty());
    }

    async fn r_e5_a_tracked_email_only_changes_its_regarding(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let acc = s.post(&ann, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        let r = s.push(&ann, &client, json!([track("1", &message(Some("e5@x"), "lee@example.org", &["ann@example.com"], "Hi", ""))])).await;
        let upd = s.push(&ann, &client, json!([{"op_id": "2", "kind": "update", "set": "emails", "id": r[0]["id"], "base_version": r[0]["version"], "baseline": {}, "fields": {"subject": "changed"}}])).await;
        assert_eq!(upd[0]["code"], "read_only_email");
        let reg = json!({"set": "accounts", "id": acc["id"]});
        let set = s.push(&ann, &client, json!([{"op_id": "3", "kind": "set_regarding", "set": "emails", "id": r[0]["id"], "regarding": reg}])).await;
        assert_eq!(set[0]["status"], "ok", "{}", set[0]);
        assert_eq!(s.get(&ann, &format!("/api/v1/emails/{}", id(&r[0]))).await.expect(200)["regarding"], reg);
    }

    async fn r_m7_regarding_named_by_id_alone_takes_the_records_set(s: TestServer) {
        // A `$CRMRegarding:<32 hex digits>` keyword names the record alone:
        // the agent pushes `{"id"}` and the server finds the set.
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let acc = s.post(&ann, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        let opp = s.post(&ann, "/api/v1/opportunities", json!({"name": "Deal"})).await.expect(201);
        let mut op = track("1", &message(Some("m7@x"), "lee@example.org", &["ann@example.com"], "Hi", ""));
        op["regarding"] = json!({"id": acc["id"]});
        let r = s.push(&ann, &client, json!([op])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        let email = format!("/api/v1/emails/{}", id(&r[0]));
        assert_eq!(s.get(&ann, &email).await.expect(200)["regarding"], json!({"set": "accounts", "id": acc["id"]}));
        let set = s.push(&ann, &client, json!([{"op_id": "2", "kind": "set_regarding", "set": "emails", "id": r[0]["id"], "regarding": {"id": opp["id"]}}])).await;
        assert_eq!(set[0]["status"], "ok", "{}", set[0]);
        assert_eq!(set[0]["record"]["fields"]["regarding"], json!({"set": "opportunities", "id": opp["id"]}));
        assert_eq!(s.get(&ann, &email).await.expect(200)["regarding"], json!({"set": "opportunities", "id": opp["id"]}));
        // An id no record has, or a record that cannot be a regarding: refused, nothing changed.
        let before = s.version().await;
        let unknown = "0b9f3c1e-8f6a-4c1e-9d2a-3b4c5d6e7f80";
        let task = s.post(&ann, "/api/v1/tasks", json!({"subject": "Call"})).await.expect(201);
        let before_task = s.version().await;
        assert!(before_task > before);
        let bad = s.push(&ann, &client, json!([
            {"op_id": "3", "kind": "set_regarding", "set": "emails", "id": r[0]["id"], "regarding": {"id": unknown}},
            {"op_id": "4", "kind": "set_regarding", "set": "emails", "id": r[0]["id"], "regarding": {"id": task["id"]}},
        ])).await;
        assert_eq!(bad[0]["code"], "invalid_input", "{}", bad[0]);
        assert!(bad[0]["message"].as_str().unwrap().contains(unknown), "{}", bad[0]);
        assert_eq!(bad[1]["code"], "invalid_input", "{}", bad[1]);
        assert!(bad[1]["message"].as_str().unwrap().contains("tasks"), "{}", bad[1]);
        assert_eq!(s.version().await, before_task);
    }

    async fn r_e6_drafts_are_never_tracked(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let mut op = track("1", &message(Some("d@x"), "ann@example.com", &["lee@example.org"], "Draft", ""));
        op["draft"] = json!(true);
        let r = s.push(&ann, &client, json!([op])).await;
        assert_eq!(r[0]["code"], "draft");
        assert!(r[0]["message"].as_str().unwrap().contains("sent"));
    }

    async fn r_e8_the_first_ten_recipients_and_the_sender_are_resolved_and_lists_are_not_expanded(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let mut to = Vec::new();
        for i in 0..14 {
            s.post(&ann, "/api/v1/contacts", json!({"last_name": format!("P{i}"), "email": format!("p{i}@example.org")})).await.expect(201);
            to.push(format!("p{i}@example.org"));
        }
        to.push("all-staff@lists.example.org".into());
        for i in 0..2000 {
            to.push(format!("bulk{i}@example.net"));
        }
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let r = s.push(&ann, &client, json!([track("1", &message(Some("many@x"), "ann@example.com", &to, "Everyone", ""))])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        let email = s.get(&ann, &format!("/api/v1/emails/{}", id(&r[0]))).await.expect(200);
        assert_eq!(email["direction"], "outgoing");
        let parties = email["parties"].as_array().unwrap();
        assert_eq!(parties.len(), 1 + 14 + 1 + 2000, "every recipient kept, the list not expanded");
        assert_eq!(parties[0]["role"], "from");
        assert_eq!(parties[0]["resolved"]["set"], "users", "the sender is Ann, resolved besides the ten");
        let resolved: Vec<&str> = parties[1..]
            .iter()
            .filter(|p| !p["resolved"].is_null())
            .map(|p| p["address"].as_str().unwrap())
            .collect();
        let first_ten: Vec<String> = (0..10).map(|i| format!("p{i}@example.org")).collect();
        assert_eq!(resolved, first_ten, "exactly the first ten recipients are resolved (P10..P13 exist but come later)");
    }

    async fn r_e9_two_activities_or_one_shared(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (bob_id, bob) = s.add_user("bob@example.com").await;
        let ann_client = id(&s.register(&ann, "laptop").await);
        let bob_client = id(&s.register(&bob, "desk").await);
        // Off (default): one shared activity; Bob tracking it links to Ann's.
        let shared = message(Some("shared@x"), "ann@example.com", &["bob@example.com", "lee@example.org"], "Shared", "");
        let a = s.push(&ann, &ann_client, json!([track("1", &shared)])).await;
        let b = s.push(&bob, &bob_client, json!([track("1", &shared)])).await;
        assert_eq!(a[0]["id"], b[0]["id"]);
        // R-M7: Ann sets the regarding; it reaches Bob's mailbox.
        let acc = s.post(&ann, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        s.push(&ann, &ann_client, json!([{"op_id": "2", "kind": "set_regarding", "set": "emails", "id": a[0]["id"], "regarding": {"set": "accounts", "id": acc["id"]}}])).await;
        let got = s.sync_once(&bob, &bob_client).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].action, "update");
        assert_eq!(got[0].record.as_ref().unwrap()["fields"]["regarding"]["id"], acc["id"]);
        // On: each CRM user party gets their own activity.
        s.patch(&s.admin, "/api/v1/settings", json!({"two_activities": true})).await.expect(200);
        let two = message(Some("two@x"), "ann@example.com", &["bob@example.com"], "Two", "");
        s.push(&ann, &ann_client, json!([track("3", &two)])).await;
        let list = s.get(&s.admin, "/api/v1/emails?q=two").await.expect(200);
        let mut owners: Vec<String> = list["items"].as_array().unwrap().iter().map(|e| e["owner_id"].as_str().unwrap().to_string()).collect();
        owners.sort();
        let ann_id = s.me(&ann).await;
        let mut expected = vec![ann_id, bob_id.clone()];
        expected.sort();
        assert_eq!(owners, expected);
        let bobs = s.push(&bob, &bob_client, json!([track("4", &two)])).await;
        assert_eq!(bobs[0]["linked"], true);
        assert_eq!(s.get(&bob, &format!("/api/v1/emails/{}", id(&bobs[0]))).await.expect(200)["owner_id"], bob_id.as_str());
    }

    async fn r_e10_email_of_unapproved_users_is_refused_when_the_setting_is_on(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        s.patch(&s.admin, "/api/v1/settings", json!({"approved_only": true})).await.expect(200);
        let raw = message(Some("a@x"), "lee@example.org", &["ann@example.com"], "Hi", "");
        let r = s.push(&ann, &client, json!([track("1", &raw)])).await;
        assert_eq!(r[0]["code"], "not_approved");
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"approved_email": true})).await.expect(200);
        assert_eq!(s.push(&ann, &client, json!([track("2", &raw)])).await[0]["status"], "ok");
    }

    async fn r_m5_correlation_lookups_in_order(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let r = s.push(&ann, &client, json!([track("1", &message(Some("orig@x"), "ann@example.com", &["lee@example.org", "kim@example.org"], "Quote 42", ""))])).await;
        let token = s.get(&ann, &format!("/api/v1/emails/{}", id(&r[0]))).await.expect(200)["tracking_token"].as_str().unwrap().to_string();
        // (1) In-Reply-To / References.
        let by_id = s.get(&ann, "/api/v1/sync/emails/lookup?message_ids=%3Cunknown%40x%3E,%3Corig%40x%3E").await.expect(200);
        assert_eq!(by_id["matched_by"], "message_id");
        assert_eq!(by_id["email"]["id"], r[0]["id"]);
        // (2) The tracking token in the subject.
        let subject = format!("RE: Quote 42 [{token}]");
        let by_token = s.get(&ann, &format!("/api/v1/sync/emails/lookup?subject={}", urlencode(&subject))).await.expect(200);
        assert_eq!(by_token["matched_by"], "tracking_token");
        // (3) Smart matching: off by default, then on.
        let smart = "/api/v1/sync/emails/lookup?subject=AW%3A%20Quote%2042&addresses=lee%40example.org,kim%40example.org";
        assert_eq!(s.get(&ann, smart).await.expect(200)["matched_by"], Value::Null);
        s.patch(&s.admin, "/api/v1/settings", json!({"smart_matching": true})).await.expect(200);
        assert_eq!(s.get(&ann, smart).await.expect(200)["matched_by"], "smart_matching");
        let one_address = "/api/v1/sync/emails/lookup?subject=AW%3A%20Quote%2042&addresses=lee%40example.org";
        assert_eq!(s.get(&ann, one_address).await.expect(200)["matched_by"], Value::Null, "two shared addresses are needed");
    }

    async fn r_m7_tagging_feed_lists_regarding_changes_of_my_emails(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (_, bob) = s.add_user("bob@example.com").await;
        let client = id(&s.register(&ann, "laptop").await);
        let r = s.push(&ann, &client, json!([track("1", &message(Some("t@x"), "ann@example.com", &["bob@example.com"], "Tag me", ""))])).await;
        let since = s.version().await;
        let acc = s.post(&ann, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        s.patch(&ann, &format!("/api/v1/emails/{}", id(&r[0])), json!({"regarding": {"set": "accounts", "id": acc["id"]}})).await.expect(200);
        let feed = s.get(&bob, &format!("/api/v1/sync/emails/tagging?since={since}")).await.expect(200);
        assert_eq!(feed["items"].as_array().unwrap().len(), 1, "Bob is a party");
        assert_eq!(feed["items"][0]["regarding"]["id"], acc["id"]);
        let (_, kim) = s.add_user("kim@example.com").await;
        assert_eq!(s.get(&kim, &format!("/api/v1/sync/emails/tagging?since={since}")).await.expect(200)["items"], json!([]));
        // Control: with tagging on, a regarding change reaches the tracked copy.
        let tagged = s.sync_once(&ann, &client).await;
        assert_eq!(tagged.len(), 1, "the regarding change is delivered");
        assert_eq!(tagged[0].action, "update");
        assert_eq!(tagged[0].record.as_ref().unwrap()["fields"]["regarding"]["id"], acc["id"]);
        // Tagging off: tracked copies get no regarding updates (R-M7).
        s.patch(&s.admin, "/api/v1/settings", json!({"tagging": false})).await.expect(200);
        s.sync_once(&ann, &client).await;
        s.patch(&ann, &format!("/api/v1/emails/{}", id(&r[0])), json!({"regarding": null})).await.expect(200);
        assert!(s.sync_once(&ann, &client).await.is_empty());
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
