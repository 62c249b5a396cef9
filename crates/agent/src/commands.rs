//! The `crmsync` commands around one client (SPEC §12): `client`
//! (R-C1, R-S9), `status --conflicts` (R-F6) and `status ITEM` (R-M3),
//! `explain`, `track`, `untrack` and `regarding` (R-M1, R-M2, R-C4).
//!
//! `track`, `untrack` and `regarding` always wait (the `--wait` of SPEC §12
//! is their only mode): `track` and `untrack` change the item in the
//! mailbox, then run one synchronization (`Agent::sync_once`) and check
//! that the item is in the wanted state; `untrack --delete-in-crm` and
//! `regarding` send their operation to the server at once and write the
//! result into the mailbox and the cache.
//!
//! ITEM is `uid:<UID>`, the path of a file inside a local mailbox root
//! (`contacts/`, `calendar/`, `tasks/`), `<collection>/<href>` on any
//! backend (`contacts/alice.vcf` on a DAV server), or `mid:<Message-ID>` for
//! a message (those commands are in `crate::mail::commands`).

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crmsync_core::entity::EntitySet;
use crmsync_core::mapping::{parse_item, project_fields, render_item, MailboxItem, RenderOptions};
use crmsync_mailbox::Etag;

use crate::cache::CachedItem;
use crate::crm::CrmClient;
use crate::engine::{Agent, SyncOptions, SyncReport};
use crate::mail::commands as mail;

/// A mistake in the command line (exit status 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// `SET/ID` (e.g. `accounts/1b4e28ba-…`).
pub fn parse_set_id(text: &str) -> anyhow::Result<(EntitySet, Uuid)> {
    let bad = || {
        usage(format!(
            "'{text}' is not SET/ID; write it as e.g. accounts/1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        ))
    };
    let (set, id) = text.split_once('/').ok_or_else(bad)?;
    let set = EntitySet::from_str(set).map_err(|_| {
        usage(format!(
            "'{set}' is not an entity set (e.g. accounts, contacts, opportunities)"
        ))
    })?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((set, id))
}

fn crm(agent: &Agent) -> CrmClient {
    CrmClient::new(&agent.config().crm_url, &agent.config().token)
}

/// Registers (or finds again) this client: the server's client object.
pub async fn this_client(agent: &Agent) -> anyhow::Result<Value> {
    let c = agent.registration().await?;
    if let Some(id) = c["id"].as_str() {
        agent.cache().set_meta("client_id", id).await?;
    }
    Ok(c)
}

fn client_id(c: &Value) -> anyhow::Result<String> {
    Ok(c["id"]
        .as_str()
        .context("the server answered a registration without id")?
        .to_string())
}

// ---------------------------------------------------------------- client

/// One line of `crmsync client list`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub acts_as_primary: bool,
    /// This agent's own client.
    pub this: bool,
}

/// R-C1: the user's clients with their role; this one is marked.
pub async fn client_list(agent: &Agent) -> anyhow::Result<Vec<ClientRow>> {
    let me = client_id(&this_client(agent).await?)?;
    let list = crm(agent)
        .request(reqwest::Method::GET, "/api/v1/sync/clients", None)
        .await?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| ClientRow {
            id: c["id"].as_str().unwrap_or("").to_string(),
            name: c["name"].as_str().unwrap_or("").to_string(),
            role: c["role"].as_str().unwrap_or("").to_string(),
            acts_as_primary: c["acts_as_primary"] == true,
            this: c["id"].as_str() == Some(me.as_str()),
        })
        .collect())
}

