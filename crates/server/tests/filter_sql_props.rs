//! Property: a sync filter compiled to SQL (`sync::filter_sql`) selects
//! exactly the live records of its set that `Condition::matches` accepts in
//! memory (R-S6), on SQLite and on PostgreSQL.
//!
//! Each case writes random records of several sets (random subsets of
//! fields, values from small pools so that comparisons hit: mixed-case and
//! non-ASCII addresses, texts that differ only in case, numbers written as
//! integers and as floats, date-times exactly at and next to `@now-Nd`),
//! tombstones some of them, then checks random valid condition trees (with
//! @me, @now±N, in, contains, is_null, not, nested all/any) one by one, in
//! groups, and page by page.
//!
//! Cases are seeded: `FILTER_SQL_SEED=<n>` and `FILTER_SQL_CASES=<n>`
//! explore further; a failure names its seed.

mod common;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crmsync_core::field::FieldKind;
use crmsync_core::filter::{Condition, EvalContext};
use crmsync_core::time::{format_datetime, format_timestamp, parse_datetime};
use crmsync_core::{EntitySet, Record};
use crmsync_server::store::{self, Store};
use crmsync_server::sync::filter_sql::{compile, matching_ids};

const RECORDS_PER_SET: usize = 40;
const CONDITIONS_PER_SET: usize = 32;
/// Sets checked in every case; one of `EXTRA_SETS` joins them in turn.
const SETS: [EntitySet; 2] = [EntitySet::Contacts, EntitySet::Appointments];
const EXTRA_SETS: [EntitySet; 3] = [
    EntitySet::Emails,
    EntitySet::Tasks,
    EntitySet::Opportunities,
];

const ME: &str = "0a0a0a0a-0000-4000-8000-000000000001";
const OTHER: &str = "0b0b0b0b-0000-4000-8000-000000000002";
const ME_EMAIL: &str = "Me@Example.com";
const NOW: &str = "2026-11-25T12:00:00Z";

const TEXTS: &[&str] = &[
    "Berlin",
    "berlin",
    "BERLIN",
    "Ber",
    "lin",
    "Paris",
    "",
    "Zürich",
    "zürich",
    "Ann Lee",
    "100%",
    "a_b",
    "line\nbreak",
];
/// Needles for `contains`: substrings, case variants, LIKE metacharacters.
const NEEDLES: &[&str] = &[
    "er", "Ber", "BER", "", "lin", "ü", "Ü", "%", "_", "\n", "Lee",
];
const EMAILS: &[&str] = &[
    "ann@example.com",
    "Ann@Example.COM",
    "bob@example.com",
    "me@example.com",
    "ME@EXAMPLE.COM",
    "Me@Example.com",
    "émile@example.com",
    "Émile@example.com",
    "x@y.z",
];
const DATES: &[&str] = &["2026-11-25", "1990-05-05", "2026-01-01", "2026-11-24"];
const ZONES: &[&str] = &["Europe/Berlin", "UTC"];
const REFS: &[&str] = &[
    "c0c0c0c0-0000-4000-8000-000000000001",
    "c0c0c0c0-0000-4000-8000-000000000002",
];
/// Day offsets from now: `@now-Nd` uses the same ones, so the boundary
/// itself (and one second either side) occurs in the data.
const DAYS: &[i64] = &[-45, -30, -29, -10, -2, -1, 0, 1, 2, 30];

fn now() -> OffsetDateTime {
    parse_datetime(NOW).unwrap()
}

