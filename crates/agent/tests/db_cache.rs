//! R-V4: the engine's cache in a server's PostgreSQL database. The same
//! engine as the agent's, on a real CRM server (in-process) and a real
//! local mailbox, its cache in a fresh PostgreSQL database per test
//! (CRMSYNC_TEST_PG_URL); and the agent's cache file as it always was.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::{AnyPool, Connection};
use tokio::sync::oneshot;

use crmsync_agent::cache::{
    Cache, CachedItem, CachedMessage, Fence, JournalEntry, LeaseLost, LEASE_KEY_COLUMN,
    LEASE_TABLE, LEASE_TOKEN_COLUMN,
};
use crmsync_agent::{Agent, Config, SyncOptions};
use crmsync_core::mapping::{parse_item, render_item, RenderOptions};

include!("common/harness.rs");

/// A fresh PostgreSQL database with the caches' tables; its URL and a
/// pool on it.
async fn fresh_database() -> (String, AnyPool) {
    let admin = std::env::var("CRMSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {admin} ({e}); run ./scripts/test, which starts one, or set CRMSYNC_TEST_PG_URL")
    });
    let name = format!("crmsync_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let pool = connect(&url).await;
    Cache::prepare_database(&pool).await.unwrap();
    (url, pool)
}

/// A new pool on `url`, as another process would open.
async fn connect(url: &str) -> AnyPool {
    install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap()
}

/// Rows of `table` of the mailbox `key`.
async fn rows(pool: &AnyPool, table: &str, key: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM mailbox_cache_{table} WHERE mailbox_id = $1"
    ))
    .bind(key.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Rows of the mailbox `key` in every table of the caches.
async fn all_rows(pool: &AnyPool, key: &str) -> i64 {
    let mut n = 0;
    for table in [
        "meta",
        "collections",
        "items",
        "journal",
        "item_problems",
        "write_intents",
        "messages",
    ] {
        n += rows(pool, table, key).await;
    }
    n
}

/// The lease table the server's workers keep, by the names the cache's
/// fence uses, with mailbox `mb-ann` at `token`.
async fn lease_table(pool: &AnyPool, token: i64) {
    sqlx::query(&format!(
        "CREATE TABLE {LEASE_TABLE} ({LEASE_KEY_COLUMN} TEXT PRIMARY KEY, {LEASE_TOKEN_COLUMN} BIGINT NOT NULL)"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {LEASE_TABLE} ({LEASE_KEY_COLUMN}, {LEASE_TOKEN_COLUMN}) VALUES ('mb-ann', $1)"
    ))
    .bind(token)
    .execute(pool)
    .await
    .unwrap();
}

/// Another worker claims `mb-ann`: its lease token becomes `token`.
async fn claim(pool: &AnyPool, token: i64) {
    sqlx::query(&format!(
        "UPDATE {LEASE_TABLE} SET {LEASE_TOKEN_COLUMN} = $1 WHERE {LEASE_KEY_COLUMN} = 'mb-ann'"
    ))
    .bind(token)
    .execute(pool)
    .await
    .unwrap();
}

fn item(collection: &str, href: &str, etag: &str) -> CachedItem {
    CachedItem {
        collection: collection.into(),
        href: href.into(),
        etag: etag.into(),
        uid: format!("uid-{href}"),
        set: "contacts".into(),
        crm_id: None,
        link: 0,
        version: 0,
        baseline: Default::default(),
    }
}

#[tokio::test]
async fn r_v4_engine_on_a_database_cache_syncs_and_a_new_engine_continues() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let beta = w.contact(&ann, "Beta").await;
    let (url, pool) = fresh_database().await;

    let cache = Cache::in_database(pool.clone(), "mb-ann", None).unwrap();
    let first = Agent::with_cache(w.config(&ann, "ann", "cache"), cache)
        .await
        .unwrap();
    let r = sync(&first).await;
    assert_eq!(r.written_to_mailbox, 2);
    assert_eq!(vcards(&w.contacts_dir("ann")).len(), 2);
    assert_eq!(rows(&pool, "items", "mb-ann").await, 2);
    assert!(
        rows(&pool, "collections", "mb-ann").await >= 1,
        "sync tokens"
    );
    assert!(
        !w.dir.path().join("cache.db").exists(),
        "the configured cache file is not used"
    );
    let before = files(&w.contacts_dir("ann"));
    drop(first);
    pool.close().await;

    // Another process: a new pool and a new engine on the same key.
    let pool = connect(&url).await;
    let cache = Cache::in_database(pool.clone(), "mb-ann", None).unwrap();
    let second = Agent::with_cache(w.config(&ann, "ann", "cache"), cache)
        .await
        .unwrap();
    let status = second.status().await.unwrap();
    assert_eq!(status.client_id.as_deref(), Some(r.client_id.as_str()));
    assert_eq!(
        (status.not_tracked, status.to_be_tracked, status.tracked),
        (0, 0, 2),
        "the second engine sees the first one's items"
    );
    let again = sync(&second).await;
    assert_eq!(again.client_id, r.client_id);
    assert_eq!(again.written_to_mailbox, 0, "{again:?}");
    assert_eq!(again.acknowledged, 0, "{again:?}");
    assert!(again.pushed.values().all(|n| *n == 0), "{again:?}");
    assert_eq!(
        files(&w.contacts_dir("ann")),
        before,
        "nothing delivered twice"
    );

    // It goes on from the first one's baselines: a mailbox edit is pushed
    // as that one change.
    let cards = vcards(&w.contacts_dir("ann"));
    let (path, _) = find(&cards, &alpha).unwrap();
    edit(path, "job_title", "Buyer");
    let pushed = sync(&second).await;
    assert_eq!(pushed.pushed.values().sum::<usize>(), 1, "{pushed:?}");
    let alpha_now = w
        .my_contacts(&ann)
        .await
        .into_iter()
        .find(|c| c["id"] == alpha.as_str())
        .unwrap();
    assert_eq!(alpha_now["job_title"], "Buyer");
    assert_eq!(alpha_now["last_name"], "Alpha");
    // And a CRM change is delivered once.
    w.patch_contact(&ann, &beta, json!({"job_title": "Seller"}))
        .await;
    assert_eq!(sync(&second).await.written_to_mailbox, 1);
    let cards = vcards(&w.contacts_dir("ann"));
    assert_eq!(cards.len(), 2);
    assert_eq!(find(&cards, &beta).unwrap().1.fields["job_title"], "Seller");
    assert_eq!(sync(&second).await.written_to_mailbox, 0);
}

