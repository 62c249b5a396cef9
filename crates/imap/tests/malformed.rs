//! Bad server data: a scripted IMAP server (not a stand-in for Dovecot,
//! which never sends such answers) sends unparseable FETCH answers, a NIL
//! body, garbage lines, an absurd literal and a BYE in the middle of a
//! FETCH. Each is reported per message or as a clear error; nothing panics.

use std::time::Duration;

use crmsync_imap::{ImapConfig, ImapMailbox, Security};
use crmsync_mailbox::{Error, Mailbox};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
enum Script {
    /// Unparseable and NIL answers among good ones.
    Garbled,
    /// A literal of 10 GB announced.
    HugeLiteral,
    /// `* BYE` in the middle of the FETCH answers.
    ByeMidFetch,
}

async fn server(script: Script) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(session(stream, script));
        }
    });
    port
}

async fn session(stream: tokio::net::TcpStream, script: Script) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let _ = w
        .write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR LITERAL+] scripted\r\n")
        .await;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.trim_end().splitn(2, ' ');
        let tag = words.next().unwrap_or("*").to_owned();
        let cmd = words.next().unwrap_or("").to_ascii_uppercase();
        let mut out: Vec<u8> = Vec::new();
        if cmd.starts_with("AUTHENTICATE") {
            out.extend_from_slice(
                format!("{tag} OK [CAPABILITY IMAP4rev1 UIDPLUS LITERAL+ IDLE] in\r\n").as_bytes(),
            );
        } else if cmd.starts_with("SELECT") {
            out.extend_from_slice(b"* 4 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [PERMANENTFLAGS (\\Seen \\*)] ok\r\n* \xe2\x98\x83 garbage ((((\r\n");
            out.extend_from_slice(format!("{tag} OK [READ-WRITE] selected\r\n").as_bytes());
        } else if cmd.starts_with("UID FETCH 1:*") {
            out.extend_from_slice(b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n");
            out.extend_from_slice(b"* 2 FETCH (UID 2 FLAGS (\\Seen)\r\n");
            out.extend_from_slice(b"* 3 FETCH (FLAGS (\\Seen ((\r\n");
            out.extend_from_slice(b"* 4 FETCH (UID 4 FLAGS (\\Seen $CRMTracked))\r\n");
            out.extend_from_slice(format!("{tag} OK listed\r\n").as_bytes());
        } else if cmd.starts_with("UID FETCH") {
            match script {
                Script::Garbled => {
                    out.extend_from_slice(
                        b"* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[] {5}\r\nHello)\r\n",
                    );
                    out.extend_from_slice(
                        b"* 2 FETCH (UID 2 FLAGS (\\Seen BODY[] {5}\r\nHello)\r\n",
                    );
                    out.extend_from_slice(b"* 3 FETCH (UID 3 FLAGS () BODY[] NIL)\r\n");
                    out.extend_from_slice(format!("{tag} OK fetched\r\n").as_bytes());
                }
                Script::HugeLiteral => {
                    out.extend_from_slice(b"* 1 FETCH (UID 1 BODY[] {10000000000}\r\nabc");
                }
                Script::ByeMidFetch => {
                    out.extend_from_slice(b"* 1 FETCH (UID 1 FLAGS () BODY[] {5}\r\nHello)\r\n");
                    out.extend_from_slice(b"* BYE shutting down\r\n");
                }
            }
        } else if cmd.starts_with("LOGOUT") {
            let _ = w
                .write_all(format!("* BYE\r\n{tag} OK bye\r\n").as_bytes())
                .await;
            return;
        } else {
            out.extend_from_slice(format!("{tag} OK done\r\n").as_bytes());
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
        if matches!(script, Script::HugeLiteral | Script::ByeMidFetch)
            && cmd.starts_with("UID FETCH")
            && !cmd.starts_with("UID FETCH 1:*")
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
    }
}

fn mailbox(port: u16) -> ImapMailbox {
    let mut config = ImapConfig::new("127.0.0.1", port, Security::None, "u", "p");
    config.folders = vec!["INBOX".to_owned()];
    config.timeout = Duration::from_secs(5);
    ImapMailbox::new(config)
}

#[tokio::test]
async fn unparseable_answers_are_reported_per_message() {
    let mb = mailbox(server(Script::Garbled).await);
    let got = mb
        .get_many(
            "mail/INBOX",
            &["1".into(), "2".into(), "3".into(), "9".into()],
        )
        .await
        .unwrap();
    assert_eq!(got[0].1.as_ref().unwrap().data, b"Hello");
    for (i, href) in [(1, "2"), (2, "3")] {
        let err = got[i].1.as_ref().unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{href}: {err}");
        assert!(err.to_string().contains(href), "{err}");
    }
    assert!(matches!(got[3].1, Err(Error::NotFound { .. })));

    // A listing with unreadable answers: readable ones listed, the one
    // with a UID failed, and (one named no UID) nothing reported deleted.
    let first = mb.changes_since("mail/INBOX", None).await.unwrap();
    let mut changed: Vec<&str> = first.changed.iter().map(|r| r.href.as_str()).collect();
    changed.sort();
    assert_eq!(changed, ["1", "4"]);
    assert_eq!(first.failed.len(), 1);
    assert_eq!(first.failed[0].0, "2");
    let again = mb
        .changes_since("mail/INBOX", Some(&first.state))
        .await
        .unwrap();
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);
}

#[tokio::test]
async fn an_absurd_literal_ends_the_connection_with_an_error() {
    let mb = mailbox(server(Script::HugeLiteral).await);
    let err = mb.get("mail/INBOX", "1").await.unwrap_err();
    assert!(matches!(err, Error::Remote { .. }), "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
}

#[tokio::test]
async fn bye_in_the_middle_of_a_fetch_is_an_error_and_the_next_call_reconnects() {
    let mb = mailbox(server(Script::ByeMidFetch).await);
    let err = mb.get("mail/INBOX", "1").await.unwrap_err();
    assert!(matches!(err, Error::Remote { .. }), "{err}");
    assert!(err.to_string().contains("closed"), "{err}");
    let before = mb
        .stats()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);
    let _ = mb.get("mail/INBOX", "1").await;
    assert_eq!(
        mb.stats()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        before + 1
    );
}

#[tokio::test]
async fn a_server_that_is_not_imap_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let err = mailbox(port).collections().await.unwrap_err();
    assert!(err.to_string().contains("not an IMAP greeting"), "{err}");
}
