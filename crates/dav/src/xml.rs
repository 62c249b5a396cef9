//! WebDAV XML: the request bodies this backend sends (PROPFIND, the
//! sync-collection REPORT of RFC 6578, calendar-/addressbook-multiget) and a
//! tolerant reader of `207 Multi-Status` answers.
//!
//! The reader builds a small namespace-resolved element tree and then picks
//! out the few properties the backend uses; unknown elements are ignored, and
//! malformed XML is an error, never a panic.

use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

pub const DAV: &str = "DAV:";
pub const CALDAV: &str = "urn:ietf:params:xml:ns:caldav";
pub const CARDDAV: &str = "urn:ietf:params:xml:ns:carddav";
pub const CALSERVER: &str = "http://calendarserver.org/ns/";

/// Deepest nesting accepted in an answer (a guard against hostile input).
const MAX_DEPTH: usize = 64;

// ---------------------------------------------------------------- tree

/// One XML element, its namespace resolved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Element {
    pub ns: String,
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// The element's own text and CDATA, unescaped, in document order.
    pub text: String,
}

impl Element {
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The trimmed text of the child `ns:name`, if there is one.
    fn child_text(&self, ns: &str, name: &str) -> Option<String> {
        self.child(ns, name).map(|c| c.text.trim().to_owned())
    }
}

/// Parses a whole document into its root element.
pub fn parse(body: &[u8]) -> Result<Element, String> {
    let mut reader = NsReader::from_reader(body);
    let mut buf = Vec::new();
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let (ns, event) = match reader.read_resolved_event_into(&mut buf) {
            Ok(read) => read,
            Err(e) => {
                let at = reader.buffer_position();
                return Err(format!("invalid XML at byte {at}: {e}"));
            }
        };
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("XML nested deeper than {MAX_DEPTH} levels"));
                }
                let ns = match ns {
                    ResolveResult::Bound(ns) => String::from_utf8_lossy(ns.as_ref()).into_owned(),
                    _ => String::new(),
                };
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                let mut attrs = Vec::new();
                for attr in start.attributes().flatten() {
                    let key = String::from_utf8_lossy(attr.key.local_name().as_ref()).into_owned();
                    let value = attr
                        .unescape_value()
                        .map(|v| v.into_owned())
                        .unwrap_or_else(|_| String::from_utf8_lossy(&attr.value).into_owned());
                    attrs.push((key, value));
                }
                let element = Element {
                    ns,
                    name,
                    attrs,
                    ..Element::default()
                };
                if matches!(event, Event::Empty(_)) {
                    attach(&mut stack, &mut root, element)?;
                } else {
                    stack.push(element);
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or("unbalanced end tag")?;
                attach(&mut stack, &mut root, element)?;
            }
            Event::Text(text) => {
                if let Some(top) = stack.last_mut() {
                    let text = text
                        .unescape()
                        .map_err(|e| format!("invalid XML text: {e}"))?;
                    top.text.push_str(&text);
                }
            }
            Event::CData(data) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err("XML ends inside an element".to_owned());
    }
    root.ok_or_else(|| "empty XML document".to_owned())
}

fn attach(
    stack: &mut [Element],
    root: &mut Option<Element>,
    element: Element,
) -> Result<(), String> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_none() => *root = Some(element),
        None => return Err("more than one root element".to_owned()),
    }
    Ok(())
}

// ---------------------------------------------------------------- multistatus

/// The properties of one `<response>` this backend reads (from its `200`
/// propstat only; properties a server does not have are left out).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Props {
    pub etag: Option<String>,
    pub sync_token: Option<String>,
    pub ctag: Option<String>,
    pub is_collection: bool,
    pub is_calendar: bool,
    pub is_addressbook: bool,
    /// `supported-calendar-component-set` (`VEVENT`, `VTODO`, ...); empty if
    /// the server did not say (RFC 4791: then every component is allowed).
    pub components: Vec<String>,
    /// `calendar-data` or `address-data`.
    pub data: Option<String>,
    pub current_user_principal: Option<String>,
    pub calendar_home_set: Vec<String>,
    pub addressbook_home_set: Vec<String>,
    pub displayname: Option<String>,
    /// `supported-report-set` names `sync-collection`.
    pub supports_sync_collection: bool,
}

