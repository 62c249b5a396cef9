//! Web pages benchmark (SPEC R-W8, BENCHMARKS.md "Web pages"): with N
//! contacts stored and one account with 1,000 tasks regarding it, p50/p99
//! of a signed-in GET of the Contacts list (default order: newest change),
//! of one list page further on (the "next" keyset link), of the account's
//! record page (fields and the first page of its timeline), and of a
//! search and a sort by column over all N contacts (and the sorted list's
//! next page). Over HTTP on loopback
//! with one keep-alive connection: the figure includes the HTTP stack, so
//! it is an upper bound of the server time. The pages are interleaved.
//!
//!   cargo bench -p crmsync-server --bench web_pages -- [--db sqlite|postgres] [--records N] [--samples N]
//!
//! The searches (`q`) are checked to find what they should before timing.
//!
//! Defaults: SQLite, 1,000,000 contacts, 200 samples of each page.

use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support.rs"]
mod support;

use crmsync_server::web::session;
use crmsync_server::Store;

const ACTIVITIES: usize = 1000;

#[tokio::main]
async fn main() {
    let a = support::args(200);
    let db = support::BenchDb::create(&a.db).await;
    let store = Store::connect(&db.url).await.unwrap();
    let (token, admin) = support::admin_of_new_organization(&store).await;
    support::seed(&store, a.records, |_| admin.id).await;

    let base = support::serve(&store).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // The account and its activities through the API, so the timeline's
    // index is kept as in use.
    let api = |path: &str| format!("{base}/api/v1/{path}");
    let account: serde_json::Value = http
        .post(api("accounts"))
        .bearer_auth(&token)
        .json(&json!({"name": "Acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account = account["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    for i in 0..ACTIVITIES {
        let r = http
            .post(api("tasks"))
            .bearer_auth(&token)
            .json(&json!({"subject": format!("Task {i}"), "regarding": {"set": "accounts", "id": account}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    eprintln!(
        "created {ACTIVITIES} tasks regarding one account in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let cookie = format!(
        "{}={}",
        session::COOKIE,
        session::create(&store, admin.id).await.unwrap()
    );
    let get = |path: String| {
        let req = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie.clone());
        async move {
            let t = Instant::now();
            let r = req.send().await.unwrap();
            let status = r.status();
            let html = r.text().await.unwrap();
            assert_eq!(status, 200, "{html}");
            (t.elapsed(), html)
        }
    };
    // The "next" link of a list page: a page further on.
    let next_of = |path: &'static str| {
        let get = &get;
        async move {
            let (_, first) = get(path.into()).await;
            first
                .split("href=\"")
                .filter_map(|s| s.split('"').next())
                .find(|h| h.contains("after="))
                .expect("a next-page link")
                .replace("&amp;", "&")
                .replace("&#38;", "&")
        }
    };
    let next = next_of("/contacts").await;
    let sorted_next = next_of("/contacts?sort=last_name&dir=asc").await;
    // Last777777 of 1,000,000: no other number starts with its digits.
    let one_match = format!("/contacts?q=Last{}", a.records * 7 / 9);
    let pages = [
        ("Contacts list", "/contacts".to_string()),
        ("Contacts list, next page", next),
        (
            "account page, 1,000 activities",
            format!("/accounts/{account}"),
        ),
        ("Contacts search (one match)", one_match.clone()),
        (
            "Contacts search (Last1: 111,111 matches of 1,000,000)",
            "/contacts?q=Last1".into(),
        ),
        (
            "Contacts search (every contact)",
            "/contacts?q=example".into(),
        ),
        (
            "Contacts sorted by last name",
            "/contacts?sort=last_name&dir=asc".into(),
        ),
        ("Contacts sorted by last name, next page", sorted_next),
    ];
    for (_, path) in &pages {
        get(path.clone()).await; // warm
    }
    // The searches find what they should (the seed's search text is real).
    let (_, found) = get(one_match.clone()).await;
    assert_eq!(
        found.matches("<tr").count(),
        2,
        "a heading and one match: {found}"
    );
    assert!(
        get("/contacts?q=Last1".into())
            .await
            .1
            .contains("Next page"),
        "a full page and more"
    );
    let mut times: Vec<Vec<Duration>> = pages.iter().map(|_| Vec::new()).collect();
    for _ in 0..a.samples {
        for (i, (_, path)) in pages.iter().enumerate() {
            times[i].push(get(path.clone()).await.0);
        }
    }
    println!(
        "== web pages on {} with {} contacts, {} samples each (HTTP on loopback, signed in)",
        a.db, a.records, a.samples
    );
    for ((what, _), t) in pages.iter().zip(times) {
        support::report(what, t);
    }
    db.drop_db().await;
}
