//! The pure table of email rules for one message (SPEC §7 R-E5..R-E7, §8
//! R-M1, R-M3..R-M8, §9 email rows). No I/O: the executor (`mail/mod.rs`)
//! gathers the facts (flags, folder role, cached link state, settings,
//! correlation answer) and performs the returned operations.
//!
//! A plan compares what the message shows now (its keywords) with what the
//! cache says was synchronized; it does not depend on what changed. So
//! planning a message again after the agent's own keyword write is harmless:
//! it yields nothing.

use crmsync_core::settings::AutoTrack;
use uuid::Uuid;

/// A regarding: the record's id, and its entity set when known. A
/// `$CRMRegarding:` keyword names the id alone (R-M7); the server finds
/// the set of a regarding pushed without one. The cache spells it
/// `<set>:<id>` (or `<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regarding {
    pub set: Option<String>,
    pub id: Uuid,
}

impl Regarding {
    pub fn new(set: impl Into<String>, id: Uuid) -> Self {
        Regarding {
            set: Some(set.into()),
            id,
        }
    }

    /// What a `$CRMRegarding:` keyword says: the id alone.
    pub fn by_id(id: Uuid) -> Self {
        Regarding { set: None, id }
    }

    /// `<set>:<id>` or `<id>`.
    pub fn parse(text: &str) -> Option<Regarding> {
        match text.split_once(':') {
            Some((set, id)) if !set.is_empty() => {
                Some(Regarding::new(set, Uuid::parse_str(id).ok()?))
            }
            Some(_) => None,
            None => Some(Regarding::by_id(Uuid::parse_str(text).ok()?)),
        }
    }

    /// From a record's `regarding` field (`{"set", "id"}` or null).
    pub fn from_json(v: &serde_json::Value) -> Option<Regarding> {
        Some(Regarding {
            set: v["set"].as_str().map(str::to_string),
            id: Uuid::parse_str(v["id"].as_str()?).ok()?,
        })
    }

    /// `{"set", "id"}`, or `{"id"}` when the set is not known.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.set {
            Some(set) => serde_json::json!({"set": set, "id": self.id}),
            None => serde_json::json!({"id": self.id}),
        }
    }

    /// Whether `a` and `b` name the same record (an id names one record,
    /// whether or not its set is known).
    pub fn same(a: Option<&Regarding>, b: Option<&Regarding>) -> bool {
        a.map(|r| r.id) == b.map(|r| r.id)
    }
}

impl std::fmt::Display for Regarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.set {
            Some(set) => write!(f, "{set}:{}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// What a synchronized folder is for (configuration, R-M4, R-M8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderRole {
    Inbox,
    Sent,
    Drafts,
    /// R-M4: messages placed here are tracked, with this regarding if set.
    Tracked {
        regarding: Option<Regarding>,
    },
}

/// What the cache knows about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Known {
    /// R-M3: 0 not tracked, 1 to be tracked, 2 tracked.
    pub link: u8,
}

/// One message as the scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub role: FolderRole,
    /// R-M1: it carries `$CRMTracked`.
    pub marked: bool,
    /// `\Draft`.
    pub draft: bool,
    /// R-M7: the record its `$CRMRegarding:…` keyword names (the first, if
    /// several).
    pub regarding_keyword: Option<Regarding>,
    /// R-M7: that keyword is in the former form `<set>:<uuid>`, to be
    /// replaced by the current one.
    pub outdated_keyword: bool,
    /// The cache's row; `None` for a message seen here for the first time.
    pub known: Option<Known>,
    /// The regarding the cache holds for a tracked message.
    pub known_regarding: Option<Regarding>,
    /// It arrived after the folder's first scan (a received message, R-M5).
    pub arrived: bool,
}

