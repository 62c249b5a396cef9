//! Admin-managed configuration: organization and user settings, sync
//! filters (R-S6) and offline filters (R-O1), sync-field directions (R-F1)
//! and field-level security (R-F3). Validation lives in crmsync-core; this module stores documents
//! and applies who-may-change-what.

use serde_json::{json, Value};
use uuid::Uuid;

use crmsync_core::field_rules::{
    default_sync_fields, patch_sync_fields, FieldSecurityRule, SyncFields,
};
use crmsync_core::filter::{Condition, EvalContext, FilterScope};
use crmsync_core::settings::{merge_patch, OrgSettings, UserSettings, MAILBOX_TYPES};
use crmsync_core::{EntitySet, Record};
use sha2::Digest;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, Store};
use crate::sync::store::{self as sync_store, reevaluate};

pub const SETTINGS_KIND: &str = "settings";
pub const SYNC_FIELDS_KIND: &str = "sync_fields";
pub const FIELD_SECURITY_KIND: &str = "field_security";
const ORG_KEY: &str = "organization";

fn corrupt(what: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "corrupt_config",
        format!("the stored {what} cannot be read; it was changed outside crmsync"),
    )
}

pub async fn org_settings(store: &Store) -> ApiResult<OrgSettings> {
    match store.get_config(SETTINGS_KIND, ORG_KEY).await? {
        Some(v) => serde_json::from_value(v).map_err(|_| corrupt("organization settings")),
        None => Ok(OrgSettings::default()),
    }
}

pub async fn patch_org_settings(
    store: &Store,
    caller: Caller,
    patch: &Value,
) -> ApiResult<OrgSettings> {
    caller.require_admin()?;
    let current = org_settings(store).await?;
    let next: OrgSettings = merge_patch(&current, patch).map_err(ApiError::invalid)?;
    next.validate().map_err(ApiError::invalid)?;
    if json!(next) == json!(current) {
        return Ok(next);
    }
    let mut conn = store.pool.acquire().await?;
    store::put_config(&mut conn, SETTINGS_KIND, ORG_KEY, &json!(next)).await?;
    Ok(next)
}

/// Only the user or an admin may see `what` of a user.
async fn check_user(store: &Store, caller: Caller, user: Uuid, what: &str) -> ApiResult<()> {
    if !caller.is_admin && caller.user_id != user {
        return Err(ApiError::forbidden(format!(
            "users may see only their own {what}; an admin sees everyone's"
        )));
    }
    let mut conn = store.pool.acquire().await?;
    if !store::record_exists(&mut conn, EntitySet::Users, user).await? {
        return Err(ApiError::not_found(format!("no user has id {user}")));
    }
    Ok(())
}

pub async fn user_settings(store: &Store, caller: Caller, user: Uuid) -> ApiResult<UserSettings> {
    check_user(store, caller, user, "settings").await?;
    stored_user_settings(store, user).await
}

/// A user's settings, without an access check (for the sync engine).
pub async fn stored_user_settings(store: &Store, user: Uuid) -> ApiResult<UserSettings> {
    match store.get_config(SETTINGS_KIND, &user.to_string()).await? {
        Some(v) => serde_json::from_value(v).map_err(|_| corrupt("user settings")),
        None => Ok(UserSettings::default()),
    }
}

pub async fn patch_user_settings(
    store: &Store,
    caller: Caller,
    user: Uuid,
    patch: &Value,
) -> ApiResult<UserSettings> {
    let current = user_settings(store, caller, user).await?;
    let next: UserSettings = merge_patch(&current, patch).map_err(ApiError::invalid)?;
    next.validate(&org_settings(store).await?)
        .map_err(ApiError::invalid)?;
    if json!(next) == json!(current) {
        return Ok(next);
    }
    let mut conn = store.pool.acquire().await?;
    store::put_config(&mut conn, SETTINGS_KIND, &user.to_string(), &json!(next)).await?;
    reevaluate(&mut conn, Some(user)).await?;
    store.rules_changed().await?;
    Ok(next)
}

