//! Web sign-in passwords (R-W2): Argon2id hashes, `crmsync admin user
//! passwd`, and the slowing down of repeated failed sign-ins, shared by
//! every server process through the database.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crmsync_core::time::now_timestamp;
use crmsync_core::Record;

use crate::store::Store;

/// Shortest and longest accepted password (long ones only cost hashing time).
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 1024;

/// Failed sign-ins older than this are forgotten.
pub const FAILURE_WINDOW_SECS: i64 = 15 * 60;

/// Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane): OWASP's minimum.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 with default parameters hashes any password")
        .to_string()
}

/// Whether `password` matches a stored PHC string (a corrupt one never matches).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Spends the time of one verification, so that an unknown email answers
/// as slowly as a wrong password.
pub fn verify_nothing(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("not a password of anyone"));
    let _ = verify_password(hash, password);
}

/// Checks a new password's length; the message names the fix.
pub fn check_new_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_LEN {
        Err(format!(
            "the password is too short: use at least {MIN_LEN} characters"
        ))
    } else if password.len() > MAX_LEN {
        Err(format!(
            "the password is too long: use at most {MAX_LEN} bytes"
        ))
    } else {
        Ok(())
    }
}

/// How long a sign-in to an account must wait after `failures` recent
/// failures: the first three are free, then 2, 4, 8 … seconds, at most 5 minutes.
pub fn retry_delay_secs(failures: i64) -> i64 {
    if failures < 3 {
        0
    } else {
        1i64 << (failures - 2).min(8)
    }
    .min(300)
}

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The live user with this email (case-insensitive), if any.
pub async fn user_by_email(store: &Store, email: &str) -> Result<Option<Record>, sqlx::Error> {
    let key = crate::records::unique_key(
        crmsync_core::EntitySet::Users,
        &serde_json::Map::from_iter([("email".to_string(), serde_json::json!(email.trim()))]),
    )
    .unwrap_or_default();
    let id: Option<String> =
        sqlx::query_scalar("SELECT id FROM records WHERE unique_key = $1 AND deleted_at IS NULL")
            .bind(key)
            .fetch_optional(&store.pool)
            .await?;
    match id.and_then(|i| Uuid::parse_str(&i).ok()) {
        Some(id) => store.get(id).await,
        None => Ok(None),
    }
}

