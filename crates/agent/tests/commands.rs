//! The `crmsync` commands of SPEC §12 (crmsync_agent::commands) end to end:
//! a real CRM server (in-process, SQLite in a temp folder) and a real local
//! mailbox in a temp folder. Each test is named after the rule it checks.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crmsync_agent::commands as cmd;
use crmsync_agent::{Agent, Config, SyncOptions};
use crmsync_core::mapping::{parse_item, render_item, RenderOptions};

include!("common/harness.rs");

const MARKED: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:marked-1\r\nFN:Mark Edwards\r\nN:Edwards;Mark;;;\r\nEMAIL:mark@example.com\r\nCATEGORIES:Tracked to CRM\r\nEND:VCARD\r\n";
const PLAIN: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:plain-1\r\nFN:Paula Plain\r\nN:Plain;Paula;;;\r\nEMAIL:paula@example.com\r\nNOTE:keep me\r\nX-PRIVATE:mine\r\nEND:VCARD\r\n";
const PLAIN2: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:plain-2\r\nFN:Peter Plain\r\nN:Plain;Peter;;;\r\nEMAIL:peter@example.com\r\nEND:VCARD\r\n";
const TODO: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VTODO\r\nUID:todo-1\r\nDTSTAMP:20261125T090000Z\r\nSUMMARY:Call back\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";

fn is_usage(e: &anyhow::Error) -> bool {
    e.downcast_ref::<cmd::UsageError>().is_some()
}

#[tokio::test]
async fn r_c1_client_list_marks_this_client_and_set_primary_moves_the_role() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let laptop = w.agent(&ann, "laptop", "cache").await;
    sync(&laptop).await;
    let phone = w.agent(&ann, "phone", "cache").await;
    let list = cmd::client_list(&phone).await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let me = list.iter().find(|c| c.this).expect("this client marked");
    assert_eq!((me.name.as_str(), me.role.as_str()), ("phone", "secondary"));
    let other = list.iter().find(|c| !c.this).unwrap();
    assert_eq!(
        (other.name.as_str(), other.role.as_str()),
        ("laptop", "primary")
    );
    // Without NAME: this client becomes primary, the other is demoted.
    let c = cmd::client_set_primary(&phone, None).await.unwrap();
    assert_eq!((c.name.as_str(), c.role.as_str()), ("phone", "primary"));
    let list = cmd::client_list(&laptop).await.unwrap();
    let role = |n: &str| list.iter().find(|c| c.name == n).unwrap().role.clone();
    assert_eq!(role("phone"), "primary");
    assert_eq!(role("laptop"), "secondary");
    assert!(list.iter().find(|c| c.name == "laptop").unwrap().this);
    // By NAME, from the other client.
    cmd::client_set_primary(&phone, Some("laptop"))
        .await
        .unwrap();
    let list = cmd::client_list(&phone).await.unwrap();
    assert_eq!(
        list.iter().filter(|c| c.role == "primary").count(),
        1,
        "exactly one primary: {list:?}"
    );
    assert_eq!(
        list.iter().find(|c| c.role == "primary").unwrap().name,
        "laptop"
    );
    let e = cmd::client_set_primary(&phone, Some("tablet"))
        .await
        .unwrap_err();
    assert!(is_usage(&e), "{e:#}");
    assert!(e.to_string().contains("laptop"), "names the clients: {e}");
}

#[tokio::test]
async fn r_s9_client_reset_redelivers_what_the_mailbox_deleted() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let path = find(&vcards(&w.contacts_dir("ann")), &alpha)
        .unwrap()
        .0
        .clone();
    std::fs::remove_file(&path).unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.pushed.get("delete"), Some(&1), "{r:?}");
    // Excluded (R-S9): not delivered again, even after a CRM change.
    w.patch_contact(&ann, &alpha, json!({"city": "Later"}))
        .await;
    let r = sync(&agent).await;
    assert_eq!(r.written_to_mailbox, 0, "{r:?}");
    assert!(find(&vcards(&w.contacts_dir("ann")), &alpha).is_none());
    cmd::client_reset(&agent).await.unwrap();
    let r = sync(&agent).await;
    assert_eq!(r.written_to_mailbox, 1, "{r:?}");
    let cards = vcards(&w.contacts_dir("ann"));
    let (_, a) = find(&cards, &alpha).expect("delivered again after reset");
    assert_eq!(a.fields["city"], "Later");
}

