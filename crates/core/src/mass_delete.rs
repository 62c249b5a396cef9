//! R-T5, the blast-radius guard, as a pure decision over counts. The same
//! limits hold on both sides of a sync: deletions the CRM asks of the
//! mailbox (decided on the server, reported in prepare) and deletions and
//! untracks the mailbox pushes to the CRM (decided by the agent).

use serde::{Deserialize, Serialize};

use crate::settings::OrgSettings;

/// The three numbers of R-T5 (organization settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MassDeleteLimits {
    /// More deletions than this in one sync, on one side, are a mass delete.
    pub max_items: u32,
    /// The share limit counts only above this many deletions in a collection.
    pub min_items: u32,
    /// More than this share (percent) of a collection is a mass delete.
    pub max_percent: u32,
}

impl Default for MassDeleteLimits {
    fn default() -> Self {
        MassDeleteLimits::of(&OrgSettings::default())
    }
}

/// What one side of a sync would delete in one collection, and how many
/// items of it the collection holds before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletions {
    pub collection: String,
    pub deletes: u64,
    pub held: u64,
}

impl MassDeleteLimits {
    pub fn of(org: &OrgSettings) -> MassDeleteLimits {
        MassDeleteLimits {
            max_items: org.mass_delete_max_items,
            min_items: org.mass_delete_min_items,
            max_percent: org.mass_delete_max_percent,
        }
    }

    /// Why these deletions (one side of one sync) are a mass delete, in
    /// words, or `None` when they may go ahead.
    pub fn exceeded(&self, per_collection: &[Deletions]) -> Option<String> {
        let total: u64 = per_collection.iter().map(|d| d.deletes).sum();
        if total > u64::from(self.max_items) {
            return Some(format!(
                "{total} deletions, more than the limit of {}",
                self.max_items
            ));
        }
        per_collection
            .iter()
            .find(|d| {
                d.deletes > u64::from(self.min_items)
                    && d.deletes * 100 > u64::from(self.max_percent) * d.held
            })
            .map(|d| {
                format!(
                    "{} of the {} items of {} ({}%), more than {} items and more than {}% of it",
                    d.deletes,
                    d.held,
                    d.collection,
                    d.deletes * 100 / d.held.max(1),
                    self.min_items,
                    self.max_percent
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(collection: &str, deletes: u64, held: u64) -> Deletions {
        Deletions {
            collection: collection.into(),
            deletes,
            held,
        }
    }

    #[test]
    fn r_t5_more_than_fifty_items_is_a_mass_delete() {
        let l = MassDeleteLimits::default();
        assert_eq!(l.exceeded(&[del("tasks", 50, 10_000)]), None);
        let why = l
            .exceeded(&[del("tasks", 30, 10_000), del("contacts", 21, 10_000)])
            .expect("51 in one sync");
        assert!(why.contains("51 deletions") && why.contains("50"), "{why}");
    }

    #[test]
    fn r_t5_share_counts_only_above_five_items() {
        let l = MassDeleteLimits::default();
        // Deleting the one appointment of a calendar: 100%, but one item.
        assert_eq!(l.exceeded(&[del("calendar", 1, 1)]), None);
        assert_eq!(l.exceeded(&[del("calendar", 5, 5)]), None);
        let why = l.exceeded(&[del("tasks", 6, 10)]).expect("6 of 10 = 60%");
        assert!(why.contains("6 of the 10 items of tasks"), "{why}");
        // 6 of 30 is exactly 20%: not more than 20%.
        assert_eq!(l.exceeded(&[del("tasks", 6, 30)]), None);
        assert!(l.exceeded(&[del("tasks", 7, 30)]).is_some());
    }

    #[test]
    fn r_t5_share_is_per_collection() {
        let l = MassDeleteLimits::default();
        // 6 of 100 contacts and 0 of 5 tasks: 6% of contacts.
        assert_eq!(
            l.exceeded(&[del("contacts", 6, 100), del("tasks", 0, 5)]),
            None
        );
        assert!(l
            .exceeded(&[del("contacts", 1, 100), del("tasks", 6, 6)])
            .is_some());
    }

    #[test]
    fn r_t5_the_three_numbers_are_settings() {
        let l = MassDeleteLimits {
            max_items: 3,
            min_items: 0,
            max_percent: 50,
        };
        assert!(l.exceeded(&[del("tasks", 4, 1000)]).is_some());
        assert!(l.exceeded(&[del("calendar", 1, 1)]).is_some());
        assert_eq!(l.exceeded(&[del("calendar", 1, 2)]), None);
    }
}