/// R-C1: makes the client `name` (this one without a name) the primary.
pub async fn client_set_primary(agent: &Agent, name: Option<&str>) -> anyhow::Result<ClientRow> {
    let list = client_list(agent).await?;
    let target = match name {
        None => list.iter().find(|c| c.this),
        Some(n) => list.iter().find(|c| c.name == n),
    }
    .ok_or_else(|| {
        let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
        usage(format!(
            "no client named '{}'; the user's clients are: {}",
            name.unwrap_or(""),
            names.join(", ")
        ))
    })?;
    let c = crm(agent)
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/sync/clients/{}/primary", target.id),
            None,
        )
        .await?;
    Ok(ClientRow {
        id: target.id.clone(),
        name: target.name.clone(),
        role: c["role"].as_str().unwrap_or("").to_string(),
        acts_as_primary: c["acts_as_primary"] == true,
        this: target.this,
    })
}

/// R-S9: forgets the items the user deleted in this mailbox; the next
/// sync delivers them again. Returns this client's id.
pub async fn client_reset(agent: &Agent) -> anyhow::Result<String> {
    let me = client_id(&this_client(agent).await?)?;
    crm(agent)
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/sync/clients/{me}/reset"),
            None,
        )
        .await?;
    Ok(me)
}

// ---------------------------------------------------------------- status

/// One R-F6 conflict: a value discarded by a merge.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub record: String,
    pub set: String,
    pub field: String,
    pub crm_value: Value,
    pub mailbox_value: Value,
    /// `crm` or `mailbox`: the side whose value was kept.
    pub kept: String,
    pub at: String,
}

/// R-F6: the user's conflict log, newest first.
pub async fn conflicts(agent: &Agent) -> anyhow::Result<Vec<Conflict>> {
    let list = crm(agent)
        .request(reqwest::Method::GET, "/api/v1/sync/conflicts", None)
        .await?;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| Conflict {
            record: text(&c["record_id"]),
            set: text(&c["set"]),
            field: text(&c["field"]),
            crm_value: c["crm_value"].clone(),
            mailbox_value: c["mailbox_value"].clone(),
            kept: text(&c["kept"]),
            at: text(&c["at"]),
        })
        .collect())
}

/// A mailbox item found by ITEM.
#[derive(Debug, Clone)]
pub struct Located {
    pub collection: String,
    pub href: String,
    /// How to show it: the file for a local mailbox, else `collection/href`.
    pub path: PathBuf,
    /// The etag the item had when found: the precondition of writing it.
    pub etag: Etag,
    pub bytes: Vec<u8>,
    pub item: MailboxItem,
    pub cached: Option<CachedItem>,
}

/// Finds ITEM: `uid:<UID>`, a file inside a local mailbox, or
/// `<collection>/<href>` on any backend (`contacts/alice.vcf`).
pub async fn locate(agent: &Agent, item: &str) -> anyhow::Result<Located> {
    if mail::is_message(item) {
        return Err(usage(format!(
            "{item}: a message has no file here; use it with track, untrack, regarding, status or explain"
        )));
    }
    let (collection, href) = match item.strip_prefix("uid:") {
        Some(uid) => find_by_uid(agent, uid).await?,
        None => by_path(agent, item)?,
    };
    let got = agent
        .mailbox()
        .get(&collection, &href)
        .await
        .map_err(|e| anyhow::anyhow!("{item}: {e}"))?;
    let parsed = parse_item(&got.data).map_err(|e| {
        anyhow::anyhow!("{collection}/{href} cannot be read ({e}); fix or remove the item")
    })?;
    let cached = agent.cache().item(&collection, &href).await?;
    let path = match agent.local_items_root() {
        Some(root) => root.join(&collection).join(&href),
        None => PathBuf::from(format!("{collection}/{href}")),
    };
    Ok(Located {
        collection,
        href,
        path,
        etag: got.etag,
        bytes: got.data,
        item: parsed,
        cached,
    })
}

