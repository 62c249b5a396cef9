//! The mailbox conformance suite: generic tests every backend must pass
//! (STYLE.md §3, after vdirsyncer's `StorageTests`).
//!
//! A backend gets the suite with one fixture function and one macro line in
//! its test file, naming what the fixture holds:
//!
//! ```ignore
//! #[macro_use]
//! mod conformance;
//! async fn fixture() -> MyFixture { ... }   // MyFixture: conformance::Fixture
//! mailbox_conformance!(fixture; items, mail, bad_items);
//! ```
//!
//! The fixture gives the backend under test, a second handle on the same
//! store, and "another client": writes made directly on the store behind
//! the backend's back (files on disk, raw HTTP PUTs, a second IMAP session).
//! Only the tests of the groups named are generated, so every test that
//! runs tests something: `items` (a contacts or calendar collection),
//! `mail` (a mail folder), `bad_items` (the fixture can plant a malformed
//! or unreadable item). `collections_are_listed` checks that the groups
//! named match the collections the fixture answers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmsync_mailbox::{
    CollectionKind, Error, Etag, Href, Keyword, Mailbox, Notification, SystemFlag,
};

/// What a backend supplies to run the suite.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// The backend under test.
    fn mailbox(&self) -> Arc<dyn Mailbox>;
    /// A new, independent handle on the same store (a restarted agent or a
    /// second client reading the same folders).
    async fn reopen(&self) -> Arc<dyn Mailbox>;
    /// The collection of that kind to test with; `None` if the backend has none.
    fn collection(&self, kind: CollectionKind) -> Option<String>;

    /// Another client creates or overwrites an item (`name` is a file name
    /// or an href the backend returned). Returns its href.
    async fn external_put(&self, collection: &str, name: &str, data: &[u8]) -> Href;
    /// Another client deletes an item.
    async fn external_delete(&self, collection: &str, href: &str);
    /// A message arrives in a mail folder (delivery by another program).
    async fn external_deliver(&self, folder: &str, data: &[u8]) -> Href;
    /// Another mail client marks a message as read.
    async fn external_mark_seen(&self, folder: &str, href: &str);
    /// Plants an item whose bytes are not what the collection holds.
    async fn plant_malformed(&self, collection: &str) -> Option<Href>;
    /// Plants an item that exists but cannot be read.
    async fn plant_unreadable(&self, collection: &str) -> Option<Href>;
    /// Whether `stored` (an item's bytes as read back) is the contact or
    /// calendar item `written`. Byte equality unless the backend's store
    /// re-serializes what it keeps (CalDAV/CardDAV servers reorder
    /// properties): then the fixture compares content lines.
    fn same_item(&self, stored: &[u8], written: &[u8]) -> bool {
        stored == written
    }
}

/// Asserts that an item read back is the one written (see [`Fixture::same_item`]).
fn assert_same(f: &dyn Fixture, stored: &[u8], written: &[u8], what: &str) {
    assert!(
        f.same_item(stored, written),
        "{what}: read back\n{}\nbut wrote\n{}",
        String::from_utf8_lossy(stored),
        String::from_utf8_lossy(written)
    );
}

