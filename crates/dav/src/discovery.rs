//! Finding a user's collections from a server root (RFC 5397, RFC 4791 §6.2,
//! RFC 6352 §7.1): current-user-principal → calendar-home-set and
//! addressbook-home-set → the collections in those homes.

use crmsync_mailbox::Error;
use url::Url;

use crate::client::Client;
use crate::xml::{CALDAV, CARDDAV, DAV};

/// The collections found; `None` where the server has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub contacts: Option<Url>,
    pub calendar: Option<Url>,
    pub tasks: Option<Url>,
}

/// One collection in a home set.
#[derive(Debug, Clone)]
struct Found {
    url: Url,
    calendar: bool,
    addressbook: bool,
    components: Vec<String>,
}

impl Found {
    /// RFC 4791 §5.2.3: no component set means every component is allowed.
    fn supports(&self, component: &str) -> bool {
        self.calendar
            && (self.components.is_empty() || self.components.iter().any(|c| c == component))
    }
}

pub async fn discover(client: &Client, root: &Url) -> Result<Discovered, Error> {
    let answer = client
        .propfind(root, 0, &[(DAV, "current-user-principal")])
        .await?;
    let principal = answer
        .responses
        .iter()
        .find_map(|r| r.props.current_user_principal.clone())
        .map(|href| join(root, &href))
        .transpose()?
        .unwrap_or_else(|| root.clone());

    let answer = client
        .propfind(
            &principal,
            0,
            &[
                (CALDAV, "calendar-home-set"),
                (CARDDAV, "addressbook-home-set"),
            ],
        )
        .await?;
    let mut homes: Vec<Url> = Vec::new();
    for r in &answer.responses {
        for href in r
            .props
            .addressbook_home_set
            .iter()
            .chain(&r.props.calendar_home_set)
        {
            let url = join(&principal, href)?;
            if !homes.contains(&url) {
                homes.push(url);
            }
        }
    }
    if homes.is_empty() {
        return Err(Error::Remote {
            url: principal.to_string(),
            status: None,
            reason: "the principal names no calendar-home-set or addressbook-home-set; give the contacts/calendar/tasks collection URLs in [mailbox.dav] instead".to_owned(),
        });
    }

    let mut found: Vec<Found> = Vec::new();
    for home in &homes {
        let answer = client
            .propfind(
                home,
                1,
                &[
                    (DAV, "resourcetype"),
                    (CALDAV, "supported-calendar-component-set"),
                ],
            )
            .await?;
        for r in answer.responses {
            let url = join(home, &r.href)?;
            if r.status != 200 || url.path() == home.path() || found.iter().any(|f| f.url == url) {
                continue;
            }
            found.push(Found {
                url,
                calendar: r.props.is_calendar,
                addressbook: r.props.is_addressbook,
                components: r.props.components,
            });
        }
    }
    // Servers list in no particular order; the URL order makes "the first" stable.
    found.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
    Ok(pick(&found))
}

/// The first address book, the first calendar for events, and the first other
/// calendar for to-dos (one collection is never used for both: the agent
/// would see the to-dos as appointments).
fn pick(found: &[Found]) -> Discovered {
    let contacts = found.iter().find(|f| f.addressbook).map(|f| f.url.clone());
    // Prefer calendars made for one kind, then any that accepts it.
    let only = |f: &Found, yes: &str, no: &str| {
        f.supports(yes) && !f.components.is_empty() && !f.components.iter().any(|c| c == no)
    };
    let calendar = found
        .iter()
        .find(|f| only(f, "VEVENT", "VTODO"))
        .or_else(|| found.iter().find(|f| f.supports("VEVENT")))
        .map(|f| f.url.clone());
    let others = || found.iter().filter(|f| Some(&f.url) != calendar.as_ref());
    let tasks = others()
        .find(|f| only(f, "VTODO", "VEVENT"))
        .or_else(|| others().find(|f| f.supports("VTODO")))
        .map(|f| f.url.clone());
    if calendar.is_some() && tasks.is_none() && found.iter().any(|f| f.supports("VTODO")) {
        tracing::warn!(
            "the server has one calendar for events and to-dos; to-dos are not synchronized until a separate task list is created or configured as tasks = \"…\""
        );
    }
    Discovered {
        contacts,
        calendar,
        tasks,
    }
}

/// Resolves an href against the URL it came from; collections end in `/`.
pub fn join(base: &Url, href: &str) -> Result<Url, Error> {
    base.join(href).map_err(|e| Error::Remote {
        url: base.to_string(),
        status: None,
        reason: format!("the server answered with an unusable href {href:?} ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, calendar: bool, addressbook: bool, comps: &[&str]) -> Found {
        Found {
            url: Url::parse("http://h/").unwrap().join(path).unwrap(),
            calendar,
            addressbook,
            components: comps.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn discovery_picks_one_collection_per_kind() {
        let found = [
            f("/u/all/", true, false, &[]),
            f("/u/book/", false, true, &[]),
            f("/u/events/", true, false, &["VEVENT"]),
            f("/u/todo/", true, false, &["VTODO"]),
        ];
        let d = pick(&found);
        assert_eq!(d.contacts.unwrap().path(), "/u/book/");
        assert_eq!(d.calendar.unwrap().path(), "/u/events/");
        assert_eq!(d.tasks.unwrap().path(), "/u/todo/");
    }

    #[test]
    fn discovery_never_uses_one_calendar_for_events_and_tasks() {
        let d = pick(&[f("/u/cal/", true, false, &["VEVENT", "VTODO"])]);
        assert_eq!(d.calendar.unwrap().path(), "/u/cal/");
        assert_eq!(d.tasks, None);
        assert_eq!(d.contacts, None);
    }
}
