//! The model-based test of issue 4: random sequences of edits on both sides
//! (concurrent edits of one item, deletions, untracking, reassignment) with
//! synchronizations in between, on a real server and a real local mailbox.
//! After every sync both sides must agree with a model of the rules:
//!
//! - R-S2/R-M1: a CRM contact of the user reaches the address book once; a
//!   vCard marked `Tracked to CRM` becomes one CRM contact.
//! - R-F5: an edit on one side reaches the other; a field edited on both
//!   sides ends equal on both, with the value of the side whose item was
//!   modified later, the CRM's on a tie. The model reads the two times as
//!   the product compares them: the CRM record's `modified_at` after the
//!   CRM edit, and the file's modification time to the second (what the
//!   agent sends as `mailbox_modified_at`) after the mailbox edit, which
//!   the test sets 0 or 2 seconds ahead so that both sides win.
//! - §9: a contact deleted in the mailbox stays in the CRM and is not sent
//!   again (R-S9); untracked, it stays in the CRM and in the mailbox,
//!   unlinked; deleted in the CRM (the user owns it), it stays in the
//!   mailbox, unlinked; reassigned to someone else (R-S8), it leaves the
//!   mailbox and stays in the CRM.
//! - R-M2: nothing is ever duplicated on either side.
//!
//! Syncs run with `--allow-mass-delete`: the R-T5 guard has its own test.
//!
//! One item gets at most one structural change (delete, untrack, reassign)
//! per round, and no edit in the round of that change: what the rules say
//! about an edit racing a deletion is checked by the named tests.

// The shared harness has helpers this file does not use.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crmsync_agent::{Agent, Config, SyncOptions};
use crmsync_core::mapping::{parse_item, render_item, RenderOptions};

include!("common/harness.rs");

/// Fields the test edits: the CRM side edits the first two, the mailbox
/// side the last two; `city` is edited on both sides (R-F5 conflicts).
const CRM_FIELDS: [&str; 2] = ["job_title", "city"];
const MAILBOX_FIELDS: [&str; 2] = ["notes", "city"];

/// The R-T5 guard could hold back a random step's deletions (more than 5
/// items of these small collections); it has its own tests (`r_t5_…`).
const MODEL_SYNC: SyncOptions = SyncOptions {
    allow_mass_delete: true,
    defer_deletions: false,
};

#[derive(Clone, Debug)]
enum Op {
    CrmCreate,
    CrmEdit(usize, usize, u8),
    CrmDelete(usize),
    CrmReassign(usize),
    MailboxCreate,
    /// Item, field, value, seconds to move the file's time ahead (R-F5).
    MailboxEdit(usize, usize, u8, u8),
    MailboxDelete(usize),
    MailboxUntrack(usize),
    /// `city` of one item edited on both sides (R-F5's conflict), the CRM
    /// first or not, the file's time moved ahead by the seconds given.
    BothEdit(usize, u8, u8, bool),
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::CrmCreate),
        4 => (0..1000usize, 0..2usize, any::<u8>()).prop_map(|(i, f, v)| Op::CrmEdit(i, f, v)),
        1 => (0..1000usize).prop_map(Op::CrmDelete),
        1 => (0..1000usize).prop_map(Op::CrmReassign),
        2 => Just(Op::MailboxCreate),
        4 => (0..1000usize, 0..2usize, any::<u8>(), prop_oneof![Just(0u8), Just(2u8)])
            .prop_map(|(i, f, v, ahead)| Op::MailboxEdit(i, f, v, ahead)),
        1 => (0..1000usize).prop_map(Op::MailboxDelete),
        1 => (0..1000usize).prop_map(Op::MailboxUntrack),
        2 => (0..1000usize, any::<u8>(), prop_oneof![Just(0u8), Just(2u8)], any::<bool>())
            .prop_map(|(i, v, ahead, crm_first)| Op::BothEdit(i, v, ahead, crm_first)),
        3 => Just(Op::Sync),
    ]
}

/// A history: up to 12 items created on either side first (so that the
/// picks, taken modulo the item count, reach items past the first few),
/// then random steps.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let create = prop_oneof![Just(Op::CrmCreate), Just(Op::MailboxCreate)];
    (
        proptest::collection::vec(create, 0..12),
        proptest::collection::vec(op(), 5..30),
    )
        .prop_map(|(mut first, rest)| {
            first.extend(rest);
            first
        })
}

/// Where the model says an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Created on one side, not synchronized yet.
    New,
    /// In the CRM and linked in the mailbox.
    Linked,
    /// In the CRM only, never to be sent again (R-S9, R-S8).
    CrmOnly,
    /// In the mailbox only, unlinked (deleted in the CRM).
    MailboxOnly,
    /// In both, unlinked (untracked in the mailbox).
    Unlinked,
    /// Nowhere.
    Gone,
}

