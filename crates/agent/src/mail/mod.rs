//! Email in the agent (SPEC §7 R-E5..R-E10, §8 R-M1, R-M3..R-M8, §9 email
//! rows, R-T2 email columns), on the [`Mailbox`](crmsync_mailbox::Mailbox)
//! trait only, so every backend with mail folders (`mail/INBOX`,
//! `mail/Sent`, …) works unchanged.
//!
//! One pass per sync ([`Agent::sync_mail`], called by `sync_once`): each
//! configured folder is scanned from its stored sync state; a message whose
//! etag the cache already holds is skipped; the others are planned from
//! their flags ([`plan::plan_message`]). Only messages that must be tracked
//! (or correlated, R-M5, or whose Message-ID must be learned) are read.
//! Push operations go through the engine's journal (R-T4): each is recorded
//! before the cache row moves to the new etag, then sent in batches (R-E7)
//! by `Agent::send`, whose answers come back to [`Agent::apply_mail_answer`].
//! Deliveries of tracked emails (R-M7 regarding changes, §9 deletions) come
//! from the engine to [`Agent::apply_mail_delivery`].

mod answers;
pub mod commands;
mod correlate;
pub mod plan;

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use uuid::Uuid;

use crmsync_core::email::{parse_email, ParsedEmail};
use crmsync_core::plan::Role;
use crmsync_core::settings::AutoTrack;
use crmsync_mailbox::{ItemRef, MessageFlags, SyncState, SystemFlag};

use crate::cache::{CachedMessage, JournalEntry};
use crate::engine::{Agent, SyncOptions, SyncReport};
use answers::keyword_change;
use correlate::MailSettings;
use plan::{Decision, Facts, FolderRole, Known, MailOp, Regarding, Step};

/// Messages read, and push operations sent, per batch (R-E7: bulk tracking
/// proceeds batch by batch, memory bounded by the batch).
const BATCH: usize = 100;

/// The raw bytes read at once, at most (a message above the limit alone):
/// with `[sync] max_message_size`, what bounds the agent's memory whatever
/// the size of the messages or of the folder.
const READ_BUDGET: u64 = 32 * 1024 * 1024;

/// A message larger than this is not read into memory: it is copied to a
/// file a part at a time (`Mailbox::copy_message_to`), its header read from
/// there, and its bytes streamed from the file into the push, so the
/// agent's memory does not grow with the size of a message.
const LARGE_MESSAGE: u64 = 1024 * 1024;

/// How much of a spooled message is read to find its header.
const HEADER_MAX: usize = 256 * 1024;

/// A read message's raw bytes: in memory, or spooled to a file.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Bytes(&'a [u8]),
    Spooled { path: &'a std::path::Path, len: u64 },
}

impl Raw<'_> {
    fn len(&self) -> u64 {
        match self {
            Raw::Bytes(b) => b.len() as u64,
            Raw::Spooled { len, .. } => *len,
        }
    }
}

/// A configured mail folder that exists in the mailbox.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The collection id (`mail/INBOX`).
    pub id: String,
    pub role: FolderRole,
}

/// The record the first `$CRMRegarding:` keyword of a message names, and
/// whether that keyword is in the former form (R-M7).
fn regarding_of(flags: &MessageFlags) -> (Option<Regarding>, bool) {
    let first = flags
        .keywords
        .iter()
        .find_map(|k| Some((k.as_regarding()?, k.is_outdated_regarding())));
    match first {
        Some((id, outdated)) => (Some(Regarding::by_id(id)), outdated),
        None => (None, false),
    }
}

/// A message the scan must read before it can act.
struct Pending {
    r: ItemRef,
    cached: Option<CachedMessage>,
    facts: Facts,
    step: Step,
}

/// The state of one mail pass.
struct Run<'a> {
    client: &'a str,
    /// Read once, when a received message needs them (R-M6).
    settings: Option<MailSettings>,
    /// Operations to send. The first `journaled` are in the journal; the
    /// others are written with `rows`, in one transaction, before they are
    /// sent (R-T4).
    ops: Vec<JournalEntry>,
    journaled: usize,
    incomplete: HashSet<String>,
    /// Cache rows not written yet, written together.
    rows: Vec<CachedMessage>,
}

