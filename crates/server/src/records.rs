//! Writing records under the access rule R-A, in one transaction each:
//! validation (crmsync-core), references, ownership, If-Match, the version
//! sequence and tombstones. Users are records too, with a few extra rules.

use serde_json::{json, Map, Value};
use sqlx::AnyConnection;
use uuid::Uuid;

use crmsync_core::record::{apply_input, parse_input, references};
use crmsync_core::time::now_timestamp;
use crmsync_core::{EntitySet, Record, RecordInput};

use crate::auth::{hash_token, new_token, Caller};
use crate::changes::{Committed, Kinds};
use crate::error::{ApiError, ApiResult};
use crate::store::{self, Store};

/// A created record, and for a new user the token shown once.
pub struct Created {
    pub record: Record,
    pub token: Option<String>,
}

/// The natural key that must stay unique among live records.
pub(crate) fn unique_key(set: EntitySet, fields: &Map<String, Value>) -> Option<String> {
    match set {
        EntitySet::Users => fields
            .get("email")
            .and_then(Value::as_str)
            .map(|e| format!("user-email:{}", e.to_lowercase())),
        _ => None,
    }
}

/// Fields every new user gets unless given (SPEC §2).
fn user_defaults(fields: &mut Map<String, Value>) {
    for (k, v) in [
        ("role", json!("user")),
        ("approved_email", json!(false)),
        ("sync_to_mailbox", json!(true)),
        ("go_offline", json!(true)),
    ] {
        fields.entry(k).or_insert(v);
    }
}

async fn check_write(
    conn: &mut AnyConnection,
    set: EntitySet,
    id: Uuid,
    owner: Uuid,
    fields: &Map<String, Value>,
) -> ApiResult<()> {
    if set != EntitySet::Users && !store::record_exists(conn, EntitySet::Users, owner).await? {
        return Err(ApiError::invalid(format!(
            "owner_id: no user has id {owner}"
        )));
    }
    for (field, target, target_id) in references(set, fields) {
        if !store::record_exists(conn, target, target_id).await? {
            return Err(ApiError::invalid(format!(
                "{field}: no record in {target} has id {target_id}"
            )));
        }
    }
    if let Some(key) = unique_key(set, fields) {
        if store::unique_key_taken(conn, &key, Some(id)).await? {
            return Err(ApiError::conflict(
                "duplicate",
                "another user already has this email address",
            ));
        }
    }
    Ok(())
}

/// What a committed write of a record of `set` may concern (R-T7): its
/// kind of mailbox collection; a user record, every kind (privileges and
/// settings decide what reaches that user's mailboxes).
fn change(version: i64, set: EntitySet) -> Committed {
    let kinds = if set == EntitySet::Users {
        Kinds::ALL
    } else {
        Kinds::of_set(set)
    };
    Committed {
        version,
        kinds,
        origin: None,
    }
}

/// Inserts a record exactly as given (an import; an offline replica's
/// copy of the server's): its row with its unique key, search text and
/// links, and its addresses.
pub(crate) async fn insert_as_is(conn: &mut AnyConnection, r: &Record) -> anyhow::Result<()> {
    let key = unique_key(r.set, &r.fields);
    store::insert_record(conn, r, key.as_deref()).await?;
    index_addresses(conn, r, true)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))
}

/// Creates a record owned by the caller (or by `owner_id` if given).
pub async fn create(
    store: &Store,
    caller: Caller,
    set: EntitySet,
    body: &Value,
) -> ApiResult<Created> {
    let mut tx = store.begin().await?;
    let version = store::next_version(&mut tx).await?;
    let created = create_in(&mut tx, caller, set, body, version).await?;
    store.commit_change(tx, change(version, set)).await?;
    Ok(created)
}

/// [`create`] inside a transaction that already holds `version`.
pub async fn create_in(
    conn: &mut AnyConnection,
    caller: Caller,
    set: EntitySet,
    body: &Value,
    version: i64,
) -> ApiResult<Created> {
    create_with_id_in(conn, caller, set, body, version, Uuid::new_v4()).await
}

