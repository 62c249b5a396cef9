//! `crmsync track|untrack|regarding|status|explain mid:<Message-ID>`
//! (SPEC §12, R-M1, R-E5, R-E7, R-C4, R-C5): the message is found by its
//! Message-ID in the synchronized folders (the cache first), its keywords
//! are changed as a mail client would, then one synchronization runs and
//! the result is checked. `untrack --delete-in-crm` journals its operation
//! and sends it at once.

use serde_json::json;

use crmsync_core::email::{normalize_message_id, parse_email};
use crmsync_mailbox::ItemRef;

use super::answers::keyword_change;
use super::plan::{FolderRole, Regarding};
use super::{journal_entry, BATCH};
use crate::cache::CachedMessage;
use crate::commands::{
    link_words, parse_set_id, this_client, Explanation, ItemStatus, ItemsReport, UsageError,
};
use crate::engine::{Agent, SyncOptions, SyncReport};

/// ITEM names a message.
pub fn is_message(item: &str) -> bool {
    item.starts_with("mid:")
}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

/// A message found by Message-ID.
#[derive(Debug, Clone)]
pub struct FoundMessage {
    pub folder: String,
    pub href: String,
    pub message_id: String,
    /// Its etag and flags now.
    pub now: ItemRef,
    pub row: Option<CachedMessage>,
}

impl FoundMessage {
    pub fn path(&self) -> String {
        format!("{}/{}", self.folder, self.href)
    }

    fn folder_role<'a>(&self, folders: &'a [super::Folder]) -> Option<&'a FolderRole> {
        folders
            .iter()
            .find(|f| f.id == self.folder)
            .map(|f| &f.role)
    }
}

/// Finds `mid:<Message-ID>` in the synchronized folders.
pub async fn find(agent: &Agent, item: &str) -> anyhow::Result<FoundMessage> {
    let mut all = find_many(agent, &[item.to_string()]).await?;
    Ok(all.remove(0))
}

/// Finds each `mid:<Message-ID>`: the cache first, then by reading the
/// folders' messages once for all the others (R-E7: many at once).
pub async fn find_many(agent: &Agent, items: &[String]) -> anyhow::Result<Vec<FoundMessage>> {
    let mailbox = agent.mailbox();
    let mut wanted: Vec<(String, Option<FoundMessage>)> = Vec::new();
    for item in items {
        let mid = normalize_message_id(item.strip_prefix("mid:").unwrap_or(item));
        if mid.is_empty() {
            return Err(usage(format!(
                "{item}: the Message-ID is empty; write mid:<id>, e.g. mid:abc@example.com"
            )));
        }
        let mut found = None;
        for row in agent.cache().messages_by_message_id(&mid).await? {
            if row.gone {
                continue;
            }
            if let Ok(now) = mailbox.flags_of(&row.folder, &row.href).await {
                found = Some(FoundMessage {
                    folder: row.folder.clone(),
                    href: row.href.clone(),
                    message_id: mid.clone(),
                    now,
                    row: Some(row),
                });
                break;
            }
        }
        wanted.push((mid, found));
    }
    let folders = agent.mail_folder_roles().await?;
    if wanted.iter().any(|(_, f)| f.is_none()) {
        'folders: for f in &folders {
            let hrefs = match searched(agent, &f.id, &wanted).await? {
                Some(candidates) => candidates,
                None => {
                    let all = mailbox.changes_since(&f.id, None).await?;
                    all.changed.iter().map(|r| r.href.clone()).collect()
                }
            };
            for chunk in hrefs.chunks(BATCH) {
                for (href, item) in mailbox.get_many(&f.id, chunk).await? {
                    let Ok(item) = item else { continue };
                    let Ok(parsed) = parse_email(&item.data) else {
                        continue;
                    };
                    for (mid, slot) in wanted.iter_mut() {
                        if slot.is_none() && *mid == parsed.message_id {
                            *slot = Some(FoundMessage {
                                folder: f.id.clone(),
                                href: href.clone(),
                                message_id: mid.clone(),
                                now: item.as_ref(),
                                row: agent.cache().message(&f.id, &href).await?,
                            });
                        }
                    }
                    if wanted.iter().all(|(_, f)| f.is_some()) {
                        break 'folders;
                    }
                }
            }
        }
    }
    let names: Vec<&str> = folders.iter().map(|f| f.id.as_str()).collect();
    wanted
        .into_iter()
        .map(|(mid, f)| {
            f.ok_or_else(|| {
                usage(format!(
                    "no message with Message-ID <{mid}> in the synchronized folders ({}); check the id, or move the message into one of them",
                    names.join(", ")
                ))
            })
        })
        .collect()
}