#[tokio::test]
async fn r_v4_two_mailbox_keys_in_one_database_do_not_see_each_others_rows() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let (_, bob) = w.user("bob@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let bravo = w.contact(&bob, "Bravo").await;
    let (_, pool) = fresh_database().await;

    let a = Cache::in_database(pool.clone(), "mb-ann", None).unwrap();
    let b = Cache::in_database(pool.clone(), "mb-bob", None).unwrap();
    let ann_agent = Agent::with_cache(w.config(&ann, "ann", "cache"), a.clone())
        .await
        .unwrap();
    let bob_agent = Agent::with_cache(w.config(&bob, "bob", "cache"), b.clone())
        .await
        .unwrap();
    let ra = sync(&ann_agent).await;
    let rb = sync(&bob_agent).await;
    assert_ne!(ra.client_id, rb.client_id);
    let ids = |items: Vec<CachedItem>| -> Vec<String> {
        items.into_iter().filter_map(|i| i.crm_id).collect()
    };
    assert_eq!(ids(a.items().await.unwrap()), vec![alpha.clone()]);
    assert_eq!(ids(b.items().await.unwrap()), vec![bravo.clone()]);
    assert!(a.item_by_crm_id(&bravo).await.unwrap().is_none());
    assert_eq!(
        a.meta("client_id").await.unwrap().as_deref(),
        Some(ra.client_id.as_str())
    );
    assert_eq!(
        b.meta("client_id").await.unwrap().as_deref(),
        Some(rb.client_id.as_str())
    );
    assert_eq!(a.link_counts().await.unwrap(), [0, 0, 1]);

    // The same collection and href under both keys: two rows.
    a.put_item(&item("contacts", "same.vcf", "a-1"))
        .await
        .unwrap();
    b.put_item(&item("contacts", "same.vcf", "b-1"))
        .await
        .unwrap();
    b.remove_item("contacts", "same.vcf").await.unwrap();
    let kept = a.item("contacts", "same.vcf").await.unwrap().unwrap();
    assert_eq!(kept.etag, "a-1");
    assert!(b.item("contacts", "same.vcf").await.unwrap().is_none());

    let entry = JournalEntry {
        op_id: "op-1".into(),
        collection: "contacts".into(),
        href: "same.vcf".into(),
        etag: "a-1".into(),
        op: json!({"op_id": "op-1"}),
    };
    let message = CachedMessage {
        folder: "mail/INBOX".into(),
        href: "1.eml".into(),
        etag: "e".into(),
        message_id: Some("m@x".into()),
        ..Default::default()
    };
    a.journal_add_with_messages(std::slice::from_ref(&entry), std::slice::from_ref(&message))
        .await
        .unwrap();
    // The same op id under the other key is another row, not a conflict.
    b.journal_add(&entry).await.unwrap();
    b.journal_done("op-1").await.unwrap();
    assert_eq!(a.journal_pending().await.unwrap(), vec![entry]);
    assert!(b.journal_pending().await.unwrap().is_empty());
    assert_eq!(
        a.messages_by_message_id("m@x").await.unwrap(),
        vec![message]
    );
    assert!(b.messages_by_message_id("m@x").await.unwrap().is_empty());
    assert_eq!(rows(&pool, "messages", "mb-bob").await, 0);
}

