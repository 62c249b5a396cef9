//! What a mailbox holds (SPEC §13): any subset of contacts, calendar,
//! tasks and mail. The agent says which it holds; the server delivers
//! nothing of the others.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::entity::EntitySet;
use crate::sync_rules::is_todo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailboxKind {
    Contacts,
    Calendar,
    Tasks,
    Mail,
}

impl MailboxKind {
    pub const ALL: [MailboxKind; 4] = [
        MailboxKind::Contacts,
        MailboxKind::Calendar,
        MailboxKind::Tasks,
        MailboxKind::Mail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MailboxKind::Contacts => "contacts",
            MailboxKind::Calendar => "calendar",
            MailboxKind::Tasks => "tasks",
            MailboxKind::Mail => "mail",
        }
    }

    /// The kind of mailbox collection a record of `set` lives in, if any.
    pub fn of_set(set: EntitySet) -> Option<MailboxKind> {
        match set {
            EntitySet::Contacts => Some(MailboxKind::Contacts),
            EntitySet::Appointments | EntitySet::Serviceappointments => Some(MailboxKind::Calendar),
            EntitySet::Emails => Some(MailboxKind::Mail),
            s if is_todo(s) => Some(MailboxKind::Tasks),
            _ => None,
        }
    }

    /// The entity sets whose records live in this kind of collection.
    pub fn sets(self) -> impl Iterator<Item = EntitySet> {
        EntitySet::ALL
            .into_iter()
            .filter(move |s| MailboxKind::of_set(*s) == Some(self))
    }

    /// A list of kind names as a client sends it: sorted, each once. An
    /// unknown name is refused with the names that exist.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Vec<MailboxKind>, String> {
        let mut out = names
            .iter()
            .map(|n| n.as_ref().parse())
            .collect::<Result<Vec<MailboxKind>, String>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl fmt::Display for MailboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MailboxKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MailboxKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "'{}' is not a kind of mailbox collection; use contacts, calendar, tasks or mail",
                    crate::field::shorten(s)
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mailbox_set_has_a_kind_and_others_none() {
        for set in crate::settings::MAILBOX_TYPES {
            assert!(MailboxKind::of_set(set).is_some(), "{set}");
        }
        assert_eq!(
            MailboxKind::of_set(EntitySet::Phonecalls),
            Some(MailboxKind::Tasks)
        );
        assert_eq!(MailboxKind::of_set(EntitySet::Accounts), None);
        let tasks: Vec<_> = MailboxKind::Tasks.sets().collect();
        assert_eq!(tasks.len(), 4);
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_checked() {
        assert_eq!(
            MailboxKind::parse_list(&["mail", "contacts", "mail"]),
            Ok(vec![MailboxKind::Contacts, MailboxKind::Mail])
        );
        let err = MailboxKind::parse_list(&["notes"]).unwrap_err();
        assert!(err.contains("'notes'") && err.contains("calendar"), "{err}");
    }
}