/// Generates one `#[tokio::test]` per conformance test of the groups named
/// (`items`, `mail`, `bad_items`) for a fixture function.
/// Use with `#[macro_use] mod conformance;`.
macro_rules! mailbox_conformance {
    ($fixture:path; $($group:ident),+ $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn collections_are_listed() {
            let fixture = $fixture().await;
            crate::conformance::collections_are_listed(&fixture, &[$(stringify!($group)),+]).await;
        }
        mailbox_conformance!(@tests $fixture;
            r_t3_nothing_changed_reports_nothing,
            invalid_sync_state_is_refused,
        );
        $(mailbox_conformance!(@group $group $fixture);)+
    };
    (@group items $fixture:path) => {
        mailbox_conformance!(@tests $fixture;
            create_get_update_delete,
            etag_changes_on_update,
            update_with_stale_etag_is_a_conflict_and_leaves_the_item,
            delete_with_stale_etag_is_a_conflict_and_keeps_the_item,
            create_refuses_an_existing_name,
            unicode_names_round_trip,
            unsafe_names_get_a_safe_href,
            get_many_keeps_order_and_reports_missing_items,
            r_t3_changes_made_while_stopped_are_found,
            r_t3_quick_same_size_rewrite_is_found,
            r_t2_watch_notifies_when_another_process_writes,
        );
    };
    (@group mail $fixture:path) => {
        mailbox_conformance!(@tests $fixture;
            r_t3_mail_arrivals_flag_changes_and_deletions_are_found,
            r_m1_keyword_marks_tracked_messages,
            message_sizes_are_told_without_reading,
            a_large_message_is_copied_to_a_file_unchanged,
            r_m1_keywords_on_a_new_message_survive_other_flags,
            r_m7_regarding_keyword_is_replaced_in_one_call,
            keyword_change_with_stale_etag_is_a_conflict,
            r_t2_watch_notifies_when_mail_arrives,
        );
    };
    (@group bad_items $fixture:path) => {
        mailbox_conformance!(@tests $fixture;
            malformed_and_unreadable_items_are_reported_per_item,
        );
    };
    (@tests $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $fixture().await;
                crate::conformance::$name(&fixture).await;
            }
        )*
    };
}

// ---------------------------------------------------------------- samples

/// A TEXT value escaped as RFC 5545 §3.3.11 / RFC 6350 §3.4 require (a bare
/// comma is a list separator: servers that parse items would cut there).
fn text(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(';', "\\;")
        .replace('\n', "\\n")
}

/// A vCard 3.0, the version every CardDAV server stores as written (Cyrus
/// keeps a 4.0 as 3.0; docs/servers.md).
pub fn vcard(uid: &str, name: &str) -> Vec<u8> {
    let name = text(name);
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nEMAIL:{uid}@example.com\r\nEND:VCARD\r\n"
    )
    .into_bytes()
}

/// An event with an end: Cyrus refuses one whose DTEND is missing
/// (docs/servers.md).
pub fn vevent(uid: &str, summary: &str) -> Vec<u8> {
    let summary = text(summary);
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync//tests//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20270101T100000Z\r\nDTEND:20270101T110000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    .into_bytes()
}

pub fn message(id: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.com>\r\nSubject: {subject}\r\nMessage-ID: <{id}@example.com>\r\nDate: Mon, 04 Jan 2027 10:00:00 +0000\r\n\r\nHello {subject}\r\n"
    )
    .into_bytes()
}

/// Makes a sample item from a UID and a name.
type Sample = fn(&str, &str) -> Vec<u8>;

/// A contacts or calendar collection and a sample-maker for it.
fn item_collection(f: &dyn Fixture) -> Option<(String, Sample)> {
    if let Some(c) = f.collection(CollectionKind::Contacts) {
        return Some((c, vcard as Sample));
    }
    f.collection(CollectionKind::Calendar)
        .map(|c| (c, vevent as Sample))
}

/// The item collection of a fixture that declared `items`.
fn items(f: &dyn Fixture) -> (String, Sample) {
    item_collection(f)
        .expect("the fixture declares `items` but has no contacts/calendar collection")
}

/// The mail folder of a fixture that declared `mail`.
fn mail_folder(f: &dyn Fixture) -> String {
    f.collection(CollectionKind::Mail)
        .expect("the fixture declares `mail` but has no mail folder")
}

async fn state_of(mb: &dyn Mailbox, c: &str) -> crmsync_mailbox::SyncState {
    mb.changes_since(c, None).await.unwrap().state
}

