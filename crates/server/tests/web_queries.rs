//! The web pages hold no N+1 query pattern (issue 13, toward R-W8): a
//! list page, a record page with its timeline and the Activities page send
//! as many statements for 40 rows as for 2. Counted from sqlx's own event
//! for every statement, as `prepare_round_trips.rs` does, on both databases.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::browser::Browser;
use common::{Backend, TestServer};
use serde_json::json;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

static STATEMENTS: AtomicUsize = AtomicUsize::new(0);

struct CountStatements;

/// The text of a statement event (sqlx's `summary` and `db.statement`).
#[derive(Default)]
struct StatementText(String);

impl tracing::field::Visit for StatementText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "summary" | "db.statement") {
            self.0.push_str(&format!("{value:?} "));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if matches!(field.name(), "summary" | "db.statement") {
            self.0.push_str(value);
            self.0.push(' ');
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountStatements {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        // A connection the pool opens meanwhile (on a loaded machine the
        // page's concurrent queries may need one more) runs its set-up
        // PRAGMAs: the pool's cost, not the page's.
        let mut text = StatementText::default();
        event.record(&mut text);
        if !text.0.to_ascii_uppercase().contains("PRAGMA") {
            STATEMENTS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Statements one page costs.
async fn statements_of(b: &Browser<'_>, path: &str) -> usize {
    let before = STATEMENTS.load(Ordering::SeqCst);
    let page = b.get(path).await;
    assert_eq!(page.status, 200, "{path}: {}", page.html);
    STATEMENTS.load(Ordering::SeqCst) - before
}

/// The statements of each page (by its place in the list) over an
/// organization with `n` of everything.
async fn pages(backend: Backend, n: usize) -> Vec<(usize, usize)> {
    let s: TestServer = common::start(backend).await;
    let acc = s
        .post(&s.admin, "/api/v1/accounts", json!({"name": "Acme"}))
        .await
        .expect(201);
    let aid = acc["id"].as_str().unwrap().to_string();
    for i in 0..n {
        s.post(
            &s.admin,
            "/api/v1/contacts",
            json!({"last_name": format!("C{i}"), "account_id": aid}),
        )
        .await
        .expect(201);
        s.post(
            &s.admin,
            "/api/v1/tasks",
            json!({"subject": format!("T{i}"), "regarding": {"set": "accounts", "id": aid}}),
        )
        .await
        .expect(201);
    }
    let b = Browser::as_admin(&s).await;
    let paths = [
        "/contacts".to_string(),
        "/contacts?sort=last_name&dir=asc&q=c".into(),
        format!("/accounts/{aid}"),
        "/activities".into(),
        "/tasks".into(),
    ];
    // Once first, so that the pool's connections (and their set-up
    // statements) are open before counting.
    for path in &paths {
        statements_of(&b, path).await;
    }
    let mut out = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        out.push((i, statements_of(&b, path).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_w8_pages_cost_the_same_statements_whatever_they_list() {
    tracing_subscriber::registry()
        .with(
            CountStatements
                .with_filter(Targets::new().with_target("sqlx::query", LevelFilter::TRACE)),
        )
        .init();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let small = pages(backend, 2).await;
        let large = pages(backend, 40).await;
        println!("{backend:?}: statements per page with 2 rows {small:?}, with 40 {large:?}");
        assert_eq!(small, large, "{backend:?}: no statement per row");
        for (page, n) in &small {
            // The session and its user, then the page's own queries (the
            // Activities page: one list per open state of each kind).
            assert!(*n <= 12, "{backend:?}: page {page} sends {n} statements");
        }
    }
}
