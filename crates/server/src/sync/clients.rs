//! Clients (R-C1..R-C5): registration, the primary role held by the
//! database, roaming, delegation, reset.

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crmsync_core::kind::MailboxKind;
use crmsync_core::mass_delete::MassDeleteLimits;
use crmsync_core::time::now_timestamp;
use crmsync_core::{EntitySet, MAX_REPORTED_PROBLEMS as MAX_PROBLEMS};

use super::context::MailboxOwner;
use super::store::{self as sync_store, Client, ClientProblem};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, Store};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    name: String,
    #[serde(default)]
    on_behalf_of: Option<String>,
    /// SPEC §13: the kinds of collection the mailbox holds; absent: all.
    #[serde(default)]
    kinds: Option<Vec<String>>,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The client as the API shows it.
pub fn client_json(c: &Client, owner: Option<&MailboxOwner>) -> Value {
    let role = if c.is_delegated() {
        "delegated"
    } else if c.is_primary {
        "primary"
    } else {
        "secondary"
    };
    let mut out = json!({
        "id": c.id, "name": c.name, "user_id": c.user_id, "mailbox_user_id": c.mailbox_user_id,
        "role": role, "acts_as_primary": owner.is_some_and(|o| o.acts_as_primary(c)),
        "kinds": c.kinds,
        // R-W6: the last synchronization as the server saw it.
        "last_sync_at": c.last_sync_at, "last_ack_at": c.last_ack_at,
        "last_ack_items": c.last_ack_items, "awaiting_ack": awaiting_ack(c),
        "problems": c.problems,
    });
    if let Some(o) = owner {
        out["schedule"] = schedule_json(o);
        // R-T5: the agent holds back the CRM-side deletions with these.
        out["mass_delete_limits"] = json!(MassDeleteLimits::of(&o.org));
    }
    out
}

/// A prepare delivered a batch that no acknowledgement followed (still
/// being applied, or the sync failed before it could confirm).
fn awaiting_ack(c: &Client) -> bool {
    match (&c.last_batch_at, &c.last_ack_at) {
        // Fixed-width UTC timestamps: text order is time order.
        (Some(batch), Some(ack)) => ack < batch,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// R-T1: the mailbox owner's scheduled sync, on or off, and its interval in
/// seconds, never shorter than the organization's minimum (which may have
/// been raised after the user chose theirs).
fn schedule_json(o: &MailboxOwner) -> Value {
    let (enabled, interval_secs) = schedule(o);
    json!({"enabled": enabled, "interval_secs": interval_secs})
}

/// R-T1: whether the owner's scheduled sync is on, and its interval in seconds.
fn schedule(o: &MailboxOwner) -> (bool, u64) {
    use crmsync_core::settings::parse_interval;
    let fallback = parse_interval(&o.org.sync_interval).unwrap_or(15 * 60);
    let chosen = parse_interval(&o.settings.schedule_interval).unwrap_or(fallback);
    let min = parse_interval(&o.org.sync_interval_min).unwrap_or(0);
    (o.settings.schedule_enabled, chosen.max(min))
}

/// Finds a user by id or email.
async fn find_user(store: &Store, who: &str) -> ApiResult<Uuid> {
    let mut conn = store.pool.acquire().await?;
    if let Ok(id) = Uuid::parse_str(who) {
        if store::record_exists(&mut conn, EntitySet::Users, id).await? {
            return Ok(id);
        }
    }
    let found = store::records_with_address(&mut conn, who).await?;
    found
        .into_iter()
        .find(|(set, _)| *set == EntitySet::Users)
        .map(|(_, id)| id)
        .ok_or_else(|| ApiError::invalid(format!("on_behalf_of: no CRM user is '{who}'")))
}

/// R-C1: registers a client (or returns the one already registered under
/// that name: a reinstall finds its subscription again).
pub async fn register(store: &Store, caller: Caller, body: &Value) -> ApiResult<(bool, Value)> {
    let reg: Registration = serde_json::from_value(body.clone()).map_err(|e| {
        ApiError::invalid(format!(
            "a client registration is {{\"name\", \"on_behalf_of\"?, \"kinds\"?}}: {e}"
        ))
    })?;
    let kinds = match &reg.kinds {
        None => MailboxKind::ALL.to_vec(),
        Some(names) => {
            MailboxKind::parse_list(names).map_err(|e| ApiError::invalid(format!("kinds: {e}")))?
        }
    };
    let name = client_name(&reg.name, "usually the machine's")?;
    let me = MailboxOwner::load(store, caller.user_id).await?;
    let mailbox_user = match &reg.on_behalf_of {
        None => caller.user_id,
        Some(who) => {
            let owner_id = find_user(store, who).await?;
            // R-C5: the delegate must be a CRM user allowed to sync, and the
            // owner must have named them.
            if !me.may_sync_to_mailbox() {
                return Err(ApiError::forbidden("you do not have the sync_to_mailbox privilege, so you cannot run a delegated client"));
            }
            let owner = MailboxOwner::load(store, owner_id).await?;
            if owner_id != caller.user_id && !owner.settings.allows_delegate(&me.email) {
                return Err(ApiError::forbidden(format!(
                    "{} has not delegated their mailbox to {}; they can add you to 'delegates' in their settings",
                    owner.email, me.email
                )));
            }
            owner_id
        }
    };
    let mut conn = store.pool.acquire().await?;
    if let Some(mut existing) =
        sync_store::find_client(&mut conn, caller.user_id, mailbox_user, name).await?
    {
        if existing.kinds != kinds {
            let mut tx = store.begin().await?;
            sync_store::set_kinds(&mut tx, &existing, &kinds).await?;
            tx.commit().await?;
            existing.kinds = kinds;
        }
        let owner = if mailbox_user == caller.user_id {
            me
        } else {
            MailboxOwner::load(store, mailbox_user).await?
        };
        return Ok((false, client_json(&existing, Some(&owner))));
    }
    let client = insert_new(&mut conn, caller.user_id, mailbox_user, name, kinds).await?;
    let owner = MailboxOwner::load(store, mailbox_user).await?;
    Ok((true, client_json(&client, Some(&owner))))
}

/// A client's name, trimmed: 1 to 100 characters (`usually` says what it
/// usually is, in the refusal).
pub fn client_name<'a>(name: &'a str, usually: &str) -> ApiResult<&'a str> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "name: give it a name of 1 to 100 characters without control characters ({usually})"
        )));
    }
    Ok(name)
}

