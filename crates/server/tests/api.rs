//! REST API tests (SPEC §2, §4, R-A), each run on SQLite and PostgreSQL.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

both_dbs! {
    async fn crud_round_trip_keeps_ids_and_grows_versions(s: TestServer) {
        let created = s.post(&s.admin, "/api/v1/contacts", json!({"first_name": "Ann", "last_name": "Lee", "email": "ann@x.org"})).await;
        assert_eq!(created.headers["etag"], format!("\"{}\"", created.body["version"]).as_str());
        let c = created.expect(201);
        let id = c["id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok());
        assert_eq!(c["state"], "active");
        assert_eq!(c["created_at"], c["modified_at"]);
        let path = format!("/api/v1/contacts/{id}");
        assert_eq!(s.get(&s.admin, &path).await.expect(200), c);

        let v1 = c["version"].as_i64().unwrap();
        let p = s.patch(&s.admin, &path, json!({"email": null, "job_title": "CTO"})).await.expect(200);
        assert!(p["version"].as_i64().unwrap() > v1);
        assert_eq!(p["first_name"], "Ann");
        assert_eq!(p["job_title"], "CTO");
        assert!(p.get("email").is_none(), "null clears a field");
        assert!(p["modified_at"].as_str() > c["modified_at"].as_str());

        // An update that changes nothing keeps the version.
        let same = s.patch(&s.admin, &path, json!({"job_title": "CTO"})).await.expect(200);
        assert_eq!(same["version"], p["version"]);

        assert_eq!(s.delete(&s.admin, &path).await.status, 204);
        assert_eq!(s.get(&s.admin, &path).await.error(404), "not_found");
        assert_eq!(s.delete(&s.admin, &path).await.error(404), "not_found");
        // The tombstone shows in the changes feed with a newer version.
        let changes = s.get(&s.admin, &format!("/api/v1/changes?since={}", p["version"])).await.expect(200);
        assert_eq!(changes["items"], json!([{"id": id, "set": "contacts", "version": p["version"].as_i64().unwrap() + 1, "deleted": true}]));
    }

    async fn r_a_only_owner_or_admin_may_change_a_record(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let (_, bob) = s.add_user("bob@example.com").await;
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Client"})).await.expect(201);
        let path = format!("/api/v1/contacts/{}", c["id"].as_str().unwrap());
        // Every user reads every record.
        assert_eq!(s.get(&bob, &path).await.expect(200)["last_name"], "Client");
        let before = s.version().await;
        assert_eq!(s.patch(&bob, &path, json!({"last_name": "Hacked"})).await.error(403), "forbidden");
        assert_eq!(s.delete(&bob, &path).await.error(403), "forbidden");
        assert_eq!(s.version().await, before, "a refused write changes nothing");
        assert_eq!(s.get(&ann, &path).await.expect(200)["last_name"], "Client");
        // The owner and an admin may.
        s.patch(&ann, &path, json!({"last_name": "Owner edit"})).await.expect(200);
        s.patch(&s.admin, &path, json!({"last_name": "Admin edit"})).await.expect(200);
        // Reassigned to Bob, Ann loses the right.
        let bob_id = s.me(&bob).await;
        s.patch(&ann, &path, json!({"owner_id": bob_id})).await.expect(200);
        assert_eq!(s.patch(&ann, &path, json!({"last_name": "x"})).await.error(403), "forbidden");
        assert_eq!(s.delete(&bob, &path).await.status, 204);
    }

    async fn if_match_with_a_stale_version_gives_412(s: TestServer) {
        let c = s.post(&s.admin, "/api/v1/tasks", json!({"subject": "Call back"})).await.expect(201);
        let path = format!("/api/v1/tasks/{}", c["id"].as_str().unwrap());
        let v = c["version"].as_i64().unwrap();
        let req = |version: String, subject: &str| {
            s.http.patch(format!("{}{path}", s.base)).bearer_auth(&s.admin).header("If-Match", version).json(&json!({"subject": subject}))
        };
        assert_eq!(req(format!("\"{v}\""), "first").send().await.unwrap().status(), 200);
        let stale = req(v.to_string(), "second").send().await.unwrap();
        assert_eq!(stale.status(), 412);
        let body: Value = stale.json().await.unwrap();
        assert_eq!(body["error"]["code"], "version_mismatch");
        assert_eq!(s.get(&s.admin, &path).await.expect(200)["subject"], "first");
        assert_eq!(req("yesterday".into(), "x").send().await.unwrap().status(), 400);
        let del = s.http.delete(format!("{}{path}", s.base)).bearer_auth(&s.admin).header("If-Match", v.to_string()).send().await.unwrap();
        assert_eq!(del.status(), 412);
    }

    async fn missing_or_bad_token_gives_401_and_healthz_is_open(s: TestServer) {
        let anon = s.http.get(format!("{}/api/v1/contacts", s.base)).send().await.unwrap();
        assert_eq!(anon.status(), 401);
        assert_eq!(anon.headers()["www-authenticate"], "Bearer");
        assert_eq!(s.get("crm_not_a_token", "/api/v1/contacts").await.error(401), "unauthorized");
        for path in ["/metrics", "/api/v1/openapi.json", "/api/v1/settings"] {
            assert_eq!(s.http.get(format!("{}{path}", s.base)).send().await.unwrap().status(), 401, "{path}");
        }
        let health = s.http.get(format!("{}/healthz", s.base)).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }

    // A GET by id checks the token in the same statement as the read
    // (one round trip): every refusal still holds, in the same order, and
    // a change to the user made through another server process on the
    // same database is seen by the very next GET (nothing is cached).
    async fn r_a_get_by_id_refuses_revoked_tokens_at_once_on_every_server(s: TestServer) {
        let other = common::serve_store(
            crmsync_server::Store::connect(&s.db.url).await.unwrap(),
            s.admin.clone(),
            s.db.again(),
            crmsync_server::DEFAULT_MAX_BODY,
        )
        .await;
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let c = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Kept"})).await.expect(201);
        let path = format!("/api/v1/contacts/{}", c["id"].as_str().unwrap());
        let gone = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Gone"})).await.expect(201);
        let gone_path = format!("/api/v1/contacts/{}", gone["id"].as_str().unwrap());
        assert_eq!(s.delete(&s.admin, &gone_path).await.status, 204);
        let unknown = format!("/api/v1/contacts/{}", uuid::Uuid::new_v4());
        for server in [&s, &other] {
            assert_eq!(server.get(&ann, &path).await.expect(200)["last_name"], "Kept");
            assert_eq!(server.get(&ann, &gone_path).await.error(404), "not_found");
            assert_eq!(server.get(&ann, &unknown).await.error(404), "not_found");
            assert_eq!(server.get(&ann, "/api/v1/contacts/not-a-uuid").await.error(400), "invalid_id");
            assert_eq!(server.get(&ann, &format!("/api/v1/tasks/{}", c["id"].as_str().unwrap())).await.error(404), "not_found", "the record is in another set");
            for p in [&path, &unknown, &"/api/v1/contacts/not-a-uuid".to_string()] {
                assert_eq!(server.get("crm_not_a_token", p).await.error(401), "unauthorized", "{p}");
            }
            let anon = server.http.get(format!("{}{path}", server.base)).send().await.unwrap();
            assert_eq!(anon.status(), 401);
        }
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"state": "disabled"})).await.expect(200);
        for p in [&path, &unknown] {
            assert_eq!(other.get(&ann, p).await.error(403), "forbidden", "disabled, seen by the other server: {p}");
        }
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"state": "active"})).await.expect(200);
        other.get(&ann, &path).await.expect(200);
        assert_eq!(s.delete(&s.admin, &format!("/api/v1/users/{ann_id}")).await.status, 204);
        assert_eq!(other.get(&ann, &path).await.error(401), "unauthorized", "the deleted user's token dies on the other server at once");
        assert_eq!(s.get(&ann, &path).await.error(401), "unauthorized");
    }

    async fn bad_input_gets_a_clear_4xx_and_changes_nothing(s: TestServer) {
        let c = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee"})).await.expect(201);
        let path = format!("/api/v1/contacts/{}", c["id"].as_str().unwrap());
        let before = s.version().await;
        let raw = |method: Method, path: &str, body: &'static str| {
            s.http.request(method, format!("{}{path}", s.base)).bearer_auth(&s.admin).header("content-type", "application/json").body(body).send()
        };
        let r = raw(Method::POST, "/api/v1/contacts", "{\"last_name\": ").await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "bad_json");
        let r = s.http.post(format!("{}/api/v1/contacts", s.base)).bearer_auth(&s.admin).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 415, "missing content type");
        assert_eq!(raw(Method::PATCH, &path, "[1,2]").await.unwrap().status(), 422);
        let e = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "shoe_size": 44})).await;
        assert!(e.body["error"]["message"].as_str().unwrap().contains("shoe_size"));
        assert_eq!(e.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/contacts", json!({"last_name": 5})).await.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "email": "not-an-address"})).await.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "birthday": "2026-02-30"})).await.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/contacts", json!({"first_name": "no last name"})).await.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "state": "won"})).await.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "id": "00000000-0000-0000-0000-000000000001"})).await.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "owner_id": uuid::Uuid::new_v4()})).await.error(422), "invalid_input");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts/not-a-uuid").await.error(400), "invalid_id");
        assert_eq!(s.get(&s.admin, "/api/v1/widgets").await.error(404), "unknown_entity_set");
        assert_eq!(s.post(&s.admin, "/api/v1/widgets", json!({})).await.error(404), "unknown_entity_set");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?limit=1000000").await.error(400), "bad_limit");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?limit=0").await.error(400), "bad_limit");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?limit=ten").await.error(400), "bad_limit");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?cursor=zzz").await.error(400), "bad_cursor");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?owner=bob").await.error(400), "bad_owner");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?modified_since=today").await.error(400), "bad_modified_since");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?colour=red").await.error(400), "unknown_parameter");
        assert_eq!(s.get(&s.admin, "/api/v1/changes?since=-1").await.error(400), "bad_since");
        let appt = json!({"subject": "s", "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T09:00:00Z"});
        assert!(s.post(&s.admin, "/api/v1/appointments", appt).await.body["error"]["message"].as_str().unwrap().contains("end"));
        assert_eq!(s.call(&s.admin, Method::PUT, &path, Some(json!({}))).await.error(405), "method_not_allowed");
        assert_eq!(s.get(&s.admin, "/api/nowhere").await.error(404), "not_found");
        assert_eq!(s.get(&s.admin, "/api/v1/contacts/x/y").await.error(404), "not_found");
        assert_eq!(s.version().await, before, "no refused request changed stored data");
        assert_eq!(s.get(&s.admin, &path).await.expect(200), c);
    }

    async fn references_must_exist(s: TestServer) {
        let ghost = uuid::Uuid::new_v4();
        let e = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "account_id": ghost})).await;
        assert!(e.body["error"]["message"].as_str().unwrap().contains("account_id"));
        assert_eq!(e.error(422), "invalid_input");
        let acc = s.post(&s.admin, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "x", "account_id": acc["id"]})).await.expect(201);
        let regarding = json!({"set": "accounts", "id": acc["id"]});
        let t = s.post(&s.admin, "/api/v1/tasks", json!({"subject": "t", "regarding": regarding})).await.expect(201);
        assert_eq!(t["regarding"], regarding);
        // A contact id under "accounts" does not exist as an account.
        let wrong = json!({"set": "accounts", "id": t["id"]});
        assert_eq!(s.post(&s.admin, "/api/v1/tasks", json!({"subject": "t", "regarding": wrong})).await.error(422), "invalid_input");
        assert_eq!(s.post(&s.admin, "/api/v1/tasks", json!({"subject": "t", "regarding": {"set": "tasks", "id": t["id"]}})).await.error(422), "invalid_input");
    }

    async fn every_entity_set_validates_its_fields(s: TestServer) {
        let acc = s.post(&s.admin, "/api/v1/accounts", json!({"name": "Acme", "website": "acme.example"})).await.expect(201);
        let contact = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee"})).await.expect(201);
        // (set, body, how the server writes the fields it normalizes, state):
        // every accepted field is read back.
        let ok = [
            ("accounts", json!({"name": "Acme 2", "website": "acme.example", "parent_account_id": acc["id"]}), json!({}), "active"),
            ("leads", json!({"last_name": "Ng", "company_name": "Foo", "state": "qualified"}), json!({}), "qualified"),
            ("opportunities", json!({"name": "Deal", "account_id": acc["id"], "contact_id": contact["id"], "estimated_value": 1200.5, "state": "won"}), json!({}), "won"),
            ("cases", json!({"title": "Broken", "account_id": acc["id"], "state": "resolved"}), json!({}), "resolved"),
            ("appointments", json!({"subject": "Sync", "start": "2026-12-01T10:00:00+01:00", "end": "2026-12-01T11:00:00+01:00", "time_zone": "Europe/Berlin",
                "attendees": [{"email": "a@x.org"}, {"email": "b@x.org", "role": "optional"}], "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=TU", "exdates": ["2026-12-08T09:00:00Z"]}}),
                json!({"start": "2026-12-01T09:00:00Z", "end": "2026-12-01T10:00:00Z",
                    "attendees": [{"email": "a@x.org", "role": "required", "resolved": null}, {"email": "b@x.org", "role": "optional", "resolved": null}]}), "open"),
            ("serviceappointments", json!({"subject": "Visit", "start": "2026-12-02T10:00:00Z", "end": "2026-12-02T12:00:00Z"}), json!({}), "open"),
            ("tasks", json!({"subject": "Do", "priority": "high", "percent_complete": 50, "due": "2026-12-03T00:00:00Z"}), json!({}), "open"),
            ("phonecalls", json!({"subject": "Ring", "phone_number": "+49 30 1234", "direction": "outgoing"}), json!({}), "open"),
            ("letters", json!({"subject": "Write"}), json!({}), "open"),
            ("faxes", json!({"subject": "Fax"}), json!({}), "open"),
            ("emails", json!({"subject": "Hi", "from": "a@x.org", "to": ["b@x.org"], "direction": "incoming", "message_id": "<1@x.org>",
                "parties": [{"address": "a@x.org", "role": "from"}]}), json!({"parties": [{"address": "a@x.org", "role": "from", "resolved": null}]}), "completed"),
        ];
        for (set, body, normalized, state) in ok {
            let r = s.post(&s.admin, &format!("/api/v1/{set}"), body.clone()).await.expect(201);
            assert_eq!(r["state"], state, "{set}: {r}");
            for (field, given) in body.as_object().unwrap() {
                let want = normalized.get(field).unwrap_or(given);
                assert_eq!(&r[field], want, "{set}.{field}: {r}");
            }
            let stored = s.get(&s.admin, &format!("/api/v1/{set}/{}", r["id"].as_str().unwrap())).await.expect(200);
            assert_eq!(stored, r, "{set}: read back as created");
        }
        let appt = s.get(&s.admin, "/api/v1/appointments").await.expect(200);
        assert_eq!(appt["items"][0]["start"], "2026-12-01T09:00:00Z", "times are stored in UTC");
        assert_eq!(appt["items"][0]["attendees"][0]["role"], "required");
        let bad = [
            ("leads", json!({"last_name": "Ng", "state": "won"})),
            ("opportunities", json!({"name": "Deal", "estimated_value": -1})),
            ("appointments", json!({"subject": "s", "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z", "recurrence": {"rrule": "EVERY TUESDAY"}})),
            ("appointments", json!({"subject": "s", "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z", "time_zone": "Mars Time"})),
            ("appointments", json!({"subject": "s", "start": "2026-12-01 10:00", "end": "2026-12-01T11:00:00Z"})),
            ("tasks", json!({"subject": "Do", "percent_complete": 150})),
            ("tasks", json!({"subject": "Do", "priority": "urgent"})),
            ("tasks", json!({"subject": "Do", "start": "2026-12-03T00:00:00Z", "due": "2026-12-02T00:00:00Z"})),
            ("phonecalls", json!({"subject": "Ring", "direction": "sideways"})),
            ("emails", json!({"to": ["not an address"]})),
            ("emails", json!({"parties": [{"address": "a@x.org", "role": "boss"}]})),
        ];
        for (set, body) in bad {
            let r = s.post(&s.admin, &format!("/api/v1/{set}"), body.clone()).await;
            assert_eq!(r.error(422), "invalid_input", "{set} {body}");
        }
    }

    async fn list_is_newest_first_with_cursor_pages_and_filters(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let mut ids = Vec::new();
        for i in 0..7 {
            let token = if i % 2 == 0 { &s.admin } else { &ann };
            let c = s.post(token, "/api/v1/contacts", json!({"last_name": format!("Person{i}"), "city": if i == 3 { "Zürich" } else { "Berlin" }})).await.expect(201);
            ids.push(c["id"].as_str().unwrap().to_string());
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/contacts?limit=3&cursor={c}"),
                None => "/api/v1/contacts?limit=3".to_string(),
            };
            let page = s.get(&s.admin, &path).await.expect(200);
            assert!(page["items"].as_array().unwrap().len() <= 3);
            seen.extend(page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, newest_first);
        let mine = s.get(&ann, "/api/v1/contacts?owner=me").await.expect(200);
        assert_eq!(mine["items"].as_array().unwrap().len(), 3);
        let found = s.get(&s.admin, "/api/v1/contacts?q=person3").await.expect(200);
        assert_eq!(found["items"].as_array().unwrap().len(), 1);
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?q=zürich").await.expect(200)["items"].as_array().unwrap().len(), 1);
        assert_eq!(s.get(&s.admin, "/api/v1/contacts?q=%25").await.expect(200)["items"].as_array().unwrap().len(), 0, "% is literal");
        let future = s.get(&s.admin, "/api/v1/contacts?modified_since=2999-01-01T00:00:00Z").await.expect(200);
        assert_eq!(future["items"], json!([]));
        let past = s.get(&s.admin, "/api/v1/contacts?modified_since=2000-01-01T00:00:00%2B02:00").await.expect(200);
        assert_eq!(past["items"].as_array().unwrap().len(), 7);
    }

    // R-W8: `q` is answered from a full-text index (FTS5 trigrams on
    // SQLite, pg_trgm on PostgreSQL) and must mean what the scan meant:
    // a case-insensitive substring, following edits and deletes.
    async fn r_w8_indexed_search_finds_substrings_and_follows_edits(s: TestServer) {
        let count = |q: &str| {
            let path = format!("/api/v1/contacts?q={q}");
            let s = &s;
            async move { s.get(&s.admin, &path).await.expect(200)["items"].as_array().unwrap().len() }
        };
        let jackson = s.post(&s.admin, "/api/v1/contacts", json!({"first_name": "Mary", "last_name": "Jackson"})).await.expect(201);
        s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Jacks", "email": "j@quote.example"})).await.expect(201);
        assert_eq!(count("ACKSO").await, 1, "substring, any case");
        assert_eq!(count("jack").await, 2);
        assert_eq!(count("ja").await, 2, "shorter than a trigram");
        assert_eq!(count("mary%20jack").await, 1, "across fields, as the scan did");
        assert_eq!(count("a%22b").await, 0, "a quote is literal");
        assert_eq!(count("%22jackson%22").await, 0);
        let id = jackson["id"].as_str().unwrap();
        s.patch(&s.admin, &format!("/api/v1/contacts/{id}"), json!({"last_name": "Smithers"})).await.expect(200);
        assert_eq!(count("jackson").await, 0, "the old text is gone from the index");
        assert_eq!(count("smither").await, 1);
        s.delete(&s.admin, &format!("/api/v1/contacts/{id}")).await.expect(204);
        assert_eq!(count("smither").await, 0, "a deleted record is not found");
    }

    async fn users_are_managed_by_admins_and_tokens_work(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        assert!(ann.len() >= 36, "at least 128 bits of token");
        let me = s.get(&ann, &format!("/api/v1/users/{ann_id}")).await.expect(200);
        assert_eq!(me["role"], "user");
        assert_eq!(me["sync_to_mailbox"], true);
        assert_eq!(me["go_offline"], true);
        assert!(me.get("token").is_none(), "tokens are shown once");
        assert_eq!(s.post(&ann, "/api/v1/users", json!({"email": "x@example.com", "name": "X"})).await.error(403), "forbidden");
        assert_eq!(s.post(&s.admin, "/api/v1/users", json!({"email": "ANN@example.com", "name": "Dup"})).await.error(409), "duplicate");
        s.patch(&ann, &format!("/api/v1/users/{ann_id}"), json!({"name": "Ann Lee"})).await.expect(200);
        assert_eq!(s.patch(&ann, &format!("/api/v1/users/{ann_id}"), json!({"role": "admin"})).await.error(403), "forbidden");
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"approved_email": true, "sync_to_mailbox": false})).await.expect(200);
        // Disabled users cannot call the API; deleted users' tokens die.
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"state": "disabled"})).await.expect(200);
        assert_eq!(s.get(&ann, "/api/v1/contacts").await.error(403), "forbidden");
        s.patch(&s.admin, &format!("/api/v1/users/{ann_id}"), json!({"state": "active"})).await.expect(200);
        s.get(&ann, "/api/v1/contacts").await.expect(200);
        assert_eq!(s.delete(&ann, &format!("/api/v1/users/{ann_id}")).await.error(403), "forbidden");
        assert_eq!(s.delete(&s.admin, &format!("/api/v1/users/{ann_id}")).await.status, 204);
        assert_eq!(s.get(&ann, "/api/v1/contacts").await.error(401), "unauthorized");
        let admin_id = s.me(&s.admin).await;
        assert_eq!(s.delete(&s.admin, &format!("/api/v1/users/{admin_id}")).await.error(409), "cannot_delete_self");
        // The email is free again once its user is gone.
        s.add_user("ann@example.com").await;
    }

    async fn settings_validate_and_follow_roles(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let (bob_id, _) = s.add_user("bob@example.com").await;
        let org = s.get(&ann, "/api/v1/settings").await.expect(200);
        assert_eq!(org["sync_interval"], "15m");
        assert_eq!(org["tracking_token_prefix"], "CRM");
        assert_eq!(org["smart_matching"], false);
        assert_eq!(s.patch(&ann, "/api/v1/settings", json!({"tagging": false})).await.error(403), "forbidden");
        let org = s.patch(&s.admin, "/api/v1/settings", json!({"tagging": false, "two_activities": true, "sync_interval_min": "10m"})).await.expect(200);
        assert_eq!(org["tagging"], false);
        assert_eq!(s.get(&ann, "/api/v1/settings").await.expect(200)["two_activities"], true);
        for bad in [json!({"sync_interval": "often"}), json!({"tracking_token_prefix": ""}), json!({"nope": 1}), json!({"tagging": "yes"}), json!({"sync_interval": "5m"})] {
            assert_eq!(s.patch(&s.admin, "/api/v1/settings", bad.clone()).await.error(422), "invalid_input", "{bad}");
        }
        let mine = format!("/api/v1/users/{ann_id}/settings");
        let u = s.get(&ann, &mine).await.expect(200);
        assert_eq!(u["auto_track"], "replies_to_crm_email");
        assert_eq!(u["roaming"], false);
        let u = s.patch(&ann, &mine, json!({"roaming": true, "entity_types": ["contacts"], "auto_track": "all"})).await.expect(200);
        assert_eq!(u["entity_types"], json!(["contacts"]));
        assert_eq!(s.patch(&ann, &mine, json!({"schedule_interval": "5m"})).await.error(422), "invalid_input", "R-T1: below the organization minimum");
        assert_eq!(s.patch(&ann, &mine, json!({"auto_track": "sometimes"})).await.error(422), "invalid_input");
        assert_eq!(s.get(&ann, &format!("/api/v1/users/{bob_id}/settings")).await.error(403), "forbidden");
        s.patch(&s.admin, &format!("/api/v1/users/{bob_id}/settings"), json!({"schedule_enabled": false})).await.expect(200);
        assert_eq!(s.get(&s.admin, &format!("/api/v1/users/{}/settings", uuid::Uuid::new_v4())).await.error(404), "not_found");
    }

    async fn r_s6_sync_filters_default_validate_and_belong_to_users(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let list = s.get(&ann, "/api/v1/sync-filters").await.expect(200);
        let defaults = list["items"].as_array().unwrap();
        assert_eq!(defaults.len(), 7, "contacts, appointments, service appointments, tasks, phone calls, letters, faxes");
        assert!(defaults.iter().all(|f| f["scope"] == "system" && f["active"] == true));
        let mine = json!({"name": "Berlin contacts", "entity_set": "contacts",
            "condition": {"all": [{"field": "city", "op": "eq", "value": "Berlin"}, {"field": "modified_at", "op": "ge", "value": "@now-30d"}]}});
        let f = s.post(&ann, "/api/v1/sync-filters", mine).await.expect(201);
        assert_eq!(f["scope"], "user");
        assert_eq!(f["user_id"], ann_id.as_str());
        let path = format!("/api/v1/sync-filters/{}", f["id"].as_str().unwrap());
        let f2 = s.patch(&ann, &path, json!({"active": false})).await.expect(200);
        assert_eq!(f2["active"], false);
        assert_eq!(f2["condition"], f["condition"]);
        let bad = json!({"name": "x", "entity_set": "contacts", "condition": {"field": "shoe_size", "op": "eq", "value": 1}});
        let e = s.post(&ann, "/api/v1/sync-filters", bad).await;
        assert!(e.body["error"]["message"].as_str().unwrap().contains("shoe_size"));
        assert_eq!(e.error(422), "invalid_input");
        let system = json!({"name": "All", "entity_set": "contacts", "scope": "system", "condition": {"field": "state", "op": "eq", "value": "active"}});
        assert_eq!(s.post(&ann, "/api/v1/sync-filters", system.clone()).await.error(403), "forbidden");
        s.post(&s.admin, "/api/v1/sync-filters", system).await.expect(201);
        let accounts = json!({"name": "x", "entity_set": "accounts", "condition": {"field": "owner_id", "op": "eq", "value": "@me"}});
        assert_eq!(s.post(&ann, "/api/v1/sync-filters", accounts).await.error(422), "invalid_input");
        let default_path = format!("/api/v1/sync-filters/{}", defaults[0]["id"].as_str().unwrap());
        assert_eq!(s.delete(&ann, &default_path).await.error(403), "forbidden");
        // Others do not see a user's own filter.
        let (_, bob) = s.add_user("bob@example.com").await;
        assert_eq!(s.get(&bob, &path).await.error(404), "not_found");
        assert_eq!(s.delete(&ann, &path).await.status, 204);
        assert_eq!(s.get(&ann, &path).await.error(404), "not_found");
    }

    async fn r_f1_sync_field_directions_per_entity_type(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let f = s.get(&ann, "/api/v1/sync-fields/contacts").await.expect(200);
        assert_eq!(f["fields"]["email"], "both");
        assert_eq!(f["fields"]["account_id"], "none");
        assert_eq!(s.patch(&ann, "/api/v1/sync-fields/contacts", json!({"email": "to_mailbox"})).await.error(403), "forbidden");
        let f = s.patch(&s.admin, "/api/v1/sync-fields/contacts", json!({"email": "to_mailbox", "notes": "none"})).await.expect(200);
        assert_eq!(f["fields"]["email"], "to_mailbox");
        assert_eq!(s.get(&ann, "/api/v1/sync-fields/contacts").await.expect(200)["fields"]["notes"], "none");
        assert_eq!(s.patch(&s.admin, "/api/v1/sync-fields/contacts", json!({"account_id": "both"})).await.error(422), "invalid_input");
        assert_eq!(s.patch(&s.admin, "/api/v1/sync-fields/contacts", json!({"email": "up"})).await.error(422), "invalid_input");
        assert_eq!(s.get(&ann, "/api/v1/sync-fields/accounts").await.error(404), "not_found");
    }

    async fn r_f3_field_security_rules_validate(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let rule = json!({"entity_set": "contacts", "field": "mobile", "user_id": ann_id, "can_read": false, "can_update": false});
        assert_eq!(s.post(&ann, "/api/v1/field-security", rule.clone()).await.error(403), "forbidden");
        let r = s.post(&s.admin, "/api/v1/field-security", rule.clone()).await.expect(201);
        assert_eq!(s.post(&s.admin, "/api/v1/field-security", rule).await.error(409), "duplicate");
        let bad = json!({"entity_set": "contacts", "field": "shoe", "can_read": true, "can_update": true});
        assert_eq!(s.post(&s.admin, "/api/v1/field-security", bad).await.error(422), "invalid_input");
        let ghost = json!({"entity_set": "contacts", "field": "mobile", "user_id": uuid::Uuid::new_v4(), "can_read": true, "can_update": false});
        assert_eq!(s.post(&s.admin, "/api/v1/field-security", ghost).await.error(422), "invalid_input");
        assert_eq!(s.get(&s.admin, "/api/v1/field-security").await.expect(200)["items"].as_array().unwrap().len(), 1);
        let path = format!("/api/v1/field-security/{}", r["id"].as_str().unwrap());
        assert_eq!(s.delete(&s.admin, &path).await.status, 204);
        assert_eq!(s.delete(&s.admin, &path).await.error(404), "not_found");
    }

    async fn settings_resources_accept_what_their_get_returns(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let client = s.register(&ann, "laptop").await["id"].as_str().unwrap().to_string();
        s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "email": "lee@example.org"})).await.expect(201);
        assert_eq!(s.sync_once(&ann, &client).await.len(), 1, "the contact is delivered once");
        let rule = json!({"entity_set": "contacts", "field": "mobile", "user_id": ann_id, "can_read": true, "can_update": false});
        let rule = s.post(&s.admin, "/api/v1/field-security", rule).await.expect(201);
        let mine = json!({"name": "Mine", "entity_set": "contacts", "condition": {"field": "owner_id", "op": "eq", "value": "@me"}});
        let filter = s.post(&ann, "/api/v1/sync-filters", mine).await.expect(201);
        let system = s.get(&ann, "/api/v1/sync-filters").await.expect(200)["items"][0]["id"].as_str().unwrap().to_string();
        s.sync_once(&ann, &client).await;
        let version = s.version().await;
        let documents = [
            (&s.admin, "/api/v1/settings".to_string()),
            (&ann, format!("/api/v1/users/{ann_id}/settings")),
            (&s.admin, "/api/v1/sync-fields/contacts".to_string()),
            (&ann, format!("/api/v1/sync-filters/{}", filter["id"].as_str().unwrap())),
            (&s.admin, format!("/api/v1/sync-filters/{system}")),
            (&s.admin, format!("/api/v1/field-security/{}", rule["id"].as_str().unwrap())),
        ];
        for (token, path) in &documents {
            let read = s.get(token, path).await.expect(200);
            let written = s.patch(token, path, read.clone()).await;
            assert_eq!(written.status, 200, "{path}: {}", written.body);
            assert_eq!(written.body, read, "{path}: written back unchanged");
            assert_eq!(s.get(token, path).await.expect(200), read, "{path}: nothing changed");
        }
        assert_eq!(s.version().await, version, "no record changed");
        assert!(s.sync_once(&ann, &client).await.is_empty(), "nothing redelivered");
        // The documents still refuse what they cannot hold.
        let other_set = json!({"entity_set": "tasks", "fields": {}});
        assert_eq!(s.patch(&s.admin, "/api/v1/sync-fields/contacts", other_set).await.error(422), "invalid_input");
        let moved = json!({"id": uuid::Uuid::new_v4()});
        assert_eq!(s.patch(&ann, &documents[3].1, moved.clone()).await.error(422), "invalid_input");
        assert_eq!(s.patch(&s.admin, &documents[5].1, moved).await.error(422), "invalid_input");
        // An edit through the document form takes effect.
        let mut read = s.get(&s.admin, &documents[5].1).await.expect(200);
        read["can_read"] = json!(false);
        assert_eq!(s.patch(&s.admin, &documents[5].1, read).await.expect(200)["can_read"], false);
        assert_eq!(s.patch(&ann, &documents[5].1, json!({})).await.error(403), "forbidden");
    }

    async fn metrics_count_requests_by_route_and_status(s: TestServer) {
        s.get(&s.admin, "/api/v1/contacts").await.expect(200);
        s.get(&s.admin, "/api/v1/contacts/not-a-uuid").await.error(400);
        let text = s.http.get(format!("{}/metrics", s.base)).bearer_auth(&s.admin).send().await.unwrap().text().await.unwrap();
        assert!(text.contains(r#"http_requests_total{method="GET",route="/api/v1/{set}",status="200"}"#), "{text}");
        assert!(text.contains(r#"route="/api/v1/{set}/{id}",status="400""#), "{text}");
        assert!(text.contains("http_request_duration_seconds_bucket"), "{text}");
    }

    async fn openapi_describes_every_set(s: TestServer) {
        let doc = s.get(&s.admin, "/api/v1/openapi.json").await.expect(200);
        assert_eq!(doc["openapi"], "3.1.0");
        for set in crmsync_core::EntitySet::ALL {
            for path in [format!("/api/v1/{set}"), format!("/api/v1/{set}/{{id}}")] {
                assert!(doc["paths"][&path].is_object(), "{path}");
            }
        }
        for path in ["/api/v1/settings", "/api/v1/users/{id}/settings", "/api/v1/sync-filters", "/api/v1/sync-fields/{set}", "/api/v1/field-security", "/healthz", "/metrics"] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
    }

    async fn concurrent_writers_get_distinct_ordered_versions(s: TestServer) {
        let mut tasks = Vec::new();
        for i in 0..40 {
            let http = s.http.clone();
            let url = format!("{}/api/v1/contacts", s.base);
            let token = s.admin.clone();
            tasks.push(tokio::spawn(async move {
                let r = http.post(url).bearer_auth(token).json(&json!({"last_name": format!("c{i}")})).send().await.unwrap();
                assert_eq!(r.status(), 201);
                r.json::<Value>().await.unwrap()["version"].as_i64().unwrap()
            }));
        }
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap());
        }
        versions.sort();
        versions.dedup();
        assert_eq!(versions.len(), 40, "every write has its own version");
        let changes = s.store.changes_since(versions[0] - 1, 1000).await.unwrap();
        let seen: Vec<i64> = changes.iter().map(|c| c.version).collect();
        assert_eq!(seen, versions, "the changes feed holds exactly those versions, in order");
    }
}

/// Two write transactions racing (each reads, then writes, as the sync
/// handlers do): on SQLite a deferred BEGIN made the later writer fail at
/// once with SQLITE_BUSY (its snapshot is stale, so it cannot wait), which
/// reached clients as a 500. Both must commit, one after the other.
#[tokio::test]
async fn racing_read_then_write_transactions_both_commit_on_sqlite() {
    let s = common::start(common::Backend::Sqlite).await;
    let store = std::sync::Arc::new(s.store.clone());
    // `has_read` fires once the transaction's read is done: the other
    // writer starts exactly then (no sleep decides the order).
    let read_then_write =
        |store: std::sync::Arc<crmsync_server::store::Store>,
         pause: u64,
         has_read: Option<tokio::sync::oneshot::Sender<()>>| async move {
            let mut tx = store.begin().await?;
            sqlx::query("SELECT COUNT(*) FROM sequence_counter")
                .fetch_one(&mut *tx)
                .await?;
            if let Some(has_read) = has_read {
                let _ = has_read.send(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            sqlx::query("UPDATE sequence_counter SET value = value + 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
    let (has_read, read_done) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(read_then_write(store.clone(), 300, Some(has_read)));
    read_done.await.expect("the first transaction read");
    let quick = tokio::spawn(read_then_write(store.clone(), 0, None));
    slow.await.unwrap().expect("the first writer commits");
    quick
        .await
        .unwrap()
        .expect("the second writer waits, then commits");
}

#[tokio::test]
async fn body_over_the_limit_gets_413_and_changes_nothing() {
    let s = common::start_with_limit(common::Backend::Sqlite, 1024).await;
    let before = s.version().await;
    let big = "x".repeat(2000);
    let r = s
        .post(&s.admin, "/api/v1/contacts", json!({"last_name": big}))
        .await;
    assert_eq!(r.error(413), "payload_too_large");
    assert_eq!(s.version().await, before);
    // A push may carry a tracked email of up to 25 MB (base64): its route
    // takes more than the general limit.
    let push = json!({"client_id": uuid::Uuid::new_v4(), "ops": [{"pad": big}]});
    let r = s.post(&s.admin, "/api/v1/sync/push", push).await;
    assert_ne!(r.status.as_u16(), 413, "{:?}", r.body);
}
