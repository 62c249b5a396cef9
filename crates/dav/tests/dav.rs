//! DAV-specific behaviour, on Radicale, Xandikos and Cyrus (each test on a
//! freshly started server), plus the failures real servers do not produce
//! on demand (507 truncation, 500, a dropped answer) from a scripted
//! loopback responder.

#[macro_use]
mod common;

use std::time::Duration;

use crmsync_dav::{DavConfig, DavMailbox, Url};
use crmsync_mailbox::{Changes, Error, Etag, Mailbox, Notification, SyncState};

use common::{same_item, Kind, Reply, Scripted, Server, PASSWORD, USER};

on_every_server!(
    r_t3_sync_collection_reports_deletions,
    r_t3_invalid_sync_token_resyncs_without_duplicates,
    r_t3_getctag_fallback_finds_changes_and_deletions,
    r_t3_nothing_changed_is_one_request_per_collection,
    r_t2_watch_notifies_by_polling_the_sync_token,
    r_f5_concurrent_edit_is_a_412_conflict_naming_the_current_etag,
    discovery_from_the_server_root_finds_three_collections,
    events_with_rrule_exdate_and_exceptions_round_trip_as_stored,
    vtodo_round_trips_as_stored,
    vcard_3_0_is_kept_as_version_3_0,
    huge_item_round_trips,
    items_without_uid_or_sharing_a_uid_are_handled_per_item,
    server_killed_mid_sync_gives_errors_not_panics,
    interop_python_caldav_edit_is_seen_by_changes_since,
    interop_vdirsyncer_folder_sync_reaches_the_mailbox_and_back,
);

// ---------------------------------------------------------------- samples

fn vcard(uid: &str, name: &str) -> Vec<u8> {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nEMAIL;TYPE=INTERNET:{uid}@example.com\r\nEND:VCARD\r\n"
    )
    .into_bytes()
}

fn vtodo(uid: &str, summary: &str) -> Vec<u8> {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync//tests//EN\r\nBEGIN:VTODO\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDUE:20270105T170000Z\r\nSUMMARY:{summary}\r\nSTATUS:NEEDS-ACTION\r\nPRIORITY:1\r\nCATEGORIES:Tracked to CRM\r\nX-CRM-ID:0b9f3c1e-8f6a-4c1e-9d2a-000000000002\r\nEND:VTODO\r\nEND:VCALENDAR\r\n"
    )
    .into_bytes()
}

fn vevent(uid: &str, summary: &str) -> Vec<u8> {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync//tests//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20270101T100000Z\r\nDTEND:20270101T110000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    .into_bytes()
}

/// A weekly series in a VTIMEZONE with one date excluded and one occurrence
/// moved (RRULE parts in the order Xandikos writes them back).
const SERIES: &str = "BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//crmsync//tests//EN\r
BEGIN:VTIMEZONE\r
TZID:Europe/Berlin\r
BEGIN:DAYLIGHT\r
TZOFFSETFROM:+0100\r
TZOFFSETTO:+0200\r
TZNAME:CEST\r
DTSTART:19700329T020000\r
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3\r
END:DAYLIGHT\r
BEGIN:STANDARD\r
TZOFFSETFROM:+0200\r
TZOFFSETTO:+0100\r
TZNAME:CET\r
DTSTART:19701025T030000\r
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r
END:STANDARD\r
END:VTIMEZONE\r
BEGIN:VEVENT\r
UID:series-1\r
DTSTAMP:20260101T000000Z\r
DTSTART;TZID=Europe/Berlin:20270104T100000\r
DTEND;TZID=Europe/Berlin:20270104T110000\r
RRULE:FREQ=WEEKLY;COUNT=10\r
EXDATE;TZID=Europe/Berlin:20270111T100000\r
SUMMARY:Weekly review\r
CATEGORIES:Tracked to CRM\r
X-CRM-ID:0b9f3c1e-8f6a-4c1e-9d2a-000000000001\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:series-1\r
DTSTAMP:20260101T000000Z\r
RECURRENCE-ID;TZID=Europe/Berlin:20270118T100000\r
DTSTART;TZID=Europe/Berlin:20270118T140000\r
DTEND;TZID=Europe/Berlin:20270118T150000\r
SUMMARY:Weekly review (moved)\r
END:VEVENT\r
END:VCALENDAR\r
";