/// The item with that UID: the cache knows it once synchronized; otherwise
/// every item collection is read (a new item not yet seen by a sync).
async fn find_by_uid(agent: &Agent, uid: &str) -> anyhow::Result<(String, String)> {
    if let Some(found) = agent.cache().items_by_uid(uid).await?.into_iter().next() {
        return Ok(found);
    }
    for &collection in agent.item_collections() {
        let listed = agent.mailbox().changes_since(collection, None).await?;
        let hrefs: Vec<String> = listed.changed.into_iter().map(|r| r.href).collect();
        for batch in hrefs.chunks(100) {
            for (href, got) in agent.mailbox().get_many(collection, batch).await? {
                if got.is_ok_and(|i| parse_item(&i.data).is_ok_and(|p| p.uid == uid)) {
                    return Ok((collection.to_string(), href));
                }
            }
        }
    }
    Err(usage(format!(
        "no contact, event or to-do with UID {uid} in this mailbox; check the UID (or name the item by its path)"
    )))
}

/// A path: a file inside the local mailbox, or `<collection>/<href>`.
fn by_path(agent: &Agent, item: &str) -> anyhow::Result<(String, String)> {
    let collections = agent.item_collections();
    let Some(root) = agent.local_items_root() else {
        return match item.split_once('/') {
            Some((c, href)) if collections.contains(&c) && !href.is_empty() => {
                Ok((c.to_string(), href.to_string()))
            }
            _ => Err(usage(format!(
                "{item}: name an item as uid:<UID> or <collection>/<href> (collections: {})",
                collections.join(", ")
            ))),
        };
    };
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let p = PathBuf::from(item);
    let p = if p.is_absolute() || p.exists() {
        p
    } else {
        root.join(&p)
    };
    let p = std::fs::canonicalize(&p).map_err(|_| {
        usage(format!(
            "{item}: no such file; name an item as uid:<UID> or a path inside {}",
            root.display()
        ))
    })?;
    let rel = p.strip_prefix(&root).map_err(|_| {
        usage(format!(
            "{item} is not inside the mailbox {}; name an item of the mailbox",
            root.display()
        ))
    })?;
    let mut parts = rel.components();
    let c = parts
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let href = parts.as_path().to_string_lossy().into_owned();
    if !collections.contains(&c.as_str()) || href.is_empty() {
        return Err(usage(format!(
            "{item} is not a contact, event or to-do; they live in {}/contacts, calendar and tasks",
            root.display()
        )));
    }
    Ok((c, href))
}

/// `crmsync status ITEM`.
#[derive(Debug, Clone, Serialize)]
pub struct ItemStatus {
    pub path: String,
    pub uid: String,
    pub set: String,
    /// R-M3: 0 not tracked, 1 to be tracked, 2 tracked.
    pub link: u8,
    pub link_state: String,
    pub crm_id: Option<String>,
    /// The CRM version last synchronized (0 when never).
    pub version: i64,
    /// The `Tracked to CRM` category is on the item (R-M1).
    pub marker: bool,
}

pub(crate) fn link_words(link: u8) -> &'static str {
    match link {
        0 => "not tracked",
        1 => "to be tracked (marked, not yet in the CRM)",
        _ => "tracked",
    }
}

pub async fn item_status(agent: &Agent, item: &str) -> anyhow::Result<ItemStatus> {
    if mail::is_message(item) {
        return mail::item_status(agent, item).await;
    }
    let l = locate(agent, item).await?;
    let (link, crm_id, version) = match &l.cached {
        Some(c) if c.link == 2 => (2, c.crm_id.clone(), c.version),
        _ if l.item.tracked || l.item.crm_id.is_some() => {
            (1, l.item.crm_id.map(|u| u.to_string()), 0)
        }
        _ => (0, None, 0),
    };
    Ok(ItemStatus {
        path: l.path.display().to_string(),
        uid: l.item.uid.clone(),
        set: l.item.set.as_str().to_string(),
        link,
        link_state: link_words(link).to_string(),
        crm_id,
        version,
        marker: l.item.tracked,
    })
}

// ---------------------------------------------------------------- explain

/// The server's explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub set: String,
    pub id: String,
    pub delivered: bool,
    pub in_mailbox: bool,
    pub reasons: Vec<String>,
}

