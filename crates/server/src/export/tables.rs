//! The tables an export carries row by row, as they are stored: every
//! table but `records` (whose rows `records.rs` writes and validates as
//! records and tombstones) and `record_addresses` (an index rebuilt from
//! the records on import). docs/export.md says why for each table.
//!
//! The SQL here is assembled from the constant names below only.

use anyhow::{bail, Context};
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::Lines;

/// How a column is stored and written in an export line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
    OptText,
    /// An integer or NULL (absent from older exports: NULL).
    OptInt,
    /// Text holding a JSON document, written as that document.
    Json,
}

use Kind::*;

pub struct Table {
    pub name: &'static str,
    /// The `type` of its export lines.
    pub line: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    /// The primary key: the export's order and where each page starts.
    pub key: &'static [&'static str],
    /// Rows per query: one where a row can be tens of megabytes.
    pub page: i64,
    /// The migrations insert its rows (the counters): an import overwrites them.
    pub seeded: bool,
}

impl Table {
    /// The kind of one of its columns (the key's columns are among them,
    /// as the unit test checks).
    fn kind_of(&self, column: &str) -> Kind {
        self.columns
            .iter()
            .find(|(c, _)| *c == column)
            .map_or(Text, |(_, kind)| *kind)
    }
}

const PAGE: i64 = 500;