// ---------------------------------------------------------------- helpers

fn hrefs(c: &Changes) -> Vec<&str> {
    let mut v: Vec<&str> = c.changed.iter().map(|r| r.href.as_str()).collect();
    v.sort();
    v
}

/// The bytes the server stores, by a plain GET.
async fn stored(server: &Server, collection: &str, href: &str) -> Vec<u8> {
    let (status, body) = server
        .raw("GET", server.item_url(collection, href), &[], None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    body
}

/// The stored state with its sync-token replaced (as if the server forgot it).
fn with_token(state: &SyncState, token: &str) -> SyncState {
    let mut json: serde_json::Value = serde_json::from_str(state.as_str()).unwrap();
    json["token"] = serde_json::Value::String(token.to_owned());
    SyncState::new(json.to_string())
}

// ---------------------------------------------------------------- R-T3

async fn r_t3_sync_collection_reports_deletions(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let keep = mb
        .create("contacts", "keep", &vcard("keep", "Keep"))
        .await
        .unwrap();
    let gone = mb
        .create("contacts", "gone", &vcard("gone", "Gone"))
        .await
        .unwrap();
    let first = mb.changes_since("contacts", None).await.unwrap();
    assert_eq!(hrefs(&first), vec![gone.href.as_str(), keep.href.as_str()]);

    // Another client deletes one, and creates and deletes another meanwhile.
    assert!((200..300).contains(&server.delete("contacts", &gone.href).await));
    server
        .put("contacts", "brief.vcf", &vcard("brief", "Brief"))
        .await;
    server.delete("contacts", "brief.vcf").await;

    let before = mb.request_count();
    let changes = mb
        .changes_since("contacts", Some(&first.state))
        .await
        .unwrap();
    assert_eq!(mb.request_count() - before, 1, "one sync-collection REPORT");
    assert!(changes.changed.is_empty(), "{:?}", changes.changed);
    assert_eq!(changes.deleted, vec![gone.href.clone()]);
    let again = mb
        .changes_since("contacts", Some(&changes.state))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

async fn r_t3_invalid_sync_token_resyncs_without_duplicates(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let mut kept = Vec::new();
    for i in 0..5 {
        let name = format!("same-{i}");
        kept.push(
            mb.create("tasks", &name, &vtodo(&name, "Same"))
                .await
                .unwrap(),
        );
    }
    let edit = mb
        .create("tasks", "edit", &vtodo("edit", "Before"))
        .await
        .unwrap();
    let gone = mb
        .create("tasks", "gone", &vtodo("gone", "Gone"))
        .await
        .unwrap();
    let first = mb.changes_since("tasks", None).await.unwrap();
    assert_eq!(first.changed.len(), 7);

    server
        .put("tasks", &edit.href, &vtodo("edit", "After"))
        .await;
    server.delete("tasks", &gone.href).await;
    server
        .put("tasks", "added.ics", &vtodo("added", "Added"))
        .await;

    // The server no longer knows the token (expired, or the state is old).
    let bogus = match kind {
        Kind::Radicale => "http://radicale.org/ns/sync/0000000000",
        Kind::Xandikos | Kind::Cyrus => "0000000000000000000000000000000000000000",
    };
    let before = mb.request_count();
    let changes = mb
        .changes_since("tasks", Some(&with_token(&first.state, bogus)))
        .await
        .unwrap();
    assert_eq!(
        mb.request_count() - before,
        2,
        "the refused REPORT, then one full listing"
    );
    assert_eq!(hrefs(&changes), vec!["added.ics", edit.href.as_str()]);
    assert_eq!(changes.deleted, vec![gone.href.clone()]);
    assert!(changes.failed.is_empty());
    // The new state carries a working token again.
    let again = mb
        .changes_since("tasks", Some(&changes.state))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

async fn r_t3_getctag_fallback_finds_changes_and_deletions(kind: Kind) {
    let server = Server::start(kind).await;
    let mut config = server.config();
    config.use_sync_collection = false;
    let mb = DavMailbox::new(&config).unwrap();
    let a = mb.create("calendar", "a", &vevent("a", "A")).await.unwrap();
    let b = mb.create("calendar", "b", &vevent("b", "B")).await.unwrap();
    let first = mb.changes_since("calendar", None).await.unwrap();
    assert_eq!(hrefs(&first), vec![a.href.as_str(), b.href.as_str()]);

    let before = mb.request_count();
    let quiet = mb
        .changes_since("calendar", Some(&first.state))
        .await
        .unwrap();
    assert!(quiet.is_empty(), "{quiet:?}");
    assert_eq!(mb.request_count() - before, 1, "getctag only");

    server
        .put("calendar", &a.href, &vevent("a", "A edited"))
        .await;
    server.delete("calendar", &b.href).await;
    server.put("calendar", "c.ics", &vevent("c", "C")).await;
    let changes = mb
        .changes_since("calendar", Some(&quiet.state))
        .await
        .unwrap();
    assert_eq!(hrefs(&changes), vec![a.href.as_str(), "c.ics"]);
    assert_eq!(changes.deleted, vec![b.href.clone()]);
    assert!(mb
        .changes_since("calendar", Some(&changes.state))
        .await
        .unwrap()
        .is_empty());
}

async fn r_t3_nothing_changed_is_one_request_per_collection(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    mb.create("contacts", "q", &vcard("q", "Q")).await.unwrap();
    mb.create("calendar", "q", &vevent("q", "Q")).await.unwrap();
    mb.create("tasks", "q", &vtodo("q-task", "Q"))
        .await
        .unwrap();
    let mut states = Vec::new();
    for c in ["contacts", "calendar", "tasks"] {
        states.push((c, mb.changes_since(c, None).await.unwrap().state));
    }
    let before = mb.request_count();
    for (c, state) in &states {
        let changes = mb.changes_since(c, Some(state)).await.unwrap();
        assert!(changes.is_empty(), "{c}: {changes:?}");
    }
    assert_eq!(mb.request_count() - before, 3);
}

// ---------------------------------------------------------------- R-T2

async fn r_t2_watch_notifies_by_polling_the_sync_token(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox(); // polls every 200 ms
    let mut watch = mb.watch().await.unwrap();
    let quiet_start = mb.request_count();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        watch.try_next().is_none(),
        "nothing changed, nothing reported"
    );
    let polled = mb.request_count() - quiet_start;
    // ~5 polls of 3 collections, one PROPFIND each.
    assert!((3..=21).contains(&polled), "{polled} requests in 1.1 s");

    server.put("tasks", "new.ics", &vtodo("new", "New")).await;
    match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        Ok(Some(Notification::Changed(c))) if c == "tasks" => {}
        Ok(other) => panic!("expected a change in tasks, got {other:?}"),
        Err(_) => panic!("no notification for tasks within 2 s"),
    }
    drop(watch);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_drop = mb.request_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mb.request_count(),
        after_drop,
        "polling stops with the watch"
    );
}

