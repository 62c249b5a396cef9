//! The list page of each entity set (R-W4): search (the API's `q`),
//! owner and state filters, sortable columns, keyset pages, "New".

use std::collections::HashMap;

use askama::Template;
use axum::extract::{OriginalUri, Query, State};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crmsync_core::field::FieldKind;
use crmsync_core::{EntitySet, Record};

use super::forms::{display_name, form_fields};
use super::layout::{label, set_title, url_encode, Layout};
use super::pages::page;
use super::session::WebUser;
use crate::api::records::search_text;
use crate::store::{sort_value, ListOrder, ListQuery};
use crate::AppState;

pub const PAGE_SIZE: i64 = 50;

/// The field a record's name comes from, for sorting by the name column.
pub fn name_field(set: EntitySet) -> Option<&'static str> {
    ["name", "title", "subject", "last_name"]
        .into_iter()
        .find(|f| set.field(f).is_some())
}

/// The list's other columns: up to three text-like fields after the name.
pub fn columns(set: EntitySet) -> Vec<&'static str> {
    const IN_NAME: &[&str] = &["name", "title", "subject", "first_name", "last_name"];
    form_fields(set)
        .filter(|f| {
            matches!(
                f.kind,
                FieldKind::Text
                    | FieldKind::Email
                    | FieldKind::Enum(_)
                    | FieldKind::Date
                    | FieldKind::DateTime
            ) && !IN_NAME.contains(&f.name)
                && !f.name.ends_with('2')
        })
        .map(|f| f.name)
        .take(3)
        .collect()
}

/// The columns a list can be sorted by: the name, then [`columns`]. Each
/// has an index (`crate::list_indexes`).
pub fn sortable_fields(set: EntitySet) -> Vec<&'static str> {
    name_field(set).into_iter().chain(columns(set)).collect()
}

pub struct Column {
    pub label: String,
    pub href: String,
    /// `aria-sort` when the list is sorted by it.
    pub sorted: Option<&'static str>,
}

pub struct Row {
    pub href: String,
    pub name: String,
    pub cells: Vec<String>,
    pub state: String,
}

#[derive(Template)]
#[template(path = "list.html")]
pub struct ListPage {
    layout: Layout,
    set: String,
    singular: &'static str,
    q: String,
    mine: bool,
    state: String,
    states: Vec<(String, String)>,
    sort: String,
    dir: String,
    name_column: Column,
    columns: Vec<Column>,
    rows: Vec<Row>,
    previous: Option<String>,
    next: Option<String>,
    error: Option<String>,
}

page!(ListPage);

fn encode_cursor(value: &str, version: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{version}:{value}"))
}

fn decode_cursor(s: &str) -> Option<(String, i64)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
    let (version, value) = text.split_once(':')?;
    Some((value.to_string(), version.parse().ok()?))
}

/// The list's state of filters, sort and page, as links write it.
struct View<'a> {
    set: EntitySet,
    q: &'a str,
    mine: bool,
    state: &'a str,
    sort: Option<&'static str>,
    descending: bool,
}

