//! HTTP for WebDAV: one reqwest client with Basic authentication, a request
//! counter (the "one request per collection when nothing changed" rule is
//! tested with it), and the translation of HTTP failures into errors that
//! name the URL and the fix (STYLE.md §8).
//!
//! Why not libdav (0.11.2, fits rustc 1.95): it is built on a hyper
//! `tower::Service` stack of its own rather than on reqwest, which the
//! workspace already uses for TLS, proxies and timeouts, and its 0.x API
//! changes with every release. What this backend needs — PROPFIND, three
//! REPORTs and conditional PUT/DELETE — is small enough to own and test here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crmsync_mailbox::Error;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::xml;

/// An answer: status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn etag(&self) -> Option<String> {
        self.headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The body as text, shortened, for error messages.
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        let mut out: String = text.chars().take(200).collect();
        if text.chars().count() > 200 {
            out.push('…');
        }
        out.replace(['\r', '\n'], " ")
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    username: String,
    password: String,
    requests: Arc<AtomicU64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(username: &str, password: &str, timeout: Duration) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("crmsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Remote {
                url: String::new(),
                status: None,
                reason: format!("cannot set up the HTTP client: {e}"),
            })?;
        Ok(Client {
            http,
            username: username.to_owned(),
            password: password.to_owned(),
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How many HTTP requests this client (and its clones) sent.
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Sends one request and reads the whole answer. Only failures to get an
    /// answer at all are errors here; statuses are the caller's to judge.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&'static str, String)],
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Answer, Error> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.http.request(method.clone(), url.clone());
        if !self.username.is_empty() || !self.password.is_empty() {
            request = request.basic_auth(&self.username, Some(&self.password));
        }
        for (name, value) in headers {
            match HeaderValue::from_str(value) {
                Ok(v) => request = request.header(*name, v),
                Err(_) => {
                    return Err(Error::Remote {
                        url: url.to_string(),
                        status: None,
                        reason: format!("{name} value {value:?} cannot be sent in an HTTP header"),
                    })
                }
            }
        }
        if let Some((content_type, bytes)) = body {
            request = request.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable_error(url, &method, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable_error(url, &method, &e))?
            .to_vec();
        tracing::debug!(%method, %url, status = status.as_u16(), "dav request");
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// PROPFIND with `Depth` and the given properties; a 207 parsed.
    pub async fn propfind(
        &self,
        url: &Url,
        depth: u8,
        props: &[(&str, &str)],
    ) -> Result<xml::Multistatus, Error> {
        let answer = self
            .send(
                Method::from_bytes(b"PROPFIND").expect("valid method"),
                url,
                &[("Depth", depth.to_string())],
                Some((
                    "application/xml; charset=utf-8",
                    xml::propfind(props).into_bytes(),
                )),
            )
            .await?;
        if answer.status != StatusCode::MULTI_STATUS {
            return Err(status_error(url, "PROPFIND", &answer));
        }
        multistatus(url, &answer)
    }

    /// A REPORT; the raw answer (callers judge 403/507 themselves).
    pub async fn report(&self, url: &Url, depth: u8, body: String) -> Result<Answer, Error> {
        self.send(
            Method::from_bytes(b"REPORT").expect("valid method"),
            url,
            &[("Depth", depth.to_string())],
            Some(("application/xml; charset=utf-8", body.into_bytes())),
        )
        .await
    }
}

/// Parses a 207 body, naming the URL if it is not one.
pub fn multistatus(url: &Url, answer: &Answer) -> Result<xml::Multistatus, Error> {
    xml::parse_multistatus(&answer.body).map_err(|e| Error::Remote {
        url: url.to_string(),
        status: Some(answer.status.as_u16()),
        reason: format!(
            "the server's multistatus answer cannot be read ({e}); is this a CalDAV/CardDAV server? retried at the next sync"
        ),
    })
}

fn unreachable_error(url: &Url, method: &Method, e: &reqwest::Error) -> Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "the connection failed"
    };
    // reqwest's Display hides the cause ("error sending request"): add it.
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    Error::Remote {
        url: url.to_string(),
        status: None,
        reason: format!(
            "{method} {what} ({cause}); check that the server is running and the URL in [mailbox.dav] is right; retried at the next sync"
        ),
    }
}

