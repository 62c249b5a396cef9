//! R-T7: CRM changes reach a running agent within two seconds, through
//! the long poll `GET /sync/wait`, with the real `crmsync serve` as its own
//! process (on SQLite and on PostgreSQL) and the agent's run loop on a
//! local mailbox. The agent's schedule (R-T1) is 15 minutes: only the long
//! poll can explain an arrival, and every sync is checked to have started
//! at the agent's start or right after a CRM edit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use serde_json::{json, Value};
use support::Server;

/// The figure the rule promises, and what the tests tolerate on a busy
/// machine before they fail.
const TARGET: Duration = Duration::from_secs(2);
const TOLERATED: Duration = Duration::from_secs(5);

/// `crmsync agent`'s run loop on a local mailbox, in this process.
struct RunningAgent {
    agent: Arc<crmsync_agent::Agent>,
    root: PathBuf,
    /// When each sync finished, and whether it succeeded.
    syncs: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    /// Starts it against `server` and returns after its first sync.
    async fn start(server: &Server, dir: &Path, name: &str) -> RunningAgent {
        let root = dir.join(format!("{name}-mailbox"));
        let config = server.agent_config(dir, name, &root);
        let cfg = crmsync_agent::Config::load(&config).unwrap();
        let agent = Arc::new(crmsync_agent::Agent::open(cfg).await.unwrap());
        let syncs = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let agent = agent.clone();
            let syncs = syncs.clone();
            async move {
                crmsync_agent::run::run(
                    &agent,
                    async {
                        let _ = stopped.await;
                    },
                    move |r| {
                        if let Err(e) = r {
                            println!("agent: sync failed: {e:#}");
                        }
                        syncs.lock().unwrap().push((Instant::now(), r.is_ok()));
                    },
                )
                .await
            }
        });
        let running = RunningAgent {
            agent,
            root,
            syncs,
            stop: Some(stop),
            task,
        };
        running
            .until("the first sync", || {
                !running.syncs.lock().unwrap().is_empty()
            })
            .await;
        assert!(
            running.syncs.lock().unwrap()[0].1,
            "the first sync succeeds"
        );
        let every = running.agent.scheduled_interval();
        assert!(
            every >= Some(Duration::from_secs(15 * 60)),
            "the schedule must not explain an arrival within seconds: {every:?}"
        );
        running
    }

    /// Polls `done` every 10 ms for up to 30 s; how long it took.
    async fn until(&self, what: &str, done: impl Fn() -> bool) -> Duration {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: not there after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    /// Whether a contact file of the mailbox contains `text`.
    fn holds(&self, text: &str) -> bool {
        std::fs::read_dir(self.root.join("contacts"))
            .map(|entries| {
                entries.filter_map(Result::ok).any(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .contains(text)
                })
            })
            .unwrap_or(false)
    }

    /// Every sync started at the agent's start or within a few seconds of
    /// one of `edits` (when each CRM write was sent): nothing else, the
    /// schedule included, set one off.
    async fn check_syncs_follow(&self, edits: &[Instant]) {
        // The last sync reports once its acknowledgement is sent.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let syncs = self.syncs.lock().unwrap();
        println!("{} syncs for {} CRM edits", syncs.len(), edits.len());
        for (at, _) in syncs.iter().skip(1) {
            assert!(
                edits
                    .iter()
                    .any(|e| *at >= *e && at.duration_since(*e) < TOLERATED),
                "a sync that no CRM edit explains ({} syncs for {} edits)",
                syncs.len(),
                edits.len()
            );
        }
    }

    /// Stops the run loop; it must end promptly, long poll or not.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .expect("the agent stops within 2 s while it waits for CRM changes")
            .unwrap()
            .unwrap();
    }
}

/// Sends a REST call and measures until the mailbox shows its effect.
async fn timed(
    agent: &RunningAgent,
    what: &str,
    edits: &mut Vec<Instant>,
    call: impl std::future::Future<Output = Value>,
    arrived: impl Fn(&RunningAgent) -> bool,
) -> Value {
    let sent = Instant::now();
    edits.push(sent);
    let answer = call.await;
    agent.until(what, || arrived(agent)).await;
    let took = sent.elapsed();
    println!(
        "{what}: in the mailbox {} ms after the CRM call",
        took.as_millis()
    );
    if took > TARGET {
        println!("  (above the {TARGET:?} target; tolerated up to {TOLERATED:?})");
    }
    assert!(took < TOLERATED, "{what}: took {took:?}");
    answer
}