#[tokio::test]
async fn r_f6_status_conflicts_lists_the_discarded_value() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    assert!(cmd::conflicts(&agent).await.unwrap().is_empty());
    let path = find(&vcards(&w.contacts_dir("ann")), &alpha)
        .unwrap()
        .0
        .clone();
    w.patch_contact(&ann, &alpha, json!({"city": "Crm City"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    edit(&path, "city", "Mailbox City");
    sync(&agent).await;
    let list = cmd::conflicts(&agent).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let c = &list[0];
    assert_eq!(c.record, alpha);
    assert_eq!(c.set, "contacts");
    assert_eq!(c.field, "city");
    assert_eq!(c.crm_value, json!("Crm City"));
    assert_eq!(c.mailbox_value, json!("Mailbox City"));
    assert_eq!(c.kept, "mailbox", "{c:?}");
    assert!(!c.at.is_empty());
}

#[tokio::test]
async fn r_m3_status_item_shows_link_state_crm_id_and_version() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    let dir = w.contacts_dir("ann");
    std::fs::write(dir.join("marked-1.vcf"), MARKED).unwrap();
    std::fs::write(dir.join("plain-1.vcf"), PLAIN).unwrap();
    let s = cmd::item_status(&agent, "uid:marked-1").await.unwrap();
    assert_eq!((s.link, s.crm_id.clone()), (1, None), "{s:?}");
    let s = cmd::item_status(&agent, "uid:plain-1").await.unwrap();
    assert_eq!(s.link, 0, "{s:?}");
    sync(&agent).await;
    let id = w.my_contacts(&ann).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = dir.join("marked-1.vcf");
    for item in [
        "uid:marked-1".to_string(),
        path.display().to_string(),
        "contacts/marked-1.vcf".to_string(),
    ] {
        let s = cmd::item_status(&agent, &item).await.unwrap();
        assert_eq!(s.link, 2, "{item}: {s:?}");
        assert_eq!(s.crm_id.as_deref(), Some(id.as_str()));
        assert!(s.version > 0);
        assert_eq!(s.set, "contacts");
    }
    let e = cmd::item_status(&agent, "uid:nobody").await.unwrap_err();
    assert!(is_usage(&e), "{e:#}");
    let outside = w.dir.path().join("elsewhere.vcf");
    std::fs::write(&outside, PLAIN).unwrap();
    let e = cmd::item_status(&agent, &outside.display().to_string())
        .await
        .unwrap_err();
    assert!(
        is_usage(&e) && e.to_string().contains("not inside"),
        "{e:#}"
    );
}

#[tokio::test]
async fn r_c3_explain_gives_the_reasons_in_words() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let path = find(&vcards(&w.contacts_dir("ann")), &alpha)
        .unwrap()
        .0
        .clone();
    let e = cmd::explain(&agent, Some(&path.display().to_string()), None)
        .await
        .unwrap();
    assert_eq!(e.id, alpha);
    assert!(e.delivered && e.in_mailbox, "{e:?}");
    assert!(e.reasons.iter().any(|r| r.contains("filter")), "{e:?}");
    // The same record from a secondary: the role decides (R-C3).
    let phone = w.agent(&ann, "phone", "cache").await;
    let e = cmd::explain(&phone, None, Some(&format!("contacts/{alpha}")))
        .await
        .unwrap();
    assert!(!e.delivered, "{e:?}");
    assert!(
        e.reasons.iter().any(|r| r.contains("not the primary")),
        "{e:?}"
    );
    let e = cmd::explain(&agent, None, Some("contacts-nope"))
        .await
        .unwrap_err();
    assert!(is_usage(&e), "{e:#}");
    // An item never tracked: the message says what to do.
    std::fs::write(w.contacts_dir("ann").join("plain-1.vcf"), PLAIN).unwrap();
    let e = cmd::explain(&agent, Some("uid:plain-1"), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("crmsync track"), "{e:#}");
}

