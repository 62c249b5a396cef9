//! R-T7 on the agent's side: the long poll that tells the run loop a CRM
//! change may concern this client. It asks again when the server's minute
//! passes, and retries with back-off while the server is away (R-T1's
//! schedule and the run loop's retries stay the backstop). A server that
//! refuses the poll (an older server without it, a revoked token) is not
//! asked again until the next sync.

use std::time::{Duration, Instant};

use crate::crm::{CrmClient, CrmError};

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// An answer faster than this without a change (a server shutting down)
/// is retried after the back-off, not at once.
const QUICK: Duration = Duration::from_secs(1);

/// Returns when a CRM change after `since` may concern `client`.
pub async fn crm_changed(crm: &CrmClient, client: &str, since: i64) {
    let mut retry = FIRST_RETRY;
    loop {
        let asked = Instant::now();
        let pause = match crm.wait_for_changes(client, since).await {
            Ok(true) => return,
            Ok(false) if asked.elapsed() >= QUICK => {
                retry = FIRST_RETRY;
                continue;
            }
            Ok(false) => retry,
            Err(CrmError::Unreachable { .. }) => {
                tracing::debug!(
                    retry_ms = retry.as_millis() as u64,
                    "CRM server away; waiting for changes again later"
                );
                retry
            }
            Err(e) => {
                tracing::warn!("CRM changes reach this mailbox at the scheduled syncs only: {e}");
                return std::future::pending().await;
            }
        };
        tokio::time::sleep(pause).await;
        retry = (retry * 2).min(LAST_RETRY);
    }
}
