//! The change feed behind `GET /sync/wait` (R-T7): what recently committed,
//! held in memory so that a waiting client costs no CPU and no database
//! session. Writers publish each committed version with the kinds of
//! mailbox collection it touched; waiters park on a `watch` channel and
//! look, on each wake-up, whether a change after their version concerns
//! them. Pure bookkeeping: the PostgreSQL listener (`listen.rs`) and the
//! commit path (`Store::commit_change`) feed it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crmsync_core::kind::MailboxKind;
use crmsync_core::EntitySet;
use tokio::sync::watch;
use uuid::Uuid;

/// How many recent changes are remembered. A waiter whose version is
/// older than all of them is told "changed" at once: a false wake-up
/// costs it one prepare that finds nothing.
const REMEMBERED: usize = 4096;

/// The kinds of mailbox collection a change may concern, as a bit set
/// (one bit per [`MailboxKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kinds(u8);

impl Kinds {
    pub const NONE: Kinds = Kinds(0);
    pub const ALL: Kinds = Kinds(0b1111);

    fn bit(kind: MailboxKind) -> u8 {
        1 << MailboxKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default()
    }

    pub fn of(kinds: &[MailboxKind]) -> Kinds {
        Kinds(kinds.iter().fold(0, |acc, k| acc | Kinds::bit(*k)))
    }

    /// The kind a change to a record of `set` concerns: none for records
    /// that never reach mailboxes (prepare skips them too).
    pub fn of_set(set: EntitySet) -> Kinds {
        MailboxKind::of_set(set).map_or(Kinds::NONE, |k| Kinds(Kinds::bit(k)))
    }

    pub fn meets(self, other: Kinds) -> bool {
        self.0 & other.0 != 0
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Kinds {
        Kinds(bits & Kinds::ALL.0)
    }
}

/// One committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub version: i64,
    pub kinds: Kinds,
    /// The client whose push made it: that client's mailbox already shows
    /// it (the push answer), so it is not woken for its own change.
    pub origin: Option<Uuid>,
}

impl Committed {
    /// The wire form of a PostgreSQL notification: `version kinds [origin]`.
    pub fn to_payload(&self) -> String {
        match self.origin {
            Some(o) => format!("{} {} {}", self.version, self.kinds.bits(), o.simple()),
            None => format!("{} {}", self.version, self.kinds.bits()),
        }
    }

    pub fn from_payload(payload: &str) -> Option<Committed> {
        let mut parts = payload.split(' ');
        let version = parts.next()?.parse().ok()?;
        let kinds = Kinds::from_bits(parts.next()?.parse().ok()?);
        let origin = match parts.next() {
            Some(o) => Some(Uuid::parse_str(o).ok()?),
            None => None,
        };
        Some(Committed {
            version,
            kinds,
            origin,
        })
    }
}

/// What the feed knows: every change after `floor`, in version order, and
/// whether the server is shutting down.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    /// Changes up to this version may have happened unseen (before the
    /// server started, while the listener was away, or forgotten).
    floor: i64,
    changes: VecDeque<Committed>,
    /// Counts rule changes (filters, settings, field rules, a reset or a
    /// new primary): they take no version, yet change what prepares find.
    rules: u64,
    closing: bool,
}

/// What a waiter learns on looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// A change after its version may concern it.
    Changed,
    /// Nothing yet: park until the feed moves.
    Nothing,
    /// The server is shutting down: answer now.
    Closing,
}

impl Recent {
    pub fn new(floor: i64) -> Recent {
        Recent {
            floor,
            ..Recent::default()
        }
    }

    /// The newest version the feed knows of.
    pub fn version(&self) -> i64 {
        self.changes
            .back()
            .map_or(self.floor, |c| c.version.max(self.floor))
    }

    /// Adds a committed change. Notifications of several processes may
    /// arrive out of order, and one process hears its own writes twice
    /// (directly and through PostgreSQL): kept sorted, each version once.
    pub fn add(&mut self, change: Committed) {
        if change.version <= self.floor {
            return;
        }
        let at = self
            .changes
            .iter()
            .rposition(|c| c.version <= change.version)
            .map_or(0, |i| i + 1);
        if at > 0 && self.changes[at - 1].version == change.version {
            let same = &mut self.changes[at - 1];
            same.kinds = Kinds(same.kinds.0 | change.kinds.0);
            if same.origin != change.origin {
                same.origin = None;
            }
            return;
        }
        self.changes.insert(at, change);
        while self.changes.len() > REMEMBERED {
            if let Some(old) = self.changes.pop_front() {
                self.floor = old.version;
            }
        }
    }

    /// Anything up to `version` may have been missed (a listener that
    /// reconnected): waiters behind it are told "changed".
    pub fn missed_up_to(&mut self, version: i64) {
        if version > self.floor {
            self.floor = version;
            while self.changes.front().is_some_and(|c| c.version <= version) {
                self.changes.pop_front();
            }
        }
    }

    pub fn close(&mut self) {
        self.closing = true;
    }

    pub fn rules_changed(&mut self) {
        self.rules += 1;
    }

