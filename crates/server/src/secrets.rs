//! R-V2: secrets at rest (connected mailboxes' passwords). AES-256-GCM
//! (ring's, an authenticated cipher) under a key the database does not
//! hold, in an envelope that names its key:
//!
//! ```text
//! v1:<key id>:<nonce, base64>:<ciphertext with its tag, base64>
//! ```
//!
//! The key id is the first 8 bytes of the key's SHA-256 (hex): it tells
//! which key a secret needs without revealing the key. The envelope's
//! header and the caller's context (e.g. the mailbox's id) are
//! authenticated with it, so a secret copied to another row, or whose
//! header was edited, is refused like a changed one.
//!
//! A key file holds the 32 key bytes in base64 on one line, readable by
//! its owner only (`crmsync admin gen-key FILE`).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

/// The envelope format this server writes and reads.
const VERSION: &str = "v1";

/// The key file `crmsync admin init` writes beside a SQLite database, and
/// where `crmsync serve` looks for one when no key file is named.
pub const KEY_FILE_NAME: &str = "secret.key";

/// Environment variable naming the key file (as `--secret-key-file` does).
pub const KEY_FILE_ENV: &str = "CRMSYNC_SECRET_KEY_FILE";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("this secret was encrypted with key {needed}, but the key in use is {have}; start the server with the key file whose id is {needed}, or enter the password again")]
    WrongKey { needed: String, have: String },
    #[error("a stored secret failed its integrity check under key {key}: it was changed outside crmsync; enter the password again")]
    Tampered { key: String },
    #[error("a stored secret is not a crmsync secret envelope (v1:KEY:NONCE:DATA); it was changed outside crmsync; enter the password again")]
    Malformed,
    #[error("{path}: {problem}")]
    KeyFile { path: String, problem: String },
}

/// A secret key (AES-256) and its id.
pub struct SecretKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn key_file_error(path: &Path, problem: impl Into<String>) -> SecretError {
    SecretError::KeyFile {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

impl SecretKey {
    fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256 takes a 32-byte key");
        SecretKey {
            key: LessSafeKey::new(unbound),
            id,
        }
    }

    /// A new random key, with its key file's text.
    fn generate_with_text() -> (SecretKey, String) {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        (SecretKey::from_bytes(&bytes), STANDARD.encode(bytes))
    }

    /// A new random key that lives in memory only (tests, a throwaway
    /// server): what it encrypts is lost with it.
    pub fn generate() -> SecretKey {
        SecretKey::generate_with_text().0
    }

    /// The key's id, as envelopes name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes a new key to `path`, readable by its owner only; an
    /// existing file is never replaced.
    pub fn create_file(path: &Path) -> Result<SecretKey, SecretError> {
        use std::io::Write;
        let (key, text) = SecretKey::generate_with_text();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                key_file_error(path, "already exists; a key is never overwritten (secrets encrypted with it could not be read again): choose another file name")
            } else {
                key_file_error(path, format!("cannot create it ({e})"))
            }
        })?;
        writeln!(file, "{text}")
            .and_then(|()| file.sync_all())
            .map_err(|e| key_file_error(path, format!("cannot write it ({e})")))?;
        Ok(key)
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<SecretKey, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            key_file_error(
                path,
                format!("cannot read the secret key file ({e}); name an existing one, or make one with `crmsync admin gen-key FILE`"),
            )
        })?;
        let bytes: [u8; 32] = STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                key_file_error(
                    path,
                    "is not a crmsync secret key (32 bytes in base64, as `crmsync admin gen-key FILE` writes)",
                )
            })?;
        Ok(SecretKey::from_bytes(&bytes))
    }

    fn aad(key_id: &str, context: &str) -> Vec<u8> {
        format!("{VERSION}:{key_id}:{context}").into_bytes()
    }

    /// Encrypts `plain` for the place `context` names (e.g. `mailbox:<id>`).
    pub fn encrypt(&self, plain: &[u8], context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(&self.id, context)),
                &mut data,
            )
            .expect("AES-GCM seals any message shorter than 64 GB");
        format!(
            "{VERSION}:{}:{}:{}",
            self.id,
            STANDARD.encode(nonce),
            STANDARD.encode(data)
        )
    }

    /// Decrypts an envelope written by [`SecretKey::encrypt`] with the same
    /// `context`.
    pub fn decrypt(&self, envelope: &str, context: &str) -> Result<Vec<u8>, SecretError> {
        let (key_id, nonce, data) = parse(envelope)?;
        if key_id != self.id {
            return Err(SecretError::WrongKey {
                needed: key_id.to_string(),
                have: self.id.clone(),
            });
        }
        let tampered = || SecretError::Tampered {
            key: self.id.clone(),
        };
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(tampered)?;
        let mut data = STANDARD.decode(data).map_err(|_| tampered())?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(key_id, context)),
                &mut data,
            )
            .map_err(|_| tampered())?;
        Ok(plain.to_vec())
    }
}

