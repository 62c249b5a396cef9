//! TLS and STARTTLS against Dovecot with a certificate from a private CA.

mod support;

use crmsync_imap::{ImapMailbox, Security};
use crmsync_mailbox::{Error, Mailbox};
use support::{message, Dovecot, Flavor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_starttls_log_in_and_read_mail() {
    let dovecot = Dovecot::start_with(Flavor::Qresync, true).await;
    let uid = dovecot
        .client()
        .await
        .append("INBOX", &message("tls", "Over TLS"))
        .await;
    for (security, port) in [
        (Security::Tls, dovecot.tls_port.unwrap()),
        (Security::StartTls, dovecot.port),
    ] {
        let mut config = dovecot.config_on(port);
        config.security = security;
        config.tls_ca_file = dovecot.ca.clone();
        let mb = ImapMailbox::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{security:?}: {e}\n{}", dovecot.logs()));
        let item = mb.get("mail/INBOX", &uid.to_string()).await.unwrap();
        assert_eq!(item.data, message("tls", "Over TLS"), "{security:?}");

        // Without the private CA the certificate is refused.
        config.tls_ca_file = None;
        let err = ImapMailbox::connect(config).await.unwrap_err();
        assert!(matches!(err, Error::Remote { .. }), "{err}");
        assert!(err.to_string().contains("TLS"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_names_the_setting_to_fix() {
    let dovecot = Dovecot::start(Flavor::Plain).await;
    let mut config = dovecot.config();
    config.password = "wrong".into();
    let err = ImapMailbox::new(config).collections().await.unwrap_err();
    assert!(err.to_string().contains("[mailbox.imap]"), "{err}");
    // R-V5: told apart from a passing failure (a server-side mailbox then
    // waits for new credentials instead of retrying).
    assert!(err.is_authentication_failure(), "{err:?}");
}
