//! SQL for the sync tables: clients, entries, pending, batches, push
//! operations and conflicts. Static statements, bound values.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crmsync_core::kind::MailboxKind;
use crmsync_core::EntitySet;

fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(
        format!("stored {what} is not valid; the database was changed outside crmsync").into(),
    )
}

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(&row.try_get::<String, _>(col)?).map_err(|_| corrupt(col))
}

/// A registered sync client (R-C1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: Uuid,
    pub user_id: Uuid,
    pub mailbox_user_id: Uuid,
    pub name: String,
    pub is_primary: bool,
    pub scanned_version: i64,
    pub full_scan: bool,
    pub time_checked_at: String,
    pub current_batch: Option<Uuid>,
    /// The kinds of collection its mailbox holds (SPEC §13), sorted.
    pub kinds: Vec<MailboxKind>,
    /// When it last prepared a sync (R-W6: its last synchronization).
    pub last_sync_at: Option<String>,
    /// When a prepare last delivered a batch.
    pub last_batch_at: Option<String>,
    /// When it last acknowledged deliveries, and how many.
    pub last_ack_at: Option<String>,
    pub last_ack_items: Option<i64>,
    /// R-W6: what the client last reported it cannot read, with the fix.
    pub problems: Vec<ClientProblem>,
}

/// One item of a client's mailbox that cannot be read (R-W6).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientProblem {
    /// Where it is: the collection or folder and the item's name in it.
    pub item: String,
    /// What is wrong, and the fix.
    pub problem: String,
}

impl Client {
    pub fn is_delegated(&self) -> bool {
        self.user_id != self.mailbox_user_id
    }

    /// Whether its mailbox has a collection for records of `set`.
    pub fn holds(&self, set: EntitySet) -> bool {
        MailboxKind::of_set(set).is_some_and(|k| self.kinds.contains(&k))
    }
}

const CLIENT_COLUMNS: &str =
    "id, user_id, mailbox_user_id, name, is_primary, scanned_version, full_scan, time_checked_at, current_batch, kinds, last_sync_at, last_batch_at, last_ack_at, last_ack_items, problems";

