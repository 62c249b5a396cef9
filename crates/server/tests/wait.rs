//! R-T7: the long poll `GET /sync/wait`, on SQLite and PostgreSQL: it
//! answers when a change may concern the client and not otherwise,
//! refuses client mistakes at once, answers its waiters when the server
//! shuts down, and on PostgreSQL hears changes written through another
//! server process.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};

/// A client of `kinds` that has synchronized: its id and version.
async fn synced_client(s: &TestServer, token: &str, name: &str, kinds: Value) -> (String, i64) {
    let r = s
        .post(
            token,
            "/api/v1/sync/clients",
            json!({"name": name, "kinds": kinds}),
        )
        .await
        .expect(201);
    let id = r["id"].as_str().unwrap().to_string();
    s.sync_once(token, &id).await;
    let prep = s
        .post(token, "/api/v1/sync/prepare", json!({"client_id": id}))
        .await
        .expect(200);
    (id, prep["upto_version"].as_i64().unwrap())
}

/// A wait request running on its own: its answer and how long it took.
fn waiting(
    s: &TestServer,
    token: &str,
    client: &str,
    since: i64,
) -> tokio::task::JoinHandle<(u16, Value, Duration)> {
    let url = format!(
        "{}/api/v1/sync/wait?client_id={client}&since={since}&timeout=30",
        s.base
    );
    let token = token.to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, started.elapsed())
    })
}

async fn still_waiting(w: &tokio::task::JoinHandle<(u16, Value, Duration)>, what: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.is_finished(), "{what} woke the waiter");
}

