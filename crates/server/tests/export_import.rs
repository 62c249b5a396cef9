//! R-O2: an organization moves from SQLite to PostgreSQL and back with
//! everything it runs on: records, tombstones, tokens, settings, the sync
//! clients with their entries, pending deliveries, batches and push
//! answers, the conflict log, and tracked messages with their raw bodies.

mod common;

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use sqlx::{Column, Row};

use common::{Backend, TestServer};
use crmsync_server::{export, Store};

async fn dump(store: &Store) -> String {
    let mut out = Vec::new();
    export::export(store, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// The tables of the database's schema, but the migration tool's own.
async fn table_names(store: &Store) -> Vec<String> {
    let sql = match store.kind {
        crmsync_server::db::DbKind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        crmsync_server::db::DbKind::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        }
    };
    let names: Vec<String> = sqlx::query_scalar(sql)
        .fetch_all(&store.pool)
        .await
        .unwrap();
    names
        .into_iter()
        .filter(|n| n != "_sqlx_migrations")
        // SQLite's full-text index of `search_text` (FTS5 keeps it in
        // tables): an index rebuilt from the records, not data.
        .filter(|n| !n.starts_with(crmsync_server::list_indexes::SQLITE_SEARCH_TABLE))
        .collect()
}

/// Every table with its rows, each row as `column=value` pairs in column
/// order by name, rows sorted: equal on two databases when they hold the
/// same data, whatever the storage order.
async fn tables(store: &Store) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for table in table_names(store).await {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&store.pool)
            .await
            .unwrap();
        let mut shown: Vec<String> = rows
            .iter()
            .map(|row| {
                let mut cells: Vec<String> = (0..row.len())
                    .map(|i| {
                        let value = match row.try_get::<Option<i64>, _>(i) {
                            Ok(n) => format!("{n:?}"),
                            Err(_) => format!("{:?}", row.try_get::<Option<String>, _>(i).unwrap()),
                        };
                        format!("{}={value}", row.columns()[i].name())
                    })
                    .collect();
                cells.sort();
                cells.join(" ")
            })
            .collect();
        shown.sort();
        out.insert(table, shown);
    }
    out
}

/// Fails naming every table whose rows differ, with what differs.
fn assert_same_tables(
    got: &BTreeMap<String, Vec<String>>,
    want: &BTreeMap<String, Vec<String>>,
    what: &str,
) {
    let names: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let differ: Vec<String> = names
        .into_iter()
        .filter(|t| got.get(*t) != want.get(*t))
        .map(|t| {
            let rows = |m: &BTreeMap<String, Vec<String>>| m.get(t).map_or(0, Vec::len);
            format!("{t} ({} rows, expected {})", rows(got), rows(want))
        })
        .collect();
    assert!(differ.is_empty(), "{what}: tables differ: {differ:?}");
}

fn message(mid: &str) -> Vec<u8> {
    format!("Message-ID: <{mid}>\r\nFrom: Lee <lee@example.org>\r\nTo: ann@example.com\r\nSubject: Offer\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\n\r\nHello there\r\n").into_bytes()
}

const ANN_PASSWORD: &str = "ann's web password";
const MAILBOX_PASSWORD: &str = "ann's IMAP password";

/// Tables an export leaves out on purpose (docs/export.md): after a move,
/// browsers sign in again.
const NOT_MOVED: &[&str] = &["web_sessions", "signin_links", "signin_failures"];

/// The tables an export carries (or rebuilds).
fn exported(mut tables: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    for t in NOT_MOVED {
        assert!(tables.remove(*t).is_some(), "{t} is a table");
    }
    tables
}

/// What the tests check after a move.
struct Organization {
    ann: String,
    client: String,
    contact: Value,
    email: String,
    raw: Vec<u8>,
}