/// A CRM create, update and delete of a contact, each written through
/// `writer`, each timed until the agent's mailbox shows it.
async fn create_update_delete(writer: &Server, agent: &RunningAgent, tag: &str) -> Vec<Instant> {
    let mut edits = Vec::new();
    let last = format!("Quick{tag}");
    let c = timed(
        agent,
        "a CRM create",
        &mut edits,
        writer.call(
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(json!({"last_name": last})),
        ),
        |a| a.holds(&last),
    )
    .await;
    let id = c["id"].as_str().unwrap().to_string();
    let renamed = format!("Quicker{tag}");
    timed(
        agent,
        "a CRM update",
        &mut edits,
        writer.call(
            reqwest::Method::PATCH,
            &format!("/api/v1/contacts/{id}"),
            Some(json!({"last_name": renamed})),
        ),
        |a| a.holds(&renamed),
    )
    .await;
    // §9: the user owns the contact, so the mailbox keeps it, unlinked.
    let linked = format!("X-CRM-ID:{id}");
    timed(
        agent,
        "a CRM delete",
        &mut edits,
        writer.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/contacts/{id}"),
            None,
        ),
        |a| !a.holds(&linked),
    )
    .await;
    edits
}

async fn r_t7_crm_create_update_delete_reach_local_mailbox_within_2s(db: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let server = match db {
        None => Server::start(dir.path()).await,
        Some(db) => Server::serve(&db, Server::init(&db)).await,
    };
    let agent = RunningAgent::start(&server, dir.path(), "laptop").await;
    let edits = create_update_delete(&server, &agent, "").await;
    agent.check_syncs_follow(&edits).await;
    agent.stop().await;
}

#[tokio::test]
async fn r_t7_crm_create_update_delete_reach_local_mailbox_within_2s_sqlite() {
    r_t7_crm_create_update_delete_reach_local_mailbox_within_2s(None).await;
}

#[tokio::test]
async fn r_t7_crm_create_update_delete_reach_local_mailbox_within_2s_postgres() {
    let (_, db) = support::postgres_db().await;
    r_t7_crm_create_update_delete_reach_local_mailbox_within_2s(Some(db)).await;
}

/// Two `serve` processes on one PostgreSQL database: the agent waits on
/// one, the edits are written through the other.
#[tokio::test]
async fn r_t7_edits_through_another_serve_process_reach_the_agent_within_2s() {
    let dir = tempfile::tempdir().unwrap();
    let (_, db) = support::postgres_db().await;
    let token = Server::init(&db);
    let a = Server::serve(&db, token.clone()).await;
    let b = Server::serve(&db, token).await;
    let agent = RunningAgent::start(&a, dir.path(), "laptop").await;
    let edits = create_update_delete(&b, &agent, "B").await;
    agent.check_syncs_follow(&edits).await;
    agent.stop().await;
}

/// The server goes away while the agent waits (stopped as an operator
/// does: it answers its waiters at once and exits), a contact is written
/// while it is away (through another server process on the same
/// database), and the server comes back on its port: the agent reconnects
/// and catches up; a later edit arrives within 2 s again.
async fn r_t7_agent_reconnects_after_a_server_restart_and_catches_up(db: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let db = db.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("crm.db").display()));
    let token = Server::init(&db);
    let server = Server::serve(&db, token.clone()).await;
    let port = server.port();
    let agent = RunningAgent::start(&server, dir.path(), "laptop").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = server.terminate();
    println!(
        "the server stopped {} ms after SIGTERM, with the agent waiting",
        stopping.as_millis()
    );
    assert!(
        stopping < TARGET,
        "shutdown waited for the long poll: {stopping:?}"
    );

    let elsewhere = Server::serve(&db, token.clone()).await;
    elsewhere
        .call(
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(json!({"last_name": "WhileAway"})),
        )
        .await;
    let _ = elsewhere.terminate();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!agent.holds("WhileAway"));

    let back = Server::serve_on(&db, token, port).await;
    let restarted = Instant::now();
    let took = agent
        .until("the contact written while away", || {
            agent.holds("WhileAway")
        })
        .await;
    println!(
        "caught up {} ms after the server came back",
        took.as_millis()
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "{:?}",
        restarted.elapsed()
    );
    let mut edits = Vec::new();
    timed(
        &agent,
        "a CRM create after the restart",
        &mut edits,
        back.call(
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(json!({"last_name": "AfterRestart"})),
        ),
        |a| a.holds("AfterRestart"),
    )
    .await;
    assert!(agent.holds("WhileAway"), "nothing is lost");
    agent.stop().await;
}

#[tokio::test]
async fn r_t7_agent_reconnects_after_a_server_restart_and_catches_up_sqlite() {
    r_t7_agent_reconnects_after_a_server_restart_and_catches_up(None).await;
}