#[tokio::test]
async fn r_v4_a_write_under_a_stale_lease_fails_with_lease_lost_and_writes_nothing() {
    let (_, pool) = fresh_database().await;
    lease_table(&pool, 1).await;
    let fenced = |token| {
        Cache::in_database(
            pool.clone(),
            "mb-ann",
            Some(Fence {
                key: "mb-ann".into(),
                token,
            }),
        )
        .unwrap()
    };
    let holder = fenced(1);
    holder
        .put_item(&item("contacts", "a.vcf", "1"))
        .await
        .unwrap();
    holder.set_meta("client_id", "c-1").await.unwrap();
    let written = all_rows(&pool, "mb-ann").await;
    assert_eq!(written, 2);

    // Another worker claims the mailbox: the token moves on.
    claim(&pool, 2).await;
    let lost_at = |token: i64, e: anyhow::Error| {
        let lost = e
            .downcast_ref::<LeaseLost>()
            .unwrap_or_else(|| panic!("{e:#}"));
        assert_eq!((lost.key.as_str(), lost.token), ("mb-ann", token));
    };
    let lost = |e| lost_at(1, e);
    lost(
        holder
            .put_item(&item("contacts", "b.vcf", "1"))
            .await
            .unwrap_err(),
    );
    lost(holder.remove_item("contacts", "a.vcf").await.unwrap_err());
    lost(holder.set_meta("client_id", "c-2").await.unwrap_err());
    lost(holder.set_sync_state("contacts", "s-2").await.unwrap_err());
    let entry = JournalEntry {
        op_id: "op-1".into(),
        collection: "contacts".into(),
        href: "a.vcf".into(),
        etag: "1".into(),
        op: json!({}),
    };
    let message = CachedMessage {
        folder: "mail/INBOX".into(),
        href: "1.eml".into(),
        ..Default::default()
    };
    lost(
        holder
            .journal_add_with_messages(std::slice::from_ref(&entry), &[message])
            .await
            .unwrap_err(),
    );
    assert_eq!(all_rows(&pool, "mb-ann").await, written, "nothing written");
    assert_eq!(
        holder
            .item("contacts", "a.vcf")
            .await
            .unwrap()
            .unwrap()
            .etag,
        "1"
    );
    assert_eq!(
        holder.meta("client_id").await.unwrap().as_deref(),
        Some("c-1")
    );

    // The new holder writes.
    let new_holder = fenced(2);
    new_holder.journal_add(&entry).await.unwrap();
    assert_eq!(all_rows(&pool, "mb-ann").await, written + 1);

    // A mailbox removed meanwhile: its lease is gone too.
    sqlx::query(&format!("DELETE FROM {LEASE_TABLE}"))
        .execute(&pool)
        .await
        .unwrap();
    lost_at(2, new_holder.journal_done("op-1").await.unwrap_err());
    assert_eq!(all_rows(&pool, "mb-ann").await, written + 1);
}

