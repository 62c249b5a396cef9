//! FETCH answers → flags, etags and message bytes.

use crmsync_mailbox::{Etag, Keyword, MessageFlags, SystemFlag};
use imap_codec::imap_types::core::IString;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::FlagFetch;
use imap_codec::imap_types::response::{Data, Response};

/// What one FETCH answer said about a message.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub seq: u32,
    pub uid: Option<u32>,
    /// The flags as the server spelled them (`\Seen`, `$CRMTracked`),
    /// `\Recent` left out; `None` if FLAGS was not in the answer.
    pub flags: Option<Vec<String>>,
    pub modseq: Option<u64>,
    /// RFC822.SIZE.
    pub size: Option<u64>,
    /// `BODY[]`; `Some(None)` when the server sent NIL.
    pub body: Option<Option<Vec<u8>>>,
}

impl Fetched {
    /// Reads a FETCH answer; `None` for any other answer.
    pub fn from_response(resp: &Response<'_>, want_body: bool) -> Option<Fetched> {
        let Response::Data(Data::Fetch { seq, items }) = resp else {
            return None;
        };
        let mut out = Fetched {
            seq: seq.get(),
            ..Fetched::default()
        };
        for item in items.as_ref() {
            match item {
                MessageDataItem::Uid(uid) => out.uid = Some(uid.get()),
                MessageDataItem::ModSeq(m) => out.modseq = Some(m.get()),
                MessageDataItem::Rfc822Size(n) => out.size = Some(u64::from(*n)),
                MessageDataItem::Flags(flags) => {
                    out.flags = Some(
                        flags
                            .iter()
                            .filter_map(|f| match f {
                                FlagFetch::Flag(flag) => Some(flag.to_string()),
                                FlagFetch::Recent => None,
                            })
                            .collect(),
                    )
                }
                // `BODY[]` or a part of it (`BODY[]<origin>`, a partial FETCH).
                MessageDataItem::BodyExt {
                    section: None,
                    data,
                    ..
                } if want_body => {
                    out.body = Some(data.0.as_ref().map(|s| match s {
                        IString::Literal(l) => l.as_ref().to_vec(),
                        IString::Quoted(q) => q.inner().as_bytes().to_vec(),
                        #[allow(unreachable_patterns)]
                        _ => s.as_ref().to_vec(),
                    }))
                }
                _ => {}
            }
        }
        Some(out)
    }

    pub fn message_flags(&self) -> MessageFlags {
        to_message_flags(self.flags.as_deref().unwrap_or(&[]))
    }

    /// The etag: `<uidvalidity>.<uid>.<modseq>` with CONDSTORE, else
    /// `<uidvalidity>.<uid>.f<hash of the flags>`. Either changes whenever
    /// the flags do; the content never changes (messages are immutable).
    pub fn etag(&self, uid_validity: u32, uid: u32) -> Etag {
        match self.modseq {
            Some(m) => Etag::new(format!("{uid_validity}.{uid}.{m}")),
            None => Etag::new(format!(
                "{uid_validity}.{uid}.f{:016x}",
                fnv1a(signature(self.flags.as_deref().unwrap_or(&[])).as_bytes())
            )),
        }
    }
}

/// Flags as the trait sees them: the system flags, and keywords that are
/// valid [`Keyword`]s (`\Recent` and unknown `\Extension`s are left out).
pub(crate) fn to_message_flags(flags: &[String]) -> MessageFlags {
    let mut out = MessageFlags::default();
    for f in flags {
        match system_flag(f) {
            Some(flag) => {
                out.system.insert(flag);
            }
            None if !f.starts_with('\\') => {
                if let Ok(k) = Keyword::new(f.as_str()) {
                    out.keywords.insert(k);
                }
            }
            None => {}
        }
    }
    out
}

fn system_flag(flag: &str) -> Option<SystemFlag> {
    let lower = flag.to_ascii_lowercase();
    Some(match lower.as_str() {
        "\\seen" => SystemFlag::Seen,
        "\\answered" => SystemFlag::Answered,
        "\\flagged" => SystemFlag::Flagged,
        "\\deleted" => SystemFlag::Deleted,
        "\\draft" => SystemFlag::Draft,
        _ => return None,
    })
}

/// The canonical text of a flag list: lower-case, sorted, deduplicated,
/// space-separated. Equal flag sets give equal text.
pub(crate) fn signature(flags: &[String]) -> String {
    let mut all: Vec<String> = flags
        .iter()
        .map(|f| f.to_ascii_lowercase())
        .filter(|f| f != "\\recent")
        .collect();
    all.sort();
    all.dedup();
    all.join(" ")
}

/// FNV-1a, 64 bits: a hash that is the same in every build (etags are stored).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Best effort for an answer imap-codec could not parse: the UID named in
/// its first line (`* 3 FETCH (UID 17 ...`).
pub(crate) fn uid_of_malformed(frame: &[u8]) -> Option<u32> {
    let line_end = frame
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(frame.len());
    let line = String::from_utf8_lossy(&frame[..line_end]).to_ascii_uppercase();
    if !line.starts_with("* ") || !line.contains(" FETCH ") {
        return None;
    }
    let at = line.find("UID ")?;
    let digits: String = line[at + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Whether a frame is a FETCH answer (`* <n> FETCH ...`).
pub(crate) fn is_fetch(frame: &[u8]) -> bool {
    let head = &frame[..frame.len().min(40)];
    let text = String::from_utf8_lossy(head).to_ascii_uppercase();
    let mut words = text.split(' ');
    words.next() == Some("*")
        && words
            .next()
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        && words.next().is_some_and(|w| w.starts_with("FETCH"))
}

/// The flags after removing `remove` and adding `add` (keywords compare
/// without ASCII case, like IMAP).
pub(crate) fn edit_flags(current: &[String], add: &[Keyword], remove: &[Keyword]) -> Vec<String> {
    let mut out: Vec<String> = current
        .iter()
        .filter(|f| !remove.iter().any(|k| k.as_str().eq_ignore_ascii_case(f)))
        .cloned()
        .collect();
    for k in add {
        if !out.iter().any(|f| f.eq_ignore_ascii_case(k.as_str())) {
            out.push(k.as_str().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_ignore_order_and_case() {
        let a = signature(&["\\Seen".into(), "$CRMTracked".into()]);
        let b = signature(&["$crmtracked".into(), "\\SEEN".into(), "\\Recent".into()]);
        assert_eq!(a, b);
        assert_eq!(a, "$crmtracked \\seen");
    }

    #[test]
    fn malformed_uid() {
        assert_eq!(
            uid_of_malformed(b"* 3 FETCH (UID 17 FLAGS (\\Seen"),
            Some(17)
        );
        assert_eq!(uid_of_malformed(b"* OK hi"), None);
    }

    #[test]
    fn editing_flags() {
        let cur = vec!["\\Seen".to_owned(), "$crmregarding:a:1".to_owned()];
        let out = edit_flags(
            &cur,
            &[Keyword::tracked()],
            &[Keyword::new("$CRMRegarding:a:1").unwrap()],
        );
        assert_eq!(out, vec!["\\Seen".to_owned(), "$CRMTracked".to_owned()]);
    }
}