fn hrefs(refs: &[crmsync_mailbox::ItemRef]) -> Vec<&str> {
    let mut v: Vec<&str> = refs.iter().map(|r| r.href.as_str()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- items

/// `declared`: the groups the fixture's macro line names; they must match
/// what it holds, so no group of tests is left out by mistake.
pub async fn collections_are_listed(f: &dyn Fixture, declared: &[&str]) {
    assert_eq!(
        declared.contains(&"items"),
        item_collection(f).is_some(),
        "`items` declared ({declared:?}) if and only if the fixture has a contacts/calendar collection"
    );
    assert_eq!(
        declared.contains(&"mail"),
        f.collection(CollectionKind::Mail).is_some(),
        "`mail` declared ({declared:?}) if and only if the fixture has a mail folder"
    );
    let mb = f.mailbox();
    let all = mb.collections().await.unwrap();
    for kind in [
        CollectionKind::Contacts,
        CollectionKind::Calendar,
        CollectionKind::Tasks,
        CollectionKind::Mail,
    ] {
        if let Some(id) = f.collection(kind) {
            let found = all.iter().find(|c| c.id == id).unwrap_or_else(|| {
                panic!("collection {id} not listed in {all:?}");
            });
            assert_eq!(found.kind, kind);
        }
    }
    let folders = mb.mail_folders().await.unwrap();
    assert!(folders.iter().all(|c| c.kind == CollectionKind::Mail));
}

pub async fn create_get_update_delete(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let data = sample("cgud-1", "First");
    let created = mb.create(&c, "cgud-1", &data).await.unwrap();
    let got = mb.get(&c, &created.href).await.unwrap();
    assert_same(f, &got.data, &data, "created");
    assert_eq!(got.etag, created.etag);

    let data2 = sample("cgud-1", "Second");
    let updated = mb
        .update(&c, &created.href, &created.etag, &data2)
        .await
        .unwrap();
    assert_eq!(updated.href, created.href);
    let got = mb.get(&c, &created.href).await.unwrap();
    assert_same(f, &got.data, &data2, "updated");
    assert_eq!(got.etag, updated.etag);

    mb.delete(&c, &created.href, &updated.etag).await.unwrap();
    assert!(matches!(
        mb.get(&c, &created.href).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        mb.delete(&c, &created.href, &updated.etag).await,
        Err(Error::NotFound { .. })
    ));
}

pub async fn etag_changes_on_update(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let a = mb
        .create(&c, "etag-1", &sample("etag-1", "A"))
        .await
        .unwrap();
    let b = mb
        .update(&c, &a.href, &a.etag, &sample("etag-1", "B"))
        .await
        .unwrap();
    assert_ne!(a.etag, b.etag);
    let c2 = mb
        .update(&c, &a.href, &b.etag, &sample("etag-1", "C"))
        .await
        .unwrap();
    assert_ne!(b.etag, c2.etag);
    assert_ne!(a.etag, c2.etag);
}

pub async fn update_with_stale_etag_is_a_conflict_and_leaves_the_item(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let created = mb
        .create(&c, "stale-u", &sample("stale-u", "Mine"))
        .await
        .unwrap();
    // The user edits the item in another client.
    let theirs = sample("stale-u", "Theirs, edited elsewhere");
    f.external_put(&c, &created.href, &theirs).await;
    let err = mb
        .update(
            &c,
            &created.href,
            &created.etag,
            &sample("stale-u", "Blind overwrite"),
        )
        .await
        .unwrap_err();
    let current = err
        .current_etag()
        .cloned()
        .unwrap_or_else(|| panic!("not a conflict: {err}"));
    assert_ne!(current, created.etag);
    let now = mb.get(&c, &created.href).await.unwrap();
    assert_same(
        f,
        &now.data,
        &theirs,
        "the other client's edit must survive",
    );
    assert_eq!(now.etag, current, "the conflict names the current etag");
    // With the current etag the write goes through.
    mb.update(&c, &created.href, &current, &sample("stale-u", "Merged"))
        .await
        .unwrap();
}

pub async fn delete_with_stale_etag_is_a_conflict_and_keeps_the_item(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let created = mb
        .create(&c, "stale-d", &sample("stale-d", "Mine"))
        .await
        .unwrap();
    let theirs = sample("stale-d", "Edited elsewhere");
    f.external_put(&c, &created.href, &theirs).await;
    let err = mb
        .delete(&c, &created.href, &created.etag)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "expected a conflict, got {err}");
    assert_same(
        f,
        &mb.get(&c, &created.href).await.unwrap().data,
        &theirs,
        "kept",
    );
    assert!(matches!(
        mb.delete(&c, &created.href, &Etag::new("made-up")).await,
        Err(Error::Conflict { .. })
    ));
}

pub async fn create_refuses_an_existing_name(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let first = sample("dup", "First");
    let created = mb.create(&c, "dup", &first).await.unwrap();
    let err = mb
        .create(&c, "dup", &sample("dup", "Second"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { href, .. } if *href == created.href),
        "expected AlreadyExists, got {err}"
    );
    let got = mb.get(&c, &created.href).await.unwrap();
    assert_same(f, &got.data, &first, "the first one stays");
    assert_eq!(got.etag, created.etag);
}

pub async fn unicode_names_round_trip(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let state = state_of(&*mb, &c).await;
    let name = "zoë-ünïcødé-日本語-Ελλάδα";
    let data = sample(name, "Zoë Ünïcødé");
    let created = mb.create(&c, name, &data).await.unwrap();
    assert!(
        created.href.contains("日本語"),
        "a plain unicode name should stay readable: {}",
        created.href
    );
    assert_same(
        f,
        &mb.get(&c, &created.href).await.unwrap().data,
        &data,
        "created",
    );
    let changes = mb.changes_since(&c, Some(&state)).await.unwrap();
    assert_eq!(hrefs(&changes.changed), vec![created.href.as_str()]);
    let reader = f.reopen().await;
    assert_same(
        f,
        &reader.get(&c, &created.href).await.unwrap().data,
        &data,
        "read by another handle",
    );
}

pub async fn unsafe_names_get_a_safe_href(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    for name in ["../../etc/passwd", "a/b:c", ".hidden", "{weird}*?"] {
        let data = sample(name, "Odd");
        let created = mb.create(&c, name, &data).await.unwrap();
        assert!(!created.href.contains('/'), "{name} gave {}", created.href);
        assert_same(
            f,
            &mb.get(&c, &created.href).await.unwrap().data,
            &data,
            name,
        );
    }
}

pub async fn get_many_keeps_order_and_reports_missing_items(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let a = mb.create(&c, "gm-a", &sample("gm-a", "A")).await.unwrap();
    let b = mb.create(&c, "gm-b", &sample("gm-b", "B")).await.unwrap();
    let missing = {
        let gone = mb
            .create(&c, "gm-gone", &sample("gm-gone", "G"))
            .await
            .unwrap();
        mb.delete(&c, &gone.href, &gone.etag).await.unwrap();
        gone.href
    };
    let asked = vec![b.href.clone(), missing.clone(), a.href.clone()];
    let got = mb.get_many(&c, &asked).await.unwrap();
    let order: Vec<&str> = got.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(order, asked.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(got[0].1.as_ref().unwrap().etag, b.etag);
    assert!(matches!(got[1].1, Err(Error::NotFound { .. })));
    assert_eq!(got[2].1.as_ref().unwrap().etag, a.etag);
}

// ---------------------------------------------------------------- changes (R-T3)

pub async fn r_t3_changes_made_while_stopped_are_found(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let keep = mb
        .create(&c, "t3-keep", &sample("t3-keep", "Keep"))
        .await
        .unwrap();
    let edit = mb
        .create(&c, "t3-edit", &sample("t3-edit", "Edit me"))
        .await
        .unwrap();
    let gone = mb
        .create(&c, "t3-gone", &sample("t3-gone", "Delete me"))
        .await
        .unwrap();
    let first = mb.changes_since(&c, None).await.unwrap();
    let listed = hrefs(&first.changed);
    for h in [&keep.href, &edit.href, &gone.href] {
        assert!(listed.contains(&h.as_str()), "{h} missing from {listed:?}");
    }
    assert!(first.deleted.is_empty());
    let stored = first.state;
    drop(mb); // the agent stops

    // Another client works on the store meanwhile.
    let added = f
        .external_put(
            &c,
            &format!("t3-added{}", ext_of(&keep.href)),
            &sample("t3-added", "New"),
        )
        .await;
    f.external_put(
        &c,
        &edit.href,
        &sample("t3-edit", "Edited elsewhere, longer now"),
    )
    .await;
    f.external_delete(&c, &gone.href).await;

    let mb = f.reopen().await; // the agent starts again
    let changes = mb.changes_since(&c, Some(&stored)).await.unwrap();
    assert_eq!(hrefs(&changes.changed), {
        let mut v = vec![added.as_str(), edit.href.as_str()];
        v.sort();
        v
    });
    assert_eq!(changes.deleted, vec![gone.href.clone()]);
    assert!(changes.failed.is_empty(), "{:?}", changes.failed);
    let edited = changes
        .changed
        .iter()
        .find(|r| r.href == edit.href)
        .unwrap();
    assert_ne!(edited.etag, edit.etag);
    assert_eq!(mb.get(&c, &edit.href).await.unwrap().etag, edited.etag);

    let again = mb.changes_since(&c, Some(&changes.state)).await.unwrap();
    assert!(again.is_empty(), "second look found {again:?}");
}

fn ext_of(href: &str) -> &str {
    href.rfind('.').map(|i| &href[i..]).unwrap_or("")
}

pub async fn r_t3_nothing_changed_reports_nothing(f: &dyn Fixture) {
    let mb = f.mailbox();
    let mut collections = Vec::new();
    if let Some((c, sample)) = item_collection(f) {
        mb.create(&c, "quiet", &sample("quiet", "Quiet"))
            .await
            .unwrap();
        collections.push(c);
    }
    if let Some(folder) = f.collection(CollectionKind::Mail) {
        f.external_deliver(&folder, &message("quiet", "Quiet"))
            .await;
        collections.push(folder);
    }
    for c in collections {
        let first = mb.changes_since(&c, None).await.unwrap();
        assert!(!first.changed.is_empty());
        let mut state = first.state;
        for _ in 0..3 {
            let next = mb.changes_since(&c, Some(&state)).await.unwrap();
            assert!(next.is_empty(), "{c}: nothing changed but got {next:?}");
            state = next.state;
        }
        // A restarted agent agrees.
        let other = f.reopen().await;
        assert!(other
            .changes_since(&c, Some(&state))
            .await
            .unwrap()
            .is_empty());
    }
}

/// An in-place rewrite of the same size right after a listing (same
/// timestamp tick) is still a change.
pub async fn r_t3_quick_same_size_rewrite_is_found(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let created = mb
        .create(&c, "racy", &sample("racy", "AAAA"))
        .await
        .unwrap();
    let state = mb.changes_since(&c, None).await.unwrap().state;
    f.external_put(&c, &created.href, &sample("racy", "BBBB"))
        .await;
    let changes = mb.changes_since(&c, Some(&state)).await.unwrap();
    assert_eq!(hrefs(&changes.changed), vec![created.href.as_str()]);
    assert_ne!(changes.changed[0].etag, created.etag);
}

pub async fn r_t3_mail_arrivals_flag_changes_and_deletions_are_found(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let read = f
        .external_deliver(&folder, &message("m-read", "Read me"))
        .await;
    let gone = f
        .external_deliver(&folder, &message("m-gone", "Delete me"))
        .await;
    let quiet = f
        .external_deliver(&folder, &message("m-quiet", "Leave me"))
        .await;
    let first = mb.changes_since(&folder, None).await.unwrap();
    assert_eq!(hrefs(&first.changed).len(), 3);
    assert!(first.changed.iter().all(|r| r.flags.is_some()));
    drop(mb);

    f.external_mark_seen(&folder, &read).await;
    f.external_delete(&folder, &gone).await;
    let arrived = f.external_deliver(&folder, &message("m-new", "New")).await;

    let mb = f.reopen().await;
    let changes = mb.changes_since(&folder, Some(&first.state)).await.unwrap();
    assert_eq!(hrefs(&changes.changed), {
        let mut v = vec![read.as_str(), arrived.as_str()];
        v.sort();
        v
    });
    assert_eq!(changes.deleted, vec![gone.clone()]);
    let seen = changes.changed.iter().find(|r| r.href == read).unwrap();
    assert!(seen
        .flags
        .as_ref()
        .unwrap()
        .system
        .contains(&SystemFlag::Seen));
    assert!(!changes.changed.iter().any(|r| r.href == quiet));
    let again = mb
        .changes_since(&folder, Some(&changes.state))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

// ---------------------------------------------------------------- keywords (R-M1, R-M7)

pub async fn r_m1_keyword_marks_tracked_messages(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let data = message("m1", "Track me");
    let href = f.external_deliver(&folder, &data).await;
    let item = mb.get(&folder, &href).await.unwrap();
    assert_eq!(item.data, data, "raw bytes come back unchanged");
    assert!(!item.flags.as_ref().unwrap().is_tracked());

    let tracked = mb
        .store_keywords(&folder, &href, &item.etag, &[Keyword::tracked()], &[])
        .await
        .unwrap();
    assert!(tracked.flags.as_ref().unwrap().is_tracked());
    assert_ne!(tracked.etag, item.etag);

    // A second reader of the folder (another client) sees the marker.
    let reader = f.reopen().await;
    let seen = reader.flags_of(&folder, &href).await.unwrap();
    assert!(seen.flags.as_ref().unwrap().is_tracked());
    assert_eq!(seen.etag, tracked.etag);
    assert_eq!(reader.get(&folder, &href).await.unwrap().data, data);
    // In bulk: one result per href, in order, a missing one reported alone.
    let other = f
        .external_deliver(&folder, &message("m1-other", "Other"))
        .await;
    let asked = vec![other.clone(), "no-such-message".to_owned(), href.clone()];
    let bulk = reader.message_flags(&folder, &asked).await.unwrap();
    assert_eq!(
        bulk.iter().map(|(h, _)| h).collect::<Vec<_>>(),
        asked.iter().collect::<Vec<_>>()
    );
    assert!(!bulk[0]
        .1
        .as_ref()
        .unwrap()
        .flags
        .as_ref()
        .unwrap()
        .is_tracked());
    assert!(matches!(bulk[1].1, Err(Error::NotFound { .. })));
    assert!(bulk[2]
        .1
        .as_ref()
        .unwrap()
        .flags
        .as_ref()
        .unwrap()
        .is_tracked());

    // Removing it means "untrack".
    let untracked = mb
        .store_keywords(&folder, &href, &tracked.etag, &[], &[Keyword::tracked()])
        .await
        .unwrap();
    assert!(!untracked.flags.as_ref().unwrap().is_tracked());
    let seen = reader.flags_of(&folder, &href).await.unwrap();
    assert!(!seen.flags.as_ref().unwrap().is_tracked());
}

/// The agent refuses a message above its size limit before reading it,
/// and reads the others in batches of bounded memory.
pub async fn message_sizes_are_told_without_reading(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let small = message("size-small", "Small");
    let mut large = message("size-large", "Large");
    large.extend(b"0123456789\r\n".repeat(10_000));
    let small_href = f.external_deliver(&folder, &small).await;
    let large_href = f.external_deliver(&folder, &large).await;
    let asked = vec![large_href, "no-such-message".to_owned(), small_href];
    let sizes = mb.message_sizes(&folder, &asked).await.unwrap();
    assert_eq!(
        sizes.iter().map(|(h, _)| h).collect::<Vec<_>>(),
        asked.iter().collect::<Vec<_>>()
    );
    assert_eq!(*sizes[0].1.as_ref().unwrap(), large.len() as u64);
    assert!(matches!(sizes[1].1, Err(Error::NotFound { .. })));
    assert_eq!(*sizes[2].1.as_ref().unwrap(), small.len() as u64);
}

/// A large message is tracked from a copy in a file, read a part at a time
/// (IMAP: several partial FETCHes), never whole: the bytes are unchanged.
pub async fn a_large_message_is_copied_to_a_file_unchanged(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let mut large = message("copy-large", "Large");
    let mut i = 0u64;
    while large.len() < 2_500_000 {
        large.extend(format!("line {i} of the attachment\r\n").bytes());
        i += 1;
    }
    let href = f.external_deliver(&folder, &large).await;
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.eml");
    let n = mb.copy_message_to(&folder, &href, &to).await.unwrap();
    assert_eq!(n, large.len() as u64);
    assert!(std::fs::read(&to).unwrap() == large, "the copy differs");
    let gone = mb.copy_message_to(&folder, "no-such-message", &to).await;
    assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
}

pub async fn r_m1_keywords_on_a_new_message_survive_other_flags(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let created = mb
        .create(&folder, "", &message("m1b", "Ours"))
        .await
        .unwrap();
    let tracked = mb
        .store_keywords(
            &folder,
            &created.href,
            &created.etag,
            &[Keyword::tracked()],
            &[],
        )
        .await
        .unwrap();
    f.external_mark_seen(&folder, &created.href).await;
    let now = mb.flags_of(&folder, &created.href).await.unwrap();
    let flags = now.flags.as_ref().unwrap();
    assert!(flags.is_tracked(), "the other client kept our keyword");
    assert!(flags.system.contains(&SystemFlag::Seen));
    assert_ne!(now.etag, tracked.etag);
}

pub async fn r_m7_regarding_keyword_is_replaced_in_one_call(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let href = f
        .external_deliver(&folder, &message("m7", "Regarding"))
        .await;
    let old = Keyword::regarding(&uuid_n(1));
    let new = Keyword::regarding(&uuid_n(2));
    let item = mb.get(&folder, &href).await.unwrap();
    let r1 = mb
        .store_keywords(
            &folder,
            &href,
            &item.etag,
            &[Keyword::tracked(), old.clone()],
            &[],
        )
        .await
        .unwrap();
    let r2 = mb
        .store_keywords(
            &folder,
            &href,
            &r1.etag,
            std::slice::from_ref(&new),
            std::slice::from_ref(&old),
        )
        .await
        .unwrap();
    let reader = f.reopen().await;
    let flags = reader.get(&folder, &href).await.unwrap().flags.unwrap();
    assert_eq!(flags.regarding(), vec![uuid_n(2)]);
    assert!(flags.is_tracked());
    assert_eq!(r2.flags.unwrap(), flags);
}

fn uuid_n(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x0b9f3c1e_8f6a_4c1e_9d2a_000000000000 + n)
}

pub async fn keyword_change_with_stale_etag_is_a_conflict(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let href = f
        .external_deliver(&folder, &message("kc", "Conflict"))
        .await;
    let before = mb.get(&folder, &href).await.unwrap();
    f.external_mark_seen(&folder, &href).await;
    let err = mb
        .store_keywords(&folder, &href, &before.etag, &[Keyword::tracked()], &[])
        .await
        .unwrap_err();
    let current = err
        .current_etag()
        .cloned()
        .unwrap_or_else(|| panic!("not a conflict: {err}"));
    let now = mb.flags_of(&folder, &href).await.unwrap();
    assert_eq!(now.etag, current);
    assert!(
        !now.flags.as_ref().unwrap().is_tracked(),
        "nothing written on conflict"
    );
    let done = mb
        .store_keywords(&folder, &href, &current, &[Keyword::tracked()], &[])
        .await
        .unwrap();
    let flags = done.flags.unwrap();
    assert!(flags.is_tracked() && flags.system.contains(&SystemFlag::Seen));
}

// ---------------------------------------------------------------- robustness

pub async fn malformed_and_unreadable_items_are_reported_per_item(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let good1 = mb
        .create(&c, "good-1", &sample("good-1", "One"))
        .await
        .unwrap();
    let malformed = f.plant_malformed(&c).await;
    let unreadable = f.plant_unreadable(&c).await;
    let good2 = mb
        .create(&c, "good-2", &sample("good-2", "Two"))
        .await
        .unwrap();
    assert!(
        malformed.is_some() || unreadable.is_some(),
        "the fixture declares `bad_items` but planted neither a malformed nor an unreadable item"
    );

    let changes = mb.changes_since(&c, None).await.unwrap();
    let listed = hrefs(&changes.changed);
    assert!(listed.contains(&good1.href.as_str()) && listed.contains(&good2.href.as_str()));

    let mut asked = vec![good1.href.clone()];
    asked.extend(malformed.clone());
    asked.extend(unreadable.clone());
    asked.push(good2.href.clone());
    let got = mb.get_many(&c, &asked).await.unwrap();
    assert_eq!(got.len(), asked.len());
    for (href, result) in &got {
        let bad = Some(href) == malformed.as_ref() || Some(href) == unreadable.as_ref();
        match result {
            Ok(item) => assert!(
                !bad,
                "{href} should be reported, got {} bytes",
                item.data.len()
            ),
            Err(e) => {
                assert!(bad, "{href} failed: {e}");
                assert!(
                    e.to_string().contains(href.as_str()) || matches!(e, Error::Io { .. }),
                    "{e}"
                );
            }
        }
    }
    if let Some(m) = &malformed {
        let err = got
            .iter()
            .find(|(h, _)| h == m)
            .unwrap()
            .1
            .as_ref()
            .unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
    }
    if let Some(u) = &unreadable {
        // Listed as failed (or changed, if the backend can list it), never deleted.
        assert!(!changes.deleted.contains(u));
        let again = mb.changes_since(&c, Some(&changes.state)).await.unwrap();
        assert!(!again.deleted.contains(u));
        assert!(again
            .changed
            .iter()
            .all(|r| r.href != good1.href && r.href != good2.href));
    }
}

pub async fn invalid_sync_state_is_refused(f: &dyn Fixture) {
    let mb = f.mailbox();
    let mut ids: Vec<String> = Vec::new();
    ids.extend(item_collection(f).map(|(c, _)| c));
    ids.extend(f.collection(CollectionKind::Mail));
    for c in &ids {
        let err = mb
            .changes_since(c, Some(&crmsync_mailbox::SyncState::new("not a state")))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidSyncState { .. }), "{err}");
    }
    if ids.len() == 2 {
        let other = state_of(&*mb, &ids[1]).await;
        assert!(matches!(
            mb.changes_since(&ids[0], Some(&other)).await,
            Err(Error::InvalidSyncState { .. })
        ));
    }
    assert!(matches!(
        mb.changes_since("no-such-collection", None).await,
        Err(Error::NoSuchCollection { .. })
    ));
}