/// The two kinds of filter: what goes to mailboxes (R-S6) and what an
/// offline replica keeps (R-O1). Same condition trees, same access rules,
/// stored apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    Sync,
    Offline,
}

impl FilterKind {
    /// The kind of its documents in the config table.
    pub fn config_kind(self) -> &'static str {
        match self {
            FilterKind::Sync => "sync_filter",
            FilterKind::Offline => "offline_filter",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            FilterKind::Sync => "sync filter",
            FilterKind::Offline => "offline filter",
        }
    }

    /// The sets a filter of this kind may select.
    pub fn sets(self) -> Vec<EntitySet> {
        match self {
            FilterKind::Sync => MAILBOX_TYPES.to_vec(),
            FilterKind::Offline => EntitySet::ALL
                .into_iter()
                .filter(|s| *s != EntitySet::Users)
                .collect(),
        }
    }

    fn check_set(self, set: EntitySet) -> ApiResult<()> {
        if self.sets().contains(&set) {
            return Ok(());
        }
        let allowed = self.sets().iter().map(|s| s.as_str()).collect::<Vec<_>>();
        let why = match self {
            FilterKind::Sync => "is never delivered to mailboxes",
            FilterKind::Offline => "are never kept offline",
        };
        Err(ApiError::invalid(format!(
            "entity_set: {set} {why}; {}s apply to {}",
            self.noun(),
            allowed.join(", ")
        )))
    }

    fn parse_condition(self, set: EntitySet, condition: &Value) -> Result<Condition, String> {
        match self {
            FilterKind::Sync => Condition::parse(set, condition),
            FilterKind::Offline => Condition::parse_offline(set, condition),
        }
    }

    /// After a filter changed: sync filters decide deliveries, so the
    /// clients concerned re-evaluate (R-S6). Offline replicas see the
    /// change in the feed's filter fingerprint (R-O1).
    async fn changed(
        self,
        store: &Store,
        conn: &mut sqlx::AnyConnection,
        user: Option<Uuid>,
    ) -> ApiResult<()> {
        if self == FilterKind::Sync {
            reevaluate(conn, user).await?;
            store.rules_changed().await?;
        }
        Ok(())
    }
}

/// The first of `filters` (of any set) that the record matches (R-S6,
/// R-O1).
pub fn first_match<'a>(filters: &'a [Filter], r: &Record, ctx: &EvalContext) -> Option<&'a Filter> {
    filters
        .iter()
        .find(|f| f.entity_set == r.set && f.condition.matches(r.set, r, ctx))
}

/// A filter (R-S6, R-O1) as stored and shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub id: Uuid,
    pub name: String,
    pub entity_set: EntitySet,
    pub scope: FilterScope,
    pub user_id: Option<Uuid>,
    pub active: bool,
    pub condition: Condition,
}

impl Filter {
    /// A default system filter.
    pub fn system(
        kind: FilterKind,
        id: Uuid,
        name: String,
        entity_set: EntitySet,
        condition: Value,
    ) -> Filter {
        Filter {
            id,
            name,
            entity_set,
            scope: FilterScope::System,
            user_id: None,
            active: true,
            condition: kind
                .parse_condition(entity_set, &condition)
                .expect("default filters are valid"),
        }
    }

    /// A filter as stored (validated when it was written).
    pub fn from_stored(kind: FilterKind, v: &Value) -> Option<Filter> {
        let set: EntitySet = v.get("entity_set")?.as_str()?.parse().ok()?;
        Some(Filter {
            id: Uuid::parse_str(v.get("id")?.as_str()?).ok()?,
            name: v.get("name")?.as_str()?.to_string(),
            entity_set: set,
            scope: serde_json::from_value(v.get("scope")?.clone()).ok()?,
            user_id: v
                .get("user_id")
                .and_then(Value::as_str)
                .and_then(|u| Uuid::parse_str(u).ok()),
            active: v.get("active")?.as_bool()?,
            condition: kind.parse_condition(set, v.get("condition")?).ok()?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "entity_set": self.entity_set, "scope": self.scope,
            "user_id": self.user_id, "active": self.active, "condition": self.condition.to_json(),
        })
    }

