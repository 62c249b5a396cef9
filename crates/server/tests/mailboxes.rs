//! SPEC §15: mailboxes connected to the server. R-V1 (the API), R-V2
//! (passwords encrypted at rest, never shown), R-V3 (a mailbox is a sync
//! client of its user), R-V5 (new credentials make a mailbox active), on
//! SQLite and PostgreSQL.

mod common;

use serde_json::{json, Value};

use common::{Backend, TestServer};
use crmsync_server::mailboxes::{self, Passwords};
use crmsync_server::secrets::{SecretError, SecretKey};

const IMAP_PASSWORD: &str = "imap-Pa55-9f3c1e";
const DAV_PASSWORD: &str = "dav-Pa55-77b0d2";

fn connect_body(name: &str) -> Value {
    json!({
        "name": name,
        "imap": {"host": "127.0.0.1", "port": 143, "security": "none", "username": "ann",
                 "password": IMAP_PASSWORD, "tracked_folders": ["CRM", "Deals"]},
        "dav": {"contacts": "http://127.0.0.1:5232/ann/contacts/", "username": "ann",
                "password": DAV_PASSWORD},
    })
}

/// Fails when a JSON answer holds a password anywhere.
#[track_caller]
fn assert_no_password(v: &Value) {
    let text = v.to_string();
    for p in [IMAP_PASSWORD, DAV_PASSWORD] {
        assert!(!text.contains(p), "a password in an answer: {text}");
    }
    assert!(!text.contains("\"password\""), "{text}");
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

both_dbs! {
    async fn r_v1_create_read_patch_delete(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let created = s.post(&ann, "/api/v1/mailboxes", connect_body("work")).await.expect(201);
        assert_no_password(&created);
        assert_eq!(created["user_id"], ann_id.as_str());
        assert_eq!(created["name"], "work");
        assert_eq!(created["state"], "active");
        assert_eq!(created["imap"]["host"], "127.0.0.1");
        assert_eq!(created["imap"]["tracked_folders"], json!(["CRM", "Deals"]));
        assert_eq!(created["imap"]["password_set"], true);
        assert_eq!(created["dav"]["password_set"], true);
        // R-V1: a new mailbox is due at once.
        assert!(created["next_run_at"].is_string(), "{created}");
        let mid = id(&created);

        let read = s.get(&ann, &format!("/api/v1/mailboxes/{mid}")).await.expect(200);
        assert_eq!(read, created);
        let list = s.get(&ann, "/api/v1/mailboxes").await.expect(200);
        assert_eq!(list["items"], json!([created]));

        let patched = s
            .patch(&ann, &format!("/api/v1/mailboxes/{mid}"), json!({
                "name": "office",
                "imap": {"port": 1143, "tracked_folders": null},
                "dav": null,
            }))
            .await
            .expect(200);
        assert_no_password(&patched);
        assert_eq!(patched["name"], "office");
        assert_eq!(patched["imap"]["port"], 1143);
        assert_eq!(patched["imap"]["username"], "ann", "keys not named are kept");
        assert!(patched["imap"].get("tracked_folders").is_none(), "{patched}");
        assert_eq!(patched["imap"]["password_set"], true, "the password is kept");
        assert!(patched.get("dav").is_none(), "{patched}");
        assert_eq!(s.get(&ann, &format!("/api/v1/mailboxes/{mid}")).await.expect(200), patched);
        // The password kept is the one given at first.
        let key = s.store.secret_key.as_deref().unwrap();
        let stored = stored_secret(&s, &mid).await;
        let passwords = Passwords::open(key, mid.parse().unwrap(), &stored).unwrap();
        assert_eq!(passwords, Passwords { imap: Some(IMAP_PASSWORD.into()), dav: None });

        // Its sync client is renamed with it (R-V3).
        let clients = s.get(&ann, "/api/v1/sync/clients").await.expect(200);
        let names: Vec<&str> = clients["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["office"]);
        assert_eq!(clients["items"][0]["kinds"], json!(["mail"]), "dav was removed");

        // DELETE stops synchronizing; nothing in the CRM is deleted.
        let contact = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Kept"})).await.expect(201);
        assert_eq!(s.delete(&ann, &format!("/api/v1/mailboxes/{mid}")).await.status, 204);
        assert_eq!(s.get(&ann, &format!("/api/v1/mailboxes/{mid}")).await.error(404), "not_found");
        assert_eq!(s.get(&ann, "/api/v1/mailboxes").await.expect(200)["items"], json!([]));
        s.get(&ann, &format!("/api/v1/contacts/{}", id(&contact))).await.expect(200);
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes").fetch_one(&s.store.pool).await.unwrap();
        assert_eq!(rows, 0);
    }

    async fn r_v1_a_user_reaches_only_their_own_mailboxes_an_admin_any(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let (_, bob) = s.add_user("bob@example.com").await;
        let mut for_ann = connect_body("work");
        for_ann["user_id"] = json!(ann_id);
        assert_eq!(s.post(&bob, "/api/v1/mailboxes", for_ann.clone()).await.error(403), "forbidden");
        let created = s.post(&s.admin, "/api/v1/mailboxes", for_ann).await.expect(201);
        assert_eq!(created["user_id"], ann_id.as_str(), "an admin connects a mailbox for a user");
        let mid = id(&created);
        for (method, body) in [("GET", None), ("PATCH", Some(json!({"name": "x"}))), ("DELETE", None)] {
            let r = s.call(&bob, method.parse().unwrap(), &format!("/api/v1/mailboxes/{mid}"), body).await;
            assert_eq!(r.error(403), "forbidden", "{method}");
        }
        assert_eq!(s.get(&bob, &format!("/api/v1/mailboxes?user_id={ann_id}")).await.error(403), "forbidden");
        assert_eq!(s.get(&bob, "/api/v1/mailboxes").await.expect(200)["items"], json!([]));
        assert_eq!(s.get(&ann, &format!("/api/v1/mailboxes/{mid}")).await.expect(200), created);
        let listed = s.get(&s.admin, &format!("/api/v1/mailboxes?user_id={ann_id}")).await.expect(200);
        assert_eq!(listed["items"], json!([created]));
        s.get(&s.admin, &format!("/api/v1/mailboxes/{mid}")).await.expect(200);
        // The mailbox's client is ann's, not the admin's.
        let clients = s.get(&ann, "/api/v1/sync/clients").await.expect(200);
        assert_eq!(clients["items"][0]["id"], created["client_id"]);
        assert_eq!(clients["items"][0]["user_id"], ann_id.as_str());
        let missing = uuid::Uuid::new_v4();
        let mut for_nobody = connect_body("x");
        for_nobody["user_id"] = json!(missing);
        let r = s.post(&s.admin, "/api/v1/mailboxes", for_nobody).await;
        assert!(r.body["error"]["message"].as_str().unwrap().contains("user_id"), "{}", r.body);
        r.error(422);
        assert_eq!(s.get(&ann, &format!("/api/v1/mailboxes/{missing}")).await.error(404), "not_found");
    }

    async fn r_v1_refused_sections_name_the_field_and_store_nothing(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let cases: Vec<(Value, &str)> = vec![
            (json!({"name": "w", "imap": {"host": "h", "username": "u", "security": "ssl"}}), "imap: security"),
            (json!({"name": "w", "imap": {"username": "u"}}), "imap: host is missing"),
            (json!({"name": "w", "imap": {"host": "h", "username": "u", "port": "x"}}), "imap: port"),
            (json!({"name": "w", "imap": {"host": "h", "username": "u", "colour": 1}}), "colour"),
            (json!({"name": "w", "imap": {"host": "h", "username": "u", "password_command": "cat /etc/shadow"}}), "give password inline"),
            (json!({"name": "w", "imap": {"host": "h", "username": "u", "folder_regarding": {"X": "accounts/1b4e28ba-2fa1-11d2-883f-0016d3cca427"}}}), "not in tracked_folders"),
            (json!({"name": "w", "dav": {"contacts": "ftp://x"}}), "dav: contacts"),
            (json!({"name": "w", "dav": {"username": "u"}}), "names no collection"),
            (json!({"name": "w", "dav": "http://x"}), "dav: must be an object"),
            (json!({"name": "w"}), "imap section"),
            (json!({"imap": {"host": "h", "username": "u"}}), "name"),
            (json!({"name": "w", "imap": {"host": "h", "username": "u"}, "owner": "me"}), "owner"),
            (json!({"name": "w", "user_id": "me", "imap": {"host": "h", "username": "u"}}), "user_id"),
            (json!(["not an object"]), "JSON object"),
        ];
        for (body, names) in cases {
            let r = s.post(&ann, "/api/v1/mailboxes", body.clone()).await;
            let message = r.body["error"]["message"].as_str().unwrap_or("").to_string();
            assert_eq!(r.error(422), "invalid_input", "{body}");
            assert!(message.contains(names), "{body}: {message}");
        }
        let created = s.post(&ann, "/api/v1/mailboxes", connect_body("work")).await.expect(201);
        let mid = id(&created);
        let r = s.patch(&ann, &format!("/api/v1/mailboxes/{mid}"), json!({"imap": {"security": "ssl"}})).await;
        let message = r.body["error"]["message"].as_str().unwrap_or("").to_string();
        assert_eq!(r.error(422), "invalid_input");
        assert!(message.contains("imap: security"), "{message}");
        let r = s.patch(&ann, &format!("/api/v1/mailboxes/{mid}"), json!({"imap": null, "dav": null})).await;
        assert_eq!(r.error(422), "invalid_input");
        let r = s.patch(&ann, &format!("/api/v1/mailboxes/{mid}"), json!({"user_id": uuid::Uuid::new_v4()})).await;
        assert_eq!(r.error(422), "invalid_input");
        assert_eq!(s.get(&ann, &format!("/api/v1/mailboxes/{mid}")).await.expect(200), created, "refusals change nothing");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes").fetch_one(&s.store.pool).await.unwrap();
        assert_eq!(rows, 1);
        // A second mailbox cannot take a name its user's clients hold.
        assert_eq!(s.post(&ann, "/api/v1/mailboxes", connect_body("work")).await.error(409), "name_taken");
    }

    async fn r_v2_no_password_in_answers_the_database_or_the_export(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let created = s.post(&ann, "/api/v1/mailboxes", connect_body("work")).await.expect(201);
        let mid = id(&created);
        let patched = s
            .patch(&ann, &format!("/api/v1/mailboxes/{mid}"), json!({"imap": {"password": IMAP_PASSWORD}}))
            .await
            .expect(200);
        assert_no_password(&patched);
        assert_no_password(&s.get(&ann, "/api/v1/mailboxes").await.expect(200));
        assert_no_password(&s.get(&ann, "/api/v1/sync/clients").await.expect(200));
        // Every column of every row, on either database.
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT settings, secret FROM mailboxes")
            .fetch_all(&s.store.pool)
            .await
            .unwrap();
        for (settings, secret) in &rows {
            for p in [IMAP_PASSWORD, DAV_PASSWORD] {
                assert!(!settings.contains(p) && !secret.contains(p), "{settings} {secret}");
            }
            assert!(secret.starts_with(&format!("v1:{}:", s.store.secret_key.as_deref().unwrap().id())), "{secret}");
        }
        // R-V2: the export carries the secret encrypted only.
        let mut export = Vec::new();
        crmsync_server::export::export(&s.store, &mut export).await.unwrap();
        let export = String::from_utf8(export).unwrap();
        assert!(export.contains(&rows[0].1), "the export carries the envelope");
        for p in [IMAP_PASSWORD, DAV_PASSWORD] {
            assert!(!export.contains(p), "a password in clear in the export");
        }
        // And the bytes of a SQLite database (with its write-ahead log).
        if let Some(path) = s.db.url.strip_prefix("sqlite://") {
            let mut bytes = Vec::new();
            for file in [path.to_string(), format!("{path}-wal")] {
                if let Ok(b) = std::fs::read(&file) {
                    bytes.extend(b);
                }
            }
            assert!(bytes.windows(b"Deals".len()).any(|w| w == b"Deals"), "the file holds the settings");
            for p in [IMAP_PASSWORD, DAV_PASSWORD] {
                assert!(!bytes.windows(p.len()).any(|w| w == p.as_bytes()), "{p} in clear in the SQLite file");
            }
        }
    }

    async fn r_v3_a_mailbox_is_a_client_of_its_user_secondary_beside_a_primary(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let laptop = s.register(&ann, "laptop").await;
        assert_eq!(laptop["role"], "primary");
        let created = s.post(&ann, "/api/v1/mailboxes", connect_body("work")).await.expect(201);
        let clients = s.get(&ann, "/api/v1/sync/clients").await.expect(200);
        let work = clients["items"].as_array().unwrap().iter().find(|c| c["name"] == "work").unwrap().clone();
        assert_eq!(work["id"], created["client_id"]);
        assert_eq!(work["role"], "secondary");
        assert_eq!(work["kinds"], json!(["contacts", "mail"]));
        // R-C1: the user can make it primary.
        let made = s.post(&ann, &format!("/api/v1/sync/clients/{}/primary", work["id"].as_str().unwrap()), json!({})).await.expect(200);
        assert_eq!(made["role"], "primary");

        // A user with no client: the mailbox's client is primary.
        let (_, bob) = s.add_user("bob@example.com").await;
        let bobs = s.post(&bob, "/api/v1/mailboxes", connect_body("home")).await.expect(201);
        let clients = s.get(&bob, "/api/v1/sync/clients").await.expect(200);
        assert_eq!(clients["items"][0]["id"], bobs["client_id"]);
        assert_eq!(clients["items"][0]["role"], "primary");
        // An agent registering later under the mailbox's name does not share its client.
        assert_eq!(s.post(&ann, "/api/v1/mailboxes", connect_body("laptop")).await.error(409), "name_taken");
    }

    async fn r_v3_disconnecting_a_primary_mailbox_retires_its_client_and_the_laptop_takes_over(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let laptop = s.register(&ann, "laptop").await;
        let created = s.post(&ann, "/api/v1/mailboxes", connect_body("work")).await.expect(201);
        let client = created["client_id"].as_str().unwrap().to_string();
        s.post(&ann, &format!("/api/v1/sync/clients/{client}/primary"), json!({})).await.expect(200);
        // The mailbox's client has synchronization state: a batch delivering
        // Ann's contact, not yet acknowledged.
        s.post(&ann, "/api/v1/contacts", json!({"last_name": "Held"})).await.expect(201);
        let (batch, delivered) = s.prepare_and_fetch(&ann, &client).await;
        assert!(batch.is_some() && !delivered.is_empty());
        assert_eq!(s.delete(&ann, &format!("/api/v1/mailboxes/{}", id(&created))).await.status, 204);
        let clients = s.get(&ann, "/api/v1/sync/clients").await.expect(200);
        let left: Vec<(Value, Value)> = clients["items"].as_array().unwrap().iter().map(|c| (c["id"].clone(), c["role"].clone())).collect();
        assert_eq!(left, [(laptop["id"].clone(), json!("primary"))], "the mailbox's client is gone, the laptop is primary again");
        for table in ["sync_entries", "sync_pending", "sync_ops", "sync_batches"] {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE client_id = $1"))
                .bind(&client).fetch_one(&s.store.pool).await.unwrap();
            assert_eq!(n, 0, "{table} of the retired client");
        }
    }

    async fn r_v5_new_credentials_make_a_mailbox_needing_them_active(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let created = s.post(&ann, "/api/v1/mailboxes", connect_body("work")).await.expect(201);
        let mid = id(&created);
        // What a worker records when the mail server refuses the login.
        sqlx::query("UPDATE mailboxes SET state = 'needs_reconnect', failures = 3, last_error = 'login refused', next_run_at = 4102444800 WHERE id = $1")
            .bind(&mid)
            .execute(&s.store.pool)
            .await
            .unwrap();
        let waiting = s.get(&ann, &format!("/api/v1/mailboxes/{mid}")).await.expect(200);
        assert_eq!(waiting["state"], "needs_reconnect");
        assert_eq!(waiting["last_error"], "login refused");
        let renamed = s.patch(&ann, &format!("/api/v1/mailboxes/{mid}"), json!({"name": "office"})).await.expect(200);
        assert_eq!(renamed["state"], "needs_reconnect", "a new name is not new credentials");
        let fixed = s
            .patch(&ann, &format!("/api/v1/mailboxes/{mid}"), json!({"imap": {"password": "the right one"}}))
            .await
            .expect(200);
        assert_eq!(fixed["state"], "active");
        assert_eq!(fixed["failures"], 0);
        assert_eq!(fixed["last_error"], Value::Null);
        assert!(fixed["next_run_at"].as_str().unwrap() < "2100", "due at once: {fixed}");
        let key = s.store.secret_key.as_deref().unwrap();
        let passwords = Passwords::open(key, mid.parse().unwrap(), &stored_secret(&s, &mid).await).unwrap();
        assert_eq!(passwords.imap.as_deref(), Some("the right one"));
        assert_eq!(passwords.dav.as_deref(), Some(DAV_PASSWORD));
    }
}

async fn stored_secret(s: &TestServer, mailbox: &str) -> String {
    sqlx::query_scalar("SELECT secret FROM mailboxes WHERE id = $1")
        .bind(mailbox)
        .fetch_one(&s.store.pool)
        .await
        .unwrap()
}

async fn server_without_a_key_refuses_to_store_secrets(backend: Backend) {
    let s = common::start_without_key(backend).await;
    let (_, ann) = s.add_user("ann@example.com").await;
    let r = s
        .post(&ann, "/api/v1/mailboxes", connect_body("work"))
        .await;
    let message = r.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(r.error(409), "no_secret_key");
    assert!(
        message.contains("--secret-key-file") && message.contains("crmsync admin gen-key"),
        "{message}"
    );
    // Nothing was stored, not even the client; everything else works.
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes")
        .fetch_one(&s.store.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(
        s.get(&ann, "/api/v1/sync/clients").await.expect(200)["items"],
        json!([])
    );
    assert_eq!(
        s.get(&ann, "/api/v1/mailboxes").await.expect(200)["items"],
        json!([])
    );
    s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee"}))
        .await
        .expect(201);
    s.register(&ann, "laptop").await;
}

#[tokio::test]
async fn r_v2_a_server_without_a_key_refuses_to_store_secrets_sqlite() {
    server_without_a_key_refuses_to_store_secrets(Backend::Sqlite).await
}

#[tokio::test]
async fn r_v2_a_server_without_a_key_refuses_to_store_secrets_postgres() {
    server_without_a_key_refuses_to_store_secrets(Backend::Postgres).await
}

async fn rotate_key_moves_every_secret_to_the_new_key(backend: Backend) {
    let s = common::start(backend).await;
    let (_, ann) = s.add_user("ann@example.com").await;
    let (_, bob) = s.add_user("bob@example.com").await;
    let mut ids = Vec::new();
    for token in [&ann, &bob] {
        let m = s
            .post(token, "/api/v1/mailboxes", connect_body("work"))
            .await
            .expect(201);
        ids.push(id(&m));
    }
    let old = s.store.secret_key.as_deref().unwrap();
    let new = SecretKey::generate();
    assert_eq!(mailboxes::rotate_key(&s.store, old, &new).await.unwrap(), 2);
    for mid in &ids {
        let envelope = stored_secret(&s, mid).await;
        let uuid = mid.parse().unwrap();
        let passwords = Passwords::open(&new, uuid, &envelope).unwrap();
        assert_eq!(passwords.imap.as_deref(), Some(IMAP_PASSWORD));
        assert_eq!(
            Passwords::open(old, uuid, &envelope),
            Err(SecretError::WrongKey {
                needed: new.id().to_string(),
                have: old.id().to_string()
            }),
            "the old key no longer opens it"
        );
    }
    // The server still runs with the old key: what needs a stored password
    // is refused naming the key it needs; passwords given anew are taken.
    let path = format!("/api/v1/mailboxes/{}", ids[0]);
    let r = s.patch(&ann, &path, json!({"imap": {"port": 1143}})).await;
    let message = r.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(r.error(409), "secret_unreadable");
    assert!(message.contains(new.id()), "{message}");
    s.patch(&ann, &path, json!({"name": "renamed"}))
        .await
        .expect(200);
    s.patch(
        &ann,
        &path,
        json!({"imap": {"password": "again"}, "dav": {"password": "again"}}),
    )
    .await
    .expect(200);
    let reentered = Passwords::open(
        old,
        ids[0].parse().unwrap(),
        &stored_secret(&s, &ids[0]).await,
    );
    assert_eq!(reentered.unwrap().imap.as_deref(), Some("again"));
    mailboxes::rotate_key(&s.store, old, &new).await.unwrap();
    // Run again (e.g. after an interruption): nothing left to move.
    assert_eq!(mailboxes::rotate_key(&s.store, old, &new).await.unwrap(), 0);
    // With a key that opens nothing: refused, nothing changed.
    let stranger = SecretKey::generate();
    let before = stored_secret(&s, &ids[0]).await;
    let e = mailboxes::rotate_key(&s.store, &stranger, &SecretKey::generate())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(new.id()) && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(stored_secret(&s, &ids[0]).await, before);
}

#[tokio::test]
async fn r_v2_rotate_key_moves_every_secret_to_the_new_key_sqlite() {
    rotate_key_moves_every_secret_to_the_new_key(Backend::Sqlite).await
}

#[tokio::test]
async fn r_v2_rotate_key_moves_every_secret_to_the_new_key_postgres() {
    rotate_key_moves_every_secret_to_the_new_key(Backend::Postgres).await
}