// ---------------------------------------------------------------- watch (R-T2)

const WATCH_DEADLINE: Duration = Duration::from_secs(2);
/// How long a store nobody writes to must stay quiet: longer than the
/// fixtures' poll intervals (DAV 200 ms, IMAP 500 ms).
const QUIET: Duration = Duration::from_millis(1200);

/// The notification for `collection` itself: a `Rescan` (look at
/// everything) is not what a single write should bring.
async fn expect_notification(watch: &mut crmsync_mailbox::Watch, collection: &str) {
    let deadline = tokio::time::Instant::now() + WATCH_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Notification::Changed(c))) if c == collection => return,
            Ok(Some(Notification::Changed(_))) => continue,
            Ok(Some(other)) => panic!("{other:?} instead of a change of {collection}"),
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("no notification for {collection} within {WATCH_DEADLINE:?}"),
        }
    }
}

/// Nothing changes, so nothing is reported (a watch that fires at every
/// poll would make the agent sync all the time).
async fn expect_quiet(watch: &mut crmsync_mailbox::Watch) {
    match tokio::time::timeout(QUIET, watch.next()).await {
        Err(_) => {}
        Ok(None) => panic!("the watch ended"),
        Ok(Some(n)) => panic!("nothing changed, yet the watch reported {n:?}"),
    }
}

pub async fn r_t2_watch_notifies_when_another_process_writes(f: &dyn Fixture) {
    let (c, sample) = items(f);
    let mb = f.mailbox();
    let seed = mb
        .create(&c, "seed", &sample("seed", "Seed"))
        .await
        .unwrap();
    let name = format!("watched{}", ext_of(&seed.href));
    let mut watch = mb.watch().await.unwrap();
    expect_quiet(&mut watch).await;
    f.external_put(&c, &name, &sample("watched", "Watched"))
        .await;
    expect_notification(&mut watch, &c).await;
}

pub async fn r_t2_watch_notifies_when_mail_arrives(f: &dyn Fixture) {
    let folder = mail_folder(f);
    let mb = f.mailbox();
    let mut watch = mb.watch().await.unwrap();
    expect_quiet(&mut watch).await;
    let href = f.external_deliver(&folder, &message("w", "Watched")).await;
    expect_notification(&mut watch, &folder).await;
    // Drain, then a flag change by another client is noticed too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while watch.try_next().is_some() {}
    f.external_mark_seen(&folder, &href).await;
    expect_notification(&mut watch, &folder).await;
}
