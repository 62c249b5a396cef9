//! What every page shares: the navigation of R-W3, the stylesheet served
//! from the binary, and field names in words for labels.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::session::WebUser;

/// The stylesheet, compiled into the binary (R-W1: no asset is fetched at run time).
pub const STYLE_CSS: &str = include_str!("../../assets/style.css");

/// The site's icon, compiled into the binary like the stylesheet.
pub const ICON_SVG: &str = include_str!("../../assets/icon.svg");

/// The stylesheet's path names its content, so browsers may cache it for
/// a year and still see a new one after an upgrade.
pub fn style_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let digest = hex::encode(Sha256::digest(STYLE_CSS.as_bytes()));
        format!("/assets/style-{}.css", &digest[..16])
    })
}

/// The navigation, in the order and with the names of R-W3.
pub const NAV: &[(&str, &str)] = &[
    ("Accounts", "/accounts"),
    ("Contacts", "/contacts"),
    ("Leads", "/leads"),
    ("Opportunities", "/opportunities"),
    ("Cases", "/cases"),
    ("Activities", "/activities"),
    ("Sync", "/sync"),
    ("Admin", "/admin"),
];

pub struct NavLink {
    pub label: &'static str,
    pub href: &'static str,
    pub current: bool,
}

/// The signed-in user as the page header shows them.
pub struct Header {
    pub name: String,
    pub csrf: String,
    pub links: Vec<NavLink>,
}

/// The frame of every page: title, stylesheet, and for a signed-in user
/// the navigation and the "Sign out" button.
pub struct Layout {
    pub title: String,
    pub css: &'static str,
    pub header: Option<Header>,
}

impl Layout {
    /// A page of a signed-in user; `current` is the navigation entry it belongs to.
    pub fn new(title: impl Into<String>, user: &WebUser, current: &str) -> Layout {
        let links = NAV
            .iter()
            .filter(|(label, _)| *label != "Admin" || user.caller.is_admin)
            .map(|&(label, href)| NavLink {
                label,
                href,
                current: href == current,
            })
            .collect();
        Layout {
            title: title.into(),
            css: style_path(),
            header: Some(Header {
                name: user.name.clone(),
                csrf: user.csrf.clone(),
                links,
            }),
        }
    }

    /// A page shown before sign-in.
    pub fn public(title: impl Into<String>) -> Layout {
        Layout {
            title: title.into(),
            css: style_path(),
            header: None,
        }
    }
}

/// A field name of SPEC §2 in words: `first_name` → "First name",
/// `account_id` → "Account", `email2` → "Email 2".
pub fn label(field: &str) -> String {
    let base = field.strip_suffix("_id").unwrap_or(field);
    let mut out = String::with_capacity(base.len() + 2);
    let mut prev_alpha = false;
    for (i, c) in base.chars().enumerate() {
        if c == '_' {
            out.push(' ');
            prev_alpha = false;
            continue;
        }
        if c.is_ascii_digit() && prev_alpha {
            out.push(' ');
        }
        if i == 0 {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_alpha = c.is_alphabetic();
    }
    out
}

/// An entity set's name in words, plural ("Phone calls") and singular ("phone call").
pub fn set_title(set: crmsync_core::EntitySet) -> &'static str {
    use crmsync_core::EntitySet as S;
    match set {
        S::Users => "Users",
        S::Accounts => "Accounts",
        S::Contacts => "Contacts",
        S::Leads => "Leads",
        S::Opportunities => "Opportunities",
        S::Cases => "Cases",
        S::Appointments => "Appointments",
        S::Serviceappointments => "Service appointments",
        S::Tasks => "Tasks",
        S::Phonecalls => "Phone calls",
        S::Letters => "Letters",
        S::Faxes => "Faxes",
        S::Emails => "Emails",
    }
}

pub fn set_singular(set: crmsync_core::EntitySet) -> &'static str {
    use crmsync_core::EntitySet as S;
    match set {
        S::Users => "user",
        S::Accounts => "account",
        S::Contacts => "contact",
        S::Leads => "lead",
        S::Opportunities => "opportunity",
        S::Cases => "case",
        S::Appointments => "appointment",
        S::Serviceappointments => "service appointment",
        S::Tasks => "task",
        S::Phonecalls => "phone call",
        S::Letters => "letter",
        S::Faxes => "fax",
        S::Emails => "email",
    }
}

/// Percent-encodes a query parameter's value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_w3_labels_are_field_names_in_words() {
        assert_eq!(label("first_name"), "First name");
        assert_eq!(label("email"), "Email");
        assert_eq!(label("email2"), "Email 2");
        assert_eq!(label("account_id"), "Account");
        assert_eq!(label("parent_account_id"), "Parent account");
        assert_eq!(label("percent_complete"), "Percent complete");
    }

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            url_encode("/contacts?q=a b&x"),
            "%2Fcontacts%3Fq%3Da%20b%26x"
        );
    }
}