#[derive(Debug)]
struct Item {
    /// Unique last name: how the test finds the item on both sides.
    name: String,
    crm_id: Option<String>,
    file: Option<PathBuf>,
    place: Place,
    /// A change waiting for the next sync.
    pending: Option<Op>,
    /// Field → the value it must have after the next sync.
    expected: BTreeMap<&'static str, String>,
    /// The CRM record's `modified_at` after this round's last CRM edit.
    crm_time: Option<time::OffsetDateTime>,
    /// The file's modification time after this round's last mailbox edit,
    /// to the second, as the agent reads and sends it.
    mailbox_time: Option<time::OffsetDateTime>,
    /// Edits of this round, per side.
    crm_edits: BTreeMap<&'static str, String>,
    mailbox_edits: BTreeMap<&'static str, String>,
    structural: bool,
    /// Tracked from the mailbox (R-S8: stays when it leaves the filters).
    manual: bool,
    /// Owned by someone else now (§9: a CRM deletion then deletes it).
    reassigned: bool,
}

impl Item {
    fn new(name: String, place: Place) -> Item {
        Item {
            name,
            crm_id: None,
            file: None,
            place,
            pending: None,
            expected: BTreeMap::new(),
            crm_time: None,
            mailbox_time: None,
            crm_edits: BTreeMap::new(),
            mailbox_edits: BTreeMap::new(),
            structural: false,
            manual: false,
            reassigned: false,
        }
    }

    fn edited(&self) -> bool {
        !self.crm_edits.is_empty() || !self.mailbox_edits.is_empty()
    }
}

struct Run {
    w: World,
    ann: String,
    bob_id: String,
    agent: Agent,
    items: Vec<Item>,
    created: usize,
}

impl Run {
    fn dir(&self) -> PathBuf {
        self.w.contacts_dir("ann")
    }

