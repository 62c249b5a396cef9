//! Mailboxes connected to the server (SPEC §15): R-V1's create, read,
//! change and delete, R-V2's encrypted passwords, R-V3's sync client.
//!
//! A mailbox's `imap` and `dav` sections have the keys of the agent
//! configuration's `[mailbox.imap]` and `[mailbox.dav]` (SPEC §13) and are
//! checked by the same code (`crmsync_mailbox::settings`). They are stored
//! as given, without their passwords; the passwords are stored encrypted
//! (`crate::secrets`) and never shown: answers say `"password_set"`.

mod connection;
pub mod lease;
pub mod store;

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crmsync_core::kind::MailboxKind;
use crmsync_core::time::{format_datetime, now_timestamp};
use crmsync_core::EntitySet;
use crmsync_mailbox::settings::{
    DavSection, DavSettings, ImapSection, ImapSettings, MailFolders, Secret,
};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::secrets::{SecretError, SecretKey};
use crate::store::Store;
use crate::sync::clients;
use store::Mailbox;

pub use connection::{connection, resync, test, Check, CheckStatus, Connection, ConnectionTest};

/// R-V5: a mailbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxState {
    /// Synchronized on its schedule.
    Active,
    /// Its last cycles failed for a passing reason; tried again with backoff.
    Failing,
    /// The mail server refused its credentials: not tried until they change.
    NeedsReconnect,
    /// Not synchronized.
    Disabled,
}

impl MailboxState {
    pub const ALL: [MailboxState; 4] = [
        MailboxState::Active,
        MailboxState::Failing,
        MailboxState::NeedsReconnect,
        MailboxState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Active => "active",
            MailboxState::Failing => "failing",
            MailboxState::NeedsReconnect => "needs_reconnect",
            MailboxState::Disabled => "disabled",
        }
    }
}

impl std::str::FromStr for MailboxState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        MailboxState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or(())
    }
}

/// What the `settings` column holds: the sections without their
/// passwords, and which sections have one (in the secret).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imap: Option<ImapSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dav: Option<DavSection>,
    /// `imap`, `dav`: the sections whose password is set.
    #[serde(default)]
    pub password_set: BTreeSet<String>,
}

/// What the secret envelope holds, decrypted: each section's password.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passwords {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dav: Option<String>,
}

/// What the envelope of a mailbox's secret is bound to: a secret copied to
/// another mailbox's row does not decrypt.
pub fn secret_context(id: Uuid) -> String {
    format!("mailbox:{id}")
}

impl Passwords {
    /// Encrypts the passwords for mailbox `id`.
    pub fn seal(&self, key: &SecretKey, id: Uuid) -> String {
        let plain = serde_json::to_vec(self).expect("passwords serialize");
        key.encrypt(&plain, &secret_context(id))
    }

    /// Decrypts mailbox `id`'s passwords.
    pub fn open(key: &SecretKey, id: Uuid, envelope: &str) -> Result<Passwords, SecretError> {
        let plain = key.decrypt(envelope, &secret_context(id))?;
        serde_json::from_slice(&plain).map_err(|_| SecretError::Malformed)
    }
}

/// The kinds of collection the sections reach (SPEC §13): the DAV
/// collections named (all three when a server root is to be discovered),
/// mail with IMAP.
fn kinds_of(s: &Settings) -> Vec<MailboxKind> {
    let mut kinds = Vec::new();
    if let Some(d) = &s.dav {
        let all = d.server.is_some();
        for (named, kind) in [
            (&d.contacts, MailboxKind::Contacts),
            (&d.calendar, MailboxKind::Calendar),
            (&d.tasks, MailboxKind::Tasks),
        ] {
            if all || named.is_some() {
                kinds.push(kind);
            }
        }
    }
    if s.imap.is_some() {
        kinds.push(MailboxKind::Mail);
    }
    kinds
}

fn no_key() -> ApiError {
    ApiError::conflict(
        "no_secret_key",
        "this server has no secret key, so it cannot store a mailbox's password; make one with `crmsync admin gen-key FILE` and start `crmsync serve` with --secret-key-file FILE (or CRMSYNC_SECRET_KEY_FILE)",
    )
}

fn key_of(store: &Store) -> ApiResult<&SecretKey> {
    store.secret_key.as_deref().ok_or_else(no_key)
}

fn unreadable(e: SecretError) -> ApiError {
    ApiError::conflict("secret_unreadable", e.to_string())
}

/// A JSON object's keys, each known.
fn object<'a>(body: &'a Value, known: &[&str]) -> ApiResult<&'a Map<String, Value>> {
    let map = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("send a JSON object"))?;
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(format!(
            "{k}: not a key of a mailbox; it takes: {}",
            known.join(", ")
        ))),
        None => Ok(map),
    }
}