/// One `<response>` of a multistatus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// As the server wrote it (percent-encoded path or absolute URL).
    pub href: String,
    /// The response's own status, else that of its first `200` propstat,
    /// else of its first propstat; 200 if there is none at all.
    pub status: u16,
    pub props: Props,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Multistatus {
    pub responses: Vec<Response>,
    /// RFC 6578: the new token of a sync-collection answer.
    pub sync_token: Option<String>,
}

/// The status code of an HTTP status line (`HTTP/1.1 404 Not Found`).
pub fn status_code(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn parse_multistatus(body: &[u8]) -> Result<Multistatus, String> {
    let root = parse(body)?;
    if !root.is(DAV, "multistatus") {
        return Err(format!(
            "expected a DAV multistatus, got <{}> in namespace {:?}",
            root.name, root.ns
        ));
    }
    let mut out = Multistatus {
        sync_token: root.child_text(DAV, "sync-token"),
        responses: Vec::new(),
    };
    for response in root.children_named(DAV, "response") {
        let Some(href) = response.child_text(DAV, "href") else {
            continue; // nothing to attach it to
        };
        let own = response
            .child(DAV, "status")
            .and_then(|s| status_code(&s.text));
        let mut props = Props::default();
        let mut first = None;
        let mut ok = false;
        for propstat in response.children_named(DAV, "propstat") {
            let code = propstat
                .child(DAV, "status")
                .and_then(|s| status_code(&s.text))
                .unwrap_or(200);
            first.get_or_insert(code);
            if !(200..300).contains(&code) {
                continue;
            }
            ok = true;
            if let Some(prop) = propstat.child(DAV, "prop") {
                read_props(prop, &mut props);
            }
        }
        let status = own.unwrap_or(if ok { 200 } else { first.unwrap_or(200) });
        out.responses.push(Response {
            href,
            status,
            props,
        });
    }
    Ok(out)
}

fn read_props(prop: &Element, props: &mut Props) {
    for p in &prop.children {
        match (p.ns.as_str(), p.name.as_str()) {
            (DAV, "getetag") => props.etag = non_empty(p.text.trim()),
            (DAV, "sync-token") => props.sync_token = non_empty(p.text.trim()),
            (CALSERVER, "getctag") => props.ctag = non_empty(p.text.trim()),
            (DAV, "displayname") => props.displayname = non_empty(p.text.trim()),
            (DAV, "resourcetype") => {
                props.is_collection = p.child(DAV, "collection").is_some();
                props.is_calendar = p.child(CALDAV, "calendar").is_some();
                props.is_addressbook = p.child(CARDDAV, "addressbook").is_some();
            }
            (CALDAV, "supported-calendar-component-set") => {
                props.components = p
                    .children_named(CALDAV, "comp")
                    .filter_map(|c| c.attr("name"))
                    .map(|n| n.to_ascii_uppercase())
                    .collect();
            }
            (CALDAV, "calendar-data") | (CARDDAV, "address-data") => {
                props.data = Some(p.text.clone());
            }
            (DAV, "current-user-principal") => {
                props.current_user_principal = p.child_text(DAV, "href");
            }
            (CALDAV, "calendar-home-set") => props.calendar_home_set = hrefs(p),
            (CARDDAV, "addressbook-home-set") => props.addressbook_home_set = hrefs(p),
            (DAV, "supported-report-set") => {
                props.supports_sync_collection = p
                    .children_named(DAV, "supported-report")
                    .filter_map(|r| r.child(DAV, "report"))
                    .any(|r| r.child(DAV, "sync-collection").is_some());
            }
            _ => {}
        }
    }
}

fn hrefs(e: &Element) -> Vec<String> {
    e.children_named(DAV, "href")
        .map(|h| h.text.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The precondition names of a `<DAV:error>` body (RFC 4918 §16), e.g.
/// `valid-sync-token`; empty if the body is not one.
pub fn error_conditions(body: &[u8]) -> Vec<String> {
    match parse(body) {
        Ok(root) if root.is(DAV, "error") => root.children.iter().map(|c| c.name.clone()).collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------- requests

const HEAD: &str = r#"<?xml version="1.0" encoding="utf-8"?>"#;

/// PROPFIND of the given properties (`(namespace, name)`).
pub fn propfind(props: &[(&str, &str)]) -> String {
    let mut body = format!(
        r#"{HEAD}<D:propfind xmlns:D="DAV:" xmlns:C="{CALDAV}" xmlns:A="{CARDDAV}" xmlns:CS="{CALSERVER}"><D:prop>"#
    );
    for (ns, name) in props {
        let prefix = prefix_of(ns);
        body.push_str(&format!("<{prefix}:{name}/>"));
    }
    body.push_str("</D:prop></D:propfind>");
    body
}

fn prefix_of(ns: &str) -> &'static str {
    match ns {
        CALDAV => "C",
        CARDDAV => "A",
        CALSERVER => "CS",
        _ => "D",
    }
}

/// RFC 6578 sync-collection REPORT asking for etags; `token` empty for the
/// initial listing.
pub fn sync_collection(token: &str) -> String {
    format!(
        r#"{HEAD}<D:sync-collection xmlns:D="DAV:"><D:sync-token>{}</D:sync-token><D:sync-level>1</D:sync-level><D:prop><D:getetag/></D:prop></D:sync-collection>"#,
        escape(token)
    )
}

/// calendar-multiget (RFC 4791 §7.9) or addressbook-multiget (RFC 6352
/// §8.7) of the given (already percent-encoded) paths.
pub fn multiget(contacts: bool, paths: &[String]) -> String {
    let (ns, report, data) = if contacts {
        (CARDDAV, "addressbook-multiget", "address-data")
    } else {
        (CALDAV, "calendar-multiget", "calendar-data")
    };
    let mut body = format!(
        r#"{HEAD}<X:{report} xmlns:D="DAV:" xmlns:X="{ns}"><D:prop><D:getetag/><X:{data}/></D:prop>"#
    );
    for path in paths {
        body.push_str("<D:href>");
        body.push_str(&escape(path.as_str()));
        body.push_str("</D:href>");
    }
    body.push_str(&format!("</X:{report}>"));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Radicale 3.9: default namespace, CRLF kept inside calendar-data.
    const RADICALE_MULTIGET: &str = "<?xml version='1.0' encoding='utf-8'?>\n<multistatus xmlns=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\"><response><href>/alice/calendar/e1.ics</href><propstat><prop><getetag>\"28a2\"</getetag><C:calendar-data>BEGIN:VCALENDAR\r\nVERSION:2.0\r\nSUMMARY:a &amp; b &lt;c&gt;\r\nEND:VCALENDAR\r\n</C:calendar-data></prop><status>HTTP/1.1 200 OK</status></propstat></response><response><href>/alice/calendar/missing.ics</href><status>HTTP/1.1 404 Not Found</status></response></multistatus>";

    /// Xandikos 0.4: `ns0:` prefixes, status before prop, 404 propstat.
    const XANDIKOS_PROPFIND: &str = r#"<ns0:multistatus xmlns:ns0="DAV:" xmlns:ns1="http://calendarserver.org/ns/" xmlns:ns2="urn:ietf:params:xml:ns:caldav"><ns0:response><ns0:href>/user/calendars/</ns0:href><ns0:propstat><ns0:status>HTTP/1.1 200 OK</ns0:status><ns0:prop><ns0:resourcetype><ns0:collection /></ns0:resourcetype><ns0:sync-token>4b82</ns0:sync-token></ns0:prop></ns0:propstat><ns0:propstat><ns0:status>HTTP/1.1 404 Not Found</ns0:status><ns0:prop><ns2:supported-calendar-component-set /></ns0:prop></ns0:propstat></ns0:response><ns0:response><ns0:href>/user/calendars/calendar/</ns0:href><ns0:propstat><ns0:status>HTTP/1.1 200 OK</ns0:status><ns0:prop><ns0:resourcetype><ns0:collection /><ns2:calendar /></ns0:resourcetype><ns2:supported-calendar-component-set><ns2:comp name="VEVENT" /><ns2:comp name="VTODO" /></ns2:supported-calendar-component-set><ns0:sync-token>ae44</ns0:sync-token><ns1:getctag>ae44</ns1:getctag><ns0:supported-report-set><ns0:supported-report><ns0:report><ns2:calendar-multiget /></ns0:report></ns0:supported-report><ns0:supported-report><ns0:report><ns0:sync-collection /></ns0:report></ns0:supported-report></ns0:supported-report-set></ns0:prop></ns0:propstat></ns0:response></ns0:multistatus>"#;

    /// RFC 6578 §3.6: a truncated answer marks the collection itself 507.
    const TRUNCATED_SYNC: &str = r#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/c/a.ics</D:href><D:propstat><D:prop><D:getetag>"1"</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response><D:response><D:href>/c/gone.ics</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response><D:response><D:href>/c/</D:href><D:status>HTTP/1.1 507 Insufficient Storage</D:status></D:response><D:sync-token>http://example.com/sync/2</D:sync-token></D:multistatus>"#;

    #[test]
    fn radicale_multiget_keeps_crlf_and_unescapes_data() {
        let ms = parse_multistatus(RADICALE_MULTIGET.as_bytes()).unwrap();
        assert_eq!(ms.responses.len(), 2);
        let first = &ms.responses[0];
        assert_eq!(first.href, "/alice/calendar/e1.ics");
        assert_eq!(first.status, 200);
        assert_eq!(first.props.etag.as_deref(), Some("\"28a2\""));
        assert_eq!(
            first.props.data.as_deref(),
            Some("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nSUMMARY:a & b <c>\r\nEND:VCALENDAR\r\n")
        );
        assert_eq!(ms.responses[1].status, 404);
        assert_eq!(ms.responses[1].props.data, None);
    }

    #[test]
    fn xandikos_prefixes_and_404_propstats_are_understood() {
        let ms = parse_multistatus(XANDIKOS_PROPFIND.as_bytes()).unwrap();
        let home = &ms.responses[0];
        assert_eq!(home.status, 200);
        assert!(home.props.is_collection && !home.props.is_calendar);
        assert!(home.props.components.is_empty(), "404 propstat ignored");
        let cal = &ms.responses[1];
        assert!(cal.props.is_calendar);
        assert_eq!(cal.props.components, vec!["VEVENT", "VTODO"]);
        assert_eq!(cal.props.sync_token.as_deref(), Some("ae44"));
        assert_eq!(cal.props.ctag.as_deref(), Some("ae44"));
        assert!(cal.props.supports_sync_collection);
    }

    #[test]
    fn rfc6578_truncated_answer_has_a_507_and_a_token() {
        let ms = parse_multistatus(TRUNCATED_SYNC.as_bytes()).unwrap();
        assert_eq!(ms.sync_token.as_deref(), Some("http://example.com/sync/2"));
        let codes: Vec<u16> = ms.responses.iter().map(|r| r.status).collect();
        assert_eq!(codes, vec![200, 404, 507]);
    }

    #[test]
    fn valid_sync_token_precondition_is_found() {
        let body = br#"<?xml version="1.0"?><error xmlns="DAV:"><valid-sync-token/></error>"#;
        assert_eq!(error_conditions(body), vec!["valid-sync-token"]);
        assert!(error_conditions(b"<html>Forbidden</html>").is_empty());
        assert!(error_conditions(b"not xml at all <<<").is_empty());
    }

    #[test]
    fn bad_xml_is_an_error_not_a_panic() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<D:multistatus xmlns:D=\"DAV:\"><D:response>",
            "<html><body>Internal Server Error</body></html>",
            "<?xml version=\"1.0\"?><a>&bogus;</a>",
        ] {
            assert!(parse_multistatus(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let deep = "<a>".repeat(1000);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn request_bodies_escape_and_name_their_namespaces() {
        let body = sync_collection("http://x/?a=1&b=2");
        assert!(body.contains("<D:sync-token>http://x/?a=1&amp;b=2</D:sync-token>"));
        assert!(parse(body.as_bytes()).unwrap().is(DAV, "sync-collection"));
        let body = multiget(true, &["/c/a&b.vcf".to_owned()]);
        let root = parse(body.as_bytes()).unwrap();
        assert!(root.is(CARDDAV, "addressbook-multiget"));
        assert_eq!(root.child(DAV, "href").unwrap().text, "/c/a&b.vcf");
        let body = propfind(&[(DAV, "getetag"), (CALSERVER, "getctag")]);
        let root = parse(body.as_bytes()).unwrap();
        let prop = root.child(DAV, "prop").unwrap();
        assert!(prop.child(CALSERVER, "getctag").is_some());
    }
}
