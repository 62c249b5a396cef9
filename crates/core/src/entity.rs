//! The entity sets of SPEC §2 and the fields each one carries.
//!
//! Records are stored and validated generically from these tables (rather than
//! one Rust struct per set) because everything downstream works per field:
//! sync-field directions (R-F1), field-level security (R-F3), per-field merging
//! (R-F5) and filters (R-S6) all name fields by their string name.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::field::{FieldDef, FieldKind as K};

/// One entity set of SPEC §2 (`/api/v1/{set}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntitySet {
    Users,
    Accounts,
    Contacts,
    Leads,
    Opportunities,
    Cases,
    Appointments,
    Serviceappointments,
    Tasks,
    Phonecalls,
    Letters,
    Faxes,
    Emails,
}

/// Sets that `regarding` may point to (SPEC §2).
pub const REGARDING_SETS: &[EntitySet] = &[
    EntitySet::Accounts,
    EntitySet::Contacts,
    EntitySet::Leads,
    EntitySet::Opportunities,
    EntitySet::Cases,
];

const ACTIVE_STATES: &[&str] = &["active", "inactive"];
const APPOINTMENT_STATES: &[&str] = &["open", "scheduled", "completed", "canceled"];
const ACTIVITY_STATES: &[&str] = &["open", "completed", "canceled"];

macro_rules! f {
    ($name:literal, $kind:expr) => {
        FieldDef {
            name: $name,
            kind: $kind,
            required: false,
            mailbox: false,
        }
    };
    ($name:literal, $kind:expr, required) => {
        FieldDef {
            name: $name,
            kind: $kind,
            required: true,
            mailbox: false,
        }
    };
    ($name:literal, $kind:expr, mailbox) => {
        FieldDef {
            name: $name,
            kind: $kind,
            required: false,
            mailbox: true,
        }
    };
    ($name:literal, $kind:expr, required, mailbox) => {
        FieldDef {
            name: $name,
            kind: $kind,
            required: true,
            mailbox: true,
        }
    };
}

const USER_FIELDS: &[FieldDef] = &[
    f!("email", K::Email, required),
    f!("name", K::Text, required),
    f!("role", K::Enum(&["admin", "user"])),
    f!("approved_email", K::Bool),
    f!("sync_to_mailbox", K::Bool),
    f!("go_offline", K::Bool),
];

const ACCOUNT_FIELDS: &[FieldDef] = &[
    f!("name", K::Text, required),
    f!("email", K::Email),
    f!("phone", K::Text),
    f!("website", K::Text),
    f!("parent_account_id", K::Reference(EntitySet::Accounts)),
];

const CONTACT_FIELDS: &[FieldDef] = &[
    f!("first_name", K::Text, mailbox),
    f!("last_name", K::Text, required, mailbox),
    f!("email", K::Email, mailbox),
    f!("email2", K::Email, mailbox),
    f!("phone", K::Text, mailbox),
    f!("mobile", K::Text, mailbox),
    f!("job_title", K::Text, mailbox),
    f!("account_id", K::Reference(EntitySet::Accounts)),
    f!("street", K::Text, mailbox),
    f!("city", K::Text, mailbox),
    f!("postal_code", K::Text, mailbox),
    f!("country", K::Text, mailbox),
    f!("birthday", K::Date, mailbox),
    f!("notes", K::LongText, mailbox),
];

const LEAD_FIELDS: &[FieldDef] = &[
    f!("first_name", K::Text),
    f!("last_name", K::Text, required),
    f!("company_name", K::Text),
    f!("email", K::Email),
    f!("phone", K::Text),
];

const OPPORTUNITY_FIELDS: &[FieldDef] = &[
    f!("name", K::Text, required),
    f!("account_id", K::Reference(EntitySet::Accounts)),
    f!("contact_id", K::Reference(EntitySet::Contacts)),
    f!("estimated_value", K::Money),
];

const CASE_FIELDS: &[FieldDef] = &[
    f!("title", K::Text, required),
    f!("account_id", K::Reference(EntitySet::Accounts)),
    f!("contact_id", K::Reference(EntitySet::Contacts)),
];

