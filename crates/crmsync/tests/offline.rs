//! R-O1 end to end: the real `crmsync` binary as server (SQLite and
//! PostgreSQL), agent and offline server. A laptop user's replica follows
//! the offline filters; with the CRM server stopped they read, search,
//! edit, create and delete in the offline copy; going online plays the
//! journal back with R-F5's merge and R-F6's log, each offline record
//! created once, even when the playback is killed and repeated.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, Killed, Server, BIN};

/// A REST call with `token` to `base`: (status, JSON answer).
async fn call(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A user with a token; `go_offline` as given.
async fn user(server: &Server, email: &str, go_offline: bool) -> (String, String) {
    let u = server
        .call(
            reqwest::Method::POST,
            "/api/v1/users",
            Some(json!({"email": email, "name": email, "go_offline": go_offline})),
        )
        .await;
    (
        u["id"].as_str().unwrap().to_string(),
        u["token"].as_str().unwrap().to_string(),
    )
}

/// An agent configuration with the offline copy served at `listen`.
fn config(dir: &Path, base: &str, token: &str, listen: u16) -> PathBuf {
    let root = dir.join("mailbox");
    std::fs::create_dir_all(&root).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[crm]\nurl = \"{base}\"\ntoken = \"{token}\"\n[client]\nname = \"laptop\"\ncache = \"{}\"\n[mailbox.local]\nroot = \"{}\"\n[offline]\nenabled = true\nlisten = \"127.0.0.1:{listen}\"\n",
            dir.join("cache.db").display(),
            root.display()
        ),
    )
    .unwrap();
    path
}

fn sync(config: &Path, fault_after: Option<u64>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["sync", "--config"]).arg(config);
    if let Some(k) = fault_after {
        cmd.env("CRMSYNC_TEST_FAULT_AFTER_STEP", k.to_string());
    }
    cmd.output().unwrap()
}

