//! Rendering templates into responses, and the plain message page.

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::layout::Layout;

/// A rendered page; a template that fails to render (a bug) answers 500.
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the server failed to show this page; nothing was changed",
            )
                .into_response()
        }
    }
}

/// Implements `IntoResponse` for page templates.
macro_rules! page {
    ($($t:ty),*) => {$(
        impl axum::response::IntoResponse for $t {
            fn into_response(self) -> axum::response::Response {
                $crate::web::pages::render(&self)
            }
        }
    )*};
}
pub(crate) use page;

/// A page that says one thing: an error, a refusal, a confirmation.
#[derive(Template)]
#[template(path = "message.html")]
pub struct Message {
    pub layout: Layout,
    pub text: String,
}

page!(Message);

impl Message {
    pub fn public(title: &str, text: impl Into<String>) -> Message {
        Message {
            layout: Layout::public(title),
            text: text.into(),
        }
    }
}