/// An operation on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailOp {
    /// Add `$CRMTracked` (R-M4, R-M5) and, if given, the regarding keyword.
    Mark { regarding: Option<Regarding> },
    /// Push `track` with the raw message (R-S5, docs "Tracked email").
    Track { regarding: Option<Regarding> },
    /// Push `untrack` without deleting in the CRM (R-M1).
    Untrack,
    /// Push `set_regarding` (R-T2 "set regarding", R-E5).
    SetRegarding(Option<Regarding>),
    /// Push `delete`: deleted in the mailbox, the CRM email is kept (§9).
    PushDelete,
    /// Show this regarding as the message's only `$CRMRegarding` keyword (R-M7).
    ShowRegarding(Option<Regarding>),
    /// Drop `$CRMTracked` and the regarding keyword; the message stays (§9).
    Unmark,
    /// Keep the row to report: marked, not tracked, moved elsewhere (R-M8).
    ReportGone,
    /// Forget the cache row.
    Forget,
}

impl MailOp {
    /// The keywords a `Mark` or `ShowRegarding` writes, as
    /// `answers::keyword_change` takes them: `$CRMTracked` to show (None:
    /// left as it is), the regarding, and whether the regarding keywords
    /// change. Other operations write none.
    pub fn keyword_write(&self) -> (Option<bool>, Option<&Regarding>, bool) {
        match self {
            MailOp::Mark { regarding } => (Some(true), regarding.as_ref(), regarding.is_some()),
            MailOp::ShowRegarding(r) => (None, r.as_ref(), true),
            _ => (None, None, false),
        }
    }
}

/// What to do with a message, the link state it has afterwards (until an
/// answer changes it), and the rule that decided, in words (`explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub ops: Vec<MailOp>,
    pub link: u8,
    pub rule: String,
}

fn decide(ops: Vec<MailOp>, link: u8, rule: impl Into<String>) -> Decision {
    Decision {
        ops,
        link,
        rule: rule.into(),
    }
}

/// The first step for a created or changed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Decided(Decision),
    /// A received Inbox message: correlation and the auto-track setting
    /// decide (R-M5, R-M6); call [`plan_auto`] with the answers.
    Correlate,
}

/// A created or changed message (R-M1, R-M4, R-E6, R-T2 email columns).
pub fn plan_message(f: &Facts) -> Step {
    let link = f.known.map_or(0, |k| k.link);
    let is_draft = f.role == FolderRole::Drafts || f.draft;
    let folder_regarding = match &f.role {
        FolderRole::Tracked { regarding } => regarding.clone(),
        _ => None,
    };
    Step::Decided(match (link, f.marked) {
        // R-M1: removing the marker untracks; the CRM email is kept.
        (2, false) => decide(
            vec![MailOp::Untrack],
            0,
            "$CRMTracked was removed: untracked (the CRM email is kept)",
        ),
        // R-E5, R-T2: only the regarding of a tracked email changes.
        (2, true) if !Regarding::same(f.regarding_keyword.as_ref(), f.known_regarding.as_ref()) => {
            let mut ops = vec![MailOp::SetRegarding(f.regarding_keyword.clone())];
            if f.outdated_keyword {
                ops.push(MailOp::ShowRegarding(f.regarding_keyword.clone()));
            }
            decide(
                ops,
                2,
                "the regarding keyword changed: the CRM email's regarding follows",
            )
        }
        // R-M7: the former keyword form is replaced (the track answer does
        // it for a message being tracked).
        (2, true) if f.outdated_keyword => decide(
            vec![MailOp::ShowRegarding(f.known_regarding.clone())],
            2,
            "the regarding keyword was in its former form: replaced by the current one",
        ),
        (2, true) => decide(vec![], 2, "tracked; nothing changed"),
        // R-E6: drafts wait until they are sent.
        (_, true) if is_draft => decide(
            vec![],
            1,
            "a draft is never tracked; it is tracked when it is sent (appears in the Sent folder)",
        ),
        (_, true) => decide(
            vec![MailOp::Track {
                regarding: f.regarding_keyword.clone().or(folder_regarding),
            }],
            1,
            "the message carries $CRMTracked",
        ),
        // R-M4: placed in a tracked folder (once: a marker the user removes
        // there later stays removed).
        (_, false) if f.known.is_none() && !is_draft && folder_regarding.is_some() => {
            tracked_folder(folder_regarding)
        }
        (_, false)
            if f.known.is_none() && !is_draft && matches!(f.role, FolderRole::Tracked { .. }) =>
        {
            tracked_folder(None)
        }
        (_, false) if f.role == FolderRole::Inbox && f.arrived && f.known.is_none() && !f.draft => {
            return Step::Correlate
        }
        (1, false) => decide(
            vec![],
            0,
            "the marker was removed before the message was tracked",
        ),
        (_, false) => decide(vec![], 0, "not marked with $CRMTracked"),
    })
}