pub const TABLES: &[Table] = &[
    Table {
        name: "organization",
        line: "organization",
        columns: &[("id", Text), ("name", Text), ("created_at", Text)],
        key: &["id"],
        page: PAGE,
        seeded: false,
    },
    // The version sequence and the tracking-token numbers: new versions
    // and tokens continue above the imported ones.
    Table {
        name: "sequence_counter",
        line: "counter",
        columns: &[("name", Text), ("value", Int)],
        key: &["name"],
        page: PAGE,
        seeded: true,
    },
    Table {
        name: "tokens",
        line: "token",
        columns: &[("hash", Text), ("user_id", Text), ("created_at", Text)],
        key: &["hash"],
        page: PAGE,
        seeded: false,
    },
    // Web sign-in passwords (Argon2id PHC strings): users keep signing
    // in after a move. Sessions, sign-in links and failure counts are
    // not exported (docs/export.md).
    Table {
        name: "user_passwords",
        line: "user_password",
        columns: &[("user_id", Text), ("hash", Text), ("set_at", Text)],
        key: &["user_id"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "config",
        line: "config",
        columns: &[("kind", Text), ("key", Text), ("data", Json)],
        key: &["kind", "key"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "sync_clients",
        line: "sync_client",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("mailbox_user_id", Text),
            ("name", Text),
            ("is_primary", Int),
            ("created_at", Text),
            ("scanned_version", Int),
            ("full_scan", Int),
            ("time_checked_at", Text),
            ("current_batch", OptText),
            ("kinds", OptText),
            ("last_sync_at", OptText),
            ("last_batch_at", OptText),
            ("last_ack_at", OptText),
            ("last_ack_items", OptInt),
            ("problems", OptText),
        ],
        key: &["id"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "sync_entries",
        line: "sync_entry",
        columns: &[
            ("client_id", Text),
            ("record_id", Text),
            ("entity_set", Text),
            ("delivered_version", Int),
            ("manual", Int),
            ("excluded", Int),
            ("item_uid", OptText),
        ],
        key: &["client_id", "record_id"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "sync_pending",
        line: "sync_pending",
        columns: &[("client_id", Text), ("record_id", Text)],
        key: &["client_id", "record_id"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "sync_batches",
        line: "sync_batch",
        columns: &[
            ("id", Text),
            ("client_id", Text),
            ("created_at", Text),
            ("upto_version", Int),
        ],
        key: &["id"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "sync_batch_items",
        line: "sync_batch_item",
        columns: &[
            ("batch_id", Text),
            ("seq", Int),
            ("record_id", Text),
            ("entity_set", Text),
            ("action", Text),
            ("version", Int),
            ("removal", OptText),
        ],
        key: &["batch_id", "seq"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "sync_ops",
        line: "sync_op",
        columns: &[
            ("client_id", Text),
            ("op_id", Text),
            ("result", Json),
            ("created_at", Text),
        ],
        key: &["client_id", "op_id"],
        page: PAGE,
        seeded: false,
    },
    Table {
        name: "sync_conflicts",
        line: "sync_conflict",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("client_id", Text),
            ("record_id", Text),
            ("entity_set", Text),
            ("field", Text),
            ("crm_value", Json),
            ("mailbox_value", Json),
            ("kept", Text),
            ("created_at", Text),
        ],
        key: &["id"],
        page: PAGE,
        seeded: false,
    },
    // Mailboxes connected to the server (SPEC §15): their passwords only
    // as the encrypted envelope (R-V2), which the new server opens with the
    // same key file.
    Table {
        name: "mailboxes",
        line: "mailbox",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("name", Text),
            ("settings", Json),
            ("secret", Text),
            ("client_id", Text),
            ("created_at", Text),
            ("modified_at", Text),
            ("state", Text),
            ("next_run_at", Int),
            ("lease_token", Int),
            ("lease_holder", OptText),
            ("lease_expires_at", OptInt),
            ("last_success_at", OptText),
            ("last_error", OptText),
            ("last_counts", OptText),
            ("failures", Int),
        ],
        key: &["id"],
        page: PAGE,
        seeded: false,
    },
    // The raw message (base64, up to 25 MB decoded) is written as stored,
    // one row per query.
    Table {
        name: "email_messages",
        line: "email_message",
        columns: &[
            ("record_id", Text),
            ("owner_id", Text),
            ("message_id", Text),
            ("tracking_token", Text),
            ("raw", Text),
        ],
        key: &["record_id"],
        page: 1,
        seeded: false,
    },
];

/// The table whose lines have this `type`.
pub fn by_line(line: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.line == line)
}

#[derive(Debug, Clone)]
enum Cell {
    Int(i64),
    Text(String),
    Null,
    NullInt,
}

fn bind<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    cell: Cell,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match cell {
        Cell::Int(n) => q.bind(n),
        Cell::Text(s) => q.bind(s),
        Cell::Null => q.bind(None::<String>),
        // Typed: PostgreSQL refuses a text NULL for a BIGINT column.
        Cell::NullInt => q.bind(None::<i64>),
    }
}

fn read(row: &AnyRow, column: &str, kind: Kind) -> Result<Cell, sqlx::Error> {
    Ok(match kind {
        Int => Cell::Int(row.try_get(column)?),
        Text | Json => Cell::Text(row.try_get(column)?),
        OptText => row
            .try_get::<Option<String>, _>(column)?
            .map_or(Cell::Null, Cell::Text),
        OptInt => row
            .try_get::<Option<i64>, _>(column)?
            .map_or(Cell::NullInt, Cell::Int),
    })
}

fn column_list(t: &Table) -> String {
    t.columns
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$from, $from+1, ...` for `n` values.
fn params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes every row of `t`, in key order, a page at a time.
pub async fn export_table(
    conn: &mut AnyConnection,
    t: &Table,
    out: &mut Lines<impl std::io::Write>,
) -> anyhow::Result<()> {
    let order = t.key.join(", ");
    let first = format!(
        "SELECT {} FROM {} ORDER BY {order} LIMIT $1",
        column_list(t),
        t.name
    );
    let next = format!(
        "SELECT {} FROM {} WHERE ({order}) > ({}) ORDER BY {order} LIMIT ${}",
        column_list(t),
        t.name,
        params(1, t.key.len()),
        t.key.len() + 1
    );
    let mut after: Option<Vec<Cell>> = None;
    loop {
        let mut q = sqlx::query(if after.is_some() { &next } else { &first });
        for cell in after.take().unwrap_or_default() {
            q = bind(q, cell);
        }
        let rows = q.bind(t.page).fetch_all(&mut *conn).await?;
        for row in &rows {
            let mut line = Map::new();
            line.insert("type".into(), t.line.into());
            for (column, kind) in t.columns {
                let value = match read(row, column, *kind)? {
                    Cell::Int(n) => Value::from(n),
                    Cell::Text(s) if *kind == Json => serde_json::from_str(&s).with_context(|| {
                        format!("{}.{column} holds text that is not JSON; the database was changed outside crmsync", t.name)
                    })?,
                    Cell::Text(s) => Value::String(s),
                    Cell::Null | Cell::NullInt => Value::Null,
                };
                line.insert((*column).into(), value);
            }
            out.write(&Value::Object(line))?;
        }
        let Some(last) = rows.last().filter(|_| rows.len() as i64 == t.page) else {
            return Ok(());
        };
        after = Some(
            t.key
                .iter()
                .map(|k| read(last, k, t.kind_of(k)))
                .collect::<Result<_, _>>()?,
        );
    }
}

/// Takes one column's value out of an export line, checked against its kind.
fn cell(line: &mut Map<String, Value>, column: &str, kind: Kind) -> anyhow::Result<Cell> {
    let value = line.remove(column);
    Ok(match (kind, value) {
        (Int, Some(Value::Number(n))) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or_default()),
        (Int, _) => bail!("'{column}' must be an integer"),
        (OptInt, Some(Value::Number(n))) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or_default()),
        (OptInt, None | Some(Value::Null)) => Cell::NullInt,
        (OptInt, _) => bail!("'{column}' must be an integer or null"),
        (Text | OptText, Some(Value::String(s))) => Cell::Text(s),
        (OptText, None | Some(Value::Null)) => Cell::Null,
        (Text | OptText, _) => bail!("'{column}' must be a string"),
        (Json, Some(v)) => Cell::Text(v.to_string()),
        (Json, None) => bail!("'{column}' is missing"),
    })
}

/// Inserts the row an export line describes.
pub async fn import_row(
    conn: &mut AnyConnection,
    t: &Table,
    mut line: Map<String, Value>,
) -> anyhow::Result<()> {
    line.remove("type");
    let cells: Vec<Cell> = t
        .columns
        .iter()
        .map(|(column, kind)| cell(&mut line, column, *kind))
        .collect::<anyhow::Result<_>>()?;
    if let Some(unknown) = line.keys().next() {
        bail!(
            "'{unknown}' is not a column of {}; was the export written by a newer crmsync?",
            t.name
        );
    }
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        t.name,
        column_list(t),
        params(1, t.columns.len())
    );
    if t.seeded {
        let updates: Vec<String> = t
            .columns
            .iter()
            .filter(|(c, _)| !t.key.contains(c))
            .map(|(c, _)| format!("{c} = excluded.{c}"))
            .collect();
        sql.push_str(&format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            t.key.join(", "),
            updates.join(", ")
        ));
    }
    let mut q = sqlx::query(&sql);
    for c in cells {
        q = bind(q, c);
    }
    q.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_o2_optional_columns_absent_from_older_exports_import_as_null() {
        let mut line = Map::new();
        assert!(matches!(
            cell(&mut line, "last_ack_items", OptInt),
            Ok(Cell::NullInt)
        ));
        assert!(matches!(
            cell(&mut line, "last_sync_at", OptText),
            Ok(Cell::Null)
        ));
        line.insert("last_ack_items".into(), Value::from(3));
        assert!(matches!(
            cell(&mut line, "last_ack_items", OptInt),
            Ok(Cell::Int(3))
        ));
        line.insert("last_ack_items".into(), Value::from("three"));
        assert!(cell(&mut line, "last_ack_items", OptInt).is_err());
    }

    #[test]
    fn the_catalog_is_consistent() {
        let mut names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        let mut lines: Vec<&str> = TABLES.iter().map(|t| t.line).collect();
        names.sort();
        names.dedup();
        lines.sort();
        lines.dedup();
        assert_eq!(names.len(), TABLES.len(), "a table is listed twice");
        assert_eq!(lines.len(), TABLES.len(), "two tables share a line type");
        for t in TABLES {
            assert!(!t.key.is_empty() && t.page >= 1, "{}", t.name);
            for k in t.key {
                assert!(
                    t.columns.iter().any(|(c, _)| c == k),
                    "{}: key column {k} is not among its columns",
                    t.name
                );
            }
            for reserved in ["record", "tombstone", "crmsync_export", "end"] {
                assert_ne!(t.line, reserved, "{}", t.name);
            }
        }
    }
}
