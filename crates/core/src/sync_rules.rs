//! The entity and deletion rules the server decides (SPEC §7, §9): pure
//! functions over a record, the user and the time.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::entity::EntitySet;
use crate::record::Record;
use crate::time::parse_datetime;

/// What happens to the mailbox copy when it leaves the mailbox's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// Delete the mailbox item.
    Delete,
    /// Keep the item, remove its link (X-CRM-ID, tracking marker).
    Unlink,
}

/// What a mailbox-side deletion or untracking does in the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrmEffect {
    DeleteInCrm,
    Unlink,
}

fn time_field(r: &Record, name: &str) -> Option<OffsetDateTime> {
    r.fields
        .get(name)
        .and_then(Value::as_str)
        .and_then(|s| parse_datetime(s).ok())
}

fn starts_in_future(r: &Record, now: OffsetDateTime) -> bool {
    time_field(r, "start").is_some_and(|s| s > now)
}

fn is_appointment(set: EntitySet) -> bool {
    matches!(
        set,
        EntitySet::Appointments | EntitySet::Serviceappointments
    )
}

/// Tasks, phone calls, letters and faxes (VTODO in the mailbox).
pub fn is_todo(set: EntitySet) -> bool {
    matches!(
        set,
        EntitySet::Tasks | EntitySet::Phonecalls | EntitySet::Letters | EntitySet::Faxes
    )
}

/// R-E4: a completed or cancelled task, phone call, letter or fax.
pub fn is_closed_activity(r: &Record) -> bool {
    is_todo(r.set) && r.state != "open"
}

/// R-E3: service appointments go one way, CRM to mailbox.
pub fn accepts_mailbox_edits(set: EntitySet) -> bool {
    set != EntitySet::Serviceappointments
}

/// R-E1: an appointment that has ended. A series has ended when its last
/// occurrence (by UNTIL or COUNT) has; one without an end never does.
pub fn is_past_appointment(r: &Record, now: OffsetDateTime) -> bool {
    if !is_appointment(r.set) {
        return false;
    }
    let ended = time_field(r, "end").is_some_and(|e| e < now);
    match r.fields.get("recurrence").filter(|v| !v.is_null()) {
        None => ended,
        Some(_) => crate::recurrence::series_end(r).is_some_and(|end| end < now),
    }
}

/// §9, CRM → mailbox: a record deleted in the CRM (its tombstone keeps the
/// last fields) leaves this user's mailbox how?
pub fn removal_for_crm_delete(r: &Record, user: Uuid, now: OffsetDateTime) -> Removal {
    match r.set {
        // The message is the user's own; only the tracking keyword goes.
        EntitySet::Emails => Removal::Unlink,
        s if is_appointment(s) => {
            if starts_in_future(r, now) {
                Removal::Delete
            } else {
                Removal::Unlink
            }
        }
        // The owner keeps a copy of a contact deleted in the CRM.
        EntitySet::Contacts if r.owner_id == user => Removal::Unlink,
        EntitySet::Contacts => Removal::Delete,
        s if is_todo(s) => {
            if r.state == "completed" {
                Removal::Unlink
            } else {
                Removal::Delete
            }
        }
        _ => Removal::Delete,
    }
}

/// Whether the user owns or organizes an appointment.
fn owns_or_organizes(r: &Record, user: Uuid, user_email: &str) -> bool {
    r.owner_id == user
        || r.fields
            .get("organizer")
            .and_then(Value::as_str)
            .is_some_and(|o| o.eq_ignore_ascii_case(user_email))
}

/// §9, mailbox → CRM: the user deleted the item in the mailbox
/// (`untracked` false) or removed its tracking marker (`untracked` true,
/// with `delete_in_crm` as asked).
pub fn effect_of_mailbox_removal(
    r: &Record,
    user: Uuid,
    user_email: &str,
    untracked: bool,
    delete_in_crm: bool,
    now: OffsetDateTime,
) -> CrmEffect {
    let delete_if = |yes: bool| {
        if yes {
            CrmEffect::DeleteInCrm
        } else {
            CrmEffect::Unlink
        }
    };
    match r.set {
        EntitySet::Emails | EntitySet::Contacts => delete_if(untracked && delete_in_crm),
        s if is_appointment(s) => delete_if(
            matches!(r.state.as_str(), "open" | "scheduled")
                && starts_in_future(r, now)
                && owns_or_organizes(r, user, user_email),
        ),
        s if is_todo(s) => delete_if(!untracked && r.state != "completed" && r.owner_id == user),
        _ => CrmEffect::Unlink,
    }
}

/// What a client's mailbox holds of a record (its sync entry, R-S1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub delivered_version: i64,
    /// Tracked manually from the mailbox: stays whatever the filters say (R-S8).
    pub manual: bool,
    /// Deleted by the user in the mailbox: never sent again until reset (R-S9).
    pub excluded: bool,
}

