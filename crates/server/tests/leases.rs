//! R-V4: the work queue of server-side synchronization. Claims of due
//! mailboxes are leases with a fencing token; on SQLite and PostgreSQL.

mod common;

use std::collections::HashSet;

use serde_json::json;

use common::TestServer;
use crmsync_server::mailboxes::lease::{self, CycleEnd, Lease, LeaseError, LEASE_FOR};
use crmsync_server::mailboxes::MailboxState;

/// A successful cycle's end, next run at `next`.
fn done(next: i64) -> CycleEnd {
    CycleEnd {
        state: MailboxState::Active,
        next_run_at: next,
        succeeded_at: Some("2026-12-03T00:00:00Z".into()),
        error: None,
        counts: Some("{}".into()),
        failures: 0,
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `n` connected mailboxes of one user, all due now.
async fn mailboxes(s: &TestServer, n: usize) -> Vec<String> {
    let (_, ann) = s.add_user("ann@example.com").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"name": format!("box {i}"),
            "imap": {"host": "127.0.0.1", "port": 143, "security": "none", "username": format!("u{i}"), "password": "pw"}});
        let created = s.post(&ann, "/api/v1/mailboxes", body).await.expect(201);
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    ids
}

both_dbs! {
    async fn r_v4_two_claimers_never_hold_one_mailbox(s: TestServer) {
        let ids = mailboxes(&s, 24).await;
        let at = now() + 1;
        let claimers = (0..6).map(|w| {
            let store = s.store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(l) = lease::claim(&store, &format!("worker {w}"), at).await.unwrap() {
                    got.push(l.mailbox.to_string());
                }
                got
            })
        });
        let mut all = Vec::new();
        for c in claimers {
            all.extend(c.await.unwrap());
        }
        let distinct: HashSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "a mailbox claimed twice: {all:?}");
        assert_eq!(distinct.len(), ids.len(), "every due mailbox claimed once");
        assert!(lease::claim(&s.store, "late", at).await.unwrap().is_none(), "all held");
    }

    async fn r_v4_a_worker_that_lost_its_lease_writes_nothing(s: TestServer) {
        mailboxes(&s, 1).await;
        let t0 = now() + 1;
        let first = lease::claim(&s.store, "a", t0).await.unwrap().unwrap();
        // Held: nobody else gets it before it expires.
        assert!(lease::claim(&s.store, "b", t0 + 60).await.unwrap().is_none());
        // "a" stalls past its lease; "b" takes the mailbox over.
        let expired = t0 + LEASE_FOR.as_secs() as i64 + 1;
        let second = lease::claim(&s.store, "b", expired).await.unwrap().unwrap();
        assert_eq!(second.mailbox, first.mailbox);
        assert!(second.token > first.token, "the token increases at every claim");
        // Every write of "a" is fenced off (the engine's cache writes are
        // fenced the same way: crates/agent/tests/db_cache.rs).
        assert!(matches!(lease::renew(&s.store, &first, expired).await, Err(LeaseError::Lost(_))));
        assert!(matches!(lease::finish(&s.store, &first, &done(expired + 900)).await, Err(LeaseError::Lost(_))));
        // "b" renews and ends its cycle: the mailbox is due again at its next run.
        lease::renew(&s.store, &second, expired + 30).await.unwrap();
        lease::finish(&s.store, &second, &done(expired + 900)).await.unwrap();
        assert!(lease::claim(&s.store, "c", expired + 899).await.unwrap().is_none(), "not due yet");
        let third: Lease = lease::claim(&s.store, "c", expired + 900).await.unwrap().unwrap();
        assert!(third.token > second.token);
    }

    async fn r_v4_claims_take_due_mailboxes_in_order_of_next_run_and_skip_others(s: TestServer) {
        let ids = mailboxes(&s, 4).await;
        let at = now() + 1;
        // Later, earlier, waiting for new credentials, disabled.
        for (id, next, state) in [(&ids[0], at - 10, "active"), (&ids[1], at - 100, "failing"), (&ids[2], at - 1000, "needs_reconnect"), (&ids[3], at - 1000, "disabled")] {
            sqlx::query("UPDATE mailboxes SET next_run_at = $1, state = $2 WHERE id = $3")
                .bind(next).bind(state).bind(id).execute(&s.store.pool).await.unwrap();
        }
        let first = lease::claim(&s.store, "w", at).await.unwrap().unwrap();
        let second = lease::claim(&s.store, "w", at).await.unwrap().unwrap();
        assert_eq!([first.mailbox.to_string(), second.mailbox.to_string()], [ids[1].clone(), ids[0].clone()]);
        assert!(lease::claim(&s.store, "w", at).await.unwrap().is_none(), "needs_reconnect and disabled wait");
    }

    async fn r_v5_new_credentials_during_a_cycle_win_over_its_outcome(s: TestServer) {
        let (_, ann) = s.add_user("ann@example.com").await;
        let body = json!({"name": "work",
            "imap": {"host": "127.0.0.1", "port": 143, "security": "none", "username": "ann", "password": "old"}});
        s.post(&ann, "/api/v1/mailboxes", body).await.expect(201);
        let t0 = now() + 1;
        let claimed = lease::claim(&s.store, "w", t0).await.unwrap().unwrap();
        // While the cycle fails on the old password, the user gives a new one.
        let path = format!("/api/v1/mailboxes/{}", claimed.mailbox);
        s.patch(&ann, &path, json!({"imap": {"password": "new"}})).await.expect(200);
        let refused = CycleEnd {
            state: MailboxState::NeedsReconnect,
            next_run_at: t0 + 3600,
            succeeded_at: None,
            error: Some("the server refused the password".into()),
            counts: None,
            failures: 1,
        };
        lease::finish(&s.store, &claimed, &refused).await.unwrap();
        let m = s.get(&ann, &path).await.expect(200);
        assert_eq!((m["state"].clone(), m["last_error"].clone()), (json!("active"), json!(null)), "{m}");
        // Due at once with the new password, and freed.
        let again = lease::claim(&s.store, "w", t0 + 1).await.unwrap().expect("due again");
        assert!(again.generation > claimed.generation);
        // A cycle with no change meanwhile records its outcome as before.
        lease::finish(&s.store, &again, &refused).await.unwrap();
        let m = s.get(&ann, &path).await.expect(200);
        assert_eq!(m["state"], json!("needs_reconnect"), "{m}");
    }
}