/// The messages of `folder` the server finds for the Message-IDs not found
/// yet (IMAP SEARCH); `None` if one cannot be searched for (no server
/// search, or a synthetic id, derived from the content): the folder is
/// then read.
async fn searched(
    agent: &Agent,
    folder: &str,
    wanted: &[(String, Option<FoundMessage>)],
) -> anyhow::Result<Option<Vec<String>>> {
    let mut out: Vec<String> = Vec::new();
    for (mid, _) in wanted.iter().filter(|(_, f)| f.is_none()) {
        if mid.ends_with("@synthetic.invalid") {
            return Ok(None);
        }
        match agent.mailbox().search_message_id(folder, mid).await? {
            Some(hrefs) => out.extend(hrefs),
            None => return Ok(None),
        }
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

/// Changes the message's keywords (with its etag as precondition) and
/// makes the next scan plan it again.
async fn set_keywords(
    agent: &Agent,
    m: &FoundMessage,
    tracked: Option<bool>,
    regarding: Option<&Regarding>,
    set_regarding: bool,
) -> anyhow::Result<()> {
    let flags = m.now.flags.clone().unwrap_or_default();
    let (add, remove) = keyword_change(&flags, tracked, regarding, set_regarding);
    if !add.is_empty() || !remove.is_empty() {
        agent
            .mailbox()
            .store_keywords(&m.folder, &m.href, &m.now.etag, &add, &remove)
            .await?;
    }
    if let Some(row) = &m.row {
        agent
            .cache()
            .put_message(&CachedMessage {
                etag: String::new(),
                problem: None,
                ..row.clone()
            })
            .await?;
    }
    Ok(())
}

fn problems_of(sync: &SyncReport) -> Vec<String> {
    let mut p = sync.errors.clone();
    p.extend(sync.refused.iter().cloned());
    p
}

async fn row_of(agent: &Agent, m: &FoundMessage) -> anyhow::Result<Option<CachedMessage>> {
    agent.cache().message(&m.folder, &m.href).await
}

/// R-M1: marks each message `$CRMTracked` (with a regarding if given) and
/// synchronizes. Email can be tracked from any client (R-C4); a delegated
/// client only marks (R-C5); a draft waits until it is sent (R-E6).
pub async fn track(
    agent: &Agent,
    items: &[String],
    regarding: Option<&str>,
) -> anyhow::Result<ItemsReport> {
    if let Some(other) = items.iter().find(|i| !is_message(i)) {
        return Err(usage(format!(
            "{other}: track messages (mid:…) and other items in separate commands"
        )));
    }
    let target = regarding
        .map(parse_set_id)
        .transpose()?
        .map(|(set, id)| Regarding::new(set.as_str(), id));
    let found = find_many(agent, items).await?;
    let me = this_client(agent).await?;
    let delegated = me["role"] == "delegated";
    for m in &found {
        set_keywords(agent, m, Some(true), target.as_ref(), target.is_some()).await?;
    }
    let mut report = ItemsReport {
        waiting_for_owner: delegated,
        ..Default::default()
    };
    if delegated {
        report.items = found.iter().map(|m| (m.path(), None)).collect();
        return Ok(report);
    }
    let sync = agent.sync_once(SyncOptions::default()).await?;
    let mut problems = Vec::new();
    let folders = agent.mail_folder_roles().await?;
    let mut regarding_missing = Vec::new();
    for m in &found {
        let row = row_of(agent, m).await?;
        match row {
            Some(r) if r.link == 2 => {
                if let Some(t) = &target {
                    if !holds(&r, t) {
                        regarding_missing.push(format!("mid:{}", m.message_id));
                    }
                }
                report.items.push((m.path(), r.crm_id.clone()));
            }
            Some(r) if r.link == 1 && m.folder_role(&folders) == Some(&FolderRole::Drafts) => {
                // R-E6: tracked when sent.
                report.items.push((m.path(), None));
            }
            r => problems.push(format!(
                "{}: not tracked{}",
                m.path(),
                r.and_then(|r| r.problem)
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            )),
        }
    }
    problems.extend(problems_of(&sync));
    report.sync = Some(sync);
    if !problems.is_empty() {
        anyhow::bail!(
            "tracking did not complete: {}; fix the cause and run the command again",
            problems.join("; ")
        );
    }
    if let (false, Some(r)) = (regarding_missing.is_empty(), regarding) {
        // Linked to an email tracked before, with another regarding.
        set_regarding(agent, &regarding_missing, r).await?;
    }
    Ok(report)
}

/// R-M1: removes the marker and synchronizes (the CRM email is kept);
/// with `delete_in_crm` the untrack goes to the server at once, through
/// the journal (R-T4). R-E7: one message at a time.
pub async fn untrack(
    agent: &Agent,
    items: &[String],
    delete_in_crm: bool,
) -> anyhow::Result<ItemsReport> {
    let [item] = items else {
        return Err(usage(
            "messages are untracked one at a time; name one mid:<Message-ID>".into(),
        ));
    };
    let m = find(agent, item).await?;
    let linked = m.row.as_ref().is_some_and(|r| r.link == 2);
    let marked = m.now.flags.as_ref().is_some_and(|f| f.is_tracked());
    if !linked && !marked {
        anyhow::bail!("{item} is not tracked; nothing to untrack");
    }
    let mut report = ItemsReport::default();
    if !delete_in_crm || !linked {
        set_keywords(agent, &m, Some(false), None, false).await?;
        let sync = agent.sync_once(SyncOptions::default()).await?;
        let mut problems = problems_of(&sync);
        if row_of(agent, &m).await?.is_some_and(|r| r.link != 0) {
            problems.push(format!("{}: still tracked", m.path()));
        }
        report.sync = Some(sync);
        report.items.push((m.path(), None));
        if !problems.is_empty() {
            anyhow::bail!("untracking did not complete: {}", problems.join("; "));
        }
        return Ok(report);
    }
    let row = m.row.clone().expect("linked");
    let client = this_client(agent).await?;
    let client = client["id"].as_str().unwrap_or_default().to_string();
    let entry = journal_entry(
        &m.folder,
        &m.href,
        &row.etag,
        "untrack",
        json!({"set": "emails", "id": row.crm_id, "delete_in_crm": true}),
    );
    agent.cache().journal_add(&entry).await?;
    let mut sync = SyncReport::default();
    agent.send(&client, vec![entry], &mut sync).await?;
    let refused: Vec<String> = sync
        .refused
        .iter()
        .filter(|r| !r.contains("not_found") && !r.contains("not_linked"))
        .cloned()
        .collect();
    if !refused.is_empty() {
        anyhow::bail!("the server refused the untrack: {}", refused.join("; "));
    }
    report.items.push((m.path(), None));
    report.sync = Some(sync);
    Ok(report)
}

/// Whether the cache row holds `target` as the CRM email's regarding.
fn holds(row: &CachedMessage, target: &Regarding) -> bool {
    row.regarding
        .as_deref()
        .and_then(Regarding::parse)
        .is_some_and(|r| r.id == target.id)
}

/// R-E5: sets the regarding of tracked messages: the keyword
/// `$CRMRegarding:<32 hex digits>` replaces the old one, and the sync
/// pushes it.
pub async fn set_regarding(
    agent: &Agent,
    items: &[String],
    regarding: &str,
) -> anyhow::Result<ItemsReport> {
    let (set, id) = parse_set_id(regarding)?;
    let target = Regarding::new(set.as_str(), id);
    let mut found = Vec::new();
    for i in items {
        if !is_message(i) {
            return Err(usage(format!(
                "{i}: set the regarding of messages (mid:…) and other items in separate commands"
            )));
        }
        let m = find(agent, i).await?;
        if m.row.as_ref().is_none_or(|r| r.link != 2) {
            anyhow::bail!(
                "{i} is not tracked yet; run `crmsync track {i} --regarding {regarding}` instead"
            );
        }
        found.push(m);
    }
    for m in &found {
        set_keywords(agent, m, None, Some(&target), true).await?;
    }
    let sync = agent.sync_once(SyncOptions::default()).await?;
    let mut problems = problems_of(&sync);
    let mut report = ItemsReport::default();
    for m in &found {
        let row = row_of(agent, m).await?;
        if !row.as_ref().is_some_and(|r| holds(r, &target)) {
            problems.push(format!("{}: the regarding did not reach the CRM", m.path()));
        }
        report.items.push((m.path(), row.and_then(|r| r.crm_id)));
    }
    report.sync = Some(sync);
    if !problems.is_empty() {
        anyhow::bail!(
            "setting the regarding did not complete: {}",
            problems.join("; ")
        );
    }
    Ok(report)
}

/// `crmsync status mid:…` (R-M3).
pub async fn item_status(agent: &Agent, item: &str) -> anyhow::Result<ItemStatus> {
    let m = find(agent, item).await?;
    let marker = m.now.flags.as_ref().is_some_and(|f| f.is_tracked());
    let row = m.row.clone();
    let link = match &row {
        Some(r) if r.link == 2 => 2,
        _ if marker => 1,
        _ => 0,
    };
    Ok(ItemStatus {
        path: m.path(),
        uid: m.message_id.clone(),
        set: "emails".into(),
        link,
        link_state: link_words(link).to_string(),
        crm_id: row.filter(|r| r.link == 2).and_then(|r| r.crm_id),
        version: 0,
        marker,
    })
}

/// `crmsync explain mid:…`: the rule that decided the message's state
/// (marker, folder, draft, auto-track setting, exclusion entry,
/// correlation), then for a tracked email the server's reasons.
pub async fn explain(agent: &Agent, item: &str) -> anyhow::Result<Explanation> {
    let m = find(agent, item).await?;
    let row = m.row.clone().unwrap_or_default();
    let mut reasons = vec![row.rule.clone().unwrap_or_else(|| {
        "the agent has not looked at this message yet: run `crmsync sync`".to_string()
    })];
    if let Some(p) = &row.problem {
        reasons.push(p.clone());
    }
    let id = row.crm_id.clone().filter(|_| row.link == 2);
    if let Some(id) = &id {
        let client = this_client(agent).await?;
        let e = agent
            .crm()
            .request(
                reqwest::Method::GET,
                &format!(
                    "/api/v1/sync/explain?client_id={}&set=emails&id={id}",
                    client["id"].as_str().unwrap_or_default()
                ),
                None,
            )
            .await?;
        reasons.extend(
            e["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_string)),
        );
    }
    Ok(Explanation {
        set: "emails".into(),
        id: id.unwrap_or_default(),
        delivered: row.link == 2,
        in_mailbox: true,
        reasons,
    })
}
