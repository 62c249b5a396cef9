//! Organization and per-user settings named by the SPEC, with their
//! defaults and validation. Both are changed by JSON merge (PATCH).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::entity::EntitySet;

/// Organization-wide settings (`/api/v1/settings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrgSettings {
    /// R-T1: scheduled sync interval (e.g. "15m").
    pub sync_interval: String,
    /// R-T1: the shortest interval a user may choose.
    pub sync_interval_min: String,
    /// R-E9: email between two CRM users becomes two activities.
    pub two_activities: bool,
    /// R-E10: process email only for users with `approved_email`.
    pub approved_only: bool,
    /// R-M7: email tagging on or off for everyone.
    pub tagging: bool,
    /// R-M5: tracking token prefix, as in `[CRM:0001234]`.
    pub tracking_token_prefix: String,
    /// R-M5 (3): smart matching of subjects and addresses; off by default.
    pub smart_matching: bool,
    /// R-M6: addresses or domains never auto-tracked (`@hr.example.com`, `noreply@*`).
    pub exclusions: Vec<String>,
    /// R-T5: largest deletion a sync may make without `--allow-mass-delete`,
    /// on each side (mailbox, CRM).
    pub mass_delete_max_items: u32,
    /// R-T5: the share limit counts only when more than this many items of
    /// a collection would go (deleting the one appointment of a calendar is
    /// not a mass delete).
    pub mass_delete_min_items: u32,
    /// R-T5: largest share of a collection (percent) a sync may delete.
    pub mass_delete_max_percent: u32,
}

impl Default for OrgSettings {
    fn default() -> Self {
        OrgSettings {
            sync_interval: "15m".into(),
            sync_interval_min: "5m".into(),
            two_activities: false,
            approved_only: false,
            tagging: true,
            tracking_token_prefix: "CRM".into(),
            smart_matching: false,
            exclusions: vec![],
            mass_delete_max_items: 50,
            mass_delete_min_items: 5,
            mass_delete_max_percent: 20,
        }
    }
}

/// R-M6: what may be tracked automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoTrack {
    None,
    All,
    RepliesToCrmEmail,
    FromCrmContactsLeadsAccounts,
    FromCrmRecords,
}

/// Per-user settings (`/api/v1/users/{id}/settings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserSettings {
    /// R-S10: entity types delivered to the mailbox.
    pub entity_types: Vec<EntitySet>,
    /// R-F4: write the contact's account name to the vCard ORG.
    pub update_company_field: bool,
    /// R-M6.
    pub auto_track: AutoTrack,
    /// R-C2: every client of this user acts as primary.
    pub roaming: bool,
    /// R-T1: scheduled sync on/off and its interval.
    pub schedule_enabled: bool,
    pub schedule_interval: String,
    /// R-M6: the user's own exclusion list.
    pub exclusions: Vec<String>,
    /// R-C5: email addresses of the users who may run a delegated client
    /// on this user's mailbox.
    pub delegates: Vec<String>,
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            entity_types: MAILBOX_TYPES.to_vec(),
            update_company_field: true,
            auto_track: AutoTrack::RepliesToCrmEmail,
            roaming: false,
            schedule_enabled: true,
            schedule_interval: "15m".into(),
            exclusions: vec![],
            delegates: vec![],
        }
    }
}

/// The entity types a mailbox can receive (R-S10).
pub const MAILBOX_TYPES: [EntitySet; 7] = [
    EntitySet::Contacts,
    EntitySet::Appointments,
    EntitySet::Serviceappointments,
    EntitySet::Tasks,
    EntitySet::Phonecalls,
    EntitySet::Letters,
    EntitySet::Faxes,
];

/// Parses an interval such as `90s`, `15m`, `1h` or `1d` into seconds.
pub fn parse_interval(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "'{}' is not an interval such as 15m, 90s, 1h or 1d",
            crate::field::shorten(s)
        )
    };
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(secs) if secs > 0 && secs <= 7 * 86_400 => Ok(secs),
        _ => Err(format!("'{s}' must be more than 0 and at most 7 days")),
    }
}

fn check_exclusions(list: &[String]) -> Result<(), String> {
    for entry in list {
        let ok = !entry.is_empty()
            && entry.len() <= 320
            && entry.contains('@')
            && !entry.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(format!(
                "exclusions: '{}' is not an address or domain pattern such as @hr.example.com or noreply@*",
                crate::field::shorten(entry)
            ));
        }
    }
    Ok(())
}

impl OrgSettings {
    pub fn validate(&self) -> Result<(), String> {
        let interval =
            parse_interval(&self.sync_interval).map_err(|e| format!("sync_interval: {e}"))?;
        let min = parse_interval(&self.sync_interval_min)
            .map_err(|e| format!("sync_interval_min: {e}"))?;
        if interval < min {
            return Err(format!(
                "sync_interval ({}) is shorter than sync_interval_min ({}); raise it or lower the minimum",
                self.sync_interval, self.sync_interval_min
            ));
        }
        let p = &self.tracking_token_prefix;
        if p.is_empty() || p.len() > 16 || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("tracking_token_prefix must be 1 to 16 letters or digits".into());
        }
        if self.mass_delete_max_percent > 100 {
            return Err("mass_delete_max_percent must be from 0 to 100".into());
        }
        if self.mass_delete_min_items > self.mass_delete_max_items {
            return Err(format!(
                "mass_delete_min_items ({}) is above mass_delete_max_items ({}); lower it or raise the maximum",
                self.mass_delete_min_items, self.mass_delete_max_items
            ));
        }
        check_exclusions(&self.exclusions)
    }
}

