//! Prometheus metrics: request counts and latencies by route and status.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::State;
use sqlx::Row;

use crate::auth::Caller;
use crate::mailboxes::MailboxState;
use crate::AppState;

/// Every state, so that a state no mailbox is in shows 0.
async fn mailbox_states(state: &AppState) -> Result<Vec<(&'static str, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM mailboxes GROUP BY state")
        .fetch_all(&state.store.pool)
        .await?;
    Ok(MailboxState::ALL
        .iter()
        .map(|s| {
            let n = rows
                .iter()
                .find(|r| {
                    r.try_get::<String, _>("state")
                        .is_ok_and(|v| v == s.as_str())
                })
                .and_then(|r| r.try_get::<i64, _>("n").ok())
                .unwrap_or(0);
            (s.as_str(), n)
        })
        .collect())
}

/// The process-wide recorder (the `metrics` facade has one global sink).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("crmsync installs the only metrics recorder")
    })
}

/// Makes sure the recorder exists before the first request is counted.
pub fn init() {
    handle();
}

pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// `GET /metrics` in the Prometheus text format (any authenticated user).
/// R-V5: with the connected mailboxes per state, read from the database so
/// that every `serve` process reports the same.
pub async fn render(State(state): State<AppState>, _caller: Caller) -> impl IntoResponse {
    match mailbox_states(&state).await {
        Ok(counts) => {
            for (name, n) in counts {
                metrics::gauge!("crmsync_mailboxes", "state" => name).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count the mailboxes per state for /metrics"),
    }
    let text = handle().render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
