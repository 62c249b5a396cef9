//! The agent's decisions as pure tables (SPEC §3, §9, §10): when a
//! mailbox change is synchronized (R-T2), and what one item's
//! synchronization does given its link state, the CRM's delivery, what
//! happened to it in the mailbox and the client's role. The executor
//! performs the actions; nothing here does I/O.

use serde::Serialize;

use crate::sync_rules::Removal;

/// R-M3: the link state of a mailbox item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LinkState {
    /// 0: not tracked.
    NotTracked,
    /// 1: marked for tracking, not yet in the CRM.
    ToBeTracked,
    /// 2: tracked, linked to a CRM record.
    Tracked,
}

impl LinkState {
    pub fn code(self) -> u8 {
        match self {
            LinkState::NotTracked => 0,
            LinkState::ToBeTracked => 1,
            LinkState::Tracked => 2,
        }
    }
}

/// How this client relates to the mailbox (R-C1..R-C5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    /// The primary, or any client in roaming mode (R-C2).
    Primary,
    Secondary,
    Delegated,
}

/// The kind of item, as R-T2's columns distinguish them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ItemKind {
    Email,
    Draft,
    /// Contacts, appointments, tasks (and phone calls, letters, faxes).
    NonEmail,
}

/// What the user did, as a change notification reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UserAction {
    Track,
    Update,
    Untrack,
    Delete,
    SetRegarding,
}

/// When a change is synchronized (R-T2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Timing {
    /// At once, in the background.
    Immediately,
    /// When the draft is sent (it appears in the Sent folder, R-E6).
    WhenSent,
    /// When the item is saved (the notification of the save).
    WhenSaved,
    /// At the primary client's next scheduled or manual sync.
    NextSync,
    /// Does not apply.
    NotApplicable,
}

/// R-T2, row by row and column by column as SPEC §10 writes it.
pub fn timing(action: UserAction, kind: ItemKind, role: Role) -> Timing {
    use ItemKind::*;
    use Role::*;
    use Timing::*;
    use UserAction::*;
    match (action, kind, role) {
        // Deletions always wait for the next sync (§9: "never at once").
        (Delete, Draft, _) => NotApplicable,
        (Delete, _, _) => NextSync,
        // A delegate only marks; the owner's primary acts at its next sync (R-C5).
        (_, NonEmail, Delegated) => NextSync,
        (_, Email, Delegated) => NextSync,
        (Track | Update, Draft, _) => WhenSent,
        (Untrack | SetRegarding, Draft, _) => NotApplicable,
        (_, Email, Primary | Secondary) => Immediately,
        // R-C3: a secondary never pushes non-email changes.
        (_, NonEmail, Secondary) => NextSync,
        (Track | Update | Untrack, NonEmail, Primary) => WhenSaved,
        (SetRegarding, NonEmail, Primary) => Immediately,
    }
}

/// What the CRM's batch says about the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmSide {
    Unchanged,
    /// Created or updated in the CRM: the delivered record is newer.
    Changed,
    Removed(Removal),
}

/// What happened to the item in the mailbox since its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxSide {
    Unchanged,
    Changed,
    Deleted,
    /// The tracking marker was removed (R-M1: untrack).
    MarkerRemoved,
}

/// One step of an item's synchronization, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Action {
    /// Write the CRM record into the mailbox (create or overwrite, with the
    /// item's etag as precondition).
    WriteToMailbox,
    DeleteFromMailbox,
    /// Keep the item, drop X-CRM-ID and the tracking marker.
    UnlinkInMailbox,
    /// Push `track`; the answer's record is then written (X-CRM-ID).
    PushTrack,
    /// Push `update` with the baseline; the answer's merged record is then
    /// written to the mailbox and becomes the baseline (R-F5).
    PushUpdate,
    PushDelete,
    PushUntrack,
    /// Forget the item in the cache (it is gone on both sides, or was
    /// never in the CRM).
    ForgetLink,
    /// Leave it for the primary client (R-C3) or the owner's primary (R-C5);
    /// the mailbox keeps the change meanwhile (R-C6).
    LeaveForPrimary,
    /// Report it (`crmsync status`), act on nothing.
    Report,
}