    /// The one client whose pushes made every change after `after` up to
    /// `upto`, if one did (and the feed remembers them all): the mailbox
    /// of that client already shows them.
    pub fn sole_origin(&self, after: i64, upto: i64) -> Option<Uuid> {
        if after < self.floor {
            return None;
        }
        let mut origins = self
            .changes
            .iter()
            .filter(|c| c.version > after && c.version <= upto)
            .map(|c| c.origin);
        let first = origins.next()??;
        origins.all(|o| o == Some(first)).then_some(first)
    }

    /// Whether a change after `since`, or a rule change after the waiter
    /// saw `rules`, may concern a client holding `kinds`.
    pub fn look(&self, since: i64, rules: u64, kinds: Kinds, client: Uuid) -> Look {
        if self.closing {
            return Look::Closing;
        }
        if since < self.floor || rules != self.rules {
            return Look::Changed;
        }
        let concerns = self
            .changes
            .iter()
            .rev()
            .take_while(|c| c.version > since)
            .any(|c| c.kinds.meets(kinds) && c.origin != Some(client));
        if concerns {
            Look::Changed
        } else {
            Look::Nothing
        }
    }
}

/// The feed one `serve` process shares between its writers and waiters.
#[derive(Clone)]
pub struct ChangeFeed {
    tx: Arc<watch::Sender<Recent>>,
}

impl ChangeFeed {
    /// A feed that knows nothing before `committed`, the version committed
    /// when the server started.
    pub fn new(committed: i64) -> ChangeFeed {
        ChangeFeed {
            tx: Arc::new(watch::Sender::new(Recent::new(committed))),
        }
    }

    pub fn publish(&self, change: Committed) {
        self.tx.send_modify(|r| r.add(change));
    }

    pub fn missed_up_to(&self, version: i64) {
        self.tx.send_modify(|r| r.missed_up_to(version));
    }

    /// Answers every waiter now (graceful shutdown must not wait for them).
    pub fn close(&self) {
        self.tx.send_modify(Recent::close);
    }

    /// Wakes every waiter: rules changed (each may find work; the clients
    /// the change does not concern prepare and find nothing).
    pub fn rules_changed(&self) {
        self.tx.send_modify(Recent::rules_changed);
    }

    pub fn version(&self) -> i64 {
        self.tx.borrow().version()
    }

    /// [`Recent::look`] now, without waiting.
    pub fn look_now(&self, since: i64, rules: u64, kinds: Kinds, client: Uuid) -> Look {
        self.tx.borrow().look(since, rules, kinds, client)
    }

    /// [`Recent::sole_origin`].
    pub fn sole_origin(&self, after: i64, upto: i64) -> Option<Uuid> {
        self.tx.borrow().sole_origin(after, upto)
    }

    /// How many rule changes the feed has seen: taken before a waiter
    /// reads its client, so a change in between is not missed.
    pub fn rules_seen(&self) -> u64 {
        self.tx.borrow().rules
    }