/// Inserts a new client under R-C1: the first client of a mailbox user
/// becomes primary; a race for it leaves one primary (the partial unique
/// index) and the other client secondary.
async fn insert_new(
    conn: &mut sqlx::AnyConnection,
    user: Uuid,
    mailbox_user: Uuid,
    name: &str,
    kinds: Vec<MailboxKind>,
) -> Result<Client, sqlx::Error> {
    let now = now_timestamp();
    let mut client = Client {
        id: Uuid::new_v4(),
        user_id: user,
        mailbox_user_id: mailbox_user,
        name: name.to_string(),
        is_primary: false,
        scanned_version: 0,
        full_scan: true,
        time_checked_at: now.clone(),
        current_batch: None,
        kinds,
        last_sync_at: None,
        last_batch_at: None,
        last_ack_at: None,
        last_ack_items: None,
        problems: Vec::new(),
    };
    client.is_primary =
        !client.is_delegated() && !sync_store::has_primary(conn, mailbox_user).await?;
    match sync_store::insert_client(conn, &client, &now).await {
        Err(e) if is_unique_violation(&e) && client.is_primary => {
            client.is_primary = false;
            sync_store::insert_client(conn, &client, &now).await?;
        }
        other => other?,
    }
    Ok(client)
}

fn name_taken(name: &str) -> ApiError {
    ApiError::conflict(
        "name_taken",
        format!("the user already has a sync client named '{name}' (an agent, or a mailbox connected earlier); choose another name"),
    )
}

/// R-V3: registers the client of a mailbox connected to the server: a new
/// client of `user` on their own mailbox, under R-C1..R-C6 like an agent's
/// (secondary when the user already has a primary). A name the user's
/// clients already hold is refused, never shared: two synchronizers on one
/// subscription would each take the other's deliveries.
pub async fn register_new(
    store: &Store,
    user: Uuid,
    name: &str,
    kinds: Vec<MailboxKind>,
) -> ApiResult<Client> {
    let mut conn = store.pool.acquire().await?;
    if sync_store::find_client(&mut conn, user, user, name)
        .await?
        .is_some()
    {
        return Err(name_taken(name));
    }
    match insert_new(&mut conn, user, user, name, kinds).await {
        Err(e) if is_unique_violation(&e) => Err(name_taken(name)),
        other => Ok(other?),
    }
}

/// Renames a client of a mailbox connected to the server (it is named
/// after the mailbox), refusing a name the user's clients already hold.
pub async fn rename(conn: &mut sqlx::AnyConnection, client: Uuid, name: &str) -> ApiResult<()> {
    match sync_store::rename_client(conn, client, name).await {
        Err(e) if is_unique_violation(&e) => Err(name_taken(name)),
        other => Ok(other?),
    }
}