// ---------------------------------------------------------------- R-F5

async fn r_f5_concurrent_edit_is_a_412_conflict_naming_the_current_etag(kind: Kind) {
    let server = Server::start(kind).await;
    let ours = server.mailbox();
    let phone = server.mailbox(); // another device, same account
    let created = ours
        .create("contacts", "ann", &vcard("ann", "Ann"))
        .await
        .unwrap();
    let theirs = phone
        .update(
            "contacts",
            &created.href,
            &created.etag,
            &vcard("ann", "Ann Phone"),
        )
        .await
        .unwrap();
    let err = ours
        .update(
            "contacts",
            &created.href,
            &created.etag,
            &vcard("ann", "Ann Desk"),
        )
        .await
        .unwrap_err();
    match &err {
        Error::Conflict { current, href, .. } => {
            assert_eq!(current, &theirs.etag);
            assert_eq!(href, &created.href);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let now = ours.get("contacts", &created.href).await.unwrap();
    assert!(same_item(&now.data, &vcard("ann", "Ann Phone")));
    // Creating over it is refused too, and deleting with the old etag.
    assert!(matches!(
        ours.create("contacts", "ann", &vcard("ann", "Again")).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(ours
        .delete("contacts", &created.href, &created.etag)
        .await
        .unwrap_err()
        .is_conflict());
    ours.delete("contacts", &created.href, &theirs.etag)
        .await
        .unwrap();
    assert!(matches!(
        ours.update("contacts", &created.href, &theirs.etag, &vcard("ann", "x"))
            .await,
        Err(Error::NotFound { .. })
    ));
}

// ---------------------------------------------------------------- discovery, errors

async fn discovery_from_the_server_root_finds_three_collections(kind: Kind) {
    let server = Server::start(kind).await;
    let config = DavConfig::new(USER, PASSWORD);
    let found = DavMailbox::discover(&config, &server.root()).await.unwrap();
    assert_eq!(found.contacts, Some(server.url_of("contacts")));
    assert_eq!(found.calendar, Some(server.url_of("calendar")));
    assert_eq!(found.tasks, Some(server.url_of("tasks")));

    let mut config = DavConfig::new(USER, PASSWORD);
    config.server = Some(server.root());
    config.tasks = Some(server.url_of("calendar")); // given URLs win
    let mb = DavMailbox::connect(&config).await.unwrap();
    let ids: Vec<String> = mb
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec!["contacts", "calendar", "tasks"]);
    assert_eq!(mb.collection_url("tasks"), Some(&server.url_of("calendar")));
}

/// 401 and 404 name the URL and what to fix (Radicale asks for a password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_401_and_404_name_the_url_and_the_fix() {
    let server = Server::start(Kind::Radicale).await;
    let mut config = server.config();
    config.password = "wrong".into();
    let err = DavMailbox::connect(&config).await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_authentication_failure(), "{text}");
    assert!(text.contains(server.url_of("contacts").as_str()), "{text}");
    assert!(text.contains("password"), "{text}");
    let mb = DavMailbox::new(&config).unwrap();
    let err = mb.changes_since("calendar", None).await.unwrap_err();
    assert!(
        err.to_string().contains(server.url_of("calendar").as_str()),
        "{err}"
    );

    let mut config = server.config();
    let missing = server.root().join("/alice/nope/").unwrap();
    config.contacts = Some(missing.clone());
    let err = DavMailbox::connect(&config).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(missing.as_str()) && text.contains("404"),
        "{text}"
    );
    assert!(text.contains("[mailbox.dav]"), "{text}");

    // A calendar configured as the address book is refused by connect.
    let mut config = server.config();
    config.contacts = Some(server.url_of("calendar"));
    let err = DavMailbox::connect(&config).await.unwrap_err();
    assert!(
        err.to_string().contains("not a CardDAV address book"),
        "{err}"
    );
}

