//! The floor of a REST GET (BENCHMARKS.md "minimal Rust HTTP stack (axum +
//! SQLite), GET one row of 1M, 1 connection"): a minimal axum handler that
//! reads one row of the same `records` table over one typed sqlx connection
//! of its own (SQLite or PostgreSQL, not the project's `Any` pool or Store)
//! and returns its JSON text. No auth, no middleware, no JSON re-encoding.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sqlx::{Connection, PgConnection, SqliteConnection};
use tokio::sync::Mutex;

/// One connection of the database's own driver.
pub enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Conn {
    /// Opens `url` (`sqlite://…` or `postgres://…`).
    pub async fn open(url: &str) -> Conn {
        if url.starts_with("sqlite:") {
            Conn::Sqlite(SqliteConnection::connect(url).await.unwrap())
        } else {
            Conn::Postgres(PgConnection::connect(url).await.unwrap())
        }
    }

    /// The `data` column of the live record `id`.
    pub async fn get(&mut self, id: &str) -> Option<String> {
        const SQL: &str = "SELECT data FROM records WHERE id = $1 AND deleted_at IS NULL";
        match self {
            Conn::Sqlite(c) => sqlx::query_scalar(SQL)
                .bind(id)
                .fetch_optional(c)
                .await
                .unwrap(),
            Conn::Postgres(c) => sqlx::query_scalar(SQL)
                .bind(id)
                .fetch_optional(c)
                .await
                .unwrap(),
        }
    }
}

/// The floor's query on a pool: the database's own typed pool, or the
/// project's `Any` pool (the same SQL, to separate the driver's cost from
/// the pool's).
pub enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    Any(sqlx::AnyPool),
}

impl Pool {
    pub async fn typed(url: &str) -> Pool {
        if url.starts_with("sqlite:") {
            Pool::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap())
        } else {
            Pool::Postgres(sqlx::PgPool::connect(url).await.unwrap())
        }
    }

    pub async fn get(&self, id: &str) -> Option<String> {
        const SQL: &str = "SELECT data FROM records WHERE id = $1 AND deleted_at IS NULL";
        match self {
            Pool::Sqlite(p) => sqlx::query_scalar(SQL).bind(id).fetch_optional(p).await,
            Pool::Postgres(p) => sqlx::query_scalar(SQL).bind(id).fetch_optional(p).await,
            Pool::Any(p) => sqlx::query_scalar(SQL).bind(id).fetch_optional(p).await,
        }
        .unwrap()
    }
}

type Shared = Arc<Mutex<Conn>>;

async fn get_one(State(conn): State<Shared>, Path(id): Path<String>) -> Response {
    match conn.lock().await.get(&id).await {
        Some(data) => ([(header::CONTENT_TYPE, "application/json")], data).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves `GET /floor/{id}` on a loopback port; returns its base URL.
pub async fn serve(url: &str) -> String {
    let conn: Shared = Arc::new(Mutex::new(Conn::open(url).await));
    let app = axum::Router::new()
        .route("/floor/{id}", axum::routing::get(get_one))
        .with_state(conn);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}