impl Agent {
    /// The configured folders (R-M8: only these) that exist, with roles.
    pub async fn mail_folder_roles(&self) -> anyhow::Result<Vec<Folder>> {
        let existing = self.mail_folders().await?;
        let cfg = &self.config().mail;
        let mut wanted = vec![
            (cfg.inbox.clone(), FolderRole::Inbox),
            (cfg.sent.clone(), FolderRole::Sent),
            (cfg.drafts.clone(), FolderRole::Drafts),
        ];
        for t in &cfg.tracked_folders {
            wanted.push((
                t.name.clone(),
                FolderRole::Tracked {
                    regarding: t
                        .regarding
                        .as_ref()
                        .map(|(set, id)| Regarding::new(set.clone(), *id)),
                },
            ));
        }
        let mut out = Vec::new();
        for (name, role) in wanted {
            let id = format!("mail/{name}");
            if let Some(c) = existing.iter().find(|c| c.id == id || c.name == name) {
                if !out.iter().any(|f: &Folder| f.id == c.id) {
                    out.push(Folder {
                        id: c.id.clone(),
                        role,
                    });
                }
            }
        }
        Ok(out)
    }

    /// One pass over the mail folders (called by `sync_once`).
    pub(crate) async fn sync_mail(
        &self,
        client: &str,
        role: Role,
        options: SyncOptions,
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        if role == Role::Delegated {
            // R-C5: marked messages wait for the owner's primary client.
            return Ok(());
        }
        self.clean_spool().await?;
        let folders = self.mail_folder_roles().await?;
        let mut run = Run {
            client,
            settings: None,
            ops: Vec::new(),
            journaled: 0,
            incomplete: HashSet::new(),
            rows: Vec::new(),
        };
        let mut states: Vec<(String, SyncState)> = Vec::new();
        let mut gone: Vec<(Folder, CachedMessage)> = Vec::new();
        let drafts_waiting = match folders.iter().find(|f| f.role == FolderRole::Drafts) {
            Some(f) => self.cache().message_count(&f.id, 1).await?,
            None => 0,
        };
        for folder in &folders {
            let state = self
                .cache()
                .sync_state(&folder.id)
                .await?
                .map(SyncState::new);
            let first = state.is_none();
            let changes = match self
                .mailbox()
                .changes_since(&folder.id, state.as_ref())
                .await
            {
                Ok(c) => c,
                Err(crmsync_mailbox::Error::InvalidSyncState { .. }) => {
                    self.mailbox().changes_since(&folder.id, None).await?
                }
                Err(e) => {
                    report.errors.push(format!("{}: {e}", folder.id));
                    continue;
                }
            };
            for (href, e) in &changes.failed {
                run.incomplete.insert(folder.id.clone());
                report.note_item_failure(format!("{}/{href}: {e}", folder.id), e);
            }
            // Flags the listing did not carry are asked for.
            let (mut changed, bare): (Vec<ItemRef>, Vec<ItemRef>) =
                changes.changed.into_iter().partition(|r| r.flags.is_some());
            if !bare.is_empty() {
                let hrefs: Vec<String> = bare.into_iter().map(|r| r.href).collect();
                for (href, r) in self.mailbox().message_flags(&folder.id, &hrefs).await? {
                    match r {
                        Ok(r) => changed.push(r),
                        Err(e) => {
                            run.incomplete.insert(folder.id.clone());
                            report.errors.push(format!("{}/{href}: {e}", folder.id));
                        }
                    }
                }
            }
            // Rows reset by a command are planned again even if unchanged.
            let replan = self.cache().messages_to_replan(&folder.id).await?;
            let replan: Vec<String> = replan
                .into_iter()
                .filter(|h| !changed.iter().any(|r| &r.href == h))
                .collect();
            if !replan.is_empty() {
                for (_, r) in self.mailbox().message_flags(&folder.id, &replan).await? {
                    if let Ok(r) = r {
                        changed.push(r);
                    }
                }
            }
            // A new UIDVALIDITY (the folder was deleted and created again):
            // a UID listed both as deleted and as changed names two
            // different messages. The old one leaves first, so the new one
            // is planned as new and re-linked by its Message-ID.
            let reused: HashSet<String> = changed
                .iter()
                .filter(|r| changes.deleted.contains(&r.href))
                .map(|r| r.href.clone())
                .collect();
            for href in &reused {
                if let Some(c) = self.cache().message(&folder.id, href).await? {
                    if !c.gone {
                        self.message_gone(&mut run, c, report).await?;
                    }
                }
            }
            let mut pending = Vec::new();
            // A large change (a first scan): the folder's rows at once.
            let mut rows: Option<HashMap<String, CachedMessage>> = if changed.len() > 64 {
                let all = self.cache().messages_in(&folder.id).await?;
                Some(all.into_iter().map(|m| (m.href.clone(), m)).collect())
            } else {
                None
            };
            for r in changed {
                let cached = match rows.as_mut() {
                    Some(rows) => rows.remove(&r.href),
                    None => self.cache().message(&folder.id, &r.href).await?,
                };
                if cached
                    .as_ref()
                    .is_some_and(|c| c.etag == r.etag.as_str() && !c.gone)
                {
                    continue;
                }
                let flags = r.flags.clone().unwrap_or_default();
                let (regarding_keyword, outdated_keyword) = regarding_of(&flags);
                let facts = Facts {
                    role: folder.role.clone(),
                    marked: flags.is_tracked(),
                    draft: flags.system.contains(&SystemFlag::Draft),
                    regarding_keyword,
                    outdated_keyword,
                    known: cached.as_ref().map(|c| Known { link: c.link }),
                    known_regarding: cached
                        .as_ref()
                        .and_then(|c| c.regarding.as_deref())
                        .and_then(Regarding::parse),
                    arrived: !first,
                };
                let mut step = plan::plan_message(&facts);
                if step == Step::Correlate {
                    // R-M6: with auto-tracking off, received mail is not read.
                    if run.settings.is_none() {
                        run.settings = Some(self.mail_settings().await?);
                    }
                    let s = run.settings.as_ref().expect("loaded above");
                    if s.auto_track == AutoTrack::None {
                        step = Step::Decided(plan::plan_auto(&correlate::unread(s)));
                    }
                }
                let read = match &step {
                    Step::Correlate => true,
                    Step::Decided(d) => {
                        d.ops
                            .iter()
                            .any(|o| matches!(o, MailOp::Track { .. } | MailOp::Mark { .. }))
                            || (d.link == 1
                                && cached.as_ref().is_none_or(|c| c.message_id.is_none()))
                            // R-E6: a new Sent message may be a marked draft, sent.
                            || (folder.role == FolderRole::Sent
                                && cached.is_none()
                                && drafts_waiting > 0)
                    }
                };
                let p = Pending {
                    r,
                    cached,
                    facts,
                    step,
                };
                if read {
                    pending.push(p);
                } else if let Step::Decided(d) = p.step.clone() {
                    self.perform(&mut run, folder, &p, None, d, report).await?;
                }
            }
            self.save(&mut run).await?;
            let total = pending.len();
            for (i, chunk) in pending.chunks(BATCH).enumerate() {
                self.read_in_groups(&mut run, folder, chunk, report).await?;
                if total > BATCH {
                    // R-E7: bulk tracking shows its progress.
                    let done = (i * BATCH + chunk.len()).min(total);
                    tracing::info!(folder = %folder.id, done, total, "messages processed");
                    self.progress("tracking messages", done, total);
                }
            }
            for href in changes.deleted.iter().filter(|h| !reused.contains(*h)) {
                if let Some(c) = self.cache().message(&folder.id, href).await? {
                    if !c.gone {
                        gone.push((folder.clone(), c));
                    }
                }
            }
            if state.as_ref() != Some(&changes.state) {
                states.push((folder.id.clone(), changes.state));
            }
        }
        self.flush(&mut run, report).await?;
        // Gone messages, once every folder was scanned (a move is a
        // deletion here and a new message there).
        for (folder, c) in gone {
            if options.defer_deletions && c.link == 2 {
                // R-T2: deletions wait for the next scheduled sync.
                report.deferred_deletions += 1;
                run.incomplete.insert(folder.id.clone());
                continue;
            }
            self.message_gone(&mut run, c, report).await?;
        }
        self.flush(&mut run, report).await?;
        for (folder, state) in states {
            if !run.incomplete.contains(&folder) {
                self.cache().set_sync_state(&folder, state.as_str()).await?;
            }
        }
        Ok(())
    }