#[tokio::test]
async fn r_v4_an_engine_whose_lease_was_taken_writes_nothing() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let delta = w.contact(&ann, "Delta").await;
    let (_, pool) = fresh_database().await;
    lease_table(&pool, 7).await;
    let engine = |token| {
        let cache = Cache::in_database(
            pool.clone(),
            "mb-ann",
            Some(Fence {
                key: "mb-ann".into(),
                token,
            }),
        )
        .unwrap();
        Agent::with_cache(w.config(&ann, "ann", "cache"), cache)
    };
    let lost = |r: anyhow::Result<crmsync_agent::SyncReport>| {
        let e = r.unwrap_err();
        assert!(e.downcast_ref::<LeaseLost>().is_some(), "{e:#}");
    };

    // A stale token from the start: nothing at all.
    claim(&pool, 8).await;
    lost(
        engine(7)
            .await
            .unwrap()
            .sync_once(SyncOptions::default())
            .await,
    );
    assert_eq!(all_rows(&pool, "mb-ann").await, 0);
    assert!(vcards(&w.contacts_dir("ann")).is_empty());

    // The holder syncs; then another worker claims the mailbox.
    let holder = engine(8).await.unwrap();
    assert_eq!(sync(&holder).await.written_to_mailbox, 2);
    let written = all_rows(&pool, "mb-ann").await;

    // A CRM deletion (a contact is unlinked in the mailbox, R-S8): the
    // item stays linked.
    let (status, _) = w
        .call(
            &ann,
            Method::DELETE,
            &format!("/api/v1/contacts/{delta}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    claim(&pool, 9).await;
    lost(holder.sync_once(SyncOptions::default()).await);
    assert!(find(&vcards(&w.contacts_dir("ann")), &delta).is_some());
    assert_eq!(all_rows(&pool, "mb-ann").await, written);

    // Deliveries and a mailbox edit: nothing written on either side.
    let holder = engine(9).await.unwrap();
    claim(&pool, 10).await;
    w.contact(&ann, "Beta").await;
    w.contact(&ann, "Gamma").await;
    let cards = vcards(&w.contacts_dir("ann"));
    edit(&find(&cards, &alpha).unwrap().0, "job_title", "Buyer");
    lost(holder.sync_once(SyncOptions::default()).await);
    assert_eq!(all_rows(&pool, "mb-ann").await, written, "no cache row");
    let cards = vcards(&w.contacts_dir("ann"));
    assert_eq!(cards.len(), 2, "no delivery written into the mailbox");
    assert!(find(&cards, &delta).is_some());
    let crm_alpha = w
        .my_contacts(&ann)
        .await
        .into_iter()
        .find(|c| c["id"] == alpha.as_str())
        .unwrap();
    assert_ne!(crm_alpha["job_title"], "Buyer", "nothing pushed");

    // The new holder, the same engine code, takes it from there.
    let next = engine(10).await.unwrap();
    let r = sync(&next).await;
    assert_eq!(r.written_to_mailbox, 2, "{r:?}");
    assert_eq!(r.unlinked_in_mailbox, 1, "{r:?}");
    assert_eq!(r.pushed.values().sum::<usize>(), 1, "{r:?}");
    let cards = vcards(&w.contacts_dir("ann"));
    assert_eq!(cards.len(), 4);
    assert!(find(&cards, &delta).is_none(), "Delta unlinked");
}

/// The cache file as the agent wrote it before caches could live in a
/// database (verbatim): it opens, keeps its rows and syncs on.
const FILE_SCHEMA_BEFORE: &[&str] = &[
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE collections (id TEXT PRIMARY KEY, state TEXT)",
    "CREATE TABLE items (
        collection TEXT NOT NULL, href TEXT NOT NULL, etag TEXT NOT NULL, uid TEXT NOT NULL,
        set_name TEXT NOT NULL, crm_id TEXT, link INTEGER NOT NULL,
        version INTEGER NOT NULL DEFAULT 0, baseline TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (collection, href))",
    "CREATE INDEX items_crm_id ON items (crm_id)",
    "CREATE INDEX items_link ON items (collection, link, href)",
    "CREATE TABLE journal (op_id TEXT PRIMARY KEY, collection TEXT NOT NULL, href TEXT NOT NULL,
        etag TEXT NOT NULL, op TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE item_problems (collection TEXT NOT NULL, href TEXT NOT NULL,
        problem TEXT NOT NULL, PRIMARY KEY (collection, href))",
    "CREATE TABLE write_intents (crm_id TEXT PRIMARY KEY, collection TEXT NOT NULL,
        version INTEGER NOT NULL, baseline TEXT NOT NULL, old_etag TEXT)",
    "CREATE TABLE messages (folder TEXT NOT NULL, href TEXT NOT NULL, etag TEXT NOT NULL,
        message_id TEXT, link INTEGER NOT NULL, crm_id TEXT, regarding TEXT, problem TEXT,
        rule TEXT, gone INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (folder, href))",
    "CREATE INDEX messages_crm_id ON messages (crm_id)",
    "CREATE INDEX messages_message_id ON messages (message_id)",
];