/// Why a record does or does not reach this mailbox: `item` names a
/// mailbox item linked to the CRM, `record` a CRM record (`SET/ID`).
pub async fn explain(
    agent: &Agent,
    item: Option<&str>,
    record: Option<&str>,
) -> anyhow::Result<Explanation> {
    let (set, id) = match (item, record) {
        (_, Some(r)) => parse_set_id(r)?,
        (Some(i), None) if mail::is_message(i) => return mail::explain(agent, i).await,
        (Some(i), None) => {
            let l = locate(agent, i).await?;
            let id = l
                .cached
                .as_ref()
                .filter(|c| c.link == 2)
                .and_then(|c| c.crm_id.clone())
                .or_else(|| l.item.crm_id.map(|u| u.to_string()));
            let Some(id) = id else {
                let why = if l.item.tracked {
                    "it is marked but not yet in the CRM: run `crmsync sync` (or `crmsync track`)"
                } else {
                    "it is not tracked, so nothing synchronizes it: `crmsync track` it"
                };
                anyhow::bail!("{i}: {why}");
            };
            (
                l.item.set,
                Uuid::parse_str(&id).context("bad CRM id in the cache")?,
            )
        }
        (None, None) => return Err(usage("name an ITEM or --crm SET/ID to explain")),
    };
    let me = client_id(&this_client(agent).await?)?;
    let e = crm(agent)
        .request(
            reqwest::Method::GET,
            &format!(
                "/api/v1/sync/explain?client_id={me}&set={}&id={id}",
                set.as_str()
            ),
            None,
        )
        .await?;
    Ok(Explanation {
        set: set.as_str().to_string(),
        id: id.to_string(),
        delivered: e["delivered"] == true,
        in_mailbox: e["in_mailbox"] == true,
        reasons: e["reasons"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect(),
    })
}

// ---------------------------------------------------------------- track

/// What `track`, `untrack` or `regarding` did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ItemsReport {
    /// Each item: its path and CRM id (None once untracked).
    pub items: Vec<(String, Option<String>)>,
    /// The synchronization run, if any.
    pub sync: Option<SyncReport>,
    /// Set for a delegated client: the items wait for the owner's primary.
    pub waiting_for_owner: bool,
}

/// Writes the item back with the etag it had when found: an edit made
/// meanwhile by another client is a conflict, never overwritten.
async fn write(agent: &Agent, l: &Located, item: &MailboxItem) -> anyhow::Result<String> {
    let mut opts = RenderOptions::new(OffsetDateTime::now_utc());
    opts.existing = Some(&l.bytes);
    let out = render_item(item, &opts)?;
    let r = agent
        .mailbox()
        .update(&l.collection, &l.href, &l.etag, &out)
        .await?;
    Ok(r.etag.as_str().to_string())
}

fn regarding_value(
    set: EntitySet,
    item: &str,
    regarding: (EntitySet, Uuid),
) -> anyhow::Result<Value> {
    if set.field("regarding").is_none() {
        return Err(usage(format!(
            "{item} is one of {set}, which has no regarding; only appointments and tasks (activities) have one"
        )));
    }
    Ok(json!({"set": regarding.0.as_str(), "id": regarding.1.to_string()}))
}