impl UserSettings {
    /// Checked against the organization, whose minimum interval binds (R-T1).
    pub fn validate(&self, org: &OrgSettings) -> Result<(), String> {
        let interval = parse_interval(&self.schedule_interval)
            .map_err(|e| format!("schedule_interval: {e}"))?;
        let min = parse_interval(&org.sync_interval_min).unwrap_or(0);
        if interval < min {
            return Err(format!(
                "schedule_interval ({}) is shorter than the organization minimum ({})",
                self.schedule_interval, org.sync_interval_min
            ));
        }
        if let Some(set) = self
            .entity_types
            .iter()
            .find(|s| !MAILBOX_TYPES.contains(s))
        {
            return Err(format!(
                "entity_types: {set} never goes to a mailbox; use any of: {}",
                MAILBOX_TYPES.map(|s| s.as_str()).join(", ")
            ));
        }
        check_exclusions(&self.exclusions)?;
        for d in &self.delegates {
            crate::field::email(&serde_json::json!(d)).map_err(|e| format!("delegates: {e}"))?;
        }
        Ok(())
    }

    /// R-C5: whether the user with this address may act on this mailbox.
    pub fn allows_delegate(&self, email: &str) -> bool {
        self.delegates.iter().any(|d| d.eq_ignore_ascii_case(email))
    }
}

/// Applies a JSON merge patch (top-level keys) to settings and parses the
/// result strictly: unknown keys and wrong types are refused with a message.
pub fn merge_patch<T: Serialize + DeserializeOwned>(
    current: &T,
    patch: &Value,
) -> Result<T, String> {
    let Some(patch) = patch.as_object() else {
        return Err("the body must be a JSON object of setting names and values".into());
    };
    let mut merged = serde_json::to_value(current).map_err(|e| e.to_string())?;
    let target = merged
        .as_object_mut()
        .expect("settings serialize to objects");
    for (k, v) in patch {
        if !target.contains_key(k) {
            let known: Vec<&String> = target.keys().collect();
            return Err(format!("unknown setting '{k}'; settings are: {known:?}"));
        }
        target.insert(k.clone(), v.clone());
    }
    serde_json::from_value(merged).map_err(|e| format!("invalid setting value: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("15m"), Ok(900));
        assert_eq!(parse_interval("1h"), Ok(3600));
        assert!(parse_interval("15").is_err());
        assert!(parse_interval("0m").is_err());
        assert!(parse_interval("m").is_err());
        assert!(parse_interval("99999999999999999999d").is_err());
    }

    #[test]
    fn r_t1_user_interval_not_shorter_than_org_minimum() {
        let org = OrgSettings::default();
        let mut user = UserSettings::default();
        assert!(user.validate(&org).is_ok());
        user.schedule_interval = "1m".into();
        assert!(user
            .validate(&org)
            .unwrap_err()
            .contains("organization minimum"));
    }

    #[test]
    fn patch_refuses_unknown_keys_and_wrong_types() {
        let org = OrgSettings::default();
        let patched: OrgSettings = merge_patch(&org, &json!({"tagging": false})).unwrap();
        assert!(!patched.tagging);
        assert!(merge_patch(&org, &json!({"colour": "red"}))
            .unwrap_err()
            .contains("unknown setting"));
        assert!(merge_patch(&org, &json!({"tagging": "no"})).is_err());
        let user = UserSettings::default();
        assert!(merge_patch(&user, &json!({"auto_track": "sometimes"})).is_err());
        let u: UserSettings = merge_patch(&user, &json!({"auto_track": "all"})).unwrap();
        assert_eq!(u.auto_track, AutoTrack::All);
    }

    #[test]
    fn org_validation() {
        let mut org = OrgSettings::default();
        assert!(org.validate().is_ok());
        org.tracking_token_prefix = "CRM-X".into();
        assert!(org.validate().is_err());
        let org = OrgSettings {
            sync_interval: "1m".into(),
            ..OrgSettings::default()
        };
        assert!(org.validate().unwrap_err().contains("shorter"));
        let org = OrgSettings {
            exclusions: vec!["hr".into()],
            ..OrgSettings::default()
        };
        assert!(org.validate().is_err());
    }

    #[test]
    fn r_t5_limits_are_validated() {
        let org = OrgSettings {
            mass_delete_min_items: 60,
            ..OrgSettings::default()
        };
        assert!(org
            .validate()
            .unwrap_err()
            .contains("mass_delete_min_items"));
        let org = OrgSettings {
            mass_delete_max_percent: 101,
            ..OrgSettings::default()
        };
        assert!(org.validate().is_err());
    }

    #[test]
    fn r_s10_only_mailbox_types_can_be_delivered() {
        let org = OrgSettings::default();
        let user = UserSettings {
            entity_types: vec![EntitySet::Accounts],
            ..UserSettings::default()
        };
        assert!(user.validate(&org).is_err());
    }
}