// ---------------------------------------------------------------- data

async fn events_with_rrule_exdate_and_exceptions_round_trip_as_stored(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let written = SERIES.as_bytes();
    let created = mb.create("calendar", "series-1", written).await.unwrap();
    let got = mb.get("calendar", &created.href).await.unwrap();
    assert_eq!(got.etag, created.etag);
    assert_eq!(
        got.data,
        stored(&server, "calendar", &created.href).await,
        "what the server stores"
    );
    assert!(
        same_item(&got.data, written),
        "{}",
        String::from_utf8_lossy(&got.data)
    );
    let text = String::from_utf8(got.data).unwrap();
    assert_eq!(
        text.matches("BEGIN:VEVENT").count(),
        2,
        "master and exception"
    );
    for line in [
        "RECURRENCE-ID;TZID=Europe/Berlin:20270118T100000",
        "EXDATE;TZID=Europe/Berlin:20270111T100000",
        "BEGIN:VTIMEZONE",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
    // An update keeps it one item.
    let edited = SERIES.replace("Weekly review (moved)", "Weekly review (moved again)");
    let updated = mb
        .update("calendar", &created.href, &got.etag, edited.as_bytes())
        .await
        .unwrap();
    let got = mb.get("calendar", &created.href).await.unwrap();
    assert_eq!(got.etag, updated.etag);
    assert!(same_item(&got.data, edited.as_bytes()));
}

async fn vtodo_round_trips_as_stored(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let written = vtodo("todo-1", "Call back");
    let created = mb.create("tasks", "todo-1", &written).await.unwrap();
    let got = mb.get("tasks", &created.href).await.unwrap();
    assert_eq!(got.data, stored(&server, "tasks", &created.href).await);
    assert!(
        same_item(&got.data, &written),
        "{}",
        String::from_utf8_lossy(&got.data)
    );
    let changes = mb.changes_since("tasks", None).await.unwrap();
    assert_eq!(hrefs(&changes), vec![created.href.as_str()]);

    // get_many is one multiget REPORT per batch, one result per href.
    let other = mb
        .create("tasks", "todo-2", &vtodo("todo-2", "Write"))
        .await
        .unwrap();
    let before = mb.request_count();
    let asked = vec![
        other.href.clone(),
        "missing.ics".into(),
        created.href.clone(),
    ];
    let got = mb.get_many("tasks", &asked).await.unwrap();
    assert_eq!(mb.request_count() - before, 1);
    assert!(got[0].1.is_ok() && got[2].1.is_ok());
    assert!(matches!(got[1].1, Err(Error::NotFound { .. })));
}

async fn vcard_3_0_is_kept_as_version_3_0(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let written = vcard("v3", "Ann Example");
    let created = mb.create("contacts", "v3", &written).await.unwrap();
    let got = mb.get("contacts", &created.href).await.unwrap();
    assert_eq!(got.data, stored(&server, "contacts", &created.href).await);
    assert!(
        same_item(&got.data, &written),
        "{}",
        String::from_utf8_lossy(&got.data)
    );
    assert!(String::from_utf8_lossy(&got.data).contains("VERSION:3.0"));
}

async fn huge_item_round_trips(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    // A 1 MB description, folded at 75 octets as RFC 5545 §3.1 asks.
    let long = "x".repeat(1_000_000);
    let mut line = format!("DESCRIPTION:{long}");
    let mut folded = String::new();
    while line.len() > 75 {
        let rest = line.split_off(75);
        folded.push_str(&line);
        folded.push_str("\r\n ");
        line = rest;
    }
    folded.push_str(&line);
    let data = String::from_utf8(vevent("huge", "Huge"))
        .unwrap()
        .replace("SUMMARY:Huge\r\n", &format!("SUMMARY:Huge\r\n{folded}\r\n"));
    let small = mb
        .create("calendar", "small", &vevent("small", "Small"))
        .await
        .unwrap();
    let created = mb
        .create("calendar", "huge", data.as_bytes())
        .await
        .unwrap();
    let got = mb
        .get_many("calendar", &[created.href.clone(), small.href.clone()])
        .await
        .unwrap();
    let huge = got[0].1.as_ref().unwrap();
    assert!(same_item(&huge.data, data.as_bytes()));
    assert!(got[1].1.is_ok());
}

// ---------------------------------------------------------------- bad input

async fn items_without_uid_or_sharing_a_uid_are_handled_per_item(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let no_uid = b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:No Uid\r\nN:Uid;No;;;\r\nEND:VCARD\r\n";
    let first = mb
        .create("contacts", "twin-1", &vcard("twin", "One"))
        .await
        .unwrap();
    let created_no_uid = mb.create("contacts", "no-uid", no_uid).await;
    let twin = mb.create("contacts", "twin-2", &vcard("twin", "Two")).await;
    match kind {
        // Radicale refuses both, each with its own error naming the item.
        Kind::Radicale => {
            let err = created_no_uid.unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{err}");
            assert!(err.to_string().contains("no-uid.vcf"), "{err}");
            let err = twin.unwrap_err();
            assert!(err.to_string().contains("UID"), "{err}");
            assert!(err.to_string().contains("twin-2.vcf"), "{err}");
        }
        // Cyrus refuses the one without UID and stores the twin.
        Kind::Cyrus => {
            let err = created_no_uid.unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{err}");
            assert!(err.to_string().contains("no-uid.vcf"), "{err}");
            twin.unwrap();
            // A UID is unique across all of an account's calendars there.
            mb.create("calendar", "clash", &vevent("clash", "Event"))
                .await
                .unwrap();
            let err = mb
                .create("tasks", "clash", &vtodo("clash", "Task"))
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("already has this UID")
                    && err.to_string().contains("/Default/clash.ics"),
                "{err}"
            );
        }
        // Xandikos stores both; they are separate items to the agent.
        Kind::Xandikos => {
            created_no_uid.unwrap();
            twin.unwrap();
        }
    }
    let changes = mb.changes_since("contacts", None).await.unwrap();
    let listed = hrefs(&changes);
    assert!(listed.contains(&first.href.as_str()));
    let all: Vec<String> = changes.changed.iter().map(|r| r.href.clone()).collect();
    let got = mb.get_many("contacts", &all).await.unwrap();
    assert!(got.iter().all(|(_, r)| r.is_ok()), "{got:?}");
    let stored = match kind {
        Kind::Radicale => 1,
        Kind::Cyrus => 2,
        Kind::Xandikos => 3,
    };
    assert_eq!(listed.len(), stored, "{listed:?}");
}