/// `crmsync admin user passwd`: sets the password of the user with this email.
pub async fn set_password(store: &Store, email: &str, password: &str) -> anyhow::Result<()> {
    check_new_password(password).map_err(anyhow::Error::msg)?;
    let Some(user) = user_by_email(store, email).await? else {
        anyhow::bail!(
            "no user has the email {email}; add one with `crmsync admin user add --email {email} --name NAME`"
        );
    };
    let hash = hash_password(password);
    let mut conn = store.pool.acquire().await?;
    put_hash(&mut conn, user.id, &hash).await?;
    // A new password also ends the failures counted against the old one,
    // and the sessions signed in with it.
    clear_failures(&mut conn, email).await?;
    sqlx::query("DELETE FROM web_sessions WHERE user_id = $1")
        .bind(user.id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn put_hash(conn: &mut AnyConnection, user: Uuid, hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO user_passwords (user_id, hash, set_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET hash = excluded.hash, set_at = excluded.set_at",
    )
    .bind(user.to_string())
    .bind(hash.to_string())
    .bind(now_timestamp())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn stored_hash(store: &Store, user: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT hash FROM user_passwords WHERE user_id = $1")
        .bind(user.to_string())
        .fetch_optional(&store.pool)
        .await
}

/// Recent failures of an account and when the last one was.
pub async fn failures(store: &Store, email: &str) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query("SELECT failures, last_failure_at FROM signin_failures WHERE email = $1")
        .bind(email.trim().to_lowercase())
        .fetch_optional(&store.pool)
        .await?;
    let Some(row) = row else { return Ok((0, 0)) };
    let (n, at): (i64, i64) = (row.try_get("failures")?, row.try_get("last_failure_at")?);
    Ok(if unix_now() - at > FAILURE_WINDOW_SECS {
        (0, at)
    } else {
        (n, at)
    })
}

/// Seconds the account must still wait before a sign-in is checked (0:
/// go ahead). Once a wait applies, going ahead claims the attempt in one
/// statement, so that of many sign-ins sent at once only one is checked.
pub async fn wait_before_signin(store: &Store, email: &str) -> Result<i64, sqlx::Error> {
    let (n, at) = failures(store, email).await?;
    let delay = retry_delay_secs(n);
    let now = unix_now();
    let wait = (at + delay - now).max(0);
    if delay == 0 || wait > 0 {
        return Ok(wait);
    }
    let claimed = sqlx::query(
        "UPDATE signin_failures SET last_failure_at = $2 WHERE email = $1 AND last_failure_at = $3",
    )
    .bind(email.trim().to_lowercase())
    .bind(now)
    .bind(at)
    .execute(&store.pool)
    .await?;
    Ok(if claimed.rows_affected() == 1 {
        0
    } else {
        delay
    })
}

/// Counts a failed sign-in in one statement, so that processes failing
/// sign-ins of one account at once each count (a failure after a quiet
/// window starts again at 1).
pub async fn record_failure(store: &Store, email: &str) -> Result<(), sqlx::Error> {
    let now = unix_now();
    sqlx::query(
        "INSERT INTO signin_failures (email, failures, last_failure_at) VALUES ($1, 1, $2) \
         ON CONFLICT (email) DO UPDATE SET \
         failures = CASE WHEN signin_failures.last_failure_at < $3 THEN 1 ELSE signin_failures.failures + 1 END, \
         last_failure_at = excluded.last_failure_at",
    )
    .bind(email.trim().to_lowercase())
    .bind(now)
    .bind(now - FAILURE_WINDOW_SECS)
    .execute(&store.pool)
    .await?;
    Ok(())
}

pub async fn clear_failures(conn: &mut AnyConnection, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM signin_failures WHERE email = $1")
        .bind(email.trim().to_lowercase())
        .execute(conn)
        .await?;
    Ok(())
}

/// Why a sign-in was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SigninRefused {
    /// Wrong email or password (which one is not said).
    Wrong,
    /// Too many recent failures: try again after this many seconds.
    Wait(i64),
    /// The user is disabled.
    Disabled,
}

/// Checks an email and password, counting failures per account.
pub async fn sign_in(
    store: &Store,
    email: &str,
    password: &str,
) -> anyhow::Result<Result<Record, SigninRefused>> {
    let wait = wait_before_signin(store, email).await?;
    if wait > 0 {
        return Ok(Err(SigninRefused::Wait(wait)));
    }
    let user = user_by_email(store, email).await?;
    let hash = match &user {
        Some(u) => stored_hash(store, u.id).await?,
        None => None,
    };
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password(&h, &password),
        None => {
            verify_nothing(&password);
            false
        }
    })
    .await?;
    match user {
        Some(u) if ok => {
            let mut conn = store.pool.acquire().await?;
            clear_failures(&mut conn, email).await?;
            if u.state != "active" {
                return Ok(Err(SigninRefused::Disabled));
            }
            Ok(Ok(u))
        }
        _ => {
            record_failure(store, email).await?;
            Ok(Err(SigninRefused::Wrong))
        }
    }
}

/// Removes everything a deleted user could still sign in with.
pub async fn forget_user(conn: &mut AnyConnection, user: Uuid) -> Result<(), sqlx::Error> {
    for sql in [
        "DELETE FROM user_passwords WHERE user_id = $1",
        "DELETE FROM web_sessions WHERE user_id = $1",
        "DELETE FROM signin_links WHERE user_id = $1",
    ] {
        sqlx::query(sql)
            .bind(user.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_w2_hashes_are_argon2id_and_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsE"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn r_w2_retry_delay_grows_with_failures() {
        assert_eq!(retry_delay_secs(0), 0);
        assert_eq!(retry_delay_secs(2), 0);
        assert_eq!(retry_delay_secs(3), 2);
        assert_eq!(retry_delay_secs(4), 4);
        assert_eq!(retry_delay_secs(50), 256);
        assert!((0..100).all(|n| retry_delay_secs(n) <= retry_delay_secs(n + 1)));
    }

    #[test]
    fn new_passwords_need_a_sane_length() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough").is_ok());
        assert!(check_new_password(&"x".repeat(2000)).is_err());
    }
}
