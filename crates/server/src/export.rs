//! `crmsync admin export|import` (R-O2): the whole organization as JSON
//! Lines, keeping every id, version, tombstone and token hash, so clients
//! keep working against the new server without duplicates.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use std::io::{BufRead, Write};
use uuid::Uuid;

use crmsync_core::record::{apply_input, parse_input};
use crmsync_core::{EntitySet, Record};

use crate::store::{self, Store, Tombstone};

const CONFIG_KINDS: [&str; 4] = [
    crate::config::SETTINGS_KIND,
    crate::config::FILTER_KIND,
    crate::config::SYNC_FIELDS_KIND,
    crate::config::FIELD_SECURITY_KIND,
];

/// Writes every line of the organization; returns how many.
pub async fn export(store: &Store, out: &mut impl Write) -> anyhow::Result<usize> {
    let (org_id, org_name) = store
        .organization()
        .await?
        .context("this database has no organization to export")?;
    let mut lines = vec![
        json!({"type": "organization", "id": org_id, "name": org_name}),
        json!({"type": "version_counter", "value": store.current_version().await?}),
    ];
    for r in store.all_records().await? {
        let mut v = r.to_json();
        v["type"] = json!("record");
        v["entity_set"] = json!(r.set);
        lines.push(v);
    }
    for t in store.tombstones().await? {
        let mut v = json!(t);
        v["type"] = json!("tombstone");
        lines.push(v);
    }
    for (hash, user_id, created_at) in store.all_tokens().await? {
        lines.push(
            json!({"type": "token", "hash": hash, "user_id": user_id, "created_at": created_at}),
        );
    }
    for kind in CONFIG_KINDS {
        for (key, data) in store.list_config(kind).await? {
            lines.push(json!({"type": "config", "kind": kind, "key": key, "data": data}));
        }
    }
    for line in &lines {
        serde_json::to_writer(&mut *out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(lines.len())
}

fn text(v: &Value, key: &str) -> anyhow::Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("'{key}' is missing or not a string"))
}

fn uuid(v: &Value, key: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(&text(v, key)?).with_context(|| format!("'{key}' is not a UUID"))
}

/// Rebuilds a record from its export line, validating its fields as the API would.
fn record_from_line(v: &Value) -> anyhow::Result<Record> {
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

/// Loads an export into an empty database, all or nothing; returns how
/// many lines it applied.
pub async fn import(store: &Store, input: impl BufRead) -> anyhow::Result<usize> {
    if let Some((_, name)) = store.organization().await? {
        bail!("this database already holds the organization '{name}'; import into a new, empty database");
    }
    let mut tx = store.begin().await?;
    let mut count = 0;
    let mut counter = None;
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("line {}: cannot read", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let apply = async {
            let v: Value = serde_json::from_str(&line).context("not valid JSON")?;
            match v.get("type").and_then(Value::as_str) {
                Some("organization") => {
                    store::insert_organization(
                        &mut tx,
                        uuid(&v, "id")?,
                        &text(&v, "name")?,
                        &crmsync_core::time::now_timestamp(),
                    )
                    .await?
                }
                Some("version_counter") => {
                    counter = Some(
                        v.get("value")
                            .and_then(Value::as_i64)
                            .context("'value' is missing")?,
                    )
                }
                Some("record") => {
                    let r = record_from_line(&v)?;
                    let key = match r.set {
                        EntitySet::Users => r
                            .fields
                            .get("email")
                            .and_then(Value::as_str)
                            .map(|e| format!("user-email:{}", e.to_lowercase())),
                        _ => None,
                    };
                    store::insert_record(&mut tx, &r, key.as_deref()).await?;
                    crate::records::index_addresses(&mut tx, &r, true)
                        .await
                        .map_err(|e| anyhow::anyhow!(e.message))?
                }
                Some("tombstone") => {
                    let mut t = v.clone();
                    t.as_object_mut().map(|o| o.remove("type"));
                    let t: Tombstone = serde_json::from_value(t).context("not a tombstone")?;
                    store::insert_tombstone(&mut tx, &t).await?
                }
                Some("token") => {
                    store::insert_token(
                        &mut tx,
                        &text(&v, "hash")?,
                        uuid(&v, "user_id")?,
                        &text(&v, "created_at")?,
                    )
                    .await?
                }
                Some("config") => {
                    let kind = text(&v, "kind")?;
                    if !CONFIG_KINDS.contains(&kind.as_str()) {
                        bail!("unknown config kind '{kind}'");
                    }
                    store::put_config(
                        &mut tx,
                        &kind,
                        &text(&v, "key")?,
                        v.get("data").context("'data' is missing")?,
                    )
                    .await?
                }
                other => bail!("unknown line type {other:?}"),
            }
            anyhow::Ok(())
        };
        apply
            .await
            .with_context(|| format!("line {}: cannot import; nothing was imported", n + 1))?;
        count += 1;
    }
    let counter = counter.context(
        "the export has no version_counter line; it is incomplete, nothing was imported",
    )?;
    store::set_version_counter(&mut tx, counter).await?;
    tx.commit().await?;
    Ok(count)
}
