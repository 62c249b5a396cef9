//! Sync filters in SQL (R-S6): a [`Condition`] compiled into one boolean
//! expression over the `records` table, so that a full scan ("which records
//! of this set does the user's filter select?") runs in the database
//! instead of loading every record.
//!
//! The expression reproduces [`Condition::matches`] exactly, on SQLite and
//! on PostgreSQL, by following the in-memory comparison value by value:
//!
//! - The common columns `owner_id`, `state`, `created_at` and `modified_at`
//!   are read from their columns (always present, always text); every
//!   other field is read from the JSON in `data`.
//! - The operand is turned into its JSON target exactly as `matches` does
//!   (`@me` is the user's id for `owner_id` and the user's address
//!   otherwise, `@now±N` is [`EvalContext::now_text`]). Its JSON type
//!   decides which comparison is made: a number compares numerically (both
//!   sides as double precision, as `as_f64` does), a string as text, a
//!   boolean as a boolean; any other target never compares.
//! - Every comparison on `data` is guarded by the JSON type of the stored
//!   value (`json_type` / `jsonb_typeof`): a missing field or a value of
//!   another type makes it false, never NULL, so `NOT` inverts it as in
//!   memory. Only `is_null` (the key is absent) is true for a missing field.
//! - Text compares byte-wise in both databases (ordering comparisons use
//!   `COLLATE "C"` on PostgreSQL, SQLite's default is already binary).
//! - Email fields compare ASCII-case-insensitively: the target is folded
//!   with `to_ascii_lowercase` before binding and the stored side with
//!   `lower()`, which folds ASCII only in SQLite and, under the "C"
//!   collation, in PostgreSQL too (under a database collation such as
//!   `C.UTF-8` or `en_US.UTF-8` it would also fold `É`, which
//!   `eq_ignore_ascii_case` does not).
//! - `contains` is a case-sensitive substring test on a stored string and
//!   an ASCII-case-insensitive match of any element's address (a string
//!   element, else its `email`, else its `address` key) on a stored list.
//!
//! Sync filters only: offline filters (R-O1) may also name
//! `regarding.owner_id`, which needs the regarding record; the offline
//! change feed evaluates them in memory over the page it reads
//! (`crate::offline::feed`), never here.
//!
//! Every value, and every JSON key, is a bound parameter (`$N`, which both
//! databases accept); only fixed fragments and column names are spliced.
//!
//! Limit: PostgreSQL cannot read JSON text holding a NUL character
//! (`\u0000`, which long-text fields accept): `data::jsonb` fails, so a
//! filter over a set holding such a record returns an error there rather
//! than a wrong answer.

use serde_json::{json, Value};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Row};
use uuid::Uuid;

use crmsync_core::field::FieldKind;
use crmsync_core::filter::{Condition, EvalContext, Op, Operand};
use crmsync_core::EntitySet;

use crate::db::DbKind;
use crate::store::Store;

/// A value bound to a compiled condition's placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Text(String),
    Int(i64),
    Float(f64),
}

/// Compiles a condition into a boolean SQL expression over the `records`
/// table (columns unqualified), with placeholders numbered from
/// `first_param`; returns the SQL and the values to bind in order (the
/// value for `$first_param` first, each placeholder used at least once).
pub fn compile(
    cond: &Condition,
    set: EntitySet,
    ctx: &EvalContext,
    kind: DbKind,
    first_param: usize,
) -> (String, Vec<SqlValue>) {
    let mut c = Compiler {
        set,
        ctx,
        kind,
        next: first_param,
        values: Vec::new(),
    };
    let sql = c.condition(cond);
    (sql, c.values)
}

/// Binds values to an Any query in order.
pub fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    values: Vec<SqlValue>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for v in values {
        q = match v {
            SqlValue::Text(s) => q.bind(s),
            SqlValue::Int(i) => q.bind(i),
            SqlValue::Float(f) => q.bind(f),
        };
    }
    q
}

/// Ids (with versions) of the live records of `set` matching any of the
/// conditions, in version order, at most `limit` after version `after`.
/// Large results come in pages: call again with the last version returned.
/// No conditions match nothing.
pub async fn matching_ids(
    store: &Store,
    set: EntitySet,
    conds: &[&Condition],
    ctx: &EvalContext,
    after: i64,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let mut conn = store.pool.acquire().await?;
    matching_ids_in(&mut conn, store.kind, set, conds, ctx, after, limit).await
}