/// Stored as a sorted comma-separated list; NULL when the mailbox holds
/// every kind (what a client that never said is taken to hold).
fn kinds_column(kinds: &[MailboxKind]) -> Option<String> {
    (kinds != MailboxKind::ALL).then(|| {
        kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn kinds_from_column(stored: Option<String>) -> Result<Vec<MailboxKind>, sqlx::Error> {
    match stored {
        None => Ok(MailboxKind::ALL.to_vec()),
        Some(s) if s.is_empty() => Ok(Vec::new()),
        Some(s) => {
            let names: Vec<&str> = s.split(',').collect();
            MailboxKind::parse_list(&names).map_err(|_| corrupt("kinds"))
        }
    }
}

fn client_from_row(row: &AnyRow) -> Result<Client, sqlx::Error> {
    Ok(Client {
        id: uuid_col(row, "id")?,
        user_id: uuid_col(row, "user_id")?,
        mailbox_user_id: uuid_col(row, "mailbox_user_id")?,
        name: row.try_get("name")?,
        is_primary: row.try_get::<i64, _>("is_primary")? == 1,
        scanned_version: row.try_get("scanned_version")?,
        full_scan: row.try_get::<i64, _>("full_scan")? == 1,
        time_checked_at: row.try_get("time_checked_at")?,
        current_batch: row
            .try_get::<Option<String>, _>("current_batch")?
            .map(|b| Uuid::parse_str(&b).map_err(|_| corrupt("current_batch")))
            .transpose()?,
        kinds: kinds_from_column(row.try_get("kinds")?)?,
        last_sync_at: row.try_get("last_sync_at")?,
        last_batch_at: row.try_get("last_batch_at")?,
        last_ack_at: row.try_get("last_ack_at")?,
        last_ack_items: row.try_get("last_ack_items")?,
        problems: match row.try_get::<Option<String>, _>("problems")? {
            Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("problems"))?,
            None => Vec::new(),
        },
    })
}

pub async fn get_client(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Client>, sqlx::Error> {
    let sql = format!("SELECT {CLIENT_COLUMNS} FROM sync_clients WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(client_from_row).transpose()
}

/// The client, the committed version and the number of unacknowledged
/// deliveries, in one round trip (the "nothing changed" path of prepare).
pub async fn client_status(
    conn: &mut AnyConnection,
    id: Uuid,
) -> Result<Option<(Client, i64, i64)>, sqlx::Error> {
    let sql = format!(
        "SELECT {CLIENT_COLUMNS}, (SELECT value FROM sequence_counter WHERE name = 'version') AS upto, \
         (SELECT COUNT(*) FROM sync_pending p WHERE p.client_id = sync_clients.id) AS pending \
         FROM sync_clients WHERE id = $1"
    );
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok((
            client_from_row(&r)?,
            r.try_get("upto")?,
            r.try_get("pending")?,
        ))
    })
    .transpose()
}

pub async fn find_client(
    conn: &mut AnyConnection,
    user: Uuid,
    mailbox_user: Uuid,
    name: &str,
) -> Result<Option<Client>, sqlx::Error> {
    let sql = format!("SELECT {CLIENT_COLUMNS} FROM sync_clients WHERE user_id = $1 AND mailbox_user_id = $2 AND name = $3");
    let row = sqlx::query(&sql)
        .bind(user.to_string())
        .bind(mailbox_user.to_string())
        .bind(name.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(client_from_row).transpose()
}

/// Clients run by or working on the mailbox of `user`.
pub async fn clients_of(conn: &mut AnyConnection, user: Uuid) -> Result<Vec<Client>, sqlx::Error> {
    let sql = format!(
        "SELECT {CLIENT_COLUMNS} FROM sync_clients WHERE user_id = $1 OR mailbox_user_id = $1 ORDER BY created_at, id"
    );
    let rows = sqlx::query(&sql)
        .bind(user.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(client_from_row).collect()
}

pub async fn has_primary(
    conn: &mut AnyConnection,
    mailbox_user: Uuid,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sync_clients WHERE mailbox_user_id = $1 AND is_primary = 1",
    )
    .bind(mailbox_user.to_string())
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

pub async fn insert_client(
    conn: &mut AnyConnection,
    c: &Client,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sync_clients (id, user_id, mailbox_user_id, name, is_primary, created_at, scanned_version, full_scan, time_checked_at, current_batch, kinds) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10)",
    )
    .bind(c.id.to_string())
    .bind(c.user_id.to_string())
    .bind(c.mailbox_user_id.to_string())
    .bind(c.name.clone())
    .bind(c.is_primary as i64)
    .bind(at.to_string())
    .bind(c.scanned_version)
    .bind(c.full_scan as i64)
    .bind(c.time_checked_at.clone())
    .bind(kinds_column(&c.kinds))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn rename_client(
    conn: &mut AnyConnection,
    c: Uuid,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sync_clients SET name = $1 WHERE id = $2")
        .bind(name.to_string())
        .bind(c.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// SPEC §13: the client's mailbox now holds `kinds`. What it held of a kind
/// it no longer has is forgotten (R-S9 exclusions stay), and the next
/// prepare evaluates the filters again, so a kind added later gets its
/// records delivered, never taken as delivered already.
pub async fn set_kinds(
    conn: &mut AnyConnection,
    c: &Client,
    kinds: &[MailboxKind],
) -> Result<(), sqlx::Error> {
    for gone in c.kinds.iter().filter(|k| !kinds.contains(k)) {
        for set in gone.sets() {
            sqlx::query(
                "DELETE FROM sync_entries WHERE client_id = $1 AND entity_set = $2 AND excluded = 0",
            )
            .bind(c.id.to_string())
            .bind(set.as_str())
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::query("UPDATE sync_clients SET kinds = $2, full_scan = 1 WHERE id = $1")
        .bind(c.id.to_string())
        .bind(kinds_column(kinds))
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves the primary role: demote every client of the mailbox user, then
/// promote one. The partial unique index keeps it to one even if two
/// requests race.
pub async fn set_primary(
    conn: &mut AnyConnection,
    mailbox_user: Uuid,
    client: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sync_clients SET is_primary = 0 WHERE mailbox_user_id = $1 AND is_primary = 1",
    )
    .bind(mailbox_user.to_string())
    .execute(&mut *conn)
    .await?;
    // The new primary synchronizes contacts, appointments and tasks, which
    // it did not receive as a secondary: its next prepare evaluates every
    // filter (R-C1, R-C3).
    sqlx::query("UPDATE sync_clients SET is_primary = 1, full_scan = 1 WHERE id = $1")
        .bind(client.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets a client that no longer exists (a disconnected mailbox, R-V1):
/// its subscription, batches and stored push answers. The conflicts it
/// logged stay (R-F6: nothing disappears silently). When it was the
/// primary, the mailbox user's oldest other client takes the role, so the
/// user keeps one (R-C1).
pub async fn retire_client(conn: &mut AnyConnection, c: &Client) -> Result<(), sqlx::Error> {
    drop_batches(&mut *conn, c.id).await?;
    for sql in [
        "DELETE FROM sync_pending WHERE client_id = $1",
        "DELETE FROM sync_entries WHERE client_id = $1",
        "DELETE FROM sync_ops WHERE client_id = $1",
        "DELETE FROM sync_clients WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(c.id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    if c.is_primary {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT id FROM sync_clients WHERE mailbox_user_id = $1 ORDER BY created_at, id LIMIT 1",
        )
        .bind(c.mailbox_user_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(next) = next.and_then(|n| Uuid::parse_str(&n).ok()) {
            set_primary(conn, c.mailbox_user_id, next).await?;
        }
    }
    Ok(())
}

/// After a prepare: what has been considered, the batch now current, and
/// when (the client's last synchronization).
pub async fn advance_client(
    conn: &mut AnyConnection,
    c: Uuid,
    scanned: i64,
    time_checked_at: &str,
    batch: Option<Uuid>,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sync_clients SET scanned_version = $2, full_scan = 0, time_checked_at = $3, current_batch = $4, last_sync_at = $5, \
         last_batch_at = COALESCE($6, last_batch_at) WHERE id = $1")
        .bind(c.to_string())
        .bind(scanned)
        .bind(time_checked_at.to_string())
        .bind(batch.map(|b| b.to_string()))
        .bind(now.to_string())
        .bind(batch.map(|_| now.to_string()))
        .execute(conn)
        .await?;
    Ok(())
}

/// A no-change prepare: only the time of the last synchronization.
pub async fn record_sync(conn: &mut AnyConnection, c: Uuid, at: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sync_clients SET last_sync_at = $2 WHERE id = $1")
        .bind(c.to_string())
        .bind(at.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// R-W6: replaces what the client reported it cannot read.
pub async fn set_problems(
    conn: &mut AnyConnection,
    c: Uuid,
    problems: &[ClientProblem],
) -> Result<(), sqlx::Error> {
    let text = serde_json::to_string(problems).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query("UPDATE sync_clients SET problems = $2 WHERE id = $1")
        .bind(c.to_string())
        .bind(text)
        .execute(conn)
        .await?;
    Ok(())
}

/// After an acknowledgement: when, and how many items it confirmed.
pub async fn record_ack(
    conn: &mut AnyConnection,
    c: Uuid,
    at: &str,
    items: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sync_clients SET last_ack_at = $2, last_ack_items = $3 WHERE id = $1")
        .bind(c.to_string())
        .bind(at.to_string())
        .bind(items)
        .execute(conn)
        .await?;
    Ok(())
}

/// After a change of filters, settings or privileges: the clients (of one
/// mailbox user, or all) evaluate everything again at their next prepare.
pub async fn reevaluate(
    conn: &mut AnyConnection,
    mailbox_user: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    match mailbox_user {
        Some(u) => {
            sqlx::query("UPDATE sync_clients SET full_scan = 1 WHERE mailbox_user_id = $1")
                .bind(u.to_string())
                .execute(conn)
                .await?
        }
        None => {
            sqlx::query("UPDATE sync_clients SET full_scan = 1")
                .execute(conn)
                .await?
        }
    };
    Ok(())
}

/// After a change of which fields reach mailboxes (R-F1, R-F3): every held
/// record of the set is delivered again as an update.
pub async fn redeliver_set(conn: &mut AnyConnection, set: EntitySet) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sync_entries SET delivered_version = 0 WHERE entity_set = $1 AND excluded = 0",
    )
    .bind(set.as_str())
    .execute(&mut *conn)
    .await?;
    reevaluate(conn, None).await
}

/// R-S9 reset: forget the exclusions and evaluate everything again.
pub async fn reset_client(conn: &mut AnyConnection, c: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sync_entries WHERE client_id = $1 AND excluded = 1")
        .bind(c.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE sync_clients SET full_scan = 1 WHERE id = $1")
        .bind(c.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// R-S1: what the client's mailbox holds of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub delivered_version: i64,
    pub manual: bool,
    pub excluded: bool,
}

pub async fn entries_for(
    conn: &mut AnyConnection,
    client: Uuid,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Entry>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let placeholders: Vec<String> = (2..=ids.len() + 1).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT record_id, delivered_version, manual, excluded FROM sync_entries WHERE client_id = $1 AND record_id IN ({})",
        placeholders.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(client.to_string());
    for id in ids {
        q = q.bind(id.to_string());
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok((
                uuid_col(r, "record_id")?,
                Entry {
                    delivered_version: r.try_get("delivered_version")?,
                    manual: r.try_get::<i64, _>("manual")? == 1,
                    excluded: r.try_get::<i64, _>("excluded")? == 1,
                },
            ))
        })
        .collect()
}

pub async fn entry(
    conn: &mut AnyConnection,
    client: Uuid,
    id: Uuid,
) -> Result<Option<Entry>, sqlx::Error> {
    Ok(entries_for(conn, client, &[id]).await?.remove(&id))
}

/// Record ids of all of the client's entries (held or excluded).
pub async fn entry_ids(conn: &mut AnyConnection, client: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT record_id FROM sync_entries WHERE client_id = $1 ORDER BY record_id")
            .bind(client.to_string())
            .fetch_all(conn)
            .await?;
    rows.iter().map(|r| uuid_col(r, "record_id")).collect()
}

pub async fn entry_by_uid(
    conn: &mut AnyConnection,
    client: Uuid,
    uid: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let id: Option<String> =
        sqlx::query_scalar("SELECT record_id FROM sync_entries WHERE client_id = $1 AND item_uid = $2 AND excluded = 0")
            .bind(client.to_string())
            .bind(uid.to_string())
            .fetch_optional(conn)
            .await?;
    id.map(|i| Uuid::parse_str(&i).map_err(|_| corrupt("record_id")))
        .transpose()
}

#[allow(clippy::too_many_arguments)]
pub async fn put_entry(
    conn: &mut AnyConnection,
    client: Uuid,
    id: Uuid,
    set: EntitySet,
    version: i64,
    manual: bool,
    excluded: bool,
    uid: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sync_entries (client_id, record_id, entity_set, delivered_version, manual, excluded, item_uid) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (client_id, record_id) DO UPDATE SET \
         delivered_version = excluded.delivered_version, manual = excluded.manual, excluded = excluded.excluded, \
         item_uid = COALESCE(excluded.item_uid, sync_entries.item_uid)",
    )
    .bind(client.to_string())
    .bind(id.to_string())
    .bind(set.as_str())
    .bind(version)
    .bind(manual as i64)
    .bind(excluded as i64)
    .bind(uid.map(str::to_string))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_entry(
    conn: &mut AnyConnection,
    client: Uuid,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sync_entries WHERE client_id = $1 AND record_id = $2")
        .bind(client.to_string())
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// How many records of each set the client's mailbox holds (R-T5's
/// denominators).
pub async fn held_by_set(
    conn: &mut AnyConnection,
    client: Uuid,
) -> Result<Vec<(EntitySet, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT entity_set, COUNT(*) AS n FROM sync_entries WHERE client_id = $1 AND excluded = 0 GROUP BY entity_set",
    )
    .bind(client.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let set = r
                .try_get::<String, _>("entity_set")?
                .parse()
                .map_err(|_| corrupt("entity_set"))?;
            Ok((set, r.try_get("n")?))
        })
        .collect()
}

pub async fn pending_ids(conn: &mut AnyConnection, client: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows = sqlx::query("SELECT record_id FROM sync_pending WHERE client_id = $1")
        .bind(client.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| uuid_col(r, "record_id")).collect()
}

pub async fn set_pending(
    conn: &mut AnyConnection,
    client: Uuid,
    id: Uuid,
    pending: bool,
) -> Result<(), sqlx::Error> {
    let sql = if pending {
        "INSERT INTO sync_pending (client_id, record_id) VALUES ($1, $2) ON CONFLICT (client_id, record_id) DO NOTHING"
    } else {
        "DELETE FROM sync_pending WHERE client_id = $1 AND record_id = $2"
    };
    sqlx::query(sql)
        .bind(client.to_string())
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// One delivery of a batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchItem {
    pub id: Uuid,
    pub set: EntitySet,
    pub action: String,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal: Option<String>,
}

pub async fn drop_batches(conn: &mut AnyConnection, client: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sync_batch_items WHERE batch_id IN (SELECT id FROM sync_batches WHERE client_id = $1)")
        .bind(client.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM sync_batches WHERE client_id = $1")
        .bind(client.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_batch(
    conn: &mut AnyConnection,
    batch: Uuid,
    client: Uuid,
    upto: i64,
    items: &[BatchItem],
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO sync_batches (id, client_id, created_at, upto_version) VALUES ($1, $2, $3, $4)")
        .bind(batch.to_string())
        .bind(client.to_string())
        .bind(at.to_string())
        .bind(upto)
        .execute(&mut *conn)
        .await?;
    // Multi-row inserts: one round trip per 500 items, not per item.
    for (chunk_no, chunk) in items.chunks(500).enumerate() {
        let rows: Vec<String> = (0..chunk.len())
            .map(|k| {
                let b = k * 7;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO sync_batch_items (batch_id, seq, record_id, entity_set, action, version, removal) VALUES {}",
            rows.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (k, item) in chunk.iter().enumerate() {
            q = q
                .bind(batch.to_string())
                .bind((chunk_no * 500 + k) as i64 + 1)
                .bind(item.id.to_string())
                .bind(item.set.as_str())
                .bind(item.action.clone())
                .bind(item.version)
                .bind(item.removal.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Marks exactly `pending` of `considered` as delivered-but-unacknowledged
/// for the client, in two statements.
pub async fn set_pending_many(
    conn: &mut AnyConnection,
    client: Uuid,
    considered: &[Uuid],
    pending: &[Uuid],
) -> Result<(), sqlx::Error> {
    if !considered.is_empty() {
        let placeholders: Vec<String> = (2..=considered.len() + 1)
            .map(|i| format!("${i}"))
            .collect();
        let sql = format!(
            "DELETE FROM sync_pending WHERE client_id = $1 AND record_id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(client.to_string());
        for id in considered {
            q = q.bind(id.to_string());
        }
        q.execute(&mut *conn).await?;
    }
    if !pending.is_empty() {
        let rows: Vec<String> = (0..pending.len())
            .map(|k| format!("($1, ${})", k + 2))
            .collect();
        let sql = format!(
            "INSERT INTO sync_pending (client_id, record_id) VALUES {}",
            rows.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(client.to_string());
        for id in pending {
            q = q.bind(id.to_string());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

fn item_from_row(r: &AnyRow) -> Result<(i64, BatchItem), sqlx::Error> {
    Ok((
        r.try_get("seq")?,
        BatchItem {
            id: uuid_col(r, "record_id")?,
            set: r
                .try_get::<String, _>("entity_set")?
                .parse()
                .map_err(|_| corrupt("entity_set"))?,
            action: r.try_get("action")?,
            version: r.try_get("version")?,
            removal: r.try_get("removal")?,
        },
    ))
}

/// A page of a batch's items after `cursor` (a sequence number).
pub async fn batch_items(
    conn: &mut AnyConnection,
    batch: Uuid,
    cursor: i64,
    limit: i64,
) -> Result<Vec<(i64, BatchItem)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, record_id, entity_set, action, version, removal FROM sync_batch_items \
         WHERE batch_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(batch.to_string())
    .bind(cursor)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(item_from_row).collect()
}

pub async fn batch_item(
    conn: &mut AnyConnection,
    batch: Uuid,
    id: Uuid,
) -> Result<Option<BatchItem>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT seq, record_id, entity_set, action, version, removal FROM sync_batch_items WHERE batch_id = $1 AND record_id = $2",
    )
    .bind(batch.to_string())
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.as_ref()
        .map(|r| item_from_row(r).map(|(_, i)| i))
        .transpose()
}

/// The stored answer to a push operation already applied.
pub async fn op_result(
    conn: &mut AnyConnection,
    client: Uuid,
    op_id: &str,
) -> Result<Option<Value>, sqlx::Error> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT result FROM sync_ops WHERE client_id = $1 AND op_id = $2")
            .bind(client.to_string())
            .bind(op_id.to_string())
            .fetch_optional(conn)
            .await?;
    text.map(|t| serde_json::from_str(&t).map_err(|_| corrupt("sync op result")))
        .transpose()
}

pub async fn save_op_result(
    conn: &mut AnyConnection,
    client: Uuid,
    op_id: &str,
    result: &Value,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sync_ops (client_id, op_id, result, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(client.to_string())
    .bind(op_id.to_string())
    .bind(result.to_string())
    .bind(at.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// R-F6: one discarded value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConflictRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub client_id: Uuid,
    pub record_id: Uuid,
    pub set: EntitySet,
    pub field: String,
    pub crm_value: Value,
    pub mailbox_value: Value,
    pub kept: String,
    pub at: String,
}

pub async fn insert_conflict(conn: &mut AnyConnection, c: &ConflictRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sync_conflicts (id, user_id, client_id, record_id, entity_set, field, crm_value, mailbox_value, kept, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(c.id.to_string())
    .bind(c.user_id.to_string())
    .bind(c.client_id.to_string())
    .bind(c.record_id.to_string())
    .bind(c.set.as_str())
    .bind(c.field.clone())
    .bind(c.crm_value.to_string())
    .bind(c.mailbox_value.to_string())
    .bind(c.kept.clone())
    .bind(c.at.clone())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn conflicts_of(
    conn: &mut AnyConnection,
    user: Uuid,
    record: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ConflictRow>, sqlx::Error> {
    let rows = match record {
        Some(r) => sqlx::query(
            "SELECT * FROM sync_conflicts WHERE user_id = $1 AND record_id = $2 ORDER BY created_at DESC, id LIMIT $3",
        )
        .bind(user.to_string())
        .bind(r.to_string())
        .bind(limit)
        .fetch_all(conn)
        .await?,
        None => sqlx::query("SELECT * FROM sync_conflicts WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT $2")
            .bind(user.to_string())
            .bind(limit)
            .fetch_all(conn)
            .await?,
    };
    rows.iter()
        .map(|r| {
            let json = |c: &str| -> Result<Value, sqlx::Error> {
                serde_json::from_str(&r.try_get::<String, _>(c)?).map_err(|_| corrupt(c))
            };
            Ok(ConflictRow {
                id: uuid_col(r, "id")?,
                user_id: uuid_col(r, "user_id")?,
                client_id: uuid_col(r, "client_id")?,
                record_id: uuid_col(r, "record_id")?,
                set: r
                    .try_get::<String, _>("entity_set")?
                    .parse()
                    .map_err(|_| corrupt("entity_set"))?,
                field: r.try_get("field")?,
                crm_value: json("crm_value")?,
                mailbox_value: json("mailbox_value")?,
                kept: r.try_get("kept")?,
                at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// What each of a user's clients holds (R-S1, R-S8, R-S9), by client id:
/// records in its mailbox, of those tracked by hand, and records deleted
/// there that are not sent again. One query for all the user's clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryCounts {
    pub held: i64,
    pub manual: i64,
    pub excluded: i64,
}

pub async fn entry_counts_of_user(
    conn: &mut AnyConnection,
    user: Uuid,
) -> Result<std::collections::HashMap<Uuid, EntryCounts>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT e.client_id, \
         COUNT(CASE WHEN e.excluded = 0 THEN 1 END) AS held, \
         COUNT(CASE WHEN e.excluded = 0 AND e.manual = 1 THEN 1 END) AS manual, \
         COUNT(CASE WHEN e.excluded = 1 THEN 1 END) AS excluded \
         FROM sync_entries e JOIN sync_clients c ON c.id = e.client_id \
         WHERE c.user_id = $1 GROUP BY e.client_id",
    )
    .bind(user.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                uuid_col(r, "client_id")?,
                EntryCounts {
                    held: r.try_get("held")?,
                    manual: r.try_get("manual")?,
                    excluded: r.try_get("excluded")?,
                },
            ))
        })
        .collect()
}