async fn server_killed_mid_sync_gives_errors_not_panics(kind: Kind) {
    let mut server = Server::start(kind).await;
    let mb = server.mailbox();
    let a = mb.create("contacts", "a", &vcard("a", "A")).await.unwrap();
    let first = mb.changes_since("contacts", None).await.unwrap();
    let mut watch = mb.watch().await.unwrap();
    server.kill();

    let err = mb
        .changes_since("contacts", Some(&first.state))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Remote { status: None, .. }), "{err}");
    assert!(
        err.to_string().contains(server.url_of("contacts").as_str()),
        "{err}"
    );
    let got = mb
        .get_many("contacts", &[a.href.clone(), "b.vcf".into()])
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    for (href, result) in &got {
        let err = result.as_ref().unwrap_err();
        assert!(err.to_string().contains(href.as_str()), "{err}");
    }
    assert!(mb.create("contacts", "c", &vcard("c", "C")).await.is_err());
    assert!(mb
        .update("contacts", &a.href, &a.etag, &vcard("a", "A2"))
        .await
        .is_err());
    assert!(mb
        .delete("contacts", &a.href, &Etag::new("x"))
        .await
        .is_err());
    // The watch keeps polling (and failing) quietly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(watch.try_next().is_none());
}

// ---------------------------------------------------------------- scripted failures

