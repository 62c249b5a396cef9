//! The values that cross the [`Mailbox`](crate::Mailbox) trait: collections,
//! item references, items, changes, message flags and keywords.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An item's name inside its collection, as the backend spells it: a file
/// name (`alice.vcf`), a DAV path, a Maildir base name, an IMAP UID.
pub type Href = String;

/// A collection's id, as the backend spells it (`contacts`, `mail/INBOX`, a
/// DAV URL path). Opaque to the sync engine: it is stored and passed back.
pub type CollectionId = String;

/// A version stamp of one item. Opaque: only compared for equality. Every
/// write returns the new one; every update/delete/keyword change takes the
/// one the caller last saw (a precondition).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Etag(String);

impl Etag {
    pub fn new(value: impl Into<String>) -> Self {
        Etag(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a collection looked like at the last `changes_since`, as the backend
/// needs it to find what changed since (a DAV sync-token, an IMAP
/// UIDVALIDITY/HIGHESTMODSEQ, the local backend's map of file stamps). The
/// agent stores it as text and hands it back; it never looks inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SyncState(String);

impl SyncState {
    pub fn new(value: impl Into<String>) -> Self {
        SyncState(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// What a collection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectionKind {
    /// vCards (CardDAV address book, `contacts/`).
    Contacts,
    /// iCalendar events (CalDAV calendar, `calendar/`).
    Calendar,
    /// iCalendar to-dos (CalDAV task list, `tasks/`).
    Tasks,
    /// RFC 5322 messages with flags and keywords (IMAP, Maildir).
    Mail,
}

impl CollectionKind {
    pub fn is_mail(self) -> bool {
        self == CollectionKind::Mail
    }
}

/// One collection of a mailbox: an address book, a calendar, a task list or
/// a mail folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    pub id: CollectionId,
    pub kind: CollectionKind,
    /// Display name; for mail folders the folder name (`INBOX`, `Sent`, `CRM`).
    pub name: String,
}

/// An item's name and version, without its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemRef {
    pub href: Href,
    pub etag: Etag,
    /// For messages: flags and keywords (they come for free with a Maildir
    /// listing or an IMAP CONDSTORE fetch). `None` for contacts/events/to-dos.
    pub flags: Option<MessageFlags>,
}

/// An item with its content: the bytes of a `.vcf`, an `.ics` or an RFC 5322
/// message, never parsed here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub href: Href,
    pub etag: Etag,
    pub data: Vec<u8>,
    /// For messages: flags and keywords. `None` for contacts/events/to-dos.
    pub flags: Option<MessageFlags>,
}

impl Item {
    pub fn as_ref(&self) -> ItemRef {
        ItemRef {
            href: self.href.clone(),
            etag: self.etag.clone(),
            flags: self.flags.clone(),
        }
    }
}

/// What changed in one collection since a stored [`SyncState`] (R-T3).
#[derive(Debug)]
pub struct Changes {
    /// Items created or changed (content, or for messages flags/keywords).
    pub changed: Vec<ItemRef>,
    /// Items that were there at the stored state and are gone now.
    pub deleted: Vec<Href>,
    /// Items that exist but could not be examined; they are neither changed
    /// nor deleted, and are looked at again next time.
    pub failed: Vec<(Href, Error)>,
    /// The state to store and pass to the next `changes_since`.
    pub state: SyncState,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty() && self.failed.is_empty()
    }
}

/// A change notification from [`Mailbox::watch`](crate::Mailbox::watch).
/// Notifications are hints, coalesced per collection: the agent answers one
/// by calling `changes_since` for that collection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Notification {
    /// Something in this collection changed.
    Changed(CollectionId),
    /// Events were lost (queue overflow) or could not be mapped to a
    /// collection: look at every collection.
    Rescan,
}

/// The IMAP system flags (RFC 9051 §2.3.2), plus Maildir's `P` (passed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemFlag {
    /// `\Draft`, Maildir `D`.
    Draft,
    /// `\Flagged`, Maildir `F`.
    Flagged,
    /// Maildir `P` (resent/forwarded/bounced); IMAP backends report
    /// `$Forwarded` as a keyword instead.
    Passed,
    /// `\Answered`, Maildir `R`.
    Answered,
    /// `\Seen`, Maildir `S`.
    Seen,
    /// `\Deleted`, Maildir `T`.
    Deleted,
}

/// A message's flags and keywords.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFlags {
    pub system: BTreeSet<SystemFlag>,
    pub keywords: BTreeSet<Keyword>,
}

impl MessageFlags {
    pub fn has_keyword(&self, keyword: &Keyword) -> bool {
        self.keywords.contains(keyword)
    }

    /// R-M1: the message carries `$CRMTracked`.
    pub fn is_tracked(&self) -> bool {
        self.has_keyword(&Keyword::tracked())
    }

    /// R-M7: the record id of every `$CRMRegarding:` keyword (normally at
    /// most one).
    pub fn regarding(&self) -> Vec<uuid::Uuid> {
        self.keywords
            .iter()
            .filter_map(Keyword::as_regarding)
            .collect()
    }
}

/// An IMAP keyword (a flag without a backslash), e.g. `$CRMTracked`.
///
/// Keywords are atoms: printable ASCII without space, `(`, `)`, `{`, `%`,
/// `*`, `"`, `\` or `]`. Like IMAP and Dovecot, comparison ignores ASCII
/// case: `$crmtracked` equals `$CRMTracked`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Keyword(String);

