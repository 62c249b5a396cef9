//! Signing in and out (R-W2): email and password, one-time links.

use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use std::collections::HashMap;

use super::csrf::{read_form, refusal, same_origin, tokens_equal, Posted};
use super::layout::Layout;
use super::pages::{page, Message};
use super::session::{self, cookie, random_token, set_cookie};
use crate::passwords::{self, SigninRefused};
use crate::AppState;

/// Before a session exists, the sign-in form's CSRF token is paired with
/// a cookie of the same value (login CSRF).
const PRE_COOKIE: &str = "crmsync_signin";

#[derive(Template)]
#[template(path = "signin.html")]
pub struct SigninPage {
    layout: Layout,
    csrf: String,
    next: String,
    email: String,
    error: Option<String>,
}

page!(SigninPage);

/// Where to go after signing in: a path of this site only.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

fn form_page(
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    email: &str,
    error: Option<String>,
) -> Response {
    let csrf = random_token();
    let page = SigninPage {
        layout: Layout::public("Sign in"),
        csrf: csrf.clone(),
        next: next.to_string(),
        email: email.to_string(),
        error,
    };
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(headers, PRE_COOKIE, &csrf, 3600),
        )],
        page,
    )
        .into_response()
}

pub async fn page(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let next = safe_next(q.get("next").map(String::as_str));
    form_page(&headers, StatusCode::OK, &next, "", None)
}

/// Signs in with a new session and goes to `next`.
async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    user: uuid::Uuid,
    next: &str,
) -> Response {
    match session::create(&state.store, user).await {
        Ok(token) => (
            AppendHeaders([
                (
                    header::SET_COOKIE,
                    set_cookie(headers, session::COOKIE, &token, session::SESSION_SECS),
                ),
                (header::SET_COOKIE, set_cookie(headers, PRE_COOKIE, "", 0)),
            ]),
            Redirect::to(next),
        )
            .into_response(),
        Err(e) => super::server_error(e.into()),
    }
}

pub async fn submit(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    if !same_origin(&headers) {
        return refusal();
    }
    let form = match read_form(req, &state).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let paired = cookie(&headers, PRE_COOKIE);
    match (form.get("_csrf"), paired.as_deref()) {
        (Some(a), Some(b)) if !a.is_empty() && tokens_equal(a, b) => {}
        _ => return refusal(),
    }
    let next = safe_next(form.get("next"));
    let email = form.get("email").unwrap_or("").trim().to_string();
    let password = form.get("password").unwrap_or("");
    if email.is_empty() || password.is_empty() {
        let msg = "Enter your email and your password.".to_string();
        return form_page(
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            &email,
            Some(msg),
        );
    }
    let (status, msg) = match passwords::sign_in(&state.store, &email, password).await {
        Err(e) => {
            tracing::error!(error = %e, "sign-in failed");
            return super::server_error(crate::error::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the server failed; try again",
            ));
        }
        Ok(Ok(user)) => return start_session(&state, &headers, user.id, &next).await,
        Ok(Err(SigninRefused::Wrong)) => (
            StatusCode::UNAUTHORIZED,
            "Wrong email or password. Check both and try again.".to_string(),
        ),
        Ok(Err(SigninRefused::Wait(secs))) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many failed sign-ins for this account: wait {secs} seconds, then try again."
            ),
        ),
        Ok(Err(SigninRefused::Disabled)) => (
            StatusCode::FORBIDDEN,
            "This user is disabled; ask an admin to enable it.".to_string(),
        ),
    };
    form_page(&headers, status, &next, &email, Some(msg))
}

/// A one-time link of `crmsync up`: works once, within 10 minutes.
pub async fn link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    match session::use_link(&state.store, &token).await {
        Ok(Some(user)) => start_session(&state, &headers, user, "/").await,
        Ok(None) => (
            StatusCode::GONE,
            Message::public(
                "Sign-in link not valid",
                "This sign-in link was already used or has expired: a link works once, for 10 minutes. Restart crmsync up for a new link, or sign in with your password.",
            ),
        )
            .into_response(),
        Err(e) => super::server_error(e.into()),
    }
}

pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    posted: Posted,
) -> Response {
    if let Err(e) = session::end(&state.store, &posted.user.session_token).await {
        return super::server_error(e.into());
    }
    (
        [(
            header::SET_COOKIE,
            set_cookie(&headers, session::COOKIE, "", 0),
        )],
        Redirect::to("/signin"),
    )
        .into_response()
}