    /// Writes the journal entries and cache rows of this pass not written
    /// yet, in one transaction: an entry is durable no later than the row
    /// that moved to its etag (R-T4).
    async fn save(&self, run: &mut Run<'_>) -> anyhow::Result<()> {
        self.cache()
            .journal_add_with_messages(&run.ops[run.journaled..], &std::mem::take(&mut run.rows))
            .await?;
        run.journaled = run.ops.len();
        Ok(())
    }

    /// Journals (R-T4), then sends, the operations of this pass.
    async fn flush(&self, run: &mut Run<'_>, report: &mut SyncReport) -> anyhow::Result<()> {
        self.save(run).await?;
        if run.ops.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut run.ops);
        run.journaled = 0;
        for folder in self.send(run.client, batch, report).await? {
            run.incomplete.insert(folder);
        }
        Ok(())
    }

    /// Reads a batch of messages in groups of at most `READ_BUDGET` bytes,
    /// each decided, acted on and sent before the next is read. A message
    /// above `[sync] max_message_size` is refused without being read.
    async fn read_in_groups(
        &self,
        run: &mut Run<'_>,
        folder: &Folder,
        chunk: &[Pending],
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        let hrefs: Vec<String> = chunk.iter().map(|p| p.r.href.clone()).collect();
        let sizes = self.mailbox().message_sizes(&folder.id, &hrefs).await?;
        let limit = self.config().max_message_size;
        let mut group: Vec<&Pending> = Vec::new();
        let mut bytes = 0;
        for (p, (_, size)) in chunk.iter().zip(sizes) {
            // Unknown (gone meanwhile, say): reading it reports why.
            let size = size.unwrap_or(0);
            if size > limit {
                self.too_large(run, folder, p, size, report);
                continue;
            }
            if size > LARGE_MESSAGE {
                self.read_large(run, folder, p, report).await?;
                continue;
            }
            if !group.is_empty() && bytes + size > READ_BUDGET {
                self.read_and_perform(run, folder, &std::mem::take(&mut group), report)
                    .await?;
                self.flush(run, report).await?;
                bytes = 0;
            }
            group.push(p);
            bytes += size;
        }
        self.read_and_perform(run, folder, &group, report).await?;
        self.flush(run, report).await
    }

    /// A message above `[sync] max_message_size`: not read; if it was to be
    /// tracked, refused and reported. Its row keeps the problem and the
    /// etag, so it is not looked at again until it changes.
    fn too_large(
        &self,
        run: &mut Run<'_>,
        folder: &Folder,
        p: &Pending,
        size: u64,
        report: &mut SyncReport,
    ) {
        let problem = too_large_problem(size, self.config().max_message_size);
        let mut row = self.row_for(folder, p);
        row.etag = p.r.etag.as_str().to_string();
        if let Step::Decided(d) = &p.step {
            if d.ops.iter().any(|o| matches!(o, MailOp::Track { .. })) {
                report
                    .refused
                    .push(format!("{}/{}: {problem}", folder.id, p.r.href));
                row.link = d.link;
            }
        }
        row.problem = Some(problem);
        run.rows.push(row);
    }

    /// Reads a group of messages, then decides and acts on each.
    async fn read_and_perform(
        &self,
        run: &mut Run<'_>,
        folder: &Folder,
        chunk: &[&Pending],
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let hrefs: Vec<String> = chunk.iter().map(|p| p.r.href.clone()).collect();
        let got = self.mailbox().get_many(&folder.id, &hrefs).await?;
        for (&p, (_, item)) in chunk.iter().zip(got) {
            let item = match item {
                Ok(i) if i.etag == p.r.etag => i,
                Ok(_) => {
                    // Changed again since the listing: planned next time.
                    run.incomplete.insert(folder.id.clone());
                    continue;
                }
                Err(e) => {
                    run.incomplete.insert(folder.id.clone());
                    report
                        .errors
                        .push(format!("{}/{}: {e}", folder.id, p.r.href));
                    continue;
                }
            };
            let parsed = parse_email(&item.data);
            self.act_on(run, folder, p, Raw::Bytes(&item.data), parsed, report)
                .await?;
        }
        Ok(())
    }

    /// A large message: copied to a file in the spool folder a part at a
    /// time, its header parsed from there; the file goes with the track
    /// operation (streamed into the push, removed once answered), or is
    /// removed at once if the message is not tracked.
    async fn read_large(
        &self,
        run: &mut Run<'_>,
        folder: &Folder,
        p: &Pending,
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        let dir = self.spool_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the spool folder {}", dir.display()))?;
        let path = dir.join(format!("{}.eml", Uuid::new_v4()));
        let len = match self
            .mailbox()
            .copy_message_to(&folder.id, &p.r.href, &path)
            .await
        {
            Ok(len) => len,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                run.incomplete.insert(folder.id.clone());
                report
                    .errors
                    .push(format!("{}/{}: {e}", folder.id, p.r.href));
                return Ok(());
            }
        };
        let parsed = parse_spooled(&path)?;
        self.act_on(
            run,
            folder,
            p,
            Raw::Spooled { path: &path, len },
            parsed,
            report,
        )
        .await?;
        let name = path.to_string_lossy();
        if !run
            .ops
            .iter()
            .any(|o| o.op["raw_file"].as_str() == Some(&name))
        {
            let _ = std::fs::remove_file(&path);
        }
        Ok(())
    }

    /// Decides and acts on one message that was read (R-E6, R-M5/R-M6).
    async fn act_on(
        &self,
        run: &mut Run<'_>,
        folder: &Folder,
        p: &Pending,
        raw: Raw<'_>,
        parsed: Result<ParsedEmail, String>,
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                // Reported, never blocking the others; planned again
                // when the message changes.
                let problem = format!("cannot be read as a message ({e})");
                report.skipped.push(format!(
                    "{}/{}: {problem}; the message is skipped",
                    folder.id, p.r.href
                ));
                let mut row = self.row_for(folder, p);
                row.etag = p.r.etag.as_str().to_string();
                row.problem = Some(problem);
                run.rows.push(row);
                return Ok(());
            }
        };
        let decision = match &p.step {
            Step::Decided(d) => self.sent_draft(folder, p, &parsed, d.clone()).await?,
            Step::Correlate => {
                if run.settings.is_none() {
                    run.settings = Some(self.mail_settings().await?);
                }
                let s = run.settings.as_ref().expect("loaded above");
                let facts = correlate::auto_facts(self.crm(), s, &parsed).await?;
                plan::plan_auto(&facts)
            }
        };
        self.perform(run, folder, p, Some((raw, &parsed)), decision, report)
            .await
    }

    /// Removes the spool files no journaled operation names (left by a kill
    /// between a message's copy and its journal entry; the message is read
    /// again when it is planned again).
    async fn clean_spool(&self) -> anyhow::Result<()> {
        let Ok(files) = std::fs::read_dir(self.spool_dir()) else {
            return Ok(());
        };
        let files: Vec<_> = files.flatten().collect();
        if files.is_empty() {
            // The usual case: nothing to compare, no journal read.
            return Ok(());
        }
        let pending = self.cache().journal_pending().await?;
        let named: HashSet<&str> = pending
            .iter()
            .filter_map(|e| e.op["raw_file"].as_str())
            .collect();
        for file in files {
            let path = file.path();
            if !named.contains(path.to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Where large messages wait to be pushed: next to the cache.
    pub(crate) fn spool_dir(&self) -> std::path::PathBuf {
        self.config().cache.with_extension("spool")
    }

    /// R-E6: a new message in Sent with the Message-ID of a marked draft is
    /// the draft, sent: it is tracked.
    async fn sent_draft(
        &self,
        folder: &Folder,
        p: &Pending,
        parsed: &ParsedEmail,
        d: Decision,
    ) -> anyhow::Result<Decision> {
        if folder.role != FolderRole::Sent || p.cached.is_some() || !d.ops.is_empty() {
            return Ok(d);
        }
        let drafts = &self.config().mail.drafts;
        let marked = self
            .cache()
            .messages_by_message_id(&parsed.message_id)
            .await?
            .into_iter()
            .any(|c| c.link == 1 && c.folder == format!("mail/{drafts}"));
        if !marked {
            return Ok(d);
        }
        Ok(Decision {
            ops: vec![
                MailOp::Mark { regarding: None },
                MailOp::Track {
                    regarding: p.facts.regarding_keyword.clone(),
                },
            ],
            link: 1,
            rule: "the draft marked for tracking was sent".into(),
        })
    }

    async fn mail_settings(&self) -> anyhow::Result<MailSettings> {
        let me = self.registration().await?;
        let user = me["mailbox_user_id"]
            .as_str()
            .or(me["user_id"].as_str())
            .unwrap_or_default()
            .to_string();
        MailSettings::load(self.crm(), &user).await
    }

    fn row_for(&self, folder: &Folder, p: &Pending) -> CachedMessage {
        p.cached.clone().unwrap_or(CachedMessage {
            folder: folder.id.clone(),
            href: p.r.href.clone(),
            ..Default::default()
        })
    }

    /// Carries out a decision on one message: keyword writes with the etag
    /// as precondition, push operations journaled before (or with) the
    /// cache row moving on (R-T4): both are kept in `run` and written by
    /// `save` in one transaction per batch, before the batch is sent.
    async fn perform(
        &self,
        run: &mut Run<'_>,
        folder: &Folder,
        p: &Pending,
        message: Option<(Raw<'_>, &ParsedEmail)>,
        d: Decision,
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        let mut row = self.row_for(folder, p);
        row.gone = false;
        row.problem = None;
        row.rule = Some(d.rule.clone());
        if let Some((_, parsed)) = message {
            row.message_id = Some(parsed.message_id.clone());
        }
        let mut etag = p.r.etag.clone();
        let mut entries = Vec::new();
        for op in &d.ops {
            match op {
                MailOp::Mark { .. } | MailOp::ShowRegarding(_) => {
                    let (tracked, regarding, set_regarding) = op.keyword_write();
                    let flags = p.r.flags.clone().unwrap_or_default();
                    let (add, remove) = keyword_change(&flags, tracked, regarding, set_regarding);
                    self.cache().hold_lease().await?;
                    match self
                        .mailbox()
                        .store_keywords(&folder.id, &p.r.href, &etag, &add, &remove)
                        .await
                    {
                        Ok(r) => etag = r.etag,
                        Err(e) => {
                            // Changed meanwhile: planned again next time.
                            run.incomplete.insert(folder.id.clone());
                            report
                                .errors
                                .push(format!("{}/{}: {e}", folder.id, p.r.href));
                            return Ok(());
                        }
                    }
                }
                MailOp::Track { regarding } => {
                    let (raw, parsed) = message.ok_or_else(|| {
                        anyhow::anyhow!("{}/{}: track without the message", folder.id, p.r.href)
                    })?;
                    let limit = self.config().max_message_size;
                    if raw.len() > limit {
                        // Grew after its size was asked (read_in_groups):
                        // refused here, as it would have been there.
                        let problem = too_large_problem(raw.len(), limit);
                        report
                            .refused
                            .push(format!("{}/{}: {problem}", folder.id, p.r.href));
                        row.problem = Some(problem);
                        continue;
                    }
                    let mut body = json!({
                        "set": "emails",
                        "item_uid": parsed.message_id,
                        "message_id": parsed.message_id,
                        "draft": false,
                        "fields": {},
                    });
                    match raw {
                        // Moved in, not through `json!` (which would copy it).
                        Raw::Bytes(b) => body["raw"] = Value::String(STANDARD.encode(b)),
                        // Streamed from the file into the push (crm.rs).
                        Raw::Spooled { path, .. } => {
                            body["raw_file"] = json!(path.to_string_lossy())
                        }
                    }
                    if folder.role == FolderRole::Sent {
                        body["fields"]["direction"] = json!("outgoing");
                    }
                    if let Some(r) = regarding {
                        body["regarding"] = r.to_json();
                    }
                    entries.push(("track", body));
                }
                MailOp::Untrack => entries.push((
                    "untrack",
                    json!({"set": "emails", "id": row.crm_id, "delete_in_crm": false}),
                )),
                MailOp::SetRegarding(r) => entries.push((
                    "set_regarding",
                    json!({"set": "emails", "id": row.crm_id,
                        "regarding": r.as_ref().map(Regarding::to_json).unwrap_or(Value::Null)}),
                )),
                other => anyhow::bail!("{other:?} is not an operation on a found message"),
            }
        }
        for (kind, body) in entries {
            let entry = journal_entry(&folder.id, &p.r.href, etag.as_str(), kind, body);
            run.ops.push(entry);
        }
        row.link = d.link;
        row.etag = etag.as_str().to_string();
        run.rows.push(row);
        if run.ops.len() >= BATCH {
            self.flush(run, report).await?;
        } else if run.rows.len() >= 1000 {
            self.save(run).await?;
        }
        Ok(())
    }

    /// A message that left its folder (§9 "deleted in mailbox", R-M8).
    async fn message_gone(
        &self,
        run: &mut Run<'_>,
        c: CachedMessage,
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        let elsewhere = match &c.message_id {
            Some(mid) => self
                .cache()
                .messages_by_message_id(mid)
                .await?
                .iter()
                .any(|o| !o.gone && (o.folder != c.folder || o.href != c.href)),
            None => false,
        };
        let d = plan::plan_gone(Known { link: c.link }, elsewhere);
        for op in &d.ops {
            match op {
                MailOp::PushDelete => {
                    let entry = journal_entry(
                        &c.folder,
                        &c.href,
                        &c.etag,
                        "delete",
                        json!({"set": "emails", "id": c.crm_id}),
                    );
                    run.ops.push(entry);
                }
                MailOp::Forget => self.cache().remove_message(&c.folder, &c.href).await?,
                MailOp::ReportGone => {
                    report.reported.push(format!(
                        "{}/{} ({}): marked for tracking but moved out of the synchronized folders before it was tracked; move it back or mark it in a synchronized folder",
                        c.folder,
                        c.href,
                        c.message_id.as_deref().unwrap_or("no Message-ID read")
                    ));
                    self.cache()
                        .put_message(&CachedMessage {
                            gone: true,
                            rule: Some(d.rule.clone()),
                            ..c.clone()
                        })
                        .await?;
                }
                other => anyhow::bail!("{other:?} is not an operation on a gone message"),
            }
        }
        Ok(())
    }
}

/// A spooled message's header parsed (the agent needs no body); the whole
/// file when the header has no end within `HEADER_MAX`, or when the
/// message has no Message-ID (its synthetic id hashes the body too).
fn parse_spooled(path: &std::path::Path) -> anyhow::Result<Result<ParsedEmail, String>> {
    use std::io::Read;
    let read_err = |e| anyhow::anyhow!("cannot read the spooled message {}: {e}", path.display());
    let mut head = Vec::with_capacity(HEADER_MAX);
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(HEADER_MAX as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2));
    if let Some(end) = end {
        head.truncate(end);
        let parsed = parse_email(&head);
        if parsed.as_ref().is_ok_and(|p| !p.synthetic_message_id) {
            return Ok(parsed);
        }
    }
    let whole = std::fs::read(path).map_err(read_err)?;
    Ok(parse_email(&whole))
}

/// Why a message above the limit is not tracked, and what to do about it.
fn too_large_problem(size: u64, limit: u64) -> String {
    format!(
        "track refused: message_too_large: the message is too large ({size} bytes; [sync] max_message_size is {limit}, the CRM accepts at most {}); it is not read, and not tried again until it changes",
        crate::config::MAX_MESSAGE_SIZE
    )
}

pub(crate) fn journal_entry(
    folder: &str,
    href: &str,
    etag: &str,
    kind: &str,
    body: Value,
) -> JournalEntry {
    let op_id = Uuid::new_v4().to_string();
    let mut op = body;
    op["op_id"] = json!(op_id);
    op["kind"] = json!(kind);
    JournalEntry {
        op_id,
        collection: folder.to_string(),
        href: href.to_string(),
        etag: etag.to_string(),
        op,
    }
}
