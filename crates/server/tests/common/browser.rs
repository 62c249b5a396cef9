//! A browser for the web interface's tests: keeps its session cookie,
//! follows no redirects, posts forms as the site's pages do.
#![allow(dead_code)]

use reqwest::{redirect, Response, StatusCode};
use uuid::Uuid;

use crmsync_server::web::session;

use super::TestServer;

/// A browser: keeps its session cookie, follows no redirects.
pub struct Browser<'a> {
    pub s: &'a TestServer,
    pub http: reqwest::Client,
    pub cookie: String,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub html: String,
}

impl Page {
    pub async fn of(r: Response) -> Page {
        Page {
            status: r.status(),
            headers: r.headers().clone(),
            html: r.text().await.unwrap(),
        }
    }
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .map_or("", |l| l.to_str().unwrap())
    }
    /// The target of the link with this `rel`, its entities decoded.
    pub fn link(&self, rel: &str) -> String {
        let tail = format!("\" rel=\"{rel}\"");
        let end = self
            .html
            .find(&tail)
            .unwrap_or_else(|| panic!("no {rel} link in {}", self.html));
        let start = self.html[..end].rfind("href=\"").unwrap() + 6;
        self.html[start..end]
            .replace("&#38;", "&")
            .replace("&amp;", "&")
    }

    /// The value of the first hidden input named `name`.
    pub fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .html
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {}", self.html))
            + marker.len();
        self.html[start..].split('"').next().unwrap().to_string()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of a Set-Cookie header for `name`.
pub fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with(&format!("{name}=")))
}

impl<'a> Browser<'a> {
    pub fn anonymous(s: &'a TestServer) -> Browser<'a> {
        Browser {
            s,
            http: client(),
            cookie: String::new(),
        }
    }

    /// Signed in as the user with this id (a session made as sign-in makes it).
    pub async fn as_user(s: &'a TestServer, user: Uuid) -> Browser<'a> {
        let token = session::create(&s.store, user).await.unwrap();
        Browser {
            s,
            http: client(),
            cookie: format!("{}={token}", session::COOKIE),
        }
    }

    pub async fn as_admin(s: &'a TestServer) -> Browser<'a> {
        let admin = s
            .store
            .user_by_token(&crmsync_server::auth::hash_token(&s.admin))
            .await
            .unwrap()
            .unwrap();
        Self::as_user(s, admin.id).await
    }

    pub async fn get(&self, path: &str) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.s.base));
        if !self.cookie.is_empty() {
            req = req.header("cookie", &self.cookie);
        }
        Page::of(req.send().await.unwrap()).await
    }

    /// Posts a form as a page of this site does (same-origin headers).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_with(
            path,
            form,
            &[("origin", &self.s.base), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.s.base)).form(form);
        if !self.cookie.is_empty() {
            req = req.header("cookie", &self.cookie);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Page::of(req.send().await.unwrap()).await
    }

    /// The CSRF token of the signed-in session, as its pages carry it.
    pub async fn csrf(&self) -> String {
        self.get("/activities").await.hidden("_csrf")
    }
}
