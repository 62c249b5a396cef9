//! R-O1, the agent's side of the offline copy (`[offline] enabled = true`):
//! after each sync the binary plays back what was changed offline and
//! refreshes the replica from the server's offline feed ([`go_online`]);
//! `crmsync offline` (and `crmsync agent` while the server cannot be
//! reached) serves the replica's API and web interface ([`serve`]). The
//! replica itself (schema, journal, what to send) is
//! `crmsync_server::replica`; this crate is the I/O around it, apart from
//! the binary so that its benchmark drives it as the agent does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;
use uuid::Uuid;

use crmsync_agent::crm::{CrmClient, CrmError};
use crmsync_core::EntitySet;
use crmsync_server::replica::{self, FeedPosition, Replica};

/// Records per page of the offline feed.
const FEED_PAGE: usize = 1000;

/// The server's answer when the user lacks the `go_offline` privilege.
const NO_PRIVILEGE: &str = "no_offline_privilege";

/// Where the replica of an agent lives: beside its cache.
pub fn replica_path(cache: &Path) -> PathBuf {
    cache.with_extension("offline.db")
}

/// What one go-online did.
#[derive(Debug, Default, serde::Serialize)]
pub struct OnlineReport {
    /// Offline changes the server applied (merged where both sides changed).
    pub played_back: usize,
    /// Offline changes the server refused, each with its reason; the
    /// replica took the server's version.
    pub refused: Vec<String>,
    /// Values a merge discarded (listed by `crmsync status --conflicts`).
    pub conflicts: usize,
    /// Server changes applied to the replica.
    pub refreshed: usize,
}

/// The offline copy an agent keeps at `path`: its replica, opened once
/// (opening brings the schema up to date) and kept open across syncs.
pub struct OfflineCopy {
    path: PathBuf,
    replica: Option<Replica>,
}

impl OfflineCopy {
    pub fn at(path: PathBuf) -> OfflineCopy {
        OfflineCopy {
            path,
            replica: None,
        }
    }

    /// Plays back the offline changes, then refreshes the replica. Without
    /// the privilege the replica is deleted and the error says so.
    pub async fn go_online(
        &mut self,
        crm: &CrmClient,
        token: &str,
        client_id: &str,
    ) -> anyhow::Result<OnlineReport> {
        let replica = match self.replica.take() {
            Some(r) => r,
            None => Replica::open(&self.path).await?,
        };
        let result = async {
            let mut report = play_back(&replica, crm, client_id).await?;
            report.refreshed = refresh(&replica, crm, token).await?;
            Ok::<_, anyhow::Error>(report)
        }
        .await;
        if let Err(e) = &result {
            if e.downcast_ref::<CrmError>().and_then(CrmError::code) == Some(NO_PRIVILEGE) {
                replica.store.pool.close().await;
                remove_replica(&self.path);
                anyhow::bail!(
                    "the CRM server does not allow this user an offline copy (the \"Go offline\" privilege is missing), so none is kept; ask an administrator to grant \"Go offline\" on the Admin page, or set [offline] enabled = false"
                );
            }
        }
        self.replica = Some(replica);
        result
    }
}