#[tokio::test]
async fn r_m1_track_command_tracks_items_now_keeping_their_properties() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let dir = w.contacts_dir("ann");
    std::fs::write(dir.join("plain-1.vcf"), PLAIN).unwrap();
    std::fs::write(dir.join("plain-2.vcf"), PLAIN2).unwrap();
    let r = cmd::track(
        &agent,
        &[
            "uid:plain-1".into(),
            dir.join("plain-2.vcf").display().to_string(),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.items.len(), 2);
    let crm = w.my_contacts(&ann).await;
    assert_eq!(crm.len(), 2, "both tracked at once: {crm:?}");
    for (path, id) in &r.items {
        let bytes = std::fs::read_to_string(path).unwrap();
        let item = parse_item(bytes.as_bytes()).unwrap();
        assert!(item.tracked, "marker added");
        assert_eq!(item.crm_id.map(|u| u.to_string()), id.clone(), "X-CRM-ID");
        assert!(crm
            .iter()
            .any(|c| Some(c["id"].as_str().unwrap()) == id.as_deref()));
    }
    let kept = std::fs::read_to_string(dir.join("plain-1.vcf")).unwrap();
    assert!(
        kept.contains("X-PRIVATE:mine"),
        "the user's properties stay: {kept}"
    );
    let status = agent.status().await.unwrap();
    assert_eq!(
        (status.not_tracked, status.to_be_tracked, status.tracked),
        (0, 0, 2)
    );
    // Nothing left for the next sync.
    let again = sync(&agent).await;
    assert!(again.pushed.is_empty(), "{again:?}");
    assert_eq!(w.my_contacts(&ann).await.len(), 2);
}

#[tokio::test]
async fn r_c4_secondary_cannot_track_a_contact() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let laptop = w.agent(&ann, "laptop", "cache").await;
    sync(&laptop).await;
    let phone = w.agent(&ann, "phone", "cache").await;
    let dir = w.contacts_dir("phone");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plain-1.vcf"), PLAIN).unwrap();
    let e = cmd::track(&phone, &["uid:plain-1".into()], None)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("secondary") && msg.contains("set-primary"),
        "{msg}"
    );
    assert!(!is_usage(&e));
    let item = parse_item(&std::fs::read(dir.join("plain-1.vcf")).unwrap()).unwrap();
    assert!(!item.tracked, "nothing marked");
    assert!(w.my_contacts(&ann).await.is_empty());
    // Made primary, the same command works.
    cmd::client_set_primary(&phone, None).await.unwrap();
    cmd::track(&phone, &["uid:plain-1".into()], None)
        .await
        .unwrap();
    assert_eq!(w.my_contacts(&ann).await.len(), 1);
}

#[tokio::test]
async fn r_m2_track_with_regarding_and_regarding_command_set_the_regarding() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let acme = w.account(&ann, "Acme").await;
    let globex = w.account(&ann, "Globex").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let dir = w.dir.path().join("ann").join("tasks");
    std::fs::write(dir.join("todo-1.ics"), TODO).unwrap();
    let r = cmd::track(
        &agent,
        &["uid:todo-1".into()],
        Some(&format!("accounts/{acme}")),
    )
    .await
    .unwrap();
    let id = r.items[0].1.clone().unwrap();
    let (_, task) = w.get(&ann, &format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["regarding"]["id"], json!(acme), "{task}");
    let text = std::fs::read_to_string(dir.join("todo-1.ics")).unwrap();
    assert!(
        text.contains(&format!("X-CRM-SET=accounts:{acme}")),
        "{text}"
    );
    // `regarding` moves it to another account, in the CRM and the item.
    cmd::set_regarding(
        &agent,
        &["uid:todo-1".into()],
        &format!("accounts/{globex}"),
    )
    .await
    .unwrap();
    let (_, task) = w.get(&ann, &format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["regarding"]["id"], json!(globex), "{task}");
    let text = std::fs::read_to_string(dir.join("todo-1.ics")).unwrap();
    assert!(
        text.contains(&format!("X-CRM-SET=accounts:{globex}")),
        "{text}"
    );
    let again = sync(&agent).await;
    assert!(again.pushed.is_empty(), "{again:?}");
    let (_, task) = w.get(&ann, &format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["regarding"]["id"], json!(globex), "{task}");
    // Contacts have no regarding: a usage error naming why.
    std::fs::write(w.contacts_dir("ann").join("marked-1.vcf"), MARKED).unwrap();
    sync(&agent).await;
    let e = cmd::set_regarding(
        &agent,
        &["uid:marked-1".into()],
        &format!("accounts/{acme}"),
    )
    .await
    .unwrap_err();
    assert!(
        is_usage(&e) && e.to_string().contains("no regarding"),
        "{e:#}"
    );
}

