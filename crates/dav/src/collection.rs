//! One configured collection: its id, kind and URL, and the mapping between
//! hrefs (an item's percent-decoded last path segment) and URLs.

use crmsync_mailbox::{CollectionKind, Href};
use percent_encoding::percent_decode_str;
use url::Url;

/// One configured collection.
#[derive(Debug, Clone)]
pub(crate) struct Coll {
    pub(crate) id: &'static str,
    pub(crate) kind: CollectionKind,
    pub(crate) url: Url,
}

impl Coll {
    pub(crate) fn is_contacts(&self) -> bool {
        self.kind == CollectionKind::Contacts
    }

    pub(crate) fn content_type(&self) -> &'static str {
        if self.is_contacts() {
            "text/vcard; charset=utf-8"
        } else {
            "text/calendar; charset=utf-8"
        }
    }

    /// The URL of the item `href` (one percent-encoded path segment).
    pub(crate) fn item_url(&self, href: &str) -> Url {
        let mut url = self.url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(href);
        }
        url
    }

    /// The href of an item the server names by `raw` (a path or URL), if it
    /// is a direct member of this collection.
    pub(crate) fn href_of(&self, raw: &str) -> Option<Href> {
        let url = self.url.join(raw.trim()).ok()?;
        let path = percent_decode_str(url.path()).decode_utf8_lossy();
        let base = percent_decode_str(self.url.path()).decode_utf8_lossy();
        let rest = path.strip_prefix(base.as_ref())?;
        (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
    }

    /// True if `raw` names the collection itself.
    pub(crate) fn is_self(&self, raw: &str) -> bool {
        match self.url.join(raw.trim()) {
            Ok(url) => {
                percent_decode_str(url.path().trim_end_matches('/')).decode_utf8_lossy()
                    == percent_decode_str(self.url.path().trim_end_matches('/')).decode_utf8_lossy()
            }
            Err(_) => false,
        }
    }

    /// An href for a new item named `name`: unsafe characters replaced, the
    /// usual extension added.
    pub(crate) fn href_for_name(&self, name: &str) -> Href {
        let ext = if self.is_contacts() { ".vcf" } else { ".ics" };
        let mut href: String = name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_.@+".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if href.starts_with('.') || href.is_empty() {
            href.insert(0, '_');
        }
        if !href.to_ascii_lowercase().ends_with(ext) {
            href.push_str(ext);
        }
        href
    }
}

/// A collection URL ends in `/` (relative hrefs resolve inside it).
pub(crate) fn with_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// Only the framing is checked, as the local backend does: a vCard or an
/// iCalendar object, nothing about its fields.
pub(crate) fn check_framing(coll: &Coll, data: &str) -> std::result::Result<(), String> {
    let (begin, end) = if coll.is_contacts() {
        ("BEGIN:VCARD", "END:VCARD")
    } else {
        ("BEGIN:VCALENDAR", "END:VCALENDAR")
    };
    let text = data.trim_start_matches('\u{feff}').trim();
    let starts = text
        .get(..begin.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(begin));
    let ends = text.len() >= end.len()
        && text
            .get(text.len() - end.len()..)
            .is_some_and(|s| s.eq_ignore_ascii_case(end));
    if starts && ends {
        Ok(())
    } else {
        Err(format!(
            "not a {} object (it must start with {begin} and end with {end})",
            if coll.is_contacts() {
                "vCard"
            } else {
                "iCalendar"
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coll(kind: CollectionKind, url: &str) -> Coll {
        Coll {
            id: "contacts",
            kind,
            url: Url::parse(url).unwrap(),
        }
    }

    #[test]
    fn hrefs_are_decoded_last_segments() {
        let c = coll(CollectionKind::Contacts, "http://h/alice/my%20book/");
        assert_eq!(
            c.href_of("/alice/my%20book/a.vcf").as_deref(),
            Some("a.vcf")
        );
        assert_eq!(c.href_of("/alice/my book/a.vcf").as_deref(), Some("a.vcf"));
        assert_eq!(
            c.href_of("http://h/alice/my%20book/z%C3%B6%20e.vcf")
                .as_deref(),
            Some("zö e.vcf")
        );
        assert_eq!(c.href_of("/alice/my%20book/"), None);
        assert_eq!(c.href_of("/alice/other/a.vcf"), None);
        assert_eq!(c.href_of("/alice/my%20book/sub/a.vcf"), None);
        assert!(c.is_self("/alice/my%20book"));
        let url = c.item_url("zö e/../x.vcf");
        assert_eq!(url.path(), "/alice/my%20book/z%C3%B6%20e%2F..%2Fx.vcf");
        assert_eq!(
            c.href_of(url.as_str()),
            None,
            "a / in a name is not a member"
        );
    }

    #[test]
    fn names_become_safe_hrefs_with_an_extension() {
        let c = coll(CollectionKind::Contacts, "http://h/c/");
        assert_eq!(c.href_for_name("alice"), "alice.vcf");
        assert_eq!(c.href_for_name("bob.vcf"), "bob.vcf");
        assert_eq!(c.href_for_name("../../etc/passwd"), "_.._.._etc_passwd.vcf");
        assert_eq!(c.href_for_name(".hidden"), "_.hidden.vcf");
        assert_eq!(c.href_for_name("日本語"), "日本語.vcf");
        let e = coll(CollectionKind::Calendar, "http://h/e/");
        assert_eq!(e.href_for_name("a/b:c"), "a_b_c.ics");
    }

    #[test]
    fn framing_is_checked_not_fields() {
        let c = coll(CollectionKind::Contacts, "http://h/c/");
        assert!(check_framing(&c, "BEGIN:VCARD\r\nFN:x\r\nEND:VCARD\r\n").is_ok());
        assert!(check_framing(&c, "\u{feff}begin:vcard\nend:vcard").is_ok());
        assert!(check_framing(&c, "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n").is_err());
        assert!(check_framing(&c, "garbage").is_err());
        assert!(check_framing(&c, "").is_err());
        let e = coll(CollectionKind::Tasks, "http://h/t/");
        assert!(check_framing(&e, "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n").is_ok());
    }
}