#[tokio::test]
async fn r_t4_a_cache_file_from_before_opens_with_its_rows() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let first = w.agent(&ann, "ann", "cache").await;
    w.contact(&ann, "Alpha").await;
    sync(&first).await;
    drop(first);
    // The same state in a file made by the old schema.
    let old = w.dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", old.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for stmt in FILE_SCHEMA_BEFORE {
        sqlx::query(stmt).execute(&mut conn).await.unwrap();
    }
    sqlx::query(&format!(
        "ATTACH DATABASE '{}' AS new",
        w.dir.path().join("cache.db").display()
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    for table in ["meta", "collections", "items", "journal", "write_intents"] {
        sqlx::query(&format!("INSERT INTO {table} SELECT * FROM new.{table}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();

    let cache = Cache::open(&old).await.unwrap();
    assert_eq!(cache.link_counts().await.unwrap(), [0, 0, 1]);
    let agent = Agent::with_cache(w.config(&ann, "ann", "cache"), cache)
        .await
        .unwrap();
    let r = sync(&agent).await;
    assert_eq!((r.written_to_mailbox, r.acknowledged), (0, 0), "{r:?}");
    w.contact(&ann, "Beta").await;
    assert_eq!(sync(&agent).await.written_to_mailbox, 1);
    assert_eq!(agent.cache().link_counts().await.unwrap(), [0, 0, 2]);
}

#[tokio::test]
async fn r_v4_a_lease_taken_mid_cycle_stops_the_cycle_and_its_writes() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let delta = w.contact(&ann, "Delta").await;
    let (url, pool) = fresh_database().await;
    lease_table(&pool, 1).await;
    let fence = Fence {
        key: "mb-ann".into(),
        token: 1,
    };
    let cache = Cache::in_database(pool.clone(), "mb-ann", Some(fence)).unwrap();
    let holder = Agent::with_cache(w.config(&ann, "ann", "cache"), cache)
        .await
        .unwrap();
    assert_eq!(sync(&holder).await.written_to_mailbox, 1);
    for i in 0..60 {
        w.contact(&ann, &format!("New{i:02}")).await;
    }
    let (status, _) = w
        .call(
            &ann,
            Method::DELETE,
            &format!("/api/v1/contacts/{delta}"),
            None,
        )
        .await;
    assert_eq!(status, 204);

    // Another worker claims the mailbox when the 50th delivery is next
    // (the engine reports its progress every 50).
    holder.on_progress(Box::new(move |p| {
        if p.done == 50 && p.total > 50 {
            let url = url.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                        sqlx::query(&format!(
                            "UPDATE {LEASE_TABLE} SET {LEASE_TOKEN_COLUMN} = 2"
                        ))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                    })
            })
            .join()
            .unwrap();
        }
    }));
    let e = holder.sync_once(SyncOptions::default()).await.unwrap_err();
    assert!(e.downcast_ref::<LeaseLost>().is_some(), "{e:#}");
    // The 49 deliveries before the claim are applied (Delta's unlinking
    // among them or not, as the CRM ordered them), none after.
    let cards = vcards(&w.contacts_dir("ann"));
    let new = cards
        .iter()
        .filter(|(_, i)| {
            i.fields["last_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("New"))
        })
        .count();
    let unlinked = usize::from(find(&cards, &delta).is_none());
    assert_eq!(new + unlinked, 49, "the deliveries before the claim only");
    assert_eq!(cards.len() as i64, rows(&pool, "items", "mb-ann").await);
}

#[tokio::test]
async fn r_v4_mailbox_caches_in_a_database_need_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("crm.db").display());
    let sqlite = connect(&url).await;
    let e = Cache::in_database(sqlite.clone(), "mb-ann", None).unwrap_err();
    assert!(e.to_string().contains("need PostgreSQL"), "{e}");
    let e = Cache::prepare_database(&sqlite).await.unwrap_err();
    assert!(e.to_string().contains("need PostgreSQL"), "{e}");
}

