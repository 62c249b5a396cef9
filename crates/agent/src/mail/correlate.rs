//! The CRM-side answers the email planner needs for a received Inbox
//! message (R-M5, R-M6): the user's auto-track setting and the exclusion
//! lists (read from the server's settings, once per sync and only when a
//! received message needs them), the internal users, the correlation
//! look-up and what the sender is in the CRM.

use std::collections::HashSet;

use anyhow::Context;
use reqwest::Method;

use crmsync_core::email::ParsedEmail;
use crmsync_core::settings::{AutoTrack, OrgSettings, UserSettings};

use super::plan::{exclusion_of, AutoFacts, Regarding, Sender};
use crate::crm::CrmClient;

/// What R-M6 needs from the server's settings.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub auto_track: AutoTrack,
    /// The organization's list, then the user's.
    pub exclusions: Vec<String>,
    /// Lower-cased addresses of the organization's users.
    pub internal: HashSet<String>,
}

/// Percent-encodes a query value.
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl MailSettings {
    /// Reads the organization's and the mailbox owner's settings and the
    /// users' addresses.
    pub async fn load(crm: &CrmClient, mailbox_user: &str) -> anyhow::Result<MailSettings> {
        let org = crm
            .request(Method::GET, "/api/v1/settings", None)
            .await
            .context("reading the organization's settings")?;
        let org: OrgSettings = serde_json::from_value(org).unwrap_or_default();
        let user = crm
            .request(
                Method::GET,
                &format!("/api/v1/users/{mailbox_user}/settings"),
                None,
            )
            .await
            .context("reading the user's auto-track setting")?;
        let user: UserSettings = serde_json::from_value(user).unwrap_or_default();
        let mut internal = HashSet::new();
        let mut cursor = String::new();
        loop {
            let page = crm
                .request(
                    Method::GET,
                    &format!("/api/v1/users?limit=500{cursor}"),
                    None,
                )
                .await
                .context("listing the organization's users")?;
            for u in page["items"].as_array().into_iter().flatten() {
                if let Some(e) = u["email"].as_str() {
                    internal.insert(e.to_ascii_lowercase());
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = format!("&cursor={}", query_value(c)),
                _ => break,
            }
        }
        let mut exclusions = org.exclusions;
        exclusions.extend(user.exclusions);
        Ok(MailSettings {
            auto_track: user.auto_track,
            exclusions,
            internal,
        })
    }
}

fn parties(p: &ParsedEmail) -> Vec<&str> {
    p.from
        .iter()
        .chain(&p.to)
        .chain(&p.cc)
        .map(String::as_str)
        .collect()
}

/// R-M5 look-up: In-Reply-To and References, then the subject's tracking
/// token, then (if the organization turned it on) smart matching.
async fn correlation(
    crm: &CrmClient,
    p: &ParsedEmail,
) -> anyhow::Result<Option<(String, Option<Regarding>)>> {
    let mut ids: Vec<&str> = p.in_reply_to.iter().map(String::as_str).collect();
    ids.extend(p.references.iter().map(String::as_str));
    let mut q = format!(
        "/api/v1/sync/emails/lookup?message_ids={}",
        query_value(&ids.join(","))
    );
    if let Some(s) = &p.subject {
        q.push_str(&format!("&subject={}", query_value(s)));
    }
    let addresses: Vec<&str> = parties(p).into_iter().take(50).collect();
    if !addresses.is_empty() {
        q.push_str(&format!("&addresses={}", query_value(&addresses.join(","))));
    }
    let answer = crm
        .request(Method::GET, &q, None)
        .await
        .context("correlation look-up")?;
    Ok(answer["matched_by"].as_str().map(|by| {
        (
            by.to_string(),
            Regarding::from_json(&answer["email"]["regarding"]),
        )
    }))
}

/// R-M6: what the sender's address is in the CRM.
async fn sender(crm: &CrmClient, p: &ParsedEmail, s: &MailSettings) -> anyhow::Result<Sender> {
    let Some(from) = p.from.as_deref().map(str::to_ascii_lowercase) else {
        return Ok(Sender::Unknown);
    };
    for set in ["contacts", "leads", "accounts"] {
        let page = crm
            .request(
                Method::GET,
                &format!("/api/v1/{set}?q={}&limit=50", query_value(&from)),
                None,
            )
            .await?;
        let holds = page["items"].as_array().into_iter().flatten().any(|r| {
            ["email", "email2"].iter().any(|f| {
                r[*f]
                    .as_str()
                    .is_some_and(|e| e.eq_ignore_ascii_case(&from))
            })
        });
        if holds {
            return Ok(Sender::ContactLeadAccount);
        }
    }
    Ok(if s.internal.contains(&from) {
        Sender::OtherRecord
    } else {
        Sender::Unknown
    })
}

/// The facts of a received message that was not read (auto-tracking off).
pub fn unread(s: &MailSettings) -> AutoFacts {
    AutoFacts {
        setting: s.auto_track,
        excluded_by: None,
        internal_only: false,
        correlation: None,
        sender: Sender::Unknown,
    }
}

/// Everything [`super::plan::plan_auto`] needs for a received message,
/// asking the server only what the setting still leaves open.
pub async fn auto_facts(
    crm: &CrmClient,
    s: &MailSettings,
    p: &ParsedEmail,
) -> anyhow::Result<AutoFacts> {
    let all = parties(p);
    let mut a = AutoFacts {
        setting: s.auto_track,
        excluded_by: all
            .iter()
            .find_map(|addr| exclusion_of(addr, &s.exclusions))
            .map(str::to_string),
        internal_only: !all.is_empty()
            && all
                .iter()
                .all(|addr| s.internal.contains(&addr.to_ascii_lowercase())),
        correlation: None,
        sender: Sender::Unknown,
    };
    if a.setting == AutoTrack::None || a.excluded_by.is_some() || a.internal_only {
        return Ok(a);
    }
    a.correlation = correlation(crm, p).await?;
    if a.correlation.is_none()
        && matches!(
            a.setting,
            AutoTrack::FromCrmContactsLeadsAccounts | AutoTrack::FromCrmRecords
        )
    {
        a.sender = sender(crm, p, s).await?;
    }
    Ok(a)
}