/// [`matching_ids`] on a connection the caller holds (prepare's
/// transaction: taking a second pooled connection while holding one
/// deadlocks when many clients prepare at once).
pub async fn matching_ids_in(
    conn: &mut AnyConnection,
    kind: DbKind,
    set: EntitySet,
    conds: &[&Condition],
    ctx: &EvalContext,
    after: i64,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    if conds.is_empty() || limit <= 0 {
        return Ok(vec![]);
    }
    // $1 set, $2 after, $3 limit; the conditions' parameters follow.
    let mut next = 4;
    let mut parts = Vec::with_capacity(conds.len());
    let mut values = Vec::new();
    for cond in conds {
        let (sql, v) = compile(cond, set, ctx, kind, next);
        next += v.len();
        parts.push(sql);
        values.extend(v);
    }
    let sql = format!(
        "SELECT id, version FROM records WHERE entity_set = $1 AND deleted_at IS NULL AND version > $2 \
         AND ({}) ORDER BY version LIMIT $3",
        parts.join(" OR ")
    );
    let q = sqlx::query(&sql).bind(set.as_str()).bind(after).bind(limit);
    let rows = bind_all(q, values).fetch_all(conn).await?;
    rows.iter().map(id_and_version).collect()
}

fn id_and_version(row: &AnyRow) -> Result<(Uuid, i64), sqlx::Error> {
    let id: String = row.try_get("id")?;
    let id = Uuid::parse_str(&id).map_err(|_| {
        sqlx::Error::Decode(
            "stored id is not valid; the database was changed outside crmsync".into(),
        )
    })?;
    Ok((id, row.try_get("version")?))
}

/// The JSON type a target compares as (`compare` in crmsync-core's filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Num,
    Bool,
}

/// A target's type and bound value, or None when it never compares
/// (null, list, object). Email targets are folded here, once.
fn scalar(v: &Value, email: bool) -> Option<(Ty, SqlValue)> {
    match v {
        Value::String(s) if email => Some((Ty::Str, SqlValue::Text(s.to_ascii_lowercase()))),
        Value::String(s) => Some((Ty::Str, SqlValue::Text(s.clone()))),
        Value::Number(n) => n.as_f64().map(|f| (Ty::Num, SqlValue::Float(f))),
        Value::Bool(b) => Some((Ty::Bool, SqlValue::Int(i64::from(*b)))),
        _ => None,
    }
}

/// Where a field's value lives.
enum Place<'f> {
    /// A common column: always present, always text.
    Column(&'static str),
    /// A key of `data`; `param` is its bound JSON path once used.
    Data { key: &'f str, param: Option<String> },
}

fn place(field: &str) -> Place<'_> {
    match field {
        "owner_id" => Place::Column("owner_id"),
        "state" => Place::Column("state"),
        "created_at" => Place::Column("created_at"),
        "modified_at" => Place::Column("modified_at"),
        key => Place::Data { key, param: None },
    }
}

fn sql_op(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        // Not comparison operators; compare() only sees the six above.
        Op::In | Op::Contains | Op::IsNull | Op::NotNull => "=",
    }
}

const FALSE: &str = "FALSE";
const TRUE: &str = "TRUE";

struct Compiler<'a> {
    set: EntitySet,
    ctx: &'a EvalContext,
    kind: DbKind,
    next: usize,
    values: Vec<SqlValue>,
}

