//! SQL of the `mailboxes` table (migration 0006): static statements, bound
//! values.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{MailboxState, Settings};

fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(
        format!("stored mailbox {what} is not valid; the database was changed outside crmsync")
            .into(),
    )
}

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(&row.try_get::<String, _>(col)?).map_err(|_| corrupt(col))
}

/// A mailbox connected to the server, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub settings: Settings,
    /// The encrypted passwords (R-V2), an envelope of `crate::secrets`.
    pub secret: String,
    pub client_id: Uuid,
    pub created_at: String,
    pub modified_at: String,
    pub state: MailboxState,
    /// Unix seconds.
    pub next_run_at: i64,
    pub lease_token: i64,
    pub lease_holder: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    /// JSON.
    pub last_counts: Option<String>,
    pub failures: i64,
}

const COLUMNS: &str = "id, user_id, name, settings, secret, client_id, created_at, modified_at, state, next_run_at, lease_token, lease_holder, lease_expires_at, last_success_at, last_error, last_counts, failures";

fn from_row(row: &AnyRow) -> Result<Mailbox, sqlx::Error> {
    Ok(Mailbox {
        id: uuid_col(row, "id")?,
        user_id: uuid_col(row, "user_id")?,
        name: row.try_get("name")?,
        settings: serde_json::from_str(&row.try_get::<String, _>("settings")?)
            .map_err(|_| corrupt("settings"))?,
        secret: row.try_get("secret")?,
        client_id: uuid_col(row, "client_id")?,
        created_at: row.try_get("created_at")?,
        modified_at: row.try_get("modified_at")?,
        state: row
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|_| corrupt("state"))?,
        next_run_at: row.try_get("next_run_at")?,
        lease_token: row.try_get("lease_token")?,
        lease_holder: row.try_get("lease_holder")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        last_success_at: row.try_get("last_success_at")?,
        last_error: row.try_get("last_error")?,
        last_counts: row.try_get("last_counts")?,
        failures: row.try_get("failures")?,
    })
}

fn settings_json(s: &Settings) -> String {
    serde_json::to_string(s).expect("settings serialize")
}

pub async fn insert(conn: &mut AnyConnection, m: &Mailbox) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO mailboxes (id, user_id, name, settings, secret, client_id, created_at, modified_at, state, next_run_at, lease_token, lease_holder, lease_expires_at, last_success_at, last_error, last_counts, failures) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, NULL, NULL, NULL, NULL, $12)",
    )
    .bind(m.id.to_string())
    .bind(m.user_id.to_string())
    .bind(m.name.clone())
    .bind(settings_json(&m.settings))
    .bind(m.secret.clone())
    .bind(m.client_id.to_string())
    .bind(m.created_at.clone())
    .bind(m.modified_at.clone())
    .bind(m.state.as_str())
    .bind(m.next_run_at)
    .bind(m.lease_token)
    .bind(m.failures)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Mailbox>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM mailboxes WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// A user's mailboxes, by name.
pub async fn of_user(conn: &mut AnyConnection, user: Uuid) -> Result<Vec<Mailbox>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM mailboxes WHERE user_id = $1 ORDER BY name, id");
    let rows = sqlx::query(&sql)
        .bind(user.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Writes what a PATCH changes: name, settings, secret, and the schedule
/// and health a change of settings resets. The worker's columns (lease,
/// last success, counts) are left alone. `sections_changed` counts up the
/// settings generation, so that a cycle already running on the old
/// settings does not overwrite this state with its outcome
/// (`lease::finish`).
pub async fn update_settings(
    conn: &mut AnyConnection,
    m: &Mailbox,
    sections_changed: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE mailboxes SET name = $1, settings = $2, secret = $3, modified_at = $4, state = $5, next_run_at = $6, failures = $7, last_error = $8, \
         settings_generation = settings_generation + $10 WHERE id = $9",
    )
    .bind(m.name.clone())
    .bind(settings_json(&m.settings))
    .bind(m.secret.clone())
    .bind(m.modified_at.clone())
    .bind(m.state.as_str())
    .bind(m.next_run_at)
    .bind(m.failures)
    .bind(m.last_error.clone())
    .bind(m.id.to_string())
    .bind(i64::from(sections_changed))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut AnyConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM mailboxes WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Every connected mailbox's id (the workers' sweep of disconnected
/// mailboxes' caches).
pub async fn ids(conn: &mut AnyConnection) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows = sqlx::query("SELECT id FROM mailboxes")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| uuid_col(r, "id")).collect()
}

/// Every mailbox's id and secret envelope (R-V2's key rotation).
pub async fn secrets(conn: &mut AnyConnection) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, secret FROM mailboxes ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((uuid_col(r, "id")?, r.try_get("secret")?)))
        .collect()
}

pub async fn set_secret(
    conn: &mut AnyConnection,
    id: Uuid,
    secret: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE mailboxes SET secret = $1 WHERE id = $2")
        .bind(secret.to_string())
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// R-V1's "Resync": the mailbox is due at `at` (Unix seconds).
pub async fn set_next_run(conn: &mut AnyConnection, id: Uuid, at: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE mailboxes SET next_run_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