/// An organization with something in every table: records and a
/// tombstone, tokens, settings, a sync client that synchronized (entries, a
/// batch), has a delivery not yet acknowledged (pending), pushed (answers),
/// merged an overlapping edit (conflict log) and tracked an email.
async fn populate(s: &TestServer) -> Organization {
    let (ann_id, ann) = s.add_user("ann@example.com").await;
    let acc = s
        .post(&ann, "/api/v1/accounts", json!({"name": "Acme"}))
        .await
        .expect(201);
    let contact = s
        .post(
            &ann,
            "/api/v1/contacts",
            json!({"last_name": "Lee", "first_name": "A", "email": "lee@example.org", "account_id": acc["id"], "notes": "multi\nline ✓"}),
        )
        .await
        .expect(201);
    let gone = s
        .post(&ann, "/api/v1/tasks", json!({"subject": "gone"}))
        .await
        .expect(201);
    s.delete(&ann, &format!("/api/v1/tasks/{}", id(&gone)))
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

    let client = id(&s.register(&ann, "laptop").await);
    // A second client whose mailbox holds some kinds only (SPEC §13): the
    // kinds move with it.
    let phone = s
        .post(
            &ann,
            "/api/v1/sync/clients",
            json!({"name": "phone", "kinds": ["contacts", "mail"]}),
        )
        .await;
    assert!(phone.status == 201 || phone.status == 200, "{}", phone.body);
    let delivered = s.sync_once(&ann, &client).await;
    let baseline = delivered
        .iter()
        .find(|d| d.id == id(&contact))
        .and_then(|d| d.record.as_ref())
        .expect("the contact is delivered")["fields"]
        .clone();
    let raw = message("offer-1@example.org");
    let tracked = s
        .push(
            &ann,
            &client,
            json!([{"op_id": "t1", "kind": "track", "set": "emails", "raw": STANDARD.encode(&raw)}]),
        )
        .await;
    assert_eq!(tracked[0]["status"], "ok", "{}", tracked[0]);
    // Both sides edit the first name: the CRM's later edit wins, the
    // mailbox's value is logged (R-F5, R-F6).
    s.patch(
        &ann,
        &format!("/api/v1/contacts/{}", id(&contact)),
        json!({"first_name": "A2"}),
    )
    .await
    .expect(200);
    let update = json!({"op_id": "u1", "kind": "update", "set": "contacts", "id": id(&contact),
        "base_version": contact["version"], "baseline": baseline,
        "fields": {"last_name": "Lee", "first_name": "A1"}, "mailbox_modified_at": "2000-01-01T10:00:00Z"});
    let merged = s.push(&ann, &client, json!([update])).await;
    assert_eq!(merged[0]["status"], "ok", "{}", merged[0]);
    // Delivered but not acknowledged when the server moves.
    s.post(&ann, "/api/v1/contacts", json!({"last_name": "Pending"}))
        .await
        .expect(201);
    let (batch, _) = s.prepare_and_fetch(&ann, &client).await;
    assert!(batch.is_some());
    // An item the client cannot read (R-W6), shown on the Sync page.
    s.call(
        &ann,
        reqwest::Method::PUT,
        &format!("/api/v1/sync/clients/{client}/problems"),
        Some(json!({"items": [{"item": "contacts/x.vcf", "problem": "cannot be read; fix or remove the item"}]})),
    )
    .await
    .expect(200);
    // The web sign-in: a password (moved), and a session, a sign-in link
    // and a failed sign-in (left behind on purpose).
    crmsync_server::passwords::set_password(&s.store, "ann@example.com", ANN_PASSWORD)
        .await
        .unwrap();
    let ann_uuid = uuid::Uuid::parse_str(&ann_id).unwrap();
    crmsync_server::web::session::create(&s.store, ann_uuid)
        .await
        .unwrap();
    crmsync_server::web::session::create_link(&s.store, ann_uuid)
        .await
        .unwrap();
    crmsync_server::passwords::record_failure(&s.store, "ann@example.com")
        .await
        .unwrap();
    // A mailbox connected to the server (SPEC §15), with every column set
    // as a worker leaves it.
    let mailbox = s
        .post(
            &ann,
            "/api/v1/mailboxes",
            json!({"name": "work", "imap": {"host": "127.0.0.1", "username": "ann", "password": MAILBOX_PASSWORD}}),
        )
        .await
        .expect(201);
    sqlx::query("UPDATE mailboxes SET lease_token = 7, lease_holder = 'host-a:1', lease_expires_at = 1800000000, last_success_at = '2026-11-25T09:00:00Z', last_error = 'none', last_counts = '{\"mail\": 2}' WHERE id = $1")
        .bind(id(&mailbox))
        .execute(&s.store.pool)
        .await
        .unwrap();
    let contact = s
        .get(&ann, &format!("/api/v1/contacts/{}", id(&contact)))
        .await
        .expect(200);
    Organization {
        ann,
        client,
        contact,
        email: id(&tracked[0]),
        raw,
    }
}