/// [`create_in`] under an id the client chose (an offline replica's,
/// R-O1); the caller makes sure no row has it.
pub async fn create_with_id_in(
    conn: &mut AnyConnection,
    caller: Caller,
    set: EntitySet,
    body: &Value,
    version: i64,
    id: Uuid,
) -> ApiResult<Created> {
    let mut input = parse_input(set, body)?;
    if set == EntitySet::Users {
        caller.require_admin()?;
        if input.owner_id.is_some() {
            return Err(ApiError::invalid(
                "owner_id: a user always owns its own user record",
            ));
        }
        user_defaults(&mut input.fields);
    }
    let fields = apply_input(set, None, &input)?;
    let owner_id = if set == EntitySet::Users {
        id
    } else {
        input.owner_id.unwrap_or(caller.user_id)
    };
    check_write(conn, set, id, owner_id, &fields).await?;
    let now = now_timestamp();
    let record = Record {
        id,
        set,
        version,
        owner_id,
        state: input
            .state
            .clone()
            .unwrap_or_else(|| set.default_state().to_string()),
        created_at: now.clone(),
        modified_at: now.clone(),
        fields,
    };
    store::insert_record(conn, &record, unique_key(set, &record.fields).as_deref()).await?;
    index_addresses(conn, &record, true).await?;
    touch_series(conn, store::parent_of(&record), version).await?;
    let token = if set == EntitySet::Users {
        let token = new_token();
        store::insert_token(conn, &hash_token(&token), id, &now).await?;
        Some(token)
    } else {
        None
    };
    Ok(Created { record, token })
}

/// Keeps `record_addresses` in step for the sets parties resolve to (R-E8).
pub(crate) async fn index_addresses(
    conn: &mut AnyConnection,
    r: &Record,
    live: bool,
) -> ApiResult<()> {
    if matches!(
        r.set,
        EntitySet::Contacts | EntitySet::Leads | EntitySet::Accounts | EntitySet::Users
    ) {
        store::set_addresses(conn, r, live).await?;
    }
    Ok(())
}

/// R-E2: a change to an exception is a change to its series, which
/// mailboxes receive as one item with its exceptions.
async fn touch_series(
    conn: &mut AnyConnection,
    series: Option<Uuid>,
    version: i64,
) -> ApiResult<()> {
    if let Some(series) = series {
        store::touch(conn, series, version).await?;
    }
    Ok(())
}

fn check_if_match(current: &Record, if_match: Option<i64>) -> ApiResult<()> {
    match if_match {
        Some(v) if v != current.version => Err(ApiError::new(
            axum::http::StatusCode::PRECONDITION_FAILED,
            "version_mismatch",
            format!(
                "the record is at version {}, not {v}; read it again and retry",
                current.version
            ),
        )),
        _ => Ok(()),
    }
}

/// R-A: only the owner or an admin may change a record. On a user record,
/// a user may change only their own name.
pub(crate) fn check_may_change(
    caller: Caller,
    current: &Record,
    input: Option<&RecordInput>,
) -> ApiResult<()> {
    if caller.is_admin {
        return Ok(());
    }
    if current.set == EntitySet::Users {
        let only_name = input.is_some_and(|i| {
            i.owner_id.is_none() && i.state.is_none() && i.fields.keys().all(|k| k == "name")
        });
        return if current.id == caller.user_id && only_name {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "users may change only their own name; an admin manages the rest",
            ))
        };
    }
    if current.owner_id == caller.user_id {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "only the owner of this {} record or an admin may change it",
            current.set
        )))
    }
}

pub(crate) async fn current_record(
    conn: &mut AnyConnection,
    set: EntitySet,
    id: Uuid,
) -> ApiResult<Record> {
    match store::get_record(conn, id).await? {
        Some(r) if r.set == set => Ok(r),
        _ => Err(ApiError::not_found(format!(
            "no record in {set} has id {id}"
        ))),
    }
}

/// Applies a partial update; an update that changes nothing keeps the version.
pub async fn update(
    store: &Store,
    caller: Caller,
    set: EntitySet,
    id: Uuid,
    body: &Value,
    if_match: Option<i64>,
) -> ApiResult<Record> {
    let mut tx = store.begin().await?;
    let version = store::next_version(&mut tx).await?;
    let (record, changed) = update_in(&mut tx, caller, set, id, body, if_match, version).await?;
    if changed {
        store.commit_change(tx, change(version, set)).await?;
    } else {
        tx.rollback().await?;
    }
    Ok(record)
}