fn tracked_folder(regarding: Option<Regarding>) -> Decision {
    decide(
        vec![
            MailOp::Mark {
                regarding: regarding.clone(),
            },
            MailOp::Track { regarding },
        ],
        1,
        "placed in a tracked folder",
    )
}

/// What the sender resolves to in the CRM (R-M6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Unknown,
    /// A contact, lead or account has the address.
    ContactLeadAccount,
    /// Another record (a user) has it.
    OtherRecord,
}

/// The answers the executor gathered for a received Inbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoFacts {
    /// R-M6: the user's auto-track setting.
    pub setting: AutoTrack,
    /// R-M6: the exclusion entry one of its addresses matches.
    pub excluded_by: Option<String>,
    /// R-M6: every party is an internal user.
    pub internal_only: bool,
    /// R-M5: how it matched a tracked email (`message_id`,
    /// `tracking_token`, `smart_matching`) and that email's regarding.
    pub correlation: Option<(String, Option<Regarding>)>,
    pub sender: Sender,
}

fn setting_name(s: AutoTrack) -> &'static str {
    match s {
        AutoTrack::None => "none",
        AutoTrack::All => "all",
        AutoTrack::RepliesToCrmEmail => "replies_to_crm_email",
        AutoTrack::FromCrmContactsLeadsAccounts => "from_crm_contacts_leads_accounts",
        AutoTrack::FromCrmRecords => "from_crm_records",
    }
}

/// R-M5, R-M6: whether a received Inbox message is tracked automatically.
pub fn plan_auto(a: &AutoFacts) -> Decision {
    let name = setting_name(a.setting);
    if a.setting == AutoTrack::None {
        return decide(
            vec![],
            0,
            "the auto-track setting is none: received messages are tracked only by hand",
        );
    }
    if let Some(entry) = &a.excluded_by {
        return decide(
            vec![],
            0,
            format!("not tracked automatically: an address matches the exclusion entry '{entry}'"),
        );
    }
    if a.internal_only {
        return decide(
            vec![],
            0,
            "not tracked automatically: its only parties are internal users",
        );
    }
    let correlated = a.correlation.is_some();
    let allowed = match a.setting {
        AutoTrack::None => false,
        AutoTrack::All => true,
        AutoTrack::RepliesToCrmEmail => correlated,
        AutoTrack::FromCrmContactsLeadsAccounts => {
            correlated || a.sender == Sender::ContactLeadAccount
        }
        AutoTrack::FromCrmRecords => correlated || a.sender != Sender::Unknown,
    };
    if !allowed {
        return decide(
            vec![],
            0,
            format!("the auto-track setting is {name} and the message belongs to no tracked email nor comes from a matching CRM record"),
        );
    }
    let regarding = a.correlation.as_ref().and_then(|(_, r)| r.clone());
    let rule = match &a.correlation {
        Some((by, _)) => format!(
            "it belongs to a tracked email (matched by {by}); the auto-track setting {name} allows tracking"
        ),
        None => format!("tracked automatically under the auto-track setting {name}"),
    };
    decide(
        vec![
            MailOp::Mark {
                regarding: regarding.clone(),
            },
            MailOp::Track { regarding },
        ],
        1,
        rule,
    )
}

/// A message gone from a synchronized folder (§9 "deleted in mailbox",
/// R-M8). `copy_elsewhere`: the same Message-ID is in a synchronized folder.
pub fn plan_gone(known: Known, copy_elsewhere: bool) -> Decision {
    match (known.link, copy_elsewhere) {
        (_, true) => decide(
            vec![MailOp::Forget],
            0,
            "moved to another synchronized folder",
        ),
        // §9: deleted in the mailbox: the CRM email is kept.
        (2, false) => decide(
            vec![MailOp::PushDelete, MailOp::Forget],
            0,
            "the message was deleted or moved elsewhere; the CRM email is kept",
        ),
        // R-M8: never silently dropped.
        (1, false) => decide(
            vec![MailOp::ReportGone],
            1,
            "marked but not yet tracked, and moved out of the synchronized folders",
        ),
        _ => decide(vec![MailOp::Forget], 0, "not tracked"),
    }
}

