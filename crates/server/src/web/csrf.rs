//! CSRF defence of every state-changing request (R-W2): the session's
//! synchronizer token in a hidden `_csrf` field, and an `Origin` /
//! `Sec-Fetch-Site` check. A request that fails either changes nothing
//! and is answered 403 with a page saying so.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::session::WebUser;
use crate::AppState;

/// The fields of a submitted form, in order.
#[derive(Debug, Clone, Default)]
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether the request came from a page of this site: a cross-site
/// `Sec-Fetch-Site`, or an `Origin` naming another host, is refused. (Old
/// browsers send neither; the token still protects them.)
pub fn same_origin(headers: &HeaderMap) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = value("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    let Some(origin) = value(header::ORIGIN.as_str()) else {
        return true;
    };
    let Some((_, origin_host)) = origin.split_once("://") else {
        return false; // "null" and the like
    };
    [value(header::HOST.as_str()), value("x-forwarded-host")]
        .into_iter()
        .flatten()
        .any(|host| host.eq_ignore_ascii_case(origin_host))
}

/// Compares without leaking where two strings first differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn refusal() -> Response {
    let page = super::pages::Message::public(
        "Request refused",
        "This form could not be accepted: it has expired, or it was sent from another site. Nothing was changed. Go back, reload the page and try again.",
    );
    (StatusCode::FORBIDDEN, page).into_response()
}

/// A form posted by a signed-in user, its CSRF token and origin checked.
pub struct Posted {
    pub user: WebUser,
    pub form: FormData,
}

/// Reads an `application/x-www-form-urlencoded` body.
pub async fn read_form(req: Request, state: &AppState) -> Result<FormData, Response> {
    axum::Form::<Vec<(String, String)>>::from_request(req, state)
        .await
        .map(|f| FormData(f.0))
        .map_err(|e| {
            let page = super::pages::Message::public(
                "Form not understood",
                format!(
                    "The form could not be read ({}). Nothing was changed.",
                    e.body_text()
                ),
            );
            (StatusCode::BAD_REQUEST, page).into_response()
        })
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let user = WebUser::from_request_parts(&mut parts, state).await?;
        if !same_origin(&parts.headers) {
            return Err(refusal());
        }
        let form = read_form(Request::from_parts(parts, body), state).await?;
        match form.get("_csrf") {
            Some(token) if tokens_equal(token, &user.csrf) => Ok(Posted { user, form }),
            _ => Err(refusal()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn r_w2_cross_site_requests_are_refused() {
        assert!(same_origin(&headers(&[("host", "crm.example:8480")])));
        assert!(same_origin(&headers(&[
            ("host", "crm.example:8480"),
            ("origin", "http://crm.example:8480"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "crm.example:8480"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "crm.example"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "crm.example"),
            ("sec-fetch-site", "cross-site"),
        ])));
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "ab"));
    }
}