#[tokio::test]
async fn r9_untrack_keeps_the_contact_and_delete_in_crm_deletes_it() {
    let w = world().await;
    let (_, ann) = w.user("ann@example.com").await;
    let alpha = w.contact(&ann, "Alpha").await;
    let beta = w.contact(&ann, "Beta").await;
    let agent = w.agent(&ann, "ann", "cache").await;
    sync(&agent).await;
    let cards = vcards(&w.contacts_dir("ann"));
    let pa = find(&cards, &alpha).unwrap().0.display().to_string();
    let pb = find(&cards, &beta).unwrap().0.display().to_string();
    // Plain untrack: the CRM keeps the contact (§9).
    cmd::untrack(&agent, std::slice::from_ref(&pa), false)
        .await
        .unwrap();
    let (s, _) = w.get(&ann, &format!("/api/v1/contacts/{alpha}")).await;
    assert_eq!(s, 200);
    assert_eq!(cmd::item_status(&agent, &pa).await.unwrap().link, 0);
    assert!(!parse_item(&std::fs::read(&pa).unwrap()).unwrap().tracked);
    // --delete-in-crm: gone from the CRM, the mailbox item stays unlinked.
    cmd::untrack(&agent, std::slice::from_ref(&pb), true)
        .await
        .unwrap();
    let (s, _) = w.get(&ann, &format!("/api/v1/contacts/{beta}")).await;
    assert_eq!(s, 404, "deleted in the CRM");
    let item = parse_item(&std::fs::read(&pb).unwrap()).unwrap();
    assert!(!item.tracked && item.crm_id.is_none(), "{item:?}");
    assert_eq!(item.fields["last_name"], "Beta");
    let again = sync(&agent).await;
    assert!(again.pushed.is_empty(), "{again:?}");
    assert_eq!(vcards(&w.contacts_dir("ann")).len(), 2);
    let e = cmd::untrack(&agent, &[pb], false).await.unwrap_err();
    assert!(e.to_string().contains("not tracked"), "{e:#}");
}

#[tokio::test]
async fn r_c5_delegated_track_only_marks_for_the_owners_primary() {
    let w = world().await;
    let (boss_id, boss) = w.user("boss@example.com").await;
    let (_, assistant) = w.user("assistant@example.com").await;
    let (s, body) = w
        .call(
            &boss,
            Method::PATCH,
            &format!("/api/v1/users/{boss_id}/settings"),
            Some(json!({"delegates": ["assistant@example.com"]})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let primary = w.agent(&boss, "boss", "cache").await;
    sync(&primary).await;
    // The assistant's agent on the boss's mailbox.
    let cfg_path = w.dir.path().join("assistant.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{assistant}\"\n[client]\nname = \"assistant\"\ncache = \"{}\"\non_behalf_of = \"boss@example.com\"\n[mailbox.local]\nroot = \"{}\"\n",
            w.base,
            w.dir.path().join("assistant.db").display(),
            w.dir.path().join("boss").display()
        ),
    )
    .unwrap();
    let delegated = Agent::open(Config::load(&cfg_path).unwrap()).await.unwrap();
    std::fs::write(w.contacts_dir("boss").join("plain-1.vcf"), PLAIN).unwrap();
    let r = cmd::track(&delegated, &["uid:plain-1".into()], None)
        .await
        .unwrap();
    assert!(r.waiting_for_owner, "{r:?}");
    assert!(r.sync.is_none(), "a delegated client never synchronizes it");
    let item =
        parse_item(&std::fs::read(w.contacts_dir("boss").join("plain-1.vcf")).unwrap()).unwrap();
    assert!(item.tracked, "marked");
    assert!(w.my_contacts(&boss).await.is_empty());
    // The owner's primary tracks it at its next sync.
    let r = sync(&primary).await;
    assert_eq!(r.pushed.get("track"), Some(&1), "{r:?}");
    assert_eq!(w.my_contacts(&boss).await.len(), 1);
}