/// What the server asks a client's mailbox to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "action", content = "removal")]
pub enum Delivery {
    Create,
    Update,
    Remove(Removal),
}

/// The facts about one record and one client that decide its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryFacts {
    /// The record is a tombstone.
    pub deleted: bool,
    pub held: Option<Held>,
    /// It matches an active filter of the mailbox owner (R-S6).
    pub filter_match: bool,
    /// Filters deliver this type to this client: it acts as primary (R-C3),
    /// the owner has the privilege (R-S11) and the type is checked (R-S10).
    pub delivers_type: bool,
    /// The client synchronizes non-email items at all (primary or roaming, R-C3).
    pub syncs_items: bool,
    /// Email tagging is on (R-M7).
    pub tagging: bool,
    /// The client's mailbox has a collection of the record's kind (SPEC
    /// §13: contacts, calendar, tasks, mail).
    pub kind_held: bool,
}

/// The delivery table: (record, what the mailbox holds, filters, role) ->
/// what to do, each arm citing its rule.
pub fn plan_delivery(
    r: &Record,
    f: DeliveryFacts,
    user: Uuid,
    now: OffsetDateTime,
) -> Option<Delivery> {
    if !f.kind_held {
        // §13: a mailbox without this kind of collection gets nothing of it.
        return None;
    }
    let held = f.held.filter(|h| !h.excluded);
    if r.set == EntitySet::Emails {
        return match (held, f.deleted) {
            (None, _) => None,
            // §9: the message stays; only its tracking keyword goes.
            (Some(_), true) => Some(Delivery::Remove(Removal::Unlink)),
            // R-M7: regarding changes reach the mailbox unless tagging is off.
            (Some(h), false) if f.tagging && r.version > h.delivered_version => {
                Some(Delivery::Update)
            }
            (Some(_), false) => None,
        };
    }
    if !f.syncs_items {
        // R-C3: only the primary synchronizes contacts, appointments, tasks.
        return None;
    }
    if f.deleted {
        // §9 CRM -> mailbox.
        return held.map(|_| Delivery::Remove(removal_for_crm_delete(r, user, now)));
    }
    if f.held.is_some_and(|h| h.excluded) {
        // R-S9: deleted in the mailbox, not sent again until reset.
        return None;
    }
    let wanted = held.is_some_and(|h| h.manual) || (f.delivers_type && f.filter_match);
    match (wanted, held) {
        // R-E1: past appointments are never sent.
        (true, None) if is_past_appointment(r, now) => None,
        (true, None) => Some(Delivery::Create),
        (true, Some(h)) if r.version > h.delivered_version => Some(Delivery::Update),
        (true, Some(_)) => None,
        // R-S8: it left the user's filters and was not tracked manually.
        (false, Some(_)) => Some(Delivery::Remove(Removal::Delete)),
        (false, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(set: EntitySet, owner: Uuid, state: &str, fields: Value) -> Record {
        Record {
            id: Uuid::new_v4(),
            set,
            version: 1,
            owner_id: owner,
            state: state.into(),
            created_at: String::new(),
            modified_at: String::new(),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    fn facts(held: Option<Held>) -> DeliveryFacts {
        DeliveryFacts {
            deleted: false,
            held,
            filter_match: true,
            delivers_type: true,
            syncs_items: true,
            tagging: true,
            kind_held: true,
        }
    }

    #[test]
    fn s13_a_kind_the_mailbox_lacks_gets_nothing() {
        let me = Uuid::new_v4();
        let lacking = |held| DeliveryFacts {
            kind_held: false,
            ..facts(held)
        };
        let mut c = rec(EntitySet::Contacts, me, "active", json!({}));
        assert_eq!(plan_delivery(&c, lacking(None), me, now()), None);
        c.version = 3;
        let manual = Held {
            manual: true,
            ..HELD
        };
        assert_eq!(plan_delivery(&c, lacking(Some(manual)), me, now()), None);
        let deleted = DeliveryFacts {
            deleted: true,
            ..lacking(Some(HELD))
        };
        assert_eq!(plan_delivery(&c, deleted, me, now()), None);
        let mut e = rec(EntitySet::Emails, me, "completed", json!({}));
        e.version = 3;
        assert_eq!(plan_delivery(&e, lacking(Some(HELD)), me, now()), None);
    }

    const HELD: Held = Held {
        delivered_version: 1,
        manual: false,
        excluded: false,
    };

    #[test]
    fn r_s8_reassigned_contact_leaves_mailbox_unless_tracked() {
        let me = Uuid::new_v4();
        let mut c = rec(EntitySet::Contacts, Uuid::new_v4(), "active", json!({}));
        c.version = 5;
        let gone = DeliveryFacts {
            filter_match: false,
            ..facts(Some(HELD))
        };
        assert_eq!(
            plan_delivery(&c, gone, me, now()),
            Some(Delivery::Remove(Removal::Delete))
        );
        let manual = DeliveryFacts {
            filter_match: false,
            ..facts(Some(Held {
                manual: true,
                ..HELD
            }))
        };
        assert_eq!(plan_delivery(&c, manual, me, now()), Some(Delivery::Update));
    }

    #[test]
    fn r_s9_excluded_records_are_not_sent_again() {
        let c = rec(EntitySet::Contacts, Uuid::new_v4(), "active", json!({}));
        let excluded = facts(Some(Held {
            excluded: true,
            ..HELD
        }));
        assert_eq!(plan_delivery(&c, excluded, Uuid::new_v4(), now()), None);
    }

    #[test]
    fn r_c3_secondaries_get_no_items_but_emails() {
        let me = Uuid::new_v4();
        let c = rec(EntitySet::Contacts, me, "active", json!({}));
        let secondary = DeliveryFacts {
            syncs_items: false,
            ..facts(None)
        };
        assert_eq!(plan_delivery(&c, secondary, me, now()), None);
        let mut e = rec(EntitySet::Emails, me, "completed", json!({}));
        e.version = 3;
        assert_eq!(
            plan_delivery(
                &e,
                DeliveryFacts {
                    syncs_items: false,
                    ..facts(Some(HELD))
                },
                me,
                now()
            ),
            Some(Delivery::Update)
        );
    }

    #[test]
    fn r_m7_tagging_off_sends_no_regarding_changes() {
        let me = Uuid::new_v4();
        let mut e = rec(EntitySet::Emails, me, "completed", json!({}));
        e.version = 3;
        assert_eq!(
            plan_delivery(
                &e,
                DeliveryFacts {
                    tagging: false,
                    ..facts(Some(HELD))
                },
                me,
                now()
            ),
            None
        );
        assert_eq!(
            plan_delivery(&e, facts(None), me, now()),
            None,
            "untracked emails are never sent"
        );
    }

    #[test]
    fn r_e1_past_appointments_are_not_created_in_mailboxes() {
        let me = Uuid::new_v4();
        let past = rec(
            EntitySet::Appointments,
            me,
            "open",
            json!({"start": PAST, "end": PAST}),
        );
        assert_eq!(plan_delivery(&past, facts(None), me, now()), None);
        let future = rec(
            EntitySet::Appointments,
            me,
            "open",
            json!({"start": FUTURE, "end": FUTURE}),
        );
        assert_eq!(
            plan_delivery(&future, facts(None), me, now()),
            Some(Delivery::Create)
        );
    }

    #[test]
    fn r_s10_and_r_s11_undelivered_types_only_keep_manual_items() {
        let me = Uuid::new_v4();
        let mut c = rec(EntitySet::Contacts, me, "active", json!({}));
        c.version = 2;
        let off = DeliveryFacts {
            delivers_type: false,
            ..facts(None)
        };
        assert_eq!(plan_delivery(&c, off, me, now()), None);
        let manual = DeliveryFacts {
            delivers_type: false,
            ..facts(Some(Held {
                manual: true,
                ..HELD
            }))
        };
        assert_eq!(plan_delivery(&c, manual, me, now()), Some(Delivery::Update));
    }

    fn now() -> OffsetDateTime {
        parse_datetime("2026-11-25T12:00:00Z").unwrap()
    }

    const FUTURE: &str = "2026-12-01T10:00:00Z";
    const PAST: &str = "2026-11-01T10:00:00Z";

    #[test]
    fn r_e1_past_appointments() {
        let me = Uuid::new_v4();
        let past = rec(
            EntitySet::Appointments,
            me,
            "open",
            json!({"start": PAST, "end": "2026-11-01T11:00:00Z"}),
        );
        assert!(is_past_appointment(&past, now()));
        let future = rec(
            EntitySet::Appointments,
            me,
            "open",
            json!({"start": FUTURE, "end": FUTURE}),
        );
        assert!(!is_past_appointment(&future, now()));
        let endless = rec(
            EntitySet::Appointments,
            me,
            "open",
            json!({"start": PAST, "end": PAST, "recurrence": {"rrule": "FREQ=WEEKLY"}}),
        );
        assert!(
            !is_past_appointment(&endless, now()),
            "R-E2: a series with no end goes on"
        );
        let ended = rec(
            EntitySet::Appointments,
            me,
            "open",
            json!({"start": PAST, "end": PAST, "recurrence": {"rrule": "FREQ=DAILY;UNTIL=20261110T000000Z"}}),
        );
        assert!(is_past_appointment(&ended, now()));
        let ended_date = rec(
            EntitySet::Appointments,
            me,
            "open",
            json!({"start": PAST, "end": PAST, "recurrence": {"rrule": "FREQ=DAILY;UNTIL=20261110"}}),
        );
        assert!(is_past_appointment(&ended_date, now()));
    }

    #[test]
    fn r_e3_and_r_e4() {
        assert!(!accepts_mailbox_edits(EntitySet::Serviceappointments));
        assert!(accepts_mailbox_edits(EntitySet::Appointments));
        let me = Uuid::new_v4();
        assert!(is_closed_activity(&rec(
            EntitySet::Tasks,
            me,
            "completed",
            json!({})
        )));
        assert!(is_closed_activity(&rec(
            EntitySet::Faxes,
            me,
            "canceled",
            json!({})
        )));
        assert!(!is_closed_activity(&rec(
            EntitySet::Tasks,
            me,
            "open",
            json!({})
        )));
    }

    #[test]
    fn crm_deletes_leave_the_mailbox_per_the_table_of_section_9() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let n = now();
        assert_eq!(
            removal_for_crm_delete(&rec(EntitySet::Emails, me, "completed", json!({})), me, n),
            Removal::Unlink
        );
        assert_eq!(
            removal_for_crm_delete(
                &rec(
                    EntitySet::Appointments,
                    me,
                    "open",
                    json!({"start": FUTURE})
                ),
                me,
                n
            ),
            Removal::Delete
        );
        assert_eq!(
            removal_for_crm_delete(
                &rec(EntitySet::Appointments, me, "open", json!({"start": PAST})),
                me,
                n
            ),
            Removal::Unlink
        );
        assert_eq!(
            removal_for_crm_delete(&rec(EntitySet::Contacts, other, "active", json!({})), me, n),
            Removal::Delete
        );
        assert_eq!(
            removal_for_crm_delete(&rec(EntitySet::Contacts, me, "active", json!({})), me, n),
            Removal::Unlink
        );
        assert_eq!(
            removal_for_crm_delete(&rec(EntitySet::Tasks, me, "open", json!({})), me, n),
            Removal::Delete
        );
        assert_eq!(
            removal_for_crm_delete(&rec(EntitySet::Tasks, me, "completed", json!({})), me, n),
            Removal::Unlink
        );
    }

    #[test]
    fn mailbox_removals_reach_the_crm_per_the_table_of_section_9() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let n = now();
        let e = |r: &Record, untracked, ask| {
            effect_of_mailbox_removal(r, me, "me@x.org", untracked, ask, n)
        };
        let email = rec(EntitySet::Emails, me, "completed", json!({}));
        assert_eq!(
            e(&email, false, false),
            CrmEffect::Unlink,
            "deleted email: CRM record kept"
        );
        assert_eq!(e(&email, true, false), CrmEffect::Unlink);
        assert_eq!(e(&email, true, true), CrmEffect::DeleteInCrm);
        let mine = rec(
            EntitySet::Appointments,
            me,
            "scheduled",
            json!({"start": FUTURE}),
        );
        assert_eq!(e(&mine, false, false), CrmEffect::DeleteInCrm);
        assert_eq!(
            e(&mine, true, false),
            CrmEffect::DeleteInCrm,
            "untracking an appointment = deleting it"
        );
        let organized = rec(
            EntitySet::Appointments,
            other,
            "open",
            json!({"start": FUTURE, "organizer": "ME@x.org"}),
        );
        assert_eq!(e(&organized, false, false), CrmEffect::DeleteInCrm);
        let theirs = rec(
            EntitySet::Appointments,
            other,
            "open",
            json!({"start": FUTURE}),
        );
        assert_eq!(e(&theirs, false, false), CrmEffect::Unlink);
        let past = rec(EntitySet::Appointments, me, "open", json!({"start": PAST}));
        assert_eq!(e(&past, false, false), CrmEffect::Unlink);
        let done = rec(
            EntitySet::Appointments,
            me,
            "completed",
            json!({"start": FUTURE}),
        );
        assert_eq!(e(&done, false, false), CrmEffect::Unlink);
        let contact = rec(EntitySet::Contacts, me, "active", json!({}));
        assert_eq!(e(&contact, false, false), CrmEffect::Unlink);
        assert_eq!(e(&contact, true, true), CrmEffect::DeleteInCrm);
        let task = rec(EntitySet::Tasks, me, "open", json!({}));
        assert_eq!(e(&task, false, false), CrmEffect::DeleteInCrm);
        assert_eq!(
            e(&task, true, true),
            CrmEffect::Unlink,
            "untracked task: unlinked"
        );
        assert_eq!(
            e(
                &rec(EntitySet::Tasks, me, "completed", json!({})),
                false,
                false
            ),
            CrmEffect::Unlink
        );
        assert_eq!(
            e(
                &rec(EntitySet::Tasks, other, "open", json!({})),
                false,
                false
            ),
            CrmEffect::Unlink
        );
    }
}