fn synced(config: &Path) -> String {
    let out = sync(config, None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sync failed: {stderr}");
    stderr
}

/// `crmsync offline` serving the replica; returns once it answers.
async fn offline_server(config: &Path, port: u16) -> Killed {
    let process = Killed(
        Command::new(BIN)
            .args(["offline", "--config"])
            .arg(config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the offline server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
}

/// A server on SQLite in `dir` and Ann, who may go offline: (the database,
/// the admin's token, the server, Ann's token).
async fn ann_on_a_sqlite_server(dir: &Path) -> (String, String, Server, String) {
    let db = format!("sqlite://{}", dir.join("crm.db").display());
    let admin = Server::init(&db);
    let server = Server::serve(&db, admin.clone()).await;
    let (_, ann) = user(&server, "ann@example.com", true).await;
    (db, admin, server, ann)
}

async fn get_contact(base: &str, token: &str, id: &str) -> (u16, Value) {
    let path = format!("/api/v1/contacts/{id}");
    call(base, token, reqwest::Method::GET, &path, None).await
}

async fn patch_contact(base: &str, token: &str, id: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/v1/contacts/{id}");
    call(base, token, reqwest::Method::PATCH, &path, Some(body)).await
}

async fn names(base: &str, token: &str, query: &str) -> Vec<String> {
    let (status, list) = call(
        base,
        token,
        reqwest::Method::GET,
        &format!("/api/v1/contacts?{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let mut out: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["last_name"].as_str().unwrap_or("").to_string())
        .collect();
    out.sort();
    out
}

async fn contact(server: &Server, token: &str, last_name: &str) -> String {
    let (status, c) = call(
        &server.base,
        token,
        reqwest::Method::POST,
        "/api/v1/contacts",
        Some(json!({"first_name": "Kim", "last_name": last_name})),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    c["id"].as_str().unwrap().to_string()
}

async fn r_o1_work_offline_then_go_online(db: String) {
    let dir = tempfile::tempdir().unwrap();
    let admin = Server::init(&db);
    let server = Server::serve(&db, admin.clone()).await;
    let port = server.port();
    let (_, ann) = user(&server, "ann@example.com", true).await;
    let (bob_id, bob) = user(&server, "bob@example.com", false).await;
    let keep = contact(&server, &ann, "Keep").await;
    let moving = contact(&server, &ann, "Moving").await;
    let gone = contact(&server, &ann, "Gone").await;
    let changed = contact(&server, &ann, "Changed").await;
    contact(&server, &bob, "Bobs").await;
    let listen = free_port();
    let config = config(dir.path(), &server.base, &ann, listen);
    let local = format!("http://127.0.0.1:{listen}");

    // The replica holds what matches Ann's offline filters: not Bob's.
    synced(&config);
    {
        let _offline = offline_server(&config, listen).await;
        assert_eq!(
            names(&local, &ann, "").await,
            ["Changed", "Gone", "Keep", "Moving"]
        );
    }
    // A reassigned record leaves it at the next sync.
    server
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/contacts/{moving}"),
            Some(json!({"owner_id": bob_id})),
        )
        .await;
    synced(&config);
    let status = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (
            status["offline"]["records"].clone(),
            status["offline"]["changes_waiting"].clone()
        ),
        (json!(3), json!(0)),
        "{status}"
    );

    // The CRM server is stopped: Ann works in the offline copy.
    server.terminate();
    let offline = offline_server(&config, listen).await;
    assert_eq!(
        names(&local, &ann, "q=kee").await,
        ["Keep"],
        "search works offline"
    );
    let (status, edited) = patch_contact(
        &local,
        &ann,
        &keep,
        json!({"first_name": "Offline", "job_title": "CFO"}),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    let (status, created) = call(
        &local,
        &ann,
        reqwest::Method::POST,
        "/api/v1/contacts",
        Some(json!({"last_name": "Met offline"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let created = created["id"].as_str().unwrap().to_string();
    for id in [&gone, &changed] {
        let (status, _) = call(
            &local,
            &ann,
            reqwest::Method::DELETE,
            &format!("/api/v1/contacts/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 204);
    }
    let (status, _) = call(&local, &bob, reqwest::Method::GET, "/api/v1/contacts", None).await;
    assert_eq!(status, 401, "only the replica's user signs in");
    drop(offline);
    let status = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["offline"]["changes_waiting"], 4, "{status}");

    // Meanwhile, on the server (restarted), later edits of the same records.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let server = Server::serve_on(&db, admin, port).await;
    server
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/contacts/{keep}"),
            Some(json!({"first_name": "Server", "mobile": "+1 555 0100"})),
        )
        .await;
    server
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/contacts/{changed}"),
            Some(json!({"job_title": "CEO"})),
        )
        .await;

    // Going online: merged per field, the conflict logged, created once,
    // deleted where the server did not change it, refused where it did.
    let said = synced(&config);
    let keep_now = server
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/contacts/{keep}"),
            None,
        )
        .await;
    assert_eq!(
        (keep_now["first_name"].clone(), keep_now["job_title"].clone(), keep_now["mobile"].clone()),
        (json!("Server"), json!("CFO"), json!("+1 555 0100")),
        "both changed first_name: the later (server) wins; each side's other field is kept: {keep_now}"
    );
    let (_, conflicts) = call(
        &server.base,
        &ann,
        reqwest::Method::GET,
        &format!("/api/v1/sync/conflicts?record={keep}"),
        None,
    )
    .await;
    let fields: Vec<&str> = conflicts["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["first_name"], "{conflicts}");
    let (status, _) = get_contact(&server.base, &ann, &created).await;
    assert_eq!(status, 200, "created offline, under its offline id");
    let (status, _) = get_contact(&server.base, &ann, &gone).await;
    assert_eq!(status, 404, "deleted offline");
    let (status, still) = get_contact(&server.base, &ann, &changed).await;
    assert_eq!(
        (status, still["job_title"].clone()),
        (200, json!("CEO")),
        "a delete of a record changed on the server meanwhile is not applied"
    );
    assert!(
        said.contains("refused") && said.contains("Changed"),
        "and is reported: {said}"
    );
    assert_eq!(
        names(&server.base, &ann, "owner=me").await,
        ["Changed", "Keep", "Met offline"]
    );

    // A second sync changes nothing.
    let version = |v: &Value| v["version"].as_i64().unwrap();
    let before = version(
        &server
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/contacts/{keep}"),
                None,
            )
            .await,
    );
    let again = synced(&config);
    assert!(!again.contains("offline changes sent"), "{again}");
    assert_eq!(
        version(
            &server
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/contacts/{keep}"),
                    None
                )
                .await
        ),
        before
    );
    assert_eq!(
        names(&server.base, &ann, "owner=me").await,
        ["Changed", "Keep", "Met offline"]
    );
    // The replica now holds the server's versions.
    let _offline = offline_server(&config, listen).await;
    let (_, replica_keep) = get_contact(&local, &ann, &keep).await;
    assert_eq!(replica_keep["first_name"], "Server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_o1_work_offline_then_go_online_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    r_o1_work_offline_then_go_online(format!("sqlite://{}", dir.path().join("crm.db").display()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_o1_work_offline_then_go_online_postgres() {
    let (_, db) = support::postgres_db().await;
    r_o1_work_offline_then_go_online(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_o1_playback_killed_midway_and_repeated_duplicates_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, admin, server, ann) = ann_on_a_sqlite_server(dir.path()).await;
    let port = server.port();
    let mut edited = Vec::new();
    for i in 0..5 {
        edited.push(contact(&server, &ann, &format!("Edited {i}")).await);
    }
    let listen = free_port();
    let config = config(dir.path(), &server.base, &ann, listen);
    synced(&config);
    server.terminate();
    {
        let local = format!("http://127.0.0.1:{listen}");
        let _offline = offline_server(&config, listen).await;
        for id in &edited {
            let (status, _) =
                patch_contact(&local, &ann, id, json!({"job_title": "offline"})).await;
            assert_eq!(status, 200);
        }
        for i in 0..5 {
            let (status, _) = call(
                &local,
                &ann,
                reqwest::Method::POST,
                "/api/v1/contacts",
                Some(json!({"last_name": format!("New {i}")})),
            )
            .await;
            assert_eq!(status, 201);
        }
    }
    let server = Server::serve_on(&db, admin, port).await;
    // Killed after its 1st, 2nd, ... durable step, each time going on
    // from where the last one stopped, until one run finishes.
    let mut kills = 0;
    for k in 1.. {
        let out = sync(&config, Some(k));
        if out.status.success() {
            break;
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("stopping after step"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        kills += 1;
        assert!(k < 200, "the playback never finished");
    }
    assert!(
        kills >= 10,
        "killed at each durable step of the sync and the playback: before the playback's request and after its answer, before the replica settled it ({kills} kills)"
    );
    synced(&config);
    let mine = names(&server.base, &ann, "owner=me&limit=100").await;
    let expected: Vec<String> = (0..5)
        .map(|i| format!("Edited {i}"))
        .chain((0..5).map(|i| format!("New {i}")))
        .collect();
    assert_eq!(mine, expected, "each offline record created once");
    for id in &edited {
        let c = server
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/contacts/{id}"),
                None,
            )
            .await;
        assert_eq!(c["job_title"], "offline", "every offline edit arrived");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_o1_without_go_offline_refused_with_the_privilege_named_and_nothing_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (_, bob) = user(&server, "bob@example.com", false).await;
    contact(&server, &bob, "Bobs").await;
    let config = config(dir.path(), &server.base, &bob, free_port());
    let said = synced(&config);
    assert!(
        said.contains("Go offline") && said.contains("administrator"),
        "{said}"
    );
    assert!(
        !dir.path().join("cache.offline.db").exists(),
        "no offline copy kept"
    );
    let out = Command::new(BIN)
        .args(["offline", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no offline copy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `check` every 200 ms for up to 40 s.
async fn within_40s<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "not within 40 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_o1_the_running_agent_serves_the_offline_copy_while_the_server_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let (db, admin, server, ann) = ann_on_a_sqlite_server(dir.path()).await;
    let port = server.port();
    let keep = contact(&server, &ann, "Keep").await;
    let listen = free_port();
    let config = config(dir.path(), &server.base, &ann, listen);
    let local = format!("http://127.0.0.1:{listen}");
    let _agent = Killed(
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let replica = dir.path().join("cache.offline.db");
    within_40s(
        "the offline copy made at the agent's first sync",
        || async { replica.exists() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = || async { reqwest::get(format!("{local}/healthz")).await.is_ok() };
    assert!(!answers().await, "not served while the CRM server answers");

    server.terminate();
    within_40s("the offline copy served once the server is away", answers).await;
    let (status, edited) =
        patch_contact(&local, &ann, &keep, json!({"job_title": "Edited offline"})).await;
    assert_eq!(status, 200, "{edited}");

    let server = Server::serve_on(&db, admin, port).await;
    within_40s(
        "the offline edit played back once the server is back",
        || async {
            server
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/contacts/{keep}"),
                    None,
                )
                .await["job_title"]
                == "Edited offline"
        },
    )
    .await;
    within_40s("the offline copy no longer served", || async {
        !answers().await
    })
    .await;
}
