//! BENCHMARKS.md "Prepare": with nothing changed, a prepare costs a fixed,
//! small number of statements (at most 3 round trips on PostgreSQL),
//! whatever the organization holds. Counted over HTTP, on both databases,
//! from sqlx's own event for every statement it sends.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Backend, TestServer};
use serde_json::json;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Statements sent by every pool of this process.
static STATEMENTS: AtomicUsize = AtomicUsize::new(0);

struct CountStatements;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountStatements {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        STATEMENTS.fetch_add(1, Ordering::SeqCst);
    }
}

/// What one HTTP request cost, in statements.
async fn statements_of(s: &TestServer, token: &str, path: &str, body: serde_json::Value) -> usize {
    let before = STATEMENTS.load(Ordering::SeqCst);
    s.post(token, path, body).await.expect(200);
    STATEMENTS.load(Ordering::SeqCst) - before
}

/// A synchronized client of a user who owns `records` contacts; the
/// statements of its next prepare, with nothing changed.
async fn no_change_prepare(backend: Backend, records: usize) -> usize {
    let s = common::start(backend).await;
    let (_, ann) = s.add_user("ann@example.com").await;
    for i in 0..records {
        s.post(
            &ann,
            "/api/v1/contacts",
            json!({"last_name": format!("C{i}")}),
        )
        .await
        .expect(201);
    }
    let client = s.register(&ann, "laptop").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.sync_once(&ann, &client).await.len(), records);
    let prepare = json!({"client_id": client});
    let first = statements_of(&s, &ann, "/api/v1/sync/prepare", prepare.clone()).await;
    let second = statements_of(&s, &ann, "/api/v1/sync/prepare", prepare).await;
    assert_eq!(
        first, second,
        "{backend:?}: every no-change prepare costs the same"
    );
    first
}

// One test, run in turn on both databases: the counter is the process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_prepare_sends_two_statements_whatever_the_organization_holds() {
    tracing_subscriber::registry()
        .with(
            CountStatements
                .with_filter(Targets::new().with_target("sqlx::query", LevelFilter::TRACE)),
        )
        .init();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let small = no_change_prepare(backend, 3).await;
        let large = no_change_prepare(backend, 300).await;
        println!("{backend:?}: a no-change prepare over HTTP sends {small} statements (3 records), {large} (300 records)");
        // The token check, then one query for the client's row, the
        // committed version and its unacknowledged deliveries
        // (`sync::store::client_status`); no write.
        assert_eq!(small, 2, "{backend:?}");
        assert_eq!(large, small, "{backend:?}: independent of the records");
    }
}
