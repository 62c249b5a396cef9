//! Everything the sync engine needs to know about the owner of a mailbox:
//! user record, settings, filters, field rules. Loaded once per request.

use serde_json::{Map, Value};
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

use crmsync_core::field_rules::{Direction, FieldSecurityRule, SyncFields};
use crmsync_core::filter::EvalContext;
use crmsync_core::settings::{OrgSettings, UserSettings};
use crmsync_core::{EntitySet, Record};

use super::store::Client;
use crate::config::{self, Filter, FilterKind};
use crate::error::{ApiError, ApiResult};
use crate::store::Store;

pub struct MailboxOwner {
    pub user: Record,
    pub email: String,
    pub settings: UserSettings,
    pub org: OrgSettings,
    pub filters: Vec<Filter>,
    pub security: Vec<FieldSecurityRule>,
    sync_fields: HashMap<EntitySet, SyncFields>,
}

impl MailboxOwner {
    pub async fn load(store: &Store, user_id: Uuid) -> ApiResult<MailboxOwner> {
        let user = match store.get(user_id).await? {
            Some(u) if u.set == EntitySet::Users => u,
            _ => return Err(ApiError::not_found(format!("no user has id {user_id}"))),
        };
        let sync_fields = config::all_sync_fields(store).await?;
        Ok(MailboxOwner {
            email: user
                .fields
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            settings: config::stored_user_settings(store, user_id).await?,
            org: config::org_settings(store).await?,
            filters: config::filters_for(store, FilterKind::Sync, user_id).await?,
            security: config::field_security_rules(store).await?,
            sync_fields,
            user,
        })
    }

    pub fn id(&self) -> Uuid {
        self.user.id
    }

    pub fn eval_context(&self, now: OffsetDateTime) -> EvalContext {
        EvalContext {
            me: self.user.id,
            me_email: self.email.clone(),
            now,
            regarding_owners: Default::default(),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.user
            .fields
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// R-S11: the privilege to receive contacts, appointments and tasks.
    pub fn may_sync_to_mailbox(&self) -> bool {
        self.flag("sync_to_mailbox")
    }

    pub fn approved_email(&self) -> bool {
        self.flag("approved_email")
    }

    /// R-C2: in roaming mode every (non-delegated) client acts as primary.
    pub fn acts_as_primary(&self, client: &Client) -> bool {
        !client.is_delegated() && (client.is_primary || self.settings.roaming)
    }

    /// R-S10/R-S11: whether records of `set` are delivered by filters.
    pub fn delivers(&self, set: EntitySet) -> bool {
        self.may_sync_to_mailbox() && self.settings.entity_types.contains(&set)
    }

    /// R-S6/R-S7: the active filters of a set that apply to this user.
    pub fn filters_of(&self, set: EntitySet) -> impl Iterator<Item = &Filter> {
        self.filters.iter().filter(move |f| f.entity_set == set)
    }

    /// The first active filter the record matches (R-S6), if any.
    pub fn matching_filter(&self, r: &Record, now: OffsetDateTime) -> Option<&Filter> {
        crate::config::first_match(&self.filters, r, &self.eval_context(now))
    }

    fn rule(&self, set: EntitySet, field: &str) -> Option<&FieldSecurityRule> {
        // A rule naming the user beats one for everyone; admins are exempt.
        if self.user.fields.get("role").and_then(Value::as_str) == Some("admin") {
            return None;
        }
        let mine = self
            .security
            .iter()
            .find(|r| r.entity_set == set && r.field == field && r.user_id == Some(self.id()));
        mine.or_else(|| {
            self.security
                .iter()
                .find(|r| r.entity_set == set && r.field == field && r.user_id.is_none())
        })
    }

    fn direction(&self, set: EntitySet, field: &str) -> Direction {
        self.sync_fields
            .get(&set)
            .and_then(|f| f.get(field))
            .copied()
            .unwrap_or(Direction::None)
    }

    /// R-F3: may this user read the field?
    pub fn may_read(&self, set: EntitySet, field: &str) -> bool {
        self.rule(set, field).is_none_or(|r| r.can_read)
    }

    /// R-F3: may this user change the field?
    pub fn may_update(&self, set: EntitySet, field: &str) -> bool {
        self.rule(set, field).is_none_or(|r| r.can_update)
    }

    /// R-O1: the go_offline privilege (a replica of the CRM's records).
    pub fn may_go_offline(&self) -> bool {
        self.flag("go_offline")
    }

    /// R-F1 + R-F3: may this field be written to the mailbox?
    pub fn to_mailbox(&self, set: EntitySet, field: &str) -> bool {
        matches!(
            self.direction(set, field),
            Direction::ToMailbox | Direction::Both
        ) && self.may_read(set, field)
    }

    /// R-F1 + R-F3: may a mailbox change of this field reach the CRM?
    pub fn to_crm(&self, set: EntitySet, field: &str) -> bool {
        matches!(
            self.direction(set, field),
            Direction::ToCrm | Direction::Both
        ) && self.may_update(set, field)
    }

    /// The fields of a record as the mailbox gets them.
    pub fn mailbox_fields(&self, r: &Record) -> Map<String, Value> {
        r.fields
            .iter()
            .filter(|(k, _)| self.to_mailbox(r.set, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