/// Reads one section from its keys; a refusal names the key at fault.
fn read_section<T: DeserializeOwned>(label: &str, keys: &Map<String, Value>) -> ApiResult<T> {
    serde_json::from_value(Value::Object(keys.clone())).map_err(|whole| {
        // serde names the key of an unknown field, not of a mistyped one:
        // find it by reading the keys one at a time.
        let at_fault = keys.iter().find_map(|(k, v)| {
            serde_json::from_value::<T>(json!({k: v}))
                .err()
                .map(|e| format!("{k}: {e}"))
        });
        ApiError::invalid(format!(
            "{label} {}",
            at_fault.unwrap_or_else(|| whole.to_string())
        ))
    })
}

/// The server takes a password inline only.
fn inline(label: &str, s: Secret) -> ApiResult<Option<String>> {
    if s.password_file.is_some() || s.password_command.is_some() {
        return Err(ApiError::invalid(format!(
            "{label} password_file and password_command are read by the agent only (the server reads no files of yours and runs no commands); give password inline"
        )));
    }
    Ok(s.password)
}

/// Checks the sections with the agent configuration's rules (SPEC §13).
fn check(settings: &Settings, passwords: &Passwords) -> ApiResult<Vec<MailboxKind>> {
    checked(settings, passwords, |p| Ok(p.clone().unwrap_or_default()))
        .map_err(ApiError::invalid)?;
    let kinds = kinds_of(settings);
    if kinds.is_empty() {
        return Err(ApiError::invalid(
            "give an imap section (mail), a dav section (contacts, calendar, tasks), or both",
        ));
    }
    Ok(kinds)
}

/// The sections as the agent checks its configuration's
/// (`crmsync_mailbox::settings`), each with its password as `password`
/// makes it of the stored one.
#[allow(clippy::type_complexity)]
fn checked(
    settings: &Settings,
    passwords: &Passwords,
    password: impl Fn(&Option<String>) -> Result<String, String>,
) -> Result<(Option<(ImapSettings, MailFolders)>, Option<DavSettings>), String> {
    let imap = match &settings.imap {
        Some(i) => Some(i.clone().check("imap:", |_| password(&passwords.imap))?),
        None => None,
    };
    let dav = match &settings.dav {
        Some(d) => Some(d.clone().check("dav:", |_| password(&passwords.dav))?),
        None => None,
    };
    Ok((imap, dav))
}

/// Sets (or, with `None`, removes) one section's password.
fn set_password(
    password_set: &mut BTreeSet<String>,
    slot: &mut Option<String>,
    section: &str,
    p: Option<String>,
) {
    if p.is_some() {
        password_set.insert(section.to_string());
    } else {
        password_set.remove(section);
    }
    *slot = p;
}

/// The mailbox as the API shows it: never a password.
pub fn mailbox_json(m: &Mailbox) -> Value {
    let section = |v: Value, name: &str| -> Value {
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "password_set".into(),
                m.settings.password_set.contains(name).into(),
            );
        }
        v
    };
    let time = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map(format_datetime)
            .ok()
    };
    let mut out = json!({
        "id": m.id, "user_id": m.user_id, "name": m.name, "client_id": m.client_id,
        "state": m.state.as_str(),
        "next_run_at": time(m.next_run_at),
        "last_success_at": m.last_success_at, "last_error": m.last_error,
        "last_counts": m.last_counts.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()),
        "failures": m.failures,
        "created_at": m.created_at, "modified_at": m.modified_at,
    });
    if let Some(imap) = &m.settings.imap {
        out["imap"] = section(json!(imap), "imap");
    }
    if let Some(dav) = &m.settings.dav {
        out["dav"] = section(json!(dav), "dav");
    }
    out
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The user a mailbox is created for: the caller, or (for an admin) any user.
async fn owner_of(store: &Store, caller: Caller, user_id: Option<&Value>) -> ApiResult<Uuid> {
    let user = match user_id {
        None | Some(Value::Null) => return Ok(caller.user_id),
        Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| {
            ApiError::invalid(
                "user_id: not a UUID; give the id of a CRM user, or leave it out for yourself",
            )
        })?,
        Some(_) => return Err(ApiError::invalid("user_id: must be a string (a user's id)")),
    };
    if user != caller.user_id {
        caller.require_admin()?;
    }
    match store.get(user).await? {
        Some(u) if u.set == EntitySet::Users => Ok(user),
        _ => Err(ApiError::invalid(format!(
            "user_id: no CRM user has id {user}"
        ))),
    }
}

