//! One synchronization (`crmsync sync`): scan the mailbox, prepare + data,
//! decide each item with `core::plan::plan_item` (CRM → mailbox first, then
//! mailbox → CRM, R-F5), execute with etag preconditions, acknowledge, push.
//!
//! Durability (R-T4): push operations are journaled with stable `op_id`s
//! before they are sent and re-sent at the next sync until their answer is
//! applied; a collection's mailbox sync state is stored only when every
//! change found in it was handled, so a failed or interrupted item is found
//! again; items carrying `X-CRM-ID` that the cache does not know (a lost
//! cache, a crash after a mailbox write) are linked again, never duplicated
//! (R-M2).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crmsync_core::entity::EntitySet;
use crmsync_core::kind::MailboxKind;
use crmsync_core::mapping::{
    parse_item, render_item, ItemKind, MailboxItem, RenderOptions, Status, VcardVersion,
};
use crmsync_core::mass_delete::{Deletions, MassDeleteLimits};
use crmsync_core::plan::{plan_item, Action, CrmSide, LinkState, MailboxSide, Role};
use crmsync_core::record::Record;
use crmsync_core::sync_rules::{is_todo, Removal};
use crmsync_mailbox::{Collection, CollectionKind, Etag, Mailbox, SyncState};

use crate::cache::{Cache, CachedItem, JournalEntry, LeaseLost, WriteIntent};
use crate::config::Config;
use crate::crm::CrmClient;

/// The sets this agent synchronizes and the collection each lives in.
pub const COLLECTIONS: &[(EntitySet, &str)] = &[
    (EntitySet::Contacts, "contacts"),
    (EntitySet::Appointments, "calendar"),
    (EntitySet::Serviceappointments, "calendar"),
    (EntitySet::Tasks, "tasks"),
    (EntitySet::Phonecalls, "tasks"),
    (EntitySet::Letters, "tasks"),
    (EntitySet::Faxes, "tasks"),
];

/// Each collection once, in order.
pub(crate) fn collections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (_, c) in COLLECTIONS {
        if !out.contains(c) {
            out.push(c);
        }
    }
    out
}

fn collection_of(set: EntitySet) -> Option<&'static str> {
    COLLECTIONS.iter().find(|(s, _)| *s == set).map(|(_, c)| *c)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// R-T5: go on with a batch whose deletions exceed the limits.
    pub allow_mass_delete: bool,
    /// R-T2: a sync triggered by a change notification leaves deletions
    /// made in the mailbox for the next scheduled or manual sync.
    pub defer_deletions: bool,
}

/// What one sync did (`crmsync sync --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub client_id: String,
    pub role: String,
    /// Deliveries written into the mailbox (created or updated).
    pub written_to_mailbox: usize,
    pub deleted_from_mailbox: usize,
    pub unlinked_in_mailbox: usize,
    pub acknowledged: usize,
    pub pushed: BTreeMap<String, usize>,
    pub refused: Vec<String>,
    /// R-T5: deletions held back, and why.
    pub held_deletions: usize,
    pub mass_delete: Option<String>,
    pub left_for_primary: usize,
    /// R-T2: mailbox deletions left for the next scheduled sync.
    pub deferred_deletions: usize,
    pub reported: Vec<String>,
    /// Items that cannot be read (malformed), skipped by this sync and
    /// listed in `crmsync status`; read again when they change. The sync
    /// still completes (SPEC §12: a success with warnings).
    pub skipped: Vec<String>,
    /// What could not be synchronized this time; retried at the next sync.
    pub errors: Vec<String>,
    /// How long the sync took, registration to last write.
    pub elapsed_ms: f64,
}

impl SyncReport {
    /// A per-item failure of the mailbox: an item that cannot be read is
    /// skipped (a warning), anything else is an error retried next time.
    pub(crate) fn note_item_failure(&mut self, line: String, e: &crmsync_mailbox::Error) {
        match e {
            crmsync_mailbox::Error::Malformed { .. } => self.skipped.push(line),
            _ => self.errors.push(line),
        }
    }

    /// Whether the sync did all it set out to do: nothing failed and no
    /// deletion was held back (skipped items are warnings).
    pub fn completed(&self) -> bool {
        self.errors.is_empty() && self.mass_delete.is_none()
    }
}

/// `crmsync status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub client_id: Option<String>,
    /// R-M3: items per link state.
    pub not_tracked: i64,
    pub to_be_tracked: i64,
    pub tracked: i64,
    pub pending_operations: usize,
    /// SPEC §13: the kinds (`contacts`, `calendar`, `tasks`, `mail`) not
    /// synchronized because the configuration names no collection for them.
    pub kinds_not_synchronized: Vec<String>,
    /// Items that cannot be read (malformed, unreadable), messages whose
    /// tracking was refused, and messages marked and moved out of the
    /// synchronized folders before being tracked (R-M8).
    pub reported: Vec<String>,
}

/// Where a long synchronization is, for a progress bar on a terminal
/// (SPEC §12: progress on a terminal, quiet otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is being done, in words.
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

/// Receives [`Progress`] while a sync runs.
pub type ProgressFn = Box<dyn Fn(Progress) + Send + Sync>;

/// Items read from the mailbox per request (a DAV multiget).
const READ_BATCH: usize = 100;

/// One item as the scan found it.
#[derive(Debug, Clone)]
struct Found {
    collection: String,
    href: String,
    etag: String,
    bytes: Vec<u8>,
    item: MailboxItem,
}

/// The cache row of an item not linked to a CRM record (R-M3 state 0 or 1).
fn unlinked(found: &Found, etag: String, link: u8) -> CachedItem {
    CachedItem {
        collection: found.collection.clone(),
        href: found.href.clone(),
        etag,
        uid: found.item.uid.clone(),
        set: found.item.set.as_str().to_string(),
        crm_id: None,
        link,
        version: 0,
        baseline: Map::new(),
    }
}

/// The cache row of an item linked to a CRM record (R-M3 state 2), with
/// its baseline (R-F5): what the mailbox shows of the record.
fn linked(
    collection: &str,
    href: &str,
    etag: &str,
    uid: String,
    rec: &Record,
    baseline: Map<String, Value>,
) -> CachedItem {
    CachedItem {
        collection: collection.to_string(),
        href: href.to_string(),
        etag: etag.to_string(),
        uid,
        set: rec.set.as_str().to_string(),
        crm_id: Some(rec.id.to_string()),
        link: 2,
        version: rec.version,
        baseline,
    }
}

/// Key of the item's status (VTODO/VEVENT `STATUS`) in baselines and in
/// [`comparable`]: merged like a field, but not a CRM field.
const STATE_KEY: &str = "@state";

/// Key of a series' exceptions in baselines and in [`comparable`] (R-E2):
/// recurrence id → the exception's fields and status.
const EXCEPTIONS_KEY: &str = "@exceptions";

/// What the mailbox shows of a record (a series with its exception
/// records): its mapped fields and, for events and to-dos, its status. The
/// baseline of R-F5.
fn baseline_of(rec: &Record, exceptions: &[Record]) -> Map<String, Value> {
    comparable(&MailboxItem::from_records(rec, exceptions, "", true))
}

/// The same view of a mailbox item, to compare with its baseline.
fn comparable(item: &MailboxItem) -> Map<String, Value> {
    let mut out = item.fields.clone();
    if has_status(item.set) {
        out.insert(STATE_KEY.into(), json!(item.status.as_str()));
    }
    if !item.exceptions.is_empty() {
        let exceptions = item
            .exceptions
            .iter()
            .map(|e| {
                let mut fields = e.fields.clone();
                fields.insert(STATE_KEY.into(), json!(e.status.as_str()));
                (e.recurrence_id.clone(), Value::Object(fields))
            })
            .collect();
        out.insert(EXCEPTIONS_KEY.into(), Value::Object(exceptions));
    }
    out
}

/// R-E2: the exceptions of a series as a push operation carries them.
fn exceptions_op(item: &MailboxItem) -> Value {
    item.exceptions
        .iter()
        .map(|e| {
            json!({"recurrence_id": e.recurrence_id, "crm_id": e.crm_id, "state": e.status.as_str(), "fields": e.fields})
        })
        .collect()
}