/// [`update`] inside a transaction that holds `version`; says whether
/// anything changed (if not, nothing was written).
pub async fn update_in(
    conn: &mut AnyConnection,
    caller: Caller,
    set: EntitySet,
    id: Uuid,
    body: &Value,
    if_match: Option<i64>,
    version: i64,
) -> ApiResult<(Record, bool)> {
    let input = parse_input(set, body)?;
    let current = current_record(conn, set, id).await?;
    check_if_match(&current, if_match)?;
    check_may_change(caller, &current, Some(&input))?;
    if set == EntitySet::Users && input.owner_id.is_some_and(|o| o != id) {
        return Err(ApiError::invalid(
            "owner_id: a user always owns its own user record",
        ));
    }
    let fields = apply_input(set, Some(&current.fields), &input)?;
    let owner_id = input.owner_id.unwrap_or(current.owner_id);
    let state = input.state.clone().unwrap_or_else(|| current.state.clone());
    if fields == current.fields && owner_id == current.owner_id && state == current.state {
        return Ok((current, false));
    }
    check_write(conn, set, id, owner_id, &fields).await?;
    // The series it was an exception of before, if it moves (R-E2).
    let old_series = store::parent_of(&current);
    let record = Record {
        version,
        owner_id,
        state,
        modified_at: now_timestamp(),
        fields,
        ..current
    };
    store::update_record(conn, &record, unique_key(set, &record.fields).as_deref()).await?;
    index_addresses(conn, &record, true).await?;
    if set == EntitySet::Users {
        // Privileges may have changed (R-S11): the user's clients re-evaluate.
        crate::sync::store::reevaluate(conn, Some(id)).await?;
    }
    touch_series(conn, old_series, version).await?;
    touch_series(conn, store::parent_of(&record), version).await?;
    Ok((record, true))
}

/// Deletes a record, leaving a tombstone at a new version.
pub async fn delete(
    store: &Store,
    caller: Caller,
    set: EntitySet,
    id: Uuid,
    if_match: Option<i64>,
) -> ApiResult<()> {
    let mut tx = store.begin().await?;
    let version = store::next_version(&mut tx).await?;
    delete_in(&mut tx, caller, set, id, if_match, version).await?;
    store.commit_change(tx, change(version, set)).await?;
    Ok(())
}

/// [`delete`] inside a transaction that holds `version`.
pub async fn delete_in(
    conn: &mut AnyConnection,
    caller: Caller,
    set: EntitySet,
    id: Uuid,
    if_match: Option<i64>,
    version: i64,
) -> ApiResult<()> {
    let current = current_record(conn, set, id).await?;
    check_if_match(&current, if_match)?;
    if set == EntitySet::Users {
        caller.require_admin()?;
        if id == caller.user_id {
            return Err(ApiError::conflict(
                "cannot_delete_self",
                "an admin cannot delete their own user; ask another admin",
            ));
        }
        store::delete_tokens(conn, id).await?;
        crate::passwords::forget_user(conn, id).await?;
    } else {
        check_may_change(caller, &current, None)?;
    }
    store::tombstone_record(conn, id, version, &now_timestamp()).await?;
    index_addresses(conn, &current, false).await?;
    touch_series(conn, store::parent_of(&current), version).await?;
    Ok(())
}

/// `crmsync admin init`: a new organization, its default filters and its
/// first admin. Returns the admin's token.
pub async fn init_organization(store: &Store, email: &str, name: &str) -> anyhow::Result<String> {
    if let Some((_, org)) = store.organization().await? {
        anyhow::bail!("this database already holds the organization '{org}'; use `crmsync admin user add` to add users");
    }
    // The organization is named after the first admin's mail domain.
    let org_name = email.rsplit_once('@').map_or(email, |(_, domain)| domain);
    let mut tx = store.begin().await?;
    store::insert_organization(&mut tx, Uuid::new_v4(), org_name, &now_timestamp()).await?;
    let sync = crate::config::FilterKind::Sync;
    for (filter_name, set, condition) in crmsync_core::filter::default_filters() {
        let filter =
            crate::config::Filter::system(sync, Uuid::new_v4(), filter_name, set, condition);
        store::put_config(
            &mut tx,
            sync.config_kind(),
            &filter.id.to_string(),
            &filter.to_json(),
        )
        .await?;
    }
    tx.commit().await?;
    add_user(store, email, name, true).await
}

/// `crmsync admin user add`: returns the new user's token.
pub async fn add_user(
    store: &Store,
    email: &str,
    name: &str,
    admin: bool,
) -> anyhow::Result<String> {
    if store.organization().await?.is_none() {
        anyhow::bail!("this database has no organization yet; run `crmsync admin init` first");
    }
    let body = json!({"email": email, "name": name, "role": if admin { "admin" } else { "user" }});
    // The command line acts with admin rights: it has the database itself.
    let system = Caller {
        user_id: Uuid::nil(),
        is_admin: true,
    };
    let created = create(store, system, EntitySet::Users, &body)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(created.token.expect("creating a user makes a token"))
}