impl Keyword {
    /// R-M1: the tracking marker.
    pub const TRACKED: &'static str = "$CRMTracked";
    /// R-M7: prefix of `$CRMRegarding:<32 hex digits>`.
    pub const REGARDING_PREFIX: &'static str = "$CRMRegarding:";
    /// Longest keyword accepted (Dovecot and most servers take far more; this
    /// only stops accidents).
    pub const MAX_LEN: usize = 200;

    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        let reason = if value.is_empty() {
            Some("is empty")
        } else if value.len() > Self::MAX_LEN {
            Some("is longer than 200 characters")
        } else if value.starts_with('\\') {
            Some("starts with a backslash (that is a system flag, not a keyword)")
        } else if !value.bytes().all(is_atom_char) {
            Some("has a character not allowed in an IMAP keyword (space, control, non-ASCII or one of ( ) { % * \" \\ ])")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidKeyword {
                keyword: value,
                reason,
            }),
            None => Ok(Keyword(value)),
        }
    }

    /// `$CRMTracked` (R-M1).
    pub fn tracked() -> Self {
        Keyword(Self::TRACKED.to_owned())
    }

    /// `$CRMRegarding:<the record's UUID as 32 lowercase hex digits>`
    /// (R-M7): 46 characters, within Dovecot's default keyword limit of 50.
    /// The id alone names the record; the CRM knows its entity set.
    pub fn regarding(id: &uuid::Uuid) -> Self {
        Keyword(format!("{}{}", Self::REGARDING_PREFIX, id.simple()))
    }

    /// The record a `$CRMRegarding:` keyword names: `<32 hex digits>`, or
    /// the former `<set>:<uuid>` (R-M7: still read, and replaced by the
    /// current form when the agent sees it).
    pub fn as_regarding(&self) -> Option<uuid::Uuid> {
        let prefix = Self::REGARDING_PREFIX;
        let head = self.0.get(..prefix.len())?;
        if !head.eq_ignore_ascii_case(prefix) {
            return None;
        }
        let rest = &self.0[prefix.len()..];
        let id = match rest.split_once(':') {
            Some((set, id)) if !set.is_empty() => id,
            Some(_) => return None,
            None => rest,
        };
        uuid::Uuid::parse_str(id).ok()
    }

    /// A `$CRMRegarding:` keyword not in the current form of
    /// [`Keyword::regarding`] (the former `<set>:<uuid>`, say).
    pub fn is_outdated_regarding(&self) -> bool {
        self.as_regarding()
            .is_some_and(|id| *self != Keyword::regarding(&id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b)
}

impl PartialEq for Keyword {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for Keyword {}

impl Hash for Keyword {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl Ord for Keyword {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let a = self.0.bytes().map(|b| b.to_ascii_lowercase());
        let b = other.0.bytes().map(|b| b.to_ascii_lowercase());
        a.cmp(b)
    }
}

impl PartialOrd for Keyword {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Keyword {
    type Error = Error;

    fn try_from(value: String) -> Result<Self> {
        Keyword::new(value)
    }
}

impl From<Keyword> for String {
    fn from(keyword: Keyword) -> String {
        keyword.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_compare_without_ascii_case() {
        let a = Keyword::new("$crmtracked").unwrap();
        assert_eq!(a, Keyword::tracked());
        let set: BTreeSet<_> = [a].into_iter().collect();
        assert!(set.contains(&Keyword::tracked()));
    }

    #[test]
    fn keywords_refuse_non_atoms() {
        for bad in ["", "\\Seen", "two words", "$Ä", "a]b", "x(y", "\"q\""] {
            assert!(Keyword::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Keyword::new("$Label1").is_ok());
    }

    #[test]
    fn r_m7_regarding_keyword_fits_dovecot_default_limit() {
        let id = uuid::Uuid::parse_str("0b9f3c1e-8f6a-4c1e-9d2a-3b4c5d6e7f80").unwrap();
        let k = Keyword::regarding(&id);
        assert_eq!(k.as_str(), "$CRMRegarding:0b9f3c1e8f6a4c1e9d2a3b4c5d6e7f80");
        // Dovecot's default mail_max_keyword_length is 50.
        assert_eq!(k.as_str().len(), 46);
        assert_eq!(k.as_regarding(), Some(id));
        assert!(!k.is_outdated_regarding());
        assert_eq!(Keyword::tracked().as_regarding(), None);
    }

    #[test]
    fn r_m7_former_regarding_keyword_is_read_and_outdated() {
        let id = uuid::Uuid::parse_str("0b9f3c1e-8f6a-4c1e-9d2a-3b4c5d6e7f80").unwrap();
        let old =
            Keyword::new("$CRMRegarding:accounts:0b9f3c1e-8f6a-4c1e-9d2a-3b4c5d6e7f80").unwrap();
        assert_eq!(old.as_regarding(), Some(id));
        assert!(old.is_outdated_regarding());
        // Case is ignored, as everywhere in keywords.
        let upper = Keyword::new("$crmregarding:0B9F3C1E8F6A4C1E9D2A3B4C5D6E7F80").unwrap();
        assert_eq!(upper.as_regarding(), Some(id));
        assert!(!upper.is_outdated_regarding());
        for bad in [
            "$CRMRegarding:",
            "$CRMRegarding:x",
            "$CRMRegarding::0b9f3c1e8f6a4c1e9d2a3b4c5d6e7f80",
        ] {
            assert_eq!(Keyword::new(bad).unwrap().as_regarding(), None, "{bad}");
        }
    }
}