/// A mailbox the caller may see and change: their own, or any for an admin.
pub(crate) async fn own(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Mailbox> {
    let mut conn = store.pool.acquire().await?;
    let m = store::get(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no mailbox has id {id}")))?;
    if m.user_id != caller.user_id && !caller.is_admin {
        return Err(ApiError::forbidden("this mailbox belongs to another user"));
    }
    Ok(m)
}

/// R-V1: connects a mailbox; R-V3: registers its sync client.
pub async fn create(store: &Store, caller: Caller, body: &Value) -> ApiResult<Value> {
    let map = object(body, &["user_id", "name", "imap", "dav"])?;
    let user = owner_of(store, caller, map.get("user_id")).await?;
    let name = match map.get("name") {
        Some(Value::String(n)) => clients::client_name(n, "the mailbox's, e.g. \"work\"")?,
        _ => {
            return Err(ApiError::invalid(
                "name: required, a name of 1 to 100 characters (e.g. \"work\"); its sync client is named so",
            ))
        }
    };
    let mut settings = Settings::default();
    let mut passwords = Passwords::default();
    patch_sections(map, &mut settings, &mut passwords)?;
    let kinds = check(&settings, &passwords)?;
    let key = key_of(store)?;
    let id = Uuid::new_v4();
    let secret = passwords.seal(key, id);
    let client = clients::register_new(store, user, name, kinds).await?;
    let now = now_timestamp();
    let m = Mailbox {
        id,
        user_id: user,
        name: name.to_string(),
        settings,
        secret,
        client_id: client.id,
        created_at: now.clone(),
        modified_at: now,
        state: MailboxState::Active,
        // R-V1: a new mailbox is synchronized at once.
        next_run_at: now_secs(),
        lease_token: 0,
        lease_holder: None,
        lease_expires_at: None,
        last_success_at: None,
        last_error: None,
        last_counts: None,
        failures: 0,
    };
    let mut conn = store.pool.acquire().await?;
    store::insert(&mut conn, &m).await?;
    Ok(mailbox_json(&m))
}

/// The caller's mailboxes, or (for an admin) another user's.
pub async fn list(store: &Store, caller: Caller, user: Option<Uuid>) -> ApiResult<Vec<Value>> {
    let user = match user {
        Some(u) if u != caller.user_id => {
            caller.require_admin()?;
            u
        }
        _ => caller.user_id,
    };
    let mut conn = store.pool.acquire().await?;
    Ok(store::of_user(&mut conn, user)
        .await?
        .iter()
        .map(mailbox_json)
        .collect())
}

pub async fn read(store: &Store, caller: Caller, id: Uuid) -> ApiResult<Value> {
    Ok(mailbox_json(&own(store, caller, id).await?))
}

/// Applies a section's patch to its stored keys: a key set to null is
/// removed, others replace. `password` goes to `password`.
fn patched_section<T: DeserializeOwned + Serialize>(
    label: &str,
    stored: Option<&T>,
    patch: &Value,
    take: fn(&mut T) -> Secret,
) -> ApiResult<(T, Option<Option<String>>)> {
    let Some(changes) = patch.as_object() else {
        return Err(ApiError::invalid(format!(
            "{label} must be an object with keys of the agent configuration's [mailbox.{}] section (in a change, null removes a key), or null to remove the section",
            label.trim_end_matches(':')
        )));
    };
    let mut fields = match stored.map(|s| json!(s)) {
        Some(Value::Object(stored)) => stored,
        _ => Map::new(),
    };
    let mut password = None;
    for (k, v) in changes {
        if k == "password" {
            password = Some(match v {
                Value::Null => None,
                Value::String(p) => Some(p.clone()),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{label} password: must be a string"
                    )))
                }
            });
        } else if v.is_null() {
            fields.remove(k);
        } else {
            fields.insert(k.clone(), v.clone());
        }
    }
    let mut section: T = read_section(label, &fields)?;
    // The password was taken out above; a password_file or
    // password_command is refused here.
    inline(label, take(&mut section))?;
    Ok((section, password))
}

/// Applies the body's `imap` or `dav` (`name`) to a mailbox's section and
/// password: absent changes nothing, null removes the section, an object
/// changes the keys it names (a new mailbox's sections are changes to
/// nothing).
/// Applies a body's `imap` and `dav` (a creation is a change of nothing).
fn patch_sections(
    map: &Map<String, Value>,
    settings: &mut Settings,
    passwords: &mut Passwords,
) -> ApiResult<()> {
    patch_section(
        "imap",
        map.get("imap"),
        &mut settings.imap,
        &mut passwords.imap,
        &mut settings.password_set,
        ImapSection::take_secret,
    )?;
    patch_section(
        "dav",
        map.get("dav"),
        &mut settings.dav,
        &mut passwords.dav,
        &mut settings.password_set,
        DavSection::take_secret,
    )
}