    async fn apply(&mut self, op: &Op) {
        let n = self.items.len();
        let pick = |i: usize| (n > 0).then(|| i % n);
        match op {
            Op::CrmCreate => {
                self.created += 1;
                let name = format!("Crm{}", self.created);
                let (status, body) = self
                    .w
                    .call(
                        &self.ann,
                        Method::POST,
                        "/api/v1/contacts",
                        Some(json!({"last_name": name})),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                let mut item = Item::new(name, Place::New);
                item.crm_id = Some(body["id"].as_str().unwrap().to_string());
                self.items.push(item);
            }
            Op::MailboxCreate => {
                self.created += 1;
                let name = format!("Mbx{}", self.created);
                let path = self.dir().join(format!("{name}.vcf"));
                std::fs::create_dir_all(self.dir()).unwrap();
                std::fs::write(
                    &path,
                    format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:uid-{name}\r\nFN:{name}\r\nN:{name};;;;\r\nCATEGORIES:Tracked to CRM\r\nEND:VCARD\r\n"),
                )
                .unwrap();
                let mut item = Item::new(name, Place::New);
                item.file = Some(path);
                item.manual = true;
                self.items.push(item);
            }
            Op::CrmEdit(i, f, v) => {
                let Some(i) = pick(*i) else { return };
                let it = &mut self.items[i];
                // CrmOnly items were reassigned or are never sent again:
                // their edits are the named tests' business.
                let in_crm = matches!(it.place, Place::Linked | Place::Unlinked)
                    || (it.place == Place::New && it.file.is_none());
                if !in_crm || it.structural {
                    return;
                }
                let field = CRM_FIELDS[*f];
                let value = format!("crm-{v}");
                // An admin edits (the record may have been reassigned).
                let (status, rec) = self
                    .w
                    .call(
                        &self.w.admin,
                        Method::PATCH,
                        &format!("/api/v1/contacts/{}", it.crm_id.as_ref().unwrap()),
                        Some(json!({field: value})),
                    )
                    .await;
                assert_eq!(status, 200, "{rec}");
                let at = rec["modified_at"].as_str().expect("modified_at");
                it.crm_time = Some(crmsync_core::time::parse_datetime(at).unwrap());
                it.crm_edits.insert(field, value);
            }
            Op::MailboxEdit(i, f, v, ahead) => {
                let Some(i) = pick(*i) else { return };
                let it = &mut self.items[i];
                let in_mailbox = matches!(
                    it.place,
                    Place::Linked | Place::Unlinked | Place::MailboxOnly
                ) || (it.place == Place::New && it.file.is_some());
                // R-A: edits of a record someone else owns are refused and
                // reverted (checked by the named tests), not modelled here.
                if !in_mailbox || it.structural || it.reassigned {
                    return;
                }
                let field = MAILBOX_FIELDS[*f];
                let value = format!("mbx-{v}");
                let file = it.file.as_ref().unwrap();
                edit(file, field, &value);
                let when = std::time::SystemTime::now()
                    + std::time::Duration::from_secs(u64::from(*ahead));
                std::fs::File::options()
                    .write(true)
                    .open(file)
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
                let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
                let mtime = time::OffsetDateTime::from(mtime);
                it.mailbox_time = Some(mtime.replace_nanosecond(0).unwrap());
                it.mailbox_edits.insert(field, value);
            }
            Op::CrmDelete(i)
            | Op::CrmReassign(i)
            | Op::MailboxDelete(i)
            | Op::MailboxUntrack(i) => {
                let Some(i) = pick(*i) else { return };
                let it = &mut self.items[i];
                // Structural changes only on linked items, one per round.
                if it.place != Place::Linked || it.structural || it.edited() {
                    return;
                }
                let id = it.crm_id.clone().unwrap();
                let file = it.file.clone().unwrap();
                match op {
                    Op::CrmDelete(_) => {
                        let (s, body) = self
                            .w
                            .call(
                                &self.w.admin,
                                Method::DELETE,
                                &format!("/api/v1/contacts/{id}"),
                                None,
                            )
                            .await;
                        assert!(s == 204 || s == 200, "{s} {body}");
                    }
                    Op::CrmReassign(_) => {
                        self.w
                            .patch_contact(&self.w.admin, &id, json!({"owner_id": self.bob_id}))
                            .await;
                    }
                    Op::MailboxDelete(_) => std::fs::remove_file(&file).unwrap(),
                    _ => {
                        let bytes = std::fs::read(&file).unwrap();
                        let mut item = parse_item(&bytes).unwrap();
                        item.tracked = false;
                        let mut opts = RenderOptions::new(time::OffsetDateTime::now_utc());
                        opts.existing = Some(&bytes);
                        std::fs::write(&file, render_item(&item, &opts).unwrap()).unwrap();
                    }
                }
                it.structural = true;
                it.pending = Some(op.clone());
            }
            Op::BothEdit(..) => unreachable!("run() splits it in two edits"),
            Op::Sync => self.sync_and_check().await,
        }
    }

    /// The model's step for one sync.
    fn expect_after_sync(&mut self) {
        for it in &mut self.items {
            it.place = match (it.place, it.pending.take()) {
                (Place::New, _) => Place::Linked,
                // R-S8: manually tracked records stay.
                (Place::Linked, Some(Op::CrmReassign(_))) if it.manual => {
                    it.reassigned = true;
                    Place::Linked
                }
                // §9: deleted in the CRM, the user's own contact stays unlinked.
                (Place::Linked, Some(Op::CrmDelete(_))) if it.reassigned => Place::Gone,
                (Place::Linked, Some(Op::CrmDelete(_))) => Place::MailboxOnly,
                (Place::Linked, Some(Op::CrmReassign(_) | Op::MailboxDelete(_))) => Place::CrmOnly,
                (Place::Linked, Some(Op::MailboxUntrack(_))) => Place::Unlinked,
                (place, _) => place,
            };
            // R-F5: edits cross over while the item is linked; on an
            // unlinked item each side keeps its own. A field edited on both
            // sides takes the later side's value, the CRM's on a tie.
            let crosses = it.place == Place::Linked;
            let mailbox_is_later = match (it.mailbox_time, it.crm_time) {
                (Some(m), Some(c)) => m > c,
                _ => false,
            };
            let mut fields: BTreeSet<&'static str> = it.crm_edits.keys().copied().collect();
            fields.extend(it.mailbox_edits.keys().copied());
            for field in fields {
                let value = match (it.crm_edits.get(field), it.mailbox_edits.get(field)) {
                    (Some(_), Some(m)) if mailbox_is_later => m,
                    (Some(c), _) => c,
                    (None, Some(m)) => m,
                    (None, None) => unreachable!(),
                };
                if crosses {
                    it.expected.insert(field, value.clone());
                }
            }
            it.crm_edits.clear();
            it.mailbox_edits.clear();
            it.crm_time = None;
            it.mailbox_time = None;
            it.structural = false;
        }
    }

    async fn sync_and_check(&mut self) {
        let r = self.agent.sync_once(MODEL_SYNC).await.unwrap();
        assert!(r.errors.is_empty() && r.refused.is_empty(), "{r:?}");
        self.expect_after_sync();

        // The mailbox: no CRM id twice, no name twice.
        let cards = vcards(&self.dir());
        let mut by_name: BTreeMap<String, (PathBuf, crmsync_core::mapping::MailboxItem)> =
            BTreeMap::new();
        let mut ids = BTreeSet::new();
        for (path, card) in cards {
            if let Some(id) = card.crm_id {
                assert!(ids.insert(id), "R-M2: {id} twice in the mailbox");
            }
            let name = card.fields["last_name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                by_name.insert(name.clone(), (path, card)).is_none(),
                "R-M2: {name} twice in the mailbox"
            );
        }
        // The CRM: no name twice (whoever owns it).
        let (status, list) = self
            .w
            .call(
                &self.w.admin,
                Method::GET,
                "/api/v1/contacts?limit=1000",
                None,
            )
            .await;
        assert_eq!(status, 200);
        let mut crm: BTreeMap<String, Value> = BTreeMap::new();
        for c in list["items"].as_array().unwrap() {
            let name = c["last_name"].as_str().unwrap_or_default().to_string();
            assert!(
                crm.insert(name.clone(), c.clone()).is_none(),
                "R-M2: {name} twice in the CRM"
            );
        }

        for it in &mut self.items {
            let card = by_name.get(&it.name);
            let rec = crm.get(&it.name);
            let (in_crm, in_mailbox, linked) = match it.place {
                Place::Linked => (true, true, true),
                Place::CrmOnly => (true, false, false),
                Place::MailboxOnly => (false, true, false),
                Place::Unlinked => (true, true, false),
                Place::Gone => (false, false, false),
                Place::New => unreachable!("every new item is synchronized"),
            };
            assert_eq!(
                rec.is_some(),
                in_crm,
                "{} in the CRM? ({:?})",
                it.name,
                it.place
            );
            assert_eq!(
                card.is_some(),
                in_mailbox,
                "{} in the mailbox? ({:?})",
                it.name,
                it.place
            );
            if let Some(rec) = rec {
                let id = rec["id"].as_str().unwrap().to_string();
                if let Some(known) = &it.crm_id {
                    assert_eq!(known, &id, "{}: one CRM record", it.name);
                }
                it.crm_id = Some(id);
            }
            if let Some((path, card)) = card {
                it.file = Some(path.clone());
                let card_id = card.crm_id.map(|u| u.to_string());
                if linked {
                    assert_eq!(card_id, it.crm_id, "{}: linked to its record", it.name);
                    assert!(card.tracked, "{}: R-M1 marker", it.name);
                } else {
                    assert!(card_id.is_none(), "{}: unlinked ({:?})", it.name, it.place);
                }
            }
            if !linked {
                continue;
            }
            let (rec, (_, card)) = (rec.unwrap(), card.unwrap());
            for field in ["job_title", "city", "notes"] {
                let crm_value = rec[field].as_str().unwrap_or("").to_string();
                let mailbox_value = card
                    .fields
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                assert_eq!(
                    crm_value, mailbox_value,
                    "R-F5: {}.{field} differs",
                    it.name
                );
                if let Some(expected) = it.expected.get(field) {
                    assert_eq!(
                        &crm_value, expected,
                        "R-F5: {}.{field} (the later side wins, the CRM on a tie)",
                        it.name
                    );
                }
            }
        }
    }
}

fn run(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = world().await;
        let (_, ann) = w.user("ann@example.com").await;
        let (bob_id, _) = w.user("bob@example.com").await;
        let agent = w.agent(&ann, "ann", "cache").await;
        let mut run = Run {
            w,
            ann,
            bob_id,
            agent,
            items: Vec::new(),
            created: 0,
        };
        for op in &ops {
            if let Op::BothEdit(i, v, ahead, crm_first) = *op {
                let crm = Op::CrmEdit(i, 1, v);
                let mailbox = Op::MailboxEdit(i, 1, v, ahead);
                let (a, b) = if crm_first {
                    (crm, mailbox)
                } else {
                    (mailbox, crm)
                };
                run.apply(&a).await;
                run.apply(&b).await;
            } else {
                run.apply(op).await;
            }
        }
        run.apply(&Op::Sync).await;
        // A second sync finds nothing left to do on either side.
        let again = run.agent.sync_once(MODEL_SYNC).await.unwrap();
        assert_eq!(again.written_to_mailbox, 0, "{again:?}");
        assert!(again.pushed.values().all(|n| *n == 0), "{again:?}");
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 40,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_both_sides_converge_to_what_the_rules_say(ops in ops()) {
        run(ops);
    }
}
