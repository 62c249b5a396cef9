//! The local backend: the conformance suite (twice: contacts + INBOX, and
//! calendar + a Maildir++ subfolder) and the checks of its on-disk formats.

#[macro_use]
mod conformance;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use crmsync_mailbox::{
    CollectionKind, Error, Href, Keyword, LocalConfig, LocalMailbox, Mailbox, SystemFlag,
};
use tempfile::TempDir;

use conformance::{message, vcard, Fixture};

// ---------------------------------------------------------------- fixture

pub struct LocalFixture {
    dir: TempDir,
    mailbox: LocalMailbox,
    /// Which collections the suite uses.
    items: &'static str,
    mail: &'static str,
}

impl LocalFixture {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The folder of a collection id, as another program would find it.
    fn dir_of(&self, collection: &str) -> PathBuf {
        match collection.strip_prefix("mail/") {
            Some("INBOX") => self.root().join("mail"),
            Some(folder) => self.root().join("mail").join(format!(".{folder}")),
            None => self.root().join(collection),
        }
    }

    fn ext_of(collection: &str) -> &'static str {
        if collection == "contacts" {
            ".vcf"
        } else {
            ".ics"
        }
    }

    /// The message file whose base name is `href`, in `new/` or `cur/`.
    fn message_path(&self, folder: &str, href: &str) -> PathBuf {
        let dir = self.dir_of(folder);
        for sub in ["cur", "new"] {
            for entry in fs::read_dir(dir.join(sub)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if name.split(':').next() == Some(href) {
                    return dir.join(sub).join(name);
                }
            }
        }
        panic!("no message {href} in {}", dir.display());
    }
}

/// Writes `data` to `path` from another process, in place (as a naive
/// client or a text editor without atomic saves would).
fn write_from_other_process(path: &Path, data: &[u8]) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("cat > \"$1\"")
        .arg("sh")
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    assert!(child.wait().unwrap().success());
}

async fn fixture_with(items: &'static str, mail: &'static str) -> LocalFixture {
    let dir = tempfile::tempdir().unwrap();
    let mailbox = LocalMailbox::open(&LocalConfig {
        root: dir.path().to_path_buf(),
    })
    .unwrap();
    for folder in ["Sent", "Drafts", "CRM"] {
        mailbox.ensure_mail_folder(folder).unwrap();
    }
    LocalFixture {
        dir,
        mailbox,
        items,
        mail,
    }
}

/// Contacts and INBOX.
pub async fn local_fixture() -> LocalFixture {
    fixture_with("contacts", "mail/INBOX").await
}

/// Calendar and the Maildir++ subfolder `.CRM`.
pub async fn local_fixture_calendar_and_crm_folder() -> LocalFixture {
    fixture_with("calendar", "mail/CRM").await
}

#[async_trait]
impl Fixture for LocalFixture {
    fn mailbox(&self) -> Arc<dyn Mailbox> {
        Arc::new(self.mailbox.clone())
    }

    async fn reopen(&self) -> Arc<dyn Mailbox> {
        Arc::new(
            LocalMailbox::open(&LocalConfig {
                root: self.root().to_path_buf(),
            })
            .unwrap(),
        )
    }

    fn collection(&self, kind: CollectionKind) -> Option<String> {
        let id = match kind {
            CollectionKind::Contacts if self.items == "contacts" => "contacts",
            CollectionKind::Calendar if self.items == "calendar" => "calendar",
            CollectionKind::Tasks => "tasks",
            CollectionKind::Mail => self.mail,
            _ => return None,
        };
        Some(id.to_owned())
    }

    async fn external_put(&self, collection: &str, name: &str, data: &[u8]) -> Href {
        write_from_other_process(&self.dir_of(collection).join(name), data);
        name.to_owned()
    }

    async fn external_delete(&self, collection: &str, href: &str) {
        let path = if collection.starts_with("mail/") {
            self.message_path(collection, href)
        } else {
            self.dir_of(collection).join(href)
        };
        fs::remove_file(path).unwrap();
    }

    async fn external_deliver(&self, folder: &str, data: &[u8]) -> Href {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "1798000000.M{}P99999.otherhost,S={}",
            N.fetch_add(1, Ordering::Relaxed),
            data.len()
        );
        let dir = self.dir_of(folder);
        let tmp = dir.join("tmp").join(&name);
        write_from_other_process(&tmp, data);
        fs::rename(&tmp, dir.join("new").join(&name)).unwrap();
        name
    }

    async fn external_mark_seen(&self, folder: &str, href: &str) {
        let path = self.message_path(folder, href);
        let name = path.file_name().unwrap().to_str().unwrap();
        let flags = name.split_once(":2,").map(|(_, f)| f).unwrap_or("");
        let mut letters: Vec<char> = flags.chars().chain(['S']).collect();
        letters.sort();
        letters.dedup();
        let letters: String = letters.into_iter().collect();
        let target = self
            .dir_of(folder)
            .join("cur")
            .join(format!("{href}:2,{letters}"));
        fs::rename(&path, target).unwrap();
    }

    async fn plant_malformed(&self, collection: &str) -> Option<Href> {
        let name = format!("garbage{}", Self::ext_of(collection));
        fs::write(
            self.dir_of(collection).join(&name),
            b"\x00\xff\xfe this is not a vCard or iCalendar file",
        )
        .unwrap();
        Some(name)
    }

    async fn plant_unreadable(&self, collection: &str) -> Option<Href> {
        let name = format!("ghost{}", Self::ext_of(collection));
        std::os::unix::fs::symlink(
            "/nonexistent/crmsync/target",
            self.dir_of(collection).join(&name),
        )
        .unwrap();
        Some(name)
    }
}

