//! The crmsync CRM server (`crmsync serve`): storage on SQLite or
//! PostgreSQL, the REST API of SPEC §4 and the web interface of §14.

pub mod api;
pub mod auth;
pub mod changes;
pub mod config;
pub mod db;
pub mod error;
pub mod export;
pub mod list_indexes;
mod listen;
pub mod mailboxes;
pub mod metrics;
pub mod offline;
pub mod passwords;
pub mod records;
pub mod replica;
pub mod secrets;
pub mod store;
pub mod sync;
pub mod web;

use std::net::SocketAddr;

pub use store::Store;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
}

/// Default request body limit (SPEC issue: 10 MiB, configurable).
pub const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;

/// Serves the API on an already bound listener until `shutdown` resolves.
pub async fn serve(
    store: Store,
    listener: tokio::net::TcpListener,
    max_body_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    metrics::init();
    let changes = store.changes.clone();
    let heard = listen::spawn(&store);
    let app = api::router(AppState { store }, max_body_bytes);
    // Waiting clients are answered at once: a graceful shutdown waits for
    // every request in flight, and a long poll would hold it up to 60 s.
    let shutdown = async move {
        shutdown.await;
        changes.close();
    };
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    if let Some(task) = heard {
        task.abort();
    }
    served?;
    Ok(())
}
