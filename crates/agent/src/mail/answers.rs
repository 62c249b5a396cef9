//! The CRM's side of a message: push answers (track, untrack,
//! set_regarding, delete) and deliveries of tracked emails (R-M7 regarding
//! changes, §9 deletions), shown on the message as keywords.

use std::collections::HashMap;

use serde_json::Value;

use crmsync_mailbox::{ItemRef, Keyword, MessageFlags};

use super::plan::{self, MailOp, Regarding};
use crate::cache::{CachedMessage, JournalEntry, LeaseLost};
use crate::engine::{Agent, SyncReport};

/// What the answers of one pushed batch share: the message rows to write
/// (with the end of their journal entries, in one transaction; a row here
/// is newer than the cache's), and the messages' flags read for the whole
/// batch at once instead of one round trip per answer.
#[derive(Default)]
pub(crate) struct AnswerBatch {
    pub rows: Vec<CachedMessage>,
    flags: HashMap<(String, String), ItemRef>,
}

impl Agent {
    /// The batch state for the answers of `entries`: the flags of the
    /// messages whose answer writes keywords (track, untrack), read per
    /// folder in one call. A folder that cannot be read is left out (each
    /// answer then asks on its own).
    pub(crate) async fn answer_batch(&self, entries: &[JournalEntry]) -> AnswerBatch {
        let mut by_folder: HashMap<&str, Vec<String>> = HashMap::new();
        for e in entries {
            if e.op["set"] == "emails" && matches!(e.op["kind"].as_str(), Some("track" | "untrack"))
            {
                by_folder
                    .entry(&e.collection)
                    .or_default()
                    .push(e.href.clone());
            }
        }
        let mut batch = AnswerBatch::default();
        for (folder, hrefs) in by_folder {
            if let Ok(found) = self.mailbox().message_flags(folder, &hrefs).await {
                for (href, r) in found {
                    if let Ok(r) = r {
                        batch.flags.insert((folder.to_string(), href), r);
                    }
                }
            }
        }
        batch
    }