impl Compiler<'_> {
    fn pg(&self) -> bool {
        self.kind == DbKind::Postgres
    }

    fn bind(&mut self, v: SqlValue) -> String {
        let p = format!("${}", self.next);
        self.next += 1;
        self.values.push(v);
        p
    }

    fn condition(&mut self, cond: &Condition) -> String {
        match cond {
            Condition::All(items) => self.junction(items, " AND ", TRUE),
            Condition::Any(items) => self.junction(items, " OR ", FALSE),
            Condition::Not(inner) => format!("(NOT {})", self.condition(inner)),
            Condition::Compare { field, op, value } => self.compare(field, *op, value),
        }
    }

    fn junction(&mut self, items: &[Condition], with: &str, empty: &str) -> String {
        if items.is_empty() {
            return empty.to_string();
        }
        let parts: Vec<String> = items.iter().map(|c| self.condition(c)).collect();
        format!("({})", parts.join(with))
    }

    fn compare(&mut self, field: &str, op: Op, value: &Operand) -> String {
        let email = self.set.field(field).map(|f| f.kind) == Some(FieldKind::Email);
        let target = match value {
            Operand::Me if field == "owner_id" => json!(self.ctx.me),
            Operand::Me => json!(self.ctx.me_email),
            Operand::Now(offset) => json!(self.ctx.now_text(field, *offset)),
            Operand::Literal(v) => v.clone(),
            Operand::List(_) | Operand::None => Value::Null,
        };
        let mut at = place(field);
        match op {
            Op::IsNull | Op::NotNull => {
                let null = op == Op::IsNull;
                match at {
                    Place::Column(_) if null => FALSE.into(),
                    Place::Column(_) => TRUE.into(),
                    Place::Data { .. } => {
                        let node = self.node(&mut at);
                        let is = if null { "IS NULL" } else { "IS NOT NULL" };
                        format!("({node} {is})")
                    }
                }
            }
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let Some((ty, v)) = scalar(&target, email) else {
                    return FALSE.into();
                };
                let Some((guard, acc)) = self.typed(&mut at, ty, email) else {
                    return FALSE.into();
                };
                let ordering = !matches!(op, Op::Eq | Op::Ne);
                let acc = if ordering && ty == Ty::Str && self.pg() {
                    format!("{acc} COLLATE \"C\"")
                } else {
                    acc
                };
                let p = self.bind(v);
                guarded(guard, format!("{acc} {} {p}", sql_op(op)))
            }
            Op::In => match value {
                Operand::List(items) => self.in_list(&mut at, email, items),
                _ => FALSE.into(),
            },
            Op::Contains => match target.as_str() {
                Some(needle) => self.contains(&mut at, needle),
                None => FALSE.into(),
            },
        }
    }

    /// The bound JSON path (SQLite) or key (PostgreSQL) of a data field.
    fn path(&mut self, at: &mut Place) -> String {
        match at {
            Place::Column(c) => c.to_string(),
            Place::Data { key, param } => {
                if param.is_none() {
                    let path = if self.kind == DbKind::Postgres {
                        key.to_string()
                    } else {
                        format!("$.\"{key}\"")
                    };
                    *param = Some(self.bind(SqlValue::Text(path)));
                }
                param.clone().expect("bound above")
            }
        }
    }

    /// An expression that is NULL exactly when the data field is absent:
    /// its JSON type (SQLite) or JSON node (PostgreSQL).
    fn node(&mut self, at: &mut Place) -> String {
        let p = self.path(at);
        if self.pg() {
            format!("(data::jsonb -> {p})")
        } else {
            format!("json_type(data, {p})")
        }
    }

    /// The guard (None: always true) under which a place holds a value of
    /// type `ty`, and the expression of that value; None when it never can.
    fn typed(&mut self, at: &mut Place, ty: Ty, email: bool) -> Option<(Option<String>, String)> {
        let pg = self.pg();
        let lower = |s: String| match (email, pg) {
            (false, _) => s,
            (true, false) => format!("lower({s})"),
            (true, true) => format!("lower({s} COLLATE \"C\")"),
        };
        if let Place::Column(c) = at {
            return (ty == Ty::Str).then(|| (None, lower(c.to_string())));
        }
        let p = self.path(at);
        let (guard, acc) = match (pg, ty) {
            (false, Ty::Str) => (
                format!("json_type(data, {p}) = 'text'"),
                lower(format!("json_extract(data, {p})")),
            ),
            (false, Ty::Num) => (
                format!("json_type(data, {p}) IN ('integer', 'real')"),
                format!("CAST(json_extract(data, {p}) AS REAL)"),
            ),
            (false, Ty::Bool) => (
                format!("json_type(data, {p}) IN ('true', 'false')"),
                format!("(CASE json_type(data, {p}) WHEN 'true' THEN 1 ELSE 0 END)"),
            ),
            (true, Ty::Str) => (
                format!("jsonb_typeof(data::jsonb -> {p}) = 'string'"),
                lower(format!("(data::jsonb ->> {p})")),
            ),
            (true, Ty::Num) => (
                format!("jsonb_typeof(data::jsonb -> {p}) = 'number'"),
                format!("(data::jsonb ->> {p})::float8"),
            ),
            (true, Ty::Bool) => (
                format!("jsonb_typeof(data::jsonb -> {p}) = 'boolean'"),
                format!("(CASE data::jsonb ->> {p} WHEN 'true' THEN 1 ELSE 0 END)"),
            ),
        };
        Some((Some(guard), acc))
    }

    /// `in`: equal to any item; items of each JSON type form one `IN (..)`.
    fn in_list(&mut self, at: &mut Place, email: bool, items: &[Value]) -> String {
        let mut parts = Vec::new();
        for ty in [Ty::Str, Ty::Num, Ty::Bool] {
            let values: Vec<SqlValue> = items
                .iter()
                .filter_map(|v| scalar(v, email))
                .filter(|(t, _)| *t == ty)
                .map(|(_, v)| v)
                .collect();
            if values.is_empty() {
                continue;
            }
            let Some((guard, acc)) = self.typed(at, ty, email) else {
                continue;
            };
            let params: Vec<String> = values.into_iter().map(|v| self.bind(v)).collect();
            parts.push(guarded(guard, format!("{acc} IN ({})", params.join(", "))));
        }
        match parts.len() {
            0 => FALSE.into(),
            1 => parts.remove(0),
            _ => format!("({})", parts.join(" OR ")),
        }
    }

    /// `contains`: a substring of a stored string (case-sensitive), or the
    /// address of an element of a stored list (ASCII case-insensitive).
    fn contains(&mut self, at: &mut Place, needle: &str) -> String {
        let pg = self.pg();
        let find = if pg { "strpos" } else { "instr" };
        if let Place::Column(c) = at {
            let n = self.bind(SqlValue::Text(needle.to_string()));
            return format!("({find}({c}, {n}) > 0)");
        }
        let p = self.path(at);
        let n = self.bind(SqlValue::Text(needle.to_string()));
        let folded = needle.to_ascii_lowercase();
        let l = if folded == needle {
            n.clone()
        } else {
            self.bind(SqlValue::Text(folded))
        };
        if pg {
            format!(
                "(CASE jsonb_typeof(data::jsonb -> {p}) \
                 WHEN 'string' THEN strpos(data::jsonb ->> {p}, {n}) > 0 \
                 WHEN 'array' THEN EXISTS (SELECT 1 FROM jsonb_array_elements(\
                 CASE WHEN jsonb_typeof(data::jsonb -> {p}) = 'array' THEN data::jsonb -> {p} END) AS e(v) \
                 WHERE lower((CASE jsonb_typeof(e.v) WHEN 'string' THEN e.v #>> '{{}}' \
                 WHEN 'object' THEN COALESCE(\
                 CASE WHEN jsonb_typeof(e.v -> 'email') = 'string' THEN e.v ->> 'email' END, \
                 CASE WHEN jsonb_typeof(e.v -> 'address') = 'string' THEN e.v ->> 'address' END) \
                 END) COLLATE \"C\") = {l}) \
                 ELSE FALSE END)"
            )
        } else {
            format!(
                "(CASE json_type(data, {p}) \
                 WHEN 'text' THEN instr(json_extract(data, {p}), {n}) > 0 \
                 WHEN 'array' THEN EXISTS (SELECT 1 FROM json_each(data, {p}) AS e \
                 WHERE lower(CASE e.type WHEN 'text' THEN e.value \
                 WHEN 'object' THEN COALESCE(\
                 CASE WHEN json_type(e.value, '$.email') = 'text' THEN json_extract(e.value, '$.email') END, \
                 CASE WHEN json_type(e.value, '$.address') = 'text' THEN json_extract(e.value, '$.address') END) \
                 END) = {l}) \
                 ELSE FALSE END)"
            )
        }
    }
}