/// A delivery of a tracked email from the CRM (R-M7, §9 CRM → mailbox).
pub fn plan_delivery(removed: bool, regarding: Option<Regarding>) -> Decision {
    if removed {
        decide(
            vec![MailOp::Unmark],
            0,
            "the email was deleted in the CRM: the message is kept, its keyword removed",
        )
    } else {
        decide(
            vec![MailOp::ShowRegarding(regarding)],
            2,
            "the email's regarding changed in the CRM",
        )
    }
}

/// R-M6: the exclusion entry `address` matches, if any. An entry is an
/// address (`ceo@example.com`), a domain (`@hr.example.com`: exactly that
/// domain), or a pattern with `*` (`noreply@*`, `*@lists.example.org`).
/// Case is ignored.
pub fn exclusion_of<'a>(address: &str, entries: &'a [String]) -> Option<&'a str> {
    let address = address.trim().to_ascii_lowercase();
    entries
        .iter()
        .find(|e| {
            let e = e.trim().to_ascii_lowercase();
            if e.is_empty() {
                false
            } else if e.contains('*') {
                glob(&e, &address)
            } else if e.starts_with('@') {
                address.ends_with(&e)
            } else {
                address == e
            }
        })
        .map(String::as_str)
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(role: FolderRole, marked: bool, link: Option<u8>) -> Facts {
        Facts {
            role,
            marked,
            draft: false,
            regarding_keyword: None,
            outdated_keyword: false,
            known: link.map(|link| Known { link }),
            known_regarding: None,
            arrived: true,
        }
    }

    fn ops(step: Step) -> Vec<MailOp> {
        match step {
            Step::Decided(d) => d.ops,
            Step::Correlate => panic!("correlation asked"),
        }
    }

    fn acc() -> Regarding {
        Regarding::new(
            "accounts",
            Uuid::from_u128(0x0b9f3c1e_8f6a_4c1e_9d2a_3b4c5d6e7f80),
        )
    }

    /// What the keyword of `acc()` says: its id.
    fn acc_keyword() -> Regarding {
        Regarding::by_id(acc().id)
    }

    #[test]
    fn r_m1_marker_tracks_and_its_removal_untracks() {
        assert_eq!(
            ops(plan_message(&facts(FolderRole::Inbox, true, Some(0)))),
            vec![MailOp::Track { regarding: None }]
        );
        assert_eq!(
            ops(plan_message(&facts(FolderRole::Sent, false, Some(2)))),
            vec![MailOp::Untrack]
        );
        assert_eq!(
            ops(plan_message(&facts(FolderRole::Sent, true, Some(2)))),
            vec![]
        );
    }

    #[test]
    fn r_e6_drafts_wait_until_sent() {
        let d = plan_message(&facts(FolderRole::Drafts, true, None));
        assert!(
            matches!(&d, Step::Decided(d) if d.ops.is_empty() && d.link == 1),
            "{d:?}"
        );
        let mut f = facts(FolderRole::Inbox, true, Some(1));
        f.draft = true;
        assert_eq!(ops(plan_message(&f)), vec![]);
        assert_eq!(
            ops(plan_message(&facts(FolderRole::Sent, true, None))),
            vec![MailOp::Track { regarding: None }]
        );
    }

    #[test]
    fn r_m4_tracked_folder_marks_once_with_its_regarding() {
        let role = FolderRole::Tracked {
            regarding: Some(acc()),
        };
        assert_eq!(
            ops(plan_message(&facts(role.clone(), false, None))),
            vec![
                MailOp::Mark {
                    regarding: Some(acc())
                },
                MailOp::Track {
                    regarding: Some(acc())
                }
            ]
        );
        // The user removed the marker there afterwards: it stays removed.
        assert_eq!(ops(plan_message(&facts(role, false, Some(0)))), vec![]);
    }

    #[test]
    fn r_m5_only_new_inbox_messages_are_correlated() {
        assert_eq!(
            plan_message(&facts(FolderRole::Inbox, false, None)),
            Step::Correlate
        );
        let mut old = facts(FolderRole::Inbox, false, None);
        old.arrived = false;
        assert_eq!(ops(plan_message(&old)), vec![]);
        assert_eq!(
            ops(plan_message(&facts(FolderRole::Sent, false, None))),
            vec![]
        );
    }

    #[test]
    fn r_e5_regarding_keyword_change_sets_the_regarding() {
        let mut f = facts(FolderRole::Inbox, true, Some(2));
        f.regarding_keyword = Some(acc_keyword());
        assert_eq!(
            ops(plan_message(&f)),
            vec![MailOp::SetRegarding(Some(acc_keyword()))]
        );
        // The keyword names the id the CRM holds (with its set): the same.
        f.known_regarding = Some(acc());
        assert_eq!(ops(plan_message(&f)), vec![]);
    }

    #[test]
    fn r_m7_former_keyword_of_a_tracked_message_is_replaced() {
        let mut f = facts(FolderRole::Inbox, true, Some(2));
        f.regarding_keyword = Some(acc_keyword());
        f.outdated_keyword = true;
        f.known_regarding = Some(acc());
        assert_eq!(
            ops(plan_message(&f)),
            vec![MailOp::ShowRegarding(Some(acc()))]
        );
        // Another regarding, in the former form: pushed, and shown anew.
        f.known_regarding = None;
        assert_eq!(
            ops(plan_message(&f)),
            vec![
                MailOp::SetRegarding(Some(acc_keyword())),
                MailOp::ShowRegarding(Some(acc_keyword()))
            ]
        );
    }

    fn auto(setting: AutoTrack) -> AutoFacts {
        AutoFacts {
            setting,
            excluded_by: None,
            internal_only: false,
            correlation: None,
            sender: Sender::Unknown,
        }
    }

    #[test]
    fn r_m6_auto_track_settings() {
        let tracks = |a: &AutoFacts| !plan_auto(a).ops.is_empty();
        assert!(!tracks(&auto(AutoTrack::RepliesToCrmEmail)));
        assert!(tracks(&auto(AutoTrack::All)));
        let mut a = auto(AutoTrack::RepliesToCrmEmail);
        a.correlation = Some(("message_id".into(), Some(acc())));
        assert_eq!(
            plan_auto(&a).ops,
            vec![
                MailOp::Mark {
                    regarding: Some(acc())
                },
                MailOp::Track {
                    regarding: Some(acc())
                }
            ]
        );
        a.setting = AutoTrack::None;
        assert!(!tracks(&a));
        let mut a = auto(AutoTrack::All);
        a.excluded_by = Some("@hr.example.com".into());
        let d = plan_auto(&a);
        assert!(
            d.ops.is_empty() && d.rule.contains("@hr.example.com"),
            "{d:?}"
        );
        let mut a = auto(AutoTrack::FromCrmContactsLeadsAccounts);
        a.sender = Sender::OtherRecord;
        assert!(!tracks(&a));
        a.sender = Sender::ContactLeadAccount;
        assert!(tracks(&a));
        let mut a = auto(AutoTrack::FromCrmRecords);
        a.sender = Sender::OtherRecord;
        assert!(tracks(&a));
        a.internal_only = true;
        assert!(!tracks(&a));
    }

    #[test]
    fn r_m8_and_section_9_gone_messages() {
        assert_eq!(
            plan_gone(Known { link: 2 }, false).ops,
            vec![MailOp::PushDelete, MailOp::Forget]
        );
        assert_eq!(
            plan_gone(Known { link: 1 }, false).ops,
            vec![MailOp::ReportGone]
        );
        assert_eq!(plan_gone(Known { link: 2 }, true).ops, vec![MailOp::Forget]);
        assert_eq!(
            plan_gone(Known { link: 0 }, false).ops,
            vec![MailOp::Forget]
        );
    }

    #[test]
    fn r_m6_exclusion_entries() {
        let list = vec![
            "@hr.example.com".to_string(),
            "noreply@*".to_string(),
            "Boss@Example.com".to_string(),
        ];
        assert_eq!(
            exclusion_of("ann@HR.example.com", &list),
            Some("@hr.example.com")
        );
        assert_eq!(
            exclusion_of("noreply@shop.example", &list),
            Some("noreply@*")
        );
        assert_eq!(
            exclusion_of("boss@example.com", &list),
            Some("Boss@Example.com")
        );
        assert_eq!(exclusion_of("ann@example.com", &list), None);
        assert_eq!(exclusion_of("x@nothr.example.com", &list[..1]), None);
        assert!(glob("*@lists.*", "all@lists.example.org"));
        assert!(!glob("a*b*c", "acb"));
    }

    fn role() -> impl Strategy<Value = FolderRole> {
        prop_oneof![
            Just(FolderRole::Inbox),
            Just(FolderRole::Sent),
            Just(FolderRole::Drafts),
            Just(FolderRole::Tracked { regarding: None }),
            Just(FolderRole::Tracked {
                regarding: Some(acc())
            }),
        ]
    }

    proptest! {
        /// Invariants over every input: drafts are never tracked (R-E6);
        /// the agent never pushes an untrack or regarding of an item that
        /// is not tracked; a decision is stable: planning it again from the
        /// state it leads to (the agent's own marker written) pushes nothing.
        #[test]
        fn plans_are_safe_and_settle(
            role in role(),
            marked: bool,
            draft: bool,
            link in proptest::option::of(0u8..3),
            kw in proptest::option::of(Just(acc_keyword())),
            outdated: bool,
            known_regarding in proptest::option::of(Just(acc())),
            arrived: bool,
        ) {
            let outdated_keyword = outdated && kw.is_some();
            let f = Facts { role: role.clone(), marked, draft, regarding_keyword: kw, outdated_keyword, known: link.map(|link| Known { link }), known_regarding, arrived };
            let Step::Decided(d) = plan_message(&f) else {
                prop_assert!(role == FolderRole::Inbox && !marked && link.is_none());
                return Ok(());
            };
            let is_draft = role == FolderRole::Drafts || draft;
            if is_draft {
                prop_assert!(!d.ops.iter().any(|o| matches!(o, MailOp::Track { .. })), "a draft was tracked");
            }
            if link != Some(2) {
                prop_assert!(!d.ops.iter().any(|o| matches!(o, MailOp::Untrack | MailOp::SetRegarding(_))), "pushed for an untracked message");
            }
            // After the decision: the marker as the ops leave it, the link
            // as the answer leaves it (tracked when a track succeeded).
            let marked_after = marked || d.ops.iter().any(|o| matches!(o, MailOp::Mark { .. }));
            let tracked = d.ops.iter().any(|o| matches!(o, MailOp::Track { .. }));
            let link_after = if tracked { 2 } else { d.link };
            // A track answer makes the keyword show the CRM's regarding.
            let sent = d.ops.iter().find_map(|o| match o {
                MailOp::Track { regarding } => Some(regarding.clone()),
                _ => None,
            });
            let set = d.ops.iter().find_map(|o| match o {
                MailOp::SetRegarding(r) => Some(r.clone()),
                _ => None,
            });
            let (keyword_after, known_after) = match (sent, set) {
                (Some(r), _) => (r.clone(), r),
                // A set_regarding answer: the CRM holds the keyword's value.
                (None, Some(r)) => (f.regarding_keyword.clone(), r),
                (None, None) => (f.regarding_keyword.clone(), f.known_regarding.clone()),
            };
            // A track answer or a ShowRegarding writes the current form.
            let rewritten = tracked || d.ops.iter().any(|o| matches!(o, MailOp::ShowRegarding(_)));
            let again = Facts {
                marked: marked_after,
                outdated_keyword: f.outdated_keyword && !rewritten,
                known: Some(Known { link: link_after }),
                regarding_keyword: keyword_after,
                known_regarding: known_after,
                ..f
            };
            let Step::Decided(d2) = plan_message(&again) else {
                return Err(TestCaseError::fail("correlation asked for a known message"));
            };
            prop_assert!(d2.ops.is_empty(), "{again:?} -> {d2:?}");
        }
    }
}