    /// Makes a message show `tracked` (None: as it is) and `regarding`
    /// (when `set_regarding`) with one keyword write; the cache row's etag
    /// moves only if the message had no change the agent has not seen.
    pub(super) async fn show_keywords(
        &self,
        row: &mut CachedMessage,
        tracked: Option<bool>,
        regarding: Option<&Regarding>,
        set_regarding: bool,
        known: Option<ItemRef>,
    ) -> anyhow::Result<()> {
        let cur = match known {
            Some(c) => c,
            None => match self.mailbox().flags_of(&row.folder, &row.href).await {
                Ok(c) => c,
                Err(crmsync_mailbox::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        let flags = cur.flags.clone().unwrap_or_default();
        // A change the agent has not planned yet (the user removed the
        // marker meanwhile) is not undone: the marker is only ever removed.
        let unseen = row.etag != cur.etag.as_str();
        let tracked = tracked.filter(|t| !unseen || !t);
        let (add, remove) = keyword_change(&flags, tracked, regarding, set_regarding);
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        self.cache().hold_lease().await?;
        let r = self
            .mailbox()
            .store_keywords(&row.folder, &row.href, &cur.etag, &add, &remove)
            .await?;
        if row.etag == cur.etag.as_str() {
            row.etag = r.etag.as_str().to_string();
        }
        Ok(())
    }

    /// Applies a push answer for an email operation (routed here by the
    /// engine's `send`). The message row to write is added to the batch's
    /// rows. `Ok(false)`: try again later.
    pub(crate) async fn apply_mail_answer(
        &self,
        entry: &JournalEntry,
        kind: &str,
        result: &Value,
        batch: &mut AnswerBatch,
        report: &mut SyncReport,
    ) -> anyhow::Result<bool> {
        let (folder, href) = (entry.collection.as_str(), entry.href.as_str());
        let known = batch.flags.remove(&(folder.to_string(), href.to_string()));
        let rows = &mut batch.rows;
        let found = match rows
            .iter()
            .rposition(|r| r.folder == folder && r.href == href)
        {
            Some(i) => Some(rows[i].clone()),
            None => self.cache().message(folder, href).await?,
        };
        let mut row = found.clone().unwrap_or(CachedMessage {
            folder: folder.to_string(),
            href: href.to_string(),
            etag: entry.etag.clone(),
            message_id: entry.op["message_id"].as_str().map(str::to_string),
            link: 1,
            ..Default::default()
        });
        if result["status"] != "ok" {
            let code = result["code"].as_str().unwrap_or("refused");
            let message = result["message"].as_str().unwrap_or("");
            report.refused.push(format!(
                "{folder}/{href}: {kind} refused: {code}: {message}"
            ));
            if kind == "delete" {
                return Ok(true);
            }
            if kind != "track" && matches!(code, "not_found" | "not_linked") {
                row.link = 0;
                row.crm_id = None;
                row.regarding = None;
            } else {
                // Reported by `crmsync status`; tried again when the message
                // changes or by `crmsync track mid:…`.
                row.problem = Some(format!("{kind} refused: {code}: {message}"));
            }
            if found.is_some() || kind == "track" {
                rows.push(row);
            }
            return Ok(true);
        }
        *report.pushed.entry(kind.to_string()).or_default() += 1;
        let record_regarding = || {
            result
                .get("record")
                .map(|r| Regarding::from_json(&r["fields"]["regarding"]))
        };
        match kind {
            "track" => {
                row.link = 2;
                row.problem = None;
                row.crm_id = result["id"].as_str().map(str::to_string);
                let regarding = record_regarding()
                    .unwrap_or_else(|| Regarding::from_json(&entry.op["regarding"]));
                let shown = self
                    .show_keywords(&mut row, Some(true), regarding.as_ref(), true, known)
                    .await;
                row.regarding = regarding.map(|r| r.to_string());
                replan_if_failed(&mut row, shown, report);
            }
            "untrack" => {
                row.link = 0;
                row.crm_id = None;
                row.regarding = None;
                let shown = self
                    .show_keywords(&mut row, Some(false), None, true, known)
                    .await;
                replan_if_failed(&mut row, shown, report);
            }
            "set_regarding" => {
                let regarding = record_regarding()
                    .unwrap_or_else(|| Regarding::from_json(&entry.op["regarding"]));
                row.regarding = regarding.map(|r| r.to_string());
            }
            "delete" => return Ok(true),
            _ => {}
        }
        if found.is_some() || kind == "track" {
            rows.push(row);
        }
        Ok(true)
    }

    /// A delivery of a tracked email (routed here by the engine): R-M7
    /// regarding changes become the message's keyword; §9: an email
    /// deleted in the CRM leaves the message, without its keyword.
    /// `Ok(true)`: applied, acknowledge it.
    pub(crate) async fn apply_mail_delivery(
        &self,
        delivery: &Value,
        record: Option<&Value>,
        report: &mut SyncReport,
    ) -> anyhow::Result<bool> {
        let id = delivery["id"].as_str().unwrap_or_default();
        let removed = delivery["action"] == "remove";
        if !removed && record.is_none() {
            report.errors.push(format!(
                "emails/{id}: delivered without its record; retried next sync"
            ));
            return Ok(false);
        }
        let regarding = record.and_then(|r| Regarding::from_json(&r["fields"]["regarding"]));
        let d = plan::plan_delivery(removed, regarding);
        for mut row in self.cache().messages_by_crm_id(id).await? {
            for op in &d.ops {
                let done = match op {
                    MailOp::ShowRegarding(r) => {
                        let r2 = self
                            .show_keywords(&mut row, None, r.as_ref(), true, None)
                            .await;
                        row.regarding = r.as_ref().map(Regarding::to_string);
                        r2
                    }
                    MailOp::Unmark => {
                        let r2 = self
                            .show_keywords(&mut row, Some(false), None, true, None)
                            .await;
                        row.link = 0;
                        row.crm_id = None;
                        row.regarding = None;
                        r2
                    }
                    other => anyhow::bail!("{other:?} is not an operation of a delivery"),
                };
                if let Err(e) = done {
                    let e = LeaseLost::stops(e)?;
                    report.errors.push(format!(
                        "{}/{}: {e:#}; retried next sync",
                        row.folder, row.href
                    ));
                    return Ok(false);
                }
            }
            row.rule = Some(d.rule.clone());
            self.cache().put_message(&row).await?;
            if removed {
                report.unlinked_in_mailbox += 1;
            } else {
                report.written_to_mailbox += 1;
            }
        }
        Ok(true)
    }

    /// What `crmsync status` reports about messages.
    /// Messages that cannot be tracked, as `(where, what and the fix)`.
    pub(crate) async fn mail_reported(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .cache()
            .message_problems()
            .await?
            .into_iter()
            .map(|m| {
                let what = if m.gone {
                    "marked for tracking but moved out of the synchronized folders before it was tracked".to_string()
                } else {
                    m.problem.unwrap_or_default()
                };
                let place = format!(
                    "{}/{} ({})",
                    m.folder,
                    m.href,
                    m.message_id.as_deref().unwrap_or("Message-ID not read")
                );
                (place, what)
            })
            .collect())
    }
}

/// The answer is applied to the cache even when its keywords could not be
/// written (the message changed meanwhile): the row is then planned again
/// at the next scan, from what the message shows.
fn replan_if_failed(row: &mut CachedMessage, shown: anyhow::Result<()>, report: &mut SyncReport) {
    if let Err(e) = shown {
        report.errors.push(format!(
            "{}/{}: the keywords could not be written ({e:#}); looked at again next sync",
            row.folder, row.href
        ));
        row.etag = String::new();
    }
}

/// The keywords to add and remove so that a message shows `tracked` (None:
/// left as it is) and, when `set_regarding`, exactly `regarding` (R-M7).
pub(crate) fn keyword_change(
    flags: &MessageFlags,
    tracked: Option<bool>,
    regarding: Option<&Regarding>,
    set_regarding: bool,
) -> (Vec<Keyword>, Vec<Keyword>) {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    match tracked {
        Some(true) if !flags.is_tracked() => add.push(Keyword::tracked()),
        Some(false) if flags.is_tracked() => remove.push(Keyword::tracked()),
        _ => {}
    }
    if set_regarding {
        // R-M7: the current form; a keyword of the former form naming the
        // same record is replaced too.
        let wanted = regarding.map(|r| Keyword::regarding(&r.id));
        for k in &flags.keywords {
            if k.as_regarding().is_some() && Some(k) != wanted.as_ref() {
                remove.push(k.clone());
            }
        }
        if let Some(w) = wanted {
            if !flags.has_keyword(&w) {
                add.push(w);
            }
        }
    }
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(keywords: &[&str]) -> MessageFlags {
        MessageFlags {
            system: Default::default(),
            keywords: keywords.iter().map(|k| Keyword::new(*k).unwrap()).collect(),
        }
    }

    #[test]
    fn r_m7_keyword_swap_removes_the_old_regarding() {
        let old = "$CRMRegarding:0b9f3c1e8f6a4c1e9d2a3b4c5d6e7f80";
        let new = Regarding::new(
            "leads",
            uuid::Uuid::from_u128(0x1b9f3c1e_8f6a_4c1e_9d2a_3b4c5d6e7f80),
        );
        let (add, remove) = keyword_change(&flags(&["$CRMTracked", old]), None, Some(&new), true);
        assert_eq!(add, vec![Keyword::regarding(&new.id)]);
        assert_eq!(remove, vec![Keyword::new(old).unwrap()]);
        let (add, remove) = keyword_change(&flags(&["$CRMTracked", old]), Some(false), None, true);
        assert!(add.is_empty());
        assert_eq!(remove.len(), 2);
        let (add, remove) = keyword_change(&flags(&[]), Some(true), None, false);
        assert_eq!((add, remove), (vec![Keyword::tracked()], vec![]));
    }

    #[test]
    fn r_m7_former_keyword_form_is_replaced_by_the_current_one() {
        let id = uuid::Uuid::from_u128(0x0b9f3c1e_8f6a_4c1e_9d2a_3b4c5d6e7f80);
        let old = "$CRMRegarding:accounts:0b9f3c1e-8f6a-4c1e-9d2a-3b4c5d6e7f80";
        let same = Regarding::new("accounts", id);
        let (add, remove) = keyword_change(&flags(&["$CRMTracked", old]), None, Some(&same), true);
        assert_eq!(add, vec![Keyword::regarding(&id)]);
        assert_eq!(remove, vec![Keyword::new(old).unwrap()]);
        let current = Keyword::regarding(&id);
        let (add, remove) = keyword_change(
            &flags(&["$CRMTracked", current.as_str()]),
            None,
            Some(&same),
            true,
        );
        assert!(add.is_empty() && remove.is_empty());
    }
}
