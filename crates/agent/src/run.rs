//! `crmsync agent`: the long-running client. It synchronizes at start
//! (catching up on what changed while it was off, R-T3), on every mailbox
//! change notification (R-T2, deletions left for the scheduled sync), and on
//! the schedule (R-T1). A failed sync (server unreachable) is logged and
//! tried again; changes wait in the mailbox and the cache meanwhile (R-T4).

use std::future::Future;
use std::time::Duration;

use crate::engine::{Agent, SyncOptions, SyncReport};

/// Notifications arriving within this window are one sync.
const SETTLE: Duration = Duration::from_millis(150);
/// After a failed sync, the next attempt waits this long (doubling, up to
/// the interval).
const FIRST_RETRY: Duration = Duration::from_secs(5);

pub async fn run(
    agent: &Agent,
    shutdown: impl Future<Output = ()>,
    mut on_sync: impl FnMut(&anyhow::Result<SyncReport>),
) -> anyhow::Result<()> {
    let interval = agent.config().interval;
    let mut watch = agent.watch().await?;
    tokio::pin!(shutdown);
    let mut scheduled = true;
    let mut retry = FIRST_RETRY;
    loop {
        let result = agent
            .sync_once(SyncOptions {
                allow_mass_delete: false,
                defer_deletions: !scheduled,
            })
            .await;
        let wait = match &result {
            Ok(_) => {
                retry = FIRST_RETRY;
                interval
            }
            Err(_) => {
                let w = retry.min(interval);
                retry = (retry * 2).min(interval);
                w
            }
        };
        on_sync(&result);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => scheduled = true,
            Some(_) = watch.next() => {
                tokio::time::sleep(SETTLE).await;
                while watch.try_next().is_some() {}
                scheduled = false;
            }
        }
    }
}