    /// Parses a filter from its JSON form; `base` holds the current values
    /// for a PATCH (keys missing from `body` keep them).
    fn parse(
        kind: FilterKind,
        body: &Value,
        base: Option<&Value>,
        caller: Caller,
    ) -> ApiResult<Filter> {
        const KEYS: &[&str] = &[
            "id",
            "name",
            "entity_set",
            "scope",
            "user_id",
            "active",
            "condition",
        ];
        let patch = body
            .as_object()
            .ok_or_else(|| ApiError::invalid("the body must be a JSON object"))?;
        // The id may be sent back as read (a GET's document), not changed.
        let same_id = |v: &Value| base.is_some_and(|b| b.get("id") == Some(v));
        if let Some((k, _)) = patch
            .iter()
            .find(|(k, v)| !(KEYS[1..].contains(&k.as_str()) || *k == "id" && same_id(v)))
        {
            return Err(ApiError::invalid(format!(
                "unknown or read-only key '{k}'; filters have: {}",
                KEYS[1..].join(", ")
            )));
        }
        let mut merged = base.cloned().unwrap_or_else(|| json!({}));
        for (k, v) in patch {
            merged[k] = v.clone();
        }
        let get = |k: &str| merged.get(k).filter(|v| !v.is_null());
        let name = get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty() && n.len() <= 200);
        let name = name.ok_or_else(|| {
            ApiError::invalid("name: a filter needs a name of 1 to 200 characters")
        })?;
        let set: EntitySet = get("entity_set")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("entity_set: required"))?
            .parse()
            .map_err(|e: crmsync_core::entity::UnknownEntitySet| {
                ApiError::invalid(format!("entity_set: {e}"))
            })?;
        kind.check_set(set)?;
        let scope: FilterScope = match get("scope") {
            None => FilterScope::User,
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| ApiError::invalid("scope: must be system or user"))?,
        };
        let user_id = match (scope, get("user_id")) {
            (FilterScope::System, None) => None,
            (FilterScope::System, Some(_)) => {
                return Err(ApiError::invalid(
                    "user_id: a system filter applies to everyone; leave it out",
                ))
            }
            (FilterScope::User, None) => Some(caller.user_id),
            (FilterScope::User, Some(v)) => Some(
                v.as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| ApiError::invalid("user_id: must be a user's UUID"))?,
            ),
        };
        let active = match get("active") {
            None => true,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ApiError::invalid("active: must be true or false"))?,
        };
        let condition = get("condition").ok_or_else(|| ApiError::invalid("condition: required"))?;
        let condition = kind
            .parse_condition(set, condition)
            .map_err(ApiError::invalid)?;
        let id = merged
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(Uuid::new_v4);
        Ok(Filter {
            id,
            name: name.trim().to_string(),
            entity_set: set,
            scope,
            user_id,
            active,
            condition,
        })
    }
}

/// System filters are the admin's; user filters belong to their user.
fn check_filter_access(caller: Caller, f: &Filter) -> ApiResult<()> {
    match (f.scope, f.user_id) {
        _ if caller.is_admin => Ok(()),
        (FilterScope::User, Some(u)) if u == caller.user_id => Ok(()),
        (FilterScope::System, _) => Err(ApiError::forbidden(
            "only an admin may change system filters",
        )),
        _ => Err(ApiError::forbidden(
            "users may change only their own filters",
        )),
    }
}