const APPOINTMENT_FIELDS: &[FieldDef] = &[
    f!("subject", K::Text, required, mailbox),
    f!("location", K::Text, mailbox),
    f!("description", K::LongText, mailbox),
    f!("start", K::DateTime, required, mailbox),
    f!("end", K::DateTime, required, mailbox),
    f!("all_day", K::Bool, mailbox),
    f!("time_zone", K::TimeZone, mailbox),
    f!("organizer", K::Email, mailbox),
    f!("attendees", K::Attendees, mailbox),
    f!("recurrence", K::Recurrence, mailbox),
    f!("series_id", K::Reference(EntitySet::Appointments)),
    f!("recurrence_id", K::DateTime),
    f!("regarding", K::Regarding, mailbox),
];

const SERVICE_APPOINTMENT_FIELDS: &[FieldDef] = &[
    f!("subject", K::Text, required, mailbox),
    f!("location", K::Text, mailbox),
    f!("description", K::LongText, mailbox),
    f!("start", K::DateTime, required, mailbox),
    f!("end", K::DateTime, required, mailbox),
    f!("all_day", K::Bool, mailbox),
    f!("time_zone", K::TimeZone, mailbox),
    f!("organizer", K::Email, mailbox),
    f!("attendees", K::Attendees, mailbox),
    f!("recurrence", K::Recurrence, mailbox),
    f!("series_id", K::Reference(EntitySet::Serviceappointments)),
    f!("recurrence_id", K::DateTime),
    f!("regarding", K::Regarding, mailbox),
];

const TODO_FIELDS: &[FieldDef] = &[
    f!("subject", K::Text, required, mailbox),
    f!("description", K::LongText, mailbox),
    f!("start", K::DateTime, mailbox),
    f!("due", K::DateTime, mailbox),
    f!("priority", K::Enum(&["low", "normal", "high"]), mailbox),
    f!("percent_complete", K::Percent, mailbox),
    f!("regarding", K::Regarding, mailbox),
];

const PHONECALL_FIELDS: &[FieldDef] = &[
    f!("subject", K::Text, required, mailbox),
    f!("description", K::LongText, mailbox),
    f!("start", K::DateTime, mailbox),
    f!("due", K::DateTime, mailbox),
    f!("priority", K::Enum(&["low", "normal", "high"]), mailbox),
    f!("percent_complete", K::Percent, mailbox),
    f!("regarding", K::Regarding, mailbox),
    f!("phone_number", K::Text),
    f!("direction", K::Enum(&["incoming", "outgoing"])),
];

const EMAIL_FIELDS: &[FieldDef] = &[
    f!("message_id", K::Text),
    f!("in_reply_to", K::Text),
    f!("subject", K::Text),
    f!("body_text", K::LongText),
    f!("body_html", K::LongText),
    f!("from", K::Email),
    f!("to", K::AddressList),
    f!("cc", K::AddressList),
    f!("bcc", K::AddressList),
    f!("direction", K::Enum(&["incoming", "outgoing"])),
    f!("sent_at", K::DateTime),
    f!("tracking_token", K::Text),
    f!("parties", K::Parties),
    // R-E5: after tracking only `regarding` changes from the mailbox side.
    f!("regarding", K::Regarding, mailbox),
    f!("raw_size", K::Count),
];

