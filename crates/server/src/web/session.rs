//! Browser sessions (R-W2): a random token in an HttpOnly, SameSite=Lax
//! cookie, stored in the database only as its hash with the session's
//! CSRF token, so that every `serve` process on one database knows it.
//! Also the one-time sign-in links of `crmsync up`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use sqlx::Row;
use uuid::Uuid;

use crate::auth::{hash_token, Caller};
use crate::passwords::unix_now;
use crate::store::Store;
use crate::AppState;

pub const COOKIE: &str = "crmsync_session";
/// How long a session lasts after sign-in.
pub const SESSION_SECS: i64 = 12 * 3600;
/// How long a sign-in link of `crmsync up` works.
pub const LINK_SECS: i64 = 10 * 60;

/// 256 random bits as hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new session for `user`; returns the cookie's token.
pub async fn create(store: &Store, user: Uuid) -> Result<String, sqlx::Error> {
    let token = random_token();
    let now = unix_now();
    sqlx::query(
        "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash_token(&token))
    .bind(user.to_string())
    .bind(random_token())
    .bind(now)
    .bind(now + SESSION_SECS)
    .execute(&store.pool)
    .await?;
    // Expired sessions go whenever someone signs in.
    sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
        .bind(now)
        .execute(&store.pool)
        .await?;
    Ok(token)
}

pub async fn end(store: &Store, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1")
        .bind(hash_token(token))
        .execute(&store.pool)
        .await?;
    Ok(())
}

/// A one-time sign-in link's token for `user`, valid [`LINK_SECS`].
pub async fn create_link(store: &Store, user: Uuid) -> Result<String, sqlx::Error> {
    let token = random_token();
    sqlx::query("INSERT INTO signin_links (token_hash, user_id, expires_at) VALUES ($1, $2, $3)")
        .bind(hash_token(&token))
        .bind(user.to_string())
        .bind(unix_now() + LINK_SECS)
        .execute(&store.pool)
        .await?;
    Ok(token)
}

/// Uses up a sign-in link: the user it was for if it is known and not
/// expired. Deleting it in the same statement makes it work once, even
/// with two processes racing.
pub async fn use_link(store: &Store, token: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let row =
        sqlx::query("DELETE FROM signin_links WHERE token_hash = $1 RETURNING user_id, expires_at")
            .bind(hash_token(token))
            .fetch_optional(&store.pool)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let expires: i64 = row.try_get("expires_at")?;
    let user: String = row.try_get("user_id")?;
    Ok(Uuid::parse_str(&user)
        .ok()
        .filter(|_| expires >= unix_now()))
}

/// The value of one cookie of the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether the browser reached us over https (directly or through a proxy).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Secure behind https.
pub fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: i64) -> String {
    let secure = if is_https(headers) { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// The signed-in user of a page request. Without a valid session the
/// request is answered with a redirect to the sign-in page.
#[derive(Debug, Clone)]
pub struct WebUser {
    pub caller: Caller,
    pub name: String,
    pub email: String,
    pub csrf: String,
    pub session_token: String,
}

impl FromRequestParts<AppState> for WebUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_signin = || {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| parts.method == axum::http::Method::GET && *p != "/")
                .map(|p| format!("?next={}", super::layout::url_encode(p)))
                .unwrap_or_default();
            Redirect::to(&format!("/signin{next}")).into_response()
        };
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(to_signin());
        };
        let row = sqlx::query(
            "SELECT s.user_id, s.csrf_token, s.expires_at FROM web_sessions s WHERE s.token_hash = $1",
        )
        .bind(hash_token(&token))
        .fetch_optional(&state.store.pool)
        .await
        .map_err(|e| super::server_error(e.into()))?;
        let Some(row) = row else {
            return Err(to_signin());
        };
        let read = |row: &sqlx::any::AnyRow| -> Result<(String, String, i64), sqlx::Error> {
            Ok((
                row.try_get("user_id")?,
                row.try_get("csrf_token")?,
                row.try_get("expires_at")?,
            ))
        };
        let (user_id, csrf, expires) = read(&row).map_err(|e| super::server_error(e.into()))?;
        if expires < unix_now() {
            return Err(to_signin());
        }
        let user = match Uuid::parse_str(&user_id) {
            Ok(id) => state
                .store
                .get(id)
                .await
                .map_err(|e| super::server_error(e.into()))?,
            Err(_) => None,
        };
        let Some(user) = user.filter(|u| u.state == "active") else {
            return Err(to_signin());
        };
        let text = |k: &str| {
            user.fields
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(WebUser {
            caller: Caller {
                user_id: user.id,
                is_admin: text("role") == "admin",
            },
            name: text("name"),
            email: text("email"),
            csrf,
            session_token: token,
        })
    }
}