const TRUNCATED: &str = r#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/c/a.vcf</D:href><D:propstat><D:prop><D:getetag>"a1"</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response><D:response><D:href>/c/</D:href><D:status>HTTP/1.1 507 Insufficient Storage</D:status></D:response><D:sync-token>http://example.com/sync/1</D:sync-token></D:multistatus>"#;
const REST: &str = r#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/c/b.vcf</D:href><D:propstat><D:prop><D:getetag>"b1"</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response><D:response><D:href>/c/broken.vcf</D:href><D:propstat><D:prop><D:getetag/></D:prop><D:status>HTTP/1.1 500 Internal Server Error</D:status></D:propstat></D:response><D:sync-token>http://example.com/sync/2</D:sync-token></D:multistatus>"#;

fn scripted_mailbox(server: &Scripted) -> DavMailbox {
    let mut config = DavConfig::new("u", "p");
    config.contacts = Some(server.url("/c/"));
    config.timeout = Duration::from_secs(5);
    DavMailbox::new(&config).unwrap()
}

#[tokio::test]
async fn rfc6578_truncated_answer_507_is_continued_with_the_new_token() {
    let server = Scripted::start(vec![
        Reply::Full(207, TRUNCATED.into()),
        Reply::Full(207, REST.into()),
    ])
    .await;
    let mb = scripted_mailbox(&server);
    let changes = mb.changes_since("contacts", None).await.unwrap();
    assert_eq!(hrefs(&changes), vec!["a.vcf", "b.vcf"]);
    assert_eq!(changes.failed.len(), 1, "the 500 item is reported alone");
    assert_eq!(changes.failed[0].0, "broken.vcf");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].0.starts_with("REPORT /c/"));
    assert!(
        requests[1].1.contains("http://example.com/sync/1"),
        "{}",
        requests[1].1
    );
    assert!(changes.state.as_str().contains("http://example.com/sync/2"));
}