impl EntitySet {
    pub const ALL: [EntitySet; 13] = [
        EntitySet::Users,
        EntitySet::Accounts,
        EntitySet::Contacts,
        EntitySet::Leads,
        EntitySet::Opportunities,
        EntitySet::Cases,
        EntitySet::Appointments,
        EntitySet::Serviceappointments,
        EntitySet::Tasks,
        EntitySet::Phonecalls,
        EntitySet::Letters,
        EntitySet::Faxes,
        EntitySet::Emails,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntitySet::Users => "users",
            EntitySet::Accounts => "accounts",
            EntitySet::Contacts => "contacts",
            EntitySet::Leads => "leads",
            EntitySet::Opportunities => "opportunities",
            EntitySet::Cases => "cases",
            EntitySet::Appointments => "appointments",
            EntitySet::Serviceappointments => "serviceappointments",
            EntitySet::Tasks => "tasks",
            EntitySet::Phonecalls => "phonecalls",
            EntitySet::Letters => "letters",
            EntitySet::Faxes => "faxes",
            EntitySet::Emails => "emails",
        }
    }

    /// The fields of this set, besides the common ones (id, version, owner_id,
    /// created_at, modified_at, state).
    pub fn fields(self) -> &'static [FieldDef] {
        match self {
            EntitySet::Users => USER_FIELDS,
            EntitySet::Accounts => ACCOUNT_FIELDS,
            EntitySet::Contacts => CONTACT_FIELDS,
            EntitySet::Leads => LEAD_FIELDS,
            EntitySet::Opportunities => OPPORTUNITY_FIELDS,
            EntitySet::Cases => CASE_FIELDS,
            EntitySet::Appointments => APPOINTMENT_FIELDS,
            EntitySet::Serviceappointments => SERVICE_APPOINTMENT_FIELDS,
            EntitySet::Tasks | EntitySet::Letters | EntitySet::Faxes => TODO_FIELDS,
            EntitySet::Phonecalls => PHONECALL_FIELDS,
            EntitySet::Emails => EMAIL_FIELDS,
        }
    }

    pub fn field(self, name: &str) -> Option<&'static FieldDef> {
        self.fields().iter().find(|f| f.name == name)
    }

    /// The values `state` may take; the first is the default.
    pub fn states(self) -> &'static [&'static str] {
        match self {
            EntitySet::Users => &["active", "disabled"],
            EntitySet::Accounts | EntitySet::Contacts => ACTIVE_STATES,
            EntitySet::Leads => &["open", "qualified", "disqualified"],
            EntitySet::Opportunities => &["open", "won", "lost"],
            EntitySet::Cases => &["active", "resolved", "canceled"],
            EntitySet::Appointments | EntitySet::Serviceappointments => APPOINTMENT_STATES,
            EntitySet::Tasks | EntitySet::Phonecalls | EntitySet::Letters | EntitySet::Faxes => {
                ACTIVITY_STATES
            }
            // A tracked email is a finished activity unless told otherwise.
            EntitySet::Emails => &["completed", "open", "canceled"],
        }
    }

    pub fn default_state(self) -> &'static str {
        self.states()[0]
    }

    /// Whether records of this set go to mailboxes at all (SPEC §1, §8).
    pub fn syncs_to_mailbox(self) -> bool {
        self.fields().iter().any(|f| f.mailbox)
    }

    /// Pairs of fields where the second must not be before the first.
    pub fn time_ranges(self) -> &'static [(&'static str, &'static str)] {
        match self {
            EntitySet::Appointments | EntitySet::Serviceappointments => &[("start", "end")],
            EntitySet::Tasks | EntitySet::Phonecalls | EntitySet::Letters | EntitySet::Faxes => {
                &[("start", "due")]
            }
            _ => &[],
        }
    }
}

impl fmt::Display for EntitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is not an entity set; it lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown entity set '{0}'; use one of: {list}", list = EntitySet::ALL.map(|s| s.as_str()).join(", "))]
pub struct UnknownEntitySet(pub String);

impl FromStr for EntitySet {
    type Err = UnknownEntitySet;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntitySet::ALL
            .into_iter()
            .find(|set| set.as_str() == s)
            .ok_or_else(|| UnknownEntitySet(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for set in EntitySet::ALL {
            assert_eq!(set.as_str().parse::<EntitySet>().unwrap(), set);
            assert_eq!(serde_json::to_value(set).unwrap(), set.as_str());
        }
        assert!("widgets"
            .parse::<EntitySet>()
            .unwrap_err()
            .to_string()
            .contains("contacts"));
    }

    #[test]
    fn field_names_are_unique_and_not_common_columns() {
        for set in EntitySet::ALL {
            let mut names: Vec<_> = set.fields().iter().map(|f| f.name).collect();
            names.sort();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "{set}");
            for common in crate::record::COMMON_FIELDS {
                assert!(set.field(common).is_none(), "{set}.{common}");
            }
        }
    }

    #[test]
    fn only_mailbox_sets_sync() {
        assert!(EntitySet::Contacts.syncs_to_mailbox());
        assert!(EntitySet::Emails.syncs_to_mailbox());
        assert!(!EntitySet::Accounts.syncs_to_mailbox());
        assert!(!EntitySet::Users.syncs_to_mailbox());
    }
}
