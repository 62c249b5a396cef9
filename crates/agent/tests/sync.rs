//! The agent end to end: a real CRM server (in-process, SQLite in a temp
//! folder) and a real local mailbox in a temp folder. Each test is named
//! after the rule it checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crmsync_agent::{Agent, Config, SyncOptions};
use crmsync_core::mapping::{parse_item, render_item, RenderOptions};

include!("common/harness.rs");

#[tokio::test]
async fn r_s2_crm_contacts_appear_in_the_address_book() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let beta = w.contact(&ann, "Beta").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let r = sync(&agent).await;
    assert_eq!(r.written_to_mailbox, 2);
    assert_eq!(r.acknowledged, 2);
    let cards = vcards(&w.contacts_dir("ann"));
    assert_eq!(cards.len(), 2);
    let (_, a) = find(&cards, &alpha).expect("Alpha in the address book");
    assert_eq!(a.fields["last_name"], "Alpha");
    assert_eq!(a.fields["email"], "alpha@example.com");
    assert!(a.tracked, "R-M1: linked items carry the marker");
    assert!(find(&cards, &beta).is_some());
    let status = agent.status().await.unwrap();
    assert_eq!(
        (status.not_tracked, status.to_be_tracked, status.tracked),
        (0, 0, 2)
    );
    // Nothing changed: nothing written, nothing pushed.
    let again = sync(&agent).await;
    assert_eq!(again.written_to_mailbox, 0);
    assert!(again.pushed.is_empty(), "{again:?}");
    // The user's client adds a property the mapping does not own.
    let path = find(&vcards(&w.contacts_dir("ann")), &alpha)
        .unwrap()
        .0
        .clone();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("END:VCARD", "NICKNAME:Al\r\nEND:VCARD")).unwrap();
    let r = sync(&agent).await;
    assert!(
        r.pushed.is_empty(),
        "an unmapped property is not pushed: {r:?}"
    );
    // A CRM edit reaches the mailbox, keeping the user's copy.
    w.patch_contact(&ann, &alpha, json!({"city": "Oslo"})).await;
    let r = sync(&agent).await;
    assert_eq!(r.written_to_mailbox, 1);
    let cards = vcards(&w.contacts_dir("ann"));
    assert_eq!(find(&cards, &alpha).unwrap().1.fields["city"], "Oslo");
    assert_eq!(cards.len(), 2);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("NICKNAME:Al"),
        "the user's property stays: {text}"
    );
}

#[tokio::test]
async fn r_f5_mailbox_edit_reaches_the_crm() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let cards = vcards(&w.contacts_dir("ann"));
    let (path, _) = find(&cards, &alpha).unwrap();
    edit(path, "job_title", "Buyer");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("update"), Some(&1), "{r:?}");
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(rec["job_title"], "Buyer");
    assert_eq!(rec["last_name"], "Alpha");
    // Both sides changed, different fields: both kept on both sides.
    edit(path, "city", "Bergen");
    w.patch_contact(&ann, &alpha, json!({"mobile": "+4712345678"}))
        .await;
    sync(&agent).await;
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(rec["city"], "Bergen");
    assert_eq!(rec["mobile"], "+4712345678");
    let cards = vcards(&w.contacts_dir("ann"));
    let (_, item) = find(&cards, &alpha).unwrap();
    assert_eq!(item.fields["city"], "Bergen");
    assert_eq!(item.fields["mobile"], "+4712345678");
    assert_eq!(item.fields["job_title"], "Buyer");
    // And it is stable: the next sync does nothing.
    let r = sync(&agent).await;
    assert!(r.pushed.is_empty() && r.written_to_mailbox == 0, "{r:?}");
}

const MARKED: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:marked-1\r\nFN:Mark Edwards\r\nN:Edwards;Mark;;;\r\nEMAIL:mark@example.com\r\nCATEGORIES:Tracked to CRM\r\nEND:VCARD\r\n";
const PLAIN: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:plain-1\r\nFN:Paula Plain\r\nN:Plain;Paula;;;\r\nEMAIL:paula@example.com\r\nEND:VCARD\r\n";

#[tokio::test]
async fn r_m1_marking_a_vcard_tracks_it() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let dir = w.contacts_dir("ann");
    std::fs::write(dir.join("marked-1.vcf"), MARKED).unwrap();
    std::fs::write(dir.join("plain-1.vcf"), PLAIN).unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let crm = w.my_contacts(&ann).await;
    assert_eq!(crm.len(), 1, "only the marked vCard is tracked: {crm:?}");
    assert_eq!(crm[0]["last_name"], "Edwards");
    assert_eq!(crm[0]["email"], "mark@example.com");
    let id = crm[0]["id"].as_str().unwrap();
    let marked = parse_item(&std::fs::read(dir.join("marked-1.vcf")).unwrap()).unwrap();
    assert_eq!(
        marked.crm_id.unwrap().to_string(),
        id,
        "R-M2: X-CRM-ID written back"
    );
    assert_eq!(marked.uid, "marked-1");
    let status = agent.status().await.unwrap();
    assert_eq!(
        (status.not_tracked, status.to_be_tracked, status.tracked),
        (1, 0, 1)
    );
    // Marking the plain one later tracks it too; nothing is tracked twice.
    let bytes = PLAIN.replace("END:VCARD", "CATEGORIES:Tracked to CRM\r\nEND:VCARD");
    std::fs::write(dir.join("plain-1.vcf"), bytes).unwrap();
    sync(&agent).await;
    sync(&agent).await;
    assert_eq!(w.my_contacts(&ann).await.len(), 2);
    assert_eq!(vcards(&dir).len(), 2);
    let status = agent.status().await.unwrap();
    assert_eq!(
        (status.not_tracked, status.to_be_tracked, status.tracked),
        (0, 0, 2)
    );
}