#[tokio::test]
async fn r_t7_agent_reconnects_after_a_server_restart_and_catches_up_postgres() {
    let (_, db) = support::postgres_db().await;
    r_t7_agent_reconnects_after_a_server_restart_and_catches_up(Some(db)).await;
}

/// A registered client of the admin that has synchronized: id, version.
async fn synced_client(server: &Server, name: &str) -> (String, i64) {
    let c = server
        .call(
            reqwest::Method::POST,
            "/api/v1/sync/clients",
            Some(json!({"name": name, "kinds": ["contacts"]})),
        )
        .await;
    let id = c["id"].as_str().unwrap().to_string();
    let prep = server
        .call(
            reqwest::Method::POST,
            "/api/v1/sync/prepare",
            Some(json!({"client_id": id})),
        )
        .await;
    assert!(prep["batch"].is_null(), "an empty organization: {prep}");
    (id, prep["upto_version"].as_i64().unwrap())
}

/// 200 clients waiting on one server: while nothing changes the server
/// uses (next to) no CPU, and on PostgreSQL it holds no database session
/// per waiter (its pool and its one listening connection at most). Then
/// one contact wakes all of them.
async fn r_t7_200_waiting_clients_cost_no_cpu_and_no_database_session(
    pg: Option<(String, String)>,
) {
    const WAITERS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let server = match &pg {
        None => Server::start(dir.path()).await,
        Some((_, db)) => Server::serve(db, Server::init(db)).await,
    };
    let mut clients = Vec::new();
    for i in 0..WAITERS {
        clients.push(synced_client(&server, &format!("waiter-{i}")).await);
    }
    let http = reqwest::Client::new();
    let waits: Vec<_> = clients
        .iter()
        .map(|(id, since)| {
            let req = http
                .get(format!(
                    "{}/api/v1/sync/wait?client_id={id}&since={since}",
                    server.base
                ))
                .bearer_auth(&server.token);
            tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                let answered = Instant::now();
                (resp.json::<Value>().await.unwrap(), answered)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(waits.iter().all(|w| !w.is_finished()), "they wait");

    let idle = Duration::from_secs(3);
    let before = support::cpu_time(server.pid());
    tokio::time::sleep(idle).await;
    let used = support::cpu_time(server.pid()) - before;
    println!(
        "{WAITERS} waiters: the server used {} ms of CPU in {} s idle ({:.1} µs per waiter per second)",
        used.as_millis(),
        idle.as_secs(),
        used.as_secs_f64() * 1e6 / WAITERS as f64 / idle.as_secs_f64()
    );
    assert!(
        used <= Duration::from_millis(100),
        "waiting must cost no CPU: {used:?} in {idle:?}"
    );
    if let Some((name, _)) = &pg {
        let sessions: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(name)
                .fetch_one(&mut support::postgres_admin().await)
                .await
                .unwrap();
        println!("{WAITERS} waiters: {sessions} database sessions");
        // The pool (16 at most) and the listener.
        assert!(sessions <= 17, "{sessions} sessions for {WAITERS} waiters");
    }
    assert!(waits.iter().all(|w| !w.is_finished()), "still waiting");

    let written = Instant::now();
    server
        .call(
            reqwest::Method::POST,
            "/api/v1/contacts",
            Some(json!({"last_name": "Everyone"})),
        )
        .await;
    let mut slowest = Duration::ZERO;
    for w in waits {
        let (answer, at) = tokio::time::timeout(TOLERATED, w)
            .await
            .expect("every waiter is answered")
            .unwrap();
        assert_eq!(answer["changed"], true, "{answer}");
        slowest = slowest.max(at.duration_since(written));
    }
    println!(
        "one contact answered all {WAITERS} waiters within {} ms",
        slowest.as_millis()
    );
    assert!(slowest < TOLERATED);

    // Woken together, they all prepare together: none may fail (a prepare
    // once took a second pooled connection while holding its transaction,
    // which deadlocked under such a crowd until SQLite's busy timeout).
    let started = Instant::now();
    let prepares = clients.iter().map(|(id, _)| {
        server.call(
            reqwest::Method::POST,
            "/api/v1/sync/prepare",
            Some(json!({"client_id": id})),
        )
    });
    futures_util::future::join_all(prepares).await;
    println!(
        "{WAITERS} prepares at once took {} ms",
        started.elapsed().as_millis()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn r_t7_200_waiting_clients_cost_no_cpu_and_no_database_session_sqlite() {
    r_t7_200_waiting_clients_cost_no_cpu_and_no_database_session(None).await;
}

#[tokio::test]
async fn r_t7_200_waiting_clients_cost_no_cpu_and_no_database_session_postgres() {
    let pg = support::postgres_db().await;
    r_t7_200_waiting_clients_cost_no_cpu_and_no_database_session(Some(pg)).await;
}