impl View<'_> {
    fn href(&self, sort: Option<&str>, descending: bool, page: Option<(&str, &str)>) -> String {
        let mut params = Vec::new();
        if !self.q.is_empty() {
            params.push(format!("q={}", url_encode(self.q)));
        }
        if self.mine {
            params.push("owner=mine".into());
        }
        if !self.state.is_empty() {
            params.push(format!("state={}", url_encode(self.state)));
        }
        if let Some(s) = sort {
            params.push(format!("sort={s}"));
            params.push(format!("dir={}", if descending { "desc" } else { "asc" }));
        }
        if let Some((k, v)) = page {
            params.push(format!("{k}={v}"));
        }
        if params.is_empty() {
            format!("/{}", self.set)
        } else {
            format!("/{}?{}", self.set, params.join("&"))
        }
    }

    fn column(&self, field: &'static str, title: String) -> Column {
        let sorted_here = self.sort == Some(field);
        // A click on the sorted column turns its direction.
        let descending = sorted_here && !self.descending;
        Column {
            label: title,
            href: self.href(Some(field), descending, None),
            sorted: sorted_here.then_some(if self.descending {
                "descending"
            } else {
                "ascending"
            }),
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    user: WebUser,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let set = super::set_of(&uri);
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let sort = sortable_fields(set).into_iter().find(|f| *f == get("sort"));
    let descending = match sort {
        Some(_) => get("dir") == "desc",
        None => true,
    };
    let state_filter = set.states().iter().copied().find(|s| *s == get("state"));
    let view = View {
        set,
        q: get("q"),
        mine: get("owner") == "mine",
        state: state_filter.unwrap_or(""),
        sort,
        descending,
    };
    let mut error = None;
    let text = search_text(Some(view.q)).unwrap_or_else(|e| {
        error = Some(e.message);
        None
    });
    // Going back is reading the other way from the first row shown.
    let (backwards, position) = match (get("before"), get("after")) {
        (b, _) if !b.is_empty() => (true, decode_cursor(b)),
        (_, a) if !a.is_empty() => (false, decode_cursor(a)),
        _ => (false, None),
    };
    let query = ListQuery {
        owner: view.mine.then_some(user.caller.user_id),
        text,
        state: state_filter.map(str::to_string),
        limit: PAGE_SIZE + 1,
        order: Some(ListOrder {
            field: sort,
            descending: descending != backwards,
            after: position.clone(),
        }),
        ..ListQuery::default()
    };
    let mut records = match state.store.list(set, &query).await {
        Ok(r) => r,
        Err(e) => return super::server_error(e.into()),
    };
    let more = records.len() as i64 > PAGE_SIZE;
    records.truncate(PAGE_SIZE as usize);
    if backwards {
        records.reverse();
    }
    let cursor = |r: &Record| {
        encode_cursor(
            &sort.map(|f| sort_value(r, f)).unwrap_or_default(),
            r.version,
        )
    };
    let (has_previous, has_next) = if backwards {
        (more, true)
    } else {
        (position.is_some(), more)
    };
    let previous = records
        .first()
        .filter(|_| has_previous)
        .map(|r| view.href(sort, descending, Some(("before", &cursor(r)))));
    let next = records
        .last()
        .filter(|_| has_next)
        .map(|r| view.href(sort, descending, Some(("after", &cursor(r)))));
    let cols = columns(set);
    let rows = records
        .iter()
        .map(|r| Row {
            href: format!("/{set}/{}", r.id),
            name: display_name(r),
            cells: cols
                .iter()
                .map(|c| {
                    let kind = set.field(c).map_or(FieldKind::Text, |d| d.kind);
                    r.fields
                        .get(*c)
                        .map(|v| super::forms::value_text(kind, v))
                        .unwrap_or_default()
                })
                .collect(),
            state: label(&r.state),
        })
        .collect();
    let name_column = match name_field(set) {
        Some(f) => view.column(f, "Name".into()),
        None => Column {
            label: "Name".into(),
            href: view.href(None, true, None),
            sorted: None,
        },
    };
    ListPage {
        layout: Layout::new(set_title(set), &user, &format!("/{set}")),
        set: set.to_string(),
        singular: super::layout::set_singular(set),
        q: view.q.to_string(),
        mine: view.mine,
        state: view.state.to_string(),
        states: set
            .states()
            .iter()
            .map(|s| (s.to_string(), label(s)))
            .collect(),
        sort: sort.unwrap_or("").to_string(),
        dir: if descending { "desc" } else { "asc" }.into(),
        columns: cols.iter().map(|c| view.column(c, label(c))).collect(),
        name_column,
        rows,
        previous,
        next,
        error,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(
            decode_cursor(&encode_cursor("a:b", 7)),
            Some(("a:b".into(), 7))
        );
        assert_eq!(decode_cursor("!!"), None);
    }

    #[test]
    fn every_web_set_has_a_name_column_or_columns() {
        for set in super::super::WEB_SETS {
            assert!(
                name_field(*set).is_some() || !columns(*set).is_empty(),
                "{set}"
            );
        }
    }
}
