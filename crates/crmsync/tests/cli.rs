//! The `crmsync` command line (SPEC §12): tokens on one stdout line, exit
//! statuses 0/1/2, export and import through files, and `serve`.

use std::process::{Command, Output};

fn crmsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args(args)
        .env_remove("CRMSYNC_DB")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn admin_commands_print_one_token_line_and_refuse_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("data/crm.db").display());
    let init = crmsync(&["admin", "init", "--db", &db, "--email", "boss@example.com"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let out = stdout(&init);
    assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    assert!(out.trim().starts_with("crm_") && out.trim().len() >= 36);

    let again = crmsync(&["admin", "init", "--db", &db, "--email", "boss@example.com"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already holds"),
        "{}",
        stderr(&again)
    );

    let add = crmsync(&[
        "admin",
        "user",
        "add",
        "--db",
        &db,
        "--email",
        "ann@example.com",
        "--name",
        "Ann",
    ]);
    assert!(add.status.success(), "{}", stderr(&add));
    assert_eq!(stdout(&add).lines().count(), 1);
    assert_ne!(stdout(&add), out, "every user has their own token");
    let dup = crmsync(&[
        "admin",
        "user",
        "add",
        "--db",
        &db,
        "--email",
        "ANN@example.com",
        "--name",
        "Ann",
    ]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        stderr(&dup).contains("already has this email"),
        "{}",
        stderr(&dup)
    );
    let bad = crmsync(&[
        "admin",
        "user",
        "add",
        "--db",
        &db,
        "--email",
        "not-an-address",
        "--name",
        "X",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("email"), "{}", stderr(&bad));

    // Export, then import into a second database: the same lines come out.
    let file = dir.path().join("org.jsonl");
    let file = file.to_str().unwrap();
    assert!(crmsync(&["admin", "export", "--db", &db, file])
        .status
        .success());
    let db2 = format!("sqlite://{}", dir.path().join("copy.db").display());
    let imported = crmsync(&["admin", "import", "--db", &db2, file]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let file2 = dir.path().join("copy.jsonl");
    assert!(
        crmsync(&["admin", "export", "--db", &db2, file2.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(file).unwrap(),
        std::fs::read_to_string(&file2).unwrap()
    );
}

#[test]
fn bad_usage_exits_2_and_bad_config_exits_1_with_the_fix() {
    assert_eq!(
        crmsync(&["admin", "init"]).status.code(),
        Some(2),
        "missing --email"
    );
    assert_eq!(crmsync(&["frobnicate"]).status.code(), Some(2));
    let wrong_db = crmsync(&["admin", "init", "--db", "mysql://x", "--email", "a@b.c"]);
    assert_eq!(wrong_db.status.code(), Some(1));
    assert!(
        stderr(&wrong_db).contains("postgres://"),
        "{}",
        stderr(&wrong_db)
    );
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("crm.db").display());
    let user_first = crmsync(&[
        "admin", "user", "add", "--db", &db, "--email", "a@b.c", "--name", "A",
    ]);
    assert_eq!(user_first.status.code(), Some(1));
    assert!(
        stderr(&user_first).contains("admin init"),
        "{}",
        stderr(&user_first)
    );
    let missing = crmsync(&["admin", "import", "--db", &db, "/nonexistent/file.jsonl"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn serve_answers_healthz_and_refuses_a_busy_address() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("crm.db").display());
    assert!(
        crmsync(&["admin", "init", "--db", &db, "--email", "a@example.com"])
            .status
            .success()
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let refused = crmsync(&["serve", "--db", &db, "--listen", &addr]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("cannot listen"),
        "{}",
        stderr(&refused)
    );
    drop(busy);
    let mut child = Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args(["serve", "--db", &db, "--listen", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            ok = reply.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ok, "the server answered /healthz");
}

/// A raw HTTP/1.1 request on loopback (the CLI crate has no HTTP client).
fn http(addr: &str, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// `crmsync up` running in `root`, after its start-up sync.
struct Up {
    child: std::process::Child,
    addr: String,
    token: String,
    /// A message per finished sync.
    synced: std::sync::mpsc::Receiver<()>,
}

impl Up {
    fn start(root: &std::path::Path) -> Up {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_crmsync"))
            .args(["up", "--dir", root.to_str().unwrap(), "--listen", &addr])
            .env("CRMSYNC_LOG", "crmsync=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Each finished sync logs "synchronized": the tests wait for the
        // start-up sync, so what follows arrives through a notification.
        let (synced_tx, synced) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("synchronized") {
                    let _ = synced_tx.send(());
                }
            }
        });
        let token_file = root.join("token");
        wait_for("the token file and the server", || {
            token_file.exists() && std::net::TcpStream::connect(&addr).is_ok()
        });
        let token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string();
        assert!(root.join("agent.toml").exists() && root.join("mailbox/contacts").is_dir());
        synced
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the start-up sync finishes");
        Up {
            child,
            addr,
            token,
            synced,
        }
    }

    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Whether a file of `folder` contains `text`.
fn folder_holds(folder: &std::path::Path, text: &str) -> bool {
    std::fs::read_dir(folder).unwrap().any(|e| {
        std::fs::read_to_string(e.unwrap().path())
            .unwrap_or_default()
            .contains(text)
    })
}

#[test]
fn r_t7_up_shows_a_crm_contact_in_the_mailbox_within_2s() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("up");
    let up = Up::start(&root);
    let contacts = root.join("mailbox/contacts");
    let sent = std::time::Instant::now();
    let (status, _) = http(
        &up.addr,
        "POST",
        "/api/v1/contacts",
        &up.token,
        Some(r#"{"last_name": "SeenAtOnce"}"#),
    );
    assert_eq!(status, 201);
    while !folder_holds(&contacts, "SeenAtOnce") {
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(30),
            "never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let took = sent.elapsed();
    println!(
        "R-T7: CRM contact in the mailbox folder {} ms after it was created",
        took.as_millis()
    );
    // 2 s promised; up to 5 s tolerated on a busy machine. `up` syncs on
    // schedule every 5 minutes: only the CRM's notice explains this.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    up.synced
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the contact came with a sync after the start-up one");
    up.stop();
}

#[test]
fn r_t2_up_runs_the_server_and_the_agent_and_syncs_on_mailbox_changes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("up");
    let up = Up::start(&root);
    let (addr, token) = (up.addr.clone(), up.token.clone());
    let (status, _) = http(
        &addr,
        "POST",
        "/api/v1/contacts",
        &token,
        Some(r#"{"last_name": "FromCrm"}"#),
    );
    assert_eq!(status, 201);
    // A contact marked in the address book reaches the CRM at once (R-T2),
    // as the CRM's contact reaches the address book (R-T7).
    let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:up-1\r\nFN:From Mailbox\r\nN:FromMailbox;;;;\r\nCATEGORIES:Tracked to CRM\r\nEND:VCARD\r\n";
    std::fs::write(root.join("mailbox/contacts/mine.vcf"), card).unwrap();
    let written = std::time::Instant::now();
    wait_for("the marked contact in the CRM", || {
        http(&addr, "GET", "/api/v1/contacts?q=frommailbox", &token, None)
            .1
            .contains("FromMailbox")
    });
    let took = written.elapsed();
    println!(
        "R-T2: marked contact in the CRM {} ms after the file was written",
        took.as_millis()
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "R-T2: at once, not at the next scheduled sync (took {took:?})"
    );
    wait_for("the CRM contact in the address book", || {
        folder_holds(&root.join("mailbox/contacts"), "FromCrm")
    });
    up.stop();
    // A second run finds its organization again (no second admin, same token).
    let mut again = Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args(["up", "--dir", root.to_str().unwrap(), "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the server again", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    assert_eq!(http(&addr, "GET", "/api/v1/contacts", &token, None).0, 200);
    again.kill().unwrap();
    again.wait().unwrap();
}

/// Runs `crmsync` with `input` on standard input.
fn crmsync_with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args(args)
        .env_remove("CRMSYNC_DB")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn r_w2_admin_user_passwd_sets_the_web_password_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("crm.db").display());
    let init = crmsync(&["admin", "init", "--db", &db, "--email", "boss@example.com"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let passwd = |email: &str, input: &str| {
        crmsync_with_stdin(
            &["admin", "user", "passwd", "--db", &db, "--email", email],
            input,
        )
    };
    let set = passwd("Boss@example.com", "a long enough secret\n");
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(stdout(&set).is_empty(), "nothing secret on stdout");
    let unknown = passwd("nobody@example.com", "a long enough secret\n");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("crmsync admin user add"),
        "{}",
        stderr(&unknown)
    );
    let short = passwd("boss@example.com", "short\n");
    assert_eq!(short.status.code(), Some(1));
    assert!(stderr(&short).contains("at least 8"), "{}", stderr(&short));
    let empty = passwd("boss@example.com", "");
    assert_eq!(empty.status.code(), Some(1));
    assert!(stderr(&empty).contains("no password"), "{}", stderr(&empty));
    // The web sign-in takes the password that was set (and only it).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = crmsync_server::Store::connect(&db).await.unwrap();
        let hash: String = sqlx::query_scalar("SELECT hash FROM user_passwords")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let ok =
            crmsync_server::passwords::sign_in(&store, "boss@example.com", "a long enough secret")
                .await
                .unwrap();
        assert!(ok.is_ok(), "{ok:?}");
        let wrong = crmsync_server::passwords::sign_in(&store, "boss@example.com", "short")
            .await
            .unwrap();
        assert!(wrong.is_err());
    });
}

#[test]
fn r_w2_up_prints_a_sign_in_link_that_works_once() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("up");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args(["up", "--dir", root.to_str().unwrap(), "--listen", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let line = out
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("sign in:"))
        .expect("up prints a sign-in link");
    let url = line.split_whitespace().nth(2).unwrap().to_string();
    let path = url
        .strip_prefix(&format!("http://{addr}"))
        .unwrap_or_else(|| panic!("a link to the server: {line}"));
    assert!(path.starts_with("/signin/link/"), "{line}");
    wait_for("the server", || std::net::TcpStream::connect(&addr).is_ok());
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    let first = get(path);
    assert!(first.starts_with("HTTP/1.1 303"), "{first}");
    assert!(
        first.contains("crmsync_session="),
        "the link signs in: {first}"
    );
    let again = get(path);
    assert!(
        again.starts_with("HTTP/1.1 410"),
        "the link works once: {again}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `crmsync serve` on a free loopback port, answering; killed on drop.
struct Serve {
    child: std::process::Child,
    addr: String,
}

impl Serve {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Serve {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_crmsync"))
            .arg("serve")
            .args(args)
            .args(["--listen", &addr])
            .env_remove("CRMSYNC_DB")
            .env_remove("CRMSYNC_SECRET_KEY_FILE")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the server", || std::net::TcpStream::connect(&addr).is_ok());
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn r_v2_init_makes_a_key_serve_finds_it_and_rotate_key_moves_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("data/crm.db").display());
    let init = crmsync(&["admin", "init", "--db", &db, "--email", "a@example.com"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let token = stdout(&init).trim().to_string();
    let key_file = dir.path().join("data/secret.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is readable by its owner only");
    }
    let body =
        r#"{"name": "work", "imap": {"host": "127.0.0.1", "username": "a", "password": "first"}}"#;
    let id = {
        let s = Serve::start(&["--db", &db], &[]);
        let (status, created) = http(&s.addr, "POST", "/api/v1/mailboxes", &token, Some(body));
        assert_eq!(
            status, 201,
            "serve found the key beside the database: {created}"
        );
        let created: serde_json::Value = serde_json::from_str(&created).unwrap();
        created["id"].as_str().unwrap().to_string()
    };

    let new_key = dir.path().join("new.key");
    let new_key = new_key.to_str().unwrap();
    let made = crmsync(&["admin", "gen-key", new_key]);
    assert!(made.status.success(), "{}", stderr(&made));
    let again = crmsync(&["admin", "gen-key", new_key]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let rotated = crmsync(&[
        "admin",
        "rotate-key",
        "--db",
        &db,
        "--new-key-file",
        new_key,
    ]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert!(
        stderr(&rotated).contains("re-encrypted 1 secret"),
        "{}",
        stderr(&rotated)
    );

    let change = r#"{"imap": {"port": 1143}}"#;
    let path = format!("/api/v1/mailboxes/{id}");
    {
        let s = Serve::start(&["--db", &db], &[]);
        let (status, answer) = http(&s.addr, "PATCH", &path, &token, Some(change));
        assert_eq!(status, 409, "the old key opens nothing now: {answer}");
        assert!(answer.contains("secret_unreadable"), "{answer}");
    }
    {
        let s = Serve::start(&["--db", &db, "--secret-key-file", new_key], &[]);
        let (status, answer) = http(&s.addr, "PATCH", &path, &token, Some(change));
        assert_eq!(status, 200, "{answer}");
    }
    {
        let s = Serve::start(&["--db", &db], &[("CRMSYNC_SECRET_KEY_FILE", new_key)]);
        let (status, answer) = http(&s.addr, "PATCH", &path, &token, Some(change));
        assert_eq!(status, 200, "{answer}");
    }
    // Without any key, the server stores no secret and says how to get one.
    std::fs::remove_file(&key_file).unwrap();
    let s = Serve::start(&["--db", &db], &[]);
    let (status, answer) = http(
        &s.addr,
        "POST",
        "/api/v1/mailboxes",
        &token,
        Some(&body.replace("work", "home")),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("gen-key"), "{answer}");
    let (status, _) = http(&s.addr, "GET", "/api/v1/mailboxes", &token, None);
    assert_eq!(status, 200);
}
