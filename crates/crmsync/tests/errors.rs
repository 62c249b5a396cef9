//! What the `crmsync` binary says when something is wrong (SPEC §12):
//! every error names its path and its fix once, and a sync whose only
//! problems are items that cannot be read completes (exit 0) with warnings.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Server, BIN};

fn sync(config: &Path, json: bool) -> Output {
    let mut args = vec!["sync", "--config", config.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// No clause of the message (between `: ` and `; `) appears twice.
fn assert_says_each_thing_once(case: &str, text: &str) {
    let mut seen = std::collections::HashSet::new();
    for clause in text.split([':', ';', '(', ')', '\n']).map(str::trim) {
        if clause.len() >= 12 {
            assert!(
                seen.insert(clause),
                "{case}: {clause:?} is said twice in {text:?}"
            );
        }
    }
}

const CACHE: &str = "cache = \"CACHE\"\n";

#[test]
fn s12_config_errors_say_their_path_and_fix_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.db");
    let mailbox = dir.path().join("mailbox");
    std::fs::create_dir_all(&mailbox).unwrap();
    let crm = format!(
        "[crm]\nurl = \"http://127.0.0.1:1\"\ntoken = \"t\"\n[client]\nname = \"x\"\n{}",
        CACHE.replace("CACHE", &cache.display().to_string())
    );
    let local = format!("[mailbox.local]\nroot = \"{}\"\n", mailbox.display());
    // (case, configuration, what the message must say exactly once)
    let cases = [
        (
            "missing local root",
            format!("{crm}[mailbox.local]\nroot = \"/nonexistent/crmsync-root\"\n"),
            vec!["/nonexistent/crmsync-root", "create it or fix"],
        ),
        (
            "missing token file",
            format!(
                "[crm]\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\n[client]\nname = \"x\"\n{local}"
            ),
            vec!["/nonexistent/token", "point it at the file"],
        ),
        (
            "bad URL",
            format!("{crm}[mailbox.dav]\ncontacts = \"not a url\"\nusername = \"a\"\npassword = \"b\"\n"),
            vec!["contacts = \"not a url\"", "write the collection's URL"],
        ),
        (
            "unknown TOML key",
            format!("{crm}[mailbox.local]\nrot = \"/tmp\"\n"),
            vec!["unknown field `rot`", "expected `root`"],
        ),
        (
            "DAV server unreachable",
            format!("{crm}[mailbox.dav]\ncontacts = \"http://127.0.0.1:1/c/\"\nusername = \"a\"\npassword = \"b\"\n"),
            vec!["http://127.0.0.1:1/c/", "Connection refused", "check that the server is running"],
        ),
        (
            "IMAP server unreachable",
            format!("{crm}[mailbox.imap]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"none\"\nusername = \"a\"\npassword = \"b\"\n"),
            vec!["127.0.0.1:1", "Connection refused"],
        ),
        (
            "CRM server unreachable",
            format!("{crm}{local}"),
            vec!["http://127.0.0.1:1", "Connection refused", "check [crm] url"],
        ),
    ];
    let no_file = sync(Path::new("/nonexistent/agent.toml"), false);
    let err = stderr(&no_file);
    assert_eq!(no_file.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("/nonexistent/agent.toml").count(), 1, "{err}");
    assert_says_each_thing_once("missing configuration file", &err);
    for (case, text, phrases) in cases {
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        let out = sync(&config, false);
        let err = stderr(&out);
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{case}: {:?} {err}",
            out.status
        );
        for phrase in phrases {
            assert_eq!(
                err.matches(phrase).count(),
                1,
                "{case}: {phrase:?} once in {err:?}"
            );
        }
        assert_says_each_thing_once(case, &err);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_a_sync_with_only_unreadable_items_completes_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let root = dir.path().join("mailbox");
    let config = server.agent_config(dir.path(), "me", &root);
    let out = sync(&config, false);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(
        root.join("contacts/broken.vcf"),
        "BEGIN:VCARD\r\nVERSION:4.0\r\nN:;;;\r\nEND:VCAR",
    )
    .unwrap();
    let out = sync(&config, false);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "a success with warnings: {err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("synchronized"),
        "{out:?}"
    );
    assert!(
        err.contains("skipped") && err.matches("contacts/broken.vcf").count() == 1,
        "{err}"
    );
    assert!(!err.contains("did not complete"), "{err}");
    std::fs::write(root.join("contacts/broken2.vcf"), "BEGIN:VCARD\r\nEND:VCAR").unwrap();
    let out = sync(&config, true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert!(
        report["skipped"][0]
            .as_str()
            .is_some_and(|s| s.starts_with("contacts/broken2.vcf")),
        "{report}"
    );
}

/// R-W6: what the agent cannot read reaches the user's Sync page (through
/// the client's problems in the API), with the fix, and leaves it once the
/// item is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_w6_unreadable_items_reach_the_server_with_their_fix() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let root = dir.path().join("mailbox");
    let config = server.agent_config(dir.path(), "me", &root);
    let problems = || async {
        let clients = server
            .call(reqwest::Method::GET, "/api/v1/sync/clients", None)
            .await;
        let clients = clients
            .as_array()
            .or(clients["items"].as_array())
            .cloned()
            .unwrap();
        assert_eq!(clients.len(), 1, "{clients:?}");
        clients[0]["problems"].as_array().cloned().unwrap()
    };
    let out = sync(&config, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(problems().await, Vec::<serde_json::Value>::new());
    let broken = root.join("contacts/broken.vcf");
    std::fs::write(&broken, "BEGIN:VCARD\r\nVERSION:4.0\r\nN:;;;\r\nEND:VCAR").unwrap();
    assert_eq!(sync(&config, false).status.code(), Some(0));
    let shown = problems().await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["item"], "contacts/broken.vcf");
    assert!(
        shown[0]["problem"]
            .as_str()
            .unwrap()
            .contains("fix or remove the item"),
        "{shown:?}"
    );
    std::fs::remove_file(&broken).unwrap();
    assert_eq!(sync(&config, false).status.code(), Some(0));
    assert_eq!(
        problems().await,
        Vec::<serde_json::Value>::new(),
        "gone once the item is"
    );
}