/// R-M1: marks each item `Tracked to CRM` (with a regarding if given) and
/// synchronizes, so the items are tracked when this returns. A secondary
/// client cannot track (R-C4); a delegated client only marks (R-C5).
pub async fn track(
    agent: &Agent,
    items: &[String],
    regarding: Option<&str>,
) -> anyhow::Result<ItemsReport> {
    if items.is_empty() {
        return Err(usage("name at least one ITEM to track"));
    }
    if items.iter().any(|i| mail::is_message(i)) {
        return mail::track(agent, items, regarding).await;
    }
    let regarding = regarding.map(parse_set_id).transpose()?;
    let mut found = Vec::new();
    for i in items {
        let l = locate(agent, i).await?;
        if let Some(r) = regarding {
            regarding_value(l.item.set, i, r)?;
        }
        found.push(l);
    }
    let me = this_client(agent).await?;
    let delegated = me["role"] == "delegated";
    if !delegated && me["acts_as_primary"] != true {
        anyhow::bail!(
            "this client ('{}') is secondary: only the primary client tracks contacts, appointments and tasks. Run `crmsync client set-primary` here to make it primary, or track from the primary client",
            agent.config().client_name
        );
    }
    for l in &found {
        let mut item = l.item.clone();
        item.tracked = true;
        if let Some(r) = regarding {
            item.fields
                .insert("regarding".into(), regarding_value(item.set, "", r)?);
        }
        if item.tracked != l.item.tracked || item.fields != l.item.fields {
            write(agent, l, &item).await?;
        }
    }
    let mut report = ItemsReport {
        waiting_for_owner: delegated,
        ..Default::default()
    };
    if delegated {
        for l in &found {
            report.items.push((l.path.display().to_string(), None));
        }
        return Ok(report);
    }
    let sync = agent.sync_once(SyncOptions::default()).await?;
    let mut problems: Vec<String> = sync.errors.clone();
    problems.extend(sync.refused.iter().cloned());
    for l in &found {
        let c = agent.cache().item(&l.collection, &l.href).await?;
        match c.filter(|c| c.link == 2).and_then(|c| c.crm_id) {
            Some(id) => report.items.push((l.path.display().to_string(), Some(id))),
            None => problems.push(format!("{}: not tracked", l.path.display())),
        }
    }
    report.sync = Some(sync);
    if !problems.is_empty() {
        anyhow::bail!(
            "tracking did not complete: {}; fix the cause and run the command again",
            problems.join("; ")
        );
    }
    if let Some(r) = regarding {
        let mut ids = Vec::new();
        for l in &found {
            let l = locate(agent, &l.path.display().to_string()).await?;
            let wanted = regarding_value(l.item.set, "", r)?;
            if l.cached.as_ref().map(|c| c.baseline.get("regarding")) != Some(Some(&wanted)) {
                ids.push(l.path.display().to_string());
            }
        }
        if !ids.is_empty() {
            let s = format!("{}/{}", r.0.as_str(), r.1);
            set_regarding(agent, &ids, &s).await?;
        }
    }
    Ok(report)
}