/// The exception records delivered with a series (R-E2), in a delivery or
/// a push answer.
fn exception_records(record: &Value, set: EntitySet) -> Vec<Record> {
    record["exceptions"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| {
                    let mut e = e.clone();
                    e["set"] = json!(set.as_str());
                    let rid = e["recurrence_id"].clone();
                    e["fields"]["recurrence_id"] = rid;
                    record_of(&e).ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// R-E4: a to-do (task, phone call, letter, fax) the CRM holds as
/// completed or cancelled, as last synchronized.
fn is_closed_todo(c: &CachedItem) -> bool {
    EntitySet::from_str(&c.set).is_ok_and(is_todo)
        && c.baseline
            .get(STATE_KEY)
            .is_some_and(|s| s != Status::Active.as_str())
}

fn has_status(set: EntitySet) -> bool {
    matches!(
        ItemKind::for_set(set),
        Some(ItemKind::Event | ItemKind::Todo)
    )
}

/// A mailbox item the scan found changed, deleted, or newly marked.
#[derive(Debug, Clone)]
struct Touched {
    cached: Option<CachedItem>,
    current: Option<Found>,
    link: LinkState,
    side: MailboxSide,
}

/// What registration tells this client (R-C1, R-T1, R-T5).
struct Registered {
    id: String,
    role: Role,
    role_name: String,
    limits: MassDeleteLimits,
}

/// A collection's stored sync state and what its scan found.
type Scan = (
    Option<SyncState>,
    crmsync_mailbox::Result<crmsync_mailbox::Changes>,
);

/// What one sync of the contacts, calendar and tasks gathers as it goes,
/// phase to phase (nothing here is durable: the journal and the cache are).
#[derive(Default)]
struct ItemPass {
    report: SyncReport,
    /// Items the scan found changed or gone, by (collection, href).
    touched: BTreeMap<(String, String), Touched>,
    /// Each collection's state as scanned, and as stored before.
    new_states: Vec<(String, SyncState)>,
    stored_states: HashMap<String, SyncState>,
    /// Collections whose new state must not be stored: something in them
    /// is left for a later sync.
    incomplete: HashSet<String>,
    /// Push operations (mailbox → CRM) and deliveries to acknowledge.
    ops: Vec<JournalEntry>,
    acks: Vec<(String, i64)>,
}

impl ItemPass {
    /// Deletions left for later are found again by the next scan: their
    /// collections' states are not stored. R-T2 defers deletions of an
    /// immediate sync; R-T5 holds back deletions and untracks.
    fn leave_deletions(&mut self, options: SyncOptions) {
        if options.defer_deletions {
            self.report.deferred_deletions += self.leave(&["delete"]);
        }
        if self.report.mass_delete.is_some() {
            self.report.held_deletions += self.leave(&["delete", "untrack"]);
        }
    }

    /// Drops the operations of these kinds; how many were dropped.
    fn leave(&mut self, kinds: &[&str]) -> usize {
        let before = self.ops.len();
        let incomplete = &mut self.incomplete;
        self.ops.retain(|o| {
            let left = kinds.iter().any(|k| o.op["kind"] == *k);
            if left {
                incomplete.insert(o.collection.clone());
            }
            !left
        });
        before - self.ops.len()
    }
}

/// R-T5: why this sync holds back its deletions, and how to go on; `None`
/// when neither side exceeds the limits. `mailbox` is prepare's report of
/// the deletions the CRM asks of the mailbox; `crm_side` what the mailbox
/// would push, with `crm_reason` when that exceeds the limits.
fn mass_delete_message(
    mailbox: &Value,
    crm_side: &[Deletions],
    crm_reason: Option<String>,
) -> Option<String> {
    let mut why = Vec::new();
    if mailbox["exceeded"] == true {
        why.push(format!(
            "the CRM asks to delete {} items from the mailbox ({}); check the sync filters",
            mailbox["deletes"],
            mailbox["reason"].as_str().unwrap_or("over the limits")
        ));
    }
    if let Some(reason) = crm_reason {
        let what: Vec<String> = crm_side
            .iter()
            .map(|d| format!("{} from {}", d.deletes, d.collection))
            .collect();
        why.push(format!(
            "items deleted or untracked in the mailbox ({}) would be deleted or unlinked in the CRM ({reason}); if a folder was emptied by mistake, put its items back",
            what.join(", ")
        ));
    }
    (!why.is_empty()).then(|| {
        format!(
            "{}. Nothing was deleted; run `crmsync sync --allow-mass-delete` to go on",
            why.join("; and ")
        )
    })
}

pub struct Agent {
    cfg: Config,
    cache: Cache,
    crm: CrmClient,
    mailbox: Arc<dyn Mailbox>,
    /// The folder of contacts/, calendar/, tasks/ when they are local files.
    local_root: Option<PathBuf>,
    /// Which of `contacts`, `calendar`, `tasks` this mailbox has.
    item_collections: Vec<&'static str>,
    /// The kinds of collection this mailbox holds, as the server is told
    /// (SPEC §13): the item collections, and mail when it has mail folders.
    kinds: Vec<MailboxKind>,
    /// The mail folders listed at start, used by the first mail pass
    /// instead of listing them again (one round trip on IMAP); later passes
    /// list them anew, to see folders created since.
    mail_folders_at_start: std::sync::Mutex<Option<Vec<Collection>>>,
    /// R-T1 as the server last said it: `Some(None)` scheduled sync off,
    /// `Some(Some(d))` every `d`; `None` before the first registration.
    schedule: std::sync::Mutex<Option<Option<std::time::Duration>>>,
    /// Told where long work is (`on_progress`).
    progress: std::sync::Mutex<Option<ProgressFn>>,
    /// The client id and the CRM version of the last prepare: where the
    /// wait for CRM changes (R-T7) starts.
    crm_position: std::sync::Mutex<Option<(String, i64)>>,
    /// Contacts/events/to-dos written or removed in the mailbox by this
    /// agent: a sync that wrote nothing skips settling its scan states.
    item_writes: AtomicU64,
}

fn now_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// When the item says it was last revised (R-F5 on servers, where there is
/// no file time): the latest UTC `REV` (vCard), `LAST-MODIFIED` or `DTSTAMP`
/// (iCalendar without METHOD: the last revision, RFC 5545 3.8.7.2).
fn revised_at(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    let text = text.replace("\n ", "").replace("\n\t", "");
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.split(';').next()?.trim();
            let wanted = ["REV", "LAST-MODIFIED", "DTSTAMP"];
            if !wanted.iter().any(|w| name.eq_ignore_ascii_case(w)) {
                return None;
            }
            let v: String = value
                .trim()
                .chars()
                .filter(|c| *c != '-' && *c != ':')
                .collect();
            let v = v.strip_suffix('Z')?;
            let (d, t) = v.split_once('T')?;
            let t = t.get(..6)?;
            if d.len() != 8 || !d.bytes().chain(t.bytes()).all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(format!(
                "{}-{}-{}T{}:{}:{}Z",
                &d[..4],
                &d[4..6],
                &d[6..],
                &t[..2],
                &t[2..4],
                &t[4..]
            ))
        })
        .max()
}

/// A record as the sync API shows it (data or push answer) → core Record.
fn record_of(v: &Value) -> anyhow::Result<Record> {
    let id = Uuid::parse_str(v["id"].as_str().unwrap_or("")).context("record without id")?;
    let set = EntitySet::from_str(v["set"].as_str().unwrap_or(""))
        .map_err(|_| anyhow::anyhow!("record {id}: unknown set {}", v["set"]))?;
    Ok(Record {
        id,
        set,
        version: v["version"].as_i64().unwrap_or(0),
        owner_id: v["owner_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or(Uuid::nil()),
        state: v["state"].as_str().unwrap_or("").to_string(),
        created_at: String::new(),
        modified_at: v["modified_at"].as_str().unwrap_or("").to_string(),
        fields: v["fields"].as_object().cloned().unwrap_or_default(),
    })
}

impl Agent {
    /// Opens the cache file and the mailbox named by the configuration.
    pub async fn open(cfg: Config) -> anyhow::Result<Agent> {
        let cache = Cache::open(&cfg.cache).await?;
        Agent::with_cache(cfg, cache).await
    }

    /// The engine on `cache` (a file's or a server database's, R-V4) and
    /// the mailbox named by the configuration (see [`Agent::from_parts`]
    /// for what its `cache` path is then used for).
    pub async fn with_cache(cfg: Config, cache: Cache) -> anyhow::Result<Agent> {
        let mut checked = Vec::new();
        for collection in collections() {
            if let Some(url) = cache
                .sync_state(collection)
                .await?
                .as_deref()
                .and_then(crmsync_dav::stored_state_url)
            {
                checked.push(url);
            }
        }
        let opened = crate::backends::open_mailbox(&cfg, &checked).await?;
        let crm = CrmClient::new(&cfg.crm_url, &cfg.token);
        Agent::from_parts(cfg, cache, opened, crm).await
    }

    /// The engine on an opened cache, mailbox and CRM client: what a server
    /// worker drives for a connected mailbox (R-V4). `cfg` gives the sync
    /// settings (mail folders, interval, client name); its `[mailbox]`
    /// part is not read, its `[crm]` part only by the commands
    /// (`crmsync track`, ...), and its `cache` path only places this
    /// machine's spool folder of large messages (`mail/`; a server's
    /// database also keeps each journaled one, for the other processes).
    pub async fn from_parts(
        cfg: Config,
        cache: Cache,
        opened: crate::backends::OpenedMailbox,
        crm: CrmClient,
    ) -> anyhow::Result<Agent> {
        let mut listed = opened.mailbox.collections().await?;
        let item_collections: Vec<&'static str> = collections()
            .into_iter()
            .filter(|c| listed.iter().any(|l| l.id == *c))
            .collect();
        listed.retain(|c| c.kind == CollectionKind::Mail);
        let mut kinds: Vec<MailboxKind> = item_collections
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        if !listed.is_empty() {
            kinds.push(MailboxKind::Mail);
        }
        Ok(Agent {
            cfg,
            cache,
            crm,
            mailbox: opened.mailbox,
            local_root: opened.local_items_root,
            item_collections,
            kinds,
            mail_folders_at_start: std::sync::Mutex::new(Some(listed)),
            item_writes: AtomicU64::new(0),
            progress: std::sync::Mutex::new(None),
            schedule: std::sync::Mutex::new(None),
            crm_position: std::sync::Mutex::new(None),
        })
    }

    /// Calls `f` as long work goes on (deliveries written, changes sent,
    /// messages tracked).
    pub fn on_progress(&self, f: ProgressFn) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub(crate) fn progress(&self, phase: &'static str, done: usize, total: usize) {
        if let Some(f) = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f(Progress {
                phase,
                done: done as u64,
                total: total as u64,
            });
        }
    }

    /// R-T1: how often to synchronize on schedule (`None`: the user turned
    /// scheduled sync off). The organization and user settings decide, as
    /// the server reported them at the last registration; before that, the
    /// configuration's `[sync] interval`.
    pub fn scheduled_interval(&self) -> Option<std::time::Duration> {
        self.schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(Some(self.cfg.interval))
    }

    /// R-T7: this client's id and the CRM version its last prepare went up
    /// to (`None` before the first prepare answered).
    pub fn crm_position(&self) -> Option<(String, i64)> {
        self.crm_position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The mail folders: those listed at start the first time, then listed.
    pub(crate) async fn mail_folders(&self) -> anyhow::Result<Vec<Collection>> {
        let at_start = self
            .mail_folders_at_start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match at_start {
            Some(listed) => Ok(listed),
            None => Ok(self.mailbox.mail_folders().await?),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub(crate) fn mailbox(&self) -> &Arc<dyn Mailbox> {
        &self.mailbox
    }

    /// The CRM server's API client (also the offline copy's, R-O1).
    pub fn crm(&self) -> &CrmClient {
        &self.crm
    }

    /// The folder of contacts/, calendar/, tasks/ when they are local files.
    pub(crate) fn local_items_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// The item collections this mailbox has (`contacts`, `calendar`, `tasks`).
    pub(crate) fn item_collections(&self) -> &[&'static str] {
        &self.item_collections
    }

    /// Change notifications of the mailbox (R-T2).
    pub async fn watch(&self) -> anyhow::Result<crmsync_mailbox::Watch> {
        Ok(self.mailbox.watch().await?)
    }

    pub async fn status(&self) -> anyhow::Result<StatusReport> {
        let [not_tracked, to_be_tracked, tracked] = self.cache.link_counts().await?;
        let [m0, m1, m2] = self.cache.message_link_counts().await?;
        Ok(StatusReport {
            client_id: self.cache.meta("client_id").await?,
            not_tracked: not_tracked + m0,
            to_be_tracked: to_be_tracked + m1,
            tracked: tracked + m2,
            pending_operations: self.cache.journal_pending().await?.len(),
            kinds_not_synchronized: MailboxKind::ALL
                .iter()
                .filter(|k| !self.kinds.contains(k))
                .map(|k| k.to_string())
                .collect(),
            reported: self
                .problems()
                .await?
                .into_iter()
                .map(|(place, what)| format!("{place}: {what}"))
                .collect(),
        })
    }

    /// Items that cannot be read (malformed, unreadable), messages whose
    /// tracking was refused, and messages marked and moved out of the
    /// synchronized folders before being tracked (R-M8), as `(where, what
    /// and the fix)`.
    async fn problems(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = self
            .cache
            .item_problems()
            .await?
            .into_iter()
            .map(|(c, h, p)| (format!("{c}/{h}"), p))
            .collect();
        out.extend(self.mail_reported().await?);
        Ok(out)
    }

    /// R-W6: tells the server what this mailbox cannot read, for the user's
    /// Sync page; only when the list changed since it was last told. A
    /// failure is logged and retried at the next sync: it never fails one.
    async fn report_problems(&self, client: &str) -> anyhow::Result<()> {
        const SENT: &str = "problems_reported";
        let mut problems = self.problems().await?;
        problems.truncate(crmsync_core::MAX_REPORTED_PROBLEMS);
        let text = serde_json::to_string(&problems)?;
        let sent = self.cache.meta(SENT).await?;
        if sent.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        match self.crm.set_problems(client, &problems).await {
            Ok(()) => self.cache.set_meta(SENT, &text).await?,
            Err(e) => tracing::warn!(
                error = %e,
                "could not show the items that cannot be read on the Sync page; trying again at the next sync"
            ),
        }
        Ok(())
    }

    /// The item's modification time in the mailbox (R-F5), when the
    /// backend can tell.
    fn modified_at(&self, collection: &str, href: &str) -> Option<String> {
        let path = self.local_root.as_ref()?.join(collection).join(href);
        let t = std::fs::metadata(path).ok()?.modified().ok()?;
        Some(now_rfc3339(OffsetDateTime::from(t)))
    }

    /// The server's answer to this client's registration (R-C1), which
    /// tells it the kinds of collection the mailbox holds (SPEC §13).
    pub(crate) async fn registration(&self) -> anyhow::Result<Value> {
        Ok(self
            .crm
            .register(
                &self.cfg.client_name,
                self.cfg.on_behalf_of.as_deref(),
                &self.kinds,
            )
            .await?)
    }

    /// Registers (or finds again) this client: its id, its role, the
    /// server's name of the role, and the R-T5 limits.
    async fn register(&self) -> anyhow::Result<Registered> {
        let client = self.registration().await?;
        let id = client["id"]
            .as_str()
            .context("the server answered a registration without id")?
            .to_string();
        // Written once, not at every sync: a fenced write costs a server's
        // database four round trips (R-V6). Either way the lease is
        // checked before the prepare that follows (R-V4).
        if self.cache.meta("client_id").await?.as_deref() == Some(id.as_str()) {
            self.cache.hold_lease().await?;
        } else {
            self.cache.set_meta("client_id", &id).await?;
        }
        let role = if client["role"] == "delegated" {
            Role::Delegated
        } else if client["acts_as_primary"] == true {
            Role::Primary
        } else {
            Role::Secondary
        };
        let role_name = client["role"].as_str().unwrap_or("").to_string();
        if let Some(schedule) = client.get("schedule") {
            let every = (schedule["enabled"] != false).then(|| {
                std::time::Duration::from_secs(
                    schedule["interval_secs"].as_u64().unwrap_or(15 * 60).max(1),
                )
            });
            *self.schedule.lock().unwrap_or_else(|e| e.into_inner()) = Some(every);
        }
        let limits =
            serde_json::from_value(client["mass_delete_limits"].clone()).unwrap_or_default();
        Ok(Registered {
            id,
            role,
            role_name,
            limits,
        })
    }

    /// R-T5 on the CRM side: per collection, the deletions and untracks
    /// this sync would push (deletions deferred per R-T2 do not go now),
    /// and how many tracked items the collection holds.
    async fn crm_side_deletions(
        &self,
        touched: &BTreeMap<(String, String), Touched>,
        role: Role,
        defer_deletions: bool,
    ) -> anyhow::Result<Vec<Deletions>> {
        let mut per: BTreeMap<&str, u64> = BTreeMap::new();
        for ((collection, _), t) in touched {
            let pushes = plan_item(t.link, CrmSide::Unchanged, t.side, role)
                .into_iter()
                .any(|a| a == Action::PushUntrack || (a == Action::PushDelete && !defer_deletions));
            if pushes {
                *per.entry(collection.as_str()).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for (collection, deletes) in per {
            out.push(Deletions {
                collection: collection.to_string(),
                deletes,
                held: self.cache.tracked_count(collection).await?,
            });
        }
        Ok(out)
    }

    /// One synchronization: (a) scan the collections while (b) registering
    /// and preparing, classify what the scan found, (c) apply the CRM's
    /// deliveries, push the mailbox's changes, (d) acknowledge, store the
    /// collections' states, then the mail folders.
    pub async fn sync_once(&self, options: SyncOptions) -> anyhow::Result<SyncReport> {
        let started = std::time::Instant::now();
        let ms = || started.elapsed().as_secs_f64() * 1e3;
        let writes_before = self.item_writes.load(Ordering::Relaxed);
        let mut run = ItemPass::default();
        let (registered, prep, scans) = self.register_prepare_and_scan(&mut run.report).await?;
        let Registered {
            id: client,
            role,
            role_name,
            limits,
        } = registered;
        run.report.client_id = client.clone();
        run.report.role = role_name;
        if let Some(upto) = prep["upto_version"].as_i64() {
            *self.crm_position.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((client.clone(), upto));
        }
        tracing::debug!(ms = ms(), "registered, prepared, scanned");
        for (collection, scan) in self.item_collections.iter().copied().zip(scans) {
            let (stored, changes) = scan?;
            if let Some(state) = stored {
                run.stored_states.insert(collection.to_string(), state);
            }
            self.classify_scan(collection, changes?, &mut run).await?;
        }
        tracing::debug!(ms = ms(), "scan classified");
        // R-T5: a sync that would delete too much, on either side, deletes
        // nothing on both.
        if !options.allow_mass_delete {
            let crm_side = self
                .crm_side_deletions(&run.touched, role, options.defer_deletions)
                .await?;
            run.report.mass_delete =
                mass_delete_message(&prep["mass_delete"], &crm_side, limits.exceeded(&crm_side));
        }
        let batch = prep["batch"].as_str();
        if let Some(batch) = batch {
            let total = prep["total"].as_u64().unwrap_or(0) as usize;
            self.apply_deliveries(&client, batch, total, role, &mut run)
                .await?;
        }
        tracing::debug!(ms = ms(), "deliveries applied");
        self.plan_untouched(role, &mut run).await?;
        // (d) acknowledge what was applied.
        if let (Some(batch), false) = (batch, run.acks.is_empty()) {
            let r = self.crm.ack(&client, batch, &run.acks).await?;
            run.report.acknowledged += r["acknowledged"].as_u64().unwrap_or(0) as usize;
        }
        run.leave_deletions(options);
        // Mailbox → CRM: journal first, then send (R-T4).
        if !run.ops.is_empty() {
            let ops = std::mem::take(&mut run.ops);
            self.cache.journal_add_with_messages(&ops, &[]).await?;
            let failed = self.send(&client, ops, &mut run.report).await?;
            run.incomplete.extend(failed);
        }
        if run.report.left_for_primary > 0 {
            run.incomplete
                .extend(collections().into_iter().map(str::to_string));
        }
        let wrote = self.item_writes.load(Ordering::Relaxed) != writes_before;
        self.store_states(wrote, &mut run).await?;
        tracing::debug!(ms = ms(), "contacts, calendar, tasks done");
        // Mail folders (crate::mail).
        let mut report = run.report;
        self.sync_mail(&client, role, options, &mut report).await?;
        self.report_problems(&client).await?;
        report.elapsed_ms = ms();
        Ok(report)
    }

    /// Operations journaled by an earlier, interrupted sync (R-T4) go
    /// first: their answers may write into the mailbox before the scan.
    /// Without any, registration and prepare (b) run while the mailbox is
    /// scanned (a): neither depends on the other.
    async fn register_prepare_and_scan(
        &self,
        report: &mut SyncReport,
    ) -> anyhow::Result<(Registered, Value, Vec<anyhow::Result<Scan>>)> {
        let pending = self.cache.journal_pending().await?;
        if pending.is_empty() {
            let crm_side = async {
                let registered = self.register().await?;
                let prep = self.crm.prepare(&registered.id).await?;
                anyhow::Ok((registered, prep))
            };
            let (crm_side, scans) = tokio::join!(crm_side, self.scan_all());
            let (registered, prep) = crm_side?;
            Ok((registered, prep, scans))
        } else {
            let registered = self.register().await?;
            self.send(&registered.id, pending, report).await?;
            let scans = self.scan_all().await;
            let prep = self.crm.prepare(&registered.id).await?;
            Ok((registered, prep, scans))
        }
    }

    /// (a) The collections scanned side by side (a backend's scan is mostly
    /// waiting on the file system or the network), each from its stored
    /// state (kept, to store the new one only when it differs).
    async fn scan_all(&self) -> Vec<anyhow::Result<Scan>> {
        futures_util::future::join_all(self.item_collections.iter().map(|&collection| async move {
            let state = self.cache.sync_state(collection).await?.map(SyncState::new);
            let changes = match self.mailbox.changes_since(collection, state.as_ref()).await {
                Err(crmsync_mailbox::Error::InvalidSyncState { .. }) => {
                    self.mailbox.changes_since(collection, None).await
                }
                other => other,
            };
            anyhow::Ok((state, changes))
        }))
        .await
    }

    /// What one collection's scan found: its unreadable items reported, its
    /// changed items read and classified, its deletions looked at.
    async fn classify_scan(
        &self,
        collection: &str,
        changes: crmsync_mailbox::Changes,
        run: &mut ItemPass,
    ) -> anyhow::Result<()> {
        if !changes.failed.is_empty() {
            run.incomplete.insert(collection.to_string());
            for (href, e) in &changes.failed {
                run.report
                    .note_item_failure(format!("{collection}/{href}: {e}"), e);
                self.cache
                    .set_item_problem(collection, href, &e.to_string())
                    .await?;
            }
        }
        self.read_changed(collection, &changes, run).await?;
        self.classify_gone(collection, &changes, run).await?;
        run.new_states.push((collection.to_string(), changes.state));
        Ok(())
    }

    /// Reads what changed, a batch at a time (one multiget on DAV), and
    /// classifies each item against the cache.
    async fn read_changed(
        &self,
        collection: &str,
        changes: &crmsync_mailbox::Changes,
        run: &mut ItemPass,
    ) -> anyhow::Result<()> {
        let mut to_read = Vec::new();
        for r in &changes.changed {
            let cached = self.cache.item(collection, &r.href).await?;
            if cached.as_ref().is_none_or(|c| c.etag != r.etag.as_str()) {
                to_read.push((r.href.clone(), cached));
            }
        }
        for batch in to_read.chunks(READ_BATCH) {
            let hrefs: Vec<String> = batch.iter().map(|(h, _)| h.clone()).collect();
            let mut read = self.mailbox.get_many(collection, &hrefs).await?.into_iter();
            for (href, cached) in batch {
                let got = match read.next() {
                    Some((_, Ok(item))) => item,
                    Some((_, Err(crmsync_mailbox::Error::NotFound { .. }))) => continue,
                    Some((_, Err(e))) => {
                        run.incomplete.insert(collection.to_string());
                        run.report.note_item_failure(e.to_string(), &e);
                        self.cache
                            .set_item_problem(collection, href, &e.to_string())
                            .await?;
                        continue;
                    }
                    None => break,
                };
                let item = match parse_item(&got.data) {
                    Ok(i) => i,
                    Err(e) => {
                        let problem = format!("cannot be read ({e}); fix or remove the item");
                        run.report
                            .skipped
                            .push(format!("{collection}/{href}: {problem}"));
                        self.cache
                            .set_item_problem(collection, href, &problem)
                            .await?;
                        continue;
                    }
                };
                self.cache.clear_item_problem(collection, href).await?;
                let found = Found {
                    collection: collection.to_string(),
                    href: got.href.clone(),
                    etag: got.etag.as_str().to_string(),
                    bytes: got.data,
                    item,
                };
                if let Some(t) = self.classify(cached.clone(), found).await? {
                    run.touched
                        .insert((collection.to_string(), href.clone()), t);
                }
            }
        }
        Ok(())
    }

    /// The items gone from the collection. Items waiting to be tracked
    /// (R-M3 state 1) keep the collection's state from being stored, so a
    /// scan cannot see them go: look. Those this scan listed are there; the
    /// others are read in one batch.
    async fn classify_gone(
        &self,
        collection: &str,
        changes: &crmsync_mailbox::Changes,
        run: &mut ItemPass,
    ) -> anyhow::Result<()> {
        let mut gone = changes.deleted.clone();
        let unseen: Vec<String> = self
            .cache
            .items_with_link(collection, 1)
            .await?
            .into_iter()
            .map(|w| w.href)
            .filter(|h| !gone.contains(h) && !changes.changed.iter().any(|r| &r.href == h))
            .collect();
        if !unseen.is_empty() {
            for (href, got) in self.mailbox.get_many(collection, &unseen).await? {
                if matches!(got, Err(crmsync_mailbox::Error::NotFound { .. })) {
                    gone.push(href);
                }
            }
        }
        for href in &gone {
            self.cache.clear_item_problem(collection, href).await?;
            let Some(cached) = self.cache.item(collection, href).await? else {
                continue;
            };
            if cached.link == 2 {
                run.touched.insert(
                    (collection.to_string(), href.clone()),
                    Touched {
                        cached: Some(cached),
                        current: None,
                        link: LinkState::Tracked,
                        side: MailboxSide::Deleted,
                    },
                );
                continue;
            }
            if cached.link == 1 {
                // R-M8: marked but not yet tracked, and gone from the
                // synchronized collection: reported, never dropped silently.
                let problem = format!(
                    "\"{}\" was marked for tracking but moved out of the synchronized collections (or deleted) before it was tracked; put it back to track it",
                    cached.uid
                );
                run.report
                    .reported
                    .push(format!("{collection}/{href}: {problem}"));
                self.cache
                    .set_item_problem(collection, href, &problem)
                    .await?;
            }
            self.cache.remove_item(collection, href).await?;
        }
        Ok(())
    }

    /// (c) CRM → mailbox, one page of deliveries (and their records) at a
    /// time.
    async fn apply_deliveries(
        &self,
        client: &str,
        batch: &str,
        total: usize,
        role: Role,
        run: &mut ItemPass,
    ) -> anyhow::Result<()> {
        // Items the scan found with an X-CRM-ID the cache does not hold
        // linked (R-M2): a delivery of that record updates them.
        let mut by_crm_id: HashMap<String, (String, String)> = HashMap::new();
        for (key, t) in &run.touched {
            if t.link == LinkState::ToBeTracked {
                if let Some(id) = t.current.as_ref().and_then(|f| f.item.crm_id) {
                    by_crm_id.insert(id.to_string(), key.clone());
                }
            }
        }
        let mut delivered = 0;
        let mut cursor = None;
        loop {
            let (deliveries, next) = self.crm.deliveries_page(client, batch, cursor).await?;
            let wanted: Vec<String> = deliveries
                .iter()
                .filter(|d| d["action"] != "remove")
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect();
            let records: HashMap<String, Value> = self
                .crm
                .records(client, batch, &wanted)
                .await?
                .into_iter()
                .filter_map(|r| Some((r["id"].as_str()?.to_string(), r)))
                .collect();
            for d in &deliveries {
                delivered += 1;
                if delivered % 50 == 0 {
                    self.progress("writing CRM records into the mailbox", delivered, total);
                }
                self.apply_delivery(d, &records, role, &mut by_crm_id, run)
                    .await?;
            }
            self.progress("writing CRM records into the mailbox", delivered, total);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(())
    }

    /// One delivery: planned against the local side of its record and
    /// executed; acknowledged only when everything it asked was done.
    async fn apply_delivery(
        &self,
        d: &Value,
        records: &HashMap<String, Value>,
        role: Role,
        by_crm_id: &mut HashMap<String, (String, String)>,
        run: &mut ItemPass,
    ) -> anyhow::Result<()> {
        let (Some(id), Some(set)) = (d["id"].as_str(), d["set"].as_str()) else {
            return Ok(());
        };
        let version = d["version"].as_i64().unwrap_or(0);
        if set == EntitySet::Emails.as_str() {
            // R-M7 and §9 for tracked messages (crate::mail).
            if self
                .apply_mail_delivery(d, records.get(id), &mut run.report)
                .await?
            {
                run.acks.push((id.to_string(), version));
            }
            return Ok(());
        }
        let Some(collection) = EntitySet::from_str(set).ok().and_then(collection_of) else {
            return Ok(()); // not synchronized by this agent yet: not acknowledged
        };
        let crm_side = match (d["action"].as_str(), d["removal"].as_str()) {
            (Some("remove"), Some("unlink")) => CrmSide::Removed(Removal::Unlink),
            (Some("remove"), _) => CrmSide::Removed(Removal::Delete),
            _ => CrmSide::Changed,
        };
        if crm_side == CrmSide::Removed(Removal::Delete) && run.report.mass_delete.is_some() {
            run.report.held_deletions += 1;
            return Ok(());
        }
        let record = records.get(id);
        if crm_side == CrmSide::Changed && record.is_none() {
            run.report.errors.push(format!(
                "{set}/{id}: delivered without its record; retried next sync"
            ));
            return Ok(());
        }
        let (key, mut t) = self.local_side_of(id, set, by_crm_id, run).await?;
        for action in plan_item(t.link, crm_side, t.side, role) {
            let r = self
                .execute(
                    action,
                    collection,
                    &mut t,
                    record,
                    &mut run.ops,
                    &mut run.report,
                )
                .await;
            if let Err(e) = r {
                let e = LeaseLost::stops(e)?;
                run.report.errors.push(format!("{set}/{id}: {e:#}"));
                if let Some(k) = &key {
                    run.incomplete.insert(k.0.clone());
                }
                return Ok(());
            }
        }
        run.acks.push((id.to_string(), version));
        Ok(())
    }

    /// The local side of a delivered record: its linked item (as the scan
    /// found it, or unchanged), an item the scan found by its X-CRM-ID
    /// (R-M2: linked again, the CRM version wins), or nothing yet.
    async fn local_side_of(
        &self,
        id: &str,
        set: &str,
        by_crm_id: &mut HashMap<String, (String, String)>,
        run: &mut ItemPass,
    ) -> anyhow::Result<(Option<(String, String)>, Touched)> {
        if let Some(c) = self.cache.item_by_crm_id(id).await?.filter(|c| c.link == 2) {
            let key = (c.collection.clone(), c.href.clone());
            let t = run.touched.remove(&key).unwrap_or(Touched {
                cached: Some(c),
                current: None,
                link: LinkState::Tracked,
                side: MailboxSide::Unchanged,
            });
            return Ok((Some(key), t));
        }
        if let Some(key) = by_crm_id.remove(id) {
            let mut t = run.touched.remove(&key).expect("scanned item");
            let f = t.current.as_ref().expect("scanned item");
            t.cached = Some(CachedItem {
                collection: f.collection.clone(),
                href: f.href.clone(),
                etag: f.etag.clone(),
                uid: f.item.uid.clone(),
                set: set.to_string(),
                crm_id: Some(id.to_string()),
                link: 2,
                version: 0,
                baseline: comparable(&f.item),
            });
            t.link = LinkState::Tracked;
            t.side = MailboxSide::Unchanged;
            return Ok((Some(key), t));
        }
        let nothing = Touched {
            cached: None,
            current: None,
            link: LinkState::NotTracked,
            side: MailboxSide::Unchanged,
        };
        Ok((None, nothing))
    }

    /// Mailbox → CRM for the items no delivery touched: their push
    /// operations join the run's (sent after the acknowledgement).
    async fn plan_untouched(&self, role: Role, run: &mut ItemPass) -> anyhow::Result<()> {
        for ((collection, _), mut t) in std::mem::take(&mut run.touched) {
            for action in plan_item(t.link, CrmSide::Unchanged, t.side, role) {
                if let Err(e) = self
                    .execute(
                        action,
                        &collection,
                        &mut t,
                        None,
                        &mut run.ops,
                        &mut run.report,
                    )
                    .await
                {
                    let e = LeaseLost::stops(e)?;
                    run.incomplete.insert(collection.clone());
                    run.report.errors.push(format!("{e:#}"));
                    break;
                }
            }
            if t.link == LinkState::ToBeTracked && role != Role::Primary {
                run.incomplete.insert(collection.clone());
            }
        }
        Ok(())
    }

    /// The new state of every complete collection. Settling re-scans a
    /// collection to step over the agent's own writes; with no write into
    /// the mailbox (`wrote` false) the scan's state is exact. Only what
    /// changes is written: a state that moved, the intents of a collection
    /// that has some (a no-change cycle writes nothing, R-V6).
    async fn store_states(&self, wrote: bool, run: &mut ItemPass) -> anyhow::Result<()> {
        let new_states = std::mem::take(&mut run.new_states);
        let with_intents = if new_states.is_empty() {
            HashSet::new()
        } else {
            self.cache.write_intent_collections().await?
        };
        for (collection, state) in new_states {
            if run.incomplete.contains(&collection) {
                continue;
            }
            let state = if wrote {
                self.settle(&collection, state).await?
            } else {
                state
            };
            if run.stored_states.get(&collection) != Some(&state) {
                self.cache
                    .set_sync_state(&collection, state.as_str())
                    .await?;
            }
            if with_intents.contains(&collection) {
                self.cache.write_intents_clear(&collection).await?;
            }
        }
        Ok(())
    }

    /// The state to store after a sync: the scan's state moved over the
    /// agent's own writes (items whose etag the cache holds, deletions of
    /// items it forgot), so the next scan does not see them as the user's.
    /// If anything else changed meanwhile, the scan's state is kept and the
    /// next scan finds it (R-T3).
    async fn settle(&self, collection: &str, scanned: SyncState) -> anyhow::Result<SyncState> {
        let Ok(after) = self.mailbox.changes_since(collection, Some(&scanned)).await else {
            return Ok(scanned);
        };
        if !after.failed.is_empty() {
            return Ok(scanned);
        }
        for r in &after.changed {
            match self.cache.item(collection, &r.href).await? {
                Some(c) if c.etag == r.etag.as_str() => {}
                _ => return Ok(scanned),
            }
        }
        for href in &after.deleted {
            if self.cache.item(collection, href).await?.is_some() {
                return Ok(scanned);
            }
        }
        Ok(after.state)
    }

    /// Decides what a changed mailbox item is against the cache.
    async fn classify(
        &self,
        cached: Option<CachedItem>,
        found: Found,
    ) -> anyhow::Result<Option<Touched>> {
        let item = &found.item;
        // A write of the CRM record that a crash cut short (R-T4): the item
        // holds what was written, so that is its baseline, and only what the
        // user changed since goes to the CRM.
        let mut cached = cached;
        if let Some(id) = item.crm_id {
            if let Some(w) = self.cache.write_intent(&id.to_string()).await? {
                if w.old_etag.as_deref() != Some(found.etag.as_str()) {
                    cached = Some(CachedItem {
                        collection: found.collection.clone(),
                        href: found.href.clone(),
                        etag: String::new(),
                        uid: item.uid.clone(),
                        set: item.set.as_str().to_string(),
                        crm_id: Some(id.to_string()),
                        link: 2,
                        version: w.version,
                        baseline: w.baseline,
                    });
                    // Linked from now on: a delivery of the record finds it.
                    self.cache.put_item(cached.as_ref().unwrap()).await?;
                }
            }
        }
        let linked_here = cached.as_ref().is_some_and(|c| c.link == 2);
        if linked_here {
            let c = cached.clone().unwrap();
            let side = if !item.tracked || item.crm_id.is_none() {
                MailboxSide::MarkerRemoved
            } else if comparable(item) == c.baseline || is_closed_todo(&c) {
                // Only unmapped properties changed, or the to-do is completed
                // or cancelled, whose edits stay in the mailbox (R-E4):
                // nothing to synchronize.
                let mut c = c;
                c.etag = found.etag.clone();
                self.cache.put_item(&c).await?;
                if let Some(id) = &c.crm_id {
                    self.cache.write_intent_done(id).await?;
                }
                return Ok(None);
            } else {
                MailboxSide::Changed
            };
            return Ok(Some(Touched {
                cached,
                current: Some(found),
                link: LinkState::Tracked,
                side,
            }));
        }
        // Marked for tracking (R-M1), or carrying an X-CRM-ID the cache does
        // not hold linked (R-M2: relink, never duplicate).
        if item.tracked || item.crm_id.is_some() {
            // No etag yet: the item is "changed" until it is tracked.
            let row = unlinked(&found, String::new(), 1);
            self.cache.put_item(&row).await?;
            return Ok(Some(Touched {
                cached: Some(row),
                current: Some(found),
                link: LinkState::ToBeTracked,
                side: MailboxSide::Changed,
            }));
        }
        // Not (or no longer) marked.
        let row = unlinked(&found, found.etag.clone(), 0);
        self.cache.put_item(&row).await?;
        Ok(None)
    }

    /// Writes a CRM record into the mailbox at the item of `t` (or as a new
    /// item) and makes it the item's baseline.
    async fn write_record(
        &self,
        collection: &str,
        t: &mut Touched,
        record: &Value,
    ) -> anyhow::Result<()> {
        let rec = record_of(record)?;
        let company = record["company"].as_str();
        // R-E2: a series travels with its modified and cancelled instances.
        let exceptions = exception_records(record, rec.set);
        // The bytes to write, and the baseline: what the item then shows.
        let render = |uid: &str, existing: Option<&[u8]>| {
            let mut item = MailboxItem::from_records(&rec, &exceptions, uid, true);
            // A record that comes without its exceptions (a refusal's CRM
            // version, an item that is not a series): the item's own
            // exceptions stay, never dropped.
            if record.get("exceptions").is_none() {
                if let Some(old) = existing.and_then(|b| parse_item(b).ok()) {
                    item.exceptions = old.exceptions;
                }
            }
            let mut opts = RenderOptions::new(OffsetDateTime::now_utc());
            opts.vcard_version = VcardVersion::V4;
            opts.company = company;
            opts.existing = existing;
            let bytes = render_item(&item, &opts).or_else(|e| {
                if existing.is_some() {
                    let mut o = RenderOptions::new(OffsetDateTime::now_utc());
                    o.company = company;
                    render_item(&item, &o)
                } else {
                    Err(e)
                }
            })?;
            Ok::<_, crmsync_core::mapping::MappingError>((bytes, comparable(&item)))
        };
        // R-T4: the write is recorded before it is made (see `classify`).
        let old_etag = match (&t.current, &t.cached) {
            (Some(f), _) => Some(f.etag.clone()),
            (None, Some(c)) => Some(c.etag.clone()),
            (None, None) => None,
        };
        self.cache
            .write_intent_put(&WriteIntent {
                crm_id: rec.id.to_string(),
                collection: collection.to_string(),
                version: rec.version,
                baseline: baseline_of(&rec, &exceptions),
                old_etag,
            })
            .await?;
        let written: anyhow::Result<_> = async {
            Ok(match &t.cached {
                Some(c) => {
                    // Overwrite with the etag we know as precondition.
                    let expected = match &t.current {
                        Some(f) => f.etag.clone(),
                        None => c.etag.clone(),
                    };
                    let existing = match &t.current {
                        Some(f) => f.bytes.clone(),
                        None => self.mailbox.get(collection, &c.href).await?.data,
                    };
                    let uid = parse_item(&existing)
                        .map(|i| i.uid)
                        .unwrap_or_else(|_| c.uid.clone());
                    let (bytes, baseline) = render(&uid, Some(&existing))?;
                    let r = self
                        .mailbox
                        .update(collection, &c.href, &Etag::new(expected), &bytes)
                        .await?;
                    (r, uid, baseline)
                }
                None => {
                    let uid = rec.id.to_string();
                    let (bytes, mut baseline) = render(&uid, None)?;
                    let r = match self.mailbox.create(collection, &uid, &bytes).await {
                        Ok(r) => r,
                        Err(crmsync_mailbox::Error::AlreadyExists { href, .. }) => {
                            let cur = self.mailbox.get(collection, &href).await?;
                            let ours =
                                parse_item(&cur.data).is_ok_and(|i| i.crm_id == Some(rec.id));
                            if ours {
                                // A copy written before a crash: overwrite it.
                                let (bytes, shown) = render(&uid, Some(&cur.data))?;
                                baseline = shown;
                                self.mailbox
                                    .update(collection, &href, &cur.etag, &bytes)
                                    .await?
                            } else {
                                // The user's own item under that name: never
                                // overwritten; the record gets a new name.
                                let name = Uuid::new_v4().to_string();
                                self.mailbox.create(collection, &name, &bytes).await?
                            }
                        }
                        Err(e) => return Err(e.into()),
                    };
                    (r, uid, baseline)
                }
            })
        }
        .await;
        if written.is_err() {
            self.cache.write_intent_done(&rec.id.to_string()).await?;
        }
        let (r, uid, baseline) = written?;
        self.item_writes.fetch_add(1, Ordering::Relaxed);
        let row = linked(collection, &r.href, r.etag.as_str(), uid, &rec, baseline);
        self.cache.put_item(&row).await?;
        self.cache.write_intent_done(&rec.id.to_string()).await?;
        t.cached = Some(row);
        t.current = None;
        t.link = LinkState::Tracked;
        Ok(())
    }

    /// The etag and UID of the item at `href` if it is linked to `rec` and
    /// shows exactly `baseline` (what writing `rec` gives); `None` when it
    /// does not, or cannot be read.
    async fn holding(
        &self,
        collection: &str,
        href: &str,
        rec: &Record,
        baseline: &Map<String, Value>,
    ) -> Option<(String, String)> {
        let current = self.mailbox.get(collection, href).await.ok()?;
        let item = parse_item(&current.data).ok()?;
        (item.crm_id == Some(rec.id) && comparable(&item) == *baseline)
            .then(|| (current.etag.as_str().to_string(), item.uid))
    }

    /// Drops X-CRM-ID and the marker from the item; the cache keeps it as
    /// not tracked.
    async fn unlink(&self, collection: &str, t: &mut Touched) -> anyhow::Result<()> {
        let c = t
            .cached
            .clone()
            .context("unlink of an item the cache does not hold")?;
        let (etag, bytes) = match &t.current {
            Some(f) => (f.etag.clone(), f.bytes.clone()),
            None => {
                let i = self.mailbox.get(collection, &c.href).await?;
                (i.etag.as_str().to_string(), i.data)
            }
        };
        let mut item = parse_item(&bytes)?;
        item.crm_id = None;
        item.tracked = false;
        let mut opts = RenderOptions::new(OffsetDateTime::now_utc());
        opts.existing = Some(&bytes);
        let out = render_item(&item, &opts)?;
        self.cache.hold_lease().await?;
        let r = self
            .mailbox
            .update(collection, &c.href, &Etag::new(etag), &out)
            .await?;
        self.item_writes.fetch_add(1, Ordering::Relaxed);
        let row = CachedItem {
            etag: r.etag.as_str().to_string(),
            crm_id: None,
            link: 0,
            version: 0,
            baseline: Map::new(),
            ..c
        };
        self.cache.put_item(&row).await?;
        t.cached = Some(row);
        t.current = None;
        t.link = LinkState::NotTracked;
        Ok(())
    }

    async fn execute(
        &self,
        action: Action,
        collection: &str,
        t: &mut Touched,
        record: Option<&Value>,
        ops: &mut Vec<JournalEntry>,
        report: &mut SyncReport,
    ) -> anyhow::Result<()> {
        let op = |kind: &str, t: &Touched, body: Value| -> JournalEntry {
            let (href, etag) = match (&t.current, &t.cached) {
                (Some(f), _) => (f.href.clone(), f.etag.clone()),
                (None, Some(c)) => (c.href.clone(), c.etag.clone()),
                (None, None) => (String::new(), String::new()),
            };
            let op_id = Uuid::new_v4().to_string();
            let mut body = body;
            body["op_id"] = json!(op_id);
            body["kind"] = json!(kind);
            JournalEntry {
                op_id,
                collection: collection.to_string(),
                href,
                etag,
                op: body,
            }
        };
        let crm_id = t.cached.as_ref().and_then(|c| c.crm_id.clone());
        let set = t
            .current
            .as_ref()
            .map(|f| f.item.set.as_str().to_string())
            .or_else(|| t.cached.as_ref().map(|c| c.set.clone()))
            .unwrap_or_default();
        match action {
            Action::WriteToMailbox => {
                let record = record.context("no record to write")?;
                self.write_record(collection, t, record).await?;
                report.written_to_mailbox += 1;
            }
            Action::DeleteFromMailbox => {
                let c = t.cached.clone().context("delete of an unknown item")?;
                self.cache.hold_lease().await?;
                match self
                    .mailbox
                    .delete(collection, &c.href, &Etag::new(c.etag.clone()))
                    .await
                {
                    Ok(()) | Err(crmsync_mailbox::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                self.item_writes.fetch_add(1, Ordering::Relaxed);
                self.cache.remove_item(collection, &c.href).await?;
                report.deleted_from_mailbox += 1;
            }
            Action::UnlinkInMailbox => {
                self.unlink(collection, t).await?;
                report.unlinked_in_mailbox += 1;
            }
            Action::PushTrack => {
                let f = t.current.as_ref().context("track of an item not scanned")?;
                let mut body = json!({"set": f.item.set.as_str(), "fields": f.item.fields, "item_uid": f.item.uid});
                if has_status(f.item.set) {
                    body["state"] = json!(f.item.status.as_str());
                }
                if let Some(id) = f.item.crm_id {
                    body["crm_id"] = json!(id.to_string());
                }
                if !f.item.exceptions.is_empty() {
                    body["exceptions"] = exceptions_op(&f.item);
                }
                ops.push(op("track", t, body));
            }
            Action::PushUpdate => {
                let c = t.cached.as_ref().context("update of an unknown item")?;
                let f = t.current.as_ref().context("update of an item not scanned")?;
                let mut body = json!({
                    "set": set, "id": crm_id, "base_version": c.version,
                    "baseline": c.baseline, "fields": f.item.fields,
                });
                if let Some(base) = c.baseline.get(STATE_KEY) {
                    body["base_state"] = base.clone();
                    body["state"] = json!(f.item.status.as_str());
                }
                // R-E2: the series' exceptions as the item holds them (an
                // empty list when its overrides were removed).
                if ItemKind::for_set(f.item.set) == Some(ItemKind::Event) {
                    body["exceptions"] = exceptions_op(&f.item);
                }
                if let Some(m) = self
                    .modified_at(collection, &f.href)
                    .or_else(|| revised_at(&f.bytes))
                {
                    body["mailbox_modified_at"] = json!(m);
                }
                ops.push(op("update", t, body));
            }
            Action::PushDelete => {
                ops.push(op("delete", t, json!({"set": set, "id": crm_id})));
            }
            Action::PushUntrack => {
                ops.push(op(
                    "untrack",
                    t,
                    json!({"set": set, "id": crm_id, "delete_in_crm": false}),
                ));
            }
            Action::ForgetLink => {
                if let Some(c) = t.cached.take() {
                    match &t.current {
                        Some(f) => {
                            let row = CachedItem {
                                etag: f.etag.clone(),
                                crm_id: None,
                                link: 0,
                                version: 0,
                                baseline: Map::new(),
                                ..c
                            };
                            self.cache.put_item(&row).await?;
                        }
                        None => self.cache.remove_item(collection, &c.href).await?,
                    }
                }
                t.link = LinkState::NotTracked;
            }
            Action::LeaveForPrimary => report.left_for_primary += 1,
            Action::Report => report.reported.push(format!(
                "{collection}/{}: edited in the mailbox but deleted in the CRM; kept in the mailbox, unlinked",
                t.cached.as_ref().map(|c| c.href.as_str()).unwrap_or("?")
            )),
        }
        Ok(())
    }

    /// Sends journaled operations and applies their answers; returns the
    /// collections with an operation that must be tried again.
    pub(crate) async fn send(
        &self,
        client: &str,
        mut entries: Vec<JournalEntry>,
        report: &mut SyncReport,
    ) -> anyhow::Result<Vec<String>> {
        self.restore_spooled(&mut entries).await?;
        let bodies: Vec<&Value> = entries.iter().map(|e| &e.op).collect();
        let results = self.crm.push(client, &bodies).await?;
        let mut retry = Vec::new();
        let total = entries.len();
        // Email answers: their message rows and the end of their journal
        // entries are written together, once for the batch.
        let mut batch = self.answer_batch(&entries).await;
        let mut done: Vec<String> = Vec::new();
        for (i, (entry, result)) in entries.iter().zip(results).enumerate() {
            if i % 100 == 0 || i + 1 == total {
                self.progress("applying the CRM's answers", i + 1, total);
            }
            let kind = entry.op["kind"].as_str().unwrap_or("").to_string();
            let email = entry.op["set"] == "emails";
            let applied = if email {
                self.apply_mail_answer(entry, &kind, &result, &mut batch, report)
                    .await
            } else {
                self.apply_answer(entry, &kind, &result, report).await
            };
            match applied {
                Ok(true) => {}
                Ok(false) => retry.push(entry.collection.clone()),
                Err(e) => {
                    let e = LeaseLost::stops(e)?;
                    retry.push(entry.collection.clone());
                    report.errors.push(format!(
                        "{}/{}: {kind}: {e:#}",
                        entry.collection, entry.href
                    ));
                }
            }
            if email {
                done.push(entry.op_id.clone());
            } else {
                self.cache.journal_done(&entry.op_id).await?;
            }
        }
        self.cache
            .journal_done_with_messages(&done, &batch.rows)
            .await?;
        // Answered: the spooled messages of these operations are not
        // needed any more (mail/mod.rs, `read_large`).
        for entry in &entries {
            if let Some(file) = entry.op["raw_file"].as_str() {
                let _ = std::fs::remove_file(file);
            }
        }
        Ok(retry)
    }

    /// R-V4: a large message journaled by another process, whose spool
    /// file is on that machine, is sent from the copy the server's
    /// database keeps (written into this machine's spool, removed once
    /// answered like any spool file).
    async fn restore_spooled(&self, entries: &mut [JournalEntry]) -> anyhow::Result<()> {
        for entry in entries {
            let Some(file) = entry.op["raw_file"].as_str() else {
                continue;
            };
            if std::path::Path::new(file).exists() {
                continue;
            }
            let Some(raw) = self.cache.spooled(&entry.op_id).await? else {
                continue;
            };
            let dir = self.spool_dir();
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the spool folder {}", dir.display()))?;
            let path = dir.join(format!("{}.eml", Uuid::new_v4()));
            std::fs::write(&path, raw)
                .with_context(|| format!("cannot write the spool file {}", path.display()))?;
            entry.op["raw_file"] = json!(path.to_string_lossy());
        }
        Ok(())
    }

    /// Applies one push answer for an item (emails go to
    /// `apply_mail_answer`). `Ok(false)`: refused in a way that a later
    /// sync may resolve (the item is looked at again).
    async fn apply_answer(
        &self,
        entry: &JournalEntry,
        kind: &str,
        result: &Value,
        report: &mut SyncReport,
    ) -> anyhow::Result<bool> {
        let collection = entry.collection.as_str();
        let cached = self.cache.item(collection, &entry.href).await?;
        if result["status"] != "ok" {
            let code = result["code"].as_str().unwrap_or("refused");
            report.refused.push(format!(
                "{collection}/{}: {kind} refused: {code}: {}",
                entry.href,
                result["message"].as_str().unwrap_or("")
            ));
            // The CRM version to show instead (R-E3, R-A).
            if let (Some(rec), Some(c)) = (result.get("record"), cached.clone()) {
                let mut t = Touched {
                    current: None,
                    cached: Some(CachedItem {
                        etag: entry.etag.clone(),
                        ..c
                    }),
                    link: LinkState::Tracked,
                    side: MailboxSide::Unchanged,
                };
                self.write_record(collection, &mut t, rec).await?;
                return Ok(true);
            }
            if matches!(code, "not_linked" | "not_found") && kind != "track" {
                if let Some(c) = cached {
                    if kind == "delete" {
                        self.cache.remove_item(collection, &c.href).await?;
                    } else {
                        let mut t = Touched {
                            cached: Some(c),
                            current: None,
                            link: LinkState::Tracked,
                            side: MailboxSide::Unchanged,
                        };
                        self.unlink(collection, &mut t).await?;
                    }
                }
                return Ok(true);
            }
            return Ok(false);
        }
        *report.pushed.entry(kind.to_string()).or_default() += 1;
        match kind {
            "track" | "update" => {
                let rec = result
                    .get("record")
                    .context("the server's answer carries no record")?;
                let base = cached.unwrap_or(CachedItem {
                    collection: collection.to_string(),
                    href: entry.href.clone(),
                    etag: entry.etag.clone(),
                    uid: String::new(),
                    set: entry.op["set"].as_str().unwrap_or("").to_string(),
                    crm_id: None,
                    link: 1,
                    version: 0,
                    baseline: Map::new(),
                });
                let mut t = Touched {
                    cached: Some(CachedItem {
                        etag: entry.etag.clone(),
                        ..base
                    }),
                    current: None,
                    link: LinkState::Tracked,
                    side: MailboxSide::Unchanged,
                };
                if let Err(e) = self.write_record(collection, &mut t, rec).await {
                    let r = record_of(rec)?;
                    let baseline = baseline_of(&r, &exception_records(rec, r.set));
                    // R-T4: a run stopped after writing this answer but
                    // before recording it left the item changed, by us.
                    if let Some((etag, uid)) =
                        self.holding(collection, &entry.href, &r, &baseline).await
                    {
                        let row = linked(collection, &entry.href, &etag, uid, &r, baseline);
                        self.cache.put_item(&row).await?;
                        return Ok(true);
                    }
                    // Edited again meanwhile: linked now, the edit goes out
                    // as an update next time (baseline = the CRM's answer).
                    let uid = t.cached.as_ref().map(|c| c.uid.clone()).unwrap_or_default();
                    let row = linked(collection, &entry.href, &entry.etag, uid, &r, baseline);
                    self.cache.put_item(&row).await?;
                    report.errors.push(format!(
                        "{collection}/{}: linked, but the CRM's answer could not be written ({e}); retried next sync",
                        entry.href
                    ));
                    return Ok(false);
                }
            }
            "delete" => {
                self.cache.remove_item(collection, &entry.href).await?;
            }
            "untrack" => {
                if let Some(c) = cached {
                    let mut t = Touched {
                        cached: Some(CachedItem {
                            etag: entry.etag.clone(),
                            ..c
                        }),
                        current: None,
                        link: LinkState::Tracked,
                        side: MailboxSide::Unchanged,
                    };
                    if self.unlink(collection, &mut t).await.is_err() {
                        // Keep it unlinked in the cache; X-CRM-ID stays.
                        if let Some(c) = self.cache.item(collection, &entry.href).await? {
                            self.cache
                                .put_item(&CachedItem {
                                    crm_id: None,
                                    link: 0,
                                    ..c
                                })
                                .await?;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_t5_message_says_what_would_go_on_which_side_and_how_to_go_on() {
        let crm_side = [Deletions {
            collection: "tasks".into(),
            deletes: 10,
            held: 10,
        }];
        let reason = MassDeleteLimits::default().exceeded(&crm_side);
        let quiet = json!({"exceeded": false, "deletes": 0});
        let text = mass_delete_message(&quiet, &crm_side, reason).expect("held");
        assert!(
            text.contains("10 from tasks")
                && text.contains("10 of the 10 items of tasks")
                && text.ends_with("run `crmsync sync --allow-mass-delete` to go on"),
            "{text}"
        );
        let mailbox = json!({"exceeded": true, "deletes": 55, "reason": "55 deletions, more than the limit of 50"});
        let text = mass_delete_message(&mailbox, &[], None).expect("held");
        assert!(
            text.contains("delete 55 items from the mailbox (55 deletions")
                && text.contains("sync filters"),
            "{text}"
        );
        assert_eq!(mass_delete_message(&quiet, &[], None), None);
    }
}