/// The stored filters of a kind. Offline filters start as the defaults
/// of R-O1, stored when none are (an organization made before they
/// existed gets them too); their ids are fixed, so two servers doing this
/// at once store the same documents.
async fn stored_filters(store: &Store, kind: FilterKind) -> ApiResult<Vec<Value>> {
    let mut all = store.list_config(kind.config_kind()).await?;
    if all.is_empty() && kind == FilterKind::Offline {
        let mut tx = store.begin().await?;
        for (name, set, condition) in crmsync_core::filter::default_offline_filters() {
            let digest = sha2::Sha256::digest(format!("offline-filter:{name}").as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
            let filter = Filter::system(kind, id, name, set, condition);
            store::put_config(
                &mut tx,
                kind.config_kind(),
                &id.to_string(),
                &filter.to_json(),
            )
            .await?;
        }
        tx.commit().await?;
        all = store.list_config(kind.config_kind()).await?;
    }
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

pub async fn list_filters(
    store: &Store,
    kind: FilterKind,
    caller: Caller,
) -> ApiResult<Vec<Value>> {
    let all = stored_filters(store, kind).await?;
    Ok(all
        .into_iter()
        .filter(|v| {
            caller.is_admin
                || v["scope"] == "system"
                || v["user_id"].as_str() == Some(caller.user_id.to_string().as_str())
        })
        .collect())
}

pub async fn get_filter(
    store: &Store,
    kind: FilterKind,
    caller: Caller,
    id: Uuid,
) -> ApiResult<Value> {
    let missing = || ApiError::not_found(format!("no {} has id {id}", kind.noun()));
    let v = store
        .get_config(kind.config_kind(), &id.to_string())
        .await?
        .ok_or_else(missing)?;
    let visible = caller.is_admin
        || v["scope"] == "system"
        || v["user_id"].as_str() == Some(caller.user_id.to_string().as_str());
    if visible {
        Ok(v)
    } else {
        Err(missing())
    }
}

async fn save_filter(
    store: &Store,
    kind: FilterKind,
    caller: Caller,
    filter: &Filter,
) -> ApiResult<Value> {
    check_filter_access(caller, filter)?;
    let mut conn = store.pool.acquire().await?;
    if let Some(user) = filter.user_id {
        if !store::record_exists(&mut conn, EntitySet::Users, user).await? {
            return Err(ApiError::invalid(format!("user_id: no user has id {user}")));
        }
    }
    let v = filter.to_json();
    store::put_config(&mut conn, kind.config_kind(), &filter.id.to_string(), &v).await?;
    kind.changed(store, &mut conn, filter.user_id).await?;
    Ok(v)
}

pub async fn create_filter(
    store: &Store,
    kind: FilterKind,
    caller: Caller,
    body: &Value,
) -> ApiResult<Value> {
    let filter = Filter::parse(kind, body, None, caller)?;
    // The defaults first: a first filter must not stand in for them.
    stored_filters(store, kind).await?;
    save_filter(store, kind, caller, &filter).await
}

pub async fn patch_filter(
    store: &Store,
    kind: FilterKind,
    caller: Caller,
    id: Uuid,
    body: &Value,
) -> ApiResult<Value> {
    let current = get_filter(store, kind, caller, id).await?;
    let before = Filter::parse(kind, &json!({}), Some(&current), caller)?;
    check_filter_access(caller, &before)?;
    let next = Filter::parse(kind, body, Some(&current), caller)?;
    if next == before {
        return Ok(current);
    }
    save_filter(store, kind, caller, &next).await
}

pub async fn delete_filter(
    store: &Store,
    kind: FilterKind,
    caller: Caller,
    id: Uuid,
) -> ApiResult<()> {
    let current = get_filter(store, kind, caller, id).await?;
    check_filter_access(
        caller,
        &Filter::parse(kind, &json!({}), Some(&current), caller)?,
    )?;
    let mut conn = store.pool.acquire().await?;
    store::delete_config(&mut conn, kind.config_kind(), &id.to_string()).await?;
    let owner = current
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|u| Uuid::parse_str(u).ok());
    kind.changed(store, &mut conn, owner).await?;
    Ok(())
}

fn mailbox_set(set: EntitySet) -> ApiResult<EntitySet> {
    if set.syncs_to_mailbox() {
        Ok(set)
    } else {
        Err(ApiError::not_found(format!(
            "{set} never synchronizes to mailboxes, so it has no sync fields"
        )))
    }
}

pub async fn sync_fields(store: &Store, set: EntitySet) -> ApiResult<SyncFields> {
    let set = mailbox_set(set)?;
    let mut fields = default_sync_fields(set);
    if let Some(v) = store.get_config(SYNC_FIELDS_KIND, set.as_str()).await? {
        let stored: SyncFields = serde_json::from_value(v).map_err(|_| corrupt("sync fields"))?;
        fields.extend(stored);
    }
    Ok(fields)
}

/// The directions of every mailbox set, from one query (for the sync engine).
pub async fn all_sync_fields(
    store: &Store,
) -> ApiResult<std::collections::HashMap<EntitySet, SyncFields>> {
    let stored = store.list_config(SYNC_FIELDS_KIND).await?;
    let mut out = std::collections::HashMap::new();
    for set in EntitySet::ALL.into_iter().filter(|s| s.syncs_to_mailbox()) {
        let mut fields = default_sync_fields(set);
        if let Some((_, v)) = stored.iter().find(|(k, _)| k == set.as_str()) {
            let v: SyncFields =
                serde_json::from_value(v.clone()).map_err(|_| corrupt("sync fields"))?;
            fields.extend(v);
        }
        out.insert(set, fields);
    }
    Ok(out)
}

pub async fn patch_sync_fields_of(
    store: &Store,
    caller: Caller,
    set: EntitySet,
    patch: &Value,
) -> ApiResult<SyncFields> {
    caller.require_admin()?;
    let current = sync_fields(store, set).await?;
    let next = patch_sync_fields(set, &current, patch).map_err(ApiError::invalid)?;
    if next == current {
        return Ok(next);
    }
    let mut conn = store.pool.acquire().await?;
    store::put_config(&mut conn, SYNC_FIELDS_KIND, set.as_str(), &json!(next)).await?;
    sync_store::redeliver_set(&mut conn, set).await?;
    store.rules_changed().await?;
    Ok(next)
}

/// Every field-security rule, parsed (for the sync engine).
pub async fn field_security_rules(store: &Store) -> ApiResult<Vec<FieldSecurityRule>> {
    let all = store.list_config(FIELD_SECURITY_KIND).await?;
    all.into_iter()
        .map(|(_, v)| serde_json::from_value(v).map_err(|_| corrupt("field-security rule")))
        .collect()
}

/// Every active filter of a kind that applies to `user`, parsed (R-S6, R-O1).
pub async fn filters_for(store: &Store, kind: FilterKind, user: Uuid) -> ApiResult<Vec<Filter>> {
    let all = stored_filters(store, kind).await?;
    all.iter()
        .map(|v| Filter::from_stored(kind, v).ok_or_else(|| corrupt(kind.noun())))
        .filter(|f| {
            f.as_ref().map_or(true, |f| {
                f.active && (f.scope == FilterScope::System || f.user_id == Some(user))
            })
        })
        .collect()
}

/// `/users/{id}/{kind}-filters`: the active filters that apply to a user
/// (system and theirs), for that user or an admin.
pub async fn filters_of_user(
    store: &Store,
    kind: FilterKind,
    caller: Caller,
    user: Uuid,
) -> ApiResult<Vec<Value>> {
    check_user(store, caller, user, &format!("{}s", kind.noun())).await?;
    Ok(filters_for(store, kind, user)
        .await?
        .iter()
        .map(Filter::to_json)
        .collect())
}

pub async fn list_field_security(store: &Store, caller: Caller) -> ApiResult<Vec<Value>> {
    caller.require_admin()?;
    Ok(store
        .list_config(FIELD_SECURITY_KIND)
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

pub async fn create_field_security(
    store: &Store,
    caller: Caller,
    body: &Value,
) -> ApiResult<Value> {
    caller.require_admin()?;
    if body.get("id").is_some() {
        return Err(ApiError::invalid("id: is set by the server"));
    }
    let rule = FieldSecurityRule::parse(body).map_err(ApiError::invalid)?;
    save_field_security(store, Uuid::new_v4(), rule, None).await
}

pub async fn get_field_security(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Value> {
    caller.require_admin()?;
    store
        .get_config(FIELD_SECURITY_KIND, &id.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no field-security rule has id {id}")))
}

/// Changes a rule; the document its GET returns is accepted as it is.
pub async fn patch_field_security(
    store: &Store,
    caller: Caller,
    id: Uuid,
    body: &Value,
) -> ApiResult<Value> {
    let current = get_field_security(store, caller, id).await?;
    let patch = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("the body must be a JSON object"))?;
    let mut merged = current.clone();
    for (k, v) in patch {
        if k == "id" && v != &current["id"] {
            return Err(ApiError::invalid("id: is set by the server"));
        }
        merged[k] = v.clone();
    }
    let rule = FieldSecurityRule::parse(&merged).map_err(ApiError::invalid)?;
    if json!(rule) == current {
        return Ok(current);
    }
    let before: Option<FieldSecurityRule> = serde_json::from_value(current).ok();
    save_field_security(store, id, rule, before.map(|r| r.entity_set)).await
}

/// Stores a rule that no other rule's set, field and user already cover,
/// and redelivers the sets it touches (R-F3).
async fn save_field_security(
    store: &Store,
    id: Uuid,
    mut rule: FieldSecurityRule,
    previous_set: Option<EntitySet>,
) -> ApiResult<Value> {
    rule.id = Some(id);
    let mut conn = store.pool.acquire().await?;
    if let Some(user) = rule.user_id {
        if !store::record_exists(&mut conn, EntitySet::Users, user).await? {
            return Err(ApiError::invalid(format!("user_id: no user has id {user}")));
        }
    }
    let existing = store.list_config(FIELD_SECURITY_KIND).await?;
    let same_target = existing.iter().any(|(_, v)| {
        serde_json::from_value::<FieldSecurityRule>(v.clone()).is_ok_and(|r| {
            r.id != rule.id
                && r.entity_set == rule.entity_set
                && r.field == rule.field
                && r.user_id == rule.user_id
        })
    });
    if same_target {
        return Err(ApiError::conflict(
            "duplicate",
            "a rule for this set, field and user exists; delete it first",
        ));
    }
    let v = json!(rule);
    store::put_config(&mut conn, FIELD_SECURITY_KIND, &id.to_string(), &v).await?;
    sync_store::redeliver_set(&mut conn, rule.entity_set).await?;
    if let Some(set) = previous_set.filter(|s| *s != rule.entity_set) {
        sync_store::redeliver_set(&mut conn, set).await?;
    }
    store.rules_changed().await?;
    Ok(v)
}

pub async fn delete_field_security(store: &Store, caller: Caller, id: Uuid) -> ApiResult<()> {
    caller.require_admin()?;
    let mut conn = store.pool.acquire().await?;
    let rule = store
        .get_config(FIELD_SECURITY_KIND, &id.to_string())
        .await?;
    if store::delete_config(&mut conn, FIELD_SECURITY_KIND, &id.to_string()).await? {
        if let Some(set) = rule.and_then(|r| {
            r.get("entity_set")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        }) {
            sync_store::redeliver_set(&mut conn, set).await?;
        }
        store.rules_changed().await?;
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no field-security rule has id {id}"
        )))
    }
}
