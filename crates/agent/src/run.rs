//! `crmsync agent`: the long-running client. It synchronizes at start
//! (catching up on what changed while it was off, R-T3), on every mailbox
//! change notification (R-T2, deletions left for the scheduled sync), when
//! the CRM server says a change may concern it (R-T7, the long poll of
//! `crm_watch`, with the same deferral of mailbox deletions), and on
//! the schedule (R-T1: the organization's and user's settings, from the
//! server; off when the user turned it off). A failed sync (server unreachable) is logged and
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
        // R-T1: the schedule the server gave at this sync's registration.
        let interval = agent.scheduled_interval();
        let wait = match &result {
            Ok(_) => {
                retry = FIRST_RETRY;
                interval
            }
            Err(_) => {
                let cap = interval.unwrap_or(agent.config().interval);
                let w = retry.min(cap);
                retry = (retry * 2).min(cap);
                Some(w)
            }
        };
        on_sync(&result);
        // R-T7: from the version of the last prepare, so a change made
        // during this sync wakes the next wait at once. After a failed
        // sync (which may have failed before its prepare) not at once: a
        // sync failing again and again is not repeated without a pause.
        let position = agent.crm_position();
        let pause = if result.is_ok() {
            Duration::ZERO
        } else {
            FIRST_RETRY
        };
        let crm_change = async {
            match &position {
                Some((client, since)) => {
                    tokio::time::sleep(pause).await;
                    crate::crm_watch::crm_changed(agent.crm(), client, *since).await
                }
                None => std::future::pending().await,
            }
        };
        let scheduled_wait = async {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                // Scheduled sync off: only notifications (R-T2) start one.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = scheduled_wait => scheduled = true,
            _ = crm_change => scheduled = false,
            Some(_) = watch.next() => {
                tokio::time::sleep(SETTLE).await;
                while watch.try_next().is_some() {}
                scheduled = false;
            }
        }
    }
}