both_dbs! {
    async fn r_t7_wait_answers_only_for_changes_that_may_concern_the_client(s: TestServer) {
        let (_, token) = s.add_user("waiter@example.com").await;
        let (client, since) = synced_client(&s, &token, "laptop", json!(["contacts"])).await;

        let quiet = s
            .get(&token, &format!("/api/v1/sync/wait?client_id={client}&since={since}&timeout=1"))
            .await
            .expect(200);
        assert_eq!(quiet, json!({"changed": false, "version": since}));

        let w = waiting(&s, &token, &client, since);
        still_waiting(&w, "nothing").await;
        s.post(&token, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        still_waiting(&w, "an account (never in a mailbox)").await;
        s.post(&token, "/api/v1/tasks", json!({"subject": "call"})).await.expect(201);
        still_waiting(&w, "a task (the mailbox holds contacts only)").await;
        let written = Instant::now();
        let c = s
            .post(&token, "/api/v1/contacts", json!({"last_name": "Wake"}))
            .await
            .expect(201);
        let (status, body, _) = w.await.unwrap();
        let took = written.elapsed();
        println!("wait answered {took:?} after the contact was written");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["changed"], true);
        assert_eq!(body["version"], c["version"]);
        assert!(took < Duration::from_secs(2), "{took:?}");

        // A change made before the wait began answers at once.
        let quick = s
            .get(&token, &format!("/api/v1/sync/wait?client_id={client}&since={since}"))
            .await
            .expect(200);
        assert_eq!(quick["changed"], true);
    }

    async fn r_t7_a_rule_change_wakes_waiting_clients(s: TestServer) {
        let (user, token) = s.add_user("ruled@example.com").await;
        let (client, since) = synced_client(&s, &token, "laptop", json!(["contacts"])).await;
        let w = waiting(&s, &token, &client, since);
        still_waiting(&w, "nothing").await;
        let changed = Instant::now();
        s.patch(
            &s.admin,
            &format!("/api/v1/users/{user}/settings"),
            json!({"schedule_enabled": false}),
        )
        .await
        .expect(200);
        let (status, body, _) = w.await.unwrap();
        assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
        assert!(changed.elapsed() < Duration::from_secs(2), "{:?}", changed.elapsed());
        // Its prepare took the new rules up: the next wait waits again.
        let prep = s
            .post(&token, "/api/v1/sync/prepare", json!({"client_id": client}))
            .await
            .expect(200);
        let since = prep["upto_version"].as_i64().unwrap();
        let w = waiting(&s, &token, &client, since);
        still_waiting(&w, "a rule change already taken up").await;
        w.abort();
    }

    async fn r_t7_a_client_is_not_woken_by_its_own_push(s: TestServer) {
        let (_, token) = s.add_user("pusher@example.com").await;
        let (client, since) = synced_client(&s, &token, "laptop", json!(["contacts"])).await;
        let (other, other_since) = synced_client(&s, &token, "phone", json!(["contacts"])).await;
        let mine = waiting(&s, &token, &client, since.max(other_since));
        let theirs = waiting(&s, &token, &other, since.max(other_since));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = s
            .post(&token, "/api/v1/sync/push", json!({"client_id": client, "ops": [
                {"op_id": "t1", "kind": "track", "set": "contacts", "fields": {"last_name": "Pushed"}}
            ]}))
            .await
            .expect(200);
        assert_eq!(r["results"][0]["status"], "ok", "{r}");
        let (_, body, _) = theirs.await.unwrap();
        assert_eq!(body["changed"], true, "another client of the user is woken");
        still_waiting(&mine, "its own push").await;
        mine.abort();
    }

    async fn r_t7_wait_refuses_client_mistakes_at_once(s: TestServer) {
        let (_, token) = s.add_user("careless@example.com").await;
        let (_, stranger) = s.add_user("stranger@example.com").await;
        let (client, since) = synced_client(&s, &token, "laptop", json!(["contacts"])).await;
        let path = |q: &str| format!("/api/v1/sync/wait?{q}");
        let unknown = uuid::Uuid::new_v4();
        let cases = [
            (path(&format!("client_id={unknown}&since=0")), 404),
            (path("client_id=nope&since=0"), 400),
            (path(&format!("client_id={client}")), 400),
            (path(&format!("client_id={client}&since=-1")), 400),
            (path(&format!("client_id={client}&since=99999999999999999999")), 400),
            (path(&format!("client_id={client}&since={}", since + 1000)), 422),
            (path(&format!("client_id={client}&since={since}&timeout=soon")), 400),
            (path(&format!("client_id={client}&since={since}&wait=1")), 400),
            (path(&format!("since={since}")), 400),
        ];
        for (p, status) in cases {
            let started = Instant::now();
            let code = s.get(&token, &p).await.error(status);
            assert!(started.elapsed() < Duration::from_secs(1), "{p} took {:?}", started.elapsed());
            println!("{p}: {status} {code}");
        }
        s.get(&stranger, &path(&format!("client_id={client}&since={since}"))).await.error(403);
        s.get("bad-token", &path(&format!("client_id={client}&since={since}"))).await.error(401);
        // A version far in the past answers at once: there may be changes.
        let started = Instant::now();
        let old = s.get(&token, &path(&format!("client_id={client}&since=0"))).await.expect(200);
        assert_eq!(old["changed"], true);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    async fn r_t7_shutdown_answers_waiters_at_once(s: TestServer) {
        let (_, token) = s.add_user("patient@example.com").await;
        let (client, since) = synced_client(&s, &token, "laptop", json!(["contacts"])).await;
        let waiters: Vec<_> = (0..5).map(|_| waiting(&s, &token, &client, since)).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let stopped = Instant::now();
        drop(s);
        for w in waiters {
            let (status, body, _) = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was answered within 5 s of the shutdown")
                .unwrap();
            assert_eq!((status, &body["changed"]), (200, &json!(false)), "{body}");
        }
        println!("waiters answered {:?} after the shutdown began", stopped.elapsed());
        assert!(stopped.elapsed() < Duration::from_secs(2), "{:?}", stopped.elapsed());
    }
}

/// Two servers (A, and B on A's database), each with its own pool and
/// its own listening connection, as two `serve` processes have.
async fn two_servers_on_one_postgresql() -> (common::TestServer, common::TestServer) {
    let a = common::start(common::Backend::Postgres).await;
    let store_b = crmsync_server::Store::connect(&a.db.url).await.unwrap();
    let b = common::serve_store(
        store_b,
        a.admin.clone(),
        a.db.again(),
        crmsync_server::DEFAULT_MAX_BODY,
    )
    .await;
    (a, b)
}

/// Two server processes on one PostgreSQL database: a change written
/// through one wakes the waiters of the other (LISTEN/NOTIFY).
#[tokio::test]
async fn r_t7_two_servers_on_one_postgresql_wake_each_others_waiters() {
    let (a, b) = two_servers_on_one_postgresql().await;
    let (_, token) = a.add_user("apart@example.com").await;
    let (client, since) = synced_client(&a, &token, "laptop", json!(["contacts"])).await;
    // The listener of A is up: the change of B is heard, not missed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..3 {
        let since = since + round;
        let w = waiting(&a, &token, &client, since);
        still_waiting(&w, "nothing").await;
        let written = Instant::now();
        b.post(
            &token,
            "/api/v1/contacts",
            json!({"last_name": format!("Far{round}")}),
        )
        .await
        .expect(201);
        let (status, body, _) = w.await.unwrap();
        let took = written.elapsed();
        println!("round {round}: server A's waiter answered {took:?} after server B's write");
        assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // A rule change through B (no version taken) wakes A's waiter too.
    let prep = a
        .post(&token, "/api/v1/sync/prepare", json!({"client_id": client}))
        .await
        .expect(200);
    let w = waiting(&a, &token, &client, prep["upto_version"].as_i64().unwrap());
    still_waiting(&w, "nothing").await;
    let user = a.me(&token).await;
    let changed = Instant::now();
    b.patch(
        &a.admin,
        &format!("/api/v1/users/{user}/settings"),
        json!({"schedule_enabled": false}),
    )
    .await
    .expect(200);
    let (_, body, _) = w.await.unwrap();
    assert_eq!(body["changed"], true, "{body}");
    assert!(
        changed.elapsed() < Duration::from_secs(2),
        "{:?}",
        changed.elapsed()
    );
}

/// The listening connection of a server dies (PostgreSQL restarted, a
/// network cut): the server reconnects, and a change it may have missed
/// meanwhile still wakes its waiter; later changes are heard again.
#[tokio::test]
async fn r_t7_a_dropped_listener_reconnects_and_wakes_waiters() {
    let (a, b) = two_servers_on_one_postgresql().await;
    let (_, token) = a.add_user("cut@example.com").await;
    let (client, since) = synced_client(&a, &token, "laptop", json!(["contacts"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w = waiting(&a, &token, &client, since);
    still_waiting(&w, "nothing").await;

    let db = a.db.url.rsplit('/').next().unwrap().to_string();
    let mut admin = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&common::pg_admin_url())
            .await
            .unwrap()
    };
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&db)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(cut, [true, true], "each server listens on one connection");
    let written = Instant::now();
    let c = b
        .post(
            &token,
            "/api/v1/contacts",
            json!({"last_name": "DuringCut"}),
        )
        .await
        .expect(201);
    let (status, body, _) = tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .expect("the waiter is woken after the listener reconnects")
        .unwrap();
    println!(
        "woken {:?} after a write made while the listener was cut",
        written.elapsed()
    );
    assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
    assert!(written.elapsed() < Duration::from_secs(5));

    let since = c["version"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = waiting(&a, &token, &client, since);
    still_waiting(&w, "nothing new").await;
    let written = Instant::now();
    b.post(&token, "/api/v1/contacts", json!({"last_name": "AfterCut"}))
        .await
        .expect(201);
    let (_, body, _) = w.await.unwrap();
    assert_eq!(body["changed"], true);
    assert!(
        written.elapsed() < Duration::from_secs(2),
        "{:?}",
        written.elapsed()
    );
}
