//! SPEC §13 through the binary: an agent configured with `[mailbox.imap]`
//! alone, on a real Dovecot, while the CRM holds a contact, an appointment
//! and a task of the user: `crmsync sync` exits 0 and tracks email;
//! `crmsync status` (text and `--json`) names the kinds not synchronized.

#[path = "../../imap/tests/support/mod.rs"]
mod dovecot;
mod support;

use std::path::Path;
use std::process::{Command, Output};

use dovecot::{Dovecot, Flavor};
use serde_json::json;
use support::{Server, BIN};

fn run(args: &[&str], config: &Path) -> Output {
    let mut all = args.to_vec();
    all.extend(["--config", config.to_str().unwrap()]);
    Command::new(BIN).args(all).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_mail_only_agent_syncs_with_exit_0_and_status_names_the_missing_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let post = |set: &'static str, body| server.call(reqwest::Method::POST, set, Some(body));
    post("/api/v1/contacts", json!({"last_name": "Person"})).await;
    post(
        "/api/v1/appointments",
        json!({"subject": "Meet", "start": "2030-06-01T10:00:00Z", "end": "2030-06-01T11:00:00Z"}),
    )
    .await;
    post("/api/v1/tasks", json!({"subject": "Call back"})).await;
    let imap = Dovecot::start(Flavor::Plain).await;
    let pw_file = dir.path().join("imap-password");
    std::fs::write(&pw_file, dovecot::PASSWORD).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{}\"\n[client]\nname = \"mail-only\"\ncache = \"{}\"\n[mailbox.imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nusername = \"{}\"\npassword_file = \"{}\"\n",
            server.base,
            server.token,
            dir.path().join("cache.db").display(),
            imap.port,
            dovecot::USER,
            pw_file.display()
        ),
    )
    .unwrap();
    let mut other = imap.client().await;
    other
        .append_flags(
            "INBOX",
            "\\Seen $CRMTracked",
            b"Message-ID: <only@example.org>\r\nFrom: lee@example.org\r\nTo: me@example.com\r\nSubject: Mail only\r\n\r\nHello\r\n",
        )
        .await;
    let sync = run(&["sync"], &config);
    assert_eq!(sync.status.code(), Some(0), "{}", text(&sync));
    assert!(text(&sync).contains("track 1"), "{}", text(&sync));
    let emails = server
        .call(reqwest::Method::GET, "/api/v1/emails", None)
        .await;
    assert_eq!(emails["items"][0]["message_id"], "only@example.org");
    let status = run(&["status"], &config);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(
        text(&status).contains("not synchronized")
            && text(&status).contains("contacts, calendar, tasks"),
        "{}",
        text(&status)
    );
    let status = run(&["status", "--json"], &config);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        report["kinds_not_synchronized"],
        json!(["contacts", "calendar", "tasks"])
    );
}