mod contacts_and_inbox {
    mailbox_conformance!(crate::local_fixture; items, mail, bad_items);
}

mod calendar_and_crm_folder {
    mailbox_conformance!(crate::local_fixture_calendar_and_crm_folder; items, mail, bad_items);
}

// ---------------------------------------------------------------- local only

#[test]
fn mailbox_trait_is_object_safe() {
    fn takes_dyn(_: &dyn Mailbox) {}
    let dir = tempfile::tempdir().unwrap();
    let local = LocalMailbox::open(&LocalConfig {
        root: dir.path().to_path_buf(),
    })
    .unwrap();
    takes_dyn(&local);
    let boxed: Box<dyn Mailbox> = Box::new(local.clone());
    let shared: Arc<dyn Mailbox> = Arc::new(local);
    assert_eq!(boxed.backend(), "local");
    assert_eq!(shared.backend(), "local");
}

#[test]
fn config_names_the_root() {
    let config: LocalConfig = serde_json::from_str(r#"{"root": "/home/u/crm-mailbox"}"#).unwrap();
    assert_eq!(config.root, PathBuf::from("/home/u/crm-mailbox"));
    assert!(serde_json::from_str::<LocalConfig>(r#"{"root": "/x", "rot": 1}"#).is_err());
}

#[test]
fn open_refuses_a_missing_root_and_says_what_to_fix() {
    let err = LocalMailbox::open(&LocalConfig {
        root: PathBuf::from("/nonexistent/crmsync-root"),
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/crmsync-root") && text.contains("root"),
        "{text}"
    );
}

#[tokio::test]
async fn collections_are_the_vdirs_and_every_maildir_folder() {
    let f = local_fixture().await;
    fs::create_dir_all(f.root().join("mail/.NotAMaildir")).unwrap();
    let ids: Vec<String> = f
        .mailbox
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        ids,
        [
            "contacts",
            "calendar",
            "tasks",
            "mail/INBOX",
            "mail/CRM",
            "mail/Drafts",
            "mail/Sent"
        ]
    );
    assert!(f.root().join("mail/.CRM/maildirfolder").exists());
}

/// R-M1 in a Maildir: the keyword gets a letter in `dovecot-keywords`
/// (existing letters kept), the letter goes into the file name's flags, the
/// message moves from `new/` to `cur/`, and the bytes never change.
#[tokio::test]
async fn r_m1_keyword_is_stored_the_dovecot_way() {
    let f = local_fixture().await;
    let mail = f.root().join("mail");
    fs::write(mail.join("dovecot-keywords"), "0 $Junk\n1 NonJunk\n").unwrap();
    let data = message("dovecot", "Keywords");
    let href = f.external_deliver("mail/INBOX", &data).await;
    assert!(mail.join("new").join(&href).exists());

    let mb = &f.mailbox;
    let item = mb.get("mail/INBOX", &href).await.unwrap();
    let r = mb
        .store_keywords("mail/INBOX", &href, &item.etag, &[Keyword::tracked()], &[])
        .await
        .unwrap();
    assert!(mail.join("cur").join(format!("{href}:2,c")).exists());
    assert!(!mail.join("new").join(&href).exists());
    assert_eq!(
        fs::read_to_string(mail.join("dovecot-keywords")).unwrap(),
        "0 $Junk\n1 NonJunk\n2 $CRMTracked\n"
    );

    // Another client marks it read and junk (letters S and a).
    let cur = mail.join("cur");
    fs::rename(
        cur.join(format!("{href}:2,c")),
        cur.join(format!("{href}:2,Sac")),
    )
    .unwrap();
    let now = mb.flags_of("mail/INBOX", &href).await.unwrap();
    let fl = now.flags.as_ref().unwrap();
    assert!(fl.is_tracked() && fl.system.contains(&SystemFlag::Seen));
    assert!(fl.has_keyword(&Keyword::new("$junk").unwrap()));
    assert_ne!(now.etag, r.etag);

    let regarding = Keyword::regarding(&uuid::Uuid::from_u128(7));
    mb.store_keywords(
        "mail/INBOX",
        &href,
        &now.etag,
        std::slice::from_ref(&regarding),
        &[Keyword::new("$Junk").unwrap()],
    )
    .await
    .unwrap();
    assert!(cur.join(format!("{href}:2,Scd")).exists());
    assert_eq!(
        fs::read_to_string(mail.join("dovecot-keywords")).unwrap(),
        format!("0 $Junk\n1 NonJunk\n2 $CRMTracked\n3 {regarding}\n")
    );
    assert_eq!(fs::read(cur.join(format!("{href}:2,Scd"))).unwrap(), data);
    for lock in ["dovecot-keywords.lock", "dovecot-uidlist.lock"] {
        assert!(!mail.join(lock).exists(), "{lock} left behind");
    }
}

#[tokio::test]
async fn keyword_letters_running_out_is_reported_and_changes_nothing() {
    let f = local_fixture().await;
    let mail = f.root().join("mail");
    let table: String = (0..26).map(|i| format!("{i} $Label{i}\n")).collect();
    fs::write(mail.join("dovecot-keywords"), &table).unwrap();
    let href = f
        .external_deliver("mail/INBOX", &message("full", "Full"))
        .await;
    let item = f.mailbox.get("mail/INBOX", &href).await.unwrap();
    let err = f
        .mailbox
        .store_keywords("mail/INBOX", &href, &item.etag, &[Keyword::tracked()], &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeywordSlotsFull { .. }), "{err}");
    assert!(err.to_string().contains("dovecot-keywords"));
    assert_eq!(
        fs::read_to_string(mail.join("dovecot-keywords")).unwrap(),
        table
    );
    assert!(mail.join("new").join(&href).exists());
}

/// Etag = content hash: touching a file (new mtime, same bytes) is not a change.
#[tokio::test]
async fn touching_a_file_without_changing_it_is_not_a_change() {
    let f = local_fixture().await;
    let mb = &f.mailbox;
    let created = mb
        .create("contacts", "touch", &vcard("touch", "Touch"))
        .await
        .unwrap();
    let state = mb.changes_since("contacts", None).await.unwrap().state;
    let file = fs::File::options()
        .write(true)
        .open(f.root().join("contacts").join(&created.href))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    let changes = mb.changes_since("contacts", Some(&state)).await.unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(
        mb.get("contacts", &created.href).await.unwrap().etag,
        created.etag
    );
}

#[tokio::test]
async fn writes_are_atomic_and_leave_no_temp_files() {
    let f = local_fixture().await;
    let mb = &f.mailbox;
    let a = mb
        .create("contacts", "atomic", &vcard("atomic", "A"))
        .await
        .unwrap();
    let b = mb
        .update("contacts", &a.href, &a.etag, &vcard("atomic", "B"))
        .await
        .unwrap();
    let _ = mb
        .update("contacts", &a.href, &a.etag, &vcard("atomic", "stale"))
        .await
        .unwrap_err();
    let _ = mb
        .create("contacts", "atomic", &vcard("atomic", "dup"))
        .await
        .unwrap_err();
    mb.delete("contacts", &a.href, &b.etag).await.unwrap();
    let m = mb
        .create("mail/INBOX", "", &message("atomic", "A"))
        .await
        .unwrap();
    assert!(f.root().join("mail/new").join(&m.href).exists());
    let leftovers: Vec<_> = fs::read_dir(f.root().join("contacts"))
        .unwrap()
        .chain(fs::read_dir(f.root().join("mail/tmp")).unwrap())
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn malformed_data_is_never_written() {
    let f = local_fixture().await;
    let err = f
        .mailbox
        .create("contacts", "bad", b"not a vcard")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(!f.root().join("contacts/bad.vcf").exists());
    let err = f.mailbox.create("mail/INBOX", "", b"").await.unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
}

#[tokio::test]
async fn replacing_a_message_is_refused() {
    let f = local_fixture().await;
    let m = f
        .mailbox
        .create("mail/INBOX", "", &message("imm", "Immutable"))
        .await
        .unwrap();
    let err = f
        .mailbox
        .update("mail/INBOX", &m.href, &m.etag, &message("imm", "Changed"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let err = f
        .mailbox
        .store_keywords("contacts", "x.vcf", &m.etag, &[Keyword::tracked()], &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[tokio::test]
async fn message_deleted_with_current_etag_is_gone_and_reported() {
    let f = local_fixture().await;
    let mb = &f.mailbox;
    let href = f
        .external_deliver("mail/INBOX", &message("del", "Del"))
        .await;
    let state = mb.changes_since("mail/INBOX", None).await.unwrap().state;
    let item = mb.get("mail/INBOX", &href).await.unwrap();
    mb.delete("mail/INBOX", &href, &item.etag).await.unwrap();
    let changes = mb.changes_since("mail/INBOX", Some(&state)).await.unwrap();
    assert_eq!(changes.deleted, vec![href]);
}