/// An error for an unexpected status, saying what it means and what to fix.
pub fn status_error(url: &Url, what: &str, answer: &Answer) -> Error {
    let code = answer.status.as_u16();
    let reason = match code {
        401 => format!(
            "{what}: 401 Unauthorized: the server refused the username or password; check username and password (or password_file / password_command) in [mailbox.dav]"
        ),
        403 => format!(
            "{what}: 403 Forbidden: this user may not do that here; check that the URL in [mailbox.dav] is one of this user's own collections and the user's rights on the server"
        ),
        404 => format!(
            "{what}: 404 Not Found: there is no collection at this URL; check the contacts/calendar/tasks URL in [mailbox.dav] (it must end in /), or give only the server root to discover them"
        ),
        405 => format!(
            "{what}: 405 Method Not Allowed: this URL is not a CalDAV/CardDAV collection; point [mailbox.dav] at the address book or calendar itself, not at a file or the home folder"
        ),
        429 => format!(
            "{what}: 429 Too Many Requests: the server limits how often this user may ask; retried later"
        ),
        500..=599 => format!(
            "{what}: server error {code} ({}); retried at the next sync",
            answer.snippet()
        ),
        _ => format!(
            "{what}: unexpected answer {code} ({}); retried at the next sync",
            answer.snippet()
        ),
    };
    if code == 401 {
        return Error::AuthenticationFailed {
            url: url.to_string(),
            reason,
        };
    }
    if matches!(code, 429 | 503) {
        if let Some(after) = retry_after(&answer.headers, std::time::SystemTime::now()) {
            return Error::Throttled {
                url: url.to_string(),
                reason: format!(
                    "{reason}; the server asks to wait {} s before trying again",
                    after.as_secs()
                ),
                retry_after: after,
            };
        }
    }
    Error::Remote {
        url: url.to_string(),
        status: Some(code),
        reason,
    }
}

/// RFC 9110 §10.2.3: `Retry-After` is a number of seconds or an HTTP date;
/// `None` when absent or unreadable (then the usual backoff applies).
pub fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, retry: Option<&str>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(r) = retry {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(r).unwrap());
        }
        Answer {
            status: StatusCode::from_u16(code).unwrap(),
            headers,
            body: Vec::new(),
        }
    }

    #[test]
    fn r_v5_retry_after_in_seconds_or_as_a_date_is_read() {
        let now = httpdate::parse_http_date("Thu, 03 Dec 2026 10:00:00 GMT").unwrap();
        let read = |v: &str| retry_after(&answer(503, Some(v)).headers, now);
        assert_eq!(read("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            read("Thu, 03 Dec 2026 10:05:00 GMT"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            read("Thu, 03 Dec 2026 09:00:00 GMT"),
            Some(Duration::ZERO),
            "a past date: now"
        );
        assert_eq!(read("soon"), None);
        assert_eq!(retry_after(&answer(503, None).headers, now), None);
    }

    #[test]
    fn r_v5_a_busy_server_that_says_when_to_come_back_is_throttled() {
        let url = Url::parse("http://dav.example/ann/contacts/").unwrap();
        let busy = status_error(&url, "REPORT", &answer(429, Some("90")));
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(90)), "{busy}");
        assert!(busy.to_string().contains("wait 90 s"), "{busy}");
        let unavailable = status_error(&url, "REPORT", &answer(503, Some("30")));
        assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(30)));
        // Without the header, or on another status, the usual backoff applies.
        assert_eq!(
            status_error(&url, "REPORT", &answer(503, None)).retry_after(),
            None
        );
        assert_eq!(
            status_error(&url, "REPORT", &answer(500, Some("30"))).retry_after(),
            None
        );
    }
}
