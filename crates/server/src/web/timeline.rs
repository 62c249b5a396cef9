//! A record's timeline (R-W5): the appointments, tasks, phone calls,
//! letters, faxes and emails regarding it (and those where it is a
//! resolved attendee or party, e.g. the emails a contact took part in),
//! newest first, filterable by type, a page at a time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use uuid::Uuid;

use crmsync_core::{EntitySet, Record};

use super::forms::display_name;
use super::layout::{set_singular, set_title};
use crate::store::Store;

pub const PAGE_SIZE: i64 = 25;

pub const TIMELINE_SETS: &[EntitySet] = &[
    EntitySet::Appointments,
    EntitySet::Serviceappointments,
    EntitySet::Tasks,
    EntitySet::Phonecalls,
    EntitySet::Letters,
    EntitySet::Faxes,
    EntitySet::Emails,
];

pub struct Entry {
    pub kind: &'static str,
    pub href: String,
    pub title: String,
    pub when: String,
    pub state: String,
}

pub struct Timeline {
    pub entries: Vec<Entry>,
    /// `(value, text, selected)` of the type filter.
    pub types: Vec<(String, &'static str, bool)>,
    pub older: Option<String>,
    pub paged: bool,
}

/// When an activity happens, as the timeline shows it.
fn when(r: &Record) -> String {
    ["sent_at", "start", "due"]
        .iter()
        .find_map(|k| r.fields.get(*k).and_then(Value::as_str))
        .unwrap_or(&r.created_at)
        .to_string()
}

fn encode(r: &Record) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", r.created_at, r.id))
}

fn decode(s: &str) -> Option<(String, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((at.to_string(), Uuid::parse_str(id).ok()?))
}

pub async fn load(
    store: &Store,
    target: &Record,
    type_filter: &str,
    cursor: &str,
) -> Result<Timeline, sqlx::Error> {
    let only = TIMELINE_SETS
        .iter()
        .copied()
        .find(|s| s.as_str() == type_filter);
    let sets: Vec<EntitySet> = only.map_or_else(|| TIMELINE_SETS.to_vec(), |s| vec![s]);
    let after = decode(cursor);
    let paged = after.is_some();
    let mut records = store
        .timeline(target.id, &sets, after, PAGE_SIZE + 1)
        .await?;
    let more = records.len() as i64 > PAGE_SIZE;
    records.truncate(PAGE_SIZE as usize);
    let base = format!("/{}/{}", target.set, target.id);
    let older = records.last().filter(|_| more).map(|r| {
        let t = only.map(|s| format!("type={s}&")).unwrap_or_default();
        format!("{base}?{t}cursor={}#timeline", encode(r))
    });
    let mut types = vec![(String::new(), "All", only.is_none())];
    types.extend(
        TIMELINE_SETS
            .iter()
            .map(|s| (s.to_string(), set_title(*s), only == Some(*s))),
    );
    Ok(Timeline {
        entries: records
            .iter()
            .map(|r| Entry {
                kind: set_singular(r.set),
                href: format!("/{}/{}", r.set, r.id),
                title: display_name(r),
                when: when(r),
                state: super::layout::label(&r.state),
            })
            .collect(),
        types,
        older,
        paged,
    })
}