#[tokio::test]
async fn r_v4_a_spooled_message_journaled_by_another_process_is_sent_once() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let (_, pool) = fresh_database().await;
    let open = || {
        let cache = Cache::in_database(pool.clone(), "mb-ann", None).unwrap();
        Agent::with_cache(w.config(&ann, "ann", "cache"), cache)
    };
    let first = open().await.unwrap();
    sync(&first).await;
    let raw = rfc5322(
        Some("big@example.org"),
        "lee@example.org",
        &["ann@example.com"],
        "Large",
        "",
    );
    let href = w.deliver("ann", "INBOX", &raw, "S");
    w.keywords("ann", "INBOX", &href, &["$CRMTracked"], &[])
        .await;
    // The first process spooled the message on its machine and journaled
    // the track, then died before sending it; its machine is gone.
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("spooled.eml");
    std::fs::write(&file, &raw).unwrap();
    let op_id = uuid::Uuid::new_v4().to_string();
    let entry = JournalEntry {
        op_id: op_id.clone(),
        collection: "mail/INBOX".into(),
        href: href.clone(),
        etag: String::new(),
        op: json!({"op_id": op_id, "kind": "track", "set": "emails", "draft": false,
            "fields": {}, "raw_file": file.to_string_lossy(),
            "item_uid": "big@example.org", "message_id": "big@example.org"}),
    };
    first.cache().journal_add(&entry).await.unwrap();
    drop(first);
    drop(elsewhere);
    assert_eq!(rows(&pool, "spool", "mb-ann").await, 1);

    let second = open().await.unwrap();
    let r = sync(&second).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let emails = w.email_by_mid("big@example.org").await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0]["subject"], "Large", "sent with its message");
    assert_eq!(rows(&pool, "spool", "mb-ann").await, 0, "answered: dropped");
    assert_eq!(rows(&pool, "journal", "mb-ann").await, 0);
    let spool = w.dir.path().join("cache.spool");
    assert!(
        !spool.exists() || std::fs::read_dir(&spool).unwrap().next().is_none(),
        "the restored spool file is removed once answered"
    );
    assert!(sync(&second).await.pushed.is_empty());
    assert_eq!(w.email_by_mid("big@example.org").await.len(), 1);
}

/// `url` (`postgres://user@host/db`) as the role `role`.
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{role}@{host}")
}

/// R-V6: a cycle that finds nothing changed writes nothing to the cache
/// (a fenced write costs a server's database four round trips at every
/// cycle of every mailbox): the second sync runs as a database role that
/// may read the caches and write nothing else than the collections'
/// states, so any other write fails it.
#[tokio::test]
async fn r_v6_a_no_change_cycle_writes_nothing_to_the_cache() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    w.contact(&ann, "Alpha").await;
    let (url, pool) = fresh_database().await;
    lease_table(&pool, 7).await;
    let engine = |pool: AnyPool| {
        let cache = Cache::in_database(
            pool,
            "mb-ann",
            Some(Fence {
                key: "mb-ann".into(),
                token: 7,
            }),
        )
        .unwrap();
        Agent::with_cache(w.config(&ann, "ann", "cache"), cache)
    };
    let first = sync(&engine(pool.clone()).await.unwrap()).await;
    assert_eq!(first.written_to_mailbox, 1);

    let role = format!("reader_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
        // The fence's `FOR SHARE` needs it; the lease is the worker's.
        format!("GRANT UPDATE ON {LEASE_TABLE} TO {role}"),
        // A local folder's state carries the time of its scan, so it is
        // stored at every cycle (an IMAP or DAV state moves only with
        // the mailbox).
        format!("GRANT INSERT, UPDATE ON mailbox_cache_collections TO {role}"),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let reader = connect(&as_role(&url, &role)).await;
    let again = engine(reader.clone())
        .await
        .unwrap()
        .sync_once(SyncOptions::default())
        .await;
    reader.close().await;
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let again = again.expect("a no-change cycle that writes nothing");
    assert_eq!(again.written_to_mailbox, 0);
    assert!(again.errors.is_empty(), "{:?}", again.errors);
}