fn ctx() -> EvalContext {
    EvalContext {
        me: Uuid::parse_str(ME).unwrap(),
        me_email: ME_EMAIL.into(),
        now: now(),
        regarding_owners: Default::default(),
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("non-empty pool")
}

/// A time near now: a whole number of days away, sometimes off by a second.
fn near_now(rng: &mut StdRng) -> OffsetDateTime {
    let day = *pick(rng, DAYS);
    let jitter = *pick(rng, &[0, 0, -1, 1]);
    now() + Duration::days(day) + Duration::seconds(jitter)
}

fn timestamp(rng: &mut StdRng) -> String {
    let micro = *pick(rng, &[0, 0, 1, 500_000]);
    format_timestamp(near_now(rng) + Duration::microseconds(micro))
}

fn money(rng: &mut StdRng) -> Value {
    pick(
        rng,
        &[
            json!(0),
            json!(0.5),
            json!(10),
            json!(10.0),
            json!(10.25),
            json!(1000),
            // Floats whose text the databases must read as serde_json does.
            json!(0.1 + 0.2),
            json!(123456789.12345679),
            json!(5e-324),
        ],
    )
    .clone()
}

/// A valid stored value of a field kind, from the pools.
fn field_value(rng: &mut StdRng, kind: FieldKind) -> Value {
    let email = |rng: &mut StdRng| json!(*pick(rng, EMAILS));
    match kind {
        FieldKind::Text | FieldKind::LongText => json!(*pick(rng, TEXTS)),
        FieldKind::Email => email(rng),
        FieldKind::Bool => json!(rng.gen_bool(0.5)),
        FieldKind::DateTime => json!(format_datetime(near_now(rng))),
        FieldKind::Date => json!(*pick(rng, DATES)),
        FieldKind::TimeZone => json!(*pick(rng, ZONES)),
        FieldKind::Enum(allowed) => json!(*pick(rng, allowed)),
        FieldKind::Percent => json!(*pick(rng, &[0, 5, 50, 100])),
        FieldKind::Count => json!(*pick(rng, &[0, 1, 10, 1000])),
        FieldKind::Money => money(rng),
        FieldKind::Reference(_) => json!(*pick(rng, REFS)),
        FieldKind::Regarding => json!({"set": "accounts", "id": *pick(rng, REFS)}),
        FieldKind::Recurrence => json!({"rrule": "FREQ=DAILY", "exdates": []}),
        FieldKind::Attendees => {
            let n = rng.gen_range(0..=3);
            Value::Array(
                (0..n)
                    .map(|_| {
                        let role = *pick(rng, &["required", "optional"]);
                        json!({"email": email(rng), "role": role, "resolved": null})
                    })
                    .collect(),
            )
        }
        FieldKind::AddressList => {
            let n = rng.gen_range(0..=3);
            Value::Array((0..n).map(|_| email(rng)).collect())
        }
        FieldKind::Parties => {
            let n = rng.gen_range(0..=3);
            Value::Array(
                (0..n)
                    .map(|_| {
                        let role = *pick(rng, &["from", "to", "cc"]);
                        json!({"address": email(rng), "role": role, "resolved": null})
                    })
                    .collect(),
            )
        }
    }
}

fn random_record(rng: &mut StdRng, set: EntitySet) -> Record {
    let mut fields = Map::new();
    for def in set.fields() {
        if rng.gen_bool(0.6) {
            let v = field_value(rng, def.kind);
            assert_eq!(def.normalize(&v).as_ref(), Ok(&v), "{}: {v}", def.name);
            fields.insert(def.name.to_string(), v);
        }
    }
    Record {
        id: Uuid::new_v4(),
        set,
        version: 0,
        owner_id: Uuid::parse_str(if rng.gen_bool(0.5) { ME } else { OTHER }).unwrap(),
        state: pick(rng, set.states()).to_string(),
        created_at: timestamp(rng),
        modified_at: timestamp(rng),
        fields,
    }
}

const OPS: &[&str] = &[
    "eq", "ne", "lt", "le", "gt", "ge", "in", "contains", "is_null", "not_null",
];

fn relative(rng: &mut StdRng) -> Value {
    let d = *pick(rng, DAYS);
    let s = match rng.gen_range(0..4) {
        0 if d == 0 => "@now".to_string(),
        0 | 1 => format!("@now{d:+}d"),
        2 => format!("@now{:+}s", d * 86_400 + *pick(rng, &[-1, 1])),
        _ => format!("@now{:+}h", d * 24),
    };
    json!(s)
}

/// One value for a comparison with `field`: usually one that fits.
fn operand(rng: &mut StdRng, set: EntitySet, field: &str, op: &str) -> Value {
    if rng.gen_bool(0.05) {
        // Anything at all: parse sorts out what is invalid.
        let kinds = [FieldKind::Text, FieldKind::Count, FieldKind::Bool];
        let kind = *pick(rng, &kinds);
        return field_value(rng, kind);
    }
    match field {
        "owner_id" => match rng.gen_range(0..4) {
            0 => json!("@me"),
            1 => json!(ME),
            2 => json!(OTHER),
            _ => json!(Uuid::new_v4()),
        },
        "state" => json!(*pick(rng, set.states())),
        "created_at" | "modified_at" => {
            if rng.gen_bool(0.6) {
                relative(rng)
            } else {
                json!(timestamp(rng))
            }
        }
        _ => {
            let kind = set.field(field).expect("a field of the set").kind;
            match kind {
                FieldKind::Text | FieldKind::LongText if op == "contains" => {
                    json!(*pick(rng, NEEDLES))
                }
                FieldKind::DateTime if rng.gen_bool(0.5) => relative(rng),
                FieldKind::Email if rng.gen_bool(0.3) => json!("@me"),
                FieldKind::Attendees | FieldKind::AddressList | FieldKind::Parties => {
                    if rng.gen_bool(0.3) {
                        json!("@me")
                    } else {
                        json!(*pick(rng, EMAILS))
                    }
                }
                _ => field_value(rng, kind),
            }
        }
    }
}

fn leaf(rng: &mut StdRng, set: EntitySet) -> Value {
    let mut fields: Vec<&str> = vec!["owner_id", "state", "created_at", "modified_at"];
    fields.extend(set.fields().iter().map(|f| f.name));
    let field = *pick(rng, &fields);
    let op = *pick(rng, OPS);
    match op {
        "is_null" | "not_null" => json!({"field": field, "op": op}),
        "in" => {
            let n = rng.gen_range(0..=3);
            let items: Vec<Value> = (0..n).map(|_| operand(rng, set, field, op)).collect();
            json!({"field": field, "op": op, "value": items})
        }
        _ => json!({"field": field, "op": op, "value": operand(rng, set, field, op)}),
    }
}

fn tree(rng: &mut StdRng, set: EntitySet, depth: usize) -> Value {
    if depth >= 3 || rng.gen_bool(0.45) {
        return leaf(rng, set);
    }
    let children = |rng: &mut StdRng| -> Vec<Value> {
        let n = rng.gen_range(1..=3);
        (0..n).map(|_| tree(rng, set, depth + 1)).collect()
    };
    match rng.gen_range(0..3) {
        0 => json!({"all": children(rng)}),
        1 => json!({"any": children(rng)}),
        _ => json!({"not": tree(rng, set, depth + 1)}),
    }
}

/// Random conditions that `Condition::parse` accepts.
fn conditions(rng: &mut StdRng, set: EntitySet, n: usize) -> Vec<Condition> {
    let mut out = Vec::new();
    for _ in 0..50 * n {
        if out.len() == n {
            break;
        }
        if let Ok(c) = Condition::parse(set, &tree(rng, set, 0)) {
            out.push(c);
        }
    }
    assert_eq!(out.len(), n, "{set}: too few valid random conditions");
    out
}

/// Writes the case's records in one transaction; tombstones about one in
/// eight (they keep their data, so only `deleted_at` keeps them out).
/// Returns the live records.
async fn write_records(store: &Store, records: Vec<Record>, rng: &mut StdRng) -> Vec<Record> {
    sqlx::query("DELETE FROM records")
        .execute(&store.pool)
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for mut r in records {
        r.version = store::next_version(&mut tx).await.unwrap();
        store::insert_record(&mut tx, &r, None).await.unwrap();
        if rng.gen_bool(0.125) {
            dead.push(r.id);
        } else {
            live.push(r);
        }
    }
    for id in dead {
        let v = store::next_version(&mut tx).await.unwrap();
        store::tombstone_record(&mut tx, id, v, &format_timestamp(now()))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    live
}

/// What the in-memory evaluation selects, in version order.
fn expected(set: EntitySet, live: &[Record], conds: &[&Condition]) -> Vec<(Uuid, i64)> {
    let ctx = ctx();
    let mut out: Vec<(Uuid, i64)> = live
        .iter()
        .filter(|r| r.set == set && conds.iter().any(|c| c.matches(set, r, &ctx)))
        .map(|r| (r.id, r.version))
        .collect();
    out.sort_by_key(|(_, v)| *v);
    out
}

fn explain(
    store: &Store,
    set: EntitySet,
    seed: u64,
    conds: &[&Condition],
    live: &[Record],
    want: &[(Uuid, i64)],
    got: &[(Uuid, i64)],
) -> String {
    let want_ids: BTreeSet<Uuid> = want.iter().map(|(id, _)| *id).collect();
    let got_ids: BTreeSet<Uuid> = got.iter().map(|(id, _)| *id).collect();
    let by_id: HashMap<Uuid, &Record> = live.iter().map(|r| (r.id, r)).collect();
    let mut msg = format!("seed {seed}, {set}, {:?}\n", store.kind);
    for c in conds {
        let (sql, values) = compile(c, set, &ctx(), store.kind, 4);
        msg.push_str(&format!(
            "condition {}\n  sql {sql}\n  values {values:?}\n",
            c.to_json()
        ));
    }
    for id in want_ids.symmetric_difference(&got_ids) {
        let record = by_id
            .get(id)
            .map(|r| r.to_json().to_string())
            .unwrap_or_else(|| format!("{id} (not a live record of the set)"));
        let side = if want_ids.contains(id) {
            "matches in memory, not in SQL"
        } else {
            "matches in SQL, not in memory"
        };
        msg.push_str(&format!("{side}: {record}\n"));
    }
    msg
}

async fn check(
    store: &Store,
    set: EntitySet,
    seed: u64,
    conds: &[&Condition],
    live: &[Record],
) -> usize {
    let want = expected(set, live, conds);
    let got = matching_ids(store, set, conds, &ctx(), 0, 10_000)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", explain(store, set, seed, conds, live, &[], &[])));
    assert!(
        got == want,
        "{}",
        explain(store, set, seed, conds, live, &want, &got)
    );
    want.len()
}

async fn run_case(store: &Store, seed: u64) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sets = [SETS[0], SETS[1], EXTRA_SETS[(seed % 3) as usize]];
    let mut records = Vec::new();
    for _ in 0..RECORDS_PER_SET {
        for set in sets {
            records.push(random_record(&mut rng, set));
        }
    }
    let live = write_records(store, records, &mut rng).await;
    let (mut total, mut mixed) = (0, 0);
    for set in sets {
        let in_set = live.iter().filter(|r| r.set == set).count();
        let conds = conditions(&mut rng, set, CONDITIONS_PER_SET);
        for (i, c) in conds.iter().enumerate() {
            let n = check(store, set, seed, &[c], &live).await;
            total += 1;
            if n > 0 && n < in_set {
                mixed += 1;
            }
            // Pages: the same records, a few at a time, resuming after
            // the last version returned.
            if i % 4 == 0 {
                let all = matching_ids(store, set, &[c], &ctx(), 0, 10_000)
                    .await
                    .unwrap();
                let mut paged = Vec::new();
                let mut after = 0;
                loop {
                    let page = matching_ids(store, set, &[c], &ctx(), after, 3)
                        .await
                        .unwrap();
                    assert!(page.len() <= 3);
                    let Some(last) = page.last() else { break };
                    after = last.1;
                    paged.extend(page);
                }
                assert_eq!(paged, all, "seed {seed}: pages of {}", c.to_json());
            }
        }
        // Several filters at once: any of them.
        for chunk in conds.chunks(3) {
            let group: Vec<&Condition> = chunk.iter().collect();
            check(store, set, seed, &group, &live).await;
        }
        assert!(matching_ids(store, set, &[], &ctx(), 0, 100)
            .await
            .unwrap()
            .is_empty());
    }
    (total, mixed)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(backend: common::Backend) {
    let db = common::fresh_db(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    let base = env_u64("FILTER_SQL_SEED", 0x5eed_f11e);
    let cases = env_u64("FILTER_SQL_CASES", 10);
    let (mut total, mut mixed) = (0, 0);
    for case in 0..cases {
        let (t, m) = run_case(&store, base.wrapping_add(case)).await;
        total += t;
        mixed += m;
    }
    // The pools are small enough that most conditions split the records.
    assert!(
        mixed * 3 >= total,
        "only {mixed} of {total} conditions selected some but not all records"
    );
}

#[tokio::test]
async fn sql_filters_match_in_memory_evaluation_sqlite() {
    run(common::Backend::Sqlite).await;
}

#[tokio::test]
async fn sql_filters_match_in_memory_evaluation_postgres() {
    run(common::Backend::Postgres).await;
}