/// Removes the marker. Without `delete_in_crm` this synchronizes (the
/// engine pushes an untrack, §9 decides what the CRM keeps); with it, an
/// untrack with `delete_in_crm` goes to the server at once and the item
/// loses X-CRM-ID too.
pub async fn untrack(
    agent: &Agent,
    items: &[String],
    delete_in_crm: bool,
) -> anyhow::Result<ItemsReport> {
    if items.is_empty() {
        return Err(usage("name at least one ITEM to untrack"));
    }
    if items.iter().any(|i| mail::is_message(i)) {
        return mail::untrack(agent, items, delete_in_crm).await;
    }
    let mut found = Vec::new();
    for i in items {
        let l = locate(agent, i).await?;
        let linked = l.cached.as_ref().is_some_and(|c| c.link == 2);
        if !linked && !l.item.tracked {
            anyhow::bail!("{i} is not tracked; nothing to untrack");
        }
        found.push(l);
    }
    let mut report = ItemsReport::default();
    if !delete_in_crm {
        for l in &found {
            let mut item = l.item.clone();
            item.tracked = false;
            write(agent, l, &item).await?;
        }
        let sync = agent.sync_once(SyncOptions::default()).await?;
        let mut problems: Vec<String> = sync.errors.clone();
        problems.extend(sync.refused.iter().cloned());
        if sync.left_for_primary > 0 {
            problems.push(format!(
                "this client is secondary: the primary client untracks at its next sync; {} change(s) wait",
                sync.left_for_primary
            ));
        }
        for l in &found {
            report.items.push((l.path.display().to_string(), None));
        }
        report.sync = Some(sync);
        if !problems.is_empty() {
            anyhow::bail!("untracking did not complete: {}", problems.join("; "));
        }
        return Ok(report);
    }
    let me = client_id(&this_client(agent).await?)?;
    let client = crm(agent);
    for l in &found {
        let Some(c) = l.cached.clone().filter(|c| c.link == 2) else {
            // Marked but never tracked: only the marker goes.
            let mut item = l.item.clone();
            item.tracked = false;
            write(agent, l, &item).await?;
            report.items.push((l.path.display().to_string(), None));
            continue;
        };
        let id = c.crm_id.clone().unwrap_or_default();
        let op = json!({"op_id": Uuid::new_v4().to_string(), "kind": "untrack",
            "set": c.set, "id": id, "delete_in_crm": true});
        let r = client.push(&me, &[&op]).await?;
        let r = r.first().cloned().unwrap_or(Value::Null);
        if r["status"] != "ok" && r["code"] != "not_found" && r["code"] != "not_linked" {
            anyhow::bail!(
                "{}: the server refused the untrack: {}: {}",
                l.path.display(),
                r["code"].as_str().unwrap_or("unknown"),
                r["message"].as_str().unwrap_or("")
            );
        }
        let mut item = l.item.clone();
        item.tracked = false;
        item.crm_id = None;
        let etag = write(agent, l, &item).await?;
        agent
            .cache()
            .put_item(&CachedItem {
                etag,
                crm_id: None,
                link: 0,
                version: 0,
                baseline: Map::new(),
                ..c
            })
            .await?;
        report.items.push((l.path.display().to_string(), None));
    }
    Ok(report)
}

/// Sets X-CRM-REGARDING on each tracked item and the regarding of its CRM
/// record (push `set_regarding`).
pub async fn set_regarding(
    agent: &Agent,
    items: &[String],
    regarding: &str,
) -> anyhow::Result<ItemsReport> {
    if items.iter().any(|i| mail::is_message(i)) {
        return mail::set_regarding(agent, items, regarding).await;
    }
    let target = parse_set_id(regarding)?;
    let mut found = Vec::new();
    for i in items {
        let l = locate(agent, i).await?;
        let value = regarding_value(l.item.set, i, target)?;
        let Some(c) = l.cached.clone().filter(|c| c.link == 2) else {
            anyhow::bail!(
                "{i} is not tracked yet; run `crmsync track {i} --regarding {regarding}` instead"
            );
        };
        found.push((l, c, value));
    }
    let me = client_id(&this_client(agent).await?)?;
    let client = crm(agent);
    let mut report = ItemsReport::default();
    for (l, c, value) in found {
        let op = json!({"op_id": Uuid::new_v4().to_string(), "kind": "set_regarding",
            "set": c.set, "id": c.crm_id, "regarding": value});
        let r = client.push(&me, &[&op]).await?;
        let r = r.first().cloned().unwrap_or(Value::Null);
        if r["status"] != "ok" {
            anyhow::bail!(
                "{}: the server refused the regarding: {}: {}",
                l.path.display(),
                r["code"].as_str().unwrap_or("unknown"),
                r["message"].as_str().unwrap_or("")
            );
        }
        let mut item = l.item.clone();
        item.fields.insert("regarding".into(), value.clone());
        let etag = write(agent, &l, &item).await?;
        let (version, baseline) = match r["record"]["fields"].as_object() {
            Some(f) => (
                r["version"].as_i64().unwrap_or(c.version),
                project_fields(l.item.set, f),
            ),
            None => {
                let mut b = c.baseline.clone();
                b.insert("regarding".into(), value);
                (c.version, b)
            }
        };
        let id = c.crm_id.clone();
        agent
            .cache()
            .put_item(&CachedItem {
                etag,
                version,
                baseline,
                ..c
            })
            .await?;
        report.items.push((l.path.display().to_string(), id));
    }
    Ok(report)
}