/// The moved organization serves as the old one did; `move_no` tells
/// the moves apart.
async fn check_serves(s: &TestServer, org: &Organization, before: i64, move_no: usize) {
    let ann = &org.ann;
    assert_eq!(
        s.get(ann, &format!("/api/v1/contacts/{}", id(&org.contact)))
            .await
            .expect(200),
        org.contact
    );
    let changes = s
        .get(
            ann,
            &format!(
                "/api/v1/changes?since={}",
                org.contact["version"].as_i64().unwrap() - 1
            ),
        )
        .await
        .expect(200);
    assert!(
        changes["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["deleted"] == true)
            || s.get(ann, "/api/v1/changes?since=0").await.expect(200)["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["deleted"] == true),
        "tombstones survive the move"
    );
    let raw = s
        .http
        .get(format!("{}/api/v1/emails/{}/raw", s.base, org.email))
        .bearer_auth(ann)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200, "the tracked message's raw body moved");
    assert_eq!(raw.bytes().await.unwrap().to_vec(), org.raw);
    let found = s
        .get(
            ann,
            "/api/v1/sync/emails/lookup?message_ids=offer-1@example.org",
        )
        .await
        .expect(200);
    assert_eq!(
        found["email"]["id"],
        org.email.as_str(),
        "found by Message-ID: {found}"
    );
    let token = s
        .get(ann, &format!("/api/v1/emails/{}", org.email))
        .await
        .expect(200)["tracking_token"]
        .as_str()
        .unwrap()
        .to_string();
    let found = s
        .get(
            ann,
            &format!("/api/v1/sync/emails/lookup?subject=Re:%20Offer%20%5B{token}%5D"),
        )
        .await
        .expect(200);
    assert_eq!(
        found["email"]["id"],
        org.email.as_str(),
        "found by tracking token: {found}"
    );
    // The same message again is linked to its email, not tracked twice;
    // a new one gets a tracking token of its own.
    let again = s
        .push(ann, &org.client, json!([{"op_id": format!("again-{move_no}"), "kind": "track", "set": "emails", "raw": STANDARD.encode(&org.raw)}]))
        .await;
    assert_eq!(
        (again[0]["id"].as_str(), again[0]["linked"].as_bool()),
        (Some(org.email.as_str()), Some(true)),
        "{}",
        again[0]
    );
    let new = s
        .push(
            ann,
            &org.client,
            json!([{"op_id": format!("new-{move_no}"), "kind": "track", "set": "emails",
            "raw": STANDARD.encode(message(&format!("after-move-{move_no}@example.org")))}]),
        )
        .await;
    assert_eq!(new[0]["status"], "ok", "{}", new[0]);
    assert_ne!(
        new[0]["tracking_token"].as_str(),
        Some(token.as_str()),
        "tracking tokens are not handed out twice"
    );
    // The web password moved with its user.
    let signed = crmsync_server::passwords::sign_in(&s.store, "ann@example.com", ANN_PASSWORD)
        .await
        .unwrap();
    assert!(signed.is_ok(), "{signed:?}");
    // New versions continue above the old ones.
    let next = s
        .post(ann, "/api/v1/contacts", json!({"last_name": "New"}))
        .await
        .expect(201);
    assert!(next["version"].as_i64().unwrap() > before);
}

#[tokio::test]
async fn r_o2_every_table_moves_sqlite_to_postgres_and_back() {
    let s = common::start(Backend::Sqlite).await;
    let org = populate(&s).await;
    let before = s.version().await;
    let source = tables(&s.store).await;
    let empty: Vec<&String> = source
        .iter()
        .filter(|(_, rows)| rows.is_empty())
        .map(|(t, _)| t)
        .collect();
    assert!(
        empty.is_empty(),
        "populate() fills every table so that the move is shown to carry it; fill these too: {empty:?}"
    );
    let original = dump(&s.store).await;

    // SQLite -> PostgreSQL
    let pg = common::fresh_db(Backend::Postgres).await;
    let pg_store = Store::connect(&pg.url).await.unwrap();
    export::import(&pg_store, original.as_bytes())
        .await
        .unwrap();
    let on_pg_tables = tables(&pg_store).await;
    for t in NOT_MOVED {
        assert_eq!(on_pg_tables[*t], Vec::<String>::new(), "{t} is not moved");
    }
    assert_same_tables(
        &exported(on_pg_tables),
        &exported(source),
        "PostgreSQL holds every row SQLite held",
    );
    assert_eq!(
        dump(&pg_store).await,
        original,
        "and exports the same lines"
    );
    // R-V2: a connected mailbox's password travels encrypted only, and the
    // new server opens it with the same key file.
    assert!(!original.contains(MAILBOX_PASSWORD));
    let (mailbox, secret): (String, String) = sqlx::query_as("SELECT id, secret FROM mailboxes")
        .fetch_one(&pg_store.pool)
        .await
        .unwrap();
    let passwords = crmsync_server::mailboxes::Passwords::open(
        s.store.secret_key.as_deref().unwrap(),
        mailbox.parse().unwrap(),
        &secret,
    )
    .unwrap();
    assert_eq!(passwords.imap.as_deref(), Some(MAILBOX_PASSWORD));
    let on_pg = common::serve_store(
        pg_store.clone(),
        s.admin.clone(),
        pg,
        crmsync_server::DEFAULT_MAX_BODY,
    )
    .await;
    check_serves(&on_pg, &org, before, 1).await;

    // ... and back to a new SQLite file.
    let moved_tables = tables(&pg_store).await;
    let moved = dump(&pg_store).await;
    let back = common::fresh_db(Backend::Sqlite).await;
    let back_store = Store::connect(&back.url).await.unwrap();
    export::import(&back_store, moved.as_bytes()).await.unwrap();
    assert_same_tables(
        &exported(tables(&back_store).await),
        &exported(moved_tables),
        "SQLite holds every row PostgreSQL held",
    );
    assert_eq!(dump(&back_store).await, moved);
    let on_sqlite = common::serve_store(
        back_store.clone(),
        s.admin.clone(),
        back,
        crmsync_server::DEFAULT_MAX_BODY,
    )
    .await;
    check_serves(&on_sqlite, &org, before, 2).await;

    // Importing twice, or into a database with an organization, is refused.
    let err = export::import(&back_store, moved.as_bytes())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_o2_an_organization_larger_than_a_page_moves_whole() {
    // More records, entries and batch items than one page of the export,
    // and a message near the largest accepted size (messages are read a row
    // at a time).
    let s = common::start(Backend::Sqlite).await;
    let (_, ann) = s.add_user("ann@example.com").await;
    for chunk in (0..1_100).collect::<Vec<_>>().chunks(50) {
        let posts = chunk.iter().map(|i| {
            s.post(
                &ann,
                "/api/v1/contacts",
                json!({"last_name": format!("C{i}")}),
            )
        });
        for reply in futures_util::future::join_all(posts).await {
            reply.expect(201);
        }
    }
    let client = id(&s.register(&ann, "laptop").await);
    // One batch of 1,100 deliveries, read a page at a time and acknowledged.
    let prep = s
        .post(&ann, "/api/v1/sync/prepare", json!({"client_id": client}))
        .await
        .expect(200);
    assert_eq!(prep["total"], 1_100);
    let batch = prep["batch"].as_str().unwrap();
    let (mut acked, mut cursor) = (Vec::new(), String::new());
    loop {
        let page = s
            .get(
                &ann,
                &format!("/api/v1/sync/data?client_id={client}&batch={batch}{cursor}"),
            )
            .await
            .expect(200);
        for item in page["items"].as_array().unwrap() {
            acked.push(json!({"id": item["id"], "version": item["version"]}));
        }
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    s.post(
        &ann,
        "/api/v1/sync/ack",
        json!({"client_id": client, "batch": batch, "items": acked}),
    )
    .await
    .expect(200);
    let filler = "x".repeat(20 * 1024 * 1024);
    for n in 0..2 {
        let mut raw = message(&format!("big-{n}@example.org"));
        if n == 0 {
            raw.extend_from_slice(filler.as_bytes());
        }
        let r = s
            .push(&ann, &client, json!([{"op_id": format!("big-{n}"), "kind": "track", "set": "emails", "raw": STANDARD.encode(&raw)}]))
            .await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
    }
    let source = tables(&s.store).await;
    let pg = common::fresh_db(Backend::Postgres).await;
    let pg_store = Store::connect(&pg.url).await.unwrap();
    export::import(&pg_store, dump(&s.store).await.as_bytes())
        .await
        .unwrap();
    let on_pg_tables = tables(&pg_store).await;
    for t in NOT_MOVED {
        assert_eq!(on_pg_tables[*t], Vec::<String>::new(), "{t} is not moved");
    }
    assert_same_tables(
        &exported(on_pg_tables),
        &exported(source),
        "PostgreSQL holds every row SQLite held",
    );
}

/// Imports `text` into a new SQLite database; it must be refused with
/// nothing imported. Returns the error's text.
async fn refused(text: &str) -> String {
    let target = common::fresh_db(Backend::Sqlite).await;
    let store = Store::connect(&target.url).await.unwrap();
    let err = export::import(&store, text.as_bytes()).await.unwrap_err();
    assert!(
        store.organization().await.unwrap().is_none(),
        "all or nothing: {err:#}"
    );
    assert_eq!(store.current_version().await.unwrap(), 0);
    format!("{err:#}")
}

#[tokio::test]
async fn r_o2_a_bad_line_imports_nothing() {
    let s = common::start(Backend::Sqlite).await;
    s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee"}))
        .await
        .expect(201);
    let text = dump(&s.store).await;
    let (body, end) = text.trim_end().rsplit_once('\n').unwrap();
    let bad = format!("{body}\n{{\"type\": \"record\", \"entity_set\": \"contacts\"}}\n{end}\n");
    let err = refused(&bad).await;
    assert!(
        err.contains(&format!("line {}", body.lines().count() + 1)),
        "{err}"
    );
    let unknown = text.replacen(
        "\"type\":\"token\",",
        "\"type\":\"token\",\"scope\":\"all\",",
        1,
    );
    assert_ne!(unknown, text);
    let err = refused(&unknown).await;
    assert!(err.contains("'scope' is not a column of tokens"), "{err}");
}

#[tokio::test]
async fn r_o2_an_export_cut_short_imports_nothing() {
    let s = common::start(Backend::Sqlite).await;
    s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee"}))
        .await
        .expect(201);
    let text = dump(&s.store).await;
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[..lines.len() - 1].join("\n");
    let err = refused(&cut).await;
    assert!(err.contains("cut short"), "{err}");
    let missing_one = format!(
        "{}\n{}\n",
        lines[..lines.len() - 2].join("\n"),
        lines[lines.len() - 1]
    );
    let err = refused(&missing_one).await;
    assert!(err.contains("changed after it was written"), "{err}");
}

#[tokio::test]
async fn r_o2_an_export_of_the_earlier_format_is_refused_with_the_fix() {
    // The first format had no header and left out sync clients and raw
    // messages: importing it would make every agent start over.
    let earlier = concat!(
        "{\"type\":\"organization\",\"id\":\"7d0c3a4e-5d1f-4a53-9a57-2f1d3c0b8e11\",\"name\":\"Org\"}\n",
        "{\"type\":\"version_counter\",\"value\":1}\n",
    );
    let err = refused(earlier).await;
    assert!(
        err.contains("earlier crmsync") && err.contains("crmsync admin export"),
        "{err}"
    );
    let newer = "{\"type\":\"crmsync_export\",\"format\":99}\n{\"type\":\"end\",\"lines\":1}\n";
    let err = refused(newer).await;
    assert!(err.contains("newer crmsync"), "{err}");
    let err = refused("hello\n").await;
    assert!(err.contains("line 1"), "{err}");
}

#[tokio::test]
async fn r_o2_docs_export_md_names_every_table() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/export.md"))
        .unwrap();
    let db = common::fresh_db(Backend::Sqlite).await;
    let store = Store::connect(&db.url).await.unwrap();
    let mut names = table_names(&store).await;
    names.push("_sqlx_migrations".into());
    let missing: Vec<&String> = names
        .iter()
        .filter(|t| !doc.contains(&format!("| `{t}`")) && !doc.contains(&format!(", `{t}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/export.md says for each table whether an export holds it and why; add: {missing:?}"
    );
}