    /// Waits until a change after `since` (or a rule change after
    /// `rules`) may concern the client, the feed closes, or `timeout`
    /// passes; `Look::Nothing` on timeout. Parked on the channel: no CPU,
    /// no database connection.
    pub async fn wait(
        &self,
        since: i64,
        rules: u64,
        kinds: Kinds,
        client: Uuid,
        timeout: Duration,
    ) -> Look {
        let mut rx = self.tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let look = rx.borrow_and_update().look(since, rules, kinds, client);
            if look != Look::Nothing {
                return look;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // The sender is never dropped while requests run; time out.
                Ok(Err(_)) | Err(_) => return Look::Nothing,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTACTS: Kinds = Kinds(0b0001);

    fn change(version: i64, set: EntitySet) -> Committed {
        Committed {
            version,
            kinds: Kinds::of_set(set),
            origin: None,
        }
    }

    #[test]
    fn r_t7_a_change_of_a_held_kind_after_the_version_wakes() {
        let me = Uuid::new_v4();
        let mut r = Recent::new(10);
        assert_eq!(r.look(10, 0, CONTACTS, me), Look::Nothing);
        r.add(change(11, EntitySet::Accounts));
        assert_eq!(
            r.look(10, 0, CONTACTS, me),
            Look::Nothing,
            "accounts never reach a mailbox"
        );
        r.add(change(12, EntitySet::Tasks));
        assert_eq!(
            r.look(10, 0, CONTACTS, me),
            Look::Nothing,
            "a kind not held"
        );
        assert_eq!(
            r.look(10, 0, Kinds::of(&[MailboxKind::Tasks]), me),
            Look::Changed
        );
        r.add(change(13, EntitySet::Contacts));
        assert_eq!(r.look(12, 0, CONTACTS, me), Look::Changed);
        assert_eq!(r.look(13, 0, CONTACTS, me), Look::Nothing, "not after 13");
        assert_eq!(r.version(), 13);
    }

    #[test]
    fn r_t7_a_version_older_than_what_is_remembered_wakes_at_once() {
        let me = Uuid::new_v4();
        let r = Recent::new(50);
        assert_eq!(r.look(3, 0, Kinds::NONE, me), Look::Changed);
        let mut r = Recent::new(0);
        for v in 1..=(REMEMBERED as i64 + 10) {
            r.add(change(v, EntitySet::Accounts));
        }
        assert_eq!(
            r.look(5, 0, CONTACTS, me),
            Look::Changed,
            "forgotten: may be anything"
        );
        assert_eq!(r.look(20, 0, CONTACTS, me), Look::Nothing);
        assert_eq!(r.changes.len(), REMEMBERED);
    }

    #[test]
    fn r_t7_out_of_order_and_repeated_notifications_are_kept_once_in_order() {
        let me = Uuid::new_v4();
        let mut r = Recent::new(0);
        r.add(change(3, EntitySet::Accounts));
        r.add(change(2, EntitySet::Contacts));
        r.add(change(3, EntitySet::Accounts));
        r.add(change(1, EntitySet::Accounts));
        let versions: Vec<i64> = r.changes.iter().map(|c| c.version).collect();
        assert_eq!(versions, [1, 2, 3]);
        assert_eq!(r.look(1, 0, CONTACTS, me), Look::Changed, "2 is after 1");
        assert_eq!(r.look(2, 0, CONTACTS, me), Look::Nothing);
    }

    #[test]
    fn r_t7_a_client_is_not_woken_by_its_own_push() {
        let me = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut r = Recent::new(0);
        r.add(Committed {
            version: 1,
            kinds: CONTACTS,
            origin: Some(me),
        });
        assert_eq!(r.look(0, 0, CONTACTS, me), Look::Nothing);
        assert_eq!(r.look(0, 0, CONTACTS, other), Look::Changed);
    }

    #[test]
    fn r_t7_after_a_listener_gap_waiters_behind_it_are_woken() {
        let me = Uuid::new_v4();
        let mut r = Recent::new(5);
        r.add(change(6, EntitySet::Accounts));
        r.missed_up_to(9);
        assert_eq!(r.look(7, 0, CONTACTS, me), Look::Changed);
        assert_eq!(r.look(9, 0, CONTACTS, me), Look::Nothing);
        r.rules_changed();
        assert_eq!(r.look(9, 0, CONTACTS, me), Look::Changed, "rules changed");
        assert_eq!(r.look(9, 1, CONTACTS, me), Look::Nothing);
        r.close();
        assert_eq!(r.look(9, 1, CONTACTS, me), Look::Closing);
    }

    #[test]
    fn r_t7_notification_payloads_round_trip() {
        let c = Committed {
            version: 42,
            kinds: Kinds::ALL,
            origin: Some(Uuid::new_v4()),
        };
        assert_eq!(Committed::from_payload(&c.to_payload()), Some(c));
        let c = Committed { origin: None, ..c };
        assert_eq!(Committed::from_payload(&c.to_payload()), Some(c));
        assert_eq!(Committed::from_payload("x 1"), None);
        assert_eq!(Committed::from_payload("1"), None);
    }

    #[tokio::test]
    async fn r_t7_waiters_wake_on_publish_and_on_close() {
        let feed = ChangeFeed::new(0);
        let me = Uuid::new_v4();
        let waiting = tokio::spawn({
            let feed = feed.clone();
            async move { feed.wait(0, 0, CONTACTS, me, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        feed.publish(change(1, EntitySet::Accounts));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "an account change concerns no mailbox"
        );
        feed.publish(change(2, EntitySet::Contacts));
        assert_eq!(waiting.await.unwrap(), Look::Changed);

        let parked = tokio::spawn({
            let feed = feed.clone();
            async move { feed.wait(2, 0, CONTACTS, me, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        feed.close();
        assert_eq!(parked.await.unwrap(), Look::Closing);
        let quick = feed
            .wait(2, 0, CONTACTS, me, Duration::from_millis(1))
            .await;
        assert_eq!(quick, Look::Closing);
        let fresh = ChangeFeed::new(0);
        let timed_out = fresh
            .wait(0, 0, CONTACTS, me, Duration::from_millis(10))
            .await;
        assert_eq!(timed_out, Look::Nothing);
    }

    #[test]
    fn r_t7_changes_all_pushed_by_one_client_name_it() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let pushed = |version, origin| Committed {
            version,
            kinds: CONTACTS,
            origin: Some(origin),
        };
        let mut r = Recent::new(10);
        r.add(pushed(11, a));
        r.add(pushed(12, a));
        assert_eq!(r.sole_origin(10, 12), Some(a));
        r.add(pushed(13, b));
        assert_eq!(r.sole_origin(10, 13), None, "two clients");
        assert_eq!(r.sole_origin(12, 13), Some(b));
        r.add(change(14, EntitySet::Contacts));
        assert_eq!(r.sole_origin(13, 14), None, "a change through the API");
        assert_eq!(r.sole_origin(14, 14), None, "no change");
        assert_eq!(
            r.sole_origin(9, 12),
            None,
            "the feed does not remember before 10"
        );
    }
}