#[tokio::test]
async fn server_500_is_an_error_per_call_and_per_item() {
    let server = Scripted::start(vec![Reply::Full(500, "database on fire".into())]).await;
    let mb = scripted_mailbox(&server);
    let err = mb.changes_since("contacts", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Remote {
                status: Some(500),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("database on fire"), "{err}");
    let got = mb
        .get_many("contacts", &["a.vcf".into(), "b.vcf".into()])
        .await
        .unwrap();
    assert!(got.iter().all(|(_, r)| r.is_err()));
    let err = mb
        .create("contacts", "x", &vcard("x", "X"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
}

#[tokio::test]
async fn answer_dropped_mid_body_is_an_error_not_a_panic() {
    let server = Scripted::start(vec![Reply::DropMidBody(207, TRUNCATED[..200].into())]).await;
    let mb = scripted_mailbox(&server);
    let err = mb.changes_since("contacts", None).await.unwrap_err();
    assert!(matches!(err, Error::Remote { .. }), "{err}");
    let got = mb.get_many("contacts", &["a.vcf".into()]).await.unwrap();
    assert!(got[0].1.is_err());
}

#[tokio::test]
async fn garbage_multistatus_is_an_error_not_a_panic() {
    let server = Scripted::start(vec![Reply::Full(207, "<html><body>proxy login".into())]).await;
    let mb = scripted_mailbox(&server);
    let err = mb.changes_since("contacts", None).await.unwrap_err();
    assert!(err.to_string().contains("multistatus"), "{err}");
}

#[tokio::test]
async fn mail_methods_are_unsupported() {
    let mut config = DavConfig::new("u", "p");
    config.contacts = Some(Url::parse("http://127.0.0.1:9/c/").unwrap());
    let mb = DavMailbox::new(&config).unwrap();
    assert!(mb.mail_folders().await.unwrap().is_empty());
    assert!(matches!(
        mb.message_flags("mail/INBOX", &[]).await,
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        mb.changes_since("calendar", None).await,
        Err(Error::NoSuchCollection { .. })
    ));
}

// ---------------------------------------------------------------- interop

async fn interop_python_caldav_edit_is_seen_by_changes_since(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let ours = mb
        .create("calendar", "py-edit", &vevent("py-edit", "Ours"))
        .await
        .unwrap();
    let first = mb.changes_since("calendar", None).await.unwrap();

    let script = r#"
import sys, caldav
url, user, password, cal_url = sys.argv[1:5]
with caldav.DAVClient(url=url, username=user, password=password) as client:
    cal = caldav.Calendar(client=client, url=cal_url)
    event = cal.get_event_by_uid("py-edit")
    event.icalendar_component["summary"] = "Edited by python-caldav"
    event.save()
    cal.save_event(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//python//EN\r\nBEGIN:VEVENT\r\nUID:py-new\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20270201T100000Z\r\nDTEND:20270201T110000Z\r\nSUMMARY:Created by python-caldav\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
"#;
    let (root, calendar) = (server.root(), server.url_of("calendar"));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::venv().join("bin/python"))
            .arg("-c")
            .arg(script)
            .arg(root.as_str())
            .arg(USER)
            .arg(PASSWORD)
            .arg(calendar.as_str())
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "python-caldav failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let changes = mb
        .changes_since("calendar", Some(&first.state))
        .await
        .unwrap();
    assert_eq!(changes.changed.len(), 2, "{changes:?}");
    let edited = changes
        .changed
        .iter()
        .find(|r| r.href == ours.href)
        .unwrap();
    assert_ne!(edited.etag, ours.etag);
    let all: Vec<String> = changes.changed.iter().map(|r| r.href.clone()).collect();
    let got = mb.get_many("calendar", &all).await.unwrap();
    let texts: Vec<String> = got
        .into_iter()
        .map(|(_, r)| String::from_utf8(r.unwrap().data).unwrap())
        .collect();
    assert!(texts
        .iter()
        .any(|t| t.contains("SUMMARY:Edited by python-caldav")));
    assert!(texts.iter().any(|t| t.contains("UID:py-new")));
    // And our next write after their edit carries their etag.
    mb.update(
        "calendar",
        &ours.href,
        &edited.etag,
        &vevent("py-edit", "Merged"),
    )
    .await
    .unwrap();
}

/// vdirsyncer syncs a folder of .ics files with the same calendar: what it
/// uploads is found by `changes_since`, what the mailbox writes reaches the
/// folder.
async fn interop_vdirsyncer_folder_sync_reaches_the_mailbox_and_back(kind: Kind) {
    let server = Server::start(kind).await;
    let mb = server.mailbox();
    let ours = mb
        .create("calendar", "ours", &vevent("ours", "Ours"))
        .await
        .unwrap();
    let first = mb.changes_since("calendar", None).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("theirs.ics"),
        vevent("theirs", "From vdirsyncer"),
    )
    .unwrap();
    let config = work.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[general]\nstatus_path = \"{status}/\"\n\n[pair p]\na = \"local\"\nb = \"remote\"\ncollections = null\n\n[storage local]\ntype = \"filesystem\"\npath = \"{folder}/\"\nfileext = \".ics\"\n\n[storage remote]\ntype = \"caldav\"\nurl = \"{url}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
            status = work.path().join("status").display(),
            folder = folder.display(),
            url = server.url_of("calendar"),
        ),
    )
    .unwrap();
    let vdirsyncer = |command: &'static str| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(common::venv().join("bin/vdirsyncer"))
                .arg("-c")
                .arg(&config)
                .arg(command)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "vdirsyncer {command}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        })
    };
    vdirsyncer("discover").await.unwrap();
    vdirsyncer("sync").await.unwrap();

    // Theirs reached the server and the mailbox sees it; ours reached the folder.
    let changes = mb
        .changes_since("calendar", Some(&first.state))
        .await
        .unwrap();
    assert_eq!(changes.changed.len(), 1, "{changes:?}");
    let theirs = mb.get("calendar", &changes.changed[0].href).await.unwrap();
    assert!(String::from_utf8_lossy(&theirs.data).contains("UID:theirs"));
    let in_folder = |uid: &str| {
        std::fs::read_dir(&folder).unwrap().any(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .contains(&format!("SUMMARY:{uid}"))
        })
    };
    assert!(in_folder("Ours"));

    // An edit made here travels to the folder at vdirsyncer's next sync.
    mb.update(
        "calendar",
        &ours.href,
        &ours.etag,
        &vevent("ours", "Ours edited"),
    )
    .await
    .unwrap();
    vdirsyncer("sync").await.unwrap();
    assert!(in_folder("Ours edited"));
}