fn remove_replica(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Brings the replica up to the server's offline feed: the user's identity,
/// then every change after the last one seen. When the offline filters
/// changed, the whole feed is read again and what it no longer holds goes.
async fn refresh(replica: &Replica, crm: &CrmClient, token: &str) -> anyhow::Result<usize> {
    let identity = crm
        .request(reqwest::Method::GET, "/api/v1/offline/identity", None)
        .await?;
    replica
        .set_identity(&identity["user"], identity["password_hash"].as_str(), token)
        .await
        .context("cannot store the user in the offline copy")?;
    let mut position = replica.position().await?;
    let mut seen: Option<HashSet<Uuid>> = None;
    let mut applied = 0;
    loop {
        let page = crm
            .request(
                reqwest::Method::GET,
                &format!(
                    "/api/v1/offline/changes?since={}&limit={FEED_PAGE}",
                    position.since
                ),
                None,
            )
            .await?;
        let filters = page["filters"].as_str().map(str::to_string);
        if position.filters.is_some() && filters != position.filters && seen.is_none() {
            // The filters changed: start over, and keep only what matches.
            position = FeedPosition::default();
            seen = Some(HashSet::new());
            continue;
        }
        let (records, removed) = read_page(&page)?;
        if let Some(seen) = &mut seen {
            seen.extend(records.iter().map(|r| r.id));
        }
        position = FeedPosition {
            since: page["next_since"].as_i64().unwrap_or(position.since),
            filters,
        };
        replica.apply(&records, &removed, &position).await?;
        applied += records.len() + removed.len();
        if page["more"] != Value::Bool(true) {
            break;
        }
    }
    if let Some(keep) = seen {
        replica.retain(&keep).await?;
    }
    Ok(applied)
}

/// A feed page's records and removed ids. A record the replica cannot
/// take (a field this version does not know) is skipped with a warning,
/// never blocking the others.
fn read_page(page: &Value) -> anyhow::Result<(Vec<crmsync_core::Record>, Vec<Uuid>)> {
    let mut records = Vec::new();
    for r in page["records"].as_array().into_iter().flatten() {
        match set_of(r).and_then(|set| replica::record_from_server(set, r)) {
            Ok(record) => records.push(record),
            Err(e) => tracing::warn!(id = %r["id"], error = %e, "a record cannot be kept offline"),
        }
    }
    let removed = page["removed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Uuid::parse_str(r["id"].as_str()?).ok())
        .collect();
    Ok((records, removed))
}

fn set_of(r: &Value) -> anyhow::Result<EntitySet> {
    r["set"]
        .as_str()
        .context("a record of the offline feed has no set")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Offline changes sent per push request.
const PLAYBACK_BATCH: usize = 50;

/// R-O1's go-online: the journal in order, one push operation per
/// changed record, 50 to a request (each op id stored before it is sent,
/// so a playback cut off and repeated applies nothing twice); each answer
/// settles its record in the replica with the server's version.
async fn play_back(
    replica: &Replica,
    crm: &CrmClient,
    client_id: &str,
) -> anyhow::Result<OnlineReport> {
    let mut report = OnlineReport::default();
    let pending = replica.pending().await?;
    for batch in pending.chunks(PLAYBACK_BATCH) {
        let op_ids = replica.op_ids(batch).await?;
        let mut settled = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (change, op_id) in batch.iter().zip(&op_ids) {
            match replica::playback_op(change, op_id) {
                Some(op) => sent.push((change, op)),
                // Created and deleted offline: nothing to send.
                None => settled.push((change, None)),
            }
        }
        let ops: Vec<&Value> = sent.iter().map(|(_, op)| op).collect();
        let answers = crm.push(client_id, &ops).await?;
        for ((change, _), answer) in sent.into_iter().zip(answers) {
            let server = match &answer["record"] {
                Value::Object(_) => {
                    Some(replica::record_from_server(change.set, &answer["record"])?)
                }
                _ => None,
            };
            if answer["status"] == "ok" {
                report.played_back += 1;
                report.conflicts += answer["conflicts"].as_array().map_or(0, Vec::len);
            } else {
                let why = answer["message"].as_str().unwrap_or("refused");
                report.refused.push(format!("{}: {why}", describe(change)));
            }
            settled.push((change, server));
        }
        replica.settle(&settled).await?;
    }
    Ok(report)
}

/// A change as a person recognizes it: its set and name (the web pages'
/// display name; a record deleted offline is named from the server's
/// version).
fn describe(change: &replica::PendingChange) -> String {
    let fields = match (&change.current, &change.base) {
        (Some(r), _) => &r.fields,
        (None, Some(b)) => &b.fields,
        (None, None) => return format!("{} {}", change.set, change.id),
    };
    let name = crmsync_server::web::name_of(change.set, fields);
    format!("{} \"{name}\"", change.set)
}

/// Serves the replica's API and web interface at `listen` until
/// `shutdown` resolves.
pub async fn serve(
    path: &Path,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!(
            "there is no offline copy at {} yet; set [offline] enabled = true and run `crmsync sync` once while the CRM server can be reached",
            path.display()
        );
    }
    let replica = Replica::open(path).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("[offline] listen = \"{listen}\": cannot listen there (in use, or not an address of this machine)"))?;
    eprintln!(
        "crmsync offline: the offline copy on http://{}; changes made there are sent to the CRM at the next sync",
        listener.local_addr()?
    );
    crmsync_server::serve(
        replica.store,
        listener,
        crmsync_server::DEFAULT_MAX_BODY,
        shutdown,
    )
    .await
}

/// `crmsync status`'s lines about the offline copy.
pub async fn status(path: &Path) -> anyhow::Result<Option<replica::ReplicaSize>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Replica::open(path).await?.size().await?))
}