fn patch_section<T: DeserializeOwned + Serialize>(
    name: &str,
    patch: Option<&Value>,
    section: &mut Option<T>,
    password: &mut Option<String>,
    password_set: &mut BTreeSet<String>,
    take: fn(&mut T) -> Secret,
) -> ApiResult<()> {
    match patch {
        None => {}
        Some(Value::Null) => {
            *section = None;
            set_password(password_set, password, name, None);
        }
        Some(changes) => {
            let (changed, new_password) =
                patched_section(&format!("{name}:"), section.as_ref(), changes, take)?;
            *section = Some(changed);
            if let Some(p) = new_password {
                set_password(password_set, password, name, p);
            }
        }
    }
    Ok(())
}

/// R-V1: changes a mailbox's name or sections. A change of its sections
/// (a new password, a fixed username) makes a mailbox waiting for new
/// credentials active again and due at once (R-V5).
pub async fn patch(store: &Store, caller: Caller, id: Uuid, body: &Value) -> ApiResult<Value> {
    let map = object(body, &["name", "imap", "dav"])?;
    let mut m = own(store, caller, id).await?;
    let name = match map.get("name") {
        None => None,
        Some(Value::String(n)) => {
            Some(clients::client_name(n, "the mailbox's, e.g. \"work\"")?.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "name: must be a string of 1 to 100 characters",
            ))
        }
    };
    let sections_changed = map.contains_key("imap") || map.contains_key("dav");
    let mut kinds = None;
    if sections_changed {
        let key = key_of(store)?;
        // A secret this key cannot open (another key, changed outside
        // crmsync) is not needed when every password in it is replaced.
        let replaced = |section: &String| {
            map.get(section.as_str())
                .is_some_and(|v| v.is_null() || v.get("password").is_some())
        };
        let mut passwords = match Passwords::open(key, m.id, &m.secret) {
            Ok(p) => p,
            Err(_) if m.settings.password_set.iter().all(replaced) => Passwords::default(),
            Err(e) => return Err(unreadable(e)),
        };
        let mut settings = m.settings.clone();
        patch_sections(map, &mut settings, &mut passwords)?;
        kinds = Some(check(&settings, &passwords)?);
        m.secret = passwords.seal(key, m.id);
        m.settings = settings;
        // R-V5: new credentials are tried at once, from a clean slate.
        if m.state != MailboxState::Disabled {
            m.state = MailboxState::Active;
            m.failures = 0;
            m.last_error = None;
        }
        m.next_run_at = now_secs();
    }
    let mut tx = store.begin().await?;
    if let Some(name) = name.filter(|n| *n != m.name) {
        clients::rename(&mut tx, m.client_id, &name).await?;
        m.name = name;
    }
    let mut kinds_changed = false;
    if let Some(kinds) = &kinds {
        if let Some(client) = crate::sync::store::get_client(&mut tx, m.client_id).await? {
            if client.kinds != *kinds {
                crate::sync::store::set_kinds(&mut tx, &client, kinds).await?;
                kinds_changed = true;
            }
        }
    }
    m.modified_at = now_timestamp();
    store::update_settings(&mut tx, &m, sections_changed).await?;
    tx.commit().await?;
    if kinds_changed {
        // SPEC §13: the next prepare of its client looks at the kinds again.
        store.rules_changed().await?;
    }
    Ok(mailbox_json(&m))
}

/// R-V1: disconnects a mailbox: it is no longer synchronized; nothing in
/// the CRM or in the mailbox is deleted. Its sync client goes with it (the
/// primary role passing to the user's oldest other client); the workers
/// remove its engine cache (`crmsync_hosted`'s sweep).
pub async fn delete(store: &Store, caller: Caller, id: Uuid) -> ApiResult<()> {
    let m = own(store, caller, id).await?;
    let mut tx = store.begin().await?;
    store::delete(&mut tx, m.id).await?;
    if let Some(client) = crate::sync::store::get_client(&mut tx, m.client_id).await? {
        crate::sync::store::retire_client(&mut tx, &client).await?;
    }
    tx.commit().await?;
    // The user's other clients may have a new primary.
    store.rules_changed().await?;
    Ok(())
}

/// R-V2: re-encrypts every stored secret under `new`, in one transaction:
/// all or nothing. Secrets already under `new` are left as they are (a
/// rotation interrupted before its commit, or run twice). Returns how many
/// secrets were re-encrypted.
pub async fn rotate_key(store: &Store, old: &SecretKey, new: &SecretKey) -> anyhow::Result<usize> {
    let mut tx = store.begin().await?;
    let mut rotated = 0;
    for (id, envelope) in store::secrets(&mut tx).await? {
        if crate::secrets::key_id_of(&envelope).ok() == Some(new.id()) {
            continue;
        }
        let passwords = Passwords::open(old, id, &envelope)
            .map_err(|e| anyhow::anyhow!("mailbox {id}: {e}; nothing was changed"))?;
        store::set_secret(&mut tx, id, &passwords.seal(new, id)).await?;
        rotated += 1;
    }
    tx.commit().await?;
    Ok(rotated)
}