/// A client the caller may act on: their own, or any for an admin.
pub async fn own_client(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Client> {
    let mut conn = store.pool.acquire().await?;
    let client = sync_store::get_client(&mut conn, id)
        .await?
        .ok_or_else(|| unknown_client(id))?;
    may_act_on(caller, &client)?;
    Ok(client)
}

/// [`own_client`] with the committed version and the number of
/// unacknowledged deliveries, in one round trip: the "nothing changed"
/// path of prepare and of the long poll.
pub async fn own_client_status(
    store: &Store,
    caller: Caller,
    id: Uuid,
) -> ApiResult<(Client, i64, i64)> {
    let mut conn = store.pool.acquire().await?;
    let status = sync_store::client_status(&mut conn, id).await?;
    drop(conn);
    let (client, upto, pending) = status.ok_or_else(|| unknown_client(id))?;
    may_act_on(caller, &client)?;
    Ok((client, upto, pending))
}

fn unknown_client(id: Uuid) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "unknown_client",
        format!("no sync client has id {id}; register it first"),
    )
}

/// R-A for sync clients: a user acts on their own clients, an admin on any.
fn may_act_on(caller: Caller, client: &Client) -> ApiResult<()> {
    if client.user_id != caller.user_id && !caller.is_admin {
        return Err(ApiError::forbidden(
            "this client and its subscription belong to another user",
        ));
    }
    Ok(())
}

pub async fn list(store: &Store, caller: Caller, user: Option<Uuid>) -> ApiResult<Vec<Value>> {
    let user = match user {
        Some(u) if u != caller.user_id => {
            caller.require_admin()?;
            u
        }
        _ => caller.user_id,
    };
    let owner = MailboxOwner::load(store, user).await?;
    let mut conn = store.pool.acquire().await?;
    let clients = sync_store::clients_of(&mut conn, user).await?;
    Ok(clients
        .iter()
        .map(|c| client_json(c, Some(&owner)))
        .collect())
}

/// R-C1: moves the primary role to this client. The user whose mailbox it
/// is (or an admin) may do it.
pub async fn set_primary(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Value> {
    let client = own_client(store, caller, id).await?;
    if client.is_delegated() {
        return Err(ApiError::conflict(
            "delegated_client",
            "a delegated client never synchronizes, so it cannot be primary",
        ));
    }
    for _ in 0..5 {
        let mut tx = store.begin().await?;
        // Serialized: concurrent moves would otherwise lock rows in
        // different orders and deadlock on PostgreSQL.
        store::lock_writes(&mut tx).await?;
        let moved = sync_store::set_primary(&mut tx, client.mailbox_user_id, client.id).await;
        match moved {
            Ok(()) => {
                tx.commit().await?;
                store.rules_changed().await?;
                let owner = MailboxOwner::load(store, client.mailbox_user_id).await?;
                let mut conn = store.pool.acquire().await?;
                let now = sync_store::get_client(&mut conn, id)
                    .await?
                    .unwrap_or(client);
                return Ok(client_json(&now, Some(&owner)));
            }
            // A concurrent move won the race for the index: try again on
            // the state it left.
            Err(e) if is_unique_violation(&e) => tx.rollback().await?,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "busy",
        "the primary role is being moved by another request; try again",
    ))
}

/// Longest text of a problem's place or description.
const MAX_PROBLEM_TEXT: usize = 2000;

/// R-W6: the client reports the items of its mailbox it cannot read (the
/// whole list, replacing the last one), for the Sync page.
pub async fn set_problems(
    store: &Store,
    caller: Caller,
    id: Uuid,
    body: &Value,
) -> ApiResult<Value> {
    let client = own_client(store, caller, id).await?;
    let items = body.get("items").and_then(Value::as_array).ok_or_else(|| {
        ApiError::invalid("items: required, a list of {\"item\", \"problem\"} (empty when everything can be read)")
    })?;
    if items.len() > MAX_PROBLEMS {
        return Err(ApiError::invalid(format!(
            "items: at most {MAX_PROBLEMS}; send the first {MAX_PROBLEMS}"
        )));
    }
    let mut problems = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = |key: &str| {
            item.get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty() && t.chars().count() <= MAX_PROBLEM_TEXT)
                .map(str::to_string)
        };
        let (Some(item), Some(problem)) = (text("item"), text("problem")) else {
            return Err(ApiError::invalid(format!(
                "items[{i}]: needs 'item' and 'problem', texts of 1 to {MAX_PROBLEM_TEXT} characters"
            )));
        };
        problems.push(ClientProblem { item, problem });
    }
    let mut conn = store.pool.acquire().await?;
    sync_store::set_problems(&mut conn, client.id, &problems).await?;
    Ok(json!({"id": client.id, "problems": problems.len()}))
}

/// R-S9: forgets the items deleted in the mailbox and evaluates the filters
/// again at the next prepare.
pub async fn reset(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Value> {
    let client = own_client(store, caller, id).await?;
    let mut tx = store.begin().await?;
    sync_store::reset_client(&mut tx, client.id).await?;
    tx.commit().await?;
    store.rules_changed().await?;
    Ok(json!({"id": client.id, "reset": true}))
}