/// The per-item table for contacts, appointments and tasks: CRM → mailbox
/// first, then mailbox → CRM (R-F5).
pub fn plan_item(link: LinkState, crm: CrmSide, mailbox: MailboxSide, role: Role) -> Vec<Action> {
    use Action::*;
    use CrmSide as C;
    use MailboxSide as M;
    let pushes = role == Role::Primary;
    let push = |a: Action| if pushes { a } else { LeaveForPrimary };
    match (link, crm, mailbox) {
        // Not tracked: only the CRM can bring it in (a delivery).
        (LinkState::NotTracked, C::Changed, _) => vec![WriteToMailbox],
        (LinkState::NotTracked, _, _) => vec![],

        // Marked, not yet in the CRM (R-M3 state 1).
        (LinkState::ToBeTracked, _, M::Deleted | M::MarkerRemoved) => vec![ForgetLink],
        (LinkState::ToBeTracked, _, _) => vec![push(PushTrack)],

        // Tracked: CRM removals.
        (LinkState::Tracked, C::Removed(_), M::Deleted | M::MarkerRemoved) => vec![ForgetLink],
        // The user edited an item the CRM deleted: keep the edit, unlinked
        // (nothing disappears silently, R-F6 spirit), and report it.
        (LinkState::Tracked, C::Removed(Removal::Delete), M::Changed) => {
            vec![UnlinkInMailbox, Report]
        }
        (LinkState::Tracked, C::Removed(Removal::Delete), M::Unchanged) => vec![DeleteFromMailbox],
        (LinkState::Tracked, C::Removed(Removal::Unlink), _) => vec![UnlinkInMailbox],

        // Tracked: mailbox deletions and untracking wait for the next sync
        // and go to the CRM, which applies §9.
        (LinkState::Tracked, _, M::Deleted) => vec![push(PushDelete)],
        (LinkState::Tracked, _, M::MarkerRemoved) => vec![push(PushUntrack)],

        // Tracked: edits.
        (LinkState::Tracked, C::Changed, M::Unchanged) => vec![WriteToMailbox],
        // Both sides changed: the server merges per field, the mailbox gets
        // the merged record (R-F5). A secondary leaves the item for the
        // primary and does not overwrite the user's edit.
        (LinkState::Tracked, C::Changed, M::Changed) => vec![push(PushUpdate)],
        (LinkState::Tracked, C::Unchanged, M::Changed) => vec![push(PushUpdate)],
        (LinkState::Tracked, C::Unchanged, M::Unchanged) => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ItemKind::*;
    use Role::*;
    use Timing::*;
    use UserAction::*;

    #[test]
    fn r_t2_table_as_the_spec_writes_it() {
        // (action, [email primary, email secondary, draft, non-email primary, non-email secondary/delegate])
        let table = [
            (
                Track,
                [Immediately, Immediately, WhenSent, WhenSaved, NextSync],
            ),
            (
                Update,
                [Immediately, Immediately, WhenSent, WhenSaved, NextSync],
            ),
            (
                Untrack,
                [Immediately, Immediately, NotApplicable, WhenSaved, NextSync],
            ),
            (
                Delete,
                [NextSync, NextSync, NotApplicable, NextSync, NextSync],
            ),
            (
                SetRegarding,
                [
                    Immediately,
                    Immediately,
                    NotApplicable,
                    Immediately,
                    NextSync,
                ],
            ),
        ];
        for (action, row) in table {
            assert_eq!(
                timing(action, Email, Primary),
                row[0],
                "{action:?} email primary"
            );
            assert_eq!(
                timing(action, Email, Secondary),
                row[1],
                "{action:?} email secondary"
            );
            assert_eq!(timing(action, Draft, Primary), row[2], "{action:?} draft");
            assert_eq!(
                timing(action, NonEmail, Primary),
                row[3],
                "{action:?} non-email primary"
            );
            assert_eq!(
                timing(action, NonEmail, Secondary),
                row[4],
                "{action:?} non-email secondary"
            );
            assert_eq!(
                timing(action, NonEmail, Delegated),
                row[4],
                "{action:?} non-email delegate"
            );
        }
    }

    #[test]
    fn r_c5_a_delegate_never_acts_at_once() {
        for action in [Track, Update, Untrack, Delete, SetRegarding] {
            assert_eq!(timing(action, Email, Delegated), NextSync);
        }
    }

    #[test]
    fn r_f5_both_sides_changed_goes_through_the_server_merge() {
        let a = plan_item(
            LinkState::Tracked,
            CrmSide::Changed,
            MailboxSide::Changed,
            Primary,
        );
        assert_eq!(a, vec![Action::PushUpdate]);
        assert_eq!(
            plan_item(
                LinkState::Tracked,
                CrmSide::Changed,
                MailboxSide::Unchanged,
                Primary
            ),
            vec![Action::WriteToMailbox]
        );
    }

    #[test]
    fn r_c3_secondaries_leave_changes_for_the_primary() {
        for m in [
            MailboxSide::Changed,
            MailboxSide::Deleted,
            MailboxSide::MarkerRemoved,
        ] {
            assert_eq!(
                plan_item(LinkState::Tracked, CrmSide::Unchanged, m, Secondary),
                vec![Action::LeaveForPrimary]
            );
        }
        assert_eq!(
            plan_item(
                LinkState::ToBeTracked,
                CrmSide::Unchanged,
                MailboxSide::Unchanged,
                Delegated
            ),
            vec![Action::LeaveForPrimary]
        );
    }

    #[test]
    fn crm_removals_follow_section_9_and_never_eat_an_edit() {
        let del = CrmSide::Removed(Removal::Delete);
        assert_eq!(
            plan_item(LinkState::Tracked, del, MailboxSide::Unchanged, Primary),
            vec![Action::DeleteFromMailbox]
        );
        assert_eq!(
            plan_item(LinkState::Tracked, del, MailboxSide::Changed, Primary),
            vec![Action::UnlinkInMailbox, Action::Report]
        );
        let unlink = CrmSide::Removed(Removal::Unlink);
        assert_eq!(
            plan_item(LinkState::Tracked, unlink, MailboxSide::Changed, Primary),
            vec![Action::UnlinkInMailbox]
        );
        assert_eq!(
            plan_item(LinkState::Tracked, del, MailboxSide::Deleted, Primary),
            vec![Action::ForgetLink]
        );
    }

    #[test]
    fn r_m3_marked_items_are_tracked_or_forgotten() {
        assert_eq!(
            plan_item(
                LinkState::ToBeTracked,
                CrmSide::Unchanged,
                MailboxSide::Changed,
                Primary
            ),
            vec![Action::PushTrack]
        );
        assert_eq!(
            plan_item(
                LinkState::ToBeTracked,
                CrmSide::Unchanged,
                MailboxSide::MarkerRemoved,
                Primary
            ),
            vec![Action::ForgetLink]
        );
        assert_eq!(
            plan_item(
                LinkState::NotTracked,
                CrmSide::Changed,
                MailboxSide::Unchanged,
                Primary
            ),
            vec![Action::WriteToMailbox]
        );
        assert_eq!(
            plan_item(
                LinkState::NotTracked,
                CrmSide::Unchanged,
                MailboxSide::Changed,
                Primary
            ),
            vec![]
        );
    }

    #[test]
    fn every_combination_is_decided_and_pushes_only_from_a_primary() {
        let links = [
            LinkState::NotTracked,
            LinkState::ToBeTracked,
            LinkState::Tracked,
        ];
        let crms = [
            CrmSide::Unchanged,
            CrmSide::Changed,
            CrmSide::Removed(Removal::Delete),
            CrmSide::Removed(Removal::Unlink),
        ];
        let mailboxes = [
            MailboxSide::Unchanged,
            MailboxSide::Changed,
            MailboxSide::Deleted,
            MailboxSide::MarkerRemoved,
        ];
        for l in links {
            for c in crms {
                for m in mailboxes {
                    for role in [Secondary, Delegated] {
                        let acts = plan_item(l, c, m, role);
                        assert!(
                            !acts.iter().any(|a| matches!(
                                a,
                                Action::PushTrack
                                    | Action::PushUpdate
                                    | Action::PushDelete
                                    | Action::PushUntrack
                            )),
                            "{l:?} {c:?} {m:?} {role:?}: {acts:?}"
                        );
                    }
                }
            }
        }
    }
}