#[tokio::test]
async fn r_m2_lost_cache_relinks_without_duplicates() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    w.contact(&ann, "Beta").await;
    let first = w.agent(&ann, "ann", "cache").await;
    sync(&first).await;
    std::fs::write(w.contacts_dir("ann").join("marked-1.vcf"), MARKED).unwrap();
    sync(&first).await;
    assert_eq!(w.my_contacts(&ann).await.len(), 3);
    drop(first);
    // A reinstall: a new, empty cache on the same mailbox.
    let second = w.agent(&ann, "ann", "fresh-cache").await;
    let r = sync(&second).await;
    assert_eq!(
        r.pushed.get("track"),
        Some(&3),
        "relinked by X-CRM-ID: {r:?}"
    );
    sync(&second).await;
    assert_eq!(
        w.my_contacts(&ann).await.len(),
        3,
        "no duplicate in the CRM"
    );
    let cards = vcards(&w.contacts_dir("ann"));
    assert_eq!(cards.len(), 3, "no duplicate in the mailbox");
    let status = second.status().await.unwrap();
    assert_eq!(status.tracked, 3);
    // Still linked: a mailbox edit reaches the CRM record.
    let (path, _) = find(&cards, &alpha).unwrap();
    edit(path, "city", "Tromsø");
    sync(&second).await;
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(rec["city"], "Tromsø");
}

#[tokio::test]
async fn r9_contact_deleted_in_mailbox_stays_in_crm() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let cards = vcards(&w.contacts_dir("ann"));
    std::fs::remove_file(&find(&cards, &alpha).unwrap().0).unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("delete"), Some(&1), "{r:?}");
    let (status, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "§9: the contact stays in the CRM: {rec}");
    assert_eq!(agent.status().await.unwrap().tracked, 0);
    // R-S9: not sent to the mailbox again, even when it changes.
    w.patch_contact(&ann, &alpha, json!({"city": "Oslo"})).await;
    sync(&agent).await;
    assert!(vcards(&w.contacts_dir("ann")).is_empty());
}

#[tokio::test]
async fn r_s8_reassigned_contact_leaves_the_mailbox() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let (bob_id, _) = w.user("bob@example.com").await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(w.contact(&ann, &format!("Person{n}")).await);
    }
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    assert_eq!(vcards(&w.contacts_dir("ann")).len(), 10);
    w.patch_contact(&ann, &ids[0], json!({"owner_id": bob_id}))
        .await;
    let r = sync(&agent).await;
    assert_eq!(r.deleted_from_mailbox, 1, "{r:?}");
    let cards = vcards(&w.contacts_dir("ann"));
    assert_eq!(cards.len(), 9);
    assert!(find(&cards, &ids[0]).is_none());
    let (status, _) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(status, 200, "it only left ann's mailbox");
}

#[tokio::test]
async fn r_t5_mass_delete_is_held_back() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let (bob_id, _) = w.user("bob@example.com").await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(w.contact(&ann, &format!("Person{n}")).await);
    }
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    // Six of ten (more than 5, and 60% > 20%) leave ann's filter at once.
    for id in &ids[..6] {
        w.patch_contact(&ann, id, json!({"owner_id": bob_id})).await;
    }
    let r = sync(&agent).await;
    assert_eq!(r.held_deletions, 6, "{r:?}");
    assert_eq!(r.deleted_from_mailbox, 0);
    assert!(r
        .mass_delete
        .as_deref()
        .unwrap()
        .contains("--allow-mass-delete"));
    assert_eq!(vcards(&w.contacts_dir("ann")).len(), 10, "nothing deleted");
    // Held again at the next plain sync.
    let r = sync(&agent).await;
    assert_eq!(r.held_deletions, 6);
    assert_eq!(vcards(&w.contacts_dir("ann")).len(), 10);
    // The user allows it.
    let r = agent
        .sync_once(SyncOptions {
            allow_mass_delete: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.deleted_from_mailbox, 6, "{r:?}");
    assert_eq!(vcards(&w.contacts_dir("ann")).len(), 4);
}

