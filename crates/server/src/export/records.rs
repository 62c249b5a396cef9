//! Records and tombstones in an export: written in version order a page
//! at a time, and validated field by field on import as the API would,
//! so a hand-edited export cannot plant a record the API would refuse.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;
use uuid::Uuid;

use crmsync_core::record::{apply_input, parse_input};
use crmsync_core::{EntitySet, Record};

use super::Lines;
use crate::store::{self, StoredRecord, Tombstone};

const PAGE: i64 = 500;

fn text(v: &Value, key: &str) -> anyhow::Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("'{key}' is missing or not a string"))
}

fn uuid(v: &Value, key: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(&text(v, key)?).with_context(|| format!("'{key}' is not a UUID"))
}

/// Writes every record (`record` lines) and tombstone (`tombstone` lines).
pub async fn export_records(
    conn: &mut AnyConnection,
    out: &mut Lines<impl std::io::Write>,
) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        let page = store::records_page(conn, after, PAGE).await?;
        for row in &page {
            let line = match row {
                StoredRecord::Live(r) => {
                    let mut v = r.to_json();
                    v["type"] = json!("record");
                    v["entity_set"] = json!(r.set);
                    v
                }
                StoredRecord::Deleted(t) => {
                    let mut v = json!(t);
                    v["type"] = json!("tombstone");
                    v
                }
            };
            out.write(&line)?;
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => after = Some(last.position()),
            _ => return Ok(()),
        }
    }
}

/// Rebuilds a record from its export line, validating its fields as the API would.
pub(crate) fn record_from_line(v: &Value) -> anyhow::Result<Record> {
    let set: EntitySet = text(v, "entity_set")?.parse()?;
    let mut fields: Map<String, Value> = v.as_object().cloned().unwrap_or_default();
    for k in ["type", "entity_set"]
        .into_iter()
        .chain(crmsync_core::record::COMMON_FIELDS)
    {
        fields.remove(k);
    }
    let input = parse_input(set, &Value::Object(fields))?;
    let state = text(v, "state")?;
    if !set.states().contains(&state.as_str()) {
        bail!("state '{state}' is not a state of {set}");
    }
    Ok(Record {
        id: uuid(v, "id")?,
        set,
        version: v
            .get("version")
            .and_then(Value::as_i64)
            .context("'version' is missing")?,
        owner_id: uuid(v, "owner_id")?,
        state,
        created_at: text(v, "created_at")?,
        modified_at: text(v, "modified_at")?,
        fields: apply_input(set, None, &input)?,
    })
}

/// Inserts a `record` line's record, with its derived keys: a user's
/// unique email, the search text, the series link and the address index.
pub async fn import_record(conn: &mut AnyConnection, v: &Value) -> anyhow::Result<()> {
    crate::records::insert_as_is(conn, &record_from_line(v)?).await
}

/// Inserts a `tombstone` line's tombstone.
pub async fn import_tombstone(conn: &mut AnyConnection, mut v: Value) -> anyhow::Result<()> {
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
    }
    let t: Tombstone = serde_json::from_value(v).context("not a tombstone")?;
    store::insert_tombstone(conn, &t).await?;
    Ok(())
}