/// Both servers refuse invalid data on PUT; a broken file put into
/// Radicale's storage folder behind its back is skipped by the server (it
/// logs "Skip broken item"), and the other items go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_icalendar_on_radicale_disk_leaves_other_items_alone() {
    let server = Server::start(Kind::Radicale).await;
    let mb = server.mailbox();
    let good = mb
        .create("calendar", "good", &vevent("good", "Good"))
        .await
        .unwrap();
    let err = mb
        .create(
            "calendar",
            "bad",
            b"BEGIN:VCALENDAR\r\nthis is not iCalendar\r\n",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    std::fs::write(
        server.folder_of("calendar").join("planted.ics"),
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nthis is not iCalendar\r\n",
    )
    .unwrap();
    let changes = mb.changes_since("calendar", None).await.unwrap();
    assert_eq!(hrefs(&changes), vec![good.href.as_str()]);
    let got = mb
        .get_many("calendar", &["planted.ics".into(), good.href.clone()])
        .await
        .unwrap();
    assert!(got[0].1.is_err());
    assert!(got[1].1.is_ok());
}

/// Xandikos serves whatever its git store holds: an invalid item committed
/// behind its back is listed, and reading it is a per-item Malformed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_icalendar_in_xandikos_store_is_malformed_per_item() {
    let server = Server::start(Kind::Xandikos).await;
    let mb = server.mailbox();
    let good = mb
        .create("tasks", "good", &vtodo("good", "Good"))
        .await
        .unwrap();
    server.xandikos_commit("tasks", "planted.ics", b"BEGIN:VCALENDAR\r\nno end\r\n");
    let changes = mb.changes_since("tasks", None).await.unwrap();
    assert_eq!(hrefs(&changes), vec![good.href.as_str(), "planted.ics"]);
    let got = mb
        .get_many("tasks", &["planted.ics".into(), good.href.clone()])
        .await
        .unwrap();
    let err = got[0].1.as_ref().unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("planted.ics"), "{err}");
    assert!(got[1].1.is_ok());
}

const ETAG_ONLY: &str = r#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/c/x.vcf</D:href><D:propstat><D:prop><D:getetag>"fetched"</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>"#;

/// A server that answers PUT without an ETag: the etag is asked for.
#[tokio::test]
async fn put_without_etag_header_fetches_the_etag() {
    let server = Scripted::start(vec![
        Reply::Full(201, String::new()),
        Reply::Full(207, ETAG_ONLY.into()),
    ])
    .await;
    let mb = scripted_mailbox(&server);
    let created = mb.create("contacts", "x", &vcard("x", "X")).await.unwrap();
    assert_eq!(created.href, "x.vcf");
    assert_eq!(created.etag, Etag::new("\"fetched\""));
    let requests = server.requests();
    assert!(requests[0].0.starts_with("PUT /c/x.vcf"), "{requests:?}");
    assert!(
        requests[1].0.starts_with("PROPFIND /c/x.vcf"),
        "{requests:?}"
    );
}