/// `n` open tasks of the user in the CRM.
async fn tasks(w: &World, token: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, body) = w
            .call(
                token,
                Method::POST,
                "/api/v1/tasks",
                Some(json!({"subject": format!("Task {i}")})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids
}

async fn crm_count(w: &World, token: &str, set: &str) -> usize {
    w.mine(token, set).await.len()
}

fn empty_folder(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
}

#[tokio::test]
async fn r_t5_emptied_task_folder_deletes_nothing_in_the_crm_until_allowed() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    tasks(&w, &ann, 60).await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let dir = w.dir.path().join("ann/tasks");
    assert_eq!(items_in(&dir).len(), 60);
    empty_folder(&dir);
    let r = sync(&agent).await;
    assert_eq!(
        crm_count(&w, &ann, "tasks").await,
        60,
        "nothing deleted in the CRM: {r:?}"
    );
    assert_eq!(r.held_deletions, 60, "{r:?}");
    assert!(r.pushed.is_empty(), "{r:?}");
    let why = r.mass_delete.as_deref().expect("held back");
    assert!(
        why.contains("60 from tasks")
            && why.contains("in the CRM")
            && why.contains("--allow-mass-delete"),
        "says what and why: {why}"
    );
    // Held again: the deletions are not forgotten.
    let r = sync(&agent).await;
    assert_eq!(r.held_deletions, 60, "{r:?}");
    assert_eq!(crm_count(&w, &ann, "tasks").await, 60);
    let r = agent
        .sync_once(SyncOptions {
            allow_mass_delete: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.pushed.get("delete"), Some(&60), "{r:?}");
    assert_eq!(crm_count(&w, &ann, "tasks").await, 0);
}

#[tokio::test]
async fn r_t5_deleting_the_one_future_appointment_in_the_crm_is_not_held_back() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let body = w.create(&ann, "appointments", json!({"subject": "Only one", "start": "2030-06-01T10:00:00Z", "end": "2030-06-01T11:00:00Z"})).await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let dir = w.dir.path().join("ann/calendar");
    assert_eq!(items_in(&dir).len(), 1);
    let (status, _) = w
        .call(
            &ann,
            Method::DELETE,
            &format!("/api/v1/appointments/{}", body["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let r = sync(&agent).await;
    assert_eq!(r.mass_delete, None, "{r:?}");
    assert_eq!(r.deleted_from_mailbox, 1, "{r:?}");
    assert!(items_in(&dir).is_empty());
}

#[tokio::test]
async fn r_t5_limits_changed_by_setting_take_effect() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    tasks(&w, &ann, 3).await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    w.org_settings(json!({"mass_delete_max_items": 2, "mass_delete_min_items": 0}))
        .await;
    empty_folder(&w.dir.path().join("ann/tasks"));
    let r = sync(&agent).await;
    assert_eq!(r.held_deletions, 3, "3 > 2: {r:?}");
    assert_eq!(crm_count(&w, &ann, "tasks").await, 3);
    w.org_settings(json!({"mass_delete_max_items": 50, "mass_delete_min_items": 5}))
        .await;
    let r = sync(&agent).await;
    assert_eq!(r.mass_delete, None, "{r:?}");
    assert_eq!(r.pushed.get("delete"), Some(&3), "{r:?}");
    assert_eq!(crm_count(&w, &ann, "tasks").await, 0);
}

/// The parsed items of a vdir folder (`calendar`, `tasks`).
fn items_in(dir: &Path) -> Vec<(PathBuf, crmsync_core::mapping::MailboxItem)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ics" || e == "vcf"))
        .map(|p| {
            let item = parse_item(&std::fs::read(&p).unwrap()).unwrap();
            (p, item)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn r_s2_appointments_and_tasks_reach_calendar_and_task_list() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let meeting = w.create(&ann, "appointments", json!({"subject": "Kickoff", "location": "Room 1", "start": "2030-06-01T10:00:00Z", "end": "2030-06-01T11:00:00Z"})).await;
    w.create(
        &ann,
        "tasks",
        json!({"subject": "Send offer", "priority": "high"}),
    )
    .await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let r = sync(&agent).await;
    assert_eq!(r.written_to_mailbox, 2, "{r:?}");
    let root = w.dir.path().join("ann");
    let events = items_in(&root.join("calendar"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.fields["subject"], "Kickoff");
    assert_eq!(events[0].1.fields["start"], "2030-06-01T10:00:00Z");
    assert_eq!(
        events[0].1.crm_id.unwrap().to_string(),
        meeting["id"].as_str().unwrap()
    );
    let todos = items_in(&root.join("tasks"));
    assert_eq!(todos.len(), 1);
    assert_eq!(todos[0].1.fields["subject"], "Send offer");
    // Nothing moves on a second sync (the round trip is exact, R-F2).
    let again = sync(&agent).await;
    assert!(
        again.pushed.is_empty() && again.written_to_mailbox == 0,
        "{again:?}"
    );
    // A mailbox edit of the event reaches the CRM.
    edit(&events[0].0, "location", "Room 2");
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("update"), Some(&1), "{r:?}");
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/appointments/{}", meeting["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(rec["location"], "Room 2");
}

#[tokio::test]
async fn r_m1_marking_a_todo_tracks_it() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let dir = w.dir.path().join("ann").join("tasks");
    std::fs::write(
        dir.join("todo-1.ics"),
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VTODO\r\nUID:todo-1\r\nDTSTAMP:20261125T090000Z\r\nSUMMARY:Call back\r\nCATEGORIES:Tracked to CRM\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
    )
    .unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    let (_, list) = w
        .call(&ann, Method::GET, "/api/v1/tasks?owner=me", None)
        .await;
    let list = list["items"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["subject"], "Call back");
    let item = parse_item(&std::fs::read(dir.join("todo-1.ics")).unwrap()).unwrap();
    assert_eq!(
        item.crm_id.unwrap().to_string(),
        list[0]["id"].as_str().unwrap()
    );
    sync(&agent).await;
    let (_, list) = w
        .call(&ann, Method::GET, "/api/v1/tasks?owner=me", None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn r_c3_secondary_leaves_mailbox_changes_for_the_primary() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let primary = w.agent(&ann, "laptop", "cache").await;
    sync(&primary).await;
    let secondary = w.agent(&ann, "phone", "cache").await;
    std::fs::write(w.contacts_dir("phone").join("marked-1.vcf"), MARKED).unwrap();
    let r = sync(&secondary).await;
    assert_eq!(r.role, "secondary");
    assert_eq!(r.left_for_primary, 1, "{r:?}");
    assert!(r.pushed.is_empty());
    assert!(
        w.my_contacts(&ann).await.is_empty(),
        "a secondary never pushes (R-C3)"
    );
    // The change waits (R-C6): still to be tracked.
    assert_eq!(secondary.status().await.unwrap().to_be_tracked, 1);
    let r = sync(&secondary).await;
    assert_eq!(r.left_for_primary, 1, "still waiting: {r:?}");
}

#[tokio::test]
async fn r_t4_journaled_push_is_sent_again_without_duplicates() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let report = sync(&agent).await;
    let dir = w.contacts_dir("ann");
    std::fs::write(dir.join("marked-1.vcf"), MARKED).unwrap();
    // A sync that journaled its track, sent it, and died before the answer
    // was stored: the server applied it, the journal still holds it.
    let op = json!({"op_id": "op-crash-1", "kind": "track", "set": "contacts",
        "fields": {"last_name": "Edwards", "first_name": "Mark", "email": "mark@example.com"}, "item_uid": "marked-1"});
    let mailbox = crmsync_mailbox::LocalMailbox::open(&crmsync_mailbox::LocalConfig {
        root: w.dir.path().join("ann"),
    })
    .unwrap();
    use crmsync_mailbox::Mailbox;
    let current = mailbox.get("contacts", "marked-1.vcf").await.unwrap();
    agent
        .cache()
        .journal_add(&crmsync_agent::cache::JournalEntry {
            op_id: "op-crash-1".into(),
            collection: "contacts".into(),
            href: "marked-1.vcf".into(),
            etag: current.etag.as_str().into(),
            op: op.clone(),
        })
        .await
        .unwrap();
    let (s, _) = w
        .call(
            &ann,
            Method::POST,
            "/api/v1/sync/push",
            Some(json!({"client_id": report.client_id, "ops": [op]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(w.my_contacts(&ann).await.len(), 1);
    assert_eq!(agent.status().await.unwrap().pending_operations, 1);
    // The next sync sends the same op_id again and applies the stored answer.
    sync(&agent).await;
    sync(&agent).await;
    let crm = w.my_contacts(&ann).await;
    assert_eq!(crm.len(), 1, "no duplicate: {crm:?}");
    let item = parse_item(&std::fs::read(dir.join("marked-1.vcf")).unwrap()).unwrap();
    assert_eq!(
        item.crm_id.unwrap().to_string(),
        crm[0]["id"].as_str().unwrap()
    );
    let status = agent.status().await.unwrap();
    assert_eq!((status.tracked, status.pending_operations), (1, 0));
}

#[tokio::test]
async fn r_f5_overlapping_edits_later_side_wins() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let path = find(&vcards(&w.contacts_dir("ann")), &alpha)
        .unwrap()
        .0
        .clone();
    // CRM first, mailbox a second later: the mailbox's value wins.
    w.patch_contact(
        &ann,
        &alpha,
        json!({"city": "Crm City", "job_title": "CRM title"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    edit(&path, "city", "Mailbox City");
    sync(&agent).await;
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(rec["city"], "Mailbox City");
    assert_eq!(rec["job_title"], "CRM title", "changed on one side only");
    let item = parse_item(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(item.fields["city"], "Mailbox City");
    assert_eq!(item.fields["job_title"], "CRM title");
    // Mailbox first, CRM a second later: the CRM's value wins.
    edit(&path, "city", "Mailbox Again");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    w.patch_contact(&ann, &alpha, json!({"city": "Crm Again"}))
        .await;
    sync(&agent).await;
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(rec["city"], "Crm Again");
    let item = parse_item(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(item.fields["city"], "Crm Again");
}

/// R-F5's tie rule: both sides edit the same field and the two items'
/// modification times are equal (the mailbox's as the agent reads it, to
/// the second, equal to the CRM record's second): the CRM's value wins.
#[tokio::test]
async fn r_f5_overlapping_edits_with_equal_times_the_crm_wins() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let path = find(&vcards(&w.contacts_dir("ann")), &alpha)
        .unwrap()
        .0
        .clone();
    let (status, rec) = w
        .call(
            &ann,
            Method::PATCH,
            &format!("/api/v1/contacts/{alpha}"),
            Some(json!({"city": "Crm City"})),
        )
        .await;
    assert_eq!(status, 200, "{rec}");
    let crm_time =
        crmsync_core::time::parse_datetime(rec["modified_at"].as_str().unwrap()).unwrap();
    edit(&path, "city", "Mailbox City");
    // The file's time: the CRM's second, half a second in (the agent reads
    // file times to the second, so both sides were modified at that second).
    let tie = crm_time.replace_nanosecond(500_000_000).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(tie.into())
        .unwrap();
    sync(&agent).await;
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(rec["city"], "Crm City", "R-F5: the CRM wins ties");
    let item = parse_item(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(item.fields["city"], "Crm City");
}

#[tokio::test]
async fn r9_contact_deleted_in_crm_by_its_owner_stays_unlinked() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let path = find(&vcards(&w.contacts_dir("ann")), &alpha)
        .unwrap()
        .0
        .clone();
    let (s, _) = w
        .call(
            &ann,
            Method::DELETE,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let r = sync(&agent).await;
    assert_eq!(r.unlinked_in_mailbox, 1, "{r:?}");
    let item = parse_item(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(item.crm_id, None, "X-CRM-ID removed");
    assert!(!item.tracked, "marker removed");
    assert_eq!(item.fields["last_name"], "Alpha", "the contact stays");
    let status = agent.status().await.unwrap();
    assert_eq!((status.not_tracked, status.tracked), (1, 0));
}

#[tokio::test]
async fn r_m1_removing_the_marker_untracks_without_deleting_in_crm() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let dir = w.contacts_dir("ann");
    std::fs::write(dir.join("marked-1.vcf"), MARKED).unwrap();
    sync(&agent).await;
    let id = w.my_contacts(&ann).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(dir.join("marked-1.vcf")).unwrap();
    let mut item = parse_item(&bytes).unwrap();
    item.tracked = false;
    let mut opts = RenderOptions::new(time::OffsetDateTime::now_utc());
    opts.existing = Some(&bytes);
    std::fs::write(dir.join("marked-1.vcf"), render_item(&item, &opts).unwrap()).unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("untrack"), Some(&1), "{r:?}");
    let (s, _) = w
        .call(&ann, Method::GET, &format!("/api/v1/contacts/{id}"), None)
        .await;
    assert_eq!(s, 200, "§9: untracking a contact keeps it in the CRM");
    sync(&agent).await;
    let cards = vcards(&dir);
    assert_eq!(cards.len(), 1, "{cards:?}");
    assert_eq!(cards[0].1.crm_id, None, "unlinked: X-CRM-ID removed (R-M2)");
    assert!(!cards[0].1.tracked);
}

#[tokio::test]
async fn malformed_item_is_skipped_listed_in_status_and_blocks_nothing() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let dir = w.contacts_dir("ann");
    std::fs::write(
        dir.join("broken.vcf"),
        "BEGIN:VCARD\r\nVERSION:4.0\r\nN:;;;\r\nEND:VCAR",
    )
    .unwrap();
    std::fs::write(dir.join("marked-1.vcf"), MARKED).unwrap();
    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert_eq!(
        r.pushed.get("track"),
        Some(&1),
        "the good item went on: {r:?}"
    );
    assert!(r.skipped.iter().any(|e| e.contains("broken.vcf")), "{r:?}");
    let status = agent.status().await.unwrap();
    assert!(
        status
            .reported
            .iter()
            .any(|l| l.starts_with("contacts/broken.vcf:")),
        "status lists the malformed item: {status:?}"
    );
    // Still listed on the next sync (the item did not change) ...
    agent.sync_once(SyncOptions::default()).await.unwrap();
    assert_eq!(agent.status().await.unwrap().reported.len(), 1);
    // ... and no longer once the user fixed it.
    std::fs::write(dir.join("broken.vcf"), PLAIN).unwrap();
    sync(&agent).await;
    assert!(agent.status().await.unwrap().reported.is_empty());
}

#[tokio::test]
async fn long_sync_reports_its_progress() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    for n in 0..30 {
        w.contact(&ann, &format!("Person{n}")).await;
    }
    let agent = w.agent(&ann, "ann", "cache").await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    agent.on_progress(Box::new(move |p| sink.lock().unwrap().push(p)));
    sync(&agent).await;
    let seen = seen.lock().unwrap();
    let last = seen
        .iter()
        .rfind(|p| p.phase == "writing CRM records into the mailbox")
        .expect("deliveries report progress");
    assert_eq!((last.done, last.total), (30, 30), "{seen:?}");
}

#[tokio::test]
async fn r_c6_offline_primary_takes_up_waiting_changes_at_its_next_sync() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let primary = w.agent(&ann, "laptop", "laptop-cache").await;
    sync(&primary).await;
    // The primary goes offline: the server is unreachable from it.
    let cfg_path = w.dir.path().join("laptop-offline.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[crm]\nurl = \"http://127.0.0.1:9\"\ntoken = \"{ann}\"\n[client]\nname = \"laptop\"\ncache = \"laptop-cache.db\"\n[mailbox.local]\nroot = \"{}\"\n",
            w.dir.path().join("laptop").display()
        ),
    )
    .unwrap();
    let offline = Agent::open(Config::load(&cfg_path).unwrap()).await.unwrap();
    // Meanwhile: the user edits the contact in the mailbox and someone
    // edits another field in the CRM.
    let cards = vcards(&w.contacts_dir("laptop"));
    edit(&find(&cards, &alpha).unwrap().0, "job_title", "Buyer");
    w.patch_contact(&ann, &alpha, json!({"city": "Oslo"})).await;
    let e = offline.sync_once(SyncOptions::default()).await.unwrap_err();
    assert!(format!("{e:#}").contains("127.0.0.1:9"), "{e:#}");
    drop(offline);
    // Nothing is lost: the next sync online takes both up (R-F5).
    let r = sync(&primary).await;
    assert_eq!(r.pushed.get("update"), Some(&1), "{r:?}");
    let (_, rec) = w
        .call(
            &ann,
            Method::GET,
            &format!("/api/v1/contacts/{alpha}"),
            None,
        )
        .await;
    assert_eq!(rec["job_title"], "Buyer", "{rec}");
    assert_eq!(rec["city"], "Oslo", "{rec}");
    let cards = vcards(&w.contacts_dir("laptop"));
    let (_, card) = find(&cards, &alpha).unwrap();
    assert_eq!(card.fields["city"], "Oslo");
    assert_eq!(card.fields["job_title"], "Buyer");
}

#[tokio::test]
async fn r_t1_scheduled_sync_follows_the_user_and_organization_settings() {
    let w = world().await;
    let (ann_id, ann) = w.user("ann@example.com").await;
    let (s, body) = w
        .call(
            &w.admin,
            Method::PATCH,
            "/api/v1/settings",
            Some(json!({"sync_interval_min": "1s"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let user_settings = format!("/api/v1/users/{ann_id}/settings");
    let (s, body) = w
        .call(
            &w.admin,
            Method::PATCH,
            &user_settings,
            Some(json!({"schedule_interval": "1s"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let agent = w.agent(&ann, "ann", "cache").await;
    let syncs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = syncs.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let dir = w.contacts_dir("ann");
    let checks = async {
        // Nothing changes on either side (a CRM change would wake the
        // agent at once, R-T7): only the schedule makes it sync.
        let t = std::time::Instant::now();
        while syncs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(t.elapsed().as_secs() < 10, "no first sync");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let first = syncs.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert!(
            syncs.load(std::sync::atomic::Ordering::SeqCst) >= first + 2,
            "the 1 s schedule never ran"
        );
        // The user turns scheduled sync off: once a sync's registration
        // brought the new setting, nothing syncs on schedule any more.
        let (s, body) = w
            .call(
                &w.admin,
                Method::PATCH,
                &user_settings,
                Some(json!({"schedule_enabled": false})),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let t = std::time::Instant::now();
        while agent.scheduled_interval().is_some() {
            assert!(
                t.elapsed().as_secs() < 10,
                "the agent never learned the new schedule"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Let the sync that brought it finish.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let off_at = syncs.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert_eq!(
            syncs.load(std::sync::atomic::Ordering::SeqCst),
            off_at,
            "synced on schedule while off"
        );
        // A CRM change still arrives at once (R-T7), schedule or not.
        let beta = w.contact(&ann, "Beta").await;
        let t = std::time::Instant::now();
        while find(&vcards(&dir), &beta).is_none() {
            assert!(
                t.elapsed().as_secs() < 5,
                "a CRM change waited for a schedule that is off"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = stop.send(());
    };
    let run = crmsync_agent::run::run(
        &agent,
        async {
            let _ = stopped.await;
        },
        move |r| {
            assert!(r.is_ok(), "{r:?}");
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    );
    let (ran, ()) = tokio::join!(run, checks);
    ran.unwrap();
}

/// Sets the status of the calendar item at `path` as a mail client would.
fn set_status(path: &Path, status: crmsync_core::mapping::Status) {
    let bytes = std::fs::read(path).unwrap();
    let mut item = parse_item(&bytes).unwrap();
    item.status = status;
    let mut opts = RenderOptions::new(time::OffsetDateTime::now_utc());
    opts.existing = Some(&bytes);
    std::fs::write(path, render_item(&item, &opts).unwrap()).unwrap();
}

#[tokio::test]
async fn r_f5_r_e4_a_todo_completed_or_an_event_cancelled_in_the_mailbox_reaches_the_crm() {
    use crmsync_core::mapping::Status;
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let meeting = w.create(&ann, "appointments", json!({"subject": "Kickoff", "start": "2030-06-01T10:00:00Z", "end": "2030-06-01T11:00:00Z"})).await;
    let task = w
        .create(&ann, "tasks", json!({"subject": "Send offer"}))
        .await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let root = w.dir.path().join("ann");
    set_status(&items_in(&root.join("tasks"))[0].0, Status::Completed);
    set_status(&items_in(&root.join("calendar"))[0].0, Status::Canceled);
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("update"), Some(&2), "{r:?}");
    let state_of = |set: &'static str, rec: &Value| {
        let path = format!("/api/v1/{set}/{}", rec["id"].as_str().unwrap());
        let w = &w;
        let ann = ann.clone();
        async move { w.call(&ann, Method::GET, &path, None).await.1["state"].clone() }
    };
    assert_eq!(state_of("tasks", &task).await, "completed");
    assert_eq!(state_of("appointments", &meeting).await, "canceled");
    // Settled: nothing more to do, on either side.
    let again = sync(&agent).await;
    assert!(
        again.pushed.is_empty() && again.written_to_mailbox == 0,
        "{again:?}"
    );
    // R-E4: once completed, further mailbox edits of the to-do stay in the
    // mailbox: not pushed, not retried, not overwritten.
    let todo = items_in(&root.join("tasks"))[0].0.clone();
    edit(&todo, "subject", "Renamed");
    let r = sync(&agent).await;
    assert!(r.pushed.is_empty(), "{r:?}");
    let path = format!("/api/v1/tasks/{}", task["id"].as_str().unwrap());
    let (_, rec) = w.call(&ann, Method::GET, &path, None).await;
    assert_eq!(rec["subject"], "Send offer");
    let kept = parse_item(&std::fs::read(&todo).unwrap()).unwrap();
    assert_eq!(kept.fields["subject"], "Renamed");
    let again = sync(&agent).await;
    assert!(
        again.pushed.is_empty() && again.written_to_mailbox == 0,
        "{again:?}"
    );
}

#[tokio::test]
async fn r_m8_marked_item_moved_elsewhere_before_tracking_is_reported() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let primary = w.agent(&ann, "laptop", "laptop-cache").await;
    sync(&primary).await;
    // A secondary sees the marked item but leaves it to the primary (R-C3).
    let secondary = w.agent(&ann, "phone", "phone-cache").await;
    let card = w.contacts_dir("phone").join("marked-1.vcf");
    std::fs::write(&card, MARKED).unwrap();
    sync(&secondary).await;
    assert_eq!(secondary.status().await.unwrap().to_be_tracked, 1);
    // The user moves it to an address book that is not synchronized.
    std::fs::remove_file(&card).unwrap();
    let r = sync(&secondary).await;
    assert!(
        r.reported
            .iter()
            .any(|l| l.contains("moved out of the synchronized")),
        "{r:?}"
    );
    let status = secondary.status().await.unwrap();
    assert_eq!(status.to_be_tracked, 0);
    assert!(
        status
            .reported
            .iter()
            .any(|l| l.contains("marked-1") && l.contains("moved out of the synchronized")),
        "{status:?}"
    );
    // Put back, it is tracked (by the primary) and no longer reported.
    std::fs::write(&card, MARKED).unwrap();
    sync(&secondary).await;
    assert!(secondary.status().await.unwrap().reported.is_empty());
}

/// R-F7 end to end: the real-world corpus put into a local mailbox, every
/// item marked for tracking: every sound item tracked once, every broken
/// one reported on its own, and a second sync writes nothing.
#[tokio::test]
async fn r_f7_realworld_items_tracked_once_broken_ones_reported_each() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let root = w.dir.path().join("ann");
    let broken = broken();
    let mut sound: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
        let folder = match corpus_collection(&path, &text) {
            Some(c) => c,
            None => continue,
        };
        std::fs::create_dir_all(root.join(folder)).unwrap();
        std::fs::write(root.join(folder).join(&name), marked(&name, &text)).unwrap();
        if !broken.contains(&name) {
            *sound.entry(folder).or_default() += 1;
        }
    }

    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert!(r.refused.is_empty(), "{:#?}", r.refused);
    let tracked: usize = sound.values().sum();
    assert_eq!(r.pushed.get("track"), Some(&tracked), "{r:#?}");
    assert_each_skipped_once(&r, &broken);
    let status = agent.status().await.unwrap();
    assert_eq!(status.tracked as usize, tracked);
    for b in &broken {
        assert!(
            status.reported.iter().any(|p| p.contains(b.as_str())),
            "{b} not in {:#?}",
            status.reported
        );
    }
    // Each sound item became one record.
    for (folder, set) in [
        ("contacts", "contacts"),
        ("calendar", "appointments"),
        ("tasks", "tasks"),
    ] {
        let records = w.mine(&ann, set).await;
        let masters = records.iter().filter(|r| r["series_id"].is_null()).count();
        assert_eq!(masters, sound.get(folder).copied().unwrap_or(0), "{set}");
    }

    // A second sync writes nothing, on either side.
    let before: Vec<_> = ["contacts", "calendar", "tasks"]
        .iter()
        .map(|f| files(&root.join(f)))
        .collect();
    let crm_before = (
        w.mine(&ann, "contacts").await,
        w.mine(&ann, "appointments").await,
        w.mine(&ann, "tasks").await,
    );
    let again = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert_eq!(again.written_to_mailbox, 0, "{again:#?}");
    assert!(again.pushed.is_empty(), "{again:#?}");
    assert!(
        again.errors.is_empty() && again.refused.is_empty(),
        "{again:#?}"
    );
    let after: Vec<_> = ["contacts", "calendar", "tasks"]
        .iter()
        .map(|f| files(&root.join(f)))
        .collect();
    assert!(before == after, "the mailbox changed");
    let crm_after = (
        w.mine(&ann, "contacts").await,
        w.mine(&ann, "appointments").await,
        w.mine(&ann, "tasks").await,
    );
    assert_eq!(crm_before, crm_after);
}

// ---------------------------------------------------------------- R-E2

/// Edits a calendar file as another client would: `f` on its text.
fn edit_text(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// The exception records of `series` in the CRM, by recurrence id.
fn exceptions_in(records: &[Value], series: &str) -> BTreeMap<String, Value> {
    records
        .iter()
        .filter(|r| r["series_id"] == series)
        .map(|r| (r["recurrence_id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// Asserts that a sync changed nothing on either side.
async fn quiet(agent: &Agent, dir: &Path) {
    let before = files(dir);
    let r = sync(agent).await;
    assert!(
        r.pushed.is_empty() && r.written_to_mailbox == 0,
        "a second sync writes nothing: {r:#?}"
    );
    assert!(before == files(dir), "the mailbox changed");
}

#[tokio::test]
async fn r_e2_exceptions_made_in_the_mailbox_reach_the_crm() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let cal = w.dir.path().join("ann").join("calendar");
    std::fs::create_dir_all(&cal).unwrap();
    let path = cal.join("weekly.ics");
    // A series with a moved instance (the 2nd Monday, moved to Tuesday).
    let moved = instance(
        "weekly",
        "20300114T090000Z",
        "20300115T130000Z",
        "20300115T140000Z",
        "",
    );
    std::fs::write(&path, weekly_series("weekly", &moved)).unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:#?}");
    let all = w.mine(&ann, "appointments").await;
    let series = all.iter().find(|a| a["series_id"].is_null()).unwrap();
    let id = series["id"].as_str().unwrap().to_string();
    assert_eq!(series["recurrence"]["rrule"], "FREQ=WEEKLY;COUNT=10");
    let ex = exceptions_in(&all, &id);
    assert_eq!(
        ex.len(),
        1,
        "the series arrives with its exception: {all:#?}"
    );
    let first = &ex["2030-01-14T09:00:00Z"];
    assert_eq!(first["start"], "2030-01-15T13:00:00Z");
    assert_eq!(first["end"], "2030-01-15T14:00:00Z");
    // The instance in the mailbox is linked to its exception record (R-M2).
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&format!("X-CRM-ID:{}", first["id"].as_str().unwrap())),
        "{text}"
    );
    quiet(&agent, &cal).await;

    // An EXDATE added in the mailbox (the 3rd Monday cancelled).
    edit_text(&path, |t| {
        t.replacen(
            "RRULE:FREQ=WEEKLY;COUNT=10\r\n",
            "RRULE:FREQ=WEEKLY;COUNT=10\r\nEXDATE:20300121T090000Z\r\n",
            1,
        )
    });
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("update"), Some(&1), "{r:#?}");
    let series = w.get(&ann, &format!("/api/v1/appointments/{id}")).await.1;
    assert_eq!(
        series["recurrence"]["exdates"],
        json!(["2030-01-21T09:00:00Z"])
    );
    quiet(&agent, &cal).await;

    // Later: the 4th Monday moved, the 5th cancelled as an instance, and
    // the moved 2nd one renamed.
    edit_text(&path, |t| {
        let more = instance(
            "weekly",
            "20300128T090000Z",
            "20300128T150000Z",
            "20300128T160000Z",
            "",
        ) + &instance(
            "weekly",
            "20300204T090000Z",
            "20300204T090000Z",
            "20300204T100000Z",
            "STATUS:CANCELLED\r\n",
        );
        // The 2nd Monday's instance renamed.
        let at = t.find("RECURRENCE-ID:20300114T090000Z").unwrap();
        let sum = at + t[at..].find("SUMMARY:Weekly").unwrap();
        let t = format!("{}SUMMARY:Weekly (moved){}", &t[..sum], &t[sum + 14..]);
        t.replace("END:VCALENDAR", &format!("{more}END:VCALENDAR"))
    });
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("update"), Some(&1), "{r:#?}");
    let all = w.mine(&ann, "appointments").await;
    let ex = exceptions_in(&all, &id);
    assert_eq!(ex.len(), 3, "{ex:#?}");
    assert_eq!(ex["2030-01-14T09:00:00Z"]["subject"], "Weekly (moved)");
    assert_eq!(ex["2030-01-28T09:00:00Z"]["start"], "2030-01-28T15:00:00Z");
    assert_eq!(ex["2030-02-04T09:00:00Z"]["state"], "canceled");
    quiet(&agent, &cal).await;

    // An override removed in the mailbox: the instance follows the series.
    edit_text(&path, |t| {
        let at = t.find("RECURRENCE-ID:20300128T090000Z").unwrap();
        let begin = t[..at].rfind("BEGIN:VEVENT").unwrap();
        let end = at + t[at..].find("END:VEVENT\r\n").unwrap() + "END:VEVENT\r\n".len();
        format!("{}{}", &t[..begin], &t[end..])
    });
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("update"), Some(&1), "{r:#?}");
    let ex = exceptions_in(&w.mine(&ann, "appointments").await, &id);
    assert_eq!(
        ex.keys().collect::<Vec<_>>(),
        ["2030-01-14T09:00:00Z", "2030-02-04T09:00:00Z"]
    );
    quiet(&agent, &cal).await;
}

#[tokio::test]
async fn r_e2_instance_only_item_tracked_as_one_appointment_per_instance() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let cal = w.dir.path().join("ann").join("calendar");
    std::fs::create_dir_all(&cal).unwrap();
    // A single-instance invitation, as servers store it.
    let one = instance(
        "invite",
        "20300114T090000Z",
        "20300114T110000Z",
        "20300114T120000Z",
        "",
    );
    std::fs::write(
        cal.join("invite.ics"),
        format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//other//EN\r\n{one}END:VCALENDAR\r\n"),
    )
    .unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:#?}");
    let all = w.mine(&ann, "appointments").await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["start"], "2030-01-14T11:00:00Z");
    assert_eq!(all[0]["subject"], "Weekly");
    let text = std::fs::read_to_string(cal.join("invite.ics")).unwrap();
    assert!(text.contains("RECURRENCE-ID:20300114T090000Z"), "{text}");
    quiet(&agent, &cal).await;

    // Two instances of one series, neither with its master.
    let two = instance(
        "pair",
        "20300121T090000Z",
        "20300121T090000Z",
        "20300121T100000Z",
        "",
    ) + &instance(
        "pair",
        "20300128T090000Z",
        "20300129T090000Z",
        "20300129T100000Z",
        "",
    );
    std::fs::write(
        cal.join("pair.ics"),
        format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//other//EN\r\n{two}END:VCALENDAR\r\n"),
    )
    .unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:#?}");
    let all = w.mine(&ann, "appointments").await;
    let starts: std::collections::BTreeSet<_> = all
        .iter()
        .map(|a| a["start"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        starts,
        [
            "2030-01-14T11:00:00Z",
            "2030-01-21T09:00:00Z",
            "2030-01-29T09:00:00Z"
        ]
        .map(String::from)
        .into()
    );
    quiet(&agent, &cal).await;
}
