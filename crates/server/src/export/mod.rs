//! `crmsync admin export|import` (R-O2): the whole organization as JSON
//! Lines, keeping every id, version, tombstone and token hash, the sync
//! clients with their subscriptions, and the tracked messages with their
//! raw bodies, so agents keep working against the new server without
//! registering again and without duplicates. docs/export.md lists what
//! an export holds.
//!
//! The file is a header line, the organization's lines, and an end line
//! with the number of lines before it, so a file cut short is refused. It
//! is written from one read transaction (a consistent snapshot) a page at
//! a time, and read a line at a time: a large organization never sits in
//! memory whole.

mod records;
pub(crate) use records::record_from_line;
mod tables;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{BufRead, Write};

use crate::db::DbKind;
use crate::store::Store;

/// The version of the export format this crmsync writes and reads.
/// Format 1 (no header line) held neither sync clients nor raw messages.
const FORMAT: i64 = 2;
const HEADER: &str = "crmsync_export";
const END: &str = "end";

/// Writes lines and counts them.
struct Lines<W: Write> {
    out: W,
    count: usize,
}

impl<W: Write> Lines<W> {
    fn write(&mut self, line: &Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }
}

/// Writes the whole organization; returns how many lines.
pub async fn export(store: &Store, out: &mut impl Write) -> anyhow::Result<usize> {
    if store.organization().await?.is_none() {
        bail!("this database has no organization to export");
    }
    let snapshot = match store.kind {
        DbKind::Sqlite => "BEGIN",
        DbKind::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    };
    let mut tx = store.pool.begin_with(snapshot).await?;
    let mut lines = Lines { out, count: 0 };
    lines.write(&json!({"type": HEADER, "format": FORMAT}))?;
    for table in tables::TABLES {
        tables::export_table(&mut tx, table, &mut lines).await?;
    }
    records::export_records(&mut tx, &mut lines).await?;
    let count = lines.count;
    lines.write(&json!({"type": END, "lines": count}))?;
    lines.out.flush()?;
    tx.rollback().await?;
    Ok(lines.count)
}

/// The first line must be this format's header.
fn check_header(line: &Value) -> anyhow::Result<()> {
    match line.get("type").and_then(Value::as_str) {
        Some(HEADER) => match line.get("format").and_then(Value::as_i64) {
            Some(FORMAT) => Ok(()),
            Some(newer) if newer > FORMAT => bail!(
                "this export has format {newer}, written by a newer crmsync (this one reads format {FORMAT}); import it with that version"
            ),
            _ => bail!("the header's 'format' is not a known export format (this crmsync reads format {FORMAT})"),
        },
        Some("organization") => bail!(
            "this export was written by an earlier crmsync, whose exports leave out the sync clients and the tracked messages' raw bodies \
             (agents would register again and receive everything anew); run `crmsync admin export` with this version on the database it came from, and import that file"
        ),
        _ => bail!("this is not a crmsync export: its first line is not the export header"),
    }
}

/// Applies one line inside the import's transaction.
async fn apply(conn: &mut sqlx::AnyConnection, line: Value) -> anyhow::Result<()> {
    let kind = line
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "record" => records::import_record(conn, &line).await,
        "tombstone" => records::import_tombstone(conn, line).await,
        _ => match (tables::by_line(&kind), line) {
            (Some(table), Value::Object(fields)) => tables::import_row(conn, table, fields).await,
            _ => bail!("unknown line type {kind:?}"),
        },
    }
}

/// Loads an export into an empty database, all or nothing; returns how
/// many lines it read.
pub async fn import(store: &Store, input: impl BufRead) -> anyhow::Result<usize> {
    if let Some((_, name)) = store.organization().await? {
        bail!("this database already holds the organization '{name}'; import into a new, empty database");
    }
    let mut tx = store.begin().await?;
    let mut count = 0;
    let mut ended = false;
    for (n, line) in input.lines().enumerate() {
        let at = n + 1;
        let line = line.with_context(|| format!("line {at}: cannot read; nothing was imported"))?;
        if line.trim().is_empty() {
            continue;
        }
        let step = async {
            if ended {
                bail!(
                    "there is more after the end line; the file was changed after it was written"
                );
            }
            let v: Value = serde_json::from_str(&line).context("not valid JSON")?;
            if count == 0 {
                return check_header(&v);
            }
            if v.get("type").and_then(Value::as_str) == Some(END) {
                if v.get("lines").and_then(Value::as_u64) != Some(count as u64) {
                    bail!("the end line counts {} lines, the file holds {count}; the file was changed after it was written", v["lines"]);
                }
                ended = true;
                return Ok(());
            }
            apply(&mut tx, v).await
        };
        step.await
            .with_context(|| format!("line {at}: cannot import; nothing was imported"))?;
        count += 1;
    }
    if count == 0 {
        bail!("the file is empty; it is not a crmsync export");
    }
    if !ended {
        bail!("the export ends after {count} lines without its end line: it was cut short (an interrupted export or copy); nothing was imported; export again");
    }
    tx.commit().await?;
    Ok(count)
}