/// The id of the key an envelope needs.
pub fn key_id_of(envelope: &str) -> Result<&str, SecretError> {
    parse(envelope).map(|(id, _, _)| id)
}

fn parse(envelope: &str) -> Result<(&str, &str, &str), SecretError> {
    let mut parts = envelope.split(':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(VERSION), Some(id), Some(nonce), Some(data), None) => Ok((id, nonce, data)),
        _ => Err(SecretError::Malformed),
    }
}

/// The key file beside a SQLite database (`crm.db` → `secret.key` in the
/// same folder); none for PostgreSQL, whose server is elsewhere.
pub fn key_file_beside(db_url: &str) -> Option<PathBuf> {
    crate::db::beside_sqlite(db_url, KEY_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_v2_a_secret_roundtrips_and_its_envelope_names_the_key() {
        let key = SecretKey::generate();
        let envelope = key.encrypt(b"pa55 word", "mailbox:1");
        assert!(
            envelope.starts_with(&format!("v1:{}:", key.id())),
            "{envelope}"
        );
        assert!(!envelope.contains("pa55"));
        assert_eq!(key_id_of(&envelope), Ok(key.id()));
        assert_eq!(key.decrypt(&envelope, "mailbox:1").unwrap(), b"pa55 word");
        // A fresh nonce each time: the same secret never looks the same.
        assert_ne!(key.encrypt(b"pa55 word", "mailbox:1"), envelope);
    }

    #[test]
    fn r_v2_a_changed_secret_is_refused() {
        let key = SecretKey::generate();
        let envelope = key.encrypt(b"pa55 word", "mailbox:1");
        let (head, data) = envelope.rsplit_once(':').unwrap();
        let mut bytes = STANDARD.decode(data).unwrap();
        bytes[0] ^= 1;
        let changed = format!("{head}:{}", STANDARD.encode(bytes));
        let tampered = SecretError::Tampered {
            key: key.id().to_string(),
        };
        assert_eq!(key.decrypt(&changed, "mailbox:1"), Err(tampered.clone()));
        // Copied to another mailbox's row: refused too.
        assert_eq!(key.decrypt(&envelope, "mailbox:2"), Err(tampered));
        assert_eq!(
            key.decrypt("pa55 word", "mailbox:1"),
            Err(SecretError::Malformed)
        );
    }

    #[test]
    fn r_v2_the_wrong_key_is_named() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let envelope = a.encrypt(b"pa55 word", "mailbox:1");
        let e = b.decrypt(&envelope, "mailbox:1").unwrap_err();
        assert_eq!(
            e,
            SecretError::WrongKey {
                needed: a.id().to_string(),
                have: b.id().to_string()
            }
        );
        assert!(e.to_string().contains(a.id()), "{e}");
    }

    #[test]
    fn r_v2_a_key_file_is_private_never_overwritten_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let key = SecretKey::create_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = SecretKey::load(&path).unwrap();
        assert_eq!(again.id(), key.id());
        let envelope = key.encrypt(b"x", "c");
        assert_eq!(again.decrypt(&envelope, "c").unwrap(), b"x");
        let e = SecretKey::create_file(&path).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(SecretKey::load(&path).unwrap().id(), key.id());
        std::fs::write(&path, "not a key\n").unwrap();
        let e = SecretKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("gen-key"), "{e}");
    }

    #[test]
    fn the_key_file_of_a_sqlite_database_is_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/crm.db");
        assert_eq!(
            key_file_beside(&format!("sqlite://{}", db.display())),
            Some(dir.path().join("data/secret.key"))
        );
        assert_eq!(key_file_beside("postgres://u@h/db"), None);
    }
}