/// `expr` where `guard` holds, false elsewhere (never NULL).
fn guarded(guard: Option<String>, expr: String) -> String {
    match guard {
        Some(g) => format!("(CASE WHEN {g} THEN {expr} ELSE FALSE END)"),
        None => format!("({expr})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn ctx() -> EvalContext {
        EvalContext {
            me: Uuid::parse_str("11111111-2222-3333-4444-555555555555").unwrap(),
            me_email: "Me@Example.com".into(),
            now: crmsync_core::time::parse_datetime("2026-11-25T00:00:00Z").unwrap(),
            regarding_owners: Default::default(),
        }
    }

    fn parse(set: EntitySet, v: Value) -> Condition {
        Condition::parse(set, &v).unwrap()
    }

    fn text(s: &str) -> SqlValue {
        SqlValue::Text(s.into())
    }

    /// The `$N` placeholders of a statement.
    fn placeholders(sql: &str) -> BTreeSet<usize> {
        let b = sql.as_bytes();
        let mut out = BTreeSet::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'$' {
                let digits: String = sql[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    out.insert(digits.parse().unwrap());
                }
                i += 1 + digits.len();
            } else {
                i += 1;
            }
        }
        out
    }

    /// Compiles for both databases and checks that the placeholders are
    /// exactly first..first+len, each used.
    fn both(set: EntitySet, v: Value, first: usize) -> [(String, Vec<SqlValue>); 2] {
        let cond = parse(set, v);
        [DbKind::Sqlite, DbKind::Postgres].map(|kind| {
            let (sql, values) = compile(&cond, set, &ctx(), kind, first);
            let expected: BTreeSet<usize> = (first..first + values.len()).collect();
            assert_eq!(placeholders(&sql), expected, "{sql}");
            (sql, values)
        })
    }

    #[test]
    fn owner_is_a_column_and_me_is_the_user_id() {
        let [(lite, lv), (pg, pv)] = both(
            EntitySet::Contacts,
            json!({"field": "owner_id", "op": "eq", "value": "@me"}),
            1,
        );
        assert_eq!(lite, "(owner_id = $1)");
        assert_eq!(pg, "(owner_id = $1)");
        assert_eq!(lv, vec![text("11111111-2222-3333-4444-555555555555")]);
        assert_eq!(lv, pv);
    }

    #[test]
    fn data_fields_bind_their_path_and_guard_the_json_type() {
        let [(lite, lv), (pg, pv)] = both(
            EntitySet::Contacts,
            json!({"field": "city", "op": "eq", "value": "Berlin"}),
            4,
        );
        assert_eq!(
            lite,
            "(CASE WHEN json_type(data, $4) = 'text' THEN json_extract(data, $4) = $5 ELSE FALSE END)"
        );
        assert_eq!(lv, vec![text("$.\"city\""), text("Berlin")]);
        assert_eq!(
            pg,
            "(CASE WHEN jsonb_typeof(data::jsonb -> $4) = 'string' THEN (data::jsonb ->> $4) = $5 ELSE FALSE END)"
        );
        assert_eq!(pv, vec![text("city"), text("Berlin")]);
    }

    #[test]
    fn emails_fold_ascii_case_on_both_sides() {
        let [(lite, lv), (pg, pv)] = both(
            EntitySet::Contacts,
            json!({"field": "email", "op": "in", "value": ["Ann@X.org", "bob@y.org"]}),
            1,
        );
        assert!(
            lite.contains("lower(json_extract(data, $1)) IN ($2, $3)"),
            "{lite}"
        );
        assert!(
            pg.contains("lower((data::jsonb ->> $1) COLLATE \"C\") IN ($2, $3)"),
            "{pg}"
        );
        assert_eq!(lv[1..], [text("ann@x.org"), text("bob@y.org")]);
        assert_eq!(pv[1..], lv[1..]);
        // @me with eq is the user's address, folded.
        let [(_, lv), _] = both(
            EntitySet::Contacts,
            json!({"field": "email", "op": "eq", "value": "@me"}),
            1,
        );
        assert_eq!(lv[1], text("me@example.com"));
    }

    #[test]
    fn ordering_is_byte_wise_and_now_is_text() {
        let [(lite, lv), (pg, pv)] = both(
            EntitySet::Contacts,
            json!({"field": "modified_at", "op": "ge", "value": "@now-30d"}),
            1,
        );
        assert_eq!(lite, "(modified_at >= $1)");
        assert_eq!(pg, "(modified_at COLLATE \"C\" >= $1)");
        assert_eq!(lv, vec![text("2026-10-26T00:00:00.000000Z")]);
        assert_eq!(lv, pv);
        let [(_, lv), _] = both(
            EntitySet::Appointments,
            json!({"field": "start", "op": "lt", "value": "@now+1d"}),
            1,
        );
        assert_eq!(lv[1], text("2026-11-26T00:00:00Z"));
    }

    #[test]
    fn numbers_and_booleans() {
        let [(lite, lv), (pg, pv)] = both(
            EntitySet::Tasks,
            json!({"field": "percent_complete", "op": "gt", "value": 50}),
            1,
        );
        assert!(
            lite.contains("CAST(json_extract(data, $1) AS REAL) > $2"),
            "{lite}"
        );
        assert!(pg.contains("(data::jsonb ->> $1)::float8 > $2"), "{pg}");
        assert_eq!(lv[1], SqlValue::Float(50.0));
        assert_eq!(pv[1], SqlValue::Float(50.0));
        let [(lite, lv), (pg, _)] = both(
            EntitySet::Appointments,
            json!({"field": "all_day", "op": "ne", "value": true}),
            1,
        );
        assert!(lite.contains("IN ('true', 'false')"), "{lite}");
        assert!(pg.contains("= 'boolean'"), "{pg}");
        assert_eq!(lv[1], SqlValue::Int(1));
    }

    #[test]
    fn contains_on_text_and_on_lists() {
        let [(lite, lv), (pg, _)] = both(
            EntitySet::Contacts,
            json!({"field": "city", "op": "contains", "value": "erl"}),
            1,
        );
        assert!(
            lite.contains("instr(json_extract(data, $1), $2) > 0"),
            "{lite}"
        );
        assert!(pg.contains("strpos(data::jsonb ->> $1, $2) > 0"), "{pg}");
        assert_eq!(lv.len(), 2, "an already folded needle is bound once");
        let [(lite, lv), (pg, pv)] = both(
            EntitySet::Appointments,
            json!({"field": "attendees", "op": "contains", "value": "@me"}),
            7,
        );
        assert!(lite.contains("json_each(data, $7)"), "{lite}");
        assert!(lite.contains("END) = $9)"), "{lite}");
        assert!(pg.contains("jsonb_array_elements("), "{pg}");
        assert_eq!(
            lv,
            vec![
                text("$.\"attendees\""),
                text("Me@Example.com"),
                text("me@example.com")
            ]
        );
        assert_eq!(pv[1..], lv[1..]);
    }

    #[test]
    fn null_tests_look_at_the_key_only() {
        let [(lite, _), (pg, _)] = both(
            EntitySet::Contacts,
            json!({"not": {"field": "email", "op": "is_null"}}),
            1,
        );
        assert_eq!(lite, "(NOT (json_type(data, $1) IS NULL))");
        assert_eq!(pg, "(NOT ((data::jsonb -> $1) IS NULL))");
    }

    #[test]
    fn comparisons_that_never_hold_are_constants() {
        let [(lite, lv), _] = both(
            EntitySet::Contacts,
            json!({"field": "state", "op": "in", "value": []}),
            1,
        );
        assert_eq!((lite.as_str(), lv.len()), ("FALSE", 0));
        // Programmatic trees: empty junctions, a column that is never null.
        let set = EntitySet::Contacts;
        let c = Condition::All(vec![
            Condition::Any(vec![]),
            Condition::All(vec![]),
            Condition::Compare {
                field: "state".into(),
                op: Op::IsNull,
                value: Operand::None,
            },
            Condition::Compare {
                field: "state".into(),
                op: Op::Eq,
                value: Operand::Literal(json!(3)),
            },
        ]);
        let (sql, values) = compile(&c, set, &ctx(), DbKind::Sqlite, 1);
        assert_eq!(sql, "(FALSE AND TRUE AND FALSE AND FALSE)");
        assert!(values.is_empty());
    }

    #[test]
    fn nested_trees_number_parameters_in_order() {
        let [(lite, lv), (pg, pv)] = both(
            EntitySet::Appointments,
            json!({"all": [
                {"field": "owner_id", "op": "eq", "value": "@me"},
                {"any": [
                    {"field": "state", "op": "in", "value": ["open", "scheduled"]},
                    {"not": {"field": "organizer", "op": "eq", "value": "@me"}}
                ]}
            ]}),
            3,
        );
        assert!(
            lite.starts_with("((owner_id = $3) AND ((state IN ($4, $5)) OR (NOT "),
            "{lite}"
        );
        assert!(
            pg.starts_with("((owner_id = $3) AND ((state IN ($4, $5)) OR (NOT "),
            "{pg}"
        );
        assert_eq!(lv.len(), 5);
        assert_eq!(pv.len(), 5);
    }
}
